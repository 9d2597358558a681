"""Removing runtime bundles nobody needs: older source versions, interrupted makes.

Each source version (and plugin set) gets a bundle of its own, about 90 MB,
so they pile up in the cache as the source changes. :func:`stale_bundles`
names those that may go: every bundle directory under the root except the
ones in ``keep`` (the current version's) and the ones a container mounts
(``in_use``, from the engine: a kept-alive sandbox of an older version still
needs its bundle), plus temporary directories a maker left behind when it
died. A directory whose maker holds its lock right now is never named.
Blocking (file system): call it from a thread in async code.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
from collections.abc import Collection, Iterator
from pathlib import Path

from openhands_rt.bundle.layout import MANIFEST

__all__ = ["remove_bundles", "stale_bundles"]

_TEMPORARY = ".tmp-"


@contextlib.contextmanager
def _unless_making(root: Path, key: str) -> Iterator[bool]:
    """True (holding its lock) when no maker works on bundle ``key`` now."""
    lock_path = root / f"{key}.lock"
    if not lock_path.exists():
        yield True
        return
    with open(lock_path, "a+b") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK):
                raise
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def stale_bundles(
    root: Path, *, keep: Collection[Path] = (), in_use: Collection[str] = ()
) -> list[Path]:
    """Bundle directories under ``root`` that may be removed (see the module docstring).

    ``keep``: bundles to keep whatever happens; ``in_use``: host paths that
    containers mount (a bundle is in use when one of them is it, or is inside it).
    """
    if not root.is_dir():
        return []
    kept = {os.path.realpath(p) for p in keep}
    mounted = {os.path.realpath(p) for p in in_use}
    stale = []
    for entry in sorted(root.iterdir()):
        if not entry.is_dir() or entry.is_symlink():
            continue
        real = os.path.realpath(entry)
        if real in kept or any(m == real or m.startswith(real + os.sep) for m in mounted):
            continue
        temporary = _TEMPORARY in entry.name
        if not temporary and not (entry / MANIFEST).is_file():
            continue  # not ours, or not a bundle: leave it
        stale.append(entry)
    return stale


def remove_bundles(root: Path, bundles: Collection[Path]) -> list[Path]:
    """Remove ``bundles`` (from :func:`stale_bundles`), each only while no maker holds
    its lock, with its lock file; the ones removed."""
    removed = []
    for path in bundles:
        key = path.name.split(_TEMPORARY)[0]
        with _unless_making(root, key) as free:
            if not free:
                continue
            shutil.rmtree(path, ignore_errors=True)
            if path.exists():
                continue
            removed.append(path)
            if _TEMPORARY not in path.name and not (root / key).exists():
                with contextlib.suppress(FileNotFoundError):
                    (root / f"{key}.lock").unlink()
    return removed
