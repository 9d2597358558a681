"""OpenHands compatibility: real trajectories, golden files, legacy encodings, round trips."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from events import (
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
    OpenHandsEvent,
    RuntimeStatus,
    RuntimeStatusObservation,
    SnapshotObservation,
    decode_event,
    encode_event,
)
from events.compat import (
    FORMAT_KEY,
    dump_openhands_trajectory,
    from_openhands_dict,
    load_openhands_trajectory,
    to_openhands_dict,
)

DATA_DIR = Path(__file__).resolve().parents[1] / "data"
# Recorded by OpenHands itself, kept byte for byte (see the README there).
REAL_DIR = DATA_DIR / "openhands-trajectories"
GOLDEN_DIR = DATA_DIR / "openhands"
REAL_FILES = [
    "basic.json",
    "basic_gui_mode.json",
    "basic_interactions.json",
    "wrong_initial_state.json",
]
GOLDEN_FILES = [
    "agent_events.json",
    "cmd_run.json",
    "edit.json",
    "error.json",
    "ipython.json",
    "write_read.json",
]


def real_trajectory(name: str) -> Path:
    path = REAL_DIR / name
    if not path.is_file():
        pytest.fail(f"real OpenHands trajectory {path} is missing from the repository")
    return path


def raw_dicts(path: Path) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads(path.read_bytes())
    return data


def ordered(value: Any) -> str:
    """Key-order-sensitive rendering, to compare dicts including their key order."""
    return json.dumps(value)


def all_dicts() -> list[tuple[str, dict[str, Any]]]:
    cases = []
    for name in REAL_FILES:
        cases += [(f"{name}#{i}", d) for i, d in enumerate(raw_dicts(real_trajectory(name)))]
    for name in GOLDEN_FILES:
        cases += [(f"{name}#{i}", d) for i, d in enumerate(raw_dicts(GOLDEN_DIR / name))]
    return cases


def by_id(events: list[Event], event_id: int) -> Event:
    (event,) = [e for e in events if e.id == event_id]
    return event


# --------------------------------------------------------------------------- real trajectories

EXPECTED_TYPES = {
    "basic.json": [OpenHandsEvent, FileEditAction, FileEditObservation, OpenHandsEvent],
    "basic_gui_mode.json": [OpenHandsEvent] * 7
    + [CmdRunAction, CmdOutputObservation]
    + [FileEditAction, FileEditObservation] * 2
    + [CmdRunAction, CmdOutputObservation]
    + [OpenHandsEvent] * 3,
    "basic_interactions.json": [OpenHandsEvent] * 6,
    "wrong_initial_state.json": [OpenHandsEvent]
    + [FileEditAction, FileReadObservation, CmdRunAction, CmdOutputObservation] * 1
    + [FileEditAction, FileReadObservation, OpenHandsEvent],
}


@pytest.mark.parametrize("name", REAL_FILES)
def test_real_trajectory_loads_to_the_expected_events(name: str) -> None:
    events = load_openhands_trajectory(real_trajectory(name))
    assert [type(e) for e in events] == EXPECTED_TYPES[name]
    raw = raw_dicts(real_trajectory(name))
    assert [e.id for e in events] == [d["id"] for d in raw]
    assert [None if e.source is None else e.source.value for e in events] == [
        d["source"] for d in raw
    ]
    assert [e.timestamp for e in events] == [d["timestamp"] for d in raw]
    assert [e.cause for e in events] == [d.get("cause") for d in raw]


@pytest.mark.parametrize("name", REAL_FILES + GOLDEN_FILES)
def test_dump_of_a_loaded_trajectory_is_byte_identical(name: str) -> None:
    path = real_trajectory(name) if name in REAL_FILES else GOLDEN_DIR / name
    events = load_openhands_trajectory(path)
    assert dump_openhands_trajectory(events) == path.read_bytes()
    assert load_openhands_trajectory(path.read_bytes()) == events
    assert load_openhands_trajectory(str(path)) == events


@pytest.mark.parametrize(("where", "original"), all_dicts(), ids=[c[0] for c in all_dicts()])
def test_every_event_round_trips_exactly(where: str, original: dict[str, Any]) -> None:
    pristine = copy.deepcopy(original)
    event = from_openhands_dict(original)
    assert original == pristine, "from_openhands_dict mutated its input"
    back = to_openhands_dict(event)
    assert back == original
    assert ordered(back) == ordered(original)
    # A fixed point: loading what we wrote gives the same event again.
    assert from_openhands_dict(back) == event
    # The event survives our own durable encoding unchanged.
    stored = decode_event(encode_event(event))
    assert stored == event
    assert ordered(to_openhands_dict(stored)) == ordered(original)
    # Our output is independent of the input objects.
    back["message"] = "changed"
    assert to_openhands_dict(event) == original


def test_real_editor_create_parses_to_the_right_action() -> None:
    raw = raw_dicts(real_trajectory("basic.json"))[1]
    action = from_openhands_dict(raw)
    assert isinstance(action, FileEditAction)
    # The LLM's own tool call arguments, recorded separately, say what the call was.
    call = raw["tool_call_metadata"]["model_response"]["choices"][0]["message"]["tool_calls"][0]
    arguments = json.loads(call["function"]["arguments"])
    assert arguments["command"] == "create"
    assert action.command == "create"
    assert action.path == arguments["path"] == "/workspace/game_2048.py"
    assert action.file_text == arguments["file_text"]
    assert action.file_text is not None
    assert action.file_text.startswith("import random\nimport keyboard\n")
    assert (action.old_str, action.new_str, action.insert_line, action.view_range) == (
        None,
        None,
        None,
        None,
    )
    assert action.thought == raw["args"]["thought"]
    assert (action.id, action.source) == (3, EventSource.AGENT)
    assert raw["args"]["content"] == ""  # the call really is only in translated_ipython_code
    assert action.extra is not None
    assert action.extra["timeout"] == 120
    assert action.extra["tool_call_metadata"] == raw["tool_call_metadata"]


def test_real_gui_editor_creates_carry_their_file_text() -> None:
    events = load_openhands_trajectory(real_trajectory("basic_gui_mode.json"))
    creates = [e for e in events if isinstance(e, FileEditAction)]
    assert [(e.command, e.path) for e in creates] == [
        ("create", "/workspace/todo-app/index.html"),
        ("create", "/workspace/todo-app/app.js"),
    ]
    observations = [e for e in events if isinstance(e, FileEditObservation)]
    # The recorded observation's new_content is what the create wrote.
    assert [e.file_text for e in creates] == [o.new_content for o in observations]
    assert [o.cause for o in observations] == [e.id for e in creates]


def test_real_editor_view_parses_to_a_view() -> None:
    events = load_openhands_trajectory(real_trajectory("wrong_initial_state.json"))
    view = by_id(events, 3)
    assert isinstance(view, FileEditAction)
    assert (view.command, view.path, view.view_range, view.file_text) == (
        "view",
        "/workspace",
        None,
        None,
    )
    assert view.thought.startswith("I'll help you rename the file.")
    result = by_id(events, 4)
    assert isinstance(result, FileReadObservation)
    assert result.path == "/workspace"
    assert result.cause == 3
    assert result.content.startswith("Here's the files and directories up to 2 levels deep")


def test_real_commands_and_their_output() -> None:
    events = load_openhands_trajectory(real_trajectory("basic_gui_mode.json"))
    mkdir = by_id(events, 7)
    assert isinstance(mkdir, CmdRunAction)
    assert (mkdir.command, mkdir.is_input, mkdir.blocking, mkdir.timeout) == (
        "mkdir -p /workspace/todo-app",
        False,
        False,
        None,
    )
    done = by_id(events, 8)
    assert isinstance(done, CmdOutputObservation)
    assert (done.exit_code, done.content, done.cause) == (0, "", 7)
    assert done.metadata.username == "openhands"
    assert done.metadata.suffix == "\n[The command completed with exit code 0.]"
    server = by_id(events, 14)
    assert isinstance(server, CmdOutputObservation)
    assert server.exit_code == -1
    assert server.metadata.suffix.startswith("\n[The command has no new output after 30 seconds.")
    timed = load_openhands_trajectory(real_trajectory("wrong_initial_state.json"))
    mv = by_id(timed, 5)
    assert isinstance(mv, CmdRunAction)
    assert mv.timeout == 120.0


@pytest.mark.parametrize("name", REAL_FILES)
def test_non_runnable_events_keep_the_original_dict_whole(name: str) -> None:
    raw = raw_dicts(real_trajectory(name))
    events = load_openhands_trajectory(real_trajectory(name))
    foreign = [(e, d) for e, d in zip(events, raw, strict=True) if isinstance(e, OpenHandsEvent)]
    assert foreign
    for event, original in foreign:
        assert event.data == original
        assert ordered(event.data) == ordered(original)
        assert event.kind == original.get("action", original.get("observation"))
        assert event.is_action == ("action" in original)
        assert event.id == original["id"]
        assert event.cause == original.get("cause")
        assert event.extra is None
    kinds = {e.kind for e, _ in foreign}
    assert kinds <= {"message", "finish", "change_agent_state", "agent_state_changed", "null"}


def test_all_non_runnable_kinds_of_the_real_logs_are_seen() -> None:
    kinds = {
        (e.kind, e.is_action)
        for name in REAL_FILES
        for e in load_openhands_trajectory(real_trajectory(name))
        if isinstance(e, OpenHandsEvent)
    }
    assert kinds == {
        ("message", True),
        ("finish", True),
        ("change_agent_state", True),
        ("agent_state_changed", False),
        ("null", False),
    }


# --------------------------------------------------------------------------- golden files


def load_golden(name: str) -> list[Event]:
    return load_openhands_trajectory(GOLDEN_DIR / name)


def test_golden_commands() -> None:
    events = load_golden("cmd_run.json")
    run = by_id(events, 1)
    assert isinstance(run, CmdRunAction)
    assert (run.command, run.timeout, run.cwd, run.thought) == (
        "echo hello && ls /nonexistent",
        120.0,
        None,
        "First a quick check of the shell.",
    )
    failed = by_id(events, 2)  # "id": "2", "cause": "1" in the file
    assert isinstance(failed, CmdOutputObservation)
    assert (failed.cause, failed.exit_code, failed.metadata.hostname) == (1, 2, "a1b2c3d4e5f6")
    assert failed.content == "hello\nls: cannot access '/nonexistent': No such file or directory"
    slow = by_id(events, 3)
    assert isinstance(slow, CmdRunAction)
    assert (slow.blocking, slow.timeout) == (True, 2.5)
    interrupt = by_id(events, 5)
    assert isinstance(interrupt, CmdRunAction)
    assert (interrupt.command, interrupt.is_input, interrupt.timeout) == ("C-c", True, None)
    legacy = by_id(events, 8)
    assert isinstance(legacy, CmdOutputObservation)
    assert (legacy.exit_code, legacy.metadata.pid) == (0, 4242)
    assert legacy.content == "caf\u00e9 \u2615 \u65e5\u672c\u8a9e\n\u00fcber"


def test_golden_write_and_read() -> None:
    events = load_golden("write_read.json")
    assert [type(e) for e in events] == [
        FileWriteAction,
        FileWriteObservation,
        FileWriteAction,
        FileWriteObservation,
        FileReadAction,
        FileReadObservation,
        FileReadAction,
        FileReadObservation,
    ]
    write = by_id(events, 12)
    assert isinstance(write, FileWriteAction)
    assert (write.path, write.content, write.start, write.end) == (
        "/workspace/notes.txt",
        "LINE TWO\n",
        1,
        2,
    )
    read = by_id(events, 16)
    assert isinstance(read, FileReadAction)
    assert (read.start, read.end, read.view_range) == (1, 2, None)
    result = by_id(events, 15)
    assert isinstance(result, FileReadObservation)
    assert result.content == "line one\nLINE TWO\nline three\n"


def test_golden_edits() -> None:
    events = load_golden("edit.json")
    actions = [e for e in events if isinstance(e, FileEditAction)]
    assert [(e.id, e.command) for e in actions] == [
        (40, "create"),
        (42, "str_replace"),
        (44, "insert"),
        (46, "undo_edit"),
        (48, "view"),
        (50, "str_replace"),
        (51, "view"),
    ]
    replace = by_id(events, 42)
    assert isinstance(replace, FileEditAction)
    assert (replace.old_str, replace.new_str) == ("    print('hi')", '    print("hi there")')
    insert = by_id(events, 44)
    assert isinstance(insert, FileEditAction)
    assert (insert.insert_line, insert.new_str) == (0, "# a comment\n")
    view = by_id(events, 48)
    assert isinstance(view, FileEditAction)
    assert view.view_range == [1, 2]
    legacy = by_id(events, 50)
    assert isinstance(legacy, FileEditAction)
    assert (legacy.old_str, legacy.new_str) == ("print('hi')", 'print("caf\u00e9")\n')
    reordered = by_id(events, 51)
    assert isinstance(reordered, FileEditAction)
    assert (reordered.command, reordered.view_range) == ("view", [3, -1])
    created = by_id(events, 41)
    assert isinstance(created, FileEditObservation)
    assert created.diff.startswith("--- /workspace/app.py\n+++ /workspace/app.py\n")
    assert (created.prev_exist, created.old_content) == (False, None)
    llm_edit = by_id(events, 52)
    assert isinstance(llm_edit, OpenHandsEvent)
    assert (llm_edit.kind, llm_edit.is_action) == ("edit", True)


def test_golden_ipython() -> None:
    events = load_golden("ipython.json")
    cell = by_id(events, 20)
    assert isinstance(cell, IPythonRunCellAction)
    assert (cell.code, cell.timeout) == ("import math\nprint(math.sqrt(2))", 30.0)
    output = by_id(events, 21)
    assert isinstance(output, IPythonRunCellObservation)
    assert output.content.startswith("1.4142135623730951\n")
    assert output.image_urls == []
    plot = by_id(events, 23)
    assert isinstance(plot, IPythonRunCellObservation)
    assert len(plot.image_urls) == 1
    assert plot.image_urls[0].startswith("data:image/png;base64,")


def test_golden_errors() -> None:
    events = load_golden("error.json")
    missing = by_id(events, 31)
    assert isinstance(missing, ErrorObservation)
    assert (missing.cause, missing.error_id) == (30, "")
    assert missing.content.startswith("File not found: /workspace/missing.txt.")
    no_extras = by_id(events, 33)
    assert isinstance(no_extras, ErrorObservation)
    assert no_extras.error_id == ""
    unexecuted = by_id(events, 34)
    assert isinstance(unexecuted, ErrorObservation)
    assert unexecuted.error_id == "AGENT_ERROR$ERROR_ACTION_NOT_EXECUTED"
    assert (unexecuted.cause, unexecuted.source) == (None, EventSource.ENVIRONMENT)


def test_golden_agent_events_pass_through() -> None:
    events = load_golden("agent_events.json")
    assert all(isinstance(e, OpenHandsEvent) for e in events)
    assert [(e.kind, e.is_action) for e in events if isinstance(e, OpenHandsEvent)] == [
        ("think", True),
        ("think", False),
        ("recall", True),
        ("recall", False),
        ("browse", True),
        ("agent_state_changed", False),
    ]


# --------------------------------------------------------------------------- formats and notes


def test_string_ids_load_as_ints_and_are_written_back_as_strings() -> None:
    original = {
        "id": "4",
        "source": "environment",
        "message": "Command `true` executed with exit code 0.",
        "cause": "3",
        "observation": "run",
        "content": "",
        "extras": {"command": "true", "metadata": {"exit_code": 0}},
    }
    event = from_openhands_dict(original)
    assert (event.id, event.cause) == (4, 3)
    assert to_openhands_dict(event) == original
    # Re-numbered (e.g. appended to another stream): the new id is written, as an int.
    moved = to_openhands_dict(msgspec.structs.replace(event, id=9))
    assert (moved["id"], moved["cause"]) == (9, "3")


def test_string_ids_of_non_runnable_events() -> None:
    original = {"id": "7", "cause": "6", "observation": "null", "content": "", "extras": {}}
    event = from_openhands_dict(original)
    assert isinstance(event, OpenHandsEvent)
    assert (event.id, event.cause) == (7, 6)
    assert to_openhands_dict(event) == original
    moved = to_openhands_dict(msgspec.structs.replace(event, id=12, source=EventSource.AGENT))
    assert moved == {**original, "id": 12, "source": "agent"}
    assert "id" not in to_openhands_dict(msgspec.structs.replace(event, id=-1))


@pytest.mark.parametrize("bad_id", ["abc", "-3", "", " 4", "\u0664", 1.5, True, None, [4]])
def test_ids_that_are_not_ids_are_kept_verbatim(bad_id: Any) -> None:
    original = {"id": bad_id, "action": "run", "args": {"command": "ls"}}
    event = from_openhands_dict(original)
    assert event.id == -1
    assert to_openhands_dict(event) == original


def test_legacy_exit_code_and_command_id() -> None:
    original = {
        "observation": "run",
        "content": "x",
        "extras": {"command": "ls", "exit_code": 2, "command_id": 77},
    }
    event = from_openhands_dict(original)
    assert isinstance(event, CmdOutputObservation)
    assert (event.exit_code, event.metadata.pid) == (2, 77)
    assert to_openhands_dict(event) == original
    # The legacy top-level exit_code wins over metadata, as in OpenHands.
    both = {**original, "extras": {"command": "ls", "exit_code": 1, "metadata": {"exit_code": 0}}}
    assert from_openhands_dict(both).metadata.exit_code == 1  # type: ignore[attr-defined]


def test_missing_optional_fields_get_defaults() -> None:
    run = from_openhands_dict({"action": "run", "args": {"command": "ls"}})
    assert run == CmdRunAction("ls", extra=run.extra)
    output = from_openhands_dict({"observation": "run", "extras": {"command": "ls"}})
    assert isinstance(output, CmdOutputObservation)
    assert (output.content, output.metadata) == ("", CmdOutputMetadata())
    edit = from_openhands_dict({"observation": "edit", "content": "ok", "extras": {}})
    assert isinstance(edit, FileEditObservation)
    assert (edit.path, edit.prev_exist, edit.old_content, edit.diff) == ("", False, None, "")
    error = from_openhands_dict({"observation": "error", "content": "boom"})
    assert error == ErrorObservation("boom", extra=error.extra)


def test_unknown_sources_leave_source_unset_and_are_kept() -> None:
    original = {"source": "robot", "action": "run", "args": {"command": "ls"}}
    event = from_openhands_dict(original)
    assert event.source is None
    assert to_openhands_dict(event) == original
    for source in EventSource:
        known = from_openhands_dict({**original, "source": source.value})
        assert known.source is source


def test_a_changed_field_is_written_not_the_stale_original() -> None:
    events = load_openhands_trajectory(real_trajectory("basic.json"))
    create = events[1]
    assert isinstance(create, FileEditAction)
    edited = msgspec.structs.replace(create, file_text="print('small')\n")
    written = to_openhands_dict(edited)
    assert from_openhands_dict(written) == edited
    code = written["args"]["translated_ipython_code"]
    assert code == (
        "print(file_editor(**{'command': 'create', 'path': '/workspace/game_2048.py', "
        "'file_text': \"print('small')\\n\"}))"
    )
    golden = load_golden("edit.json")
    reordered = by_id(golden, 51)  # its recorded call had 'path' before 'command'
    assert isinstance(reordered, FileEditAction)
    narrowed = to_openhands_dict(msgspec.structs.replace(reordered, view_range=[1, 5]))
    assert narrowed["args"]["translated_ipython_code"] == (
        "print(file_editor(**{'command': 'view', 'path': '/workspace/app.py', "
        "'view_range': [1, 5]}))"
    )


def test_views_and_reads_map_by_impl_source() -> None:
    plain = from_openhands_dict({"action": "read", "args": {"path": "/f", "start": 2}})
    assert plain == FileReadAction("/f", start=2, extra=plain.extra)
    editor = from_openhands_dict(
        {"action": "read", "args": {"path": "/f", "impl_source": "oh_aci", "view_range": [1, 9]}}
    )
    assert editor == FileEditAction("/f", "view", view_range=[1, 9], extra=editor.extra)
    assert to_openhands_dict(FileEditAction("/f", "view"))["action"] == "read"
    assert to_openhands_dict(FileReadAction("/f"))["args"]["impl_source"] == "default"


def test_our_events_render_in_openhands_shape() -> None:
    action = to_openhands_dict(CmdRunAction("ls", timeout=5.0, id=3, source=EventSource.AGENT))
    assert action == {
        "id": 3,
        "source": "agent",
        "message": "Running command: ls",
        "action": "run",
        "args": {
            "command": "ls",
            "is_input": False,
            "thought": "",
            "blocking": False,
            "hidden": False,
        },
        "timeout": 5,
    }
    observation = to_openhands_dict(
        CmdOutputObservation("hi", "echo hi", metadata=CmdOutputMetadata(exit_code=0), cause=3)
    )
    assert observation["observation"] == "run"
    assert observation["cause"] == 3
    assert observation["message"] == "Command `echo hi` executed with exit code 0."
    assert observation["extras"]["metadata"]["exit_code"] == 0
    assert observation["success"] is True
    assert list(observation) == ["message", "cause", "observation", "content", "extras", "success"]
    assert to_openhands_dict(IPythonRunCellObservation("o", "c"))["extras"] == {
        "code": "c",
        "image_urls": None,
    }


def test_an_editor_call_missing_a_parameter_loads_for_the_editor_to_answer() -> None:
    """OpenHands sends such a call and its editor answers it; so do we (no load error)."""
    original = {
        "id": 5,
        "source": "agent",
        "message": "",
        "action": "edit",
        "args": {"path": "/w/a.py", "command": "create", "thought": "", "impl_source": "oh_aci"},
    }
    action = from_openhands_dict(original)
    assert isinstance(action, FileEditAction)
    assert (action.command, action.file_text) == ("create", None)
    assert to_openhands_dict(action) == original


def test_editor_observations_say_they_come_from_the_aci_editor() -> None:
    """OpenHands reads an edit observation without ``impl_source`` as an LLM-based edit."""
    created = FileEditObservation("File created successfully at: /w/a.py", "/w/a.py", cause=4)
    rendered = to_openhands_dict(created)
    assert rendered["extras"]["impl_source"] == "oh_aci"
    assert list(rendered["extras"]) == [
        "path",
        "prev_exist",
        "old_content",
        "new_content",
        "impl_source",
    ]
    # Read back: the field is ours, not a foreign extra; another source is kept as it was.
    loaded = from_openhands_dict(rendered)
    assert loaded.extra is None or "impl_source" not in (loaded.extra.get("extras") or {})
    assert to_openhands_dict(loaded) == rendered
    llm = {**rendered, "extras": {**rendered["extras"], "impl_source": "llm_based_edit"}}
    assert to_openhands_dict(from_openhands_dict(llm)) == llm


@pytest.mark.parametrize(
    "event",
    [
        CmdOutputChunk(1, 0, "x"),
        RuntimeStatusObservation(RuntimeStatus.READY),
        SnapshotObservation("snap-1", source=EventSource.ENVIRONMENT),
    ],
    ids=lambda e: type(e).__name__,
)
def test_events_without_an_openhands_form(event: Event) -> None:
    with pytest.raises(ValueError, match=type(event).__name__):
        to_openhands_dict(event)
    dumped = dump_openhands_trajectory([CmdRunAction("ls"), event, ErrorObservation("e")])
    assert [type(e) for e in load_openhands_trajectory(dumped)] == [CmdRunAction, ErrorObservation]


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ({"foo": 1}, "neither"),
        ({}, "neither"),
        ({"action": "run", "observation": "run"}, "both"),
        ({"action": 42}, "42"),
        ({"observation": None}, "None"),
        ({"action": ""}, "''"),
        ({"action": ["run"]}, "run"),
        ([{"action": "run"}], "list"),
        ("run", "str"),
        (None, "NoneType"),
        ({"action": "run", FORMAT_KEY: {}}, FORMAT_KEY),
    ],
)
def test_unknown_shapes_raise_naming_them(value: Any, named: str) -> None:
    with pytest.raises(ValueError, match=re.escape(named)):
        from_openhands_dict(value)


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ({"action": "run", "args": {}}, "command"),
        ({"action": "run", "args": {"command": 5}}, "command"),
        ({"action": "run", "args": "ls"}, "args"),
        ({"action": "run", "args": {"command": "ls", "is_input": "yes"}}, "is_input"),
        ({"action": "run", "args": {"command": "ls"}, "timeout": -1}, "timeout"),
        ({"action": "run", "args": {"command": "ls"}, "timeout": "5"}, "timeout"),
        ({"action": "run", "args": {"command": "ls"}, "timeout": True}, "timeout"),
        ({"action": "run", "args": {"command": "ls"}, "timeout": 10**400}, "timeout"),
        ({"action": "run_ipython", "args": {}}, "code"),
        ({"action": "write", "args": {"path": "/f"}}, "content"),
        ({"action": "read", "args": {"path": "/f", "start": "0"}}, "start"),
        ({"action": "edit", "args": {"path": "/f", "command": "explode"}}, "explode"),
        (
            {"action": "edit", "args": {"path": "/f", "command": "create", "file_text": 3}},
            "file_text",
        ),
        ({"action": "edit", "args": {"path": "/f", "command": "view", "view_range": [1]}}, "view"),
        ({"action": "edit", "args": {"command": "view"}}, "path"),
        ({"observation": "run", "extras": {"command": "ls", "metadata": []}}, "metadata"),
        ({"observation": "run", "extras": {"command": "ls", "exit_code": "0"}}, "exit_code"),
        ({"observation": "run_ipython", "extras": {"code": "1", "image_urls": [1]}}, "image_urls"),
        ({"observation": "read", "extras": {}}, "path"),
        ({"observation": "error", "content": 5}, "content"),
    ],
)
def test_malformed_runnable_events_raise_naming_the_field(
    value: dict[str, Any], named: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(named)):
        from_openhands_dict(value)


def legacy_edit(code: str) -> dict[str, Any]:
    return {
        "action": "edit",
        "args": {
            "path": "/tmp/x",
            "content": "",
            "impl_source": "oh_aci",
            "translated_ipython_code": code,
        },
    }


def malicious_codes(marker: Path) -> list[str]:
    touch = f"__import__('os').system('touch {marker}')"
    return [
        f"print(file_editor(**{{'command': 'create', 'path': '/tmp/x', 'file_text': {touch}}}))",
        f"print(file_editor(**{{'command': 'view', 'path': {touch}}}))",
        f"print({touch})",
        f"print(file_editor(**{{'command': 'view', 'path': '/x'}}), {touch})",
        f"print(file_editor(**{{'command': 'view', 'path': '/x'}})); {touch}",
        f"print(file_editor(**{{'command': 'view', 'path': '/x', **{touch}}}))",
        f"print(file_editor(**dict(command='view', path={touch})))",
        f"print(file_editor(**{{'command': 'view', 'path': (lambda: {touch})()}}))",
        'print(file_editor(**{"command": "view", "path": f"{' + touch + '}"}))',
        f"print(file_editor(**{{'command': 'view', 'path': '/x' + str({touch})}}))",
        f"file_editor(**{{'command': 'view', 'path': '/x'}}) or {touch}",
        f"open('{marker}', 'w')",
        f"print(open('{marker}', 'w'))",
        f"print(file_editor(**{{'command': 'view', 'path': open('{marker}', 'w').name}}))",
        "print(file_editor(**{'command': 'view', 'path': '/x'})",
        "print(file_editor(**{'command': 'view', 'path': ['/x'] " + "+ [1]" * 50 + "}))",
        "print(file_editor(**{'command': " + "[" * 100_000 + "]" * 100_000 + "}))",
        "print(file_editor(**{'command': 'view', 'path': '\x00'}))\x00",
        "print(file_editor(**{'command': 'view', 'path': {'/x'}}))",
        "print(file_editor(**{'command': 'view', 'path': b'/x'}))",
        "print(file_editor(**{'command': 'view', 'path': '/x', 'view_range': (1, 2)}))",
        "print(file_editor(**{1: 'view'}))",
        "print(file_editor(**{}))",
        "",
    ]


@pytest.mark.parametrize("index", range(len(malicious_codes(Path("/m")))))
def test_malicious_translated_code_is_refused_without_running_it(
    index: int, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    code = malicious_codes(marker)[index]
    for kind in ("edit", "read"):
        with pytest.raises(ValueError, match=r"translated_ipython_code|path|command"):
            from_openhands_dict({**legacy_edit(code), "action": kind})
    assert not marker.exists()


def test_translated_code_must_be_a_string() -> None:
    with pytest.raises(ValueError, match="translated_ipython_code"):
        from_openhands_dict(legacy_edit(5))  # type: ignore[arg-type]


def test_load_errors_name_the_bad_event() -> None:
    good = {"action": "run", "args": {"command": "ls"}}
    with pytest.raises(ValueError, match="#2"):
        load_openhands_trajectory(json.dumps([good, good, {"nope": 1}]).encode())
    with pytest.raises(ValueError, match="list"):
        load_openhands_trajectory(b'{"action": "run"}')
    with pytest.raises(ValueError, match="JSON"):
        load_openhands_trajectory(b"[{")
    with pytest.raises(ValueError, match="JSON"):
        load_openhands_trajectory(b"\xff\xfe\x00")
    with pytest.raises(ValueError, match="deep"):
        load_openhands_trajectory(b"[" * 100_000 + b"]" * 100_000)
    assert load_openhands_trajectory(b"[]") == []


# --------------------------------------------------------------------------- properties

RESERVED = frozenset(
    [
        "id",
        "timestamp",
        "source",
        "message",
        "cause",
        "action",
        "observation",
        "args",
        "extras",
        "content",
        "timeout",
        "success",
        FORMAT_KEY,
    ]
)
texts = st.text(max_size=30)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(texts, children, max_size=3),
    max_leaves=10,
)
foreign_keys = texts.filter(lambda k: k not in RESERVED)
nested_foreign = st.dictionaries(texts.map(lambda k: "x_" + k), json_values, min_size=1, max_size=3)


@st.composite
def foreign_extras(draw: st.DrawFn, nested: str) -> dict[str, Any] | None:
    extra: dict[str, Any] = draw(st.dictionaries(foreign_keys, json_values, max_size=3))
    if draw(st.booleans()):
        extra[nested] = draw(nested_foreign)
    return extra or None


int64 = st.integers(-(2**63), 2**63 - 1)
timeouts = st.none() | st.floats(0, 1e12, allow_nan=False) | st.integers(0, 10**6)
view_ranges = st.none() | st.lists(int64, min_size=2, max_size=2)
maybe_texts = st.none() | texts


def meta(nested: str) -> dict[str, st.SearchStrategy[Any]]:
    return {
        "id": st.integers(-1, 2**63 - 1),
        "timestamp": st.none() | texts,
        "source": st.none() | st.sampled_from(EventSource),
        "cause": st.none() | st.integers(0, 2**63 - 1),
        "extra": foreign_extras(nested),
    }


@st.composite
def file_edit_actions(draw: st.DrawFn) -> FileEditAction:
    command = draw(st.sampled_from(["view", "create", "str_replace", "insert", "undo_edit"]))
    fields = {name: draw(strategy) for name, strategy in meta("args").items()}
    if draw(st.booleans()):
        fields["extra"] = {**(fields["extra"] or {}), FORMAT_KEY: {"aci_code": True}}
    return FileEditAction(
        path=draw(texts),
        command=command,
        file_text=draw(texts if command == "create" else maybe_texts),
        old_str=draw(texts if command == "str_replace" else maybe_texts),
        new_str=draw(texts if command == "insert" else maybe_texts),
        insert_line=draw(int64 if command == "insert" else st.none() | int64),
        view_range=draw(view_ranges),
        thought=draw(texts),
        **fields,
    )


OPENHANDS_STRATEGIES: dict[type[Event], st.SearchStrategy[Any]] = {
    CmdRunAction: st.builds(
        CmdRunAction,
        command=texts,
        is_input=st.booleans(),
        blocking=st.booleans(),
        timeout=timeouts,
        cwd=maybe_texts,
        hidden=st.booleans(),
        thought=texts,
        **meta("args"),
    ),
    IPythonRunCellAction: st.builds(
        IPythonRunCellAction, code=texts, timeout=timeouts, thought=texts, **meta("args")
    ),
    FileReadAction: st.builds(
        FileReadAction,
        path=texts,
        start=int64,
        end=int64,
        view_range=view_ranges,
        thought=texts,
        **meta("args"),
    ),
    FileWriteAction: st.builds(
        FileWriteAction,
        path=texts,
        content=texts,
        start=int64,
        end=int64,
        thought=texts,
        **meta("args"),
    ),
    FileEditAction: file_edit_actions(),
    CmdOutputObservation: st.builds(
        CmdOutputObservation,
        content=texts,
        command=texts,
        metadata=st.builds(
            CmdOutputMetadata,
            exit_code=int64,
            pid=int64,
            username=maybe_texts,
            hostname=maybe_texts,
            working_dir=maybe_texts,
            py_interpreter_path=maybe_texts,
            prefix=texts,
            suffix=texts,
        ),
        hidden=st.booleans(),
        **meta("extras"),
    ),
    IPythonRunCellObservation: st.builds(
        IPythonRunCellObservation,
        content=texts,
        code=texts,
        image_urls=st.lists(texts, max_size=3),
        **meta("extras"),
    ),
    FileReadObservation: st.builds(
        FileReadObservation, content=texts, path=texts, **meta("extras")
    ),
    FileWriteObservation: st.builds(
        FileWriteObservation, path=texts, content=texts, **meta("extras")
    ),
    FileEditObservation: st.builds(
        FileEditObservation,
        content=texts,
        path=texts,
        prev_exist=st.booleans(),
        old_content=maybe_texts,
        new_content=maybe_texts,
        diff=texts,
        **meta("extras"),
    ),
    ErrorObservation: st.builds(ErrorObservation, content=texts, error_id=texts, **meta("extras")),
}
RUNNABLE_NAMES = {"run", "run_ipython", "read", "write", "edit", "error"}


@pytest.mark.parametrize("event_type", list(OPENHANDS_STRATEGIES), ids=lambda t: t.__name__)
@given(data=st.data())
def test_round_trip_through_the_openhands_dict(
    event_type: type[Event], data: st.DataObject
) -> None:
    event = data.draw(OPENHANDS_STRATEGIES[event_type])
    rendered = to_openhands_dict(event)
    assert ("action" in rendered) != ("observation" in rendered)
    json.dumps(rendered)  # plain JSON values only
    back = from_openhands_dict(rendered)
    assert type(back) is event_type
    assert back == event
    assert ordered(to_openhands_dict(back)) == ordered(rendered)


@given(
    kind=st.text(min_size=1, max_size=20).filter(lambda k: k not in RUNNABLE_NAMES),
    is_action=st.booleans(),
    body=st.dictionaries(foreign_keys.filter(lambda k: k not in RESERVED), json_values, max_size=4),
    event_id=st.none() | st.integers(0, 2**63 - 1) | st.integers(0, 10**6).map(str),
    new_id=st.integers(-1, 10**6),
)
def test_non_runnable_events_round_trip_whole(
    kind: str, is_action: bool, body: dict[str, Any], event_id: Any, new_id: int
) -> None:
    original = {**body, "action" if is_action else "observation": kind}
    if event_id is not None:
        original["id"] = event_id
    event = from_openhands_dict(original)
    assert isinstance(event, OpenHandsEvent)
    assert (event.kind, event.is_action, event.data) == (kind, is_action, original)
    assert event.id == (-1 if event_id is None else int(event_id))
    assert to_openhands_dict(event) == original
    assert from_openhands_dict(to_openhands_dict(event)) == event
    renumbered = to_openhands_dict(msgspec.structs.replace(event, id=new_id))
    assert from_openhands_dict(renumbered).id == new_id


@given(st.lists(st.one_of(*OPENHANDS_STRATEGIES.values()), max_size=6))
def test_trajectory_dump_and_load_round_trip(events: list[Event]) -> None:
    dumped = dump_openhands_trajectory(events)
    loaded = load_openhands_trajectory(dumped)
    assert loaded == events
    assert dump_openhands_trajectory(loaded) == dumped


def test_strategies_cover_every_type_with_an_openhands_form() -> None:
    from events.codec import EVENT_TYPES

    without = {CmdOutputChunk, RuntimeStatusObservation, SnapshotObservation, OpenHandsEvent}
    assert set(OPENHANDS_STRATEGIES) == set(EVENT_TYPES) - without
