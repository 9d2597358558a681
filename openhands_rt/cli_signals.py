"""How the command line ends: every way a user stops it removes what it made.

:func:`until_stopped` runs a command's coroutine with SIGINT (Ctrl-C),
SIGTERM (``kill``, ``timeout``) and SIGHUP (the terminal closed) turned into a
cancellation of that coroutine, so that its ``async with`` blocks close their
runtimes (removing the sandbox) before the process exits with 128 + the
signal's number. An interactive command that gives Ctrl-C a meaning of its own
(the shell interrupts the sandbox's command) takes SIGINT over for a while with
:func:`intercept_sigint`.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

__all__ = ["STOP_SIGNALS", "intercept_sigint", "until_stopped"]

#: Ending the CLI with one of these removes what it made, then exits with 128 + the signal.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

# The innermost callback of intercept_sigint(); the event loop is single-threaded.
_sigint_callbacks: list[Callable[[], None]] = []


async def until_stopped(work: Coroutine[Any, Any, int]) -> int:
    """Run ``work``; a stop signal cancels it. Returns its exit code, or 128 + the signal.

    Signals after the first are ignored: the cleanup the first one started must
    finish (a sandbox left behind by SIGKILL is what ``openhands-rt gc`` is for).
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    received: list[int] = []

    def stop(signum: int) -> None:
        if signum == signal.SIGINT and _sigint_callbacks and not received:
            _sigint_callbacks[-1]()
        elif not received:
            received.append(signum)
            task.cancel()

    for signum in STOP_SIGNALS:
        loop.add_signal_handler(signum, stop, signum)
    try:
        return await work
    except asyncio.CancelledError:
        if received:
            return 128 + received[0]
        raise
    finally:
        for signum in STOP_SIGNALS:
            loop.remove_signal_handler(signum)


@contextlib.contextmanager
def intercept_sigint(callback: Callable[[], None]) -> Iterator[None]:
    """Within the block SIGINT calls ``callback`` instead of stopping the command."""
    _sigint_callbacks.append(callback)
    try:
        yield
    finally:
        _sigint_callbacks.remove(callback)
