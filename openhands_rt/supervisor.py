"""A task group that outlives the task that opened it: the runtime's background tasks live here.

anyio and asyncio task groups must be left by the task that entered them, but
a runtime is opened and closed by whoever its user is: ``await rt.connect()``
in a fixture's setup, ``await rt.aclose()`` in its teardown — two tasks. So
the group is entered by a task of its own (the *root*), which
:meth:`Supervisor.start` starts and :meth:`Supervisor.aclose` cancels and
awaits, from any task. The root is the one task the runtime starts outside a
task group; everything else runs inside it (:meth:`Supervisor.start_soon`).

A task that raises cancels the others, and the supervisor hands the error to
its owner's ``on_failure`` (the runtime reports it on the stream and answers
everything waiting): never silence, never a crash of an unrelated task.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import anyio.abc

from openhands_rt.errors import SandboxClosedError

__all__ = ["Supervisor", "describe_error"]

logger = logging.getLogger(__name__)


class Supervisor:
    """One task group, from :meth:`start` until :meth:`aclose` (see the module docstring)."""

    def __init__(self, name: str, *, on_failure: Callable[[Exception], None]) -> None:
        self.name = name
        self._on_failure = on_failure
        self._root: asyncio.Task[None] | None = None
        self._task_group: anyio.abc.TaskGroup | None = None

    @property
    def running(self) -> bool:
        return self._task_group is not None

    async def start(self) -> bool:
        """Open the task group unless it is open; whether this call opened it.

        After a failure (a task raised, the group ended) it opens a new group.
        """
        if self._root is not None and not self._root.done():
            return False
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # The deliberate bare task: see the module docstring.
        root = asyncio.get_running_loop().create_task(
            self._run(ready), name=f"{self.name}-supervisor"
        )
        self._root = root
        try:
            await asyncio.wait([ready, root], return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            await self.aclose()
            raise
        if not ready.done():
            await self.aclose()
            raise SandboxClosedError(f"{self.name}: the supervisor ended before it started")
        return True

    def start_soon(
        self, func: Callable[..., Coroutine[Any, Any, object]], *args: Any, name: str | None = None
    ) -> None:
        """Run ``func(*args)`` in the group; cancelled by :meth:`aclose`."""
        if self._task_group is None:
            raise SandboxClosedError(f"{self.name} is not running")
        self._task_group.start_soon(func, *args, name=name)

    async def aclose(self) -> None:
        """Cancel every task of the group and wait for them (from any task)."""
        root, self._root = self._root, None
        if root is None:
            return
        if self._task_group is not None:
            self._task_group.cancel_scope.cancel()
        with anyio.CancelScope(shield=True):
            await asyncio.wait([root])
        if not root.cancelled() and (error := root.exception()) is not None:
            raise error

    async def _run(self, ready: asyncio.Future[None]) -> None:
        try:
            async with anyio.create_task_group() as task_group:
                self._task_group = task_group
                ready.set_result(None)
                await anyio.sleep_forever()
        except Exception as exc:
            logger.exception("%s: a task failed", self.name)
            self._on_failure(exc)
        finally:
            self._task_group = None


def describe_error(exc: BaseException) -> str:
    """One line for an error: a task group's group of one is that one error."""
    # getattr: BaseExceptionGroup is a builtin from Python 3.11 on only.
    inner: object = getattr(exc, "exceptions", None)
    while isinstance(inner, tuple) and len(inner) == 1 and isinstance(inner[0], BaseException):
        exc = inner[0]
        inner = getattr(exc, "exceptions", None)
    return f"{type(exc).__name__}: {exc}"
