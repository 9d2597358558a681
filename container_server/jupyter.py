"""The built-in ``jupyter`` plugin: IPython cells run in a real ipykernel.

The kernel is an ``ipykernel`` process started with the server's own
interpreter (``sys.executable``) and driven through jupyter_client's
:class:`AsyncKernelClient` over ``ipc`` sockets in a private (0700)
directory, so no TCP port is opened and no other user can reach the kernel.
The kernel is started by a few lines of bootstrap instead of
``python -m ipykernel_launcher`` for speed: ipykernel's DAP debugger (debugpy,
a quarter of a second to import) is kept from loading while the kernel
initializes (an agent never attaches a debugger; ``import debugpy`` still works
in cells afterwards), and IPython's SQLite history is off (cells run with
``store_history=False``, as OpenHands runs them, so tracebacks say
``Cell In[1]``; the database would only cost a write per cell).

Messages are read by one task per channel and routed by their parent
``msg_id``: the iopub messages of the running cell go to that cell's queue,
and so do two sentinels, the kernel process's exit (its ``wait()``) and the
cell's deadline (a timer). A cell therefore waits on one queue, with no
polling, and notices a dead kernel at once.

Behaviour (OpenHands' texts, see :mod:`container_server.jupyter_output`):

* the kernel's working directory follows the shell's: before a cell, when the
  shell's cwd changed since the last cell, a silent ``os.chdir`` is queued
  ahead of it (one round trip saved: both requests go out back to back);
* output streams as :class:`CmdOutputChunk` events (coalesced like command
  output), and the observation carries it all, images as ``data:`` URLs;
* on timeout the kernel is interrupted (SIGINT to its process group, as
  jupyter_client does), and keeps its state; if it does not go idle within
  ``interrupt_grace`` seconds it is killed and restarted;
* a kernel that dies (``os._exit``, a segfault, the OOM killer) is restarted
  and the observation says that the state is lost;
* cells run one at a time (a lock), as in a notebook.

Errors: :class:`KernelStartError` (a ``RuntimeError``) when a kernel cannot be
started; :meth:`JupyterPlugin.run` turns it into an observation.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import signal
import sys
import tempfile
from collections.abc import Awaitable, Sequence
from typing import Any, Final, TypeVar

import zmq
import zmq.asyncio
from jupyter_client.asynchronous.client import AsyncKernelClient
from jupyter_client.connect import write_connection_file

from container_server.chunks import ChunkCoalescer
from container_server.jupyter_output import (
    CellOutput,
    compose_content,
    kernel_died_note,
    kernel_restart_failed_note,
    timeout_note,
    unresponsive_kernel_note,
)
from container_server.plugins import ChunkSink, Plugin
from container_server.privileges import child_credentials
from events import Action, ErrorObservation, IPythonRunCellAction, IPythonRunCellObservation
from events.wire import ErrorId

__all__ = ["JupyterPlugin", "KernelStartError"]

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
# zmq retries a connect every 100 ms by default; the kernel binds ~0.4 s after spawn.
_RECONNECT_INTERVAL_MS: Final = 5
# Old ipykernels (no iopub_welcome) only prove the iopub subscription with a status
# message; kernel_info is re-sent at this interval until one arrives.
_IOPUB_PROBE_INTERVAL: Final = 0.2
_KILL_GRACE: Final = 2.0
_STDERR_TAIL_BYTES: Final = 2000
# Loop turns given to the iopub reader to take what a dead kernel sent last (bounded, in
# case messages keep coming from elsewhere).
_DRAIN_TURNS: Final = 1000


class KernelStartError(RuntimeError):
    """The IPython kernel could not be started (or died while starting)."""


class _Exited:
    """Sentinel in a cell's queue: the kernel process ended."""


class _Deadline:
    """Sentinel in a cell's queue: a deadline passed."""


class _Interrupt:
    """Sentinel in a cell's queue: the client asked to interrupt the cell."""


_T = TypeVar("_T")

_EXITED: Final = _Exited()
_DEADLINE: Final = _Deadline()
_INTERRUPT: Final = _Interrupt()
_INTERRUPTED_NOTE: Final = "[The cell was interrupted: the caller cancelled it.]"

_Message = dict[str, object]
_QueueItem = _Message | _Exited | _Deadline | _Interrupt


def _parent_id(msg: _Message) -> object:
    parent = msg.get("parent_header")
    return parent.get("msg_id") if isinstance(parent, dict) else None


def _is_idle(msg: _Message) -> bool:
    content = msg.get("content")
    return (
        msg.get("msg_type") == "status"
        and isinstance(content, dict)
        and content.get("execution_state") == "idle"
    )


class _Kernel:
    """One ipykernel process, the client connected to it and the tasks reading its channels."""

    def __init__(
        self,
        process: asyncio.subprocess.Process,
        client: AsyncKernelClient,
        directory: str,
    ) -> None:
        self.process = process
        self.client = client
        self.directory = directory
        self._iopub_ready = asyncio.Event()
        self._replies: dict[str, asyncio.Future[_Message]] = {}
        self._watched_id: str | None = None
        self._watched: asyncio.Queue[_QueueItem] | None = None
        loop = asyncio.get_running_loop()
        self.exited: asyncio.Future[int] = loop.create_future()
        self._closing: asyncio.Future[None] | None = None
        self._tasks = [
            loop.create_task(self._read_iopub(), name=f"jupyter-iopub-{process.pid}"),
            loop.create_task(self._read_shell(), name=f"jupyter-shell-{process.pid}"),
            loop.create_task(self._wait_exit(), name=f"jupyter-exit-{process.pid}"),
        ]

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    async def start(
        cls,
        *,
        python: str,
        cwd: str,
        context: zmq.asyncio.Context,
        timeout: float,
        setup_code: str = "",
    ) -> _Kernel:
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
                    python,
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
                raise KernelStartError(f"cannot run {python} in {cwd}: {exc}") from exc
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
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
            shutil.rmtree(directory, ignore_errors=True)
            raise
        kernel = cls(process, client, directory)
        try:
            await asyncio.wait_for(kernel._handshake(), timeout)
        except asyncio.TimeoutError:
            await kernel.aclose()
            raise KernelStartError(
                f"the IPython kernel did not answer within {timeout:g} s"
            ) from None
        except BaseException:
            await kernel.aclose()
            raise
        return kernel

    async def _handshake(self) -> None:
        reply = self.request(self.client.kernel_info())
        await self._unless_exited(reply)
        while not self._iopub_ready.is_set():
            try:
                await self._unless_exited(
                    asyncio.wait_for(self._iopub_ready.wait(), _IOPUB_PROBE_INTERVAL)
                )
            except asyncio.TimeoutError:
                self.client.kernel_info()

    async def _unless_exited(self, awaitable: Awaitable[_T]) -> _T:
        """Await ``awaitable``, or raise KernelStartError if the process ends first."""
        waiter = asyncio.ensure_future(awaitable)
        either: set[asyncio.Future[Any]] = {waiter, self.exited}
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        finally:
            if not waiter.done():
                waiter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await waiter
        if waiter.cancelled():
            raise KernelStartError(
                f"the IPython kernel exited with code {self.process.returncode} while starting"
                + self._stderr_tail()
            )
        return waiter.result()

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
                msg: _Message = await channel.get_msg()
            except zmq.ZMQError:
                raise
            except Exception:
                # A message that does not decode or verify: drop it, keep reading.
                logger.warning("undecodable iopub message from the kernel", exc_info=True)
                continue
            self._iopub_ready.set()
            if self._watched is not None and _parent_id(msg) == self._watched_id:
                self._watched.put_nowait(msg)

    async def _read_shell(self) -> None:
        channel = self.client.shell_channel
        while True:
            try:
                msg: _Message = await channel.get_msg()
            except zmq.ZMQError:
                raise
            except Exception:
                logger.warning("undecodable shell message from the kernel", exc_info=True)
                continue
            waiter = self._replies.pop(str(_parent_id(msg)), None)
            if waiter is not None and not waiter.done():
                waiter.set_result(msg)

    async def _wait_exit(self) -> None:
        returncode = await self.process.wait()
        # What the kernel sent before it died may still sit in the socket: let the
        # iopub reader take it first, so the cell's last output is not lost.
        socket = self.client.iopub_channel.socket
        reader = self._tasks[0]
        for _ in range(_DRAIN_TURNS):
            if socket is None or socket.closed or reader.done() or not await socket.poll(0):
                break
            await asyncio.sleep(0)
        self.exited.set_result(returncode)
        if self._watched is not None:
            self._watched.put_nowait(_EXITED)

    def request(self, msg_id: str) -> asyncio.Future[_Message]:
        """A future for the shell reply to ``msg_id``."""
        future: asyncio.Future[_Message] = asyncio.get_running_loop().create_future()
        self._replies[msg_id] = future
        return future

    # ------------------------------------------------------------------ cells

    def watch(self, msg_id: str, queue: asyncio.Queue[_QueueItem]) -> None:
        """Route the iopub messages of ``msg_id`` (and the kernel's exit) to ``queue``."""
        self._watched_id = msg_id
        self._watched = queue
        if self.exited.done():
            queue.put_nowait(_EXITED)

    def unwatch(self) -> None:
        self._watched_id = None
        self._watched = None

    def interrupt(self) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGINT)

    # ------------------------------------------------------------------ closing

    async def aclose(self) -> None:
        """Stop the process (its whole group), the reader tasks and the sockets. Idempotent."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(self.exited), _KILL_GRACE)
            except asyncio.TimeoutError:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.process.pid, signal.SIGKILL)
        await asyncio.shield(self.exited)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, zmq.ZMQError):
                await task
        for future in self._replies.values():
            future.cancel()
        self._replies.clear()
        self.client.stop_channels()
        shutil.rmtree(self.directory, ignore_errors=True)


class JupyterPlugin(Plugin):
    """Runs :class:`IPythonRunCellAction` cells in one persistent IPython kernel."""

    name = "jupyter"
    handles = (IPythonRunCellAction,)

    def __init__(
        self,
        *,
        python: str | None = None,
        default_timeout: float = 120.0,
        interrupt_grace: float = 5.0,
        start_timeout: float = 30.0,
        chunk_interval: float = 0.05,
        max_output_chars: int = 30_000,
    ) -> None:
        self.python_interpreter_path = python or sys.executable
        self._default_timeout = default_timeout
        self._interrupt_grace = interrupt_grace
        self._start_timeout = start_timeout
        self._chunk_interval = chunk_interval
        self._max_output_chars = max_output_chars
        self._working_dir = os.getcwd()
        self._context: zmq.asyncio.Context | None = None
        self._kernel: _Kernel | None = None
        self._kernel_cwd = ""
        self._lock = asyncio.Lock()
        self._closed = False
        # Code other plugins run in every kernel this plugin starts (see use_peers).
        self._setup_code = ""
        # The cell running now: its action and its queue (for interrupt()).
        self._current: tuple[Action, asyncio.Queue[_QueueItem]] | None = None

    def use_peers(self, plugins: Sequence[Plugin]) -> None:
        self._setup_code = "\n".join(p.kernel_setup for p in plugins if p.kernel_setup)

    @property
    def kernel_pid(self) -> int | None:
        """The running kernel's process id (None before start or after close)."""
        return self._kernel.pid if self._kernel is not None else None

    async def initialize(self, username: str | None, *, working_dir: str = ".") -> None:
        # The server already runs as ``username``; the kernel inherits that.
        self._working_dir = os.path.abspath(working_dir)
        async with self._lock:
            if self._context is None:
                self._context = zmq.asyncio.Context()
                self._context.setsockopt(zmq.RECONNECT_IVL, _RECONNECT_INTERVAL_MS)
            if self._kernel is None:
                await self._start(self._working_dir)

    async def _start(self, cwd: str) -> _Kernel:
        assert self._context is not None
        if not os.path.isdir(cwd):
            cwd = self._working_dir
        kernel = await _Kernel.start(
            python=self.python_interpreter_path,
            cwd=cwd,
            context=self._context,
            timeout=self._start_timeout,
            setup_code=self._setup_code,
        )
        self._kernel = kernel
        self._kernel_cwd = cwd
        logger.info("IPython kernel %d started in %s", kernel.pid, cwd)
        return kernel

    async def _restart(self, cwd: str) -> _Kernel:
        old, self._kernel = self._kernel, None
        if old is not None:
            await old.aclose()
        if self._closed:
            raise KernelStartError("the Jupyter plugin is shutting down")
        return await self._start(cwd)

    async def run(
        self, action: Action, *, cwd: str, on_chunk: ChunkSink | None = None
    ) -> IPythonRunCellObservation | ErrorObservation:
        if not isinstance(action, IPythonRunCellAction):
            raise TypeError(f"the jupyter plugin runs IPythonRunCellAction, not {action!r}")
        async with self._lock:
            if self._closed or self._context is None:
                return ErrorObservation(
                    "The Jupyter plugin is not running (not initialized, or closed).",
                    error_id=ErrorId.PLUGIN_UNAVAILABLE,
                )
            coalescer = (
                ChunkCoalescer(action.id, on_chunk, interval=self._chunk_interval)
                if on_chunk is not None
                else None
            )
            notes_before: list[str] = []
            try:
                kernel = self._kernel
                if kernel is None or kernel.exited.done():
                    if kernel is not None:
                        notes_before.append(
                            kernel_died_note(kernel.process.returncode, cell_started=False)
                        )
                        logger.warning("IPython kernel %d died between cells", kernel.pid)
                    kernel = await self._restart(cwd)
                return await self._run_cell(kernel, action, cwd, coalescer, notes_before)
            except KernelStartError as exc:
                return ErrorObservation(
                    f"The IPython kernel could not be started: {exc}",
                    error_id=ErrorId.JUPYTER_KERNEL_UNAVAILABLE,
                )
            finally:
                if coalescer is not None:
                    coalescer.close()

    async def _run_cell(
        self,
        kernel: _Kernel,
        action: IPythonRunCellAction,
        cwd: str,
        coalescer: ChunkCoalescer | None,
        notes_before: list[str],
    ) -> IPythonRunCellObservation:
        if cwd != self._kernel_cwd:
            # Silent: no output, no execution count, and a failure does not abort the cell.
            kernel.client.execute(f"__import__('os').chdir({cwd!r})", silent=True)
            self._kernel_cwd = cwd
        output = CellOutput(max_chars=self._max_output_chars)
        notes_after: list[str] = []
        queue: asyncio.Queue[_QueueItem] = asyncio.Queue()
        # stop_on_error=False: cells are sent one at a time, so a request already queued
        # behind a failed one (e.g. after a cancelled cell) is a new cell, never to skip.
        msg_id: str = kernel.client.execute(
            action.code,
            silent=False,
            store_history=False,
            allow_stdin=False,
            stop_on_error=False,
        )
        kernel.watch(msg_id, queue)
        self._current = (action, queue)
        timeout = action.timeout if action.timeout is not None else self._default_timeout
        loop = asyncio.get_running_loop()
        timer = loop.call_later(timeout, queue.put_nowait, _DEADLINE)
        interrupted = False
        completed = False
        started = False
        try:
            while True:
                item = await queue.get()
                if isinstance(item, dict):
                    started = True
                    if _is_idle(item):
                        completed = not interrupted
                        break
                    msg_type = item.get("msg_type")
                    content = item.get("content")
                    if isinstance(msg_type, str) and isinstance(content, dict):
                        text = output.feed(msg_type, content)
                        if text and coalescer is not None:
                            coalescer.feed(text)
                elif isinstance(item, _Exited):
                    logger.warning(
                        "IPython kernel %d died running a cell (exit status %s)",
                        kernel.pid,
                        kernel.process.returncode,
                    )
                    notes_after.append(
                        kernel_died_note(
                            kernel.process.returncode,
                            # Without a message for the cell it may have died before
                            # starting it, or died too fast for its messages to get out.
                            cell_started=True if started else None,
                        )
                    )
                    await self._restart_noting(cwd, notes_after)
                    break
                elif isinstance(item, _Interrupt):
                    if not interrupted:
                        notes_after.append(_INTERRUPTED_NOTE)
                        interrupted = True
                        kernel.interrupt()
                        timer.cancel()
                        timer = loop.call_later(self._interrupt_grace, queue.put_nowait, _DEADLINE)
                elif not interrupted:
                    notes_after.append(timeout_note(timeout))
                    interrupted = True
                    kernel.interrupt()
                    timer = loop.call_later(self._interrupt_grace, queue.put_nowait, _DEADLINE)
                else:
                    logger.warning("IPython kernel %d ignored the interrupt", kernel.pid)
                    notes_after.append(unresponsive_kernel_note(self._interrupt_grace))
                    await self._restart_noting(cwd, notes_after)
                    break
        except asyncio.CancelledError:
            # Nobody waits for this cell any more: do not leave it running in the kernel.
            if not interrupted:
                kernel.interrupt()
            raise
        finally:
            self._current = None
            timer.cancel()
            kernel.unwatch()
        body = output.render()
        content = compose_content(
            body,
            cwd=cwd,
            python=self.python_interpreter_path,
            completed=completed,
            notes_before=notes_before,
            notes_after=notes_after,
        )
        return IPythonRunCellObservation(content, action.code, image_urls=output.image_urls)

    def interrupt(self, action: Action) -> bool:
        current = self._current
        if current is None or current[0] is not action:
            return False
        current[1].put_nowait(_INTERRUPT)
        return True

    async def _restart_noting(self, cwd: str, notes: list[str]) -> None:
        try:
            await self._restart(cwd)
        except KernelStartError as exc:
            logger.error("IPython kernel restart failed: %s", exc)
            notes.append(kernel_restart_failed_note(str(exc)))

    async def aclose(self) -> None:
        # Not under the lock first: stopping the kernel ends a running cell at once
        # (it sees the exit, and does not restart a closed plugin).
        self._closed = True
        kernel = self._kernel
        try:
            if kernel is not None:
                await kernel.aclose()
        finally:
            async with self._lock:
                kernel, self._kernel = self._kernel, None
                try:
                    if kernel is not None:
                        await kernel.aclose()
                finally:
                    if self._context is not None:
                        self._context.destroy(linger=0)
                        self._context = None
