"""Command line of the action execution server.

``python -m container_server --port P --working-dir DIR [--plugins NAME ...]
[--username U --user-id N]`` with ``SESSION_API_KEY`` in the environment.
Port 0 picks a free port. Once ``/alive`` answers "ok" the first line on
standard output is ``listening on http://HOST:PORT`` (or
``listening on unix:PATH`` with ``--unix-socket``).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import logging
import os
import signal
import socket
import sys

from aiohttp import web

from container_server.app import DEFAULT_MAX_FRAME_BYTES, ServerSettings, create_app
from container_server.plugin_registry import UnknownPluginError
from container_server.privileges import become_user

__all__ = ["main", "parse_args"]

logger = logging.getLogger("container_server")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="container_server", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 in containers)")
    p.add_argument("--port", type=int, default=0, help="TCP port; 0 picks a free one")
    p.add_argument("--unix-socket", default=None, help="serve on this Unix socket instead of TCP")
    p.add_argument("--working-dir", required=True, help="the shell's initial directory")
    p.add_argument("--plugins", nargs="*", default=[], help="plugins to initialize")
    p.add_argument("--username", default=None, help="user the shell runs as (server as root)")
    p.add_argument("--user-id", type=int, default=None, help="uid the shell runs as")
    p.add_argument(
        "--max-processes", type=int, default=None, help="RLIMIT_NPROC for the sandbox user"
    )
    p.add_argument(
        "--max-process-memory-mb",
        type=int,
        default=None,
        help="address-space limit (RLIMIT_AS) of every process the shell starts",
    )
    p.add_argument("--no-change-timeout", type=float, default=10.0, help="soft timeout, seconds")
    p.add_argument("--default-timeout", type=float, default=120.0, help="hard timeout, seconds")
    p.add_argument("--max-frame-bytes", type=int, default=DEFAULT_MAX_FRAME_BYTES)
    p.add_argument("--plugin-init-timeout", type=float, default=60.0)
    p.add_argument("--log-level", default=os.environ.get("OPENHANDS_RT_LOG_LEVEL", "WARNING"))
    return p.parse_args(argv)


async def serve(args: argparse.Namespace, api_key: str, notes: list[str]) -> int:
    settings = ServerSettings(
        working_dir=os.path.abspath(args.working_dir),
        api_key=api_key,
        username=args.username,
        user_id=args.user_id,
        startup_notes=notes,
        no_change_timeout=args.no_change_timeout,
        default_timeout=args.default_timeout if args.default_timeout > 0 else None,
        max_frame_bytes=args.max_frame_bytes,
        plugins=list(args.plugins),
        plugin_init_timeout=args.plugin_init_timeout,
        max_process_memory_mb=args.max_process_memory_mb,
    )
    try:
        app = create_app(settings)
    except UnknownPluginError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        site: web.BaseSite
        if args.unix_socket:
            site = web.UnixSite(runner, args.unix_socket)
            await site.start()
            os.chmod(args.unix_socket, 0o660)
            where = f"unix:{args.unix_socket}"
        else:
            sock = socket.create_server((args.host, args.port), reuse_port=False)
            site = web.SockSite(runner, sock)
            await site.start()
            host, port = sock.getsockname()[:2]
            where = f"http://{host}:{port}"
        print(f"listening on {where}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
    return 0


def _scrub_initial_environment(name: str) -> None:
    """Zero ``name``'s value in the C environment block the process started with."""
    try:
        libc = ctypes.CDLL(None)
        environ = ctypes.POINTER(ctypes.c_void_p).in_dll(libc, "environ")
    except (OSError, ValueError):
        return  # no libc environ symbol: nothing we can scrub
    prefix = name.encode() + b"="
    i = 0
    while environ[i]:
        entry = ctypes.string_at(environ[i])
        if entry.startswith(prefix):
            ctypes.memset(environ[i] + len(prefix), 0, len(entry) - len(prefix))
        i += 1


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Removed so that the shell, plugins and every process the agent starts never
    # see it: popped from os.environ (children's environments), and scrubbed from
    # the process's initial environment block (/proc/<pid>/environ).
    api_key = os.environ.get("SESSION_API_KEY", "")
    _scrub_initial_environment("SESSION_API_KEY")
    os.environ.pop("SESSION_API_KEY", None)
    if not api_key:
        print("error: SESSION_API_KEY must be set in the environment", file=sys.stderr)
        return 2
    os.makedirs(args.working_dir, exist_ok=True)
    notes: list[str] = []
    if args.username and os.geteuid() == 0:
        # Started as root in a container: become the sandbox user before anything
        # else runs, so the shell, plugins and file actions all run unprivileged.
        try:
            notes = become_user(
                args.username,
                workspace=args.working_dir,
                uid=args.user_id,
                max_processes=args.max_processes,
            )
        except (KeyError, OSError, ValueError) as exc:
            print(f"error: cannot switch to user {args.username!r}: {exc}", file=sys.stderr)
            return 2
        # Already that user: nothing left to switch (plugins still get the name).
        args.user_id = None
    try:
        return asyncio.run(serve(args, api_key, notes))
    except KeyboardInterrupt:
        return 130
