"""Pipelined replay through LocalRuntime: order on the shell, barriers, a divergence in flight.

A replay sends a run of recorded shell commands without waiting for each
answer (``max_in_flight``); these tests check that what the shell sees, what
is compared and what is reported are those of a replay that waits.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest

from events import (
    Action,
    CmdOutputObservation,
    CmdRunAction,
    EventStream,
    FileReadAction,
    FileWriteAction,
    Observation,
)
from events.log import read_log
from openhands_rt import LocalRuntime, SandboxConfig
from openhands_rt.replay import (
    MAX_IN_FLIGHT,
    Recording,
    ReplayResult,
    StepReport,
    load_recording,
    replay,
)


def config(workspace: Path) -> SandboxConfig:
    return SandboxConfig(workspace_dir=str(workspace), no_change_timeout=2.0, timeout=30.0)


async def record(tmp_path: Path, actions: Sequence[Action]) -> Recording:
    """Run ``actions`` one by one in a fresh workspace into a durable log; load it."""
    workspace, log = tmp_path / "recorded-ws", tmp_path / "session.log"
    workspace.mkdir()
    stream = EventStream(log_path=log)
    async with stream, LocalRuntime(stream, config(workspace)) as rt:
        for action in actions:
            await rt.run(action)
    return load_recording(log)


async def replay_into(
    tmp_path: Path, recording: Recording, name: str, *, max_in_flight: int
) -> tuple[ReplayResult, list[StepReport], list[Observation], LocalRuntime]:
    """Replay into a fresh workspace (run in the recorded one's place); the observations
    the new stream holds after the replay, in order."""
    workspace = tmp_path / "recorded-ws"
    for path in sorted(workspace.rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    reports: list[StepReport] = []
    stream = EventStream(log_path=tmp_path / f"{name}.log")
    async with stream, LocalRuntime(stream, config(workspace)) as rt:
        result = await replay(
            recording, rt, verify=True, on_step=reports.append, max_in_flight=max_in_flight
        )
        assert rt.pending_actions() == []  # every action sent was answered before the return
    observations = [e for e in read_log(tmp_path / f"{name}.log") if isinstance(e, Observation)]
    return result, reports, observations, rt


async def test_commands_in_flight_run_in_the_recorded_order(tmp_path: Path) -> None:
    # Each command reads what the one before it left in the shell: out of order, the
    # counts differ from the recorded ones.
    steps: list[Action] = [CmdRunAction("n=0")]
    steps += [CmdRunAction("n=$((n + 1)); echo step $n") for _ in range(40)]
    recording = await record(tmp_path, steps)
    result, reports, observations, _ = await replay_into(
        tmp_path, recording, "pipelined", max_in_flight=MAX_IN_FLIGHT
    )
    assert result.divergence is None
    assert (result.total, result.executed, result.matched) == (41, 41, 41)
    assert [r.index for r in reports] == list(range(41))
    outputs = [o.content.strip() for o in observations if isinstance(o, CmdOutputObservation)]
    assert outputs == [""] + [f"step {i}" for i in range(1, 41)]


async def test_file_actions_wait_for_the_shell(tmp_path: Path) -> None:
    # A file action runs beside the shell in the server, in the shell's working
    # directory when it starts: it must not start before the `cd` has run, and the
    # command after it must not start before it has written.
    steps: list[Action] = [
        CmdRunAction("mkdir -p sub/deeper && cd sub"),
        CmdRunAction("cd deeper"),
        FileWriteAction("note.txt", "written\n"),
        CmdRunAction("cat note.txt"),
        CmdRunAction("cd .. && ls deeper"),
        FileReadAction("deeper/note.txt"),
        CmdRunAction("echo done"),
    ]
    recording = await record(tmp_path, steps)
    result, reports, _, _ = await replay_into(
        tmp_path, recording, "pipelined", max_in_flight=MAX_IN_FLIGHT
    )
    assert result.divergence is None, result.divergence.describe() if result.divergence else ""
    assert (result.executed, result.matched) == (7, 7)
    assert all(r.matched for r in reports)


async def test_a_divergence_in_flight_is_reported_as_without_pipelining(tmp_path: Path) -> None:
    steps: list[Action] = [
        CmdRunAction("echo before"),
        CmdRunAction("date +%N"),
        *(CmdRunAction(f"echo after {i}") for i in range(5)),
    ]
    recording = await record(tmp_path, steps)
    date_step = recording.steps[1]
    outcomes = {}
    for depth in (1, MAX_IN_FLIGHT):
        result, reports, observations, _ = await replay_into(
            tmp_path, recording, f"depth-{depth}", max_in_flight=depth
        )
        divergence = result.divergence
        assert divergence is not None
        assert divergence.action_id == date_step.action.id
        assert date_step.observation is not None
        assert divergence.observation_id == date_step.observation.id
        assert divergence.reason == "command output differs"
        assert [r.matched for r in reports] == [True, False]
        outcomes[depth] = (result.total, result.executed, result.matched, result.unverified)
        answered = [o.content.strip() for o in observations if isinstance(o, CmdOutputObservation)]
        assert answered[0] == "before"
        if depth == 1:
            assert len(answered) == 2  # nothing ran after it
        else:
            # All seven fit in the window: those sent behind it ran, in order, and were
            # answered before the replay returned.
            assert answered[2:] == [f"after {i}" for i in range(5)]
    assert outcomes[1] == outcomes[MAX_IN_FLIGHT] == (7, 2, 1, 0)


async def test_max_in_flight_must_be_positive(tmp_path: Path) -> None:
    recording = await record(tmp_path, [CmdRunAction("true")])
    stream = EventStream()
    async with stream, LocalRuntime(stream, config(tmp_path / "recorded-ws")) as rt:
        with pytest.raises(ValueError, match="max_in_flight"):
            await replay(recording, rt, max_in_flight=0)


async def test_a_cancelled_replay_leaves_nothing_running(tmp_path: Path) -> None:
    recording = await record(tmp_path, [CmdRunAction("sleep 0.5") for _ in range(4)])
    stream = EventStream()
    async with stream, LocalRuntime(stream, config(tmp_path / "recorded-ws")) as rt:
        with anyio.move_on_after(0.3) as scope:
            await replay(recording, rt, verify=True)
        assert scope.cancelled_caught
        # Every command sent was interrupted or ran, and was answered; the shell takes
        # the next command as usual.
        assert rt.pending_actions() == []
        after = await rt.run(CmdRunAction("echo still here"))
        assert isinstance(after, CmdOutputObservation)
        assert after.content.strip() == "still here"
