"""How build and bootstrap steps report their output lines to a caller."""

from __future__ import annotations

import asyncio
import collections
import inspect
import logging
from collections.abc import Awaitable, Callable, Mapping

__all__ = ["ProgressCallback", "report", "run_reporting"]

logger = logging.getLogger(__name__)

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


async def run_reporting(
    argv: list[str],
    *,
    label: str,
    on_progress: ProgressCallback | None,
    env: Mapping[str, str] | None = None,
    tail_lines: int = 30,
) -> tuple[int, list[str]]:
    """Run ``argv``; report each non-empty output line; return (exit code, last lines).

    stdout and stderr are merged. The process is killed if the caller is cancelled.
    """
    logger.info("running %s", " ".join(argv))
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=dict(env) if env is not None else None,
    )
    tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
    try:
        assert process.stdout is not None
        async for raw in process.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                tail.append(line)
                logger.debug("%s: %s", label, line)
                await report(on_progress, line)
        returncode = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return returncode, list(tail)
