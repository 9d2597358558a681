"""LocalRuntime behaves as asyncio users expect (issue 14): session ownership, cancellation."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import anyio
import pytest

from events import (
    CmdOutputObservation,
    CmdRunAction,
    EventSource,
    EventStream,
    IPythonRunCellAction,
    IPythonRunCellObservation,
)
from openhands_rt import (
    JupyterRequirement,
    LocalRuntime,
    SandboxConfig,
    SandboxError,
    SessionInUseError,
)


def config(workspace: Path) -> SandboxConfig:
    return SandboxConfig(workspace_dir=str(workspace), no_change_timeout=5.0, timeout=60.0)


async def test_a_live_session_id_is_refused_in_this_process(tmp_path: Path) -> None:
    async with (
        EventStream() as stream1,
        EventStream() as stream2,
        LocalRuntime(stream1, config(tmp_path), session_id="owned") as rt1,
    ):
        for stream in (stream2, stream1):
            second = LocalRuntime(stream, config(tmp_path), session_id="owned")
            with pytest.raises(SessionInUseError, match="'owned' is in use") as caught:
                await asyncio.wait_for(second.connect(), 10)
            assert isinstance(caught.value, SandboxError)
            assert second.process is None  # refused before starting anything
            await second.aclose()
        obs = await asyncio.wait_for(rt1.run(CmdRunAction("echo mine")), 20)
        assert isinstance(obs, CmdOutputObservation)
        assert obs.content.strip() == "mine"
        # One observation per action: nobody else answered on stream1.
        answers = [e for e in stream1.iter_events() if e.cause == obs.cause]
        assert answers == [obs]
    # Closed: the id is free again.
    async with (
        EventStream() as stream3,
        LocalRuntime(stream3, config(tmp_path), session_id="owned"),
    ):
        pass


async def test_cancelling_run_interrupts_the_command(tmp_path: Path) -> None:
    async with (
        EventStream() as stream,
        LocalRuntime(stream, config(tmp_path), session_id="cancel") as rt,
    ):
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(rt.run(CmdRunAction("sleep 1000", blocking=True)), 1.0)
        sleep = next(e for e in stream.iter_events() if getattr(e, "command", "") == "sleep 1000")
        # By the time the cancellation completed, the command was interrupted and answered.
        answer = next(e for e in stream.iter_events() if e.cause == sleep.id)
        assert isinstance(answer, CmdOutputObservation)
        assert answer.exit_code == 130
        # The interrupt is on the stream, honest about who sent it.
        interrupt = next(e for e in stream.iter_events() if getattr(e, "command", "") == "C-c")
        assert isinstance(interrupt, CmdRunAction)
        assert interrupt.is_input
        assert interrupt.source == EventSource.ENVIRONMENT
        assert interrupt.id > sleep.id
        assert f"action {sleep.id}" in interrupt.thought
        # The next action runs at once.
        started = time.monotonic()
        obs = await asyncio.wait_for(rt.run(CmdRunAction("echo next")), 10)
        assert isinstance(obs, CmdOutputObservation)
        assert obs.content.strip() == "next"
        assert obs.exit_code == 0
        assert time.monotonic() - started < 5


async def test_an_answer_that_comes_with_the_cancellation_is_kept(tmp_path: Path) -> None:
    """run() awaits its future directly, so a cancellation cancels it; an answer that
    arrives after the cancel but before run() handles it must still count as the answer
    (no interrupt is sent for an action that was answered)."""
    async with (
        EventStream() as stream,
        LocalRuntime(stream, config(tmp_path), session_id="late-answer") as rt,
    ):
        task = asyncio.create_task(rt.run(CmdRunAction("sleep 1000", blocking=True)))
        async for sleep in stream.follow():
            if getattr(sleep, "command", "") == "sleep 1000":
                break
        await asyncio.sleep(0.2)  # run() has sent it and waits on its future now
        task.cancel()
        # In the same loop iteration, before run() sees its cancellation: the answer.
        rt._on_channel_event(CmdOutputObservation("late", command="sleep 1000", cause=sleep.id))
        with pytest.raises(asyncio.CancelledError):
            await task
        answers = [e for e in stream.iter_events() if e.cause == sleep.id]
        assert [a.content for a in answers] == ["late"]
        assert not any(getattr(e, "command", "") == "C-c" for e in stream.iter_events())


async def test_a_cancelled_task_group_interrupts_its_commands(tmp_path: Path) -> None:
    async with (
        EventStream() as stream,
        LocalRuntime(stream, config(tmp_path), session_id="group") as rt,
    ):
        # anyio delivers cancellation again at every await until the scope is left:
        # the interrupt must still get through and be waited for.
        with anyio.move_on_after(1.0) as scope:
            async with anyio.create_task_group() as group:
                group.start_soon(rt.run, CmdRunAction("sleep 1000; echo no", blocking=True))
        assert scope.cancelled_caught
        obs = await asyncio.wait_for(rt.run(CmdRunAction("echo free")), 10)
        assert isinstance(obs, CmdOutputObservation)
        assert obs.content.strip() == "free"
        assert "no" not in [
            e.content.strip() for e in stream.iter_events() if isinstance(e, CmdOutputObservation)
        ]


async def test_cancelling_run_interrupts_the_ipython_cell(tmp_path: Path) -> None:
    cfg = SandboxConfig(
        workspace_dir=str(tmp_path / "ws"),
        plugins=[JupyterRequirement()],
        env={"HOME": str(tmp_path)},
        timeout=60.0,
    )
    async with EventStream() as stream, LocalRuntime(stream, cfg, session_id="cell") as rt:
        warm = await asyncio.wait_for(rt.run(IPythonRunCellAction("x = 41")), 30)
        assert isinstance(warm, IPythonRunCellObservation)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(
                rt.run(IPythonRunCellAction("import time\nx += 1\ntime.sleep(1000)")), 2.0
            )
        cell = next(e for e in stream.iter_events() if "time.sleep(1000)" in getattr(e, "code", ""))
        answer = next(e for e in stream.iter_events() if e.cause == cell.id)
        assert isinstance(answer, IPythonRunCellObservation)
        assert "KeyboardInterrupt" in answer.content
        assert "interrupted" in answer.content
        # The kernel kept its state and takes the next cell at once.
        started = time.monotonic()
        obs = await asyncio.wait_for(rt.run(IPythonRunCellAction("print(x)")), 10)
        assert isinstance(obs, IPythonRunCellObservation)
        assert obs.content.splitlines()[0] == "42"
        assert time.monotonic() - started < 5
