"""The server's ``--tls-file``: the real entry point serving TLS 1.3 with the file's key.

A key and certificate are made here with ``openssl`` (the host side's own maker,
openhands_rt.swarm.tls, is tested with the channel in
tests/openhands_rt/test_swarm_tls.py), the server is started as
``python -m container_server`` and reached with the standard library's client,
which trusts that one certificate.
"""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from container_server.tls import server_context

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]
KEY = "tls-server-key-5d1f"
NAME = "sandbox-tls.openhands-rt.test"


@dataclass(frozen=True)
class Pem:
    key: bytes
    cert: bytes

    @property
    def bundle(self) -> bytes:
        return self.key + self.cert


def make_pem(directory: Path, name: str) -> Pem:
    key, cert = directory / f"{name}.key", directory / f"{name}.crt"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "2",
            "-subj",
            f"/CN={name}",
            "-addext",
            f"subjectAltName=DNS:{name}",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return Pem(key.read_bytes(), cert.read_bytes())


@pytest.fixture(scope="module")
def pem(tmp_path_factory: pytest.TempPathFactory) -> Pem:
    return make_pem(tmp_path_factory.mktemp("pem"), NAME)


def server_command(working_dir: Path, *options: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "container_server",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--working-dir",
        str(working_dir),
        *options,
    ]


SERVER_ENV = {**os.environ, "SESSION_API_KEY": KEY}


@dataclass(frozen=True)
class TlsServer:
    ready_line: str
    port: int


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, pem: Pem) -> Iterator[TlsServer]:
    directory = tmp_path_factory.mktemp("server")
    tls_file = directory / "tls.pem"
    tls_file.write_bytes(pem.bundle)
    tls_file.chmod(0o400)
    process = subprocess.Popen(
        server_command(directory / "work", "--tls-file", str(tls_file)),
        env=SERVER_ENV,
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        port = int(line.rsplit(":", 1)[-1]) if line else 0
        yield TlsServer(line, port)
    finally:
        process.terminate()
        process.wait(timeout=30)
        if process.stdout is not None:
            process.stdout.close()


def pinned(cert: bytes) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=cert.decode())
    return context


@dataclass(frozen=True)
class Answer:
    status: int
    body: str
    tls_version: str
    peer_cert: bytes  # DER


def get_alive(port: int, context: ssl.SSLContext, server_hostname: str) -> Answer:
    """GET /alive over TLS, the connection made to ``server_hostname``."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    with context.wrap_socket(raw, server_hostname=server_hostname) as tls:
        tls.sendall(b"GET /alive HTTP/1.1\r\nHost: sandbox\r\nConnection: close\r\n\r\n")
        version = tls.version() or ""
        peer = tls.getpeercert(binary_form=True) or b""
        response = http.client.HTTPResponse(tls)
        response.begin()
        body = response.read().decode()
    return Answer(response.status, body, version, peer)


def test_the_server_says_https_and_serves_tls_13_with_its_certificate(
    tls_server: TlsServer, pem: Pem
) -> None:
    assert tls_server.ready_line == f"listening on https://127.0.0.1:{tls_server.port}"
    answer = get_alive(tls_server.port, pinned(pem.cert), NAME)
    assert (answer.status, answer.body.strip(), answer.tls_version) == (200, "ok", "TLSv1.3")
    assert answer.peer_cert == ssl.PEM_cert_to_DER_cert(pem.cert.decode())


def test_a_client_that_trusts_another_certificate_is_refused(
    tls_server: TlsServer, tmp_path: Path
) -> None:
    other = make_pem(tmp_path, NAME)
    with pytest.raises(ssl.SSLCertVerificationError):
        get_alive(tls_server.port, pinned(other.cert), NAME)


def test_a_tls_12_client_is_refused(tls_server: TlsServer, pem: Pem) -> None:
    context = pinned(pem.cert)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError) as refused:
        get_alive(tls_server.port, context, NAME)
    assert not isinstance(refused.value, ssl.SSLCertVerificationError)


def plain_get_alive(port: int) -> bytes:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", "/alive")
        return connection.getresponse().read()
    finally:
        connection.close()


def test_plain_http_gets_no_answer_on_the_tls_port(tls_server: TlsServer) -> None:
    with pytest.raises((http.client.HTTPException, ConnectionError)):
        plain_get_alive(tls_server.port)


def run_server(tmp_path: Path, *options: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        server_command(tmp_path / "work", *options),
        env=SERVER_ENV,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.mark.parametrize("content", ["missing", "garbage", "cert only", "key of another"])
def test_a_bad_tls_file_is_an_error_exit(tmp_path: Path, pem: Pem, content: str) -> None:
    tls_file = tmp_path / "tls.pem"
    if content == "garbage":
        tls_file.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    elif content == "cert only":
        tls_file.write_bytes(pem.cert)
    elif content == "key of another":
        tls_file.write_bytes(make_pem(tmp_path, "other").key + pem.cert)
    result = run_server(tmp_path, "--tls-file", str(tls_file))
    assert result.returncode == 2, result.stderr
    assert f"error: cannot use the TLS file {tls_file}: " in result.stderr
    if content == "missing":
        assert "No such file or directory" in result.stderr
    else:
        assert "it must hold a private key and its certificate in PEM" in result.stderr
    assert "listening on" not in result.stdout


def test_tls_with_a_unix_socket_is_an_error_exit(tmp_path: Path, pem: Pem) -> None:
    tls_file = tmp_path / "tls.pem"
    tls_file.write_bytes(pem.bundle)
    result = run_server(
        tmp_path, "--tls-file", str(tls_file), "--unix-socket", str(tmp_path / "s.sock")
    )
    assert result.returncode == 2, result.stderr
    assert "--tls-file serves TCP; it cannot go with --unix-socket" in result.stderr
    assert not (tmp_path / "s.sock").exists()


def test_server_context_is_tls_13_only_and_asks_no_client_certificate(
    tmp_path: Path, pem: Pem
) -> None:
    tls_file = tmp_path / "tls.pem"
    tls_file.write_bytes(pem.bundle)
    context = server_context(str(tls_file))
    assert context.minimum_version is ssl.TLSVersion.TLSv1_3
    assert context.verify_mode is ssl.CERT_NONE
    assert context.cert_store_stats()["x509"] == 0  # no CA loaded: it verifies no one
