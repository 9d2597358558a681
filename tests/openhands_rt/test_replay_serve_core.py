"""RecordingCursor, the pure core of serve-recorded: synchronous, no stream, no loop."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from events import (
    Action,
    CmdOutputObservation,
    CmdRunAction,
    EventSource,
    FileReadAction,
    FileReadObservation,
    FileWriteAction,
    IPythonRunCellAction,
)
from openhands_rt.replay import (
    RecordedStep,
    RecordingCursor,
    ReplayMismatchError,
    action_fields,
    same_action,
)

ACTIONS: list[Action] = [
    CmdRunAction("echo a"),
    CmdRunAction("echo a", is_input=True),
    CmdRunAction("echo b", cwd="/workspace"),
    FileReadAction("a.txt"),
    FileReadAction("a.txt", start=2, end=5),
    FileWriteAction("a.txt", "x"),
    IPythonRunCellAction("print(1)"),
]


def recorded(index: int, action: Action) -> RecordedStep:
    """``action`` as recorded with id ``2 * index`` and an observation (None for odd ids)."""
    stored = msgspec.structs.replace(action, id=2 * index, source=EventSource.AGENT)
    observation = (
        CmdOutputObservation("out", "x", id=2 * index + 1, cause=2 * index)
        if index % 2 == 0
        else None
    )
    return RecordedStep(stored, observation)


def as_given(action: Action, new_id: int, *, thought: str = "") -> Action:
    """What an agent sends for ``action``: other metadata and thought, the same request."""
    return msgspec.structs.replace(
        action,
        id=new_id,
        timestamp="2026-01-01T00:00:00Z",
        source=EventSource.USER,
        cause=None,
        thought=thought,
    )


def test_metadata_and_thought_are_not_part_of_an_action() -> None:
    action = CmdRunAction("ls", id=3, source=EventSource.AGENT, thought="look", extra={"k": 1})
    other = CmdRunAction("ls", id=9, timestamp="t", cause=2)
    assert action_fields(action) == action_fields(other)
    assert same_action(action, other)
    assert not same_action(action, CmdRunAction("ls", is_input=True))
    assert not same_action(FileReadAction("a"), FileWriteAction("a", ""))


def test_cursor_serves_in_order_and_refuses_without_moving() -> None:
    steps = [recorded(i, a) for i, a in enumerate(ACTIONS[:3])]
    cursor = RecordingCursor(steps)
    assert (cursor.position, cursor.remaining, cursor.next_step) == (0, 3, steps[0])
    assert cursor.answer(as_given(ACTIONS[0], 10)) is steps[0]
    wrong = cursor.answer(CmdRunAction("echo z", id=11))
    assert isinstance(wrong, ReplayMismatchError)
    assert (wrong.expected, wrong.event_id) == (steps[1].action, 2)
    assert str(wrong) == (
        "action 11 (run 'echo z') does not match recorded event 2 (run 'echo a' (input)); "
        "differing fields: command, is_input"
    )
    assert cursor.position == 1
    other_type = cursor.answer(FileReadAction("a.txt", id=12))
    assert isinstance(other_type, ReplayMismatchError)
    assert "type (CmdRunAction recorded, FileReadAction given)" in str(other_type)
    assert cursor.answer(as_given(ACTIONS[1], 13, thought="again")) is steps[1]
    assert cursor.answer(as_given(ACTIONS[2], 14)) is steps[2]
    done = cursor.answer(as_given(ACTIONS[2], 15))
    assert isinstance(done, ReplayMismatchError)
    assert done.expected is None
    assert str(done) == (
        "action 15 (run 'echo b') is not in the recording: all 3 recorded actions were served"
    )
    assert (cursor.position, cursor.remaining, cursor.next_step) == (3, 0, None)


def test_an_empty_recording_refuses_everything() -> None:
    cursor = RecordingCursor([])
    refused = cursor.answer(FileReadAction("x", id=0))
    assert isinstance(refused, ReplayMismatchError)
    assert refused.expected is None
    assert cursor.position == 0


class CursorMachine(RuleBasedStateMachine):
    """Any interleaving of right, wrong and surplus actions against a model position."""

    @initialize(script=st.lists(st.sampled_from(ACTIONS), max_size=8))
    def load(self, script: list[Action]) -> None:
        self.steps = [recorded(i, a) for i, a in enumerate(script)]
        self.cursor = RecordingCursor(self.steps)
        self.model = 0
        self.next_id = 100

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id

    @precondition(lambda self: self.model < len(self.steps))
    @rule(thought=st.sampled_from(["", "reasoning"]))
    def the_next_recorded_action(self, thought: str) -> None:
        step = self.steps[self.model]
        given = as_given(step.action, self._id(), thought=thought)
        assert self.cursor.answer(given) is step
        self.model += 1

    @rule(action=st.sampled_from(ACTIONS))
    def any_action(self, action: Action) -> None:
        given = as_given(action, self._id())
        expected = self.steps[self.model] if self.model < len(self.steps) else None
        answer = self.cursor.answer(given)
        if expected is not None and same_action(expected.action, given):
            assert answer is expected
            self.model += 1
            return
        assert isinstance(answer, ReplayMismatchError)
        assert answer.actual is given
        assert answer.expected is (None if expected is None else expected.action)
        assert f"action {given.id} (" in str(answer)

    @invariant()
    def position_is_the_model(self) -> None:
        assert self.cursor.position == self.model
        assert self.cursor.remaining == len(self.steps) - self.model
        want = self.steps[self.model] if self.model < len(self.steps) else None
        assert self.cursor.next_step is want


CursorMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=25, deadline=None)
test_cursor_state_machine = CursorMachine.TestCase


@pytest.mark.parametrize("observation", [None, FileReadObservation("text", "a", id=1, cause=0)])
def test_the_step_served_carries_its_recorded_observation(
    observation: FileReadObservation | None,
) -> None:
    step = RecordedStep(FileReadAction("a", id=0), observation)
    served = RecordingCursor([step]).answer(FileReadAction("a"))
    assert isinstance(served, RecordedStep)
    assert served.observation is observation
