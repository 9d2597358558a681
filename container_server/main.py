"""Command line of the action execution server.

``python -m container_server --port P --working-dir DIR [--plugins NAME ...]
[--username U --user-id N]`` with ``SESSION_API_KEY`` in the environment, or
``--api-key-file PATH`` (a file only root can read: how Docker sandboxes get
it, so that the key is in no process's environment). Port 0 picks a free port.
Once ``/alive`` answers "ok" the first line on standard output is
``listening on http://HOST:PORT`` (``https://`` with ``--tls-file``, or
``listening on unix:PATH`` with ``--unix-socket``).

``--tls-file PEM``: serve TLS with the private key and certificate in PEM
(:func:`container_server.tls.server_context`); read like the key file, as
root before the privileges are dropped. Not with ``--unix-socket``.

``--shell-state FILE``: if FILE exists (JSON of an :class:`events.control.ShellState`,
written by the host from a snapshot), the shell starts in that working
directory with that exported environment (:mod:`container_server.shell_state`).
Read at start like the key file: as root, before the privileges are dropped.

Started as root with ``--username`` (in a container): the key is read, the
sandbox user prepared and the listening socket made while still root (so the
socket's peer credentials name uid 0, which no sandbox process has); then the
server keeps uid 0 only as its real and saved uid, acts as the sandbox user
with no capability left (:mod:`container_server.privileges`) and installs the
filter of :mod:`container_server.seccomp` before it starts anything.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import ssl
import sys

import anyio
from aiohttp import web

from container_server.app import DEFAULT_MAX_FRAME_BYTES, STATE, ServerSettings, create_app
from container_server.interpreter import parse_python_command, use_python_command
from container_server.plugin_registry import PluginLoadError
from container_server.privileges import (
    drop_privileges,
    ensure_root_account,
    prepare_sandbox_user,
)
from container_server.shell_state import read_state_file
from container_server.tls import server_context
from events.allocator import settle_allocator
from events.control import ShellState
from events.wire import READY_LINE_PREFIX

__all__ = ["main", "parse_args", "release_free_heap"]

logger = logging.getLogger("container_server")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="container_server", description=__doc__.split("\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 in containers)")
    p.add_argument("--port", type=int, default=0, help="TCP port; 0 picks a free one")
    p.add_argument("--unix-socket", default=None, help="serve on this Unix socket instead of TCP")
    p.add_argument("--working-dir", required=True, help="the shell's initial directory")
    p.add_argument(
        "--api-key-file",
        default=None,
        help="read the session API key from this file instead of SESSION_API_KEY",
    )
    p.add_argument(
        "--tls-file",
        default=None,
        help="serve TLS with the private key and certificate in this PEM file (TCP only)",
    )
    p.add_argument(
        "--shell-state",
        default=None,
        help="start the shell in the state this file holds, if it exists (a snapshot's)",
    )
    p.add_argument("--plugins", nargs="*", default=[], help="plugins to initialize")
    p.add_argument("--username", default=None, help="user the shell runs as (server as root)")
    p.add_argument("--user-id", type=int, default=None, help="uid the shell runs as")
    p.add_argument("--bash", default=None, help="the shell's binary (default: bash on the PATH)")
    p.add_argument(
        "--python-command",
        type=parse_python_command,
        default=None,
        help="JSON argv that starts an interpreter like this one, for plugins' kernels "
        "(default: this interpreter's executable)",
    )
    p.add_argument(
        "--max-processes", type=int, default=None, help="RLIMIT_NPROC for the sandbox user"
    )
    p.add_argument(
        "--max-process-memory-mb",
        type=int,
        default=None,
        help="address-space limit (RLIMIT_AS) of every process the shell starts",
    )
    p.add_argument(
        "--allow-multiple-commands",
        action="store_true",
        help="run several top-level commands in one action (OpenHands refuses them)",
    )
    p.add_argument("--no-change-timeout", type=float, default=10.0, help="soft timeout, seconds")
    p.add_argument("--default-timeout", type=float, default=120.0, help="hard timeout, seconds")
    p.add_argument("--max-frame-bytes", type=int, default=DEFAULT_MAX_FRAME_BYTES)
    p.add_argument("--plugin-init-timeout", type=float, default=60.0)
    p.add_argument("--log-level", default=os.environ.get("OPENHANDS_RT_LOG_LEVEL", "WARNING"))
    return p.parse_args(argv)


class _ListeningSocket(socket.socket):
    """A socket that is already listening: asyncio's second ``listen()`` is skipped.

    Linux records a Unix socket's peer credentials (``SO_PEERCRED``) at each
    ``listen()``; the server listens as root, before dropping its privileges, and
    those credentials must stay root's (the host checks them).
    """

    def listen(self, backlog: int = 0, /) -> None:
        pass


def listen(args: argparse.Namespace, *, tls: bool = False) -> tuple[socket.socket, str]:
    """The server's listening socket and where it listens (for the readiness line)."""
    if args.unix_socket:
        path = args.unix_socket
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)  # left by a previous run of this container
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(path)
            if os.geteuid() == 0:
                # Only the owner of the directory it is in (the host user) may connect.
                owner = os.stat(os.path.dirname(path) or ".").st_uid
                os.chown(path, owner, -1)
                os.chmod(path, 0o600)
            else:
                os.chmod(path, 0o660)
            sock.listen(128)
        except BaseException:
            sock.close()
            raise
        return _ListeningSocket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=sock.detach()), (
            f"unix:{path}"
        )
    sock = socket.create_server((args.host, args.port), reuse_port=False)
    host, port = sock.getsockname()[:2]
    return sock, f"{'https' if tls else 'http'}://{host}:{port}"


async def serve(
    args: argparse.Namespace,
    api_key: str,
    notes: list[str],
    sock: socket.socket,
    where: str,
    restore: ShellState | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> int:
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
        allow_multiple_commands=args.allow_multiple_commands,
        bash_path=args.bash,
        restore=restore,
    )
    try:
        app = create_app(settings)
    except PluginLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    state = app[STATE]
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    try:
        site = web.SockSite(runner, sock, ssl_context=ssl_context)
        await site.start()
        print(f"{READY_LINE_PREFIX}{where}", flush=True)
        release_free_heap()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        # Until a signal asks, or the service dies (it said why in the log).
        async with anyio.create_task_group() as task_group:
            for event in (stop, state.stopped):
                task_group.start_soon(_cancel_when_set, event, task_group.cancel_scope)
    finally:
        await runner.cleanup()
    return 0 if state.failure is None else 1


async def _cancel_when_set(event: asyncio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


def release_free_heap() -> None:
    """Give the pages malloc holds free back to the kernel (glibc's ``malloc_trim``).

    The server's start leaves megabytes of freed heap behind (the imports' and the
    start's temporaries) that glibc keeps resident, because its free chunks lie
    below live ones; an idle server would hold them for its whole life. Called
    once, when the server is up; about a millisecond. Not glibc (musl has no
    ``malloc_trim``): nothing to do.
    """
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    trim(0)


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


def _read_api_key(args: argparse.Namespace) -> str:
    # Removed from the environment either way, so that the shell, plugins and every
    # process the agent starts never see it: popped from os.environ (children's
    # environments), and scrubbed from the process's initial environment block
    # (/proc/<pid>/environ).
    api_key = os.environ.get("SESSION_API_KEY", "")
    _scrub_initial_environment("SESSION_API_KEY")
    os.environ.pop("SESSION_API_KEY", None)
    if args.api_key_file:
        with open(args.api_key_file, encoding="utf-8") as f:
            api_key = f.read().strip()
    return api_key


def _detach_stdin() -> None:
    # The server never reads its standard input. What the engine gave it (under gVisor
    # a host file) is replaced by /dev/null: gVisor lets any process reopen another's
    # descriptors through /proc/<pid>/fd, and this one must not lead anywhere.
    fd = os.open(os.devnull, os.O_RDONLY)
    if fd != 0:
        os.dup2(fd, 0)
        os.close(fd)


def _ensure_tmp() -> None:
    # Images as small as busybox may have no /tmp; bash's here-documents and the
    # agent's tools need one. Made like every distribution's: world-writable, sticky.
    if not os.path.isdir("/tmp"):
        os.makedirs("/tmp", exist_ok=True)
        os.chmod("/tmp", 0o1777)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settle_allocator()
    if args.python_command:
        use_python_command(args.python_command)
    _detach_stdin()
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        api_key = _read_api_key(args)
    except OSError as exc:
        print(f"error: cannot read the API key file: {exc}", file=sys.stderr)
        return 2
    if not api_key:
        print(
            "error: SESSION_API_KEY must be set in the environment (or --api-key-file given)",
            file=sys.stderr,
        )
        return 2
    if args.tls_file and args.unix_socket:
        print("error: --tls-file serves TCP; it cannot go with --unix-socket", file=sys.stderr)
        return 2
    try:
        ssl_context = server_context(args.tls_file) if args.tls_file else None
    except ssl.SSLError as exc:
        print(
            f"error: cannot use the TLS file {args.tls_file}: it must hold a private key and "
            f"its certificate in PEM ({exc})",
            file=sys.stderr,
        )
        return 2
    except OSError as exc:
        print(f"error: cannot use the TLS file {args.tls_file}: {exc}", file=sys.stderr)
        return 2
    try:
        restore = read_state_file(args.shell_state) if args.shell_state else None
    except (OSError, ValueError) as exc:
        print(f"error: cannot read the shell state file: {exc}", file=sys.stderr)
        return 2
    if restore is not None:
        logger.info("the shell starts in the state of %s", args.shell_state)
    os.makedirs(args.working_dir, exist_ok=True)
    notes: list[str] = []
    identity = None
    if args.username and os.geteuid() == 0:
        # Started as root in a container: prepare the sandbox user while still root.
        try:
            _ensure_tmp()
            identity = prepare_sandbox_user(
                args.username,
                workspace=args.working_dir,
                uid=args.user_id,
                max_processes=args.max_processes,
                shell=args.bash or "/bin/bash",
            )
        except (KeyError, OSError, ValueError) as exc:
            print(f"error: cannot switch to user {args.username!r}: {exc}", file=sys.stderr)
            return 2
        notes = list(identity.notes)
        # Already acting as that user after the drop: nothing left to switch.
        args.user_id = None
    elif args.username is None and os.geteuid() == 0:
        # The agent runs as root (run_as_root): an image as small as busybox needs
        # root's account and /tmp as much as a sandbox user's.
        try:
            _ensure_tmp()
            notes = ensure_root_account(args.bash or "/bin/bash")
        except OSError as exc:
            print(f"error: cannot prepare root's account: {exc}", file=sys.stderr)
            return 2
    try:
        sock, where = listen(args, tls=ssl_context is not None)
    except OSError as exc:
        print(f"error: cannot listen: {exc}", file=sys.stderr)
        return 2
    if identity is not None:
        # Only a root server in a container installs the filter: imported here, so that
        # other servers' memory does not hold it.
        from container_server.seccomp import install_filter

        try:
            drop_privileges(identity)
            install_filter()
        except OSError as exc:
            sock.close()
            print(f"error: cannot drop privileges: {exc}", file=sys.stderr)
            return 2
    try:
        return asyncio.run(serve(args, api_key, notes, sock, where, restore, ssl_context))
    except KeyboardInterrupt:
        return 130
