"""The TLS identity of one sandbox's server: a key pair and a self-signed certificate.

Across hosts the action channel is TLS (docs/scale-out.md, 1.4). The host
makes a fresh identity for every sandbox: the private key and certificate go
to the server (its ``--tls-file``, through a Docker secret), the certificate
alone stays with the client, which trusts it and nothing else
(:func:`openhands_rt.channel.pinned_context`). No CA is involved anywhere.

Writing a certificate needs an X.509 writer, which the standard library does
not have: the ``cryptography`` package, from the ``swarm`` extra. It is
imported when an identity is made, so that the rest of the package works
without it.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

from openhands_rt.errors import SandboxError

__all__ = ["ServerIdentity", "make_server_identity"]

# Before "now": a node whose clock is a little behind the host's still accepts it.
_BACKDATE = datetime.timedelta(minutes=5)
_VALIDITY = datetime.timedelta(days=3653)


@dataclass(frozen=True)
class ServerIdentity:
    """What one sandbox's server presents, and what its client pins."""

    server_name: str  # the DNS name in the certificate (SAN): what the client checks
    cert_pem: str  # the certificate alone: what the client pins
    bundle_pem: bytes  # the private key (PKCS8 PEM, unencrypted) + the certificate: --tls-file

    def __repr__(self) -> str:
        # The bundle holds the private key: never in a log line or a traceback.
        return f"ServerIdentity(server_name={self.server_name!r})"


def make_server_identity(server_name: str) -> ServerIdentity:
    """A new ECDSA P-256 key and a self-signed certificate for ``server_name``.

    The certificate (X.509 v3, SHA-256) names ``server_name`` as its subject's
    common name and as its only subject alternative name (``DNS:``), is not a
    CA (basic constraints, critical), and is good for signatures of a TLS server
    only (key usage digitalSignature, extended key usage serverAuth). Its
    serial is random.

    It is valid from five minutes ago for about ten years, on purpose: the
    client pins this very certificate (it is the client's only trust anchor,
    and it can sign nothing), so its validity period is not what protects it.
    What does is the private key, which lives only in the sandbox's secret and
    dies with the sandbox; a short validity would only make a long-lived
    sandbox, or a node with a skewed clock, fail.

    Blocking (key generation, signing: a few milliseconds): call it from a
    worker thread in async code. Raises :class:`SandboxError` when the
    ``cryptography`` package is not installed.
    """
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
    except ImportError as exc:
        raise SandboxError(
            "making a sandbox's TLS certificate needs the cryptography package; "
            "install the swarm extra: pip install 'openhands-rt[swarm]'"
        ) from exc

    key = ec.generate_private_key(ec.SECP256R1())
    # X.509 caps a common name at 64 characters; the name that counts is the SAN's.
    common_name = server_name.split(".")[0][:64]
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(server_name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_pem = certificate.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return ServerIdentity(
        server_name=server_name, cert_pem=cert_pem.decode("ascii"), bundle_pem=key_pem + cert_pem
    )
