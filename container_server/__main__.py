"""``python -m container_server``: run the action execution server."""

from container_server.main import main

if __name__ == "__main__":
    raise SystemExit(main())
