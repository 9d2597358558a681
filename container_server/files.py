"""Reading and writing files for :class:`FileReadAction` / :class:`FileWriteAction`.

Semantics follow the OpenHands action execution server, with the texts its
agents know:

- relative paths resolve against ``cwd`` (the shell's current directory);
  observations carry the resolved absolute path;
- read: ``start``/``end`` are 0-based line bounds, ``end`` exclusive, ``-1``
  meaning "to the end"; ``view_range`` (when given) wins and is 1-based and
  inclusive, as in the editor. Images (png/jpg/jpeg/gif/webp/bmp), PDFs and
  videos (mp4/webm/ogg) come back as ``data:`` URLs. Missing files,
  directories, binary files, non-regular files (FIFOs, devices) and denied
  paths are :class:`ErrorObservation`s. Text that is not UTF-8 is decoded with
  replacement characters rather than refused. Newlines are returned as stored.
- write: parent directories are created; an existing file is rewritten in
  place (same inode), so its mode, owner and hard links are kept. With the
  default ``start=0, end=-1`` the content is written verbatim (OpenHands
  appends a newline after every line, turning ``"a\\n"`` into ``"a\\n\\n"``;
  we do not). Otherwise lines ``start``..``end`` (0-based, end exclusive,
  ``-1`` = to the end) are replaced by ``content``, taken as whole lines (a
  missing final newline is added).

Files up to ``INLINE_IO_BYTES`` (16 KiB) are read and written inline on the
event loop: a thread hop (~50 µs here) costs more than reading them from the
page cache (a 1 KB read takes ~7 µs). Anything larger goes through a worker
thread, decided by the fstat of the opened file.
"""

from __future__ import annotations

import base64
import errno
import os
import stat
from typing import Final

import anyio.to_thread

from container_server.errors import ServerError
from events import (
    ErrorObservation,
    FileReadAction,
    FileReadObservation,
    FileWriteAction,
    FileWriteObservation,
)
from events.wire import ErrorId

__all__ = [
    "DEFAULT_MAX_READ_BYTES",
    "INLINE_IO_BYTES",
    "MEDIA_TYPES",
    "ReadError",
    "decode_lossless",
    "looks_binary",
    "read_file",
    "read_regular_file",
    "replace_lines",
    "resolve_path",
    "sanitize_text",
    "split_lines",
    "write_file",
    "write_in_place",
]

#: Files up to this size (bytes) are read and written on the event loop itself.
INLINE_IO_BYTES: Final = 16 * 1024
#: The largest file (bytes) a read returns whole; larger files need a line range.
DEFAULT_MAX_READ_BYTES: Final = 10 * 1024 * 1024
#: How much of a file the binary sniffing looks at (bytes).
_SNIFF_BYTES: Final = 8 * 1024

MEDIA_TYPES: Final[dict[str, str]] = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".bmp": "image/bmp",
    ".pdf": "application/pdf",
    ".mp4": "video/mp4",
    ".webm": "video/webm",
    ".ogg": "video/ogg",
}

# Bytes that never occur in text: C0 controls except \b \t \n \v \f \r and ESC, plus DEL.
_CONTROL_BYTES: Final = bytes([*range(0x08), *range(0x0E, 0x1B), *range(0x1C, 0x20), 0x7F])
_OPEN_FLAGS: Final = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK


class ReadError(ServerError):
    """A file could not be read; ``message`` is the agent-facing text."""

    def __init__(self, message: str, error_id: str) -> None:
        super().__init__(message)
        self.message = message
        self.error_id = error_id


def resolve_path(path: str, cwd: str) -> str:
    """``path`` made absolute against ``cwd`` (lexically; symlinks are left alone)."""
    return os.path.normpath(path if os.path.isabs(path) else os.path.join(cwd, path))


def looks_binary(sample: bytes) -> bool:
    """Whether ``sample`` (the start of a file) is binary rather than text.

    A NUL byte, or more than 30 % control characters, means binary. Bytes
    >= 0x80 count as text so that Latin-1 or Shift-JIS files are still text.
    """
    if not sample:
        return False
    if b"\x00" in sample:
        return True
    controls = len(sample) - len(sample.translate(None, _CONTROL_BYTES))
    return controls * 10 > len(sample) * 3


def decode_lossless(data: bytes) -> str:
    """UTF-8 text whose undecodable bytes survive a round trip (``surrogateescape``)."""
    return data.decode("utf-8", "surrogateescape")


def sanitize_text(text: str) -> str:
    """``text`` safe to encode as UTF-8: lone surrogates become U+FFFD."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return text


def _read_fd(fd: int, limit: int) -> bytes:
    """Up to ``limit`` bytes from ``fd``; one byte more means "over the limit"."""
    parts: list[bytes] = []
    remaining = limit + 1
    while remaining > 0:
        part = os.read(fd, min(remaining, 1024 * 1024))
        if not part:
            break
        parts.append(part)
        remaining -= len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def read_regular_file(path: str, *, max_bytes: int) -> bytes:
    """The bytes of the regular file at ``path``; :class:`ReadError` otherwise.

    ``O_NONBLOCK`` keeps a FIFO from blocking the open; the fstat then refuses it.
    """
    fd = _open_for_read(path)
    try:
        st = os.fstat(fd)
        _check_regular(path, st)
        if st.st_size > max_bytes:
            raise ReadError(_too_large(path, st.st_size, max_bytes), "file_too_large")
        data = _read_fd(fd, max_bytes)
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise ReadError(_too_large(path, len(data), max_bytes), "file_too_large")
    return data


def _too_large(path: str, size: int, limit: int) -> str:
    return (
        f"File is too large to read whole: {path} ({size} bytes; the limit is {limit} bytes). "
        "Read it in parts with the start and end line parameters."
    )


def _open_for_read(path: str) -> int:
    try:
        return os.open(path, _OPEN_FLAGS)
    except (FileNotFoundError, NotADirectoryError):
        raise _not_found(path) from None
    except PermissionError as exc:
        raise ReadError(f"Permission error on {path}: {exc}", ErrorId.PERMISSION_DENIED) from None
    except OSError as exc:
        raise ReadError(f"Could not open {path}: {exc}", ErrorId.FILE_READ_ERROR) from None


def _not_found(path: str) -> ReadError:
    # The cwd part of OpenHands' text is added by the caller, which knows it.
    return ReadError(f"File not found: {path}.", ErrorId.FILE_NOT_FOUND)


def _check_regular(path: str, st: os.stat_result) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise ReadError(
            f"Path is a directory: {path}. You can only read files", ErrorId.IS_A_DIRECTORY
        )
    if not stat.S_ISREG(st.st_mode):
        raise ReadError(
            f"Path is not a regular file: {path}. You can only read regular files",
            "not_a_regular_file",
        )


def _nul_message(path: str) -> str:
    return f"Invalid path {path!r}: it contains a NUL byte."


def _binary_error(path: str) -> ReadError:
    # OpenHands answers the bare token ERROR_BINARY_FILE, which its UI matches on.
    return ReadError(
        f"ERROR_BINARY_FILE: {path} is a binary file and cannot be read as text.",
        ErrorId.BINARY_FILE,
    )


# --------------------------------------------------------------------------- read


def _media_type(path: str) -> str | None:
    dot = path.rfind(".")
    if dot < 0 or "/" in path[dot:]:
        return None
    return MEDIA_TYPES.get(path[dot:].lower())


def _data_url(path: str, media_type: str, max_bytes: int) -> str:
    data = read_regular_file(path, max_bytes=max_bytes)
    return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"


def _line_bounds(action: FileReadAction) -> tuple[int, int | None] | None:
    """0-based ``[first, stop)`` line bounds, or None for the whole file."""
    if action.view_range is not None:
        first, last = action.view_range
        return max(first - 1, 0), None if last == -1 else max(last, 0)
    if action.start <= 0 and action.end == -1:
        return None
    return max(action.start, 0), None if action.end == -1 else max(action.end, 0)


def _select_lines(text: str, bounds: tuple[int, int | None]) -> str:
    first, stop = bounds
    return "".join(split_lines(text)[first:stop])


def _decode_text(path: str, data: bytes, bounds: tuple[int, int | None] | None) -> str:
    if looks_binary(data[:_SNIFF_BYTES]):
        raise _binary_error(path)
    text = data.decode("utf-8", "replace")
    return text if bounds is None else _select_lines(text, bounds)


def _read_text_range(path: str, bounds: tuple[int, int | None], max_bytes: int) -> str:
    """The selected lines of a file of any size, streamed; only the selection is kept."""
    first, stop = bounds
    fd = _open_for_read(path)
    with open(fd, "rb") as file:
        st = os.fstat(fd)
        _check_regular(path, st)
        if looks_binary(file.read(_SNIFF_BYTES)):
            raise _binary_error(path)
        file.seek(0)
        kept: list[bytes] = []
        size = 0
        for index, line in enumerate(file):
            if stop is not None and index >= stop:
                break
            if index >= first:
                kept.append(line)
                size += len(line)
                if size > max_bytes:
                    raise ReadError(_too_large(path, size, max_bytes), "file_too_large")
    return b"".join(kept).decode("utf-8", "replace")


def _read_sync(path: str, bounds: tuple[int, int | None] | None, max_bytes: int) -> str:
    media_type = _media_type(path)
    if media_type is not None:
        return _data_url(path, media_type, max_bytes)
    if bounds is not None:
        return _read_text_range(path, bounds, max_bytes)
    return _decode_text(path, read_regular_file(path, max_bytes=max_bytes), None)


async def read_file(
    action: FileReadAction, *, cwd: str, max_bytes: int = DEFAULT_MAX_READ_BYTES
) -> FileReadObservation | ErrorObservation:
    """Read ``action.path`` (relative to ``cwd``); never raises for file problems."""
    if "\x00" in action.path:
        return ErrorObservation(_nul_message(action.path), error_id=ErrorId.INVALID_PATH)
    path = resolve_path(action.path, cwd)
    bounds = _line_bounds(action)
    try:
        content = _read_small(path, bounds, max_bytes)
        if content is None:
            content = await anyio.to_thread.run_sync(_read_sync, path, bounds, max_bytes)
    except ReadError as exc:
        message = exc.message
        if exc.error_id == ErrorId.FILE_NOT_FOUND:
            message = f"File not found: {path}. Your current working directory is {cwd}."
        return ErrorObservation(message, error_id=exc.error_id)
    except OSError as exc:
        return ErrorObservation(f"Could not read {path}: {exc}", error_id=ErrorId.FILE_READ_ERROR)
    return FileReadObservation(content=content, path=path)


def _read_small(path: str, bounds: tuple[int, int | None] | None, max_bytes: int) -> str | None:
    """The result for a small file, read inline; None when a thread should do it."""
    limit = min(INLINE_IO_BYTES, max_bytes)
    fd = _open_for_read(path)
    try:
        st = os.fstat(fd)
        _check_regular(path, st)
        if st.st_size > limit:
            return None
        data = _read_fd(fd, limit)
    finally:
        os.close(fd)
    if len(data) > limit:  # grew since the fstat: let the thread read (or refuse) it
        return None
    media_type = _media_type(path)
    if media_type is not None:
        return f"data:{media_type};base64,{base64.b64encode(data).decode('ascii')}"
    return _decode_text(path, data, bounds)


# --------------------------------------------------------------------------- write


def write_in_place(path: str, data: bytes, *, create: bool = True) -> bool:
    """Write ``data`` as the whole content of ``path``, keeping an existing inode.

    Returns whether the file existed. Rewriting in place (rather than
    replacing the file) keeps its mode, owner, ACLs and hard links; the cost
    is that a crash mid-write leaves a partly written file.
    """
    try:
        # O_NONBLOCK: opening a FIFO that has no reader fails (ENXIO) instead of hanging.
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        existed = True
    except FileNotFoundError:
        if not create:
            raise
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        existed = False
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", path)
        view = memoryview(data)
        offset = 0
        while offset < len(view):
            offset += os.pwrite(fd, view[offset:], offset)
        os.ftruncate(fd, len(view))
    finally:
        os.close(fd)
    return existed


def split_lines(text: str) -> list[str]:
    """Lines of ``text`` split on "\\n" only, each keeping its newline."""
    parts = text.split("\n")
    lines = [part + "\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines


def replace_lines(original: str, content: str, start: int, end: int) -> str:
    """``original`` with lines ``start``..``end`` (0-based, end exclusive, -1 = all) replaced."""
    lines = split_lines(original)
    first = min(max(start, 0), len(lines))
    stop = len(lines) if end == -1 else min(max(end, first), len(lines))
    head, tail = lines[:first], lines[stop:]
    if head and not head[-1].endswith("\n"):
        head[-1] += "\n"
    if content and not content.endswith("\n"):
        content += "\n"  # content stands for whole lines, as in OpenHands' insert_lines
    return "".join(head) + content + "".join(tail)


def _write_sync(path: str, content: str, start: int, end: int) -> None:
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    if start <= 0 and end == -1:
        write_in_place(path, content.encode("utf-8", "surrogateescape"))
        return
    try:
        with open(path, "rb") as file:
            original = decode_lossless(file.read())
    except FileNotFoundError:
        original = ""
    new_text = replace_lines(original, content, start, end)
    write_in_place(path, new_text.encode("utf-8", "surrogateescape"))


async def write_file(
    action: FileWriteAction, *, cwd: str
) -> FileWriteObservation | ErrorObservation:
    """Write ``action.content`` to ``action.path`` (relative to ``cwd``)."""
    if "\x00" in action.path:
        return ErrorObservation(_nul_message(action.path), error_id=ErrorId.INVALID_PATH)
    path = resolve_path(action.path, cwd)
    try:
        if len(action.content) <= INLINE_IO_BYTES and action.start <= 0 and action.end == -1:
            _write_sync(path, action.content, action.start, action.end)
        else:
            await anyio.to_thread.run_sync(
                _write_sync, path, action.content, action.start, action.end
            )
    except IsADirectoryError:
        return ErrorObservation(
            f"Path is a directory: {path}. You can only write to files",
            error_id=ErrorId.IS_A_DIRECTORY,
        )
    except PermissionError as exc:
        return ErrorObservation(
            f"Permission error on {path}: {exc}", error_id=ErrorId.PERMISSION_DENIED
        )
    except OSError as exc:
        return ErrorObservation(
            f"Failed to write file {path}: {exc}", error_id=ErrorId.FILE_WRITE_ERROR
        )
    return FileWriteObservation(path=path, content="")
