"""EventStreamRuntime.hand_over: a connected sandbox goes on with another stream."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from events import (
    CmdOutputObservation,
    CmdRunAction,
    EventStream,
    RuntimeStatus,
    RuntimeStatusObservation,
)
from openhands_rt import LocalRuntime, SandboxConfig, SessionInUseError
from openhands_rt.errors import SandboxClosedError


def config(tmp_path: Path) -> SandboxConfig:
    return SandboxConfig(workspace_dir=str(tmp_path), no_change_timeout=2.0, timeout=30.0)


async def answer_to(stream: EventStream, action_id: int) -> CmdOutputObservation:
    with anyio.fail_after(30):
        async for event in stream.follow(action_id):
            if isinstance(event, CmdOutputObservation) and event.cause == action_id:
                return event
    raise AssertionError("the stream ended")


def statuses(stream: EventStream) -> list[RuntimeStatus]:
    return [e.status for e in stream.iter_events() if isinstance(e, RuntimeStatusObservation)]


async def test_the_new_stream_gets_ready_and_the_shell_as_it_was(tmp_path: Path) -> None:
    first, second = EventStream(), EventStream()
    async with first, second, LocalRuntime(first, config(tmp_path), session_id="h1") as rt:
        await rt.run(CmdRunAction("cd /tmp && export HANDED=over"))
        before = len(first)
        await rt.hand_over(second, session_id="h2", client_id=second.stream_id)
        assert rt.stream is second
        assert rt.session_id == "h2"
        assert statuses(second) == [RuntimeStatus.READY]
        obs = await rt.run(CmdRunAction("echo $HANDED; pwd"))
        assert isinstance(obs, CmdOutputObservation)
        assert obs.content.split() == ["over", "/tmp"]
        # An action another writer appends to the new stream is executed too ...
        appended = second.append(CmdRunAction("echo from-the-new-stream"))
        # ... and nothing reaches the old one any more, nor runs from it.
        first.append(CmdRunAction("echo from-the-old-stream"))
        answer = await answer_to(second, appended.id)
        assert answer.content.strip() == "from-the-new-stream"
        obs = await rt.run(CmdRunAction("true"))
        assert obs.exit_code == 0  # type: ignore[attr-defined]
        assert len(first) == before + 1  # only the action appended above
    assert statuses(second)[-1] is RuntimeStatus.CLOSED


async def test_a_new_client_id_is_not_answered_from_the_old_results(tmp_path: Path) -> None:
    # Both streams' first action has id 0 or so: the server's result cache is per
    # client, so the new stream's action must run, not get the old one's answer.
    first, second = EventStream(), EventStream()
    async with first, second, LocalRuntime(first, config(tmp_path), session_id="h3") as rt:
        old = await rt.run(CmdRunAction("echo old"))
        await rt.hand_over(second, client_id=second.stream_id)
        # The same id the old stream's action had:
        while len(second) < old.cause:  # type: ignore[operator]
            second.append(RuntimeStatusObservation(RuntimeStatus.READY, "padding"))
        new = await rt.run(CmdRunAction("echo new"))
        assert new.cause == old.cause
        assert isinstance(new, CmdOutputObservation)
        assert new.content.strip() == "new"


async def test_a_session_in_use_is_refused_and_the_runtime_keeps_its_stream(
    tmp_path: Path,
) -> None:
    streams = [EventStream(), EventStream(), EventStream()]
    async with (
        streams[0],
        streams[1],
        streams[2],
        LocalRuntime(streams[0], config(tmp_path / "a"), session_id="taken"),
        LocalRuntime(streams[1], config(tmp_path / "b"), session_id="h4") as rt,
    ):
        with pytest.raises(SessionInUseError):
            await rt.hand_over(streams[2], session_id="taken")
        assert rt.stream is streams[1]
        assert rt.session_id == "h4"
        obs = await rt.run(CmdRunAction("echo still-here"))
        assert obs.content.strip() == "still-here"  # type: ignore[attr-defined]
        assert len(streams[2]) == 0


async def test_only_a_connected_runtime_is_handed_over(tmp_path: Path) -> None:
    stream, other = EventStream(), EventStream()
    rt = LocalRuntime(stream, config(tmp_path), session_id="h5")
    with pytest.raises(SandboxClosedError):
        await rt.hand_over(other)
    async with rt:
        pass
    with pytest.raises(SandboxClosedError):
        await rt.hand_over(other)
