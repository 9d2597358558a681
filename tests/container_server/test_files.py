"""File read/write for FileReadAction / FileWriteAction, on real files."""

from __future__ import annotations

import base64
import contextlib
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st

from container_server.files import (
    INLINE_IO_BYTES,
    looks_binary,
    read_file,
    replace_lines,
    write_file,
)
from events import (
    ErrorObservation,
    FileReadAction,
    FileReadObservation,
    FileWriteAction,
    FileWriteObservation,
    encode_event,
)

LINES = "l0\nl1\nl2\nl3\n"


@contextlib.contextmanager
def unprivileged() -> Iterator[None]:
    """Drop to uid/gid 65534 (nobody) for the block when running as root.

    Root ignores file modes, so a permission test would otherwise pass for the
    wrong reason. As nobody, the 0700 pytest base directory already denies
    access; as a normal user, the file's own 0o000/0o444 mode does.
    """
    if os.geteuid() != 0:
        yield
        return
    os.setegid(65534)
    os.seteuid(65534)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


async def read(path: str | Path, cwd: Path, max_bytes: int | None = None, **kwargs: Any) -> object:
    action = FileReadAction(str(path), **kwargs)
    if max_bytes is None:
        return await read_file(action, cwd=str(cwd))
    return await read_file(action, cwd=str(cwd), max_bytes=max_bytes)


async def write(path: str | Path, content: str, cwd: Path, **kwargs: int) -> object:
    return await write_file(FileWriteAction(str(path), content, **kwargs), cwd=str(cwd))


# --------------------------------------------------------------------------- read


async def test_read_relative_path_resolves_against_cwd(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_text("hello\nworld\n")
    obs = await read("a.txt", tmp_path / "sub")
    assert obs == FileReadObservation(content="hello\nworld\n", path=str(tmp_path / "sub/a.txt"))
    obs = await read("../sub/./a.txt", tmp_path / "sub")
    assert isinstance(obs, FileReadObservation)
    assert obs.path == str(tmp_path / "sub/a.txt")


async def test_read_absolute_path_ignores_cwd(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x")
    obs = await read(tmp_path / "a.txt", Path("/"))
    assert obs == FileReadObservation(content="x", path=str(tmp_path / "a.txt"))


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (0, -1, LINES),
        (1, 3, "l1\nl2\n"),
        (2, -1, "l2\nl3\n"),
        (3, 10, "l3\n"),
        (10, -1, ""),
        (-5, 1, "l0\n"),
        (2, 2, ""),
    ],
)
async def test_read_line_range(tmp_path: Path, start: int, end: int, expected: str) -> None:
    (tmp_path / "f.txt").write_text(LINES)
    obs = await read("f.txt", tmp_path, start=start, end=end)
    assert isinstance(obs, FileReadObservation)
    assert obs.content == expected


@pytest.mark.parametrize(
    ("view_range", "expected"),
    [([2, 3], "l1\nl2\n"), ([3, -1], "l2\nl3\n"), ([1, 1], "l0\n"), ([4, 99], "l3\n")],
)
async def test_read_view_range_is_one_based_inclusive_and_wins(
    tmp_path: Path, view_range: list[int], expected: str
) -> None:
    (tmp_path / "f.txt").write_text(LINES)
    obs = await read("f.txt", tmp_path, view_range=view_range, start=0, end=1)
    assert isinstance(obs, FileReadObservation)
    assert obs.content == expected


async def test_read_line_range_of_a_large_file_streams(tmp_path: Path) -> None:
    lines = [f"line {i}\n" for i in range(50_000)]
    (tmp_path / "big.txt").write_text("".join(lines))
    obs = await read("big.txt", tmp_path, start=49_998, end=-1)
    assert isinstance(obs, FileReadObservation)
    assert obs.content == "line 49998\nline 49999\n"
    obs = await read("big.txt", tmp_path, start=10, end=12, max_bytes=100)
    assert isinstance(obs, FileReadObservation)
    assert obs.content == "line 10\nline 11\n"


async def test_read_large_file_whole(tmp_path: Path) -> None:
    text = "".join(f"row {i} ünïcode\n" for i in range(20_000))
    assert len(text.encode()) > INLINE_IO_BYTES
    (tmp_path / "big.txt").write_text(text)
    obs = await read("big.txt", tmp_path)
    assert isinstance(obs, FileReadObservation)
    assert obs.content == text


async def test_read_too_large_asks_for_a_range(tmp_path: Path) -> None:
    (tmp_path / "big.txt").write_text("x" * 5000)
    obs = await read_file(FileReadAction("big.txt"), cwd=str(tmp_path), max_bytes=1000)
    assert isinstance(obs, ErrorObservation)
    assert obs.error_id == "file_too_large"
    assert obs.content.startswith(f"File is too large to read whole: {tmp_path / 'big.txt'}")


async def test_read_missing_file_names_path_and_cwd(tmp_path: Path) -> None:
    obs = await read("nope.txt", tmp_path)
    assert obs == ErrorObservation(
        f"File not found: {tmp_path / 'nope.txt'}. Your current working directory is {tmp_path}.",
        error_id="file_not_found",
    )
    (tmp_path / "file").write_text("")
    obs = await read("file/below", tmp_path)
    assert isinstance(obs, ErrorObservation)
    assert obs.error_id == "file_not_found"


async def test_read_directory_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    obs = await read("d", tmp_path)
    assert obs == ErrorObservation(
        f"Path is a directory: {tmp_path / 'd'}. You can only read files",
        error_id="is_a_directory",
    )


@pytest.mark.parametrize("size", [512, INLINE_IO_BYTES * 4])
async def test_read_binary_file_is_an_error(tmp_path: Path, size: int) -> None:
    blob = bytes(range(256)) * (size // 256)
    (tmp_path / "prog").write_bytes(blob)
    obs = await read("prog", tmp_path)
    assert isinstance(obs, ErrorObservation)
    assert obs.error_id == "binary_file"
    assert obs.content.startswith("ERROR_BINARY_FILE")
    assert str(tmp_path / "prog") in obs.content
    obs = await read("prog", tmp_path, start=0, end=1)
    assert isinstance(obs, ErrorObservation)
    assert obs.error_id == "binary_file"


@pytest.mark.parametrize(
    ("name", "media_type"),
    [
        ("pic.png", "image/png"),
        ("pic.PNG", "image/png"),
        ("pic.jpg", "image/jpeg"),
        ("pic.jpeg", "image/jpeg"),
        ("pic.gif", "image/gif"),
        ("pic.webp", "image/webp"),
        ("pic.bmp", "image/bmp"),
        ("doc.pdf", "application/pdf"),
        ("clip.mp4", "video/mp4"),
        ("clip.webm", "video/webm"),
    ],
)
async def test_read_media_as_data_url(tmp_path: Path, name: str, media_type: str) -> None:
    payload = b"\x89PNG\r\n\x1a\n\x00\x00binary\xff" * 100
    (tmp_path / name).write_bytes(payload)
    obs = await read(name, tmp_path)
    assert obs == FileReadObservation(
        content=f"data:{media_type};base64,{base64.b64encode(payload).decode()}",
        path=str(tmp_path / name),
    )


async def test_read_missing_image_is_not_found(tmp_path: Path) -> None:
    obs = await read("gone.png", tmp_path)
    assert isinstance(obs, ErrorObservation)
    assert obs.error_id == "file_not_found"


async def test_read_non_utf8_text_is_decoded_with_replacement(tmp_path: Path) -> None:
    (tmp_path / "latin1.txt").write_bytes("café\nnaïve\n".encode("latin-1"))
    obs = await read("latin1.txt", tmp_path)
    assert isinstance(obs, FileReadObservation)
    assert obs.content == "caf\ufffd\nna\ufffdve\n"
    encode_event(obs)  # the observation can go over the wire


async def test_read_keeps_crlf(tmp_path: Path) -> None:
    (tmp_path / "dos.txt").write_bytes(b"a\r\nb\r\n")
    obs = await read("dos.txt", tmp_path)
    assert isinstance(obs, FileReadObservation)
    assert obs.content == "a\r\nb\r\n"


async def test_read_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    with anyio.fail_after(5):
        obs = await read("pipe", tmp_path)
    assert isinstance(obs, ErrorObservation)
    assert obs.error_id == "not_a_regular_file"


async def test_read_permission_denied(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("top secret")
    secret.chmod(0)
    with unprivileged():
        obs = await read(secret, tmp_path)
    assert isinstance(obs, ErrorObservation)
    assert obs.error_id == "permission_denied"
    assert obs.content.startswith(f"Permission error on {secret}:")


async def test_read_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    assert await read("empty", tmp_path) == FileReadObservation(
        content="", path=str(tmp_path / "empty")
    )


def test_looks_binary() -> None:
    assert not looks_binary(b"")
    assert not looks_binary(b"plain text\n\ttabbed\r\n")
    assert not looks_binary("日本語 and ümlauts".encode())
    assert not looks_binary("Shift-JIS テキスト".encode("shift_jis"))
    assert not looks_binary(b"\x1b[31mred\x1b[0m\n")
    assert looks_binary(b"text\x00more")
    assert looks_binary(bytes(range(1, 32)) * 4)


# --------------------------------------------------------------------------- write


async def test_write_creates_parents_and_writes_verbatim(tmp_path: Path) -> None:
    obs = await write("a/b/c.txt", "no trailing newline", tmp_path)
    assert obs == FileWriteObservation(path=str(tmp_path / "a/b/c.txt"), content="")
    assert (tmp_path / "a/b/c.txt").read_bytes() == b"no trailing newline"
    await write(tmp_path / "a/two.txt", "x\n", Path("/"))
    assert (tmp_path / "a/two.txt").read_bytes() == b"x\n"


async def test_write_keeps_mode_inode_and_hard_links(tmp_path: Path) -> None:
    target = tmp_path / "conf.ini"
    target.write_text("a long original content\n" * 10)
    target.chmod(0o640)
    os.link(target, tmp_path / "alias.ini")
    inode = target.stat().st_ino
    obs = await write("conf.ini", "short\n", tmp_path)
    assert isinstance(obs, FileWriteObservation)
    st_after = target.stat()
    assert stat.S_IMODE(st_after.st_mode) == 0o640
    assert st_after.st_ino == inode
    assert target.read_text() == "short\n"
    assert (tmp_path / "alias.ini").read_text() == "short\n"


async def test_write_large_content_goes_through_a_thread(tmp_path: Path) -> None:
    content = "".join(f"{i} ✓\n" for i in range(100_000))
    (tmp_path / "big.txt").write_text("old")
    (tmp_path / "big.txt").chmod(0o600)
    assert isinstance(await write("big.txt", content, tmp_path), FileWriteObservation)
    assert (tmp_path / "big.txt").read_text() == content
    assert stat.S_IMODE((tmp_path / "big.txt").stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("original", "start", "end", "content", "expected"),
    [
        ("a\nb\nc\n", 1, 2, "X", "a\nX\nc\n"),
        ("a\nb\nc\n", 0, 1, "X\nY", "X\nY\nb\nc\n"),
        ("a\nb\nc\n", 1, -1, "Z", "a\nZ\n"),
        ("a\nb\nc\n", 2, 2, "ins", "a\nb\nins\nc\n"),
        ("a\nb\nc\n", 5, -1, "Z", "a\nb\nc\nZ\n"),
        ("a\nb", 2, -1, "c", "a\nb\nc\n"),
        ("a\nb\nc\n", 1, 2, "", "a\nc\n"),
    ],
)
async def test_write_line_range_replaces_lines(
    tmp_path: Path, original: str, start: int, end: int, content: str, expected: str
) -> None:
    (tmp_path / "f.txt").write_text(original)
    obs = await write("f.txt", content, tmp_path, start=start, end=end)
    assert isinstance(obs, FileWriteObservation)
    assert (tmp_path / "f.txt").read_text() == expected


async def test_write_line_range_keeps_undecodable_bytes(tmp_path: Path) -> None:
    (tmp_path / "f.txt").write_bytes(b"\xff\xfe latin \xe9\nold\n")
    await write("f.txt", "new", tmp_path, start=1, end=2)
    assert (tmp_path / "f.txt").read_bytes() == b"\xff\xfe latin \xe9\nnew\n"


async def test_write_line_range_on_missing_file_creates_it(tmp_path: Path) -> None:
    await write("fresh.txt", "hello", tmp_path, start=3, end=4)
    assert (tmp_path / "fresh.txt").read_text() == "hello\n"


async def test_write_to_directory_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    obs = await write("d", "x", tmp_path)
    assert obs == ErrorObservation(
        f"Path is a directory: {tmp_path / 'd'}. You can only write to files",
        error_id="is_a_directory",
    )


async def test_write_permission_denied(tmp_path: Path) -> None:
    locked = tmp_path / "locked.txt"
    locked.write_text("keep me")
    locked.chmod(0o444)
    with unprivileged():
        obs = await write(locked, "overwrite", tmp_path)
    assert isinstance(obs, ErrorObservation)
    assert obs.error_id == "permission_denied"
    assert obs.content.startswith(f"Permission error on {locked}:")
    assert locked.read_text() == "keep me"


async def test_write_below_a_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    obs = await write("file/child.txt", "x", tmp_path)
    assert isinstance(obs, ErrorObservation)
    assert obs.error_id == "file_write_error"


async def test_write_then_read_round_trip(tmp_path: Path) -> None:
    text = "first\nsecond ünï\n"
    await write("rt.txt", text, tmp_path)
    assert await read("rt.txt", tmp_path) == FileReadObservation(
        content=text, path=str(tmp_path / "rt.txt")
    )


@given(
    lines=st.lists(st.text(alphabet="ab \t", max_size=5).map(lambda s: s + "\n"), max_size=8),
    start=st.integers(-2, 10),
    end=st.integers(-1, 10),
    new=st.lists(st.text(alphabet="xy", min_size=1, max_size=3), max_size=3),
)
def test_replace_lines_matches_line_list_surgery(
    lines: list[str], start: int, end: int, new: list[str]
) -> None:
    first = min(max(start, 0), len(lines))
    stop = len(lines) if end == -1 else min(max(end, first), len(lines))
    content = "\n".join(new)
    expected = lines[:first] + [line + "\n" for line in new] + lines[stop:]
    assert replace_lines("".join(lines), content, start, end) == "".join(expected)


async def test_small_read_is_fast(tmp_path: Path) -> None:
    """A 1 KB read stays far below the 0.5 ms round-trip budget (measured p50)."""
    (tmp_path / "k.txt").write_text(("x" * 63 + "\n") * 16)
    action = FileReadAction("k.txt")
    samples = []
    for _ in range(300):
        started = time.perf_counter()
        await read_file(action, cwd=str(tmp_path))
        samples.append(time.perf_counter() - started)
    samples.sort()
    # Typically ~7 µs here; the bound leaves room for slow CI machines.
    assert samples[len(samples) // 2] < 0.0005


async def test_nul_in_path_is_an_error(tmp_path: Path) -> None:
    obs = await read("bad\x00name", tmp_path)
    assert isinstance(obs, ErrorObservation)
    assert obs.error_id == "invalid_path"
    obs = await write("bad\x00name", "x", tmp_path)
    assert isinstance(obs, ErrorObservation)
    assert obs.error_id == "invalid_path"


async def test_write_to_fifo_without_reader_does_not_block(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe")
    with anyio.fail_after(5):
        obs = await write("pipe", "x", tmp_path)
    assert isinstance(obs, ErrorObservation)
    assert obs.error_id == "file_write_error"


def test_read_error_is_a_server_error() -> None:
    from container_server.errors import ServerError
    from container_server.files import ReadError

    error = ReadError("no such file", "file_not_found")
    assert isinstance(error, ServerError)
    assert (error.message, error.error_id) == ("no such file", "file_not_found")
