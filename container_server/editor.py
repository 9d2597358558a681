"""The ``str_replace_editor`` behind :class:`FileEditAction`.

Commands and result texts follow OpenHands' editor (openhands-aci), so an
agent trained on OpenHands reads the same words:

- ``view``: a file as ``cat -n`` numbered lines (``view_range`` = 1-based,
  inclusive, ``-1`` to the end); a directory as its non-hidden files and
  directories up to 2 levels deep, sorted, directories with a trailing ``/``;
- ``create``: a new file (parents created); an existing path is refused;
- ``str_replace``: ``old_str`` must occur exactly once (non-overlapping
  occurrences, as ``str.count`` counts them);
- ``insert``: ``new_str`` after line ``insert_line`` (0 = at the top);
- ``undo_edit``: restores the bytes the file had before the last
  ``str_replace``/``insert``/``undo``-able edit made by this editor.

Failures are :class:`ErrorObservation`s with ``error_id=ErrorId.EDITOR_ERROR`` and
the content OpenHands' server gives its agents: ``"ERROR:\\n"`` + the
editor's message.

Choices where we differ from OpenHands, on purpose:

- relative paths are resolved against the shell's cwd (OpenHands refuses
  them); ``FileEditor(require_absolute_paths=True)`` restores its refusal,
  with its text and its "Maybe you meant ..." hint;
- ``create`` does not record an undo step (OpenHands records the new text, so
  undoing past a create silently "restores" the same text);
- ``insert`` adds a newline after ``new_str`` only when it lacks one
  (OpenHands adds one after every ``\\n``-separated piece, so ``"x\\n"``
  becomes two lines), and a last line without a newline gets one before text
  inserted after it;
- files are edited as bytes that round-trip: text that is not UTF-8 is kept
  byte for byte (``surrogateescape``), CRLF files stay CRLF (an ``old_str``
  written with ``\\n`` matches their ``\\r\\n`` lines), and files are rewritten
  in place so mode, owner and hard links survive;
- the history is in memory (``max_history_per_file`` steps per file) and
  holds the exact previous bytes.

Every command runs in a worker thread (files go up to ``max_file_bytes``),
one command at a time per editor so that a file's history stays ordered.
"""

from __future__ import annotations

import asyncio
import collections
import difflib
import os
import re
import stat
from typing import Final

import anyio.to_thread

from container_server.errors import ServerError
from container_server.files import (
    decode_lossless,
    looks_binary,
    resolve_path,
    sanitize_text,
    split_lines,
    write_in_place,
)
from events import ErrorObservation, FileEditAction, FileEditObservation
from events.wire import ErrorId

__all__ = [
    "DEFAULT_MAX_FILE_BYTES",
    "DIRECTORY_TRUNCATED_NOTICE",
    "EDITOR_ERROR_ID",
    "MAX_RESPONSE_CHARS",
    "SNIPPET_CONTEXT_LINES",
    "TEXT_FILE_TRUNCATED_NOTICE",
    "EditorError",
    "FileEditor",
    "unified_diff",
]

EDITOR_ERROR_ID: Final = ErrorId.EDITOR_ERROR
DEFAULT_MAX_FILE_BYTES: Final = 10 * 1024 * 1024
#: Lines shown around an edit in the result snippet.
SNIPPET_CONTEXT_LINES: Final = 4
#: Longest file or directory text shown before it is clipped (characters).
MAX_RESPONSE_CHARS: Final = 16_000
TEXT_FILE_TRUNCATED_NOTICE: Final = (
    "<response clipped><NOTE>Due to the max output limit, only part of this file has been "
    "shown to you. You should retry this tool after you have searched inside the file with "
    "`grep -n` in order to find the line numbers of what you are looking for.</NOTE>"
)
DIRECTORY_TRUNCATED_NOTICE: Final = (
    "<response clipped><NOTE>Due to the max output limit, only part of this directory has been "
    "shown to you. You should use `ls -la` instead to view large directories "
    "incrementally.</NOTE>"
)
_SNIFF_BYTES: Final = 8 * 1024


class EditorError(ServerError):
    """An editor command failed; ``str()`` is the text shown to the agent."""


def _invalid(parameter: str, value: object, hint: str) -> EditorError:
    return EditorError(f"Invalid `{parameter}` parameter: {value}. {hint}")


def _missing(command: str, parameter: str) -> EditorError:
    return EditorError(f"Parameter `{parameter}` is required for command: {command}.")


def unified_diff(old: str, new: str, path: str) -> str:
    """A unified diff of two texts without context lines (as OpenHands records it)."""
    return "\n".join(
        difflib.unified_diff(
            old.split("\n"), new.split("\n"), fromfile=path, tofile=path, n=0, lineterm=""
        )
    )


def _is_crlf(text: str) -> bool:
    return "\r\n" in text and text.count("\n") == text.count("\r\n")


def _to_crlf(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\n", "\r\n")


def _shown(text: str) -> str:
    """The text as the agent sees it in ``cat -n`` output (CR of CRLF dropped)."""
    return text.replace("\r\n", "\n") if _is_crlf(text) else text


def _clip(text: str, notice: str) -> str:
    return text if len(text) <= MAX_RESPONSE_CHARS else text[:MAX_RESPONSE_CHARS] + notice


def _cat_n(content: str, description: str, start_line: int = 1) -> str:
    content = _clip(content, TEXT_FILE_TRUNCATED_NOTICE)
    numbered = "\n".join(
        f"{number:6}\t{line}" for number, line in enumerate(content.split("\n"), start_line)
    )
    return f"Here's the result of running `cat -n` on {description}:\n{numbered}\n"


def _occurrence_lines(text: str, needle: str) -> list[int]:
    """1-based line numbers of the non-overlapping occurrences of ``needle``."""
    return sorted(
        {text.count("\n", 0, m.start()) + 1 for m in re.finditer(re.escape(needle), text)}
    )


class _Edit:
    """What a mutating command did: the texts before and after, and the message."""

    __slots__ = ("message", "new_text", "old_text", "prev_exist")

    def __init__(
        self, message: str, old_text: str | None, new_text: str, *, prev_exist: bool
    ) -> None:
        self.message = message
        self.old_text = old_text
        self.new_text = new_text
        self.prev_exist = prev_exist


class FileEditor:
    """OpenHands' ``str_replace_editor``: view / create / str_replace / insert / undo_edit."""

    def __init__(
        self,
        *,
        max_history_per_file: int = 10,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
        require_absolute_paths: bool = False,
    ) -> None:
        self._max_history_per_file = max_history_per_file
        self._max_file_bytes = max_file_bytes
        self._require_absolute_paths = require_absolute_paths
        self._history: dict[str, collections.deque[bytes]] = {}
        self._lock = asyncio.Lock()

    async def run(
        self, action: FileEditAction, *, cwd: str
    ) -> FileEditObservation | ErrorObservation:
        """Run one editor command; relative paths resolve against ``cwd``."""
        async with self._lock:
            return await anyio.to_thread.run_sync(self.run_sync, action, cwd)

    def run_sync(self, action: FileEditAction, cwd: str) -> FileEditObservation | ErrorObservation:
        """:meth:`run` without the thread and the lock (the caller serializes)."""
        try:
            return self._run(action, cwd)
        except EditorError as exc:
            return ErrorObservation(f"ERROR:\n{sanitize_text(str(exc))}", error_id=EDITOR_ERROR_ID)

    # ----------------------------------------------------------------- dispatch

    def _run(self, action: FileEditAction, cwd: str) -> FileEditObservation:
        path = self._resolve(action.path, cwd)
        command = action.command
        self._validate_path(command, path)
        if command == "view":
            return FileEditObservation(
                content=sanitize_text(self._view(path, action.view_range)),
                path=path,
                prev_exist=True,
            )
        if command == "create":
            if action.file_text is None:
                raise _missing(command, "file_text")
            edit = self._create(path, action.file_text)
        elif command == "str_replace":
            if action.old_str is None:
                raise _missing(command, "old_str")
            edit = self._str_replace(path, action.old_str, action.new_str or "")
        elif command == "insert":
            if action.insert_line is None:
                raise _missing(command, "insert_line")
            if action.new_str is None:
                raise _missing(command, "new_str")
            edit = self._insert(path, action.insert_line, action.new_str)
        elif command == "undo_edit":
            edit = self._undo(path)
        else:
            raise EditorError(
                f"Unrecognized command {command}. The allowed commands for the "
                "str_replace_editor tool are: view, create, str_replace, insert, undo_edit"
            )
        return FileEditObservation(
            content=sanitize_text(edit.message),
            path=path,
            prev_exist=edit.prev_exist,
            old_content=None if edit.old_text is None else sanitize_text(edit.old_text),
            new_content=sanitize_text(edit.new_text),
            diff=sanitize_text(unified_diff(edit.old_text or "", edit.new_text, path)),
        )

    def _resolve(self, path: str, cwd: str) -> str:
        if "\x00" in path:
            raise _invalid("path", repr(path), "The path contains a NUL byte.")
        if os.path.isabs(path):
            return os.path.normpath(path)
        if self._require_absolute_paths:
            hint = "The path should be an absolute path, starting with `/`."
            suggestion = resolve_path(path, cwd)
            if os.path.exists(suggestion):
                hint += f" Maybe you meant {suggestion}?"
            raise _invalid("path", path, hint)
        return resolve_path(path, cwd)

    def _validate_path(self, command: str, path: str) -> None:
        if command == "create":
            if os.path.lexists(path):
                raise _invalid(
                    "path",
                    path,
                    f"File already exists at: {path}. Cannot overwrite files using command "
                    "`create`.",
                )
            return
        if not os.path.exists(path):
            raise _invalid(
                "path", path, f"The path {path} does not exist. Please provide a valid path."
            )
        if command != "view" and os.path.isdir(path):
            raise _invalid(
                "path",
                path,
                f"The path {path} is a directory and only the `view` command can be used on "
                "directories.",
            )

    # ----------------------------------------------------------------- file I/O

    def _load(self, path: str) -> bytes:
        """The bytes of a text file the editor may work on; EditorError otherwise."""
        try:
            st = os.stat(path)
            if not stat.S_ISREG(st.st_mode):
                raise EditorError(
                    f"File validation failed for {path}: Not a regular file; this tool can only "
                    "read or edit regular files."
                )
            if st.st_size > self._max_file_bytes:
                raise EditorError(
                    f"File validation failed for {path}: File is too large "
                    f"({st.st_size / 1024 / 1024:.1f}MB). Maximum allowed size is "
                    f"{int(self._max_file_bytes / 1024 / 1024)}MB."
                )
            with open(path, "rb") as file:
                data = file.read(self._max_file_bytes + 1)
        except OSError as exc:
            raise EditorError(f"Ran into {exc} while trying to read {path}") from None
        if looks_binary(data[:_SNIFF_BYTES]):
            raise EditorError(
                f"File validation failed for {path}: File appears to be binary and this file "
                "type cannot be read or edited by this tool."
            )
        return data

    def _save(self, path: str, text: str, *, create: bool = False) -> None:
        try:
            if create:
                parent = os.path.dirname(path)
                if parent:
                    os.makedirs(parent, exist_ok=True)
            write_in_place(path, text.encode("utf-8", "surrogateescape"), create=create)
        except OSError as exc:
            raise EditorError(f"Ran into {exc} while trying to write to {path}") from None

    def _remember(self, path: str, data: bytes) -> None:
        history = self._history.get(path)
        if history is None:
            history = self._history[path] = collections.deque(maxlen=self._max_history_per_file)
        history.append(data)

    # ----------------------------------------------------------------- commands

    def _view(self, path: str, view_range: list[int] | None) -> str:
        if os.path.isdir(path):
            if view_range:
                raise _invalid(
                    "view_range",
                    view_range,
                    "The `view_range` parameter is not allowed when `path` points to a directory.",
                )
            return self._view_directory(path)
        text = _shown(decode_lossless(self._load(path)))
        if not view_range:
            return _cat_n(text, path)
        if len(view_range) != 2 or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in view_range
        ):
            raise _invalid("view_range", view_range, "It should be a list of two integers.")
        lines = split_lines(text)
        num_lines = len(lines)
        start, end = view_range
        if start < 1 or start > num_lines:
            raise _invalid(
                "view_range",
                view_range,
                f"Its first element `{start}` should be within the range of lines of the file: "
                f"{[1, num_lines]}.",
            )
        warning = None
        if end == -1:
            end = num_lines
        elif end > num_lines:
            warning = (
                f"We only show up to {num_lines} since there's only {num_lines} lines in this file"
            )
            end = num_lines
        if end < start:
            raise _invalid(
                "view_range",
                view_range,
                f"Its second element `{end}` should be greater than or equal to the first "
                f"element `{start}`.",
            )
        shown = "\n".join(line.removesuffix("\n") for line in lines[start - 1 : end])
        output = _cat_n(shown, path, start)
        if warning is not None:
            output += f"\nNOTE: {warning}\n"
        return output

    def _view_directory(self, path: str) -> str:
        # Mirrors `find -L PATH -maxdepth 2 -not -path '*/.*' | sort`: symlinks followed,
        # hidden entries (and everything under hidden directories) left out.
        hidden = 0
        found: list[tuple[str, bool]] = [(path, True)]
        try:
            with os.scandir(path) as entries:
                children = list(entries)
        except OSError as exc:
            raise EditorError(f"Ran into {exc} while trying to read {path}") from None
        for entry in children:
            if entry.name.startswith("."):
                hidden += 1
                continue
            is_dir = entry.is_dir()
            found.append((entry.path, is_dir))
            if not is_dir:
                continue
            try:
                with os.scandir(entry.path) as grandchildren:
                    found.extend(
                        (sub.path, sub.is_dir())
                        for sub in grandchildren
                        if not sub.name.startswith(".")
                    )
            except OSError:
                continue  # unreadable subdirectory: listed, not descended (as find does)
        found.sort()
        listing = "\n".join(
            name if not is_dir or name.endswith("/") else name + "/" for name, is_dir in found
        )
        message = (
            f"Here's the files and directories up to 2 levels deep in {path}, excluding hidden "
            f"items:\n{_clip(listing, DIRECTORY_TRUNCATED_NOTICE)}"
        )
        if hidden:
            message += (
                f"\n\n{hidden} hidden files/directories in this directory are excluded. "
                f"You can use 'ls -la {path}' to see them."
            )
        return message

    def _create(self, path: str, file_text: str) -> _Edit:
        self._save(path, file_text, create=True)
        return _Edit(f"File created successfully at: {path}", None, file_text, prev_exist=False)

    def _str_replace(self, path: str, old_str: str, new_str: str) -> _Edit:
        if new_str == old_str:
            raise _invalid(
                "new_str",
                new_str,
                "No replacement was performed. `new_str` and `old_str` must be different.",
            )
        data = self._load(path)
        text = decode_lossless(data)
        count = text.count(old_str)
        if count == 0 and _is_crlf(text) and "\n" in old_str:
            # The agent saw the CRLF file's lines without their \r (see _shown).
            old_str, new_str = _to_crlf(old_str), _to_crlf(new_str)
            count = text.count(old_str)
        if count == 0:
            raise EditorError(
                f"No replacement was performed, old_str `{old_str}` did not appear verbatim "
                f"in {path}."
            )
        if count > 1:
            raise EditorError(
                f"No replacement was performed. Multiple occurrences of old_str `{old_str}` in "
                f"lines {_occurrence_lines(text, old_str)}. Please ensure it is unique."
            )
        index = text.index(old_str)
        new_text = text[:index] + new_str + text[index + len(old_str) :]
        self._save(path, new_text)
        self._remember(path, data)

        replaced_line = text.count("\n", 0, index) + 1
        first = max(0, replaced_line - SNIPPET_CONTEXT_LINES)
        stop = replaced_line + SNIPPET_CONTEXT_LINES + new_str.count("\n")
        snippet = "".join(split_lines(_shown(new_text))[first:stop])
        message = (
            f"The file {path} has been edited. "
            + _cat_n(snippet, f"a snippet of {path}", first + 1)
            + "Review the changes and make sure they are as expected. Edit the file again if "
            "necessary."
        )
        return _Edit(message, text, new_text, prev_exist=True)

    def _insert(self, path: str, insert_line: int, new_str: str) -> _Edit:
        data = self._load(path)
        text = decode_lossless(data)
        lines = split_lines(text)
        num_lines = len(lines)
        if insert_line < 0 or insert_line > num_lines:
            raise _invalid(
                "insert_line",
                insert_line,
                f"It should be within the range of allowed values: {[0, num_lines]}",
            )
        newline = "\r\n" if _is_crlf(text) else "\n"
        block = _to_crlf(new_str) if newline == "\r\n" else new_str
        if not block.endswith("\n"):
            block += newline
        head = lines[:insert_line]
        if head and not head[-1].endswith("\n"):
            head[-1] += newline
        new_text = "".join(head) + block + "".join(lines[insert_line:])
        self._save(path, new_text)
        self._remember(path, data)

        inserted = len(split_lines(block))
        first = max(0, insert_line - SNIPPET_CONTEXT_LINES)
        stop = min(num_lines + inserted, insert_line + SNIPPET_CONTEXT_LINES + inserted)
        snippet = "".join(split_lines(_shown(new_text))[first:stop])
        message = (
            f"The file {path} has been edited. "
            + _cat_n(snippet, "a snippet of the edited file", first + 1)
            + "Review the changes and make sure they are as expected (correct indentation, no "
            "duplicate lines, etc). Edit the file again if necessary."
        )
        return _Edit(message, text, new_text, prev_exist=True)

    def _undo(self, path: str) -> _Edit:
        current = decode_lossless(self._load(path))
        history = self._history.get(path)
        if not history:
            raise EditorError(f"No edit history found for {path}.")
        previous = history.pop()
        previous_text = decode_lossless(previous)
        try:
            write_in_place(path, previous, create=False)
        except OSError as exc:
            history.append(previous)
            raise EditorError(f"Ran into {exc} while trying to write to {path}") from None
        message = f"Last edit to {path} undone successfully. " + _cat_n(_shown(previous_text), path)
        return _Edit(message, current, previous_text, prev_exist=True)
