"""The built-in ``jupyter`` plugin: IPython cells run in a real ipykernel.

The kernel itself (its process, connection and reader tasks) is
:class:`container_server.jupyter_kernel.Kernel`; this module is the plugin that
keeps one kernel per sandbox and runs cells in it. Cells run with
``store_history=False``, as OpenHands runs them, so tracebacks say
``Cell In[1]``.

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
* a kernel whose connection fails (a channel reader dies) is killed and
  restarted; the cell it was running ends with an :class:`ErrorObservation`
  (``jupyter_kernel_unavailable``) that says so;
* cells run one at a time (a lock), as in a notebook.

A cell waits on one queue: the kernel routes the cell's iopub messages and its
own end there, and the cell's deadline and interrupt arrive there as
sentinels (a timer, not a task).

Errors: :class:`KernelStartError` (a :class:`~container_server.errors.ServerError`
and a ``RuntimeError``) when a kernel cannot be started; :meth:`JupyterPlugin.run`
turns it into an observation.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from typing import Final, assert_never

import anyio
import zmq
import zmq.asyncio

from container_server.chunks import ChunkCoalescer
from container_server.interpreter import python_command
from container_server.jupyter_kernel import (
    KERNEL_SETUP_VARIABLE,
    Exited,
    Failed,
    Kernel,
    KernelStartError,
    Message,
)
from container_server.jupyter_output import (
    CellOutput,
    compose_content,
    kernel_connection_failed_note,
    kernel_died_note,
    kernel_restart_failed_note,
    timeout_note,
    unresponsive_kernel_note,
)
from container_server.plugins import ChunkSink, Plugin
from events import Action, ErrorObservation, IPythonRunCellAction, IPythonRunCellObservation
from events.wire import ErrorId

__all__ = ["KERNEL_SETUP_VARIABLE", "JupyterPlugin", "KernelStartError"]

logger = logging.getLogger(__name__)

# zmq retries a connect every 100 ms by default; the kernel binds ~0.4 s after spawn.
_RECONNECT_INTERVAL_MS: Final = 5


class _Deadline:
    """Sentinel in a cell's queue: a deadline passed."""


class _Interrupt:
    """Sentinel in a cell's queue: the client asked to interrupt the cell."""


_QueueItem = Message | Exited | Failed | _Deadline | _Interrupt

_DEADLINE: Final = _Deadline()
_INTERRUPT: Final = _Interrupt()
_INTERRUPTED_NOTE: Final = "[The cell was interrupted: the caller cancelled it.]"


def _is_idle(msg: Message) -> bool:
    content = msg.get("content")
    return (
        msg.get("msg_type") == "status"
        and isinstance(content, dict)
        and content.get("execution_state") == "idle"
    )


class JupyterPlugin(Plugin):
    """Runs :class:`IPythonRunCellAction` cells in one persistent IPython kernel."""

    name = "jupyter"
    handles = (IPythonRunCellAction,)

    def __init__(
        self,
        *,
        python: str | Sequence[str] | None = None,
        default_timeout: float = 120.0,
        interrupt_grace: float = 5.0,
        start_timeout: float = 30.0,
        chunk_interval: float = 0.05,
        max_output_chars: int = 30_000,
    ) -> None:
        # The argv prefix that starts the kernel's interpreter (the server's own by default),
        # and the interpreter's path as the agent can run it (the trailer names it).
        if python is None:
            self._python = python_command()
            # A bundle's launcher names itself so, through its loader's --argv0.
            self.python_interpreter_path = sys.executable
        else:
            self._python = [python] if isinstance(python, str) else list(python)
            self.python_interpreter_path = self._python[-1]
        self._default_timeout = default_timeout
        self._interrupt_grace = interrupt_grace
        self._start_timeout = start_timeout
        self._chunk_interval = chunk_interval
        self._max_output_chars = max_output_chars
        self._working_dir = os.getcwd()
        self._context: zmq.asyncio.Context | None = None
        self._kernel: Kernel | None = None
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

    async def _start(self, cwd: str) -> Kernel:
        assert self._context is not None
        if not os.path.isdir(cwd):
            cwd = self._working_dir
        try:
            with anyio.fail_after(self._start_timeout):
                kernel = await Kernel.start(
                    python=self._python,
                    cwd=cwd,
                    context=self._context,
                    setup_code=self._setup_code,
                )
        except TimeoutError:
            raise KernelStartError(
                f"the IPython kernel did not answer within {self._start_timeout:g} s"
            ) from None
        self._kernel = kernel
        self._kernel_cwd = cwd
        logger.info("IPython kernel %d started in %s", kernel.pid, cwd)
        return kernel

    async def _restart(self, cwd: str) -> Kernel:
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
                if kernel is None or kernel.ended:
                    if kernel is not None and kernel.failure is not None:
                        # Logged as an error by the kernel when its reader died.
                        notes_before.append(kernel_connection_failed_note(kernel.failure))
                    elif kernel is not None:
                        notes_before.append(kernel_died_note(kernel.returncode, cell_started=False))
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
        kernel: Kernel,
        action: IPythonRunCellAction,
        cwd: str,
        coalescer: ChunkCoalescer | None,
        notes_before: list[str],
    ) -> IPythonRunCellObservation | ErrorObservation:
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
        kernel.watch(msg_id, queue.put_nowait)
        self._current = (action, queue)
        timeout = action.timeout if action.timeout is not None else self._default_timeout
        loop = asyncio.get_running_loop()
        timer = loop.call_later(timeout, queue.put_nowait, _DEADLINE)
        interrupted = False
        completed = False
        started = False
        failure: str | None = None
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
                elif isinstance(item, Failed):
                    # Logged as an error by the kernel; the cell cannot finish without it.
                    failure = item.reason
                    await self._restart_noting(cwd, notes_after)
                    break
                elif isinstance(item, Exited):
                    logger.warning(
                        "IPython kernel %d died running a cell (exit status %s)",
                        kernel.pid,
                        kernel.returncode,
                    )
                    notes_after.append(
                        kernel_died_note(
                            kernel.returncode,
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
                elif isinstance(item, _Deadline):
                    if interrupted:
                        logger.warning("IPython kernel %d ignored the interrupt", kernel.pid)
                        notes_after.append(unresponsive_kernel_note(self._interrupt_grace))
                        await self._restart_noting(cwd, notes_after)
                        break
                    notes_after.append(timeout_note(timeout))
                    interrupted = True
                    kernel.interrupt()
                    timer = loop.call_later(self._interrupt_grace, queue.put_nowait, _DEADLINE)
                else:
                    assert_never(item)
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
        if failure is not None:
            return ErrorObservation(
                "\n".join(
                    [
                        *notes_before,
                        *([body] if body else []),
                        kernel_connection_failed_note(failure),
                        *notes_after,
                    ]
                ),
                error_id=ErrorId.JUPYTER_KERNEL_UNAVAILABLE,
            )
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
