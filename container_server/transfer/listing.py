"""Directory listings: directories first, then files, each group by case-folded name."""

from __future__ import annotations

import os
import stat

import anyio.to_thread
import msgspec

from container_server.files import sanitize_text

__all__ = ["DirEntry", "list_dir"]


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
