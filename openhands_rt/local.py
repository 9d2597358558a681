"""LocalRuntime: the same server as a local subprocess, no container.

No isolation at all — for development, tests and benchmarks. The server runs
``sys.executable -m container_server`` on 127.0.0.1 with a random session key
and a free port; ``close()`` stops it (SIGTERM, then SIGKILL after a grace
period) and the server stops its shell, so nothing is left behind.
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

from events import EventStream
from events.wire import CHANNEL_PATH, READY_LINE_PREFIX
from openhands_rt.config import SandboxConfig
from openhands_rt.errors import SandboxStartError
from openhands_rt.plugins import check_plugins
from openhands_rt.runtime import EventStreamRuntime, SandboxEndpoint

__all__ = ["LocalRuntime"]

logger = logging.getLogger(__name__)

_STOP_GRACE_SECONDS = 5.0


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
    ) -> None:
        super().__init__(stream, config, session_id=session_id, client_id=client_id)
        self.process: asyncio.subprocess.Process | None = None
        self.working_dir: str | None = None
        self._temp_dir: str | None = None
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=50)
        self._drainers: list[asyncio.Task[None]] = []

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
        self.process = await asyncio.create_subprocess_exec(
            *args,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        assert self.process.stdout is not None
        assert self.process.stderr is not None
        self._drainers.append(asyncio.get_running_loop().create_task(self._drain_stderr()))
        try:
            line = await asyncio.wait_for(
                self.process.stdout.readline(), self.config.startup_timeout
            )
        except asyncio.TimeoutError:
            raise SandboxStartError(
                f"the local server did not start within {self.config.startup_timeout} s",
                log_tail=list(self._stderr_tail),
            ) from None
        text = line.decode(errors="replace").strip()
        if not text.startswith(READY_LINE_PREFIX):
            await self.process.wait()
            await asyncio.gather(*self._drainers, return_exceptions=True)
            raise SandboxStartError(
                f"the local server exited with code {self.process.returncode} before listening",
                log_tail=list(self._stderr_tail),
            )
        self._drainers.append(asyncio.get_running_loop().create_task(self._drain_stdout()))
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

    async def _drain_stderr(self) -> None:
        assert self.process is not None
        assert self.process.stderr is not None
        async for line in self.process.stderr:
            text = line.decode(errors="replace").rstrip()
            self._stderr_tail.append(text)
            logger.debug("server: %s", text)

    async def _drain_stdout(self) -> None:
        assert self.process is not None
        assert self.process.stdout is not None
        async for _ in self.process.stdout:
            pass

    async def _stop_sandbox(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), _STOP_GRACE_SECONDS)
            except asyncio.TimeoutError:
                logger.warning("local server %s ignored SIGTERM; killing it", process.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
        for task in self._drainers:
            task.cancel()
        await asyncio.gather(*self._drainers, return_exceptions=True)
        self._drainers.clear()
        if self._temp_dir is not None:
            # The workspace may hold anything the agent made: not on the event loop.
            await asyncio.to_thread(shutil.rmtree, self._temp_dir, ignore_errors=True)
            self._temp_dir = None
