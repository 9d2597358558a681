"""Supervisor: one task group for an owner that is opened and closed by different tasks.

anyio and asyncio task groups must be left by the task that entered them, but
a runtime is opened and closed by whoever its user is: ``await rt.connect()``
in a fixture's setup, ``await rt.aclose()`` in its teardown — two tasks
(pytest-asyncio and web frameworks do this). So the group is entered by a task
of its own, the *root*, which :meth:`Supervisor.start` starts and
:meth:`Supervisor.aclose` cancels and awaits, from any task. The root is the
one task an owner starts outside a task group; everything else runs inside it
(:meth:`Supervisor.start_soon`).

Two owners: :class:`~openhands_rt.runtime.EventStreamRuntime` (from its first
``connect()`` until ``aclose()``: the channel reader, the log-failure watch, a
subclass's drainer) and :class:`~openhands_rt.docker.runtime.DockerRuntime`'s
sandbox (from one sandbox's start until its stop: the container watcher and an
automatic restart; a runtime may start several sandboxes, one after the other).

A task that raises cancels the others, is logged with its traceback, and is
handed to the owner's ``on_failure`` (the runtime reports it on the stream and
answers everything waiting): never silence. The group is then closed; the
owner's next :meth:`~Supervisor.start` opens a new one.

A child may close its own supervisor (a failed restart stops its sandbox from
inside the restart task): :meth:`~Supervisor.aclose` called from inside the
group (:meth:`~Supervisor.is_current`) only cancels — waiting there would wait
for itself — and the group ends once that child returns.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc

from openhands_rt.errors import SandboxClosedError

__all__ = ["Supervisor", "describe_error"]

logger = logging.getLogger(__name__)

# The supervisor whose group runs the current task (None outside every group). A
# context variable, so the tasks a child starts in its own task groups count as inside.
_current: contextvars.ContextVar[Supervisor | None] = contextvars.ContextVar(
    "openhands_rt_supervisor", default=None
)


class Supervisor:
    """One task group, from :meth:`start` until :meth:`aclose` (see the module docstring).

    Starts nothing until :meth:`start`; may be started again after
    :meth:`aclose` or after a failure.
    """

    def __init__(self, name: str, *, on_failure: Callable[[Exception], None]) -> None:
        self.name = name
        self._on_failure = on_failure
        self._root: asyncio.Task[None] | None = None
        self._task_group: anyio.abc.TaskGroup | None = None

    @property
    def running(self) -> bool:
        """Whether the group takes new tasks (started, not cancelled, not failed)."""
        group = self._task_group
        return group is not None and not group.cancel_scope.cancel_called

    def is_current(self) -> bool:
        """Whether the calling task runs inside this group (a child, or a task a child started)."""
        return _current.get() is self

    async def start(self) -> bool:
        """Open the group unless it runs; whether this call opened it.

        A group that is closing (cancelled, or failed) is waited for first,
        then a new one is opened. Called from inside the group, a no-op.
        """
        if self.running or self.is_current():
            return False
        await self._wait_root(shield=False)
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # The deliberate bare task: the group's root, which must outlive the task that
        # calls start() (see the module docstring). aclose() cancels and awaits it.
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
        self, func: Callable[..., Awaitable[object]], *args: Any, name: str | None = None
    ) -> None:
        """Run ``func(*args)`` as a child of the group; cancelled by :meth:`aclose`.

        Raises :class:`SandboxClosedError` when the group is not running.
        """
        if self._task_group is None or not self.running:
            raise SandboxClosedError(f"{self.name}: the task group is not running")
        task_name = name if name is not None else f"{self.name}-{_name_of(func)}"
        self._task_group.start_soon(self._child, func, args, name=task_name)

    def cancel(self) -> None:
        """Cancel every child; the group ends once they have returned."""
        if self._task_group is not None:
            self._task_group.cancel_scope.cancel()

    async def aclose(self) -> None:
        """Cancel every child and wait for the group to end (from any task).

        Called from inside the group it only cancels (:meth:`cancel`): waiting
        there would wait for itself.
        """
        self.cancel()
        if self.is_current():
            return
        await self._wait_root(shield=True)

    async def _wait_root(self, *, shield: bool) -> None:
        """Wait for the last root to end; raise what it raised past its group (never Exception)."""
        root, self._root = self._root, None
        if root is None:
            return
        # asyncio.wait, not `await root`: a cancelled waiter must not cancel the root.
        with anyio.CancelScope(shield=shield):
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
            # Never silence: the owner turns it into its error event.
            logger.error("%s: a task died", self.name, exc_info=exc)
            self._on_failure(exc)
        finally:
            self._task_group = None

    async def _child(self, func: Callable[..., Awaitable[object]], args: tuple[Any, ...]) -> None:
        _current.set(self)
        await func(*args)


def _name_of(func: Callable[..., object]) -> str:
    name = getattr(func, "__name__", None)
    return name if isinstance(name, str) else type(func).__name__


def describe_error(exc: BaseException) -> str:
    """One line for an error: a task group's group of one is that one error."""
    # getattr: BaseExceptionGroup is a builtin from Python 3.11 on only.
    inner: object = getattr(exc, "exceptions", None)
    while isinstance(inner, tuple) and len(inner) == 1 and isinstance(inner[0], BaseException):
        exc = inner[0]
        inner = getattr(exc, "exceptions", None)
    return f"{type(exc).__name__}: {exc}"
