"""Event models: construction validation, immutability, defaults, positional arguments."""

from __future__ import annotations

import math
from typing import Any

import msgspec
import pytest

from events import (
    Action,
    CmdOutputChunk,
    CmdOutputMetadata,
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
    decode_event,
    encode_event,
)
from events.models import EDITOR_COMMANDS

BAD_TIMEOUTS = [math.nan, math.inf, -math.inf, -1, -0.001, True, False, "5", [5]]
GOOD_TIMEOUTS = [None, 0, 0.0, 0.001, 1, 2.5, 600, 1e9]


@pytest.mark.parametrize("timeout", BAD_TIMEOUTS, ids=repr)
@pytest.mark.parametrize("action_type", [CmdRunAction, IPythonRunCellAction])
def test_timeout_rejects_non_finite_negative_and_non_numbers(
    action_type: type[CmdRunAction | IPythonRunCellAction], timeout: Any
) -> None:
    with pytest.raises(ValueError, match="timeout"):
        action_type("x", timeout=timeout)


@pytest.mark.parametrize("timeout", GOOD_TIMEOUTS, ids=repr)
@pytest.mark.parametrize("action_type", [CmdRunAction, IPythonRunCellAction])
def test_timeout_accepts_finite_non_negative_numbers(
    action_type: type[CmdRunAction | IPythonRunCellAction], timeout: float | None
) -> None:
    assert action_type("x", timeout=timeout).timeout == timeout


def test_timeout_is_validated_on_replace_too() -> None:
    with pytest.raises(ValueError, match="timeout"):
        msgspec.structs.replace(CmdRunAction("ls"), timeout=-5.0)


@pytest.mark.parametrize("command", sorted(EDITOR_COMMANDS))
def test_file_edit_accepts_every_editor_command(command: str) -> None:
    action = FileEditAction(
        "/w/f.py", command, file_text="x", old_str="a", new_str="b", insert_line=3
    )
    assert action.command == command


def test_editor_commands_are_the_openhands_set() -> None:
    assert {"view", "create", "str_replace", "insert", "undo_edit"} == EDITOR_COMMANDS


@pytest.mark.parametrize("command", ["", "write", "View", "delete", "create "])
def test_file_edit_rejects_unknown_commands(command: str) -> None:
    with pytest.raises(ValueError, match="command"):
        FileEditAction("/w/f.py", command, file_text="x")


@pytest.mark.parametrize(
    ("command", "fields"),
    [
        ("create", {}),
        ("str_replace", {"new_str": "b"}),
        ("insert", {}),
        ("insert", {"insert_line": 1}),
        ("insert", {"new_str": "x"}),
    ],
)
def test_missing_editor_parameters_are_the_editors_to_answer(
    command: str, fields: dict[str, Any]
) -> None:
    """As in OpenHands, such an action is built and sent; the editor answers it
    (``Parameter `file_text` is required for command: create.``), which the
    agent reads: tests/docker/test_fidelity.py."""
    action = FileEditAction("/w/f.py", command, **fields)
    assert decode_event(encode_event(action)) == action


@pytest.mark.parametrize("view_range", [[], [1], [1, 2, 3]])
def test_view_range_must_be_a_pair(view_range: list[int]) -> None:
    with pytest.raises(ValueError, match="view_range"):
        FileEditAction("/w/f.py", "view", view_range=view_range)
    assert FileEditAction("/w/f.py", "view", view_range=[1, -1]).view_range == [1, -1]


def test_runtime_status_must_be_a_known_status() -> None:
    with pytest.raises(ValueError, match="status"):
        RuntimeStatusObservation("exploded")  # type: ignore[arg-type]
    assert RuntimeStatusObservation("ready").status == RuntimeStatus.READY  # type: ignore[arg-type]


def test_a_snapshot_names_its_snapshot() -> None:
    with pytest.raises(ValueError, match="snapshot_id"):
        SnapshotObservation("")
    snapshot = SnapshotObservation("snap-1")
    assert (snapshot.snapshot_id, snapshot.content, snapshot.cause) == ("snap-1", "", None)


def _one_of_each() -> list[Event]:
    return [
        CmdRunAction("ls"),
        IPythonRunCellAction("1"),
        FileReadAction("/f"),
        FileWriteAction("/f", "x"),
        FileEditAction("/f", "view"),
        CmdOutputObservation("out", "ls"),
        CmdOutputChunk(0, 0, "x"),
        IPythonRunCellObservation("out", "1"),
        FileReadObservation("x", "/f"),
        FileWriteObservation("/f"),
        FileEditObservation("ok", "/f"),
        ErrorObservation("boom"),
        RuntimeStatusObservation(RuntimeStatus.READY),
        SnapshotObservation("snap-1"),
        OpenHandsEvent(kind="message", data={"action": "message"}),
    ]


@pytest.mark.parametrize("event", _one_of_each(), ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("field", ["id", "timestamp", "source", "cause", "extra"])
def test_events_are_immutable(event: Event, field: str) -> None:
    with pytest.raises(AttributeError):
        setattr(event, field, None)


@pytest.mark.parametrize("event", _one_of_each(), ids=lambda e: type(e).__name__)
def test_event_metadata_defaults_before_append(event: Event) -> None:
    assert event.id == -1
    assert event.timestamp is None
    assert event.source is None
    assert event.extra is None
    if not isinstance(event, CmdOutputChunk):
        assert event.cause is None


def test_payload_fields_are_immutable() -> None:
    action = CmdRunAction("ls")
    with pytest.raises(AttributeError):
        action.command = "rm -rf /"  # type: ignore[misc]
    metadata = CmdOutputMetadata()
    with pytest.raises(AttributeError):
        metadata.exit_code = 0  # type: ignore[misc]


def test_metadata_is_keyword_only() -> None:
    with pytest.raises(TypeError):
        CmdRunAction("ls", False, False, None, None, False, "", 5)  # type: ignore[call-arg]
    assert CmdRunAction("ls", id=5, source=EventSource.AGENT, cause=2).id == 5


def test_replace_makes_a_modified_copy() -> None:
    action = CmdRunAction("ls")
    stored = msgspec.structs.replace(action, id=7, source=EventSource.AGENT)
    assert (stored.id, stored.source, stored.command) == (7, EventSource.AGENT, "ls")
    assert action.id == -1


def test_class_hierarchy() -> None:
    for action_type in (
        CmdRunAction,
        IPythonRunCellAction,
        FileReadAction,
        FileWriteAction,
        FileEditAction,
    ):
        assert issubclass(action_type, Action)
    for observation_type in (
        CmdOutputObservation,
        IPythonRunCellObservation,
        FileReadObservation,
        FileWriteObservation,
        FileEditObservation,
        ErrorObservation,
        RuntimeStatusObservation,
        SnapshotObservation,
    ):
        assert issubclass(observation_type, Observation)
    assert not issubclass(CmdOutputChunk, Action | Observation)
    assert issubclass(CmdOutputChunk, Event)


def test_defaults_match_the_api() -> None:
    run = CmdRunAction("ls")
    assert (run.is_input, run.blocking, run.timeout, run.cwd, run.hidden, run.thought) == (
        False,
        False,
        None,
        None,
        False,
        "",
    )
    assert IPythonRunCellAction("1").timeout is None
    read = FileReadAction("/f")
    assert (read.start, read.end, read.view_range) == (0, -1, None)
    write = FileWriteAction("/f", "x")
    assert (write.start, write.end) == (0, -1)
    edit = FileEditAction("/f", "undo_edit")
    assert (edit.file_text, edit.old_str, edit.new_str, edit.insert_line, edit.view_range) == (
        None,
        None,
        None,
        None,
        None,
    )
    assert CmdOutputMetadata() == CmdOutputMetadata(
        exit_code=-1,
        pid=-1,
        username=None,
        hostname=None,
        working_dir=None,
        py_interpreter_path=None,
        prefix="",
        suffix="",
    )
    output = CmdOutputObservation("out", "ls")
    assert output.metadata == CmdOutputMetadata()
    assert output.hidden is False
    assert IPythonRunCellObservation("o", "c").image_urls == []
    assert FileWriteObservation("/f").content == ""
    edited = FileEditObservation("ok", "/f")
    assert (edited.prev_exist, edited.old_content, edited.new_content, edited.diff) == (
        False,
        None,
        None,
        "",
    )
    assert ErrorObservation("boom").error_id == ""
    assert RuntimeStatusObservation(RuntimeStatus.CLOSED).message == ""
    assert OpenHandsEvent(kind="null", data={}).is_action is False


def test_mutable_defaults_are_not_shared() -> None:
    one, two = IPythonRunCellObservation("a", "x"), IPythonRunCellObservation("b", "y")
    one.image_urls.append("data:,")
    assert two.image_urls == []


@pytest.mark.parametrize("exit_code", [-1, 0, 1, 127, 255])
def test_cmd_output_exit_code_property(exit_code: int) -> None:
    observation = CmdOutputObservation(
        "out", "ls", metadata=CmdOutputMetadata(exit_code=exit_code, pid=12)
    )
    assert observation.exit_code == exit_code
    assert observation.message == f"Command `ls` executed with exit code {exit_code}."


def test_cmd_output_agent_text_wraps_content_in_prefix_and_suffix() -> None:
    observation = CmdOutputObservation(
        "body", "ls", metadata=CmdOutputMetadata(prefix="[before]\n", suffix="\n[after]")
    )
    assert observation.to_agent_text() == "[before]\nbody\n[after]"


def test_required_fields_may_be_positional() -> None:
    assert CmdRunAction("ls").command == "ls"
    assert IPythonRunCellAction("print(1)").code == "print(1)"
    assert FileReadAction("/f").path == "/f"
    write = FileWriteAction("/f", "body")
    assert (write.path, write.content) == ("/f", "body")
    edit = FileEditAction("/f", "create", "text")
    assert (edit.path, edit.command, edit.file_text) == ("/f", "create", "text")
    output = CmdOutputObservation("out", "ls")
    assert (output.content, output.command) == ("out", "ls")
    chunk = CmdOutputChunk(3, 0, "x")
    assert (chunk.cause, chunk.seq, chunk.data) == (3, 0, "x")
    ipython = IPythonRunCellObservation("out", "code")
    assert (ipython.content, ipython.code) == ("out", "code")
    read = FileReadObservation("text", "/f")
    assert (read.content, read.path) == ("text", "/f")
    assert FileWriteObservation("/f", "done").content == "done"
    edited = FileEditObservation("ok", "/f", True)
    assert (edited.content, edited.path, edited.prev_exist) == ("ok", "/f", True)
    error = ErrorObservation("boom", "E1")
    assert (error.content, error.error_id) == ("boom", "E1")
    status = RuntimeStatusObservation(RuntimeStatus.ERROR, "no engine")
    assert (status.status, status.message) == (RuntimeStatus.ERROR, "no engine")


def test_missing_required_fields_raise() -> None:
    with pytest.raises(TypeError):
        CmdRunAction()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        CmdOutputChunk(3, 0)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        FileWriteAction("/f")  # type: ignore[call-arg]


def test_event_source_values_and_str() -> None:
    assert [s.value for s in EventSource] == ["agent", "user", "environment"]
    assert str(EventSource.AGENT) == "agent"
    assert EventSource("user") is EventSource.USER
    assert [s.value for s in RuntimeStatus] == ["building", "starting", "ready", "error", "closed"]


def test_events_compare_by_value() -> None:
    assert CmdRunAction("ls", id=1) == CmdRunAction("ls", id=1)
    assert CmdRunAction("ls", id=1) != CmdRunAction("ls", id=2)
    different_types: list[Event] = [CmdRunAction("ls"), IPythonRunCellAction("ls")]
    assert different_types[0] != different_types[1]
