"""LocalRuntime: the same server as a local subprocess, no container.

No isolation at all — for development, tests and benchmarks. The server runs
``sys.executable -m container_server`` on 127.0.0.1 with a random session key
and a free port; ``close()`` stops it (SIGTERM, then SIGKILL after a grace
period) and the server stops its shell, so nothing is left behind.

``shell_state``: the shell starts in that state (a snapshot's working
directory and exported environment, :class:`events.control.ShellState`),
handed to the server in a private file (``--shell-state``), as a Docker
sandbox gets it through its run directory.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import secrets
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator

import anyio

from events import EventStream
from events.control import ShellState, encode_control
from events.wire import CHANNEL_PATH, READY_LINE_PREFIX
from openhands_rt.config import SandboxConfig
from openhands_rt.errors import SandboxStartError
from openhands_rt.plugins import check_plugins
from openhands_rt.runtime import EventStreamRuntime, SandboxEndpoint

__all__ = ["LocalRuntime"]

logger = logging.getLogger(__name__)

_STOP_GRACE_SECONDS = 5.0
_STATE_FILE = "shell-state.json"
_READ_SIZE = 65536


class LocalRuntime(EventStreamRuntime):
    """A runtime whose server is a local subprocess (see the module docstring)."""

    session_scope = "local"

    def __init__(
        self,
        stream: EventStream,
        config: SandboxConfig | None = None,
        *,
        session_id: str | None = None,
        client_id: str | None = None,
        shell_state: ShellState | None = None,
    ) -> None:
        super().__init__(stream, config, session_id=session_id, client_id=client_id)
        #: The state the shell starts in (each start of the server); None: a fresh shell.
        self.initial_shell_state = shell_state
        self.process: asyncio.subprocess.Process | None = None
        self.working_dir: str | None = None
        self._temp_dir: str | None = None
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=50)
        # Cancels the server's output drainer (a task of the runtime's supervisor).
        self._drain_scope: anyio.CancelScope | None = None

    async def _start_sandbox(self) -> SandboxEndpoint:
        check_plugins(self.config.plugins)
        if self.config.workspace_dir is not None:
            self.working_dir = os.path.abspath(self.config.workspace_dir)
            os.makedirs(self.working_dir, exist_ok=True)
        else:
            self._temp_dir = tempfile.mkdtemp(prefix=f"openhands-rt-{self.session_id}-")
            self.working_dir = self._temp_dir
        api_key = secrets.token_urlsafe(32)
        env = {**os.environ, **self.config.env, "SESSION_API_KEY": api_key}
        args = self._server_command(self.working_dir)
        state_dir = None
        if self.initial_shell_state is not None:
            state_dir = await anyio.to_thread.run_sync(
                _write_state_file, self.session_id, self.initial_shell_state
            )
            args += ["--shell-state", os.path.join(state_dir, _STATE_FILE)]
        try:
            self.process = await asyncio.create_subprocess_exec(
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                start_new_session=True,
            )
            return await self._until_listening(self.process, api_key)
        finally:
            if state_dir is not None:
                # Read by the server before it listens (or it failed): no longer needed.
                await anyio.to_thread.run_sync(shutil.rmtree, state_dir, True)

    async def _until_listening(
        self, process: asyncio.subprocess.Process, api_key: str
    ) -> SandboxEndpoint:
        assert process.stdout is not None
        self._drain_scope = anyio.CancelScope()
        stderr_done = anyio.Event()
        stdout_free = anyio.Event()
        self._start_soon(
            self._drain_output,
            process,
            self._drain_scope,
            stdout_free,
            stderr_done,
            name=f"local-server-{self.session_id}-output",
        )
        try:
            with anyio.fail_after(self.config.startup_timeout):
                line = await process.stdout.readline()
        except TimeoutError:
            raise SandboxStartError(
                f"the local server did not start within {self.config.startup_timeout} s",
                log_tail=list(self._stderr_tail),
            ) from None
        stdout_free.set()  # the first line was ours; the rest is drained
        text = line.decode(errors="replace").strip()
        if not text.startswith(READY_LINE_PREFIX):
            await process.wait()
            with anyio.move_on_after(_STOP_GRACE_SECONDS):
                await stderr_done.wait()  # its last words are the error's
            raise SandboxStartError(
                f"the local server exited with code {process.returncode} before listening",
                log_tail=list(self._stderr_tail),
            )
        address = text[len(READY_LINE_PREFIX) :]
        url = address.replace("http://", "ws://", 1) + CHANNEL_PATH
        return SandboxEndpoint(url=url, api_key=api_key)

    def _server_command(self, working_dir: str) -> list[str]:
        args = [
            sys.executable,
            "-m",
            "container_server",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--working-dir",
            working_dir,
            "--no-change-timeout",
            str(self.config.no_change_timeout),
            "--default-timeout",
            str(self.config.timeout),
        ]
        if self.config.plugins:
            args += ["--plugins", *(p.name for p in self.config.plugins)]
        if self.config.allow_multiple_commands:
            args.append("--allow-multiple-commands")
        return args

    async def _drain_output(
        self,
        process: asyncio.subprocess.Process,
        scope: anyio.CancelScope,
        stdout_free: anyio.Event,
        stderr_done: anyio.Event,
    ) -> None:
        """Read the server's output until it ends (or ``scope`` is cancelled by the stop).

        Standard error is kept (its tail explains a failed start) from the
        start; standard output once ``stdout_free`` says the ready line was read.
        """

        async def drain_stderr() -> None:
            assert process.stderr is not None
            try:
                async for text in _lines(process.stderr):
                    self._stderr_tail.append(text)
                    logger.debug("server: %s", text)
            finally:
                stderr_done.set()

        async def drain_stdout() -> None:
            assert process.stdout is not None
            await stdout_free.wait()
            while await process.stdout.read(_READ_SIZE):
                pass

        with scope:
            async with anyio.create_task_group() as task_group:
                task_group.start_soon(drain_stderr)
                task_group.start_soon(drain_stdout)

    async def _stop_sandbox(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            with anyio.move_on_after(_STOP_GRACE_SECONDS):
                await process.wait()
            if process.returncode is None:
                logger.warning("local server %s ignored SIGTERM; killing it", process.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        scope, self._drain_scope = self._drain_scope, None
        if scope is not None:
            scope.cancel()
        if self._temp_dir is not None:
            # The workspace may hold anything the agent made: not on the event loop.
            await asyncio.to_thread(shutil.rmtree, self._temp_dir, ignore_errors=True)
            self._temp_dir = None


def _write_state_file(session_id: str, state: ShellState) -> str:
    """A new private directory holding ``state`` (msgspec JSON) for the server's start."""
    directory = tempfile.mkdtemp(prefix=f"openhands-rt-{session_id}-state-")
    fd = os.open(os.path.join(directory, _STATE_FILE), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(encode_control(state))
    return directory


async def _lines(reader: asyncio.StreamReader) -> AsyncIterator[str]:
    """The lines of ``reader`` as text, however long (a line past the buffer limit too)."""
    partial = b""
    while data := await reader.read(_READ_SIZE):
        *lines, partial = (partial + data).split(b"\n")
        if len(partial) > _READ_SIZE:  # a line that never ends is kept in pieces
            lines.append(partial)
            partial = b""
        for line in lines:
            yield line.decode(errors="replace").rstrip()
    if partial:
        yield partial.decode(errors="replace").rstrip()
