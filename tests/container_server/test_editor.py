"""The str_replace_editor (FileEditAction): OpenHands texts, on real files."""

from __future__ import annotations

import itertools
import os
import stat
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from container_server.editor import (
    DIRECTORY_TRUNCATED_NOTICE,
    EDITOR_ERROR_ID,
    MAX_RESPONSE_CHARS,
    TEXT_FILE_TRUNCATED_NOTICE,
    FileEditor,
    unified_diff,
)
from events import ErrorObservation, FileEditAction, FileEditObservation, encode_event

THREE = "line1\nline2\nline3\n"


async def edit(editor: FileEditor, path: str | Path, command: str, **kwargs: Any) -> Any:
    return await editor.run(FileEditAction(str(path), command, **kwargs), cwd="/")


def error_text(obs: object) -> str:
    assert isinstance(obs, ErrorObservation), obs
    assert obs.error_id == EDITOR_ERROR_ID
    assert obs.content.startswith("ERROR:\n")
    return obs.content.removeprefix("ERROR:\n")


@pytest.fixture
def editor() -> FileEditor:
    return FileEditor()


@pytest.fixture
def three(tmp_path: Path) -> Path:
    path = tmp_path / "three.txt"
    path.write_text(THREE)
    return path


# --------------------------------------------------------------------------- view


async def test_view_file_is_cat_n(editor: FileEditor, three: Path) -> None:
    obs = await edit(editor, three, "view")
    assert obs == FileEditObservation(
        content=(
            f"Here's the result of running `cat -n` on {three}:\n"
            "     1\tline1\n     2\tline2\n     3\tline3\n     4\t\n"
        ),
        path=str(three),
        prev_exist=True,
    )


@pytest.mark.parametrize(
    ("view_range", "numbered"),
    [
        ([2, 2], "     2\tline2\n"),
        ([2, -1], "     2\tline2\n     3\tline3\n"),
        ([1, 3], "     1\tline1\n     2\tline2\n     3\tline3\n"),
    ],
)
async def test_view_range(
    editor: FileEditor, three: Path, view_range: list[int], numbered: str
) -> None:
    obs = await edit(editor, three, "view", view_range=view_range)
    assert obs.content == f"Here's the result of running `cat -n` on {three}:\n{numbered}"


async def test_view_range_past_the_end_warns(editor: FileEditor, three: Path) -> None:
    obs = await edit(editor, three, "view", view_range=[2, 10])
    assert obs.content == (
        f"Here's the result of running `cat -n` on {three}:\n"
        "     2\tline2\n     3\tline3\n"
        "\nNOTE: We only show up to 3 since there's only 3 lines in this file\n"
    )


@pytest.mark.parametrize(
    ("view_range", "hint"),
    [
        ([0, 1], "Its first element `0` should be within the range of lines of the file: [1, 3]."),
        ([4, 4], "Its first element `4` should be within the range of lines of the file: [1, 3]."),
        (
            [3, 2],
            "Its second element `2` should be greater than or equal to the first element `3`.",
        ),
    ],
)
async def test_view_range_invalid(
    editor: FileEditor, three: Path, view_range: list[int], hint: str
) -> None:
    obs = await edit(editor, three, "view", view_range=view_range)
    assert error_text(obs) == f"Invalid `view_range` parameter: {view_range}. {hint}"


async def test_view_directory_two_levels_without_hidden(editor: FileEditor, tmp_path: Path) -> None:
    root = tmp_path / "proj"
    for directory in ("b/e", ".hdir", "b/.hsub"):
        (root / directory).mkdir(parents=True)
    for file in ("a.txt", "b/c.txt", "b/.h", "b/e/deep.txt", ".hidden", ".hdir/x"):
        (root / file).write_text("")
    obs = await edit(editor, root, "view")
    assert obs == FileEditObservation(
        content=(
            f"Here's the files and directories up to 2 levels deep in {root}, excluding hidden "
            f"items:\n{root}/\n{root}/a.txt\n{root}/b/\n{root}/b/c.txt\n{root}/b/e/\n\n"
            f"2 hidden files/directories in this directory are excluded. You can use "
            f"'ls -la {root}' to see them."
        ),
        path=str(root),
        prev_exist=True,
    )


async def test_view_directory_follows_symlinks_and_omits_hidden_note(
    editor: FileEditor, tmp_path: Path
) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "inside.txt").write_text("")
    root = tmp_path / "top"
    root.mkdir()
    (root / "link").symlink_to(tmp_path / "real")
    obs = await edit(editor, root, "view")
    assert obs.content == (
        f"Here's the files and directories up to 2 levels deep in {root}, excluding hidden "
        f"items:\n{root}/\n{root}/link/\n{root}/link/inside.txt"
    )


async def test_view_directory_rejects_view_range(editor: FileEditor, tmp_path: Path) -> None:
    obs = await edit(editor, tmp_path, "view", view_range=[1, 2])
    assert error_text(obs) == (
        "Invalid `view_range` parameter: [1, 2]. The `view_range` parameter is not allowed "
        "when `path` points to a directory."
    )


async def test_view_clips_long_output(editor: FileEditor, tmp_path: Path) -> None:
    path = tmp_path / "long.txt"
    path.write_text("".join(f"{i:09d}\n" for i in range(5000)))
    obs = await edit(editor, path, "view")
    assert isinstance(obs, FileEditObservation)
    assert TEXT_FILE_TRUNCATED_NOTICE in obs.content
    assert len(obs.content) < MAX_RESPONSE_CHARS * 2
    for i in range(50):
        (tmp_path / "many" / f"sub{i:03d}").mkdir(parents=True)
        for j in range(40):
            (tmp_path / "many" / f"sub{i:03d}" / f"file-with-a-long-name-{j:03d}.txt").touch()
    obs = await edit(editor, tmp_path / "many", "view")
    assert obs.content.endswith(DIRECTORY_TRUNCATED_NOTICE)


async def test_view_empty_file(editor: FileEditor, tmp_path: Path) -> None:
    (tmp_path / "empty").write_text("")
    obs = await edit(editor, tmp_path / "empty", "view")
    assert (
        obs.content == f"Here's the result of running `cat -n` on {tmp_path / 'empty'}:\n     1\t\n"
    )


# --------------------------------------------------------------------------- paths


async def test_missing_path(editor: FileEditor, tmp_path: Path) -> None:
    missing = tmp_path / "missing.txt"
    obs = await edit(editor, missing, "view")
    assert error_text(obs) == (
        f"Invalid `path` parameter: {missing}. The path {missing} does not exist. "
        "Please provide a valid path."
    )


async def test_directory_only_viewable(editor: FileEditor, tmp_path: Path) -> None:
    obs = await edit(editor, tmp_path, "str_replace", old_str="a", new_str="b")
    assert error_text(obs) == (
        f"Invalid `path` parameter: {tmp_path}. The path {tmp_path} is a directory and only "
        "the `view` command can be used on directories."
    )


async def test_relative_path_resolves_against_cwd(editor: FileEditor, three: Path) -> None:
    obs = await editor.run(FileEditAction("three.txt", "view"), cwd=str(three.parent))
    assert isinstance(obs, FileEditObservation)
    assert obs.path == str(three)
    assert obs.content.startswith(f"Here's the result of running `cat -n` on {three}:\n")


async def test_require_absolute_paths_is_openhands_strict(three: Path) -> None:
    strict = FileEditor(require_absolute_paths=True)
    obs = await strict.run(FileEditAction("three.txt", "view"), cwd=str(three.parent))
    assert error_text(obs) == (
        "Invalid `path` parameter: three.txt. The path should be an absolute path, starting "
        f"with `/`. Maybe you meant {three}?"
    )
    obs = await strict.run(FileEditAction("nothing.txt", "view"), cwd=str(three.parent))
    assert error_text(obs) == (
        "Invalid `path` parameter: nothing.txt. The path should be an absolute path, starting "
        "with `/`."
    )


async def test_binary_file_is_refused(editor: FileEditor, tmp_path: Path) -> None:
    path = tmp_path / "blob.bin"
    path.write_bytes(bytes(range(256)) * 4)
    obs = await edit(editor, path, "view")
    assert error_text(obs) == (
        f"File validation failed for {path}: File appears to be binary and this file type "
        "cannot be read or edited by this tool."
    )


async def test_too_large_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    path.write_text("x\n" * (1024 * 1024))
    small = FileEditor(max_file_bytes=1024 * 1024)
    obs = await small.run(FileEditAction(str(path), "view"), cwd="/")
    assert error_text(obs) == (
        f"File validation failed for {path}: File is too large (2.0MB). Maximum allowed size "
        "is 1MB."
    )


# --------------------------------------------------------------------------- create


async def test_create_makes_parents(editor: FileEditor, tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / "hello.py"
    obs = await edit(editor, path, "create", file_text="print('hi')\n")
    assert obs == FileEditObservation(
        content=f"File created successfully at: {path}",
        path=str(path),
        prev_exist=False,
        old_content=None,
        new_content="print('hi')\n",
        diff=unified_diff("", "print('hi')\n", str(path)),
    )
    assert path.read_text() == "print('hi')\n"
    assert "+print('hi')" in obs.diff


async def test_create_refuses_existing(editor: FileEditor, three: Path) -> None:
    obs = await edit(editor, three, "create", file_text="clobber")
    assert error_text(obs) == (
        f"Invalid `path` parameter: {three}. File already exists at: {three}. Cannot overwrite "
        "files using command `create`."
    )
    assert three.read_text() == THREE


async def test_create_refuses_dangling_symlink(editor: FileEditor, tmp_path: Path) -> None:
    (tmp_path / "dangling").symlink_to(tmp_path / "elsewhere.txt")
    obs = await edit(editor, tmp_path / "dangling", "create", file_text="x")
    assert "File already exists at:" in error_text(obs)
    assert not (tmp_path / "elsewhere.txt").exists()


# --------------------------------------------------------------------------- str_replace


async def test_str_replace_success_text(editor: FileEditor, three: Path) -> None:
    obs = await edit(editor, three, "str_replace", old_str="line2", new_str="LINE2")
    assert isinstance(obs, FileEditObservation)
    assert obs.content == (
        f"The file {three} has been edited. Here's the result of running `cat -n` on a snippet "
        f"of {three}:\n     1\tline1\n     2\tLINE2\n     3\tline3\n     4\t\n"
        "Review the changes and make sure they are as expected. Edit the file again if necessary."
    )
    assert obs.prev_exist is True
    assert obs.old_content == THREE
    assert obs.new_content == "line1\nLINE2\nline3\n"
    assert obs.diff == f"--- {three}\n+++ {three}\n@@ -2 +2 @@\n-line2\n+LINE2"
    assert three.read_text() == "line1\nLINE2\nline3\n"


async def test_str_replace_snippet_window(editor: FileEditor, tmp_path: Path) -> None:
    path = tmp_path / "rows.txt"
    path.write_text("".join(f"row{i:02d}\n" for i in range(1, 21)))
    obs = await edit(editor, path, "str_replace", old_str="row10", new_str="A\nB")
    rows = ["row07", "row08", "row09", "A", "B", "row11", "row12", "row13", "row14"]
    # The snippet keeps its last newline, so (as in OpenHands) an empty line 16 follows.
    numbered = "".join(f"{n:6}\t{row}\n" for n, row in enumerate([*rows, ""], 7))
    assert obs.content == (
        f"The file {path} has been edited. Here's the result of running `cat -n` on a snippet "
        f"of {path}:\n{numbered}"
        "Review the changes and make sure they are as expected. Edit the file again if necessary."
    )


async def test_str_replace_no_match(editor: FileEditor, three: Path) -> None:
    obs = await edit(editor, three, "str_replace", old_str="zzz", new_str="y")
    assert error_text(obs) == (
        f"No replacement was performed, old_str `zzz` did not appear verbatim in {three}."
    )


async def test_str_replace_multiple_matches(editor: FileEditor, tmp_path: Path) -> None:
    path = tmp_path / "dup.txt"
    path.write_text("dup\nother\ndup dup\n")
    obs = await edit(editor, path, "str_replace", old_str="dup", new_str="x")
    assert error_text(obs) == (
        "No replacement was performed. Multiple occurrences of old_str `dup` in lines [1, 3]. "
        "Please ensure it is unique."
    )
    assert path.read_text() == "dup\nother\ndup dup\n"


async def test_str_replace_same_strings(editor: FileEditor, three: Path) -> None:
    obs = await edit(editor, three, "str_replace", old_str="line1", new_str="line1")
    assert error_text(obs) == (
        "Invalid `new_str` parameter: line1. No replacement was performed. `new_str` and "
        "`old_str` must be different."
    )


async def test_str_replace_without_new_str_deletes(editor: FileEditor, three: Path) -> None:
    obs = await edit(editor, three, "str_replace", old_str="line2\n")
    assert isinstance(obs, FileEditObservation)
    assert three.read_text() == "line1\nline3\n"


async def test_edit_keeps_mode_and_inode(editor: FileEditor, three: Path) -> None:
    three.chmod(0o640)
    inode = three.stat().st_ino
    await edit(editor, three, "str_replace", old_str="line3", new_str="x")
    await edit(editor, three, "insert", insert_line=0, new_str="top")
    await edit(editor, three, "undo_edit")
    assert stat.S_IMODE(three.stat().st_mode) == 0o640
    assert three.stat().st_ino == inode


async def test_crlf_file_stays_crlf(editor: FileEditor, tmp_path: Path) -> None:
    path = tmp_path / "dos.txt"
    path.write_bytes(b"one\r\ntwo\r\nthree\r\n")
    obs = await edit(editor, path, "view")
    assert "\r" not in obs.content
    obs = await edit(editor, path, "str_replace", old_str="one\ntwo", new_str="1\n2")
    assert isinstance(obs, FileEditObservation)
    assert path.read_bytes() == b"1\r\n2\r\nthree\r\n"
    await edit(editor, path, "insert", insert_line=3, new_str="four\nfive")
    assert path.read_bytes() == b"1\r\n2\r\nthree\r\nfour\r\nfive\r\n"


async def test_undecodable_bytes_survive_an_edit(editor: FileEditor, tmp_path: Path) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes(b"caf\xe9\nvalue = 1\n")
    obs = await edit(editor, path, "str_replace", old_str="value = 1", new_str="value = 2")
    assert isinstance(obs, FileEditObservation)
    assert path.read_bytes() == b"caf\xe9\nvalue = 2\n"
    assert "caf\ufffd" in obs.content
    encode_event(obs)  # no lone surrogates reach the wire
    view = await edit(editor, path, "view")
    encode_event(view)
    await edit(editor, path, "undo_edit")
    assert path.read_bytes() == b"caf\xe9\nvalue = 1\n"


# --------------------------------------------------------------------------- insert


async def test_insert_success_text(editor: FileEditor, three: Path) -> None:
    obs = await edit(editor, three, "insert", insert_line=1, new_str="inserted")
    assert isinstance(obs, FileEditObservation)
    assert three.read_text() == "line1\ninserted\nline2\nline3\n"
    assert obs.content == (
        f"The file {three} has been edited. Here's the result of running `cat -n` on a snippet "
        "of the edited file:\n     1\tline1\n     2\tinserted\n     3\tline2\n     4\tline3\n"
        "     5\t\n"
        "Review the changes and make sure they are as expected (correct indentation, no "
        "duplicate lines, etc). Edit the file again if necessary."
    )
    assert obs.old_content == THREE
    assert obs.new_content == "line1\ninserted\nline2\nline3\n"


@pytest.mark.parametrize(
    ("original", "line", "new_str", "expected"),
    [
        (THREE, 0, "top", "top\n" + THREE),
        (THREE, 3, "end", THREE + "end\n"),
        ("a\nb", 2, "c", "a\nb\nc\n"),
        (THREE, 1, "x\ny\n", "line1\nx\ny\nline2\nline3\n"),
        ("", 0, "first", "first\n"),
    ],
)
async def test_insert_positions(
    editor: FileEditor, tmp_path: Path, original: str, line: int, new_str: str, expected: str
) -> None:
    path = tmp_path / "f.txt"
    path.write_text(original)
    obs = await edit(editor, path, "insert", insert_line=line, new_str=new_str)
    assert isinstance(obs, FileEditObservation)
    assert path.read_text() == expected


@pytest.mark.parametrize("line", [-1, 4])
async def test_insert_out_of_range(editor: FileEditor, three: Path, line: int) -> None:
    obs = await edit(editor, three, "insert", insert_line=line, new_str="x")
    assert error_text(obs) == (
        f"Invalid `insert_line` parameter: {line}. It should be within the range of allowed "
        "values: [0, 3]"
    )
    assert three.read_text() == THREE


# --------------------------------------------------------------------------- undo_edit


async def test_undo_restores_and_then_runs_out(editor: FileEditor, three: Path) -> None:
    await edit(editor, three, "str_replace", old_str="line1", new_str="first")
    await edit(editor, three, "insert", insert_line=3, new_str="line4")
    obs = await edit(editor, three, "undo_edit")
    assert isinstance(obs, FileEditObservation)
    assert obs.content == (
        f"Last edit to {three} undone successfully. Here's the result of running `cat -n` on "
        f"{three}:\n     1\tfirst\n     2\tline2\n     3\tline3\n     4\t\n"
    )
    assert obs.old_content == "first\nline2\nline3\nline4\n"
    assert obs.new_content == "first\nline2\nline3\n"
    await edit(editor, three, "undo_edit")
    assert three.read_text() == THREE
    obs = await edit(editor, three, "undo_edit")
    assert error_text(obs) == f"No edit history found for {three}."


async def test_create_leaves_nothing_to_undo(editor: FileEditor, tmp_path: Path) -> None:
    path = tmp_path / "made.txt"
    await edit(editor, path, "create", file_text="made\n")
    assert error_text(await edit(editor, path, "undo_edit")) == (
        f"No edit history found for {path}."
    )


async def test_history_is_bounded_per_file(tmp_path: Path) -> None:
    editor = FileEditor(max_history_per_file=2)
    path = tmp_path / "f.txt"
    path.write_text("0")
    for i in range(1, 4):
        await edit(editor, path, "str_replace", old_str=str(i - 1), new_str=str(i))
    assert isinstance(await edit(editor, path, "undo_edit"), FileEditObservation)
    assert isinstance(await edit(editor, path, "undo_edit"), FileEditObservation)
    assert path.read_text() == "1"
    assert "No edit history found" in error_text(await edit(editor, path, "undo_edit"))


async def test_history_is_per_file(editor: FileEditor, tmp_path: Path) -> None:
    first, second = tmp_path / "1.txt", tmp_path / "2.txt"
    first.write_text("a")
    second.write_text("b")
    await edit(editor, first, "str_replace", old_str="a", new_str="A")
    assert "No edit history found" in error_text(await edit(editor, second, "undo_edit"))
    await edit(editor, first, "undo_edit")
    assert first.read_text() == "a"


# --------------------------------------------------------------------------- properties

_TEXT = st.text(
    alphabet=st.one_of(st.characters(blacklist_categories=("Cs", "Cc")), st.sampled_from("\n\t\r")),
    max_size=60,
)
_counter = itertools.count()


@given(content=_TEXT, data=st.data(), new=_TEXT)
def test_str_replace_is_str_replace_and_undo_restores(
    tmp_path_factory: pytest.TempPathFactory, content: str, data: st.DataObject, new: str
) -> None:
    start = data.draw(st.integers(0, len(content)))
    stop = data.draw(st.integers(start, len(content)))
    old = content[start:stop]
    assume(content.count(old) == 1 and new != old)
    path = tmp_path_factory.getbasetemp() / f"prop-{next(_counter)}.txt"
    original = content.encode()
    path.write_bytes(original)
    editor = FileEditor()

    obs = editor.run_sync(FileEditAction(str(path), "str_replace", old_str=old, new_str=new), "/")
    assert isinstance(obs, FileEditObservation), obs
    assert path.read_bytes() == content.replace(old, new, 1).encode()
    assert obs.new_content == content.replace(old, new, 1)
    assert obs.old_content == content

    undo = editor.run_sync(FileEditAction(str(path), "undo_edit"), "/")
    assert isinstance(undo, FileEditObservation), undo
    assert path.read_bytes() == original
    os.unlink(path)


@given(
    lines=st.lists(st.text(alphabet="abc \t", max_size=6), max_size=10),
    new_lines=st.lists(st.text(alphabet="xyz", max_size=4), min_size=1, max_size=4),
    data=st.data(),
)
def test_insert_puts_lines_after_insert_line(
    tmp_path_factory: pytest.TempPathFactory,
    lines: list[str],
    new_lines: list[str],
    data: st.DataObject,
) -> None:
    at = data.draw(st.integers(0, len(lines)))
    path = tmp_path_factory.getbasetemp() / f"ins-{next(_counter)}.txt"
    path.write_text("".join(line + "\n" for line in lines))
    editor = FileEditor()
    obs = editor.run_sync(
        FileEditAction(str(path), "insert", insert_line=at, new_str="\n".join(new_lines)), "/"
    )
    assert isinstance(obs, FileEditObservation), obs
    # A new_str that already ends with a newline gets no second one.
    block = "\n".join(new_lines)
    block += "" if block.endswith("\n") else "\n"
    head = "".join(line + "\n" for line in lines[:at])
    tail = "".join(line + "\n" for line in lines[at:])
    assert path.read_text() == head + block + tail
    editor.run_sync(FileEditAction(str(path), "undo_edit"), "/")
    assert path.read_text() == "".join(line + "\n" for line in lines)
    os.unlink(path)


async def test_fifo_is_refused_without_blocking(editor: FileEditor, tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    with anyio.fail_after(5):
        obs = await edit(editor, tmp_path / "pipe", "view")
    assert error_text(obs).startswith(f"File validation failed for {tmp_path / 'pipe'}:")


async def test_nul_in_path_is_an_error(editor: FileEditor) -> None:
    obs = await edit(editor, "/tmp/bad\x00name", "create", file_text="x")
    assert error_text(obs) == (
        "Invalid `path` parameter: '/tmp/bad\\x00name'. The path contains a NUL byte."
    )


def test_editor_error_is_a_server_error() -> None:
    from container_server.editor import EditorError
    from container_server.errors import ServerError

    assert issubclass(EditorError, ServerError)
    assert str(EditorError("refused")) == "refused"
