"""fork() end to end with a LocalRuntime: copies, re-execution, pending actions, divergence.

The Docker tests (tests/docker/test_fork_docker.py) check the restored sandbox
itself; these check the fork's stream and its bookkeeping, quickly.
"""

from __future__ import annotations

from pathlib import Path

import anyio
import msgspec
import pytest

from events import (
    CmdOutputObservation,
    CmdRunAction,
    ErrorObservation,
    Event,
    EventStream,
    RuntimeStatus,
    RuntimeStatusObservation,
)
from events.log import read_log
from events.wire import ErrorId
from openhands_rt import LocalRuntime, SandboxConfig, fork
from openhands_rt.forking import ForkError, ForkReport


def config() -> SandboxConfig:
    return SandboxConfig(no_change_timeout=5.0, timeout=30.0)


async def sh(rt: object, command: str) -> CmdOutputObservation:
    obs = await rt.run(CmdRunAction(command))  # type: ignore[attr-defined]
    assert isinstance(obs, CmdOutputObservation), obs
    return obs


SESSION = [
    "echo one > f.txt && export STEP=1",  # relative to the sandbox's own directory
    "mkdir sub && cd sub && echo two > g.txt",
    "export STEP=2 && echo $STEP",
    "echo three >> ../f.txt && cat ../f.txt",
]


async def record(log: Path) -> list[Event]:
    stream = EventStream(log_path=log)
    async with stream, LocalRuntime(stream, config()) as rt:
        for command in SESSION:
            await sh(rt, command)
    return read_log(log)


def observations(events: list[Event]) -> list[CmdOutputObservation]:
    return [e for e in events if isinstance(e, CmdOutputObservation)]


def statuses(events: list[Event]) -> list[RuntimeStatusObservation]:
    return [e for e in events if isinstance(e, RuntimeStatusObservation)]


async def test_a_fork_copies_the_history_and_restores_the_shell(tmp_path: Path) -> None:
    log = tmp_path / "source.log"
    events = await record(log)
    at = observations(events)[2].id  # after "export STEP=2"
    before = log.read_bytes()
    reports: list[ForkReport] = []
    async with fork(log, at_event=at, config=config(), local=True, on_report=reports.append) as rt:
        assert [rt.stream.get(i) for i in range(at + 1)] == events[: at + 1]
        tail = list(rt.stream.iter_events(at + 1))
        assert [type(e).__name__ for e in tail] == ["RuntimeStatusObservation"] * 2
        assert [e.status for e in statuses(tail)] == [RuntimeStatus.STARTING, RuntimeStatus.READY]
        assert f"at event {at}: {at + 1} events copied" in statuses(tail)[0].message
        obs = await sh(rt, "pwd; echo $STEP; cat ../f.txt g.txt")
        lines = obs.content.split()
        assert lines[0].endswith("/sub")
        assert lines[1:] == ["2", "one", "two"]  # "three" was appended after the fork point
        assert obs.cause == len(tail) + at + 1
    assert log.read_bytes() == before  # the source is untouched
    (report,) = reports
    assert (report.copied, report.executed, report.matched, report.diverged) == (at + 1, 3, 3, 0)
    assert (report.pending, report.snapshot_id, report.divergence) == (0, None, None)


async def test_an_action_answered_after_n_runs_once_in_the_fork(tmp_path: Path) -> None:
    log = tmp_path / "source.log"
    events = await record(log)
    last_action = max(e.id for e in events if isinstance(e, CmdRunAction))
    log2 = tmp_path / "fork.log"
    reports: list[ForkReport] = []
    async with fork(
        log, last_action, config=config(), local=True, log_path=log2, on_report=reports.append
    ) as rt:
        # The copies leave it unanswered: the fork's runtime sends it, once.
        with anyio.fail_after(30):
            async for event in rt.stream.follow(last_action + 1):
                if isinstance(event, CmdOutputObservation) and event.cause == last_action:
                    answer = event
                    break
        assert answer.content.split() == ["one", "three"]
        again = await sh(rt, "cat ../f.txt")
        assert again.content.split() == ["one", "three"]  # not run a second time
    assert reports[0].pending == 1
    assert reports[0].executed == 3
    stored = read_log(log2)
    assert stored[: last_action + 1] == events[: last_action + 1]
    assert [o.cause for o in observations(stored)[3:]] == [last_action, again.cause]


async def test_a_divergence_is_reported_and_the_re_execution_goes_on(tmp_path: Path) -> None:
    events = await record(tmp_path / "source.log")
    target = observations(events)[2]
    tampered = tmp_path / "tampered.log"
    async with EventStream(log_path=tampered) as stream:
        for event in events:
            if event.id == target.id:
                event = msgspec.structs.replace(event, content="7")
            stream.append_copy(event)
    end = len(events) - 1
    reports: list[ForkReport] = []
    async with fork(tampered, end, config=config(), local=True, on_report=reports.append) as rt:
        errors = [e for e in rt.stream.iter_events(end + 1) if isinstance(e, ErrorObservation)]
        (error,) = errors
        assert error.error_id == ErrorId.FORK_DIVERGED
        assert error.cause is None
        assert error.content.startswith(
            f"divergence at recorded event {target.id} "
            f"(the observation of action {target.cause}): command output differs"
        )
        assert "-7\n+2" in error.content
        assert "re-executed by the fork" in error.content
        # The actions after the divergence ran too.
        assert (await sh(rt, "cat ../f.txt")).content.split() == ["one", "three"]
    (report,) = reports
    assert (report.executed, report.matched, report.diverged) == (4, 3, 1)
    assert report.divergence is not None
    assert report.divergence.observation_id == target.id


async def test_a_live_stream_and_its_log_are_forked_and_left_as_they_are(tmp_path: Path) -> None:
    log = tmp_path / "live.log"
    stream = EventStream(log_path=log)
    async with stream, LocalRuntime(stream, config()) as rt:
        await sh(rt, "export LIVE=yes")
        await stream.flush()
        length = len(stream)
        # The log is locked by the live stream: it is read without the lock.
        async with fork(log, length - 1, config=config(), local=True) as from_log:
            assert (await sh(from_log, "echo $LIVE")).content.strip() == "yes"
        with pytest.raises(ForkError, match="live writer's unflushed events"):
            async with fork(log, length + 5, config=config(), local=True):
                pass
        async with fork(stream, length - 1, config=config(), local=True) as from_stream:
            assert (await sh(from_stream, "echo $LIVE")).content.strip() == "yes"
            assert from_stream.stream is not stream
        assert len(stream) == length  # nothing was appended to the source
        # And the source's sandbox is the same as before.
        assert (await sh(rt, "echo $LIVE")).content.strip() == "yes"


async def test_fork_at_minus_one_is_a_fresh_sandbox_and_bad_requests_fail(tmp_path: Path) -> None:
    log = tmp_path / "source.log"
    await record(log)
    async with fork(log, -1, config=config(), local=True) as rt:
        assert [type(e) for e in rt.stream.iter_events()] == [RuntimeStatusObservation] * 2
        assert (await sh(rt, "echo ${STEP:-unset}")).content.strip() == "unset"
    with pytest.raises(ForkError, match="no event 99"):
        async with fork(log, 99, local=True):
            pass
    junk = tmp_path / "junk.txt"
    junk.write_text("hello")
    with pytest.raises(ForkError, match="not an event log"):
        async with fork(junk, 0, local=True):
            pass
    with pytest.raises(ForkError, match="is the source"):
        async with fork(log, 0, config=config(), local=True, log_path=log):
            pass
    other = tmp_path / "other.log"
    await record(other)
    with pytest.raises(ForkError, match="already holds"):
        async with fork(log, 0, config=config(), local=True, log_path=other):
            pass
