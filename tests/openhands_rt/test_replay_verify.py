"""Replay verification: normalisation, comparing observations, /workspace, the report."""

from __future__ import annotations

import typing

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_replay_recording import SAMPLES, NoteObservation

from events import (
    Action,
    CmdOutputMetadata,
    CmdOutputObservation,
    CmdRunAction,
    ErrorObservation,
    FileEditAction,
    FileEditObservation,
    FileReadAction,
    FileReadObservation,
    FileWriteAction,
    FileWriteObservation,
    IPythonRunCellAction,
    IPythonRunCellObservation,
    Observation,
)
from events.wire import ACTION_TYPES
from openhands_rt.replay import (
    Divergence,
    Mismatch,
    compare_observations,
    describe_action,
    map_action_paths,
    normalize_text,
)
from openhands_rt.replay.verify import KnownObservation

OBSERVATIONS: list[Observation] = [e for e in SAMPLES.values() if isinstance(e, Observation)]
ACTIONS: list[Action] = [e for e in SAMPLES.values() if isinstance(e, Action)]


class NoteAction(Action, frozen=True, tag="test_note_action"):
    """An action type outside the event union (Action is an open base class)."""

    path: str = "/workspace/a"


@given(
    st.lists(st.sampled_from(["a", " ", "\t", "\r", "\n", "\x1b[31m", "\x1b[0m", "é", "\x1b"])).map(
        "".join
    )
)
def test_normalize_text_properties(text: str) -> None:
    out = normalize_text(text)
    assert "\r\n" not in out
    assert "\x1b" not in out
    assert out == out.rstrip()
    assert all(line == line.rstrip() for line in out.split("\n"))
    assert normalize_text(out) == out


def test_normalize_text_examples() -> None:
    assert normalize_text("a  \r\nb\t\r\n\r\n") == "a\nb"
    assert normalize_text("\x1b[1;31mred\x1b[0m text \n") == "red text"
    assert normalize_text("  lead stays\n") == "  lead stays"


def cmd(content: str, exit_code: int = 0, **meta: object) -> CmdOutputObservation:
    return CmdOutputObservation(
        content,
        "x",
        metadata=CmdOutputMetadata(exit_code=exit_code, **meta),  # type: ignore[arg-type]
    )


def test_compare_command_output() -> None:
    run = CmdRunAction("x")
    recorded = cmd(
        "hello\nworld", pid=1, hostname="a", working_dir="/workspace", suffix="\n[done 0]"
    )
    replayed = cmd("hello  \r\n\x1b[32mworld\x1b[0m\r\n", pid=99, hostname="b", prefix="note")
    assert compare_observations(run, recorded, replayed) is None
    exit_differs = compare_observations(run, recorded, cmd("hello\nworld", 1))
    assert exit_differs is not None
    assert exit_differs.reason == "exit code differs: recorded 0, replayed 1"
    content_differs = compare_observations(run, recorded, cmd("hello\nthere"))
    assert content_differs is not None
    assert content_differs.reason == "command output differs"
    assert (content_differs.expected, content_differs.actual) == ("hello\nworld", "hello\nthere")
    # Texts equal as they are, before normalizing: a report still shows them normalized.
    raw = "\x1b[1mbold\x1b[0m  \r\n"
    same_text = compare_observations(run, cmd(raw, 0), cmd(raw, 2))
    assert same_text is not None
    assert (same_text.expected, same_text.actual) == ("bold", "bold")
    assert compare_observations(run, cmd(raw, 0), cmd(raw, 0)) is None


def test_compare_errors_and_types() -> None:
    read = FileReadAction("a")
    ok = FileReadObservation("text", "a")
    error = ErrorObservation("File not found: a", error_id="file_not_found")
    failed = compare_observations(read, ok, error)
    assert failed is not None
    assert failed.reason == "recorded a success, replay failed"
    succeeded = compare_observations(read, error, ok)
    assert succeeded is not None
    assert succeeded.reason == "recorded an error, replay succeeded"
    # Error texts differ between implementations: only the kind counts.
    assert (
        compare_observations(read, error, ErrorObservation("other words", "file_not_found")) is None
    )
    assert compare_observations(read, ErrorObservation("x"), error) is None
    kinds = compare_observations(read, error, ErrorObservation("x", error_id="is_a_directory"))
    assert kinds is not None
    assert "error kind differs" in kinds.reason
    wrong_type = compare_observations(read, ok, cmd("text"))
    assert wrong_type is not None
    assert wrong_type.reason.startswith("observation type differs")


def test_compare_edit_read_write_ipython() -> None:
    edit = FileEditAction("f", "str_replace", old_str="a", new_str="b")
    recorded = FileEditObservation("--- diff text", "f", new_content="b\n", diff="d1")
    same_file = FileEditObservation(
        "The file f has been edited.", "f", new_content="b  \n", diff="d2"
    )
    assert compare_observations(edit, recorded, same_file) is None
    other = compare_observations(edit, recorded, FileEditObservation("", "f", new_content="c\n"))
    assert other is not None
    assert other.reason == "file content after the edit differs"
    # Without a recorded new_content, only success counts.
    assert compare_observations(edit, FileEditObservation("x", "f"), same_file) is None

    view = FileEditAction("f", "view")
    as_read = FileReadObservation("     1\tb", "f")
    assert compare_observations(view, as_read, FileEditObservation("     1\tb\n", "f")) is None
    mismatch = compare_observations(view, as_read, FileEditObservation("     1\tc", "f"))
    assert mismatch is not None
    assert mismatch.reason == "content differs"

    write = FileWriteAction("f", "x")
    assert (
        compare_observations(write, FileWriteObservation("f"), FileWriteObservation("f", "ok"))
        is None
    )

    cell = IPythonRunCellAction("print(1)")
    recorded_cell = IPythonRunCellObservation(
        "1\n[Jupyter current working directory: /workspace]\n[Jupyter Python interpreter: /x]",
        "print(1)",
    )
    assert (
        compare_observations(cell, recorded_cell, IPythonRunCellObservation("1\n", "print(1)"))
        is None
    )
    assert (
        compare_observations(cell, recorded_cell, IPythonRunCellObservation("2", "print(1)"))
        is not None
    )


def test_workspace_mapping() -> None:
    assert map_action_paths(FileReadAction("/workspace/a.py"), "/tmp/ws") == FileReadAction(
        "/tmp/ws/a.py"
    )
    assert map_action_paths(FileEditAction("/workspace", "view"), "/tmp/ws").path == "/tmp/ws"  # type: ignore[attr-defined]
    for untouched in ("/workspaces/a", "a.py", "/etc/workspace/a"):
        assert map_action_paths(FileWriteAction(untouched, "x"), "/tmp/ws") == FileWriteAction(
            untouched, "x"
        )
    assert map_action_paths(
        CmdRunAction("ls /workspace", cwd="/workspace/src"), "/tmp/ws"
    ) == CmdRunAction("ls /workspace", cwd="/tmp/ws/src")
    view = FileEditAction("/workspace", "view")
    recorded = FileReadObservation("in /workspace:\n/workspace/\n/workspace/a.py", "/workspace")
    replayed = FileEditObservation("in /tmp/ws:\n/tmp/ws/\n/tmp/ws/a.py", "/tmp/ws")
    assert compare_observations(view, recorded, replayed, workspace="/tmp/ws") is None
    assert compare_observations(view, recorded, replayed) is not None
    # A sibling directory with a longer name is not the workspace.
    sibling = FileEditObservation("in /tmp/ws:\n/tmp/ws/\n/tmp/ws2/a.py", "/tmp/ws")
    assert compare_observations(view, recorded, sibling, workspace="/tmp/ws") is not None


# ------------------------------------------------------------- every type of the union


def test_the_compared_observations_are_the_unions() -> None:
    assert set(typing.get_args(KnownObservation)) == {type(o) for o in OBSERVATIONS}
    assert set(ACTION_TYPES) == {type(a) for a in ACTIONS}


@pytest.mark.parametrize("observation", OBSERVATIONS, ids=lambda o: type(o).__name__)
def test_every_observation_matches_itself_and_not_another_type(observation: Observation) -> None:
    run = CmdRunAction("x")
    assert compare_observations(run, observation, observation) is None
    replayed = msgspec.structs.replace(observation, id=7, timestamp="t", cause=3)
    assert compare_observations(run, observation, replayed) is None
    if isinstance(observation, ErrorObservation):
        other = compare_observations(run, observation, FileWriteObservation("a"))
        assert other == Mismatch(
            "recorded an error, replay succeeded",
            "[ErrorObservation]\nno",
            "[FileWriteObservation]\n",
        )
        return
    failed = compare_observations(run, observation, ErrorObservation("gone"))
    assert failed is not None
    assert failed.reason == "recorded a success, replay failed"
    assert failed.actual == "[ErrorObservation]\ngone"
    stranger = NoteObservation(note="n")
    differs = compare_observations(run, observation, stranger)
    assert differs is not None
    assert differs.reason == (
        f"observation type differs: recorded {type(observation).__name__}, replayed NoteObservation"
    )
    assert differs.actual == "[NoteObservation]\n"


def test_an_observation_outside_the_union_is_compared_by_type_only() -> None:
    run = CmdRunAction("x")
    assert compare_observations(run, NoteObservation(note="a"), NoteObservation(note="b")) is None
    differs = compare_observations(run, NoteObservation(), FileReadObservation("text", "a"))
    assert differs is not None
    assert differs.expected == "[NoteObservation]\n"
    assert differs.actual == "[FileReadObservation]\ntext"
    failed = compare_observations(run, NoteObservation(), ErrorObservation("e"))
    assert failed is not None
    assert failed.reason == "recorded a success, replay failed"


def test_describe_every_action() -> None:
    described = {type(a).__name__: describe_action(a) for a in ACTIONS}
    assert described == {
        "CmdRunAction": "run 'ls'",
        "IPythonRunCellAction": "run_ipython 'print(1)'",
        "FileReadAction": "read a.txt",
        "FileWriteAction": "write a.txt (1 chars)",
        "FileEditAction": "edit create a.txt",
    }
    assert describe_action(CmdRunAction("y", is_input=True)) == "run 'y' (input)"
    assert describe_action(FileReadAction("a", start=2, end=4)) == "read a lines 2..4"
    assert describe_action(IPythonRunCellAction("a\nb")) == "run_ipython 'a…'"
    assert describe_action(IPythonRunCellAction("x" * 81)) == f"run_ipython '{'x' * 80}…'"
    assert describe_action(NoteAction()) == "NoteAction"


def test_map_paths_of_every_action() -> None:
    for action in ACTIONS:
        assert map_action_paths(action, "/tmp/ws") == action  # relative paths, no cwd
    cell = IPythonRunCellAction("open('/workspace/a')")
    assert map_action_paths(cell, "/tmp/ws") == cell  # code is opaque
    assert map_action_paths(NoteAction(), "/tmp/ws") == NoteAction()  # not run: not mapped
    for moved in (
        FileReadAction("/workspace/a"),
        FileWriteAction("/workspace/a", "x"),
        FileEditAction("/workspace/a", "view"),
    ):
        assert map_action_paths(moved, "/tmp/ws").path == "/tmp/ws/a"  # type: ignore[attr-defined]


def test_divergence_report() -> None:
    read = FileReadAction("a", id=4)
    recorded = FileReadObservation("one\ntwo", "a", id=5, cause=4)
    replayed = FileReadObservation("one\nthree", "a", id=12, cause=11)
    mismatch = compare_observations(read, recorded, replayed)
    assert mismatch is not None
    divergence = Divergence.of(read, recorded, replayed, mismatch)
    assert (divergence.action_id, divergence.observation_id) == (4, 5)
    assert divergence.describe() == "\n".join(
        [
            "divergence at recorded event 5 (the observation of action 4): content differs",
            "action 4: read a",
            "--- recorded (event 5)",
            "+++ replayed (event 12)",
            "@@ -1,2 +1,2 @@",
            " one",
            "-two",
            "+three",
        ]
    )
    same_text = Divergence.of(read, recorded, replayed, Mismatch("kind", "x", "x"))
    assert same_text.diff == ""
    assert same_text.describe().endswith("(the compared texts are equal)")
