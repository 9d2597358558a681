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
an earlier member or already in ``dest``). Extraction never follows a
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
symlinks. Entries that cannot be read are left out and logged.

Listing (``list_dir``): directories first, then files, each group by
case-folded name.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import stat
import tarfile
import threading
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Final, cast

import anyio.from_thread
import anyio.to_thread
import msgspec

from container_server.files import sanitize_text

__all__ = ["DirEntry", "TransferError", "extract_tar_stream", "list_dir", "tar_stream"]

logger = logging.getLogger(__name__)

_COPY_BYTES: Final = 256 * 1024
#: Chunks in flight between the tar thread and the consumer of a download.
_PIPE_CHUNKS: Final = 4


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


class _PullReader:
    """A blocking file object (for a worker thread) over an async iterator of chunks.

    ``read(n)`` returns exactly ``n`` bytes until the end: tarfile sniffs the
    compression from the first bytes it reads.
    """

    def __init__(self, chunks: AsyncIterator[bytes]) -> None:
        self._chunks = chunks
        self._buffer = bytearray()
        self._eof = False
        self._position = 0

    async def _next_chunk(self) -> bytes:
        try:
            return await self._chunks.__anext__()
        except StopAsyncIteration:
            return b""

    def read(self, size: int = -1) -> bytes:
        while not self._eof and (size < 0 or len(self._buffer) < size):
            chunk = anyio.from_thread.run(self._next_chunk)
            if chunk:
                self._buffer += chunk
            else:
                self._eof = True
        if size < 0 or size >= len(self._buffer):
            data = bytes(self._buffer)
            self._buffer.clear()
        else:
            data = bytes(self._buffer[:size])
            del self._buffer[:size]
        self._position += len(data)
        return data

    def write(self, b: bytes, /) -> int:
        raise OSError("read-only stream")

    def tell(self) -> int:
        return self._position

    def seek(self, pos: int, /) -> int:
        raise OSError("stream is not seekable")

    def close(self) -> None:
        self._buffer.clear()


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

    def __init__(self, root: str) -> None:
        self.root = root
        self.extracted: list[str] = []
        self._checked_dirs: set[str] = {root}
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


def _extract_sync(reader: _PullReader, dest: str) -> list[str]:
    os.makedirs(dest, exist_ok=True)
    extractor = _Extractor(os.path.realpath(dest))
    try:
        with tarfile.open(fileobj=reader, mode="r|*", bufsize=_COPY_BYTES) as archive:
            for member in archive:
                extractor.add(archive, member)
        extractor.create_symlinks()
    except tarfile.TarError as exc:
        raise TransferError(f"not a valid tar stream: {exc}") from None
    finally:
        # Also after a refusal: what was extracted should not stay at mode 0700.
        extractor.apply_dir_modes()
    return extractor.extracted


async def extract_tar_stream(chunks: AsyncIterator[bytes], dest: str) -> list[str]:
    """Extract a tar stream (optionally gzip/bz2/xz compressed) into ``dest``.

    Returns the extracted paths relative to ``dest``, in archive order.
    Raises :class:`TransferError` for a stream that is not a tar archive or
    holds an unsafe member (see the module docstring); nothing is ever
    written outside ``dest``. Errors of ``chunks`` itself propagate unchanged.
    """
    return await anyio.to_thread.run_sync(_extract_sync, _PullReader(chunks), dest)


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
        archive.addfile(info, file)


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
