"""SandboxPool: started sandboxes waiting, handed over to a stream in a few milliseconds.

A cold start costs hundreds of milliseconds of CPU (the engine's create and
start, the server's imports); evaluation and RL loops start thousands. A pool
keeps ``size`` sandboxes started and connected, each on a private stream of its
own, and :meth:`SandboxPool.acquire` hands one over to the caller's stream with
:meth:`~openhands_rt.runtime.EventStreamRuntime.hand_over`: its container is
renamed to the caller's session id and it reports ``ready`` on the caller's
stream. Leaving ``acquire()`` removes that sandbox (a sandbox is never handed
out twice: the next caller gets a fresh one, its own workspace included) and
the pool starts another in the background — 50 ms after the hand-over, so that
the start does not compete with the caller's first actions for the CPU.

- **Waiting.** An empty pool makes ``acquire`` wait for the next start to
  finish (that sandbox goes to the first caller waiting, not to the pool).
  ``acquire`` fails only when starts fail: after ``max_failures`` starts in a
  row have failed, every caller waiting gets :class:`SandboxStartError` with
  the last failure (later callers wait again while the pool keeps trying).
- **Failures** are logged, counted (:attr:`SandboxPool.failures`,
  :attr:`SandboxPool.last_error`) and retried with an exponential backoff
  (0.5 s doubling up to 30 s; a success resets it). A waiting sandbox that
  dies is dropped and replaced.
- **Fairness.** Every pool of a process (of an event loop) starts its
  sandboxes through one FIFO gate of :func:`os.cpu_count` slots, and each pool
  queues at most ``max_starting`` starts at a time, so pools for several
  configs take turns instead of one filling up first.
- **Ownership.** The sandboxes carry the owner labels of every sandbox, so a
  pool whose process dies (SIGKILL) leaves only what ``openhands-rt gc``
  removes, and a :data:`~openhands_rt.sandboxes.LABEL_POOL` label with the
  pool's id. Closing the pool removes every sandbox it made, waiting or
  handed out.
- **The channel.** With ``config.channel`` unset, the pool's sandboxes use
  ``"unix"``: the socket in their run directory, no published port (no
  docker-proxy: about 0.1 CPU-second less per start); ``channel="tcp"`` keeps
  the port.
- **Workspaces.** With ``config.workspace_dir`` unset, a sandbox's workspace
  is inside its container (fresh with it). When set, it is the *parent* of
  the pool's workspaces: each sandbox gets a new subdirectory named after its
  container, removed with the sandbox (and by ``gc`` if the pool's process dies).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import functools
import logging
import os
import shutil
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType

import aiodocker
import anyio

from events import Event, EventStream, RuntimeStatus, RuntimeStatusObservation
from openhands_rt.config import SandboxConfig
from openhands_rt.docker_runtime import DockerRuntime
from openhands_rt.errors import SandboxClosedError, SandboxError, SandboxStartError
from openhands_rt.sandboxes import LABEL_POOL, LABEL_POOL_WORKSPACE
from openhands_rt.supervisor import Supervisor, describe_error

__all__ = ["SandboxPool"]

logger = logging.getLogger(__name__)

_BACKOFF_FIRST = 0.5
_BACKOFF_MAX = 30.0
# Seconds between a hand-over and the start of its replacement (see _take).
_REFILL_DELAY = 0.05

# One start gate per event loop, shared by every pool on it (see the module docstring).
_gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, anyio.Semaphore] = (
    weakref.WeakKeyDictionary()
)


def _start_gate() -> anyio.Semaphore:
    loop = asyncio.get_running_loop()
    gate = _gates.get(loop)
    if gate is None:
        gate = _gates[loop] = anyio.Semaphore(os.cpu_count() or 1)
    return gate


class SandboxPool:
    """``size`` started sandboxes waiting for :meth:`acquire` (see the module docstring).

    ``max_starting``: how many starts this pool runs at once (default: the
    number of CPUs); ``max_failures``: consecutive failed starts after which
    the callers waiting are told. ``docker``: an aiodocker client to share
    (the pool makes and closes one otherwise).
    """

    def __init__(
        self,
        config: SandboxConfig | None = None,
        *,
        size: int = 4,
        max_starting: int | None = None,
        max_failures: int = 3,
        docker: aiodocker.Docker | None = None,
    ) -> None:
        config = config if config is not None else SandboxConfig()
        if config.keep_runtime_alive:
            raise ValueError("a pool removes its sandboxes: keep_runtime_alive must be False")
        if size < 1:
            raise ValueError(f"size must be >= 1, got {size}")
        if max_starting is not None and max_starting < 1:
            raise ValueError(f"max_starting must be >= 1, got {max_starting}")
        if max_failures < 1:
            raise ValueError(f"max_failures must be >= 1, got {max_failures}")
        self.config = config
        self.size = size
        self.max_starting = max_starting or os.cpu_count() or 1
        self.max_failures = max_failures
        self.pool_id = uuid.uuid4().hex[:8]
        self.failures = 0  # failed starts, in all
        self.waits = 0  # acquire() calls that found the pool empty
        self.last_error: BaseException | None = None
        self._docker = docker
        self._owns_docker = docker is None
        self._ready: collections.deque[DockerRuntime] = collections.deque()
        self._waiters: collections.deque[asyncio.Future[DockerRuntime]] = collections.deque()
        self._in_use: set[DockerRuntime] = set()
        self._owned: set[DockerRuntime] = set()  # every sandbox made and not yet removed
        self._starting = 0
        self._serial = 0
        self._failing = 0  # consecutive failed starts
        self._workspaces: dict[DockerRuntime, str] = {}
        # The private stream each sandbox serves until it is handed over.
        self._internal: dict[DockerRuntime, EventStream] = {}
        self._kick = anyio.Event()
        self._delivered = anyio.Event()  # set (and replaced) whenever a sandbox is ready
        self._tasks = Supervisor(f"pool-{self.pool_id}", on_failure=self._task_failed)
        self._opened = False
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> SandboxPool:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Begin filling the pool (``async with`` does it); returns at once."""
        if self._closed:
            raise SandboxClosedError("this pool was closed; make a new one")
        if self._opened:
            return
        self._opened = True
        if self._docker is None:
            self._docker = aiodocker.Docker()
        await self._tasks.start()
        self._tasks.start_soon(self._refill, name=f"pool-{self.pool_id}-refill")

    async def aclose(self) -> None:
        """Stop starting; remove every sandbox of the pool, waiting or handed out."""
        if self._closed:
            return
        self._closed = True
        self._fail_waiters(SandboxClosedError("the pool was closed"))
        self._delivered.set()
        with anyio.CancelScope(shield=True):
            # Starts under way are cancelled: each removes what it made.
            await self._tasks.aclose()
            runtimes = list(self._owned)
            self._ready.clear()
            async with anyio.create_task_group() as group:
                for rt in runtimes:
                    group.start_soon(self._remove, rt)
            if self._owns_docker and self._docker is not None:
                await self._docker.close()
                self._docker = None

    @property
    def ready(self) -> int:
        """Started sandboxes waiting now."""
        return len(self._ready)

    @property
    def starting(self) -> int:
        """Starts under way (a failed one counts until its backoff is over)."""
        return self._starting

    async def wait_ready(self, count: int | None = None) -> None:
        """Return once ``count`` (default: ``size``) sandboxes wait in the pool.

        Raises :class:`SandboxClosedError` if the pool is closed meanwhile.
        """
        wanted = self.size if count is None else count
        if not self._opened:
            await self.start()
        while len(self._ready) < wanted:
            if self._closed:
                raise SandboxClosedError("the pool was closed")
            await self._delivered.wait()

    # ------------------------------------------------------------------ acquire

    @contextlib.asynccontextmanager
    async def acquire(
        self, stream: EventStream, *, session_id: str | None = None
    ) -> AsyncIterator[DockerRuntime]:
        """A started sandbox, connected to ``stream``; removed when the block is left.

        Its ``ready`` status is on ``stream``. ``session_id`` (default: the
        pool's name for it) must not be in use (:class:`SessionInUseError`).
        """
        rt = await self._take(stream, session_id)
        try:
            yield rt
        finally:
            self._in_use.discard(rt)
            with anyio.CancelScope(shield=True):
                await self._remove(rt)
            self._kick.set()

    async def _take(self, stream: EventStream, session_id: str | None) -> DockerRuntime:
        if not self._opened:
            await self.start()
        while True:
            if self._closed:
                raise SandboxClosedError("the pool was closed")
            if self._ready:
                rt = self._ready.popleft()
            else:
                self.waits += 1
                rt = await self._wait_for_one()
            try:
                await rt.hand_over(stream, session_id=session_id)
            except SandboxClosedError:
                # It died while it waited (its container exited): the next one.
                await self._forget(rt)
                continue
            except SandboxError:
                # The session id is taken (or the runtime is busy): nothing changed,
                # the sandbox waits for the next caller.
                self._ready.appendleft(rt)
                raise
            except BaseException:
                # Cancelled half-way: no telling what state it is in.
                await self._forget(rt)
                raise
            self._in_use.add(rt)
            internal = self._internal.pop(rt, None)
            if internal is not None:
                await self._background(internal.aclose)
            # The replacement starts a moment later: its first steps (the engine's create,
            # our own loop's part of the start) would compete with the caller's first
            # actions for the CPU (measured: the first echo took 10 ms instead of 2).
            asyncio.get_running_loop().call_later(_REFILL_DELAY, self._kick_now)
            return rt

    def _kick_now(self) -> None:
        self._kick.set()

    async def _wait_for_one(self) -> DockerRuntime:
        future: asyncio.Future[DockerRuntime] = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        self._kick.set()
        try:
            return await future
        except asyncio.CancelledError:
            with contextlib.suppress(ValueError):
                self._waiters.remove(future)
            if future.done() and not future.cancelled() and future.exception() is None:
                # Given to us just as we were cancelled: back to the pool.
                self._ready.appendleft(future.result())
            raise

    def _fail_waiters(self, error: BaseException) -> None:
        waiters, self._waiters = self._waiters, collections.deque()
        for future in waiters:
            if not future.done():
                future.set_exception(error)

    # ------------------------------------------------------------------ refilling

    def _wanted(self) -> int:
        """How many more starts to begin now."""
        missing = self.size + len(self._waiters) - len(self._ready) - self._starting
        return max(0, min(missing, self.max_starting - self._starting))

    async def _refill(self) -> None:
        while True:
            # A fresh event before looking: a kick from here on wakes the wait below.
            self._kick = anyio.Event()
            for _ in range(self._wanted()):
                self._starting += 1
                self._serial += 1
                self._tasks.start_soon(
                    self._start_one, self._serial, name=f"pool-{self.pool_id}-start"
                )
            await self._kick.wait()

    def _config_for(self, name: str) -> tuple[SandboxConfig, str | None]:
        labels = {**self.config.labels, LABEL_POOL: self.pool_id}
        workspace = None
        if self.config.workspace_dir is not None:
            workspace = os.path.join(os.path.abspath(self.config.workspace_dir), name)
            # So that gc removes it with the sandbox if this process dies.
            labels[LABEL_POOL_WORKSPACE] = workspace
        # The pool talks to its sandboxes over their run directory's socket unless told
        # otherwise: no published port, no docker-proxy, ~0.1 CPU-s less per start.
        channel = self.config.channel if self.config.channel is not None else "unix"
        config = dataclasses.replace(
            self.config, labels=labels, workspace_dir=workspace, channel=channel
        )
        return config, workspace

    async def _start_one(self, serial: int) -> None:
        session_id = f"pool-{self.pool_id}-{serial}"
        try:
            async with _start_gate():
                rt = await self._start(session_id)
        except Exception as exc:
            self._failed(session_id, exc)
            delay = min(_BACKOFF_MAX, _BACKOFF_FIRST * 2 ** (self._failing - 1))
            try:
                await anyio.sleep(delay)
            finally:
                self._starting -= 1
                self._kick.set()
            return
        self._starting -= 1
        self._failing = 0
        self._deliver(rt)
        self._kick.set()

    async def _start(self, session_id: str) -> DockerRuntime:
        config, workspace = self._config_for(session_id)
        stream = EventStream()
        rt = DockerRuntime(
            stream, config, session_id=session_id, client_id=uuid.uuid4().hex, docker=self._docker
        )
        if workspace is not None:
            self._workspaces[rt] = workspace
        self._internal[rt] = stream
        self._owned.add(rt)
        try:
            await rt.connect()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._remove(rt)
            raise
        # A waiting sandbox that dies is dropped (and replaced) at once.

        async def watch(event: Event) -> None:
            await self._on_internal_event(rt, event)

        stream.subscribe(watch)
        return rt

    def _failed(self, session_id: str, exc: Exception) -> None:
        self.failures += 1
        self._failing += 1
        self.last_error = exc
        logger.warning(
            "pool %s: starting %s failed (%d in a row): %s",
            self.pool_id,
            session_id,
            self._failing,
            describe_error(exc),
        )
        if self._failing >= self.max_failures:
            error = SandboxStartError(
                f"the pool could not start a sandbox ({self._failing} failures in a row); "
                f"the last: {describe_error(exc)}"
            )
            error.__cause__ = exc
            self._fail_waiters(error)

    def _deliver(self, rt: DockerRuntime) -> None:
        if self._closed:
            return  # aclose() removes it
        while self._waiters:
            future = self._waiters.popleft()
            if not future.done():
                future.set_result(rt)
                return
        self._ready.append(rt)
        self._delivered.set()
        self._delivered = anyio.Event()

    async def _on_internal_event(self, rt: DockerRuntime, event: Event) -> None:
        if (
            isinstance(event, RuntimeStatusObservation)
            and event.status is RuntimeStatus.ERROR
            and rt in self._ready
            and self._tasks.running  # closing: aclose() removes it
        ):
            logger.warning("pool %s: a waiting sandbox died: %s", self.pool_id, event.message)
            self._ready.remove(rt)
            await self._forget(rt)

    async def _forget(self, rt: DockerRuntime) -> None:
        """Remove ``rt`` in the background and start another."""
        self._kick.set()
        await self._background(functools.partial(self._remove, rt))

    async def _background(self, work: Callable[[], Awaitable[None]]) -> None:
        """Run ``work()`` in the pool's group, or right here once the pool is closing."""
        if self._tasks.running:
            self._tasks.start_soon(work, name=f"pool-{self.pool_id}-background")
        else:
            with anyio.CancelScope(shield=True):
                await work()

    async def _remove(self, rt: DockerRuntime) -> None:
        # Shielded: a removal cut short would leave the container behind.
        with anyio.CancelScope(shield=True):
            self._owned.discard(rt)
            try:
                await rt.aclose()
            except Exception as exc:
                logger.warning("pool %s: removing %s failed: %s", self.pool_id, rt.session_id, exc)
            internal = self._internal.pop(rt, None)
            if internal is not None:
                await internal.aclose()
            workspace = self._workspaces.pop(rt, None)
            if workspace is not None:
                await anyio.to_thread.run_sync(shutil.rmtree, workspace, True)

    def _task_failed(self, exc: Exception) -> None:
        self.last_error = exc
        self._fail_waiters(SandboxError(f"the pool failed: {describe_error(exc)}"))
