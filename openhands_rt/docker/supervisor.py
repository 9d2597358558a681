"""TaskSupervisor: one anyio task group for an owner opened and closed by different tasks.

A runtime's ``connect()`` and ``aclose()`` may run in different tasks
(pytest-asyncio sets a fixture up and tears it down in two; web frameworks do
the same), but a task group must be left by the task that entered it. So the
group lives in one *root* task that :meth:`TaskSupervisor.start` creates and
:meth:`TaskSupervisor.aclose` cancels and awaits: the owner's tasks are the
group's children, their life bounded by the owner's start and close.

A child that raises takes the whole group down and the owner hears it at once
(``on_crash``, and an ERROR log with the traceback), never silence. A child may
close its own supervisor (a failed restart stops its sandbox from inside the
restart task): :meth:`cancel` then ends the group once that child returns.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable

import anyio
from anyio.abc import TaskGroup

__all__ = ["TaskSupervisor"]

logger = logging.getLogger(__name__)

# The supervisor whose group runs the current task (None outside every group).
_current: contextvars.ContextVar[TaskSupervisor | None] = contextvars.ContextVar(
    "openhands_rt_task_supervisor", default=None
)


class TaskSupervisor:
    """The task group of one owner (see the module docstring). Starts nothing until
    :meth:`start`; restartable after :meth:`aclose`."""

    def __init__(self, name: str, *, on_crash: Callable[[BaseException], None]) -> None:
        self.name = name
        self._on_crash = on_crash
        self._root: asyncio.Task[None] | None = None
        self._group: TaskGroup | None = None

    @property
    def running(self) -> bool:
        """Whether the group takes new tasks (started, not cancelled, not crashed)."""
        return self._group is not None and not self._group.cancel_scope.cancel_called

    def is_current(self) -> bool:
        """Whether the calling task is one of this group's children."""
        return _current.get() is self

    async def start(self) -> None:
        """Open the group (a no-op while it runs); waits for a closing one to end first."""
        if self.running or self.is_current():
            return
        await self._wait_root()
        started = anyio.Event()
        # The one bare task of this owner: the group's root, which must outlive the
        # task that calls start() (see the module docstring). aclose() awaits it.
        self._root = asyncio.get_running_loop().create_task(
            self._run(started), name=f"{self.name}-supervisor"
        )
        await started.wait()

    def start_soon(self, func: Callable[..., Awaitable[object]], *args: object, name: str) -> None:
        """Run ``func(*args)`` as a child of the group (RuntimeError when it is not running)."""
        if self._group is None or not self.running:
            raise RuntimeError(f"{self.name}: the task group is not running")
        self._group.start_soon(self._child, func, args, name=f"{self.name}-{name}")

    def cancel(self) -> None:
        """Cancel every child; the group ends when they have returned."""
        if self._group is not None:
            self._group.cancel_scope.cancel()

    async def aclose(self) -> None:
        """Cancel every child and wait for the group to end.

        Called by a child of the group it only cancels (:meth:`cancel`): waiting
        there would wait for itself.
        """
        self.cancel()
        if self.is_current():
            return
        await self._wait_root()

    async def _wait_root(self) -> None:
        root, self._root = self._root, None
        if root is not None and not self.is_current():
            await root

    async def _run(self, started: anyio.Event) -> None:
        try:
            async with anyio.create_task_group() as group:
                self._group = group
                started.set()
                await anyio.sleep_forever()
        except Exception as exc:
            # Never silence: the owner turns it into its error event.
            logger.error("%s: a task died", self.name, exc_info=exc)
            self._on_crash(_sole(exc))
        finally:
            self._group = None
            started.set()

    async def _child(
        self, func: Callable[..., Awaitable[object]], args: tuple[object, ...]
    ) -> None:
        _current.set(self)
        await func(*args)


def _sole(exc: BaseException) -> BaseException:
    """The one error of a task group's group of one, else ``exc`` itself."""
    inner = getattr(exc, "exceptions", None)
    if isinstance(inner, tuple) and len(inner) == 1 and isinstance(inner[0], BaseException):
        return _sole(inner[0])
    return exc
