"""aiohttp's default TLS client context, without the CA load at the server's start.

Importing aiohttp (its web side comes with its client side: ``aiohttp/__init__``
imports both) makes two TLS client contexts and parses the system's CA bundle
for each: 100-200 ms of the server's start, a third of its imports, for a client
the server itself never uses.

So the server's entry point (``python -m container_server``) imports aiohttp
under :func:`without_ca_load`: OpenSSL's default CA file and directory point at
nothing while the contexts are made, so the verified one (what aiohttp's client
uses unless given another ``ssl=``) starts with no CA at all. It fails closed:
every server certificate is refused (``CERTIFICATE_VERIFY_FAILED``); it never
stops verifying. The unverified context verifies nothing, so it needs no CA.

The only code in the server's process that could use aiohttp's client is a
plugin's. Before any plugin initializes, the server loads into the verified
context exactly what the import would have (:func:`load_deferred_cas`, in a
worker thread: OpenSSL releases the GIL while it parses). A server with no
plugin never pays for it. Processes the server starts (the shell, the agent's
commands, a Jupyter kernel) are not affected: the environment is restored
right after the import.

The server's own TLS (``--tls-file``, :func:`server_context`) is another
matter: a server context verifies no peer and loads no CA, so the deferral
changes nothing for it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import ssl
import sys
from collections.abc import Iterator

__all__ = ["ca_load_deferred", "load_deferred_cas", "server_context", "without_ca_load"]

logger = logging.getLogger(__name__)

# OpenSSL reads these at each call that loads its defaults (SSL_CTX_set_default_verify_paths).
_CA_VARIABLES = ("SSL_CERT_FILE", "SSL_CERT_DIR")
# A path that is never a CA file or directory: what the contexts see during the import.
_NOWHERE = "/nonexistent/openhands-rt-deferred-ca"

_deferred = False


@contextlib.contextmanager
def without_ca_load() -> Iterator[None]:
    """Import aiohttp inside this block to make its default contexts without CAs.

    Call it before anything has imported aiohttp, before any thread is started
    (it changes the process's environment). Importing aiohttp here when it is
    already imported changes nothing (and nothing is deferred).
    """
    global _deferred
    if "aiohttp" in sys.modules:
        yield
        return
    saved = {name: os.environ.get(name) for name in _CA_VARIABLES}
    for name in _CA_VARIABLES:
        os.environ[name] = _NOWHERE
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                del os.environ[name]
            else:
                os.environ[name] = value
    _deferred = "aiohttp.connector" in sys.modules


def ca_load_deferred() -> bool:
    """True while aiohttp's verified client context waits for :func:`load_deferred_cas`."""
    return _deferred


def load_deferred_cas() -> None:
    """Load the system's CAs into aiohttp's verified client context, if they were deferred.

    Blocking (reads and parses the CA bundle): call it from a worker thread.
    Exactly what the import would have loaded: ``ssl.create_default_context()``'s
    defaults, from the environment as it is now (restored).
    """
    global _deferred
    if not _deferred:
        return
    from aiohttp import connector

    # aiohttp's own name for it (pinned by tests/container_server/test_tls.py).
    context = getattr(connector, "_SSL_CONTEXT_VERIFIED", None)
    if isinstance(context, ssl.SSLContext):
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:
        logger.warning(
            "aiohttp has no _SSL_CONTEXT_VERIFIED: its default client context keeps no CA "
            "(every server certificate is refused)"
        )
    _deferred = False


def server_context(path: str) -> ssl.SSLContext:
    """The server's TLS context, from ``path``: its private key and certificate in one PEM.

    The host made both for this sandbox and pins the certificate
    (docs/scale-out.md, 1.4); the client is not asked for one. TLS 1.3 only:
    the client is ours. Reads the file now, so call it while the file is still
    readable (as root, before the privileges are dropped). Raises ``OSError``
    when it cannot be read, :class:`ssl.SSLError` when it holds no usable key
    and certificate (or they do not match).
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(path)
    return context
