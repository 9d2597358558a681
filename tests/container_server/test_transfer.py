"""Streamed tar upload/download and directory listing, on real files."""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
import tracemalloc
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import anyio
import msgspec
import pytest

from container_server.transfer import (
    DirEntry,
    TransferError,
    extract_tar_stream,
    list_dir,
    tar_stream,
)


async def chunked(data: bytes, size: int = 700) -> AsyncIterator[bytes]:
    for offset in range(0, len(data), size):
        yield data[offset : offset + size]


async def collect(path: Path, chunk_size: int = 64 * 1024) -> bytes:
    return b"".join([chunk async for chunk in tar_stream(str(path), chunk_size=chunk_size)])


def tar_names(archive: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        return tar.getnames()


def snapshot(root: Path) -> dict[str, tuple[str, object, int]]:
    """Every entry under ``root``: kind, content (or link target) and permission bits."""
    tree: dict[str, tuple[str, object, int]] = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            full = Path(directory, name)
            rel = str(full.relative_to(root))
            st = full.lstat()
            if stat.S_ISLNK(st.st_mode):
                tree[rel] = ("link", os.readlink(full), 0)
            elif stat.S_ISDIR(st.st_mode):
                tree[rel] = ("dir", None, stat.S_IMODE(st.st_mode))
            else:
                tree[rel] = ("file", full.read_bytes(), stat.S_IMODE(st.st_mode))
    return tree


def build_tree(root: Path) -> None:
    (root / "src" / "pkg" / "ünïcödé dir").mkdir(parents=True)
    (root / "empty dir").mkdir()
    (root / "src" / "main.py").write_text("print('hi')\n")
    (root / "src" / "pkg" / "ünïcödé dir" / "日本語.txt").write_text("こんにちは\n")
    (root / "src" / "pkg" / "data.bin").write_bytes(bytes(range(256)) * 50)
    (root / "src" / "run.sh").write_text("#!/bin/sh\necho ok\n")
    (root / "src" / "run.sh").chmod(0o755)
    (root / "private.txt").write_text("mine")
    (root / "private.txt").chmod(0o640)
    (root / "empty.txt").write_bytes(b"")
    (root / ".hidden").write_text("h")
    (root / "src" / "link_to_main").symlink_to("main.py")
    (root / "dir_link").symlink_to("src/pkg")
    os.link(root / "src" / "main.py", root / "src" / "hardlinked.py")
    (root / "src" / "pkg").chmod(0o750)


# --------------------------------------------------------------------------- round trip


async def test_round_trip_of_a_nested_unicode_tree(tmp_path: Path) -> None:
    source, dest = tmp_path / "source", tmp_path / "dest"
    build_tree(source)
    archive = await collect(source, chunk_size=1000)
    names = tar_names(archive)
    assert "src/pkg/ünïcödé dir/日本語.txt" in names
    assert not any(name.startswith(("/", "./", "source")) for name in names)

    extracted = await extract_tar_stream(chunked(archive, 4096), str(dest))
    assert snapshot(dest) == snapshot(source)
    assert sorted(extracted) == sorted(snapshot(source))
    assert os.stat(dest / "src/main.py").st_ino == os.stat(dest / "src/hardlinked.py").st_ino


async def test_round_trip_through_the_stream_directly(tmp_path: Path) -> None:
    source, dest = tmp_path / "source", tmp_path / "dest"
    build_tree(source)
    await extract_tar_stream(tar_stream(str(source), chunk_size=512), str(dest))
    assert snapshot(dest) == snapshot(source)


async def test_single_file_is_stored_under_its_name(tmp_path: Path) -> None:
    (tmp_path / "report.csv").write_text("a,b\n1,2\n")
    archive = await collect(tmp_path / "report.csv")
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        assert tar.getnames() == ["report.csv"]
        member = tar.extractfile("report.csv")
        assert member is not None
        assert member.read() == b"a,b\n1,2\n"


async def test_tar_stream_chunks_have_the_requested_size(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_bytes(os.urandom(100_000))
    chunks = [chunk async for chunk in tar_stream(str(tmp_path / "d"), chunk_size=4096)]
    assert all(len(chunk) == 4096 for chunk in chunks[:-1])
    assert 0 < len(chunks[-1]) <= 4096


async def test_tar_stream_of_missing_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        await collect(tmp_path / "missing")


async def test_tar_stream_follows_a_top_level_symlink(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "f.txt").write_text("x")
    (tmp_path / "link").symlink_to("real")
    archive = await collect(tmp_path / "link")
    assert tar_names(archive) == ["f.txt"]


async def test_tar_stream_skips_unreadable_entries(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "ok.txt").write_text("ok")
    os.mkfifo(tmp_path / "d" / "pipe")  # stored as a FIFO entry, never opened
    archive = await collect(tmp_path / "d")
    assert sorted(tar_names(archive)) == ["ok.txt", "pipe"]


async def test_closing_a_download_early_stops_the_producer(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "big").write_bytes(b"\0" * (8 * 1024 * 1024))
    stream = tar_stream(str(tmp_path / "d"), chunk_size=1024)
    assert await stream.__anext__()
    # The producer is now blocked waiting for the consumer; aclose() returns only once the
    # producer thread has returned, so a producer that kept waiting would trip the deadline.
    with anyio.fail_after(5):
        await stream.aclose()


async def test_extract_gzip_compressed(tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        add_file(tar, "a/b.txt", b"zipped")
    names = await extract_tar_stream(chunked(buffer.getvalue(), 3), str(tmp_path / "out"))
    assert names == ["a/b.txt"]
    assert (tmp_path / "out/a/b.txt").read_bytes() == b"zipped"


async def test_extract_creates_dest_and_overwrites_files(tmp_path: Path) -> None:
    dest = tmp_path / "new" / "dest"
    await extract_tar_stream(chunked(make_tar(lambda t: add_file(t, "f.txt", b"one"))), str(dest))
    await extract_tar_stream(chunked(make_tar(lambda t: add_file(t, "f.txt", b"two"))), str(dest))
    assert (dest / "f.txt").read_bytes() == b"two"


async def test_extract_strips_special_mode_bits_and_applies_dir_modes(tmp_path: Path) -> None:
    def build(tar: tarfile.TarFile) -> None:
        directory = tarfile.TarInfo("ro")
        directory.type = tarfile.DIRTYPE
        directory.mode = 0o555
        tar.addfile(directory)
        add_file(tar, "ro/suid", b"x", mode=0o4755)

    await extract_tar_stream(chunked(make_tar(build)), str(tmp_path / "out"))
    assert stat.S_IMODE((tmp_path / "out/ro").stat().st_mode) == 0o555
    assert stat.S_IMODE((tmp_path / "out/ro/suid").stat().st_mode) == 0o755
    (tmp_path / "out/ro").chmod(0o755)  # let pytest clean up as a non-root user


async def test_extract_refuses_garbage(tmp_path: Path) -> None:
    with pytest.raises(TransferError, match="not a valid tar stream"):
        await extract_tar_stream(chunked(b"this is not a tar archive" * 100), str(tmp_path / "o"))
    with pytest.raises(TransferError):
        await extract_tar_stream(chunked(b""), str(tmp_path / "o"))


async def test_extract_truncated_stream(tmp_path: Path) -> None:
    archive = make_tar(lambda t: add_file(t, "f.bin", os.urandom(50_000)))
    with pytest.raises(TransferError):
        await extract_tar_stream(chunked(archive[:20_000]), str(tmp_path / "o"))


async def test_errors_of_the_source_propagate(tmp_path: Path) -> None:
    archive = make_tar(lambda t: add_file(t, "f.bin", os.urandom(100_000)))

    async def broken() -> AsyncIterator[bytes]:
        yield archive[:30_000]
        raise ConnectionResetError("client went away")

    with pytest.raises(ConnectionResetError, match="client went away"):
        await extract_tar_stream(broken(), str(tmp_path / "o"))


# --------------------------------------------------------------------------- malicious tars


def make_tar(build: Callable[[tarfile.TarFile], None]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        build(tar)
    return buffer.getvalue()


def add_file(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = mode
    tar.addfile(info, io.BytesIO(data))


def add_link(tar: tarfile.TarFile, name: str, target: str, kind: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    tar.addfile(info)


def add_special(tar: tarfile.TarFile, name: str, kind: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.devmajor, info.devminor = 1, 3
    tar.addfile(info)


@pytest.fixture
def arena(tmp_path: Path) -> tuple[Path, Path]:
    """A destination and, beside it, an ``outside`` directory nothing may touch."""
    (tmp_path / "dest").mkdir()
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("do not touch")
    return tmp_path / "dest", tmp_path / "outside"


MALICIOUS: dict[str, Callable[[tarfile.TarFile, Path], None]] = {
    "absolute path": lambda t, out: add_file(t, str(out / "abs.txt"), b"pwned"),
    "dot-dot": lambda t, out: add_file(t, "../outside/dotdot.txt", b"pwned"),
    "nested dot-dot": lambda t, out: add_file(t, "a/b/../../../outside/nested.txt", b"pwned"),
    "symlink to parent": lambda t, out: add_link(t, "esc", "../outside", tarfile.SYMTYPE),
    "symlink absolute": lambda t, out: add_link(t, "esc", str(out), tarfile.SYMTYPE),
    "symlink then write through it": lambda t, out: (
        add_link(t, "esc", "../outside", tarfile.SYMTYPE),
        add_file(t, "esc/through.txt", b"pwned"),
    ),
    "symlink chain escaping after a later link": lambda t, out: (
        add_link(t, "l", "s/..", tarfile.SYMTYPE),
        add_link(t, "s", ".", tarfile.SYMTYPE),
    ),
    "symlink inside, then written through": lambda t, out: (
        add_link(t, "ln", "real", tarfile.SYMTYPE),
        add_file(t, "real/keep.txt", b"fine"),
        add_file(t, "ln/through.txt", b"through a link"),
    ),
    "directory, then a symlink over it": lambda t, out: (
        add_file(t, "sub/x.txt", b"fine"),
        add_link(t, "sub", ".", tarfile.SYMTYPE),
    ),
    "hardlink dot-dot": lambda t, out: add_link(t, "hl", "../outside/secret.txt", tarfile.LNKTYPE),
    "hardlink absolute": lambda t, out: add_link(t, "hl", str(out / "secret.txt"), tarfile.LNKTYPE),
    "hardlink to missing": lambda t, out: add_link(t, "hl", "nothing-here", tarfile.LNKTYPE),
    "character device": lambda t, out: add_special(t, "null", tarfile.CHRTYPE),
    "block device": lambda t, out: add_special(t, "disk", tarfile.BLKTYPE),
    "fifo": lambda t, out: add_special(t, "pipe", tarfile.FIFOTYPE),
}


@pytest.mark.parametrize("kind", sorted(MALICIOUS))
async def test_malicious_members_are_refused(arena: tuple[Path, Path], kind: str) -> None:
    dest, outside = arena
    base = dest.parent
    before = snapshot(base)
    archive = make_tar(lambda tar: MALICIOUS[kind](tar, outside))
    with pytest.raises(TransferError):
        await extract_tar_stream(chunked(archive, 100), str(dest))
    after = snapshot(base)
    # Nothing outside dest changed, and no symlink out of dest was left behind.
    assert {k: v for k, v in after.items() if not k.startswith("dest")} == {
        k: v for k, v in before.items() if not k.startswith("dest")
    }
    for entry in dest.rglob("*"):
        assert os.path.realpath(entry).startswith(str(dest) + os.sep), entry
    assert not Path(outside / "abs.txt").exists()


async def test_existing_symlink_in_dest_is_not_written_through(arena: tuple[Path, Path]) -> None:
    dest, outside = arena
    (dest / "evil").symlink_to(outside)
    archive = make_tar(lambda t: add_file(t, "evil/planted.txt", b"pwned"))
    with pytest.raises(TransferError, match="through the symlink"):
        await extract_tar_stream(chunked(archive), str(dest))
    assert sorted(p.name for p in outside.iterdir()) == ["secret.txt"]


async def test_hardlink_through_existing_symlink_is_refused(arena: tuple[Path, Path]) -> None:
    dest, outside = arena
    (dest / "evil").symlink_to(outside)
    archive = make_tar(lambda t: add_link(t, "hl", "evil/secret.txt", tarfile.LNKTYPE))
    with pytest.raises(TransferError, match="outside the destination"):
        await extract_tar_stream(chunked(archive), str(dest))
    assert not (dest / "hl").exists()


async def test_file_member_replaces_a_symlink_instead_of_following_it(
    arena: tuple[Path, Path],
) -> None:
    dest, outside = arena
    (dest / "lnk").symlink_to(outside / "secret.txt")
    await extract_tar_stream(chunked(make_tar(lambda t: add_file(t, "lnk", b"new"))), str(dest))
    assert (outside / "secret.txt").read_text() == "do not touch"
    assert not (dest / "lnk").is_symlink()
    assert (dest / "lnk").read_bytes() == b"new"


async def test_safe_links_inside_dest_are_kept(tmp_path: Path) -> None:
    def build(tar: tarfile.TarFile) -> None:
        add_file(tar, "lib/real.so", b"elf")
        add_link(tar, "bin/tool", "../lib/real.so", tarfile.SYMTYPE)
        add_link(tar, "lib/alias.so", "lib/real.so", tarfile.LNKTYPE)

    names = await extract_tar_stream(chunked(make_tar(build)), str(tmp_path / "o"))
    assert names == ["lib/real.so", "bin/tool", "lib/alias.so"]
    assert (tmp_path / "o/bin/tool").read_bytes() == b"elf"
    assert os.readlink(tmp_path / "o/bin/tool") == "../lib/real.so"
    assert (tmp_path / "o/lib/alias.so").stat().st_nlink == 2


# --------------------------------------------------------------------------- memory


async def test_50_mb_file_streams_in_bounded_memory(tmp_path: Path) -> None:
    source, dest = tmp_path / "source", tmp_path / "dest"
    source.mkdir()
    digest = hashlib.sha256()
    with open(source / "big.bin", "wb") as file:
        block = os.urandom(1024 * 1024)
        for i in range(50):
            piece = block[i:] + block[:i]
            digest.update(piece)
            file.write(piece)

    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        baseline, _ = tracemalloc.get_traced_memory()
        await extract_tar_stream(tar_stream(str(source)), str(dest))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - baseline < 8 * 1024 * 1024, f"peak grew by {(peak - baseline) / 2**20:.1f} MiB"

    copied = hashlib.sha256()
    with open(dest / "big.bin", "rb") as file:
        for piece in iter(lambda: file.read(1024 * 1024), b""):
            copied.update(piece)
    assert copied.hexdigest() == digest.hexdigest()


# --------------------------------------------------------------------------- listing


async def test_list_dir_dirs_first_then_by_name(tmp_path: Path) -> None:
    (tmp_path / "Zeta").mkdir()
    (tmp_path / "alpha").mkdir()
    (tmp_path / "b.txt").write_text("12345")
    (tmp_path / "A.txt").write_text("")
    (tmp_path / ".dot").write_text("")
    (tmp_path / "to_alpha").symlink_to("alpha")
    (tmp_path / "dangling").symlink_to("nowhere")
    entries = await list_dir(str(tmp_path))
    assert [e.name for e in entries] == [
        "alpha",
        "to_alpha",
        "Zeta",
        ".dot",
        "A.txt",
        "b.txt",
        "dangling",
    ]
    by_name = {e.name: e for e in entries}
    assert by_name["b.txt"] == DirEntry(
        name="b.txt",
        path=str(tmp_path / "b.txt"),
        is_dir=False,
        size=5,
        mtime=(tmp_path / "b.txt").stat().st_mtime,
    )
    assert by_name["to_alpha"].is_dir
    assert by_name["to_alpha"].is_symlink
    assert by_name["dangling"].is_symlink
    assert not by_name["dangling"].is_dir
    decoded = msgspec.json.decode(msgspec.json.encode(entries), type=list[DirEntry])
    assert decoded == entries


async def test_list_dir_errors(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(FileNotFoundError):
        await list_dir(str(tmp_path / "missing"))
    with pytest.raises(NotADirectoryError):
        await list_dir(str(tmp_path / "file"))


def test_transfer_error_is_a_server_error_and_still_a_value_error() -> None:
    from container_server.errors import ServerError

    assert issubclass(TransferError, ServerError)
    assert issubclass(TransferError, ValueError)


def test_package_reexports_the_old_module_names() -> None:
    import container_server.transfer as transfer
    from container_server.transfer import limits, listing, tar_in, tar_out

    assert transfer.TransferError is limits.TransferError
    assert transfer.DirEntry is listing.DirEntry
    assert transfer.extract_tar_stream is tar_in.extract_tar_stream
    assert transfer.tar_stream is tar_out.tar_stream
    assert transfer.list_dir is listing.list_dir
    assert (
        transfer.DEFAULT_MAX_MEMBERS,
        transfer.DEFAULT_MAX_EXPANSION_RATIO,
        transfer.EXPANSION_SLACK_BYTES,
    ) == (100_000, 200.0, 64 * 1024 * 1024)
    assert sorted(transfer.__all__) == sorted(
        [
            "DEFAULT_MAX_EXPANSION_RATIO",
            "DEFAULT_MAX_MEMBERS",
            "EXPANSION_SLACK_BYTES",
            "DirEntry",
            "TransferError",
            "extract_tar_stream",
            "list_dir",
            "tar_stream",
        ]
    )
