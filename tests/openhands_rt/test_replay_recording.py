"""Replay inputs: detecting and loading a recording, and pairing actions with observations."""

from __future__ import annotations

import typing
from pathlib import Path

import msgspec
import pytest

from events import (
    Action,
    CmdOutputChunk,
    CmdOutputObservation,
    CmdRunAction,
    ErrorObservation,
    Event,
    EventSource,
    FileEditAction,
    FileEditObservation,
    FileReadAction,
    FileReadObservation,
    FileWriteAction,
    FileWriteObservation,
    IPythonRunCellAction,
    IPythonRunCellObservation,
    Observation,
    OpenHandsEvent,
    RuntimeStatus,
    RuntimeStatusObservation,
    SnapshotObservation,
)
from events.codec import AnyEvent
from events.log import HEADER
from openhands_rt.replay import Recording, ReplayInputError, detect_format, load_recording

REPO = Path(__file__).resolve().parents[2]
HANDWRITTEN = REPO / "tests" / "data" / "trajectories" / "notes_session.json"

#: One event of every type of the event union, as a sandbox would have made it.
SAMPLES: dict[type[Event], Event] = {
    CmdRunAction: CmdRunAction("ls"),
    IPythonRunCellAction: IPythonRunCellAction("print(1)"),
    FileReadAction: FileReadAction("a.txt"),
    FileWriteAction: FileWriteAction("a.txt", "x"),
    FileEditAction: FileEditAction("a.txt", "create", file_text="x"),
    CmdOutputObservation: CmdOutputObservation("a.txt", "ls"),
    CmdOutputChunk: CmdOutputChunk(0, 0, "a.txt\n"),
    IPythonRunCellObservation: IPythonRunCellObservation("1", "print(1)"),
    FileReadObservation: FileReadObservation("x", "a.txt"),
    FileWriteObservation: FileWriteObservation("a.txt"),
    FileEditObservation: FileEditObservation("created", "a.txt", new_content="x"),
    ErrorObservation: ErrorObservation("no", error_id="file_not_found"),
    RuntimeStatusObservation: RuntimeStatusObservation(RuntimeStatus.READY),
    SnapshotObservation: SnapshotObservation("snap-1"),
    OpenHandsEvent: OpenHandsEvent(kind="message", data={"action": "message"}),
}


class NoteObservation(Observation, frozen=True, tag="test_note"):
    """An observation type outside the event union (Observation is an open base class)."""

    note: str = ""


def test_the_samples_are_the_event_union() -> None:
    # A new event type fails here first: then decide how replay pairs, compares and shows it.
    assert set(SAMPLES) == set(typing.get_args(AnyEvent))
    assert all(type(event) is kind for kind, event in SAMPLES.items())


def test_detect_format() -> None:
    assert detect_format(HEADER) == "event_log"
    assert detect_format(b"[\n  {") == "openhands"
    assert detect_format(b"\xef\xbb\xbf  \n[]") == "openhands"
    for head in (b"", b"{}", b"hello", HEADER[:5], b"\x89PNG\r\n"):
        with pytest.raises(ReplayInputError, match=r"^(an empty file, )?neither an openhands-rt"):
            detect_format(head)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "an empty file, neither"),
        (b"just some text\n", "neither"),
        (b'{"action": "run"}', "neither"),
        (b"[1, 2", "not a valid OpenHands trajectory"),
        (b'[{"foo": 1}]', "not a valid OpenHands trajectory"),
        (HEADER[:-1] + b"\x09", "unsupported event log format version"),
    ],
)
def test_load_recording_refuses_what_is_neither(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "input"
    path.write_bytes(data)
    with pytest.raises(ReplayInputError, match=message):
        load_recording(path)
    assert path.read_bytes() == data  # never touched


def test_load_recording_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ReplayInputError, match="cannot read"):
        load_recording(tmp_path / "nope.json")


def test_pairing_of_the_handwritten_trajectory() -> None:
    recording = load_recording(HANDWRITTEN)
    assert recording.format == "openhands"
    pairs = [(s.action.id, s.observation.id if s.observation else None) for s in recording.steps]
    assert pairs == [(2, 3), (4, 5), (6, 7), (8, 9), (10, 11)]
    kinds = [type(s.action).__name__ for s in recording.steps]
    assert kinds == [
        "CmdRunAction",
        "FileWriteAction",
        "FileReadAction",
        "FileEditAction",
        "CmdRunAction",
    ]
    assert recording.replaced == {3, 5, 7, 9, 11}
    carried = [
        e for e in recording.events if e.id not in recording.replaced and e.id not in dict(pairs)
    ]
    assert [e.kind for e in carried if isinstance(e, OpenHandsEvent)] == [
        "message",
        "agent_state_changed",
        "message",
        "finish",
    ]


def test_pairing_keeps_unanswered_actions_and_drops_chunks_and_status() -> None:
    events: list[Event] = [
        CmdRunAction("echo a", id=0, source=EventSource.AGENT),
        CmdOutputChunk(0, 0, "a\n", id=1, source=EventSource.ENVIRONMENT),
        CmdOutputObservation("a", "echo a", id=2, cause=0, source=EventSource.ENVIRONMENT),
        ErrorObservation("late duplicate", id=3, cause=0),
        CmdRunAction("env-only", id=4, source=EventSource.ENVIRONMENT),
        CmdRunAction("sleep 100", id=5, source=EventSource.USER),
    ]
    recording = Recording(events, "event_log")
    assert [(s.action.id, s.observation) for s in recording.steps] == [
        (0, events[2]),
        (5, None),
    ]
    assert recording.replaced == {1, 2, 3}


@pytest.mark.parametrize("kind", list(SAMPLES), ids=lambda kind: kind.__name__)
def test_pairing_of_every_event_type_after_a_runnable_action(kind: type[Event]) -> None:
    ran = CmdRunAction("ls", id=0, source=EventSource.AGENT)
    event = msgspec.structs.replace(SAMPLES[kind], id=1, cause=0)
    recording = Recording([ran, event], "event_log")
    answer = recording.steps[0].observation
    if kind is CmdOutputChunk:  # replaced, kept as the action's recorded output
        assert (answer, recording.replaced) == (None, {1})
        assert recording.chunks_of(0) == [event]
    elif kind in (RuntimeStatusObservation, SnapshotObservation):
        # dropped: a replay reports its own status; a snapshot is the recorded sandbox's
        assert (answer, recording.replaced) == (None, {1})
    elif issubclass(kind, Observation):  # the action's answer
        assert (answer, recording.replaced) == (event, {1})
    else:  # an action of no known source is run (a step of its own); an OpenHands event carried
        assert (answer, recording.replaced) == (None, frozenset())
    assert recording.steps[0].action is ran
    runnable = [s.action.id for s in recording.steps]
    assert runnable == ([0, 1] if issubclass(kind, Action) else [0])


def test_an_environment_action_is_carried_not_run() -> None:
    recording = Recording(
        [
            FileReadAction("a.txt", id=0, source=EventSource.ENVIRONMENT),
            FileReadObservation("x", "a.txt", id=1, cause=0),
        ],
        "event_log",
    )
    assert (recording.steps, recording.replaced) == ([], frozenset())


def test_an_observation_outside_the_union_is_paired_like_any_observation() -> None:
    ran = CmdRunAction("ls", id=0, source=EventSource.AGENT)
    note = NoteObservation(note="n", id=1, cause=0)
    unrelated = NoteObservation(note="n", id=2, cause=None)
    recording = Recording([ran, note, unrelated], "event_log")
    assert recording.steps[0].observation is note
    assert recording.replaced == {1}


def test_steps_until() -> None:
    recording = load_recording(HANDWRITTEN)
    assert [s.action.id for s in recording.steps_until(None)] == [2, 4, 6, 8, 10]
    assert [s.action.id for s in recording.steps_until(7)] == [2, 4, 6]
    assert recording.steps_until(1) == []
