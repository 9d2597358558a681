"""Receiving an upload: a tar stream extracted safely into a directory.

Pure of aiohttp: the upload arrives as an async iterator of byte chunks, and
nothing holds a whole file (or archive) in memory: a worker thread runs
:mod:`tarfile` in stream mode over a :class:`PullReader`, which pulls bounded
chunks from the event loop.

A member is refused, with :class:`TransferError`, when its name is refused
(see :mod:`container_server.transfer.limits`); when it is a device, FIFO,
sparse file or any other kind than a regular file, directory, symlink or hard
link; when a symlink's target is absolute or resolves outside ``dest``; when a
hard link's source is not a regular file inside ``dest``; or when it would be
written through a symlink (one planted by an earlier member or already in
``dest``). The whole archive is refused past the member and expansion limits
(the member being written is removed). ``dest`` is only created once a tar
header has been read. Extraction never follows a symlink: parents are checked
component by component, files are created with ``O_EXCL | O_NOFOLLOW`` after
removing what was there, and symlinks are only created after every other
member, then checked again as a set (a link planted later could change where
an earlier one resolves); if any resolves outside ``dest`` they are all
removed. Members before a refused one stay extracted (inside ``dest``). Modes
are kept without setuid/setgid/sticky bits; owners are not (files belong to
the server's user).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import tarfile
from collections.abc import AsyncIterator

import anyio.to_thread

from container_server.transfer.inflate import PullReader
from container_server.transfer.limits import (
    COPY_BYTES,
    DEFAULT_MAX_EXPANSION_RATIO,
    DEFAULT_MAX_MEMBERS,
    TransferError,
    member_kind,
    member_path,
    within,
)

__all__ = ["extract_tar_stream"]

logger = logging.getLogger(__name__)


class Extractor:
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
        relative = member_path(member.name)
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
                f"refused member {member.name!r}: {member_kind(member)} members are not allowed"
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
                    block = source.read(COPY_BYTES)
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
        if not within(self.root, os.path.normpath(os.path.join(parent, link))):
            raise TransferError(
                f"refused symlink {member.name!r}: target {link!r} is outside the destination"
            )

    def _hardlink_source(self, member: tarfile.TarInfo) -> str:
        source_relative = member_path(member.linkname)
        real = os.path.realpath(self._path(source_relative))
        if not source_relative or not within(self.root, real):
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
                if not within(self.root, os.path.realpath(target)):
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


def _extract_sync(reader: PullReader, dest: str, max_members: int) -> list[str]:
    extractor: Extractor | None = None
    try:
        # tarfile.open reads the first header: a body that is no tar creates nothing.
        with tarfile.open(fileobj=reader, mode="r|", bufsize=COPY_BYTES) as archive:
            os.makedirs(dest, exist_ok=True)
            extractor = Extractor(os.path.realpath(dest), max_members=max_members)
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
    reader = PullReader(chunks, max_ratio=max_expansion_ratio)
    return await anyio.to_thread.run_sync(_extract_sync, reader, dest, max_members)
