"""How build and bootstrap steps report their output lines to a caller."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable

__all__ = ["ProgressCallback", "report"]

#: Called with each output line (no trailing newline). May be a plain function or a
#: coroutine function; a coroutine is awaited before the next line is read, so a slow
#: callback slows the build down rather than piling lines up in memory.
ProgressCallback = Callable[[str], "Awaitable[None] | None"]


async def report(on_progress: ProgressCallback | None, line: str) -> None:
    """Hand ``line`` to ``on_progress`` when there is one."""
    if on_progress is None:
        return
    result = on_progress(line)
    if inspect.isawaitable(result):
        await result
