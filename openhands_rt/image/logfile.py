"""The raw build log: every output line of one build, in a file under the cache directory.

Build progress events carry no tool output (see
:mod:`openhands_rt.image.build_progress`); the lines go here instead, to
``<cache>/build-logs/<UTC time>-<base image>-<random>.log`` (the cache
directory is ``$XDG_CACHE_HOME/openhands-rt`` or ``~/.cache/openhands-rt``, see
:func:`openhands_rt.image.cache.cache_dir`). The file is made on the first line,
so a call that builds nothing and prints nothing leaves no file; the newest
:data:`KEEP_LOGS` logs are kept.
"""

from __future__ import annotations

import collections
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio

from openhands_rt.image.cache import cache_dir

__all__ = ["KEEP_LOGS", "BuildLog", "log_file_name", "open_build_log"]

logger = logging.getLogger(__name__)

#: How many build logs stay in the directory; older ones go when a new one is made.
KEEP_LOGS = 50
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def log_file_name(base_image: str, *, utc: time.struct_time, token: str) -> str:
    """``20250102T030405Z-openhands-rt_base_bookworm-<token>.log`` (pure): sorts by time."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", utc)
    base = _UNSAFE.sub("_", base_image).strip("_")[-60:] or "image"
    return f"{stamp}-{base}-{token}.log"


class BuildLog:
    """Appends lines to ``path`` (made on the first line); keeps the last ``tail_lines``."""

    def __init__(self, path: Path, *, tail_lines: int = 30) -> None:
        self.path = path
        self.tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self._file: anyio.AsyncFile[str] | None = None
        self._closed = False

    @property
    def opened(self) -> bool:
        """Whether the file was made (a line was written)."""
        return self._file is not None

    async def write(self, line: str) -> None:
        """Append ``line`` (no trailing newline); a no-op once closed."""
        if self._closed:
            return
        if self._file is None:
            await anyio.to_thread.run_sync(_prepare_directory, self.path.parent)
            # Line buffered: a build can be followed with `tail -f`.
            self._file = await anyio.open_file(self.path, "a", encoding="utf-8", buffering=1)
        self.tail.append(line)
        await self._file.write(line + "\n")

    async def aclose(self) -> None:
        self._closed = True
        if self._file is not None:
            with anyio.CancelScope(shield=True):
                await self._file.aclose()


@asynccontextmanager
async def open_build_log(base_image: str) -> AsyncIterator[BuildLog]:
    """A :class:`BuildLog` for a build on ``base_image``, closed on exit."""
    name = log_file_name(base_image, utc=time.gmtime(), token=secrets.token_hex(3))
    log = BuildLog(cache_dir("build-logs", name))
    try:
        yield log
    finally:
        await log.aclose()


def _prepare_directory(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    logs = sorted(directory.glob("*.log"))
    for old in logs[: max(0, len(logs) - (KEEP_LOGS - 1))]:
        try:
            old.unlink(missing_ok=True)
        except OSError as exc:
            logger.debug("cannot remove old build log %s: %s", old, exc)
