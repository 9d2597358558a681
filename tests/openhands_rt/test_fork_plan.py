"""openhands_rt.forking.plan: what a fork copies, restores from and re-executes (no sandbox)."""

from __future__ import annotations

import msgspec
import pytest

from events import (
    CmdOutputChunk,
    CmdOutputObservation,
    CmdRunAction,
    Event,
    EventSource,
    EventStream,
    FileReadAction,
    RuntimeStatus,
    RuntimeStatusObservation,
    SnapshotObservation,
)
from openhands_rt.forking import ForkError, SnapshotChoice, latest_snapshot, plan_fork


def history() -> list[Event]:
    s = EventStream()
    s.append(RuntimeStatusObservation(RuntimeStatus.READY), source=EventSource.ENVIRONMENT)  # 0
    s.append(CmdRunAction("echo a"))  # 1
    s.append(CmdOutputChunk(cause=1, seq=0, data="a\n"), source=EventSource.ENVIRONMENT)  # 2
    s.append(CmdOutputObservation("a", command="echo a", cause=1), source=EventSource.ENVIRONMENT)
    s.append(SnapshotObservation("snap-4"), source=EventSource.ENVIRONMENT)  # 4
    s.append(CmdRunAction("C-c", is_input=True), source=EventSource.ENVIRONMENT)  # 5: not runnable
    s.append(FileReadAction("/workspace/x"))  # 6
    s.append(CmdOutputObservation("b", command="echo b", cause=6), source=EventSource.ENVIRONMENT)
    s.append(SnapshotObservation("snap-8"), source=EventSource.ENVIRONMENT)  # 8
    s.append(CmdRunAction("echo c"), source=EventSource.USER)  # 9
    s.append(CmdOutputObservation("c", command="echo c", cause=9), source=EventSource.ENVIRONMENT)
    s.append(CmdRunAction("sleep 5"))  # 11: answered at 12
    s.append(CmdOutputObservation("", command="sleep 5", cause=11), source=EventSource.ENVIRONMENT)
    return list(s.iter_events())


def test_a_fork_with_no_snapshot_re_executes_every_answered_runnable_action() -> None:
    events = history()
    plan = plan_fork(events, 12)
    assert plan.events == events
    assert plan.snapshot is None
    assert [(s.action.id, s.observation and s.observation.id) for s in plan.steps] == [
        (1, 3),
        (6, 7),
        (9, 10),
        (11, 12),
    ]
    assert plan.pending == []


def test_an_action_answered_after_n_is_pending_not_re_executed() -> None:
    events = history()
    plan = plan_fork(events, 11)
    assert plan.events == events[:12]
    assert [s.action.id for s in plan.steps] == [1, 6, 9]
    assert [a.id for a in plan.pending] == [11]
    # At a chunk of an action whose observation comes later: the same.
    plan = plan_fork(events, 2)
    assert plan.steps == []
    assert [a.id for a in plan.pending] == [1]


def test_n_minus_one_and_zero() -> None:
    events = history()
    empty = plan_fork(events, -1)
    assert (empty.events, empty.steps, empty.pending) == ([], [], [])
    first = plan_fork(events, 0)
    assert first.events == events[:1]
    assert (first.steps, first.pending) == ([], [])
    assert plan_fork([], -1).events == []


@pytest.mark.parametrize("at_event", [13, 100, -2])
def test_an_event_the_source_does_not_have_is_refused(at_event: int) -> None:
    with pytest.raises(ForkError, match=f"no event {at_event}|must be -1") as caught:
        plan_fork(history(), at_event)
    assert isinstance(caught.value, ValueError)
    if at_event > 0:
        assert "holds events 0..12" in str(caught.value)
    with pytest.raises(ForkError, match="holds no events"):
        plan_fork([], 0)
    with pytest.raises(ForkError, match="an integer"):
        plan_fork(history(), True)


def test_a_history_with_a_gap_is_refused() -> None:
    events = history()
    gapped = [*events[:3], msgspec.structs.replace(events[3], id=7)]
    with pytest.raises(ForkError, match="position 3 has id 7"):
        plan_fork(gapped, 3)


def test_the_latest_usable_snapshot_at_or_before_n_is_chosen() -> None:
    events = history()
    both = {"snap-4", "snap-8"}
    assert latest_snapshot(events, 12, both) == SnapshotChoice(8, "snap-8")
    assert latest_snapshot(events, 8, both) == SnapshotChoice(8, "snap-8")
    assert latest_snapshot(events, 7, both) == SnapshotChoice(4, "snap-4")
    assert latest_snapshot(events, 3, both) is None
    # A snapshot this engine does not have (removed, another machine's) is passed over.
    assert latest_snapshot(events, 12, {"snap-4"}) == SnapshotChoice(4, "snap-4")
    assert latest_snapshot(events, 12, set()) is None


def test_a_fork_from_a_snapshot_re_executes_only_what_follows_it() -> None:
    events = history()
    plan = plan_fork(events, 12, {"snap-4", "snap-8"})
    assert plan.snapshot == SnapshotChoice(8, "snap-8")
    assert [s.action.id for s in plan.steps] == [9, 11]
    plan = plan_fork(events, 11, {"snap-4"})
    assert plan.snapshot == SnapshotChoice(4, "snap-4")
    assert [s.action.id for s in plan.steps] == [6, 9]
    assert [a.id for a in plan.pending] == [11]
