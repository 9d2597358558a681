"""Cancelling DockerRuntime.run() interrupts the command it started (issue 14, point 10).

The runtime comes from ``make_runtime``: these run on Swarm too (tests/swarm).
"""

from __future__ import annotations

import asyncio
import time

import anyio
import pytest
from support import ConfigFactory, RuntimeFactory, session_id, sh

from events import (
    CmdOutputObservation,
    CmdRunAction,
    EventSource,
    EventStream,
    IPythonRunCellAction,
    IPythonRunCellObservation,
)
from openhands_rt import JupyterRequirement, SandboxConfig
from openhands_rt.image import build_runtime_image

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]


async def test_cancelling_run_interrupts_the_command(
    make_runtime: RuntimeFactory, make_config: ConfigFactory
) -> None:
    async with (
        EventStream() as stream,
        make_runtime(stream, make_config(oci_runtime="runc"), session_id=session_id()) as rt,
    ):
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(rt.run(CmdRunAction("sleep 1000", blocking=True)), 1.0)
        events = list(stream.iter_events())
        sleep = next(e for e in events if getattr(e, "command", "") == "sleep 1000")
        answer = next(e for e in events if e.cause == sleep.id)
        assert isinstance(answer, CmdOutputObservation)
        assert answer.exit_code == 130
        interrupt = next(e for e in events if getattr(e, "command", "") == "C-c")
        assert interrupt.source == EventSource.ENVIRONMENT
        started = time.monotonic()
        obs = await asyncio.wait_for(sh(rt, "echo next"), 10)
        assert obs.content.strip() == "next"
        assert time.monotonic() - started < 5
        # A cancel scope (anyio re-cancels at every await) interrupts just as well.
        with anyio.move_on_after(1.0) as scope:
            await rt.run(CmdRunAction("sleep 1000; echo no", blocking=True))
        assert scope.cancelled_caught
        obs = await asyncio.wait_for(sh(rt, "echo free"), 10)
        assert obs.content.strip() == "free"


async def test_cancelling_run_interrupts_the_ipython_cell(
    make_runtime: RuntimeFactory, base_image: str, test_repository: str, test_labels: dict[str, str]
) -> None:
    build = await build_runtime_image(
        base_image, repository=test_repository, labels=test_labels, plugins=[JupyterRequirement()]
    )
    config = SandboxConfig(
        runtime_container_image=build.image,
        labels=dict(test_labels),
        plugins=[JupyterRequirement()],
        oci_runtime="runc",
        timeout=60.0,
    )
    async with (
        EventStream() as stream,
        make_runtime(stream, config, session_id=session_id()) as rt,
    ):
        warm = await asyncio.wait_for(rt.run(IPythonRunCellAction("x = 41")), 60)
        assert isinstance(warm, IPythonRunCellObservation)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(
                rt.run(IPythonRunCellAction("import time\nx += 1\ntime.sleep(1000)")), 2.0
            )
        events = list(stream.iter_events())
        cell = next(e for e in events if "time.sleep(1000)" in getattr(e, "code", ""))
        answer = next(e for e in events if e.cause == cell.id)
        assert isinstance(answer, IPythonRunCellObservation)
        assert "KeyboardInterrupt" in answer.content
        started = time.monotonic()
        obs = await asyncio.wait_for(rt.run(IPythonRunCellAction("print(x)")), 10)
        assert isinstance(obs, IPythonRunCellObservation)
        assert obs.content.splitlines()[0] == "42"
        assert time.monotonic() - started < 5
