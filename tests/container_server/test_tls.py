"""The deferred CA load of aiohttp's default client context (container_server.tls).

Each case runs in a fresh interpreter (this one has imported aiohttp long ago)
whose "system" CA bundle is a test CA made here with ``openssl``: a local TLS
server presents a certificate signed by it, and aiohttp's client, with its
default ``ssl``, fetches from it. Deferred, the fetch is refused until the CAs
are loaded — the context fails closed, it never stops verifying — and then
succeeds; not deferred (the control), it succeeds at once.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import connector

pytestmark = pytest.mark.timeout(120)

CLIENT_SCRIPT = r"""
import asyncio, json, os, ssl, sys

deferred = sys.argv[1] == "deferred"
if deferred:
    from container_server.tls import without_ca_load

    with without_ca_load():
        import aiohttp
else:
    import aiohttp
from container_server import tls


async def serve(reader, writer):
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok")
    await writer.drain()
    writer.close()


async def fetch(url):
    try:
        async with aiohttp.ClientSession() as session, session.get(url) as response:
            return f"{response.status} {await response.text()}"
    except aiohttp.ClientConnectorCertificateError:
        return "certificate refused"


async def main():
    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_side.load_cert_chain(sys.argv[2], sys.argv[3])
    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=server_side)
    url = f"https://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
    report = {
        "environment": [os.environ.get("SSL_CERT_FILE"), os.environ.get("SSL_CERT_DIR")],
        "deferred": tls.ca_load_deferred(),
        "before": await fetch(url),
    }
    await asyncio.to_thread(tls.load_deferred_cas)
    report["still_deferred"] = tls.ca_load_deferred()
    report["after"] = await fetch(url)
    server.close()
    print(json.dumps(report))


asyncio.run(main())
"""


@pytest.fixture(scope="module")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed CA certificate for 127.0.0.1 (also the server's) and its key."""
    directory = tmp_path_factory.mktemp("ca")
    cert, key = directory / "ca.pem", directory / "key.pem"
    request = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2"]
    subject = ["-subj", "/CN=openhands-rt test CA", "-addext", "subjectAltName=IP:127.0.0.1"]
    subprocess.run(
        ["openssl", *request, *subject, "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


def run_client(how: str, test_ca: tuple[Path, Path]) -> dict[str, object]:
    cert, key = test_ca
    # The test CA is the whole "system" bundle; no CA directory at all.
    env = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    env["SSL_CERT_FILE"] = str(cert)
    result = subprocess.run(
        [sys.executable, "-I", "-c", CLIENT_SCRIPT, how, str(cert), str(key)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    report: dict[str, object] = json.loads(result.stdout)
    return report


def test_deferred_context_fails_closed_until_its_cas_are_loaded(
    test_ca: tuple[Path, Path],
) -> None:
    report = run_client("deferred", test_ca)
    assert report["deferred"] is True
    assert report["before"] == "certificate refused"
    assert report["still_deferred"] is False
    assert report["after"] == "200 ok"
    # The environment is as it was once the import is done: SSL_CERT_FILE kept, no
    # SSL_CERT_DIR made up (the processes the server starts inherit it).
    assert report["environment"] == [str(test_ca[0]), None]


def test_control_without_deferral_verifies_at_once(test_ca: tuple[Path, Path]) -> None:
    report = run_client("plain", test_ca)
    assert report["deferred"] is False
    assert report["before"] == "200 ok"
    assert report["after"] == "200 ok"


def test_aiohttp_still_names_its_verified_context() -> None:
    # load_deferred_cas reaches into aiohttp for it: an upgrade that renames it fails here.
    context = getattr(connector, "_SSL_CONTEXT_VERIFIED", None)
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname


def test_the_server_entry_point_defers_the_load() -> None:
    code = (
        "import sys, runpy; sys.argv[1:] = ['--help']\n"
        "try:\n"
        "    runpy.run_module('container_server', run_name='__main__', alter_sys=True)\n"
        "except SystemExit:\n"
        "    pass\n"
        "from aiohttp import connector\n"
        "from container_server import tls\n"
        "print(tls.ca_load_deferred(), connector._SSL_CONTEXT_VERIFIED.cert_store_stats())"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    deferred, stats = result.stdout.strip().splitlines()[-1].split(" ", 1)
    assert deferred == "True"
    assert "'x509_ca': 0" in stats
