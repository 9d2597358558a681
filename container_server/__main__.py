"""``python -m container_server``: run the action execution server."""

from container_server.tls import without_ca_load

# First of all: aiohttp's default TLS contexts are made without the CA load that would
# cost a third of the server's imports (container_server.tls says when it is loaded).
with without_ca_load():
    import aiohttp  # noqa: F401

from container_server.main import main

if __name__ == "__main__":
    raise SystemExit(main())
