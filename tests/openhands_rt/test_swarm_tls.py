"""The pinned TLS channel: a sandbox's identity (openhands_rt.swarm.tls) and the client's pin.

The identity is read back with ``cryptography``; the channel is a real
``python -m container_server --tls-file`` on 127.0.0.1 reached by a real
:class:`ChannelClient` (and by :class:`EventStreamRuntime` with a
:class:`SandboxEndpoint` that carries the certificate). No TLS is mocked: a
client that pins another identity's certificate, expects another name, skips
TLS or has no pin must fail.
"""

from __future__ import annotations

import asyncio
import datetime
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from events import CmdOutputChunk, CmdOutputObservation, CmdRunAction, Event, EventStream
from openhands_rt.channel import ChannelClient, pinned_context
from openhands_rt.errors import SandboxConnectionError, SandboxError
from openhands_rt.runtime import EventStreamRuntime, SandboxEndpoint
from openhands_rt.swarm.tls import ServerIdentity, make_server_identity

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parents[2]
KEY = "swarm-tls-key-7a3e91"
NAME = "sbx-0a1b2c3d4e5f.openhands-rt.invalid"


@pytest.fixture(scope="module")
def identity() -> ServerIdentity:
    return make_server_identity(NAME)


@pytest.fixture(scope="module")
def stranger() -> ServerIdentity:
    """Another sandbox's identity, for the same name."""
    return make_server_identity(NAME)


# ------------------------------------------------------------------------------ the identity


def test_a_name_longer_than_a_common_name_allows_is_in_the_san() -> None:
    # A swarm sandbox's name: a 63-character service name under a fixed domain.
    long_name = "openhands-runtime-" + "a" * 36 + "-0123abcd.sandbox.openhands-rt.invalid"
    cert = x509.load_pem_x509_certificate(make_server_identity(long_name).cert_pem.encode())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [long_name]


def test_the_certificate_is_a_pinned_server_leaf_for_its_name(identity: ServerIdentity) -> None:
    cert = x509.load_pem_x509_certificate(identity.cert_pem.encode())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, NAME.split(".")[0])])
    assert cert.version is x509.Version.v3
    assert (cert.subject, cert.issuer) == (name, name)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [NAME]
    assert san.get_values_for_type(x509.IPAddress) == []
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert (constraints.critical, constraints.value.ca) == (True, False)
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert (usage.digital_signature, usage.key_cert_sign, usage.key_encipherment) == (
        True,
        False,
        False,
    )
    extended = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(extended) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    public_key = cert.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert isinstance(public_key.curve, ec.SECP256R1)
    public_key.verify(
        cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256())
    )  # self-signed: raises if not
    now = datetime.datetime.now(datetime.timezone.utc)
    assert cert.not_valid_before_utc < now - datetime.timedelta(minutes=4)
    assert cert.not_valid_after_utc > now + datetime.timedelta(days=365 * 9)


def test_the_bundle_is_the_unencrypted_pkcs8_key_of_the_certificate_then_the_certificate(
    identity: ServerIdentity,
) -> None:
    assert identity.bundle_pem.startswith(b"-----BEGIN PRIVATE KEY-----\n")  # PKCS8, clear
    assert identity.bundle_pem.endswith(identity.cert_pem.encode())
    key = serialization.load_pem_private_key(identity.bundle_pem, password=None)
    cert = x509.load_pem_x509_certificate(identity.cert_pem.encode())
    assert key.public_key() == cert.public_key()


def test_every_identity_is_new(identity: ServerIdentity, stranger: ServerIdentity) -> None:
    mine = x509.load_pem_x509_certificate(identity.cert_pem.encode())
    theirs = x509.load_pem_x509_certificate(stranger.cert_pem.encode())
    assert mine.serial_number != theirs.serial_number
    assert mine.public_key() != theirs.public_key()


def test_the_bundle_loads_as_a_server_context(tmp_path: Path, identity: ServerIdentity) -> None:
    path = tmp_path / "tls.pem"
    path.write_bytes(identity.bundle_pem)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(path)  # raises when the key does not match the certificate
    mismatched = tmp_path / "mismatched.pem"
    other = make_server_identity(NAME)
    mismatched.write_bytes(other.bundle_pem.split(b"-----BEGIN CERTIFICATE-----")[0])
    with mismatched.open("ab") as f:
        f.write(identity.cert_pem.encode())
    with pytest.raises(ssl.SSLError):
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(mismatched)


def test_the_private_key_is_not_in_the_repr(identity: ServerIdentity) -> None:
    assert "PRIVATE" not in repr(identity)
    assert NAME in repr(identity)


def test_without_cryptography_the_error_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes the import fail, as an absent package does.
    monkeypatch.setitem(sys.modules, "cryptography", None)
    with pytest.raises(SandboxError, match=r"pip install 'openhands-rt\[swarm\]'"):
        make_server_identity(NAME)


# ------------------------------------------------------------------------------ the pin


def test_the_pinned_context_trusts_that_certificate_only(identity: ServerIdentity) -> None:
    context = pinned_context(identity.cert_pem)
    assert context.verify_mode is ssl.CERT_REQUIRED
    assert context.check_hostname
    assert context.minimum_version is ssl.TLSVersion.TLSv1_3
    assert context.cert_store_stats() == {"x509": 1, "crl": 0, "x509_ca": 0}


def test_a_pin_that_is_no_certificate_is_refused() -> None:
    with pytest.raises(ssl.SSLError):
        pinned_context("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")


def test_a_wss_url_without_a_pin_is_refused() -> None:
    with pytest.raises(SandboxConnectionError, match="needs the sandbox's pinned certificate"):
        ChannelClient("wss://127.0.0.1:1/ws", api_key=KEY, client_id="c", on_event=print)


def test_a_pin_for_a_plain_url_is_a_mistake(identity: ServerIdentity) -> None:
    with pytest.raises(ValueError, match="TLS channels use wss:// URLs"):
        ChannelClient(
            "ws://127.0.0.1:1/ws",
            api_key=KEY,
            client_id="c",
            on_event=print,
            ssl_context=pinned_context(identity.cert_pem),
        )


# ------------------------------------------------------------------------------ the channel


@dataclass(frozen=True)
class Server:
    port: int

    @property
    def wss_url(self) -> str:
        return f"wss://127.0.0.1:{self.port}/ws"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, identity: ServerIdentity) -> Iterator[Server]:
    directory = tmp_path_factory.mktemp("sandbox")
    tls_file = directory / "tls.pem"
    tls_file.write_bytes(identity.bundle_pem)
    tls_file.chmod(0o400)
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "container_server",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--working-dir",
            str(directory / "work"),
            "--tls-file",
            str(tls_file),
        ],
        env={**os.environ, "SESSION_API_KEY": KEY},
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("listening on https://127.0.0.1:"), line
        yield Server(int(line.rsplit(":", 1)[1]))
    finally:
        process.terminate()
        process.wait(timeout=30)
        if process.stdout is not None:
            process.stdout.close()


class Answers:
    """Collects the channel's events; ``done`` once action ``cause``'s observation came."""

    def __init__(self, cause: int) -> None:
        self.cause = cause
        self.events: list[Event] = []
        self.done = asyncio.Event()

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        if event.cause == self.cause and not isinstance(event, CmdOutputChunk):
            self.done.set()


def echo(action_id: int, text: str) -> CmdRunAction:
    return msgspec.structs.replace(CmdRunAction(f"echo {text}"), id=action_id)


async def pinned_echo(
    server: Server, identity: ServerIdentity, cause: int, text: str
) -> CmdOutputObservation:
    """``echo text`` through a ChannelClient pinned to ``identity``; its observation."""
    answers = Answers(cause=cause)
    client = ChannelClient(
        server.wss_url,
        api_key=KEY,
        client_id=f"pinned-{cause}",
        on_event=answers,
        ssl_context=pinned_context(identity.cert_pem),
        server_hostname=identity.server_name,
    )
    async with client:
        await client.send(echo(cause, text))
        await asyncio.wait_for(answers.done.wait(), 30)
    observation = answers.events[-1]
    assert isinstance(observation, CmdOutputObservation)
    return observation


async def test_a_pinned_client_runs_an_action_over_tls(
    server: Server, identity: ServerIdentity
) -> None:
    observation = await pinned_echo(server, identity, 1, "through-tls")
    assert observation.content.strip() == "through-tls"
    assert observation.exit_code == 0


async def test_the_channel_ignores_the_environments_proxy(
    server: Server, identity: ServerIdentity, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Port 9 (discard) refuses connections here: through it, the channel would not open.
    for variable in ("https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.setenv(variable, "http://127.0.0.1:9")
    for variable in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(variable, raising=False)
    observation = await pinned_echo(server, identity, 2, "no-proxy")
    assert observation.content.strip() == "no-proxy"


async def open_refused(client: ChannelClient) -> str:
    with pytest.raises(SandboxConnectionError) as refused:
        await client.open()
    await client.aclose()
    return str(refused.value)


async def test_a_client_pinned_to_another_sandbox_is_refused(
    server: Server, stranger: ServerIdentity
) -> None:
    client = ChannelClient(
        server.wss_url,
        api_key=KEY,
        client_id="stranger",
        on_event=print,
        ssl_context=pinned_context(stranger.cert_pem),
        server_hostname=stranger.server_name,  # the same name: only the pin differs
    )
    message = await open_refused(client)
    assert "the sandbox's TLS certificate was refused" in message
    assert "self-signed certificate" in message  # not the one it trusts


@pytest.mark.parametrize("server_hostname", ["sbx-ffffffffffff.openhands-rt.invalid", None])
async def test_the_right_certificate_for_another_name_is_refused(
    server: Server, identity: ServerIdentity, server_hostname: str | None
) -> None:
    # None: the URL's host (127.0.0.1), which the certificate does not name either.
    client = ChannelClient(
        server.wss_url,
        api_key=KEY,
        client_id="misnamed",
        on_event=print,
        ssl_context=pinned_context(identity.cert_pem),
        server_hostname=server_hostname,
    )
    message = await open_refused(client)
    assert "the sandbox's TLS certificate was refused" in message
    assert f"not for {server_hostname or '127.0.0.1'}" in message
    assert "mismatch" in message


async def test_plain_websocket_to_the_tls_port_fails(server: Server) -> None:
    client = ChannelClient(
        f"ws://127.0.0.1:{server.port}/ws", api_key=KEY, client_id="plain", on_event=print
    )
    message = await open_refused(client)
    assert message.startswith("cannot open the action channel")
    assert "certificate" not in message


class PinnedEndpointRuntime(EventStreamRuntime):
    """A runtime whose sandbox is the test's server: only the endpoint comes from here."""

    def __init__(self, stream: EventStream, endpoint: SandboxEndpoint) -> None:
        super().__init__(stream)
        self._given = endpoint

    async def _start_sandbox(self) -> SandboxEndpoint:
        return self._given

    async def _stop_sandbox(self) -> None:
        pass  # the fixture owns the server


async def test_the_runtime_pins_the_endpoints_certificate(
    server: Server, identity: ServerIdentity
) -> None:
    endpoint = SandboxEndpoint(
        url=server.wss_url,
        api_key=KEY,
        server_cert=identity.cert_pem,
        server_name=identity.server_name,
    )
    async with PinnedEndpointRuntime(EventStream(), endpoint) as runtime:
        observation = await runtime.run(CmdRunAction("echo runtime-over-tls"))
    assert isinstance(observation, CmdOutputObservation)
    assert observation.content.strip() == "runtime-over-tls"


async def test_the_runtime_refuses_an_endpoint_with_another_certificate(
    server: Server, stranger: ServerIdentity
) -> None:
    endpoint = SandboxEndpoint(
        url=server.wss_url, api_key=KEY, server_cert=stranger.cert_pem, server_name=NAME
    )
    runtime = PinnedEndpointRuntime(EventStream(), endpoint)
    with pytest.raises(SandboxConnectionError, match="certificate was refused"):
        await runtime.connect()
    await runtime.aclose()
