"""ActionExecutor: runs one action and returns its observation.

Bash actions are serialised through the one persistent :class:`BashSession`,
except a control key (``C-c``, ...) sent while another action waits on the
running command: that key is typed at once (an interrupt must not queue
behind what it interrupts), and the waiting action reports the outcome;
file, editor and plugin actions run concurrently with whatever the shell is
doing (reading a file while a server runs in the foreground must work).

Streaming output goes through :class:`~container_server.chunks.ChunkCoalescer`
(at most one ``CmdOutputChunk`` per ``chunk_interval`` seconds).
"""

from __future__ import annotations

import asyncio
import logging
import os
import resource
import shutil
import tempfile
from collections.abc import Collection
from typing import assert_never

import anyio

from container_server.bash import BashSession
from container_server.chunks import ChunkCoalescer, ChunkSink
from container_server.editor import FileEditor
from container_server.files import read_file, write_file
from container_server.plugins import PluginHost
from container_server.shell_state import (
    CAPTURE_TIMEOUT,
    ShellStateUnavailable,
    capture_script,
    parse_capture,
)
from events import (
    CmdOutputMetadata,
    CmdOutputObservation,
    CmdRunAction,
    ErrorObservation,
    FileEditAction,
    FileReadAction,
    FileWriteAction,
    IPythonRunCellAction,
    Observation,
)
from events.control import ShellState
from events.wire import ACTION_TYPES, ErrorId, RunnableAction, special_key

__all__ = ["ACTION_TYPES", "ActionExecutor", "RunnableAction"]

logger = logging.getLogger(__name__)


class ActionExecutor:
    """Owns the sandbox's bash session, editor and plugins; runs actions."""

    def __init__(
        self,
        *,
        working_dir: str,
        username: str | None = None,
        user_id: int | None = None,
        no_change_timeout: float = 10.0,
        default_timeout: float | None = 120.0,
        plugins: PluginHost | None = None,
        chunk_interval: float = 0.05,
        max_process_memory_mb: int | None = None,
        allow_multiple_commands: bool = False,
        bash_path: str | None = None,
        restore: ShellState | None = None,
    ) -> None:
        rlimits: dict[int, tuple[int, int]] = {}
        if max_process_memory_mb is not None:
            size = max_process_memory_mb * 1024 * 1024
            rlimits[resource.RLIMIT_AS] = (size, size)
        self.working_dir = working_dir
        self.bash = BashSession(
            working_dir=working_dir,
            username=username,
            user_id=user_id,
            no_change_timeout=no_change_timeout,
            default_timeout=default_timeout,
            rlimits=rlimits,
            allow_multiple_commands=allow_multiple_commands,
            bash_path=bash_path,
            restore=restore,
        )
        self.editor = FileEditor()
        self.plugins = plugins or PluginHost()
        self._bash_lock = asyncio.Lock()
        self._chunk_interval = chunk_interval

    async def start(self) -> None:
        await self.bash.start()

    async def aclose(self) -> None:
        await self.plugins.aclose()
        await self.bash.aclose()

    async def run(self, action: RunnableAction, on_chunk: ChunkSink | None = None) -> Observation:
        """Run ``action``; the observation's ``cause`` is ``action.id``."""
        try:
            observation = await self._dispatch(action, on_chunk)
        except Exception as exc:
            logger.exception("action %s (%s) failed", action.id, type(action).__name__)
            observation = ErrorObservation(
                f"The runtime failed to run {type(action).__name__}: {type(exc).__name__}: {exc}",
                error_id=ErrorId.INTERNAL_ERROR,
            )
        return observation

    async def shell_state(self, earlier: Collection[asyncio.Future[None]] = ()) -> ShellState:
        """The shell's working directory and exported environment (container_server.shell_state).

        Read once the shell actions already waiting for the shell and the
        ``earlier`` runs have finished, and before any shell action that comes
        after this call: the call takes its place in the shell's queue at once
        (before its first await). :class:`ShellStateUnavailable` when the shell
        is not idle then (a command still runs after its timeout) or is down.
        """
        async with self._bash_lock:
            if earlier:
                await asyncio.wait(earlier)
            directory = await anyio.to_thread.run_sync(
                tempfile.mkdtemp, None, "openhands-rt-shell-"
            )
            try:
                path = os.path.join(directory, "state")
                try:
                    with anyio.fail_after(CAPTURE_TIMEOUT):
                        status = await self.bash.run_internal(capture_script(path))
                except TimeoutError:
                    raise ShellStateUnavailable(
                        f"the shell did not come back to its prompt within {CAPTURE_TIMEOUT} s "
                        "while its state was read"
                    ) from None
                if status is None:
                    raise ShellStateUnavailable("the shell exited while its state was read")
                try:
                    return parse_capture(await anyio.Path(path).read_bytes())
                except (OSError, ValueError) as exc:
                    raise ShellStateUnavailable(
                        f"the shell's state could not be read: {exc}"
                    ) from exc
            finally:
                await anyio.to_thread.run_sync(shutil.rmtree, directory, True)

    def interrupt(self, action: RunnableAction) -> bool:
        """Interrupt ``action`` if it is running in a plugin (an IPython cell); see control.py.

        Shell commands are interrupted with ``C-c`` as input instead.
        """
        if isinstance(action, IPythonRunCellAction):
            return self.plugins.interrupt(action)
        return False

    def _preempting_key(self, action: CmdRunAction) -> bytes | None:
        """The control key of ``action`` if it must reach a command another action waits on."""
        if not self._bash_lock.locked() or not self.bash.is_running:
            return None
        return special_key(action.command)

    async def _dispatch(self, action: RunnableAction, on_chunk: ChunkSink | None) -> Observation:
        cwd = self.bash.cwd
        match action:
            case CmdRunAction() if (key := self._preempting_key(action)) is not None:
                # Queued behind the waiting action, the key would arrive only after that
                # action's timeout: it is typed now, and that action reports the outcome.
                sent = self.bash.send_key(key)
                name = action.command.strip()
                note = (
                    f"{name} was sent to the running command; the action waiting for it "
                    "reports how it ended."
                    if sent
                    else f"{name} was not sent: no command was running."
                )
                return CmdOutputObservation(
                    "",
                    command=action.command,
                    metadata=CmdOutputMetadata(exit_code=-1, suffix=f"\n[{note}]"),
                    hidden=action.hidden,
                )
            case CmdRunAction():
                coalescer = (
                    ChunkCoalescer(action.id, on_chunk, interval=self._chunk_interval)
                    if on_chunk is not None
                    else None
                )
                try:
                    async with self._bash_lock:
                        return await self.bash.run(
                            action, coalescer.feed if coalescer is not None else None
                        )
                finally:
                    if coalescer is not None:
                        coalescer.close()
            case FileReadAction():
                return await read_file(action, cwd=cwd)
            case FileWriteAction():
                return await write_file(action, cwd=cwd)
            case FileEditAction():
                return await self.editor.run(action, cwd=cwd)
            case IPythonRunCellAction():
                return await self.plugins.run(action, cwd=cwd, on_chunk=on_chunk)
            case _:
                assert_never(action)
