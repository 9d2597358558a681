"""One IPython kernel: its ``ipykernel`` process, the client connected to it, its readers.

The kernel is an ``ipykernel`` process started with the given interpreter and
driven through jupyter_client's :class:`AsyncKernelClient` over ``ipc``
sockets in a private (0700) directory, so no TCP port is opened and no other
user can reach the kernel. It is started by a few lines of bootstrap instead
of ``python -m ipykernel_launcher`` for speed: ipykernel's DAP debugger
(debugpy, a quarter of a second to import) is kept from loading while the
kernel initializes (an agent never attaches a debugger; ``import debugpy``
still works in cells afterwards), and IPython's SQLite history is off.

Messages are read by one task per channel and routed by their parent
``msg_id``: the iopub messages of the watched cell go to that cell's queue,
and so do the kernel's end — its process's exit (:data:`EXITED`) or the death
of a reader (a :class:`Failed`). A cell therefore waits on one queue, with no
polling, and notices a dead kernel at once.

Tasks. :meth:`Kernel.start` (never the constructor) starts one host task per
kernel; its anyio task group runs the iopub reader, the shell reader and the
exit watcher. The kernel is started by one task (the plugin's initialize, or a
cell that restarts it) and closed by another (the plugin's close), and an anyio
task group must be entered and left by one task: hence the host task, which
:meth:`Kernel.aclose` cancels and awaits. A reader that dies ends the kernel
loudly: logged as an error, the process killed, the watched cell handed a
:class:`Failed`, :attr:`Kernel.failure` set; never silence. A start that fails
(or is cancelled by its deadline) closes what it started.

Errors: :class:`KernelStartError` (a :class:`~container_server.errors.ServerError`
and a ``RuntimeError``) when a kernel cannot be started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import signal
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, TypeVar

import anyio
import anyio.abc
import anyio.lowlevel
import zmq
import zmq.asyncio
from jupyter_client.asynchronous.client import AsyncKernelClient
from jupyter_client.connect import write_connection_file

from container_server.errors import ServerError
from container_server.privileges import child_credentials

__all__ = [
    "EXITED",
    "KERNEL_SETUP_VARIABLE",
    "Exited",
    "Failed",
    "Kernel",
    "KernelStartError",
    "Message",
    "parent_id",
]

logger = logging.getLogger(__name__)

# Runs in the kernel process as ``python -c``. ``sys.modules[name] = None`` makes that
# import fail, so ipykernel sees no debugpy; the entry is removed once the kernel is set up.
_BOOTSTRAP: Final = """\
import sys
if sys.path and sys.path[0] == "":
    del sys.path[0]
_blocked = "debugpy" not in sys.modules
if _blocked:
    sys.modules["debugpy"] = None
from ipykernel.kernelapp import IPKernelApp
app = IPKernelApp.instance()
app.initialize()
if _blocked and sys.modules.get("debugpy", 0) is None:
    del sys.modules["debugpy"]
del _blocked
# What other plugins give the kernel (e.g. agent_skills' file_editor), in its namespace.
import os as _os
exec(compile(_os.environ.pop("OPENHANDS_RT_KERNEL_SETUP", ""), "<plugin setup>", "exec"),
     app.shell.user_ns)
del _os
app.start()
"""
KERNEL_SETUP_VARIABLE: Final = "OPENHANDS_RT_KERNEL_SETUP"
_KERNEL_OPTIONS: Final = (
    "--HistoryManager.enabled=False",
    # Tracebacks without colour codes (they are stripped anyway; this saves the work).
    "--InteractiveShell.colors=nocolor",
)
# Old ipykernels (no iopub_welcome) only prove the iopub subscription with a status
# message; kernel_info is re-sent at this interval until one arrives.
_IOPUB_PROBE_INTERVAL: Final = 0.2
_KILL_GRACE: Final = 2.0
_STDERR_TAIL_BYTES: Final = 2000
# Loop turns given to the iopub reader to take what a dead kernel sent last (bounded, in
# case messages keep coming from elsewhere).
_DRAIN_TURNS: Final = 1000

_T = TypeVar("_T")

Message = dict[str, object]


class KernelStartError(ServerError, RuntimeError):
    """The IPython kernel could not be started (or died while starting)."""


class Exited:
    """Sentinel in a cell's queue: the kernel process ended."""


class Failed:
    """Sentinel in a cell's queue: a channel reader died; ``reason`` says how."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


EXITED: Final = Exited()


def parent_id(msg: Message) -> object:
    """The ``msg_id`` of the request ``msg`` answers (None if it has no parent)."""
    parent = msg.get("parent_header")
    return parent.get("msg_id") if isinstance(parent, dict) else None


def _describe(exc: BaseException) -> str:
    # A task group's error comes as a group (of one, when one reader died).
    inner = getattr(exc, "exceptions", None)
    if isinstance(inner, tuple) and len(inner) == 1 and isinstance(inner[0], BaseException):
        return _describe(inner[0])
    return f"{type(exc).__name__}: {exc}"


class Kernel:
    """One ipykernel process, the client connected to it and the tasks reading its channels.

    Made by :meth:`start`, ended by :meth:`aclose`; the constructor starts nothing.
    """

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        client: AsyncKernelClient,
        directory: str,
    ) -> None:
        self.process = process
        self.client = client
        self.directory = directory
        #: Why the kernel was stopped by the server (a reader died), or None.
        self.failure: str | None = None
        self._iopub_ready = anyio.Event()
        self._replies: dict[str, anyio.Event] = {}
        self._watched_id: str | None = None
        self._watched: Callable[[Message | Exited | Failed], None] | None = None
        self._ended = anyio.Event()
        # Scopes of the waits that the kernel's end cuts short (see _unless_ended).
        self._end_waiters: set[anyio.CancelScope] = set()
        self._host: asyncio.Task[None] | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self._closing = False
        self._closed = anyio.Event()

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    @property
    def ended(self) -> bool:
        """True once the process exited or a reader died: the kernel runs no more cells."""
        return self._ended.is_set()

    async def wait_ended(self) -> None:
        await self._ended.wait()

    @classmethod
    async def start(
        cls,
        *,
        python: Sequence[str],
        cwd: str,
        context: zmq.asyncio.Context,
        setup_code: str = "",
    ) -> Kernel:
        """Spawn a kernel in ``cwd``, connect to it and wait until it answers.

        No deadline of its own: the caller sets one (``anyio.fail_after``); a start
        cut short, or failed, leaves no process, task, socket or directory behind.
        """
        directory = tempfile.mkdtemp(prefix="oh-jupyter-")
        try:
            connection_file = os.path.join(directory, "kernel.json")
            _, info = write_connection_file(
                connection_file,
                ip=os.path.join(directory, "k"),
                transport="ipc",
                key=secrets.token_hex(16).encode(),
            )
            # The kernel's own stderr (startup failures, crashes); tiny, so opened inline.
            log_fd = os.open(
                os.path.join(directory, "kernel.log"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600
            )
            try:
                process = await asyncio.create_subprocess_exec(
                    *python,
                    "-c",
                    _BOOTSTRAP,
                    "-f",
                    connection_file,
                    *_KERNEL_OPTIONS,
                    stdin=asyncio.subprocess.DEVNULL,
                    env={**os.environ, KERNEL_SETUP_VARIABLE: setup_code},
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=log_fd,
                    cwd=cwd,
                    # Its own process group: an interrupt reaches what the cell started too.
                    start_new_session=True,
                    # The sandbox user through and through, never the server's real uid.
                    **child_credentials(),  # type: ignore[arg-type]
                )
            except OSError as exc:
                raise KernelStartError(f"cannot run {python[0]} in {cwd}: {exc}") from exc
            finally:
                os.close(log_fd)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        try:
            client = AsyncKernelClient(context=context)
            client.load_connection_info(info)
            client.start_channels(shell=True, iopub=True, stdin=False, hb=False, control=False)
        except BaseException:
            with anyio.CancelScope(shield=True):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
                shutil.rmtree(directory, ignore_errors=True)
            raise
        kernel = cls(process, client, directory)
        try:
            await kernel._open()
            await kernel._handshake()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await kernel.aclose()
            raise
        return kernel

    async def _open(self) -> None:
        """Start the host task and wait until its readers run."""
        started = anyio.Event()
        # The one bare task of the kernel: its task group must outlive the task that
        # starts the kernel and be left by the one that closes it (see the module
        # docstring). aclose() cancels and awaits it; _serve reports every failure.
        self._host = asyncio.get_running_loop().create_task(
            self._serve(started), name=f"jupyter-kernel-{self.pid}"
        )
        await started.wait()

    async def _serve(self, started: anyio.Event) -> None:
        try:
            async with anyio.create_task_group() as task_group:
                self._task_group = task_group
                task_group.start_soon(self._read_iopub, name=f"jupyter-iopub-{self.pid}")
                task_group.start_soon(self._read_shell, name=f"jupyter-shell-{self.pid}")
                task_group.start_soon(self._wait_exit, name=f"jupyter-exit-{self.pid}")
                started.set()
        except Exception as exc:
            self._fail(exc)
        finally:
            started.set()

    def _fail(self, exc: BaseException) -> None:
        """A reader died: the kernel is useless without it. Say so, stop it, end it."""
        reason = _describe(exc)
        self.failure = reason
        logger.error(
            "IPython kernel %d: a channel reader died (%s); killing the kernel",
            self.pid,
            reason,
            exc_info=exc,
        )
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        self._end(Failed(reason))

    def _end(self, item: Exited | Failed) -> None:
        if self._ended.is_set():
            return
        self._ended.set()
        for scope in self._end_waiters:
            scope.cancel()
        if self._watched is not None:
            self._watched(item)

    async def _handshake(self) -> None:
        reply = self.request(self.client.kernel_info())
        await self._unless_ended(reply.wait)
        while not self._iopub_ready.is_set():
            with anyio.move_on_after(_IOPUB_PROBE_INTERVAL):
                await self._unless_ended(self._iopub_ready.wait)
            if not self._iopub_ready.is_set():
                self.client.kernel_info()

    async def _unless_ended(self, wait: Callable[[], Awaitable[_T]]) -> _T:
        """Await ``wait()``, or raise KernelStartError if the kernel ends first."""
        with anyio.CancelScope() as scope:
            self._end_waiters.add(scope)
            try:
                if self._ended.is_set():
                    scope.cancel()
                return await wait()
            finally:
                self._end_waiters.discard(scope)
        if self.failure is not None:
            raise KernelStartError(
                f"the connection to the IPython kernel failed while starting: {self.failure}"
            )
        raise KernelStartError(
            f"the IPython kernel exited with code {self.returncode} while starting"
            + self._stderr_tail()
        )

    def _stderr_tail(self) -> str:
        try:
            with open(os.path.join(self.directory, "kernel.log"), "rb") as log:
                log.seek(0, os.SEEK_END)
                log.seek(max(0, log.tell() - _STDERR_TAIL_BYTES))
                tail = log.read().decode("utf-8", "replace").strip()
        except OSError:
            return ""
        return f": {tail}" if tail else ""

    # ------------------------------------------------------------------ channels

    async def _read_iopub(self) -> None:
        channel = self.client.iopub_channel
        while True:
            try:
                msg: Message = await channel.get_msg()
            except zmq.ZMQError:
                raise
            except Exception:
                # A message that does not decode or verify: drop it, keep reading.
                logger.warning("undecodable iopub message from the kernel", exc_info=True)
                continue
            self._iopub_ready.set()
            if self._watched is not None and parent_id(msg) == self._watched_id:
                self._watched(msg)

    async def _read_shell(self) -> None:
        channel = self.client.shell_channel
        while True:
            try:
                msg: Message = await channel.get_msg()
            except zmq.ZMQError:
                raise
            except Exception:
                logger.warning("undecodable shell message from the kernel", exc_info=True)
                continue
            waiter = self._replies.pop(str(parent_id(msg)), None)
            if waiter is not None:
                waiter.set()

    async def _wait_exit(self) -> None:
        await self.process.wait()
        # What the kernel sent before it died may still sit in the socket: let the
        # iopub reader take it first, so the cell's last output is not lost.
        socket = self.client.iopub_channel.socket
        for _ in range(_DRAIN_TURNS):
            if socket is None or socket.closed or not await socket.poll(0):
                break
            await anyio.lowlevel.checkpoint()
        self._end(EXITED)

    def request(self, msg_id: str) -> anyio.Event:
        """An event set when the shell reply to ``msg_id`` arrives."""
        event = anyio.Event()
        self._replies[msg_id] = event
        return event

    # ------------------------------------------------------------------ cells

    def watch(self, msg_id: str, sink: Callable[[Message | Exited | Failed], None]) -> None:
        """Hand the iopub messages of ``msg_id`` (and the kernel's end) to ``sink``."""
        self._watched_id = msg_id
        self._watched = sink
        if self._ended.is_set():
            sink(EXITED if self.failure is None else Failed(self.failure))

    def unwatch(self) -> None:
        self._watched_id = None
        self._watched = None

    def interrupt(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGINT)

    # ------------------------------------------------------------------ closing

    async def aclose(self) -> None:
        """Stop the process (its whole group), the tasks and the sockets. Idempotent.

        Runs to its end even if the caller is cancelled meanwhile (bounded by the
        kill grace); a second caller waits for the first.
        """
        if self._closing:
            await self._closed.wait()
            return
        self._closing = True
        try:
            with anyio.CancelScope(shield=True):
                await self._close()
        finally:
            self._closed.set()

    async def _close(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGTERM)
            with anyio.move_on_after(_KILL_GRACE):
                await self.process.wait()
            if self.process.returncode is None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.process.pid, signal.SIGKILL)
        await self.process.wait()
        if self._task_group is not None and self.failure is None:
            # The exit watcher hands the end (after the last output) to a running cell.
            await self._ended.wait()
        if self._task_group is not None:
            self._task_group.cancel_scope.cancel()
        if self._host is not None:
            if self._task_group is None:
                self._host.cancel()  # it has not entered its task group yet
            await asyncio.wait({self._host})
        self._end(EXITED)
        for scope in self._end_waiters:
            scope.cancel()
        self._replies.clear()
        self.client.stop_channels()
        shutil.rmtree(self.directory, ignore_errors=True)
