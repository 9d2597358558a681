"""Streamed tar upload and download, and directory listings.

Pure of aiohttp: uploads arrive as an async iterator of byte chunks, downloads
leave as one. Nothing holds a whole file (or archive) in memory: a worker
thread runs :mod:`tarfile` in stream mode and exchanges bounded chunks with
the event loop.

Upload safety (``extract_tar_stream``). A member is refused, with
:class:`TransferError`, when its name is absolute or has a ``..`` component;
when it is a device, FIFO, sparse file or any other kind than a regular file,
directory, symlink or hard link; when a symlink's target is absolute or
resolves outside ``dest``; when a hard link's source is not a regular file
inside ``dest``; or when it would be written through a symlink (one planted by
an earlier member or already in ``dest``). The whole archive is refused when it
has more than ``max_members`` members or, once past the first
``EXPANSION_SLACK_BYTES``, expands more than ``max_expansion_ratio`` times its
compressed size (a compression bomb; the member being written is removed).
``dest`` is only created once a tar header has been read. Extraction never follows a
symlink: parents are checked component by component, files are created with
``O_EXCL | O_NOFOLLOW`` after removing what was there, and symlinks are only
created after every other member, then checked again as a set (a link planted
later could change where an earlier one resolves); if any resolves outside
``dest`` they are all removed. Members before a refused one stay extracted
(inside ``dest``). Modes are kept without setuid/setgid/sticky bits; owners
are not (files belong to the server's user).

Download layout (``tar_stream``): a directory's *contents* (names relative to
it, like ``tar -C DIR .`` without the ``./``), so that downloading P and
uploading the result to Q makes Q a copy of P; a single file under its base
name. A top-level symlink is followed; symlinks below it are stored as
symlinks. Entries that cannot be read are left out and logged. A file whose
content is shorter or longer than its size said (``/proc``, ``/sys``, a file
written meanwhile) is padded with NULs or cut to that size, as GNU tar does.

Listing (``list_dir``): directories first, then files, each group by
case-folded name.
"""

from __future__ import annotations

import asyncio
import bz2
import collections
import contextlib
import logging
import lzma
import os
import stat
import tarfile
import threading
import zlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import IO, Final, cast

import anyio.from_thread
import anyio.to_thread
import msgspec

from container_server.files import sanitize_text

__all__ = [
    "DEFAULT_MAX_EXPANSION_RATIO",
    "DEFAULT_MAX_MEMBERS",
    "EXPANSION_SLACK_BYTES",
    "DirEntry",
    "TransferError",
    "extract_tar_stream",
    "list_dir",
    "tar_stream",
]

logger = logging.getLogger(__name__)

_COPY_BYTES: Final = 256 * 1024
#: Chunks in flight between the tar thread and the consumer of a download.
_PIPE_CHUNKS: Final = 4
#: Members an upload may have (each is an inode; the reply lists them all).
DEFAULT_MAX_MEMBERS: Final = 100_000
#: Decompressed bytes per compressed byte an upload may reach. Source trees compress
#: 3-20 times; a gzip bomb reaches ~1000, bzip2 and xz bombs far more.
DEFAULT_MAX_EXPANSION_RATIO: Final = 200.0
#: Output below this size is never refused for its ratio (small archives of zeros are fine).
EXPANSION_SLACK_BYTES: Final = 64 * 1024 * 1024


class TransferError(ValueError):
    """An upload was refused: not a tar stream, or a member that is not safe to extract."""


class DirEntry(msgspec.Struct, frozen=True):
    """One entry of a directory listing; ``size`` in bytes, ``mtime`` in seconds since the epoch.

    ``is_dir`` and ``size`` describe what a symlink points to (the link itself
    when it dangles).
    """

    name: str
    path: str
    is_dir: bool
    size: int
    mtime: float
    is_symlink: bool = False


# --------------------------------------------------------------------------- upload


class _Inflater:
    """One gzip, bzip2 or xz stream, inflated at most ``max_length`` bytes per call.

    zlib hands back the input it did not use (``unconsumed_tail``); bz2 and lzma keep it
    and say ``needs_input``. Output stopped at ``max_length`` may have more behind it, so a
    call that filled it is followed by one without new input.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._zlib = zlib.decompressobj(wbits=31) if kind == "gzip" else None
        self._other: bz2.BZ2Decompressor | lzma.LZMADecompressor | None = (
            bz2.BZ2Decompressor()
            if kind == "bzip2"
            else lzma.LZMADecompressor()
            if kind == "xz"
            else None
        )
        self._filled = False

    @property
    def eof(self) -> bool:
        if self._zlib is not None:
            return self._zlib.eof
        assert self._other is not None
        return self._other.eof

    @property
    def unused_data(self) -> bytes:
        if self._zlib is not None:
            return self._zlib.unused_data
        assert self._other is not None
        return self._other.unused_data

    @property
    def needs_input(self) -> bool:
        if self._filled:
            return False
        if self._zlib is not None:
            return not self._zlib.unconsumed_tail
        assert self._other is not None
        return self._other.needs_input

    def inflate(self, data: bytes, max_length: int) -> bytes:
        try:
            if self._zlib is not None:
                out = self._zlib.decompress(self._zlib.unconsumed_tail + data, max_length)
            else:
                assert self._other is not None
                out = self._other.decompress(data, max_length)
        except (zlib.error, lzma.LZMAError, OSError, EOFError) as exc:
            raise TransferError(f"not a valid {self.kind} stream: {exc}") from None
        self._filled = len(out) >= max_length
        return out


def _compression(head: bytes) -> str | None:
    """The compression of a stream starting with ``head`` (>= 10 bytes), as tarfile sniffs it."""
    if head.startswith(b"\x1f\x8b\x08"):
        return "gzip"
    if head[:3] == b"BZh" and head[4:10] == b"1AY&SY":
        return "bzip2"
    if head.startswith((b"\x5d\x00\x00\x80", b"\xfd7zXZ")):
        return "xz"
    return None


_SNIFF_BYTES: Final = 10


class _PullReader:
    """A blocking file object (for a worker thread) over an async iterator of chunks.

    gzip, bzip2 and xz input (recognised by its magic number, as tarfile does) is inflated
    here, never more than asked for: tarfile's own stream mode inflates a whole input
    block at once, and a few KiB of bzip2 can hold gigabytes. Output past
    ``EXPANSION_SLACK_BYTES`` that exceeds ``max_ratio`` times the input read so far is
    refused as a compression bomb. ``read(n)`` returns exactly ``n`` bytes until the end.
    """

    def __init__(self, chunks: AsyncIterator[bytes], *, max_ratio: float) -> None:
        self._chunks = chunks
        self._max_ratio = max_ratio
        self._raw = bytearray()  # input not inflated yet
        self._out = bytearray()  # output not read yet
        self._raw_eof = False
        self._done = False
        self._sniffed = False
        self._inflater: _Inflater | None = None
        self._compressed = 0  # input bytes received
        self._position = 0  # output bytes read

    async def _next_chunk(self) -> bytes:
        try:
            return await self._chunks.__anext__()
        except StopAsyncIteration:
            return b""

    def _pull(self) -> bool:
        """Append the next input chunk to ``_raw``; False at the end of the input."""
        if self._raw_eof:
            return False
        chunk = anyio.from_thread.run(self._next_chunk)
        if not chunk:
            self._raw_eof = True
            return False
        self._raw += chunk
        self._compressed += len(chunk)
        return True

    def _start(self, *, first: bool) -> None:
        """Look at what comes next: plain tar, a compressed stream, or (after one) the end."""
        while len(self._raw) < _SNIFF_BYTES and self._pull():
            pass
        kind = _compression(bytes(self._raw[:_SNIFF_BYTES]))
        if first:
            self._inflater = None if kind is None else _Inflater(kind)
        elif kind is not None and self._inflater is not None and kind == self._inflater.kind:
            self._inflater = _Inflater(kind)  # concatenated streams, as `cat a.gz b.gz` makes
        else:
            self._done = True  # what follows a compressed stream is not part of it
        self._sniffed = True

    def _fill(self, want: int) -> None:
        """Add up to ``want`` bytes to ``_out``, or set ``_done``."""
        if not self._sniffed:
            self._start(first=True)
            if self._done:
                return
        inflater = self._inflater
        if inflater is None:  # plain tar
            if self._raw or self._pull():
                self._out += self._raw
                self._raw.clear()
            else:
                self._done = True
            return
        if inflater.eof:
            self._raw[:0] = inflater.unused_data
            self._start(first=False)
            return
        data = b""
        if inflater.needs_input:
            if not self._raw and not self._pull():
                raise TransferError(f"the {inflater.kind} stream ends early (a truncated upload?)")
            data = bytes(self._raw)
            self._raw.clear()
        self._out += inflater.inflate(data, want)

    def read(self, size: int = -1) -> bytes:
        while not self._done and (size < 0 or len(self._out) < size):
            self._fill(_COPY_BYTES if size < 0 else max(size - len(self._out), 1))
        if size < 0 or size >= len(self._out):
            data = bytes(self._out)
            self._out.clear()
        else:
            data = bytes(self._out[:size])
            del self._out[:size]
        self._position += len(data)
        if (
            self._position > EXPANSION_SLACK_BYTES
            and self._position > self._max_ratio * self._compressed
        ):
            raise TransferError(
                f"refused: {self._compressed} bytes of upload expanded to {self._position} "
                f"bytes so far, over {self._max_ratio:g} times (a compression bomb?); "
                "send it uncompressed"
            )
        return data

    def write(self, b: bytes, /) -> int:
        raise OSError("read-only stream")

    def tell(self) -> int:
        return self._position

    def seek(self, pos: int, /) -> int:
        raise OSError("stream is not seekable")

    def close(self) -> None:
        self._raw.clear()
        self._out.clear()


def _within(root: str, path: str) -> bool:
    return root == "/" or path == root or path.startswith(root + "/")


def _member_path(name: str) -> str:
    """The member's path relative to the destination ("" for the destination itself)."""
    if "\x00" in name:
        raise TransferError(f"refused member {name!r}: NUL byte in its name")
    if name.startswith("/"):
        raise TransferError(f"refused member {name!r}: absolute path")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise TransferError(f"refused member {name!r}: '..' in its path")
    return "/".join(parts)


def _kind(member: tarfile.TarInfo) -> str:
    if member.ischr():
        return "character device"
    if member.isblk():
        return "block device"
    if member.isfifo():
        return "FIFO"
    if member.issparse():
        return "sparse file"
    return f"type {member.type!r}"


class _Extractor:
    """Extracts members one by one under ``root`` (a real, absolute directory)."""

    def __init__(self, root: str, *, max_members: int) -> None:
        self.root = root
        self.max_members = max_members
        self.extracted: list[str] = []
        self._checked_dirs: set[str] = {root}
        self._members = 0
        self._symlinks: list[tuple[str, str, str]] = []
        # Directories this extraction created -> (final mode, mtime), applied at the end.
        self._new_dirs: dict[str, tuple[int, float]] = {}

    def _path(self, relative: str) -> str:
        return f"{self.root.rstrip('/')}/{relative}"

    def _ensure_parents(self, relative: str, member: str, *, trust_cache: bool = True) -> None:
        """Make the parent directories of ``relative``, refusing to pass through a symlink."""
        parts = relative.split("/")[:-1]
        for depth in range(1, len(parts) + 1):
            path = self._path("/".join(parts[:depth]))
            if trust_cache and path in self._checked_dirs:
                continue
            self._ensure_dir(path, member)

    def _ensure_dir(
        self, path: str, member: str, *, mode: int | None = None, mtime: float = 0.0
    ) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            # Created writable; the final mode comes at the end (a read-only directory
            # could not be filled).
            os.mkdir(path, 0o700)
            self._new_dirs[path] = (0o755 if mode is None else mode, mtime)
        else:
            if stat.S_ISLNK(st.st_mode):
                raise TransferError(
                    f"refused member {member!r}: it would be written through the symlink "
                    f"{os.path.relpath(path, self.root)!r}"
                )
            if not stat.S_ISDIR(st.st_mode):
                raise TransferError(
                    f"refused member {member!r}: {os.path.relpath(path, self.root)!r} exists "
                    "and is not a directory"
                )
            if mode is not None and path in self._new_dirs:
                self._new_dirs[path] = (mode, mtime)
        self._checked_dirs.add(path)

    def _clear(self, path: str, member: str) -> None:
        """Remove a non-directory at ``path`` so that the member replaces it (never follows it)."""
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            raise TransferError(f"refused member {member!r}: a directory is in the way")
        os.unlink(path)

    def add(self, archive: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        self._members += 1
        if self._members > self.max_members:
            raise TransferError(
                f"refused member {member.name!r}: the archive has more than "
                f"{self.max_members} members"
            )
        relative = _member_path(member.name)
        if member.isdir():
            if relative:
                self._ensure_parents(relative, member.name)
                self._ensure_dir(
                    self._path(relative),
                    member.name,
                    mode=member.mode & 0o777,
                    mtime=float(member.mtime),
                )
                self.extracted.append(relative)
            return
        if not relative:
            raise TransferError(f"refused member {member.name!r}: empty path")
        if member.issparse() or not (member.isreg() or member.issym() or member.islnk()):
            raise TransferError(
                f"refused member {member.name!r}: {_kind(member)} members are not allowed"
            )
        target = self._path(relative)
        if member.issym():
            self._check_symlink(member, relative)
            self._symlinks.append((relative, member.linkname, member.name))
            self.extracted.append(relative)
            return
        if member.islnk():
            source = self._hardlink_source(member)
            self._ensure_parents(relative, member.name)
            self._clear(target, member.name)
            os.link(source, target, follow_symlinks=False)
            self.extracted.append(relative)
            return
        self._ensure_parents(relative, member.name)
        self._clear(target, member.name)
        self._write_file(archive, member, target)
        self.extracted.append(relative)

    def _write_file(self, archive: tarfile.TarFile, member: tarfile.TarInfo, target: str) -> None:
        source = archive.extractfile(member)
        if source is None:  # pragma: no cover - isreg() members always have data
            raise TransferError(f"refused member {member.name!r}: no data")
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(target, flags, 0o600)
        try:
            with source:
                while True:
                    block = source.read(_COPY_BYTES)
                    if not block:
                        break
                    view = memoryview(block)
                    while view:
                        view = view[os.write(fd, view) :]
            os.fchmod(fd, member.mode & 0o777)
            os.utime(fd, (member.mtime, member.mtime))
        except BaseException:
            # A member cut short (a bomb refused, a truncated stream) is not left half-written.
            with contextlib.suppress(OSError):
                os.unlink(target)
            raise
        finally:
            os.close(fd)

    def _check_symlink(self, member: tarfile.TarInfo, relative: str) -> None:
        link = member.linkname
        if not link or "\x00" in link:
            raise TransferError(f"refused symlink {member.name!r}: empty or invalid target")
        if os.path.isabs(link):
            raise TransferError(f"refused symlink {member.name!r}: absolute target {link!r}")
        parent = os.path.dirname(self._path(relative))
        if not _within(self.root, os.path.normpath(os.path.join(parent, link))):
            raise TransferError(
                f"refused symlink {member.name!r}: target {link!r} is outside the destination"
            )

    def _hardlink_source(self, member: tarfile.TarInfo) -> str:
        source_relative = _member_path(member.linkname)
        real = os.path.realpath(self._path(source_relative))
        if not source_relative or not _within(self.root, real):
            raise TransferError(
                f"refused hard link {member.name!r}: source {member.linkname!r} is outside the "
                "destination"
            )
        try:
            st = os.lstat(real)
        except FileNotFoundError:
            raise TransferError(
                f"refused hard link {member.name!r}: source {member.linkname!r} does not exist"
            ) from None
        if not stat.S_ISREG(st.st_mode):
            raise TransferError(
                f"refused hard link {member.name!r}: source {member.linkname!r} is not a regular "
                "file"
            )
        return real

    def create_symlinks(self) -> None:
        """Create the deferred symlinks and check them as a set; remove them all if one escapes."""
        created: list[str] = []
        try:
            for relative, link, name in self._symlinks:
                self._ensure_parents(relative, name, trust_cache=False)
                target = self._path(relative)
                self._clear(target, name)
                os.symlink(link, target)
                created.append(target)
            for target in created:
                if not _within(self.root, os.path.realpath(target)):
                    raise TransferError(
                        f"refused symlink {os.path.relpath(target, self.root)!r}: it resolves "
                        "outside the destination"
                    )
        except BaseException:
            for target in created:
                try:
                    os.unlink(target)
                except OSError:
                    logger.warning("could not remove the refused symlink %s", target)
            raise

    def apply_dir_modes(self) -> None:
        """Give the directories this extraction created their final modes and mtimes."""
        for path, (mode, mtime) in reversed(self._new_dirs.items()):
            os.chmod(path, mode)
            if mtime:
                os.utime(path, (mtime, mtime))


def _extract_sync(reader: _PullReader, dest: str, max_members: int) -> list[str]:
    extractor: _Extractor | None = None
    try:
        # tarfile.open reads the first header: a body that is no tar creates nothing.
        with tarfile.open(fileobj=reader, mode="r|", bufsize=_COPY_BYTES) as archive:
            os.makedirs(dest, exist_ok=True)
            extractor = _Extractor(os.path.realpath(dest), max_members=max_members)
            for member in archive:
                extractor.add(archive, member)
        extractor.create_symlinks()
    except tarfile.TarError as exc:
        raise TransferError(f"not a valid tar stream: {exc}") from None
    finally:
        # Also after a refusal: what was extracted should not stay at mode 0700.
        if extractor is not None:
            extractor.apply_dir_modes()
    return extractor.extracted


async def extract_tar_stream(
    chunks: AsyncIterator[bytes],
    dest: str,
    *,
    max_members: int = DEFAULT_MAX_MEMBERS,
    max_expansion_ratio: float = DEFAULT_MAX_EXPANSION_RATIO,
) -> list[str]:
    """Extract a tar stream (optionally gzip/bz2/xz compressed) into ``dest``.

    Returns the extracted paths relative to ``dest``, in archive order.
    Raises :class:`TransferError` for a stream that is not a tar archive, holds
    an unsafe member, has more than ``max_members`` members or expands more
    than ``max_expansion_ratio`` times (see the module docstring); nothing is
    ever written outside ``dest``. Errors of ``chunks`` itself propagate unchanged.
    """
    reader = _PullReader(chunks, max_ratio=max_expansion_ratio)
    return await anyio.to_thread.run_sync(_extract_sync, reader, dest, max_members)


# --------------------------------------------------------------------------- download


class _PipeClosed(Exception):
    """The consumer of a download went away."""


_END: Final = object()


class _ChunkPipe:
    """Bounded hand-over of chunks from one producer thread to the event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, max_chunks: int) -> None:
        self._loop = loop
        self._credit = threading.Semaphore(max_chunks)
        self._items: collections.deque[object] = collections.deque()
        self._ready = asyncio.Event()
        self._closed = False

    # producer thread
    def put(self, chunk: bytes) -> None:
        # Checked before and after waiting: once closed, tarfile's own cleanup writes
        # must fail at once rather than wait for credit that never comes.
        if self._closed:
            raise _PipeClosed
        self._credit.acquire()
        if self._closed:
            raise _PipeClosed
        self._loop.call_soon_threadsafe(self._push, chunk)

    def finish(self, error: BaseException | None) -> None:
        # A closed loop (RuntimeError) means nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._push, _END if error is None else error)

    # event loop
    def _push(self, item: object) -> None:
        self._items.append(item)
        self._ready.set()

    async def get(self) -> object:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        item = self._items.popleft()
        if isinstance(item, bytes):
            self._credit.release()
        return item

    def close(self) -> None:
        self._closed = True
        self._credit.release()  # wakes a producer blocked for credit; it sees _closed


class _ChunkWriter:
    """The file object tarfile writes to: cuts the stream into ``chunk_size`` chunks."""

    def __init__(self, pipe: _ChunkPipe, chunk_size: int) -> None:
        self._pipe = pipe
        self._chunk_size = chunk_size
        self._buffer = bytearray()
        self._position = 0

    def write(self, b: bytes, /) -> int:
        self._buffer += b
        self._position += len(b)
        while len(self._buffer) >= self._chunk_size:
            chunk = bytes(self._buffer[: self._chunk_size])
            del self._buffer[: self._chunk_size]
            self._pipe.put(chunk)
        return len(b)

    def flush_rest(self) -> None:
        if self._buffer:
            self._pipe.put(bytes(self._buffer))
            self._buffer.clear()

    def read(self, size: int, /) -> bytes:
        raise OSError("write-only stream")

    def tell(self) -> int:
        return self._position

    def seek(self, pos: int, /) -> int:
        raise OSError("stream is not seekable")

    def close(self) -> None:
        pass


class _ExactSize:
    """A file's data cut or NUL-padded to the size its tar header announced.

    tarfile needs exactly that many bytes; files in /proc and /sys announce a size they do
    not have, and any file may shrink or grow while it is read.
    """

    def __init__(self, file: IO[bytes], size: int, path: str) -> None:
        self._file = file
        self._left = size
        self._path = path
        self._ended = False

    def read(self, size: int = -1, /) -> bytes:
        want = self._left if size < 0 else min(size, self._left)
        parts: list[bytes] = []
        got = 0
        while got < want and not self._ended:
            data = self._file.read(want - got)
            if not data:
                self._ended = True
                logger.warning(
                    "download: %s ended %d bytes short of its size; padded with NULs",
                    self._path,
                    self._left - got,
                )
                break
            parts.append(data)
            got += len(data)
        parts.append(bytes(want - got))
        self._left -= want
        return b"".join(parts)


def _add_entry(archive: tarfile.TarFile, path: str, arcname: str) -> None:
    try:
        # None for sockets, whatever typeshed says.
        info = cast("tarfile.TarInfo | None", archive.gettarinfo(path, arcname))
    except OSError as exc:
        logger.warning("download: skipped %s: %s", path, exc)
        return
    if info is None:  # sockets and other kinds tar cannot hold
        logger.warning("download: skipped %s: not a file tar can store", path)
        return
    if not info.isreg():
        archive.addfile(info)
        return
    try:
        file = open(path, "rb")  # noqa: SIM115 - closed right below, after a possible skip
    except OSError as exc:
        logger.warning("download: skipped %s: %s", path, exc)
        return
    with file:
        archive.addfile(info, cast("IO[bytes]", _ExactSize(file, info.size, path)))


def _log_walk_error(exc: OSError) -> None:
    logger.warning("download: skipped %s: %s", exc.filename, exc)


def _write_tar(path: str, pipe: _ChunkPipe, chunk_size: int) -> None:
    writer = _ChunkWriter(pipe, chunk_size)
    try:
        root = os.path.realpath(path)
        st = os.stat(root)
        with tarfile.open(
            fileobj=writer, mode="w|", format=tarfile.PAX_FORMAT, bufsize=chunk_size
        ) as archive:
            if stat.S_ISDIR(st.st_mode):
                for directory, dirs, files in os.walk(root, onerror=_log_walk_error):
                    dirs.sort()
                    relative = os.path.relpath(directory, root)
                    for name in [*dirs, *sorted(files)]:
                        arcname = name if relative == "." else f"{relative}/{name}"
                        _add_entry(archive, os.path.join(directory, name), arcname)
            else:
                _add_entry(archive, root, os.path.basename(os.path.normpath(path)))
        writer.flush_rest()
    except _PipeClosed:
        return
    except BaseException as exc:
        pipe.finish(exc)
        return
    pipe.finish(None)


async def tar_stream(path: str, *, chunk_size: int = 64 * 1024) -> AsyncGenerator[bytes, None]:
    """Yield a tar archive of ``path`` (a file or a directory) in chunks of ``chunk_size`` bytes.

    At most a few chunks are buffered: the archive is produced by a worker
    thread only as fast as it is consumed. Closing the generator early stops
    the thread. A missing ``path`` raises :class:`FileNotFoundError` on the
    first iteration.
    """
    loop = asyncio.get_running_loop()
    pipe = _ChunkPipe(loop, _PIPE_CHUNKS)
    producer = loop.run_in_executor(None, _write_tar, path, pipe, chunk_size)
    try:
        while True:
            item = await pipe.get()
            if item is _END:
                break
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, bytes)
            yield item
    finally:
        pipe.close()
        await producer


# --------------------------------------------------------------------------- listing


def _list_dir_sync(path: str) -> list[DirEntry]:
    entries: list[DirEntry] = []
    with os.scandir(path) as scan:
        for entry in scan:
            try:
                is_symlink = entry.is_symlink()
                try:
                    st = entry.stat()
                except OSError:
                    st = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # removed while listing
            entries.append(
                DirEntry(
                    name=sanitize_text(entry.name),
                    path=sanitize_text(entry.path),
                    is_dir=stat.S_ISDIR(st.st_mode),
                    size=st.st_size,
                    mtime=st.st_mtime,
                    is_symlink=is_symlink,
                )
            )
    entries.sort(key=lambda e: (not e.is_dir, e.name.casefold(), e.name))
    return entries


async def list_dir(path: str) -> list[DirEntry]:
    """The entries of directory ``path``: directories first, then by case-folded name.

    Raises :class:`FileNotFoundError`, :class:`NotADirectoryError` or
    :class:`PermissionError` as :func:`os.scandir` does.
    """
    return await anyio.to_thread.run_sync(_list_dir_sync, path)
