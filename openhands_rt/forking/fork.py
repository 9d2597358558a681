"""``fork(source, at_event=N)``: a new session in the state the source had right after event N.

How (the decisions are :mod:`.plan`'s):

1. The source's events are read: a live :class:`~events.EventStream`'s history
   as it is now, or a durable log's file with :func:`events.log.read_log`. A
   log is read without its lock, so a log that a live stream still writes can
   be forked too: records are framed and checksummed and only ever appended,
   so what is on disk reads consistently; events that writer has not flushed
   yet are not there (an N past them is refused, saying so). Nothing is
   written to the source, and its sandbox, if any, is not touched.
2. The fork's stream (in memory, or a new durable log at ``log_path``) gets
   copies of events 0..N: same ids, timestamps, sources, causes and content
   (:meth:`events.EventStream.append_copy`).
3. A sandbox is started on a private scratch stream — from the latest snapshot
   at or before N that this engine has, else fresh — and the recorded actions
   after that snapshot up to N are re-executed there in verify mode: each
   observation is compared with the recorded one as the replay verifier does
   (:func:`openhands_rt.replay.compare_observations`). A divergence does not
   stop the re-execution: the remaining actions still run, so the sandbox
   holds every effect of the history up to N and the caller decides what a
   difference means; the fork's stream gets one
   :class:`~events.ErrorObservation` (``error_id`` ``"fork_diverged"``, no
   cause) naming the first differing recorded event, with its diff, and how
   many actions differed in all.
4. The fork's stream gets a ``RuntimeStatusObservation(starting)`` saying what
   the fork did, then the runtime is handed over to it
   (:meth:`~openhands_rt.runtime.EventStreamRuntime.hand_over`, under the
   stream's id as client id): it reports ``ready`` there and sends the actions
   the copies leave unanswered (an N whose action was answered after N), whose
   observations follow in the fork's stream.

Leaving the ``async with`` closes the runtime (the sandbox is removed) and the
fork's stream.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import os
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, overload

import anyio
import anyio.to_thread

from events import (
    Action,
    ErrorObservation,
    Event,
    EventSource,
    EventStream,
    Observation,
    RuntimeStatus,
    RuntimeStatusObservation,
)
from events.log import NotALogError, read_log
from events.wire import ErrorId
from openhands_rt.config import SandboxConfig
from openhands_rt.forking.plan import ForkError, ForkPlan, check_at_event, plan_fork
from openhands_rt.replay.execute import StepReport
from openhands_rt.replay.recording import RecordedStep, fresh_copy
from openhands_rt.replay.verify import Divergence, Mismatch, compare_observations
from openhands_rt.replay.workspace import map_action_paths
from openhands_rt.runtime import EventStreamRuntime
from openhands_rt.swarm.runtime import SwarmRuntime
from openhands_rt.swarm.target import SwarmTarget

if TYPE_CHECKING:
    from openhands_rt.docker_runtime import DockerRuntime
    from openhands_rt.local import LocalRuntime

__all__ = ["ForkReport", "fork"]

ForkSource = EventStream | str | os.PathLike[str]


@dataclass(frozen=True)
class ForkReport:
    """What a fork did."""

    source: str
    """The source: a log's path, or a stream's repr."""
    at_event: int
    copied: int
    """Events copied into the fork's stream (``at_event + 1``)."""
    snapshot_id: str | None
    """The snapshot the sandbox started from (``None``: a fresh sandbox)."""
    executed: int
    """Recorded actions re-executed."""
    matched: int
    unverified: int
    """Re-executed actions whose recorded answer had nothing to compare."""
    diverged: int
    """Re-executed actions whose observation differed from the recorded one."""
    pending: int
    """Actions the copies leave unanswered: the fork's runtime runs them on its stream."""
    divergence: Divergence | None
    """The first difference, if any."""

    def describe(self) -> str:
        start = f"snapshot {self.snapshot_id}" if self.snapshot_id else "a fresh sandbox"
        text = (
            f"forked {self.source} at event {self.at_event}: {self.copied} events copied; "
            f"from {start}, {self.executed} actions re-executed ({self.matched} matched"
        )
        if self.unverified:
            text += f", {self.unverified} with nothing recorded to compare"
        if self.diverged:
            text += f", {self.diverged} diverged"
        text += ")"
        if self.pending:
            text += f"; {self.pending} unanswered action(s) left to run in the fork"
        return text


@overload
def fork(
    source: ForkSource,
    at_event: int,
    *,
    config: SandboxConfig | None = None,
    session_id: str | None = None,
    log_path: str | os.PathLike[str] | None = None,
    local: Literal[False] = False,
    swarm: SwarmTarget,
    on_report: Callable[[ForkReport], None] | None = None,
    on_step: Callable[[StepReport], None] | None = None,
) -> AbstractAsyncContextManager[SwarmRuntime]: ...


@overload
def fork(
    source: ForkSource,
    at_event: int,
    *,
    config: SandboxConfig | None = None,
    session_id: str | None = None,
    log_path: str | os.PathLike[str] | None = None,
    local: Literal[False] = False,
    swarm: None = None,
    on_report: Callable[[ForkReport], None] | None = None,
    on_step: Callable[[StepReport], None] | None = None,
) -> AbstractAsyncContextManager[DockerRuntime]: ...


@overload
def fork(
    source: ForkSource,
    at_event: int,
    *,
    config: SandboxConfig | None = None,
    session_id: str | None = None,
    log_path: str | os.PathLike[str] | None = None,
    local: Literal[True],
    swarm: None = None,
    on_report: Callable[[ForkReport], None] | None = None,
    on_step: Callable[[StepReport], None] | None = None,
) -> AbstractAsyncContextManager[LocalRuntime]: ...


def fork(
    source: ForkSource,
    at_event: int,
    *,
    config: SandboxConfig | None = None,
    session_id: str | None = None,
    log_path: str | os.PathLike[str] | None = None,
    local: bool = False,
    swarm: SwarmTarget | None = None,
    on_report: Callable[[ForkReport], None] | None = None,
    on_step: Callable[[StepReport], None] | None = None,
) -> AbstractAsyncContextManager[EventStreamRuntime]:
    """A connected runtime on a new stream, in the state ``source`` had right after ``at_event``.

    ``source``: an :class:`~events.EventStream` or the path of a durable event
    log. ``at_event``: an event id of the source, or -1 (before its first
    event: a fresh sandbox and an empty stream). The runtime is a
    :class:`~openhands_rt.docker_runtime.DockerRuntime` made with ``config``
    and ``session_id`` (a :class:`~openhands_rt.local.LocalRuntime` with
    ``local``, its directory standing in for ``/workspace`` as in a local
    replay; a :class:`~openhands_rt.swarm.SwarmRuntime` on the swarm ``swarm``
    names, placed by Swarm on any node: how a sandbox lost with its node is
    resumed elsewhere from its log); its stream holds copies of the source's events 0..``at_event``
    and goes on from there: in memory, or durable at ``log_path`` (a path
    that holds no events yet). The sandbox starts fresh — or, once snapshots
    exist, from the latest one at or before ``at_event`` — and the recorded
    actions after that are re-executed in verify mode; see the module
    docstring for divergences and unanswered actions. ``on_report`` gets the
    :class:`ForkReport` before the runtime is yielded; ``on_step`` gets a
    :class:`~openhands_rt.replay.StepReport` after each re-executed action.

    Raises :class:`~openhands_rt.forking.ForkError` (a ``ValueError``) for an
    ``at_event`` the source does not have, a file that is not an event log,
    or a ``log_path`` with events; sandbox errors as the runtime raises them.
    Leaving the block closes the runtime (its sandbox is removed) and the
    fork's stream.
    """
    if local and swarm is not None:
        raise ForkError("a fork is local or on a swarm, not both")
    target: bool | SwarmTarget = swarm if swarm is not None else local
    return _fork(source, at_event, config, session_id, log_path, target, on_report, on_step)


@contextlib.asynccontextmanager
async def _fork(
    source: ForkSource,
    at_event: int,
    config: SandboxConfig | None,
    session_id: str | None,
    log_path: str | os.PathLike[str] | None,
    local: bool | SwarmTarget,
    on_report: Callable[[ForkReport], None] | None,
    on_step: Callable[[StepReport], None] | None,
) -> AsyncIterator[EventStreamRuntime]:
    config = config if config is not None else SandboxConfig()
    if log_path is not None and not isinstance(source, EventStream):
        _check_not_the_source(source, log_path)
    events, name = await _source_events(source, at_event)
    plan = plan_fork(events, at_event, await _usable_snapshots(config, local=local))
    stream = await _open_fork_stream(log_path)
    async with stream:
        for event in plan.events:
            stream.append_copy(event)
        runtime, report = await _restore(plan, name, stream, config, session_id, local, on_step)
        try:
            if on_report is not None:
                on_report(report)
            yield runtime
        finally:
            with anyio.CancelScope(shield=True):
                await runtime.aclose()


async def _source_events(source: ForkSource, at_event: int) -> tuple[Sequence[Event], str]:
    if isinstance(source, EventStream):
        return list(source.iter_events()), repr(source)
    path = os.fspath(source)
    try:
        events = await anyio.to_thread.run_sync(read_log, path)
    except NotALogError as exc:
        raise ForkError(f"{path}: {exc}") from exc
    except OSError as exc:
        raise ForkError(f"cannot read {path}: {exc.strerror or exc}") from exc
    check_at_event(
        len(events),
        at_event,
        where=f"{path} (as it is on disk: a live writer's unflushed events are not there yet)",
    )
    return events, path


def _check_not_the_source(source: str | os.PathLike[str], log_path: str | os.PathLike[str]) -> None:
    # Opening a log for writing may repair (truncate) its tail: never the source's.
    with contextlib.suppress(OSError):
        if os.path.samefile(source, log_path):
            raise ForkError(f"{os.fspath(log_path)} is the source: give the fork a new log path")


def _open_new_log(path: str | os.PathLike[str]) -> EventStream:
    stream = EventStream(log_path=path)
    if len(stream):
        stream.close()
        raise ForkError(f"{os.fspath(path)} already holds {len(stream)} events: give a new path")
    return stream


async def _open_fork_stream(log_path: str | os.PathLike[str] | None) -> EventStream:
    if log_path is None:
        return EventStream()
    return await anyio.to_thread.run_sync(_open_new_log, log_path)


# ------------------------------------------------------------------ the snapshot path


async def _usable_snapshots(config: SandboxConfig, *, local: bool | SwarmTarget) -> frozenset[str]:
    """The snapshot ids a sandbox of ``config`` can start from on this engine."""
    if isinstance(local, SwarmTarget):
        from openhands_rt.swarm.snapshot import list_swarm_snapshots

        # This host's swarm snapshots pushed to the target's registry.
        return frozenset(r.snapshot_id for r in await list_swarm_snapshots(registry=local.registry))
    if local:
        return frozenset()  # a local sandbox has no image to start from
    from openhands_rt.snapshots import list_snapshots

    return frozenset(s.snapshot_id for s in await list_snapshots())


def _make_runtime(
    stream: EventStream,
    config: SandboxConfig,
    session_id: str | None,
    snapshot_id: str | None,
    *,
    local: bool | SwarmTarget,
) -> EventStreamRuntime:
    if isinstance(local, SwarmTarget):
        return local.runtime(stream, config, session_id=session_id, snapshot=snapshot_id)
    if local:
        from openhands_rt.local import LocalRuntime

        return LocalRuntime(stream, config, session_id=session_id)
    from openhands_rt.docker_runtime import DockerRuntime

    return DockerRuntime(stream, config, session_id=session_id, snapshot=snapshot_id)


# ------------------------------------------------------------------ restoring


@dataclass
class _Tally:
    matched: int = 0
    unverified: int = 0
    diverged: int = 0
    first: Divergence | None = None


async def _restore(
    plan: ForkPlan,
    source_name: str,
    stream: EventStream,
    config: SandboxConfig,
    session_id: str | None,
    local: bool | SwarmTarget,
    on_step: Callable[[StepReport], None] | None,
) -> tuple[EventStreamRuntime, ForkReport]:
    """Start the sandbox on a scratch stream, re-execute, hand the runtime over to ``stream``."""
    snapshot_id = plan.snapshot.snapshot_id if plan.snapshot is not None else None
    scratch = EventStream()
    runtime = _make_runtime(scratch, config, session_id, snapshot_id, local=local)
    handed_over = False
    try:
        await runtime.connect()
        workspace: str | None = getattr(runtime, "working_dir", None) if local is True else None
        tally = await _reexecute(runtime, plan.steps, workspace, on_step)
        report = ForkReport(
            source=source_name,
            at_event=plan.at_event,
            copied=len(plan.events),
            snapshot_id=snapshot_id,
            executed=len(plan.steps),
            matched=tally.matched,
            unverified=tally.unverified,
            diverged=tally.diverged,
            pending=len(plan.pending),
            divergence=tally.first,
        )
        stream.append(
            RuntimeStatusObservation(RuntimeStatus.STARTING, report.describe()),
            source=EventSource.ENVIRONMENT,
        )
        if tally.first is not None:
            stream.append(
                ErrorObservation(_divergence_text(tally), error_id=ErrorId.FORK_DIVERGED),
                source=EventSource.ENVIRONMENT,
            )
        await runtime.hand_over(stream, client_id=stream.stream_id)
        handed_over = True
    finally:
        with anyio.CancelScope(shield=True):
            if not handed_over:
                await runtime.aclose()
            await scratch.aclose()
    return runtime, report


async def _reexecute(
    runtime: EventStreamRuntime,
    steps: list[RecordedStep],
    workspace: str | None,
    on_step: Callable[[StepReport], None] | None,
) -> _Tally:
    tally = _Tally()
    for index, step in enumerate(steps):
        action = fresh_copy(step.action, None)
        assert isinstance(action, Action)
        if workspace is not None:
            action = map_action_paths(action, workspace)
        actual = await runtime.run(action)
        matched: bool | None = None
        if step.observation is None:
            tally.unverified += 1
        else:
            mismatch = compare_observations(
                step.action, step.observation, actual, workspace=workspace
            )
            matched = mismatch is None
            if mismatch is None:
                tally.matched += 1
            else:
                tally.diverged += 1
                if tally.first is None:
                    tally.first = _divergence(step, actual, mismatch)
        if on_step is not None:
            on_step(StepReport(index, len(steps), step, actual, matched))
    return tally


def _divergence(step: RecordedStep, actual: Observation, mismatch: Mismatch) -> Divergence:
    assert step.observation is not None
    divergence = Divergence.of(step.action, step.observation, actual, mismatch)
    # The re-executed observation lives on the scratch stream only: its id names nothing.
    if mismatch.expected == mismatch.actual:
        return divergence
    diff = "".join(
        difflib.unified_diff(
            (mismatch.expected + "\n").splitlines(keepends=True),
            (mismatch.actual + "\n").splitlines(keepends=True),
            fromfile=f"recorded (event {step.observation.id})",
            tofile="re-executed by the fork",
        )
    )
    return dataclasses.replace(divergence, diff=diff)


def _divergence_text(tally: _Tally) -> str:
    assert tally.first is not None
    text = tally.first.describe()
    if tally.diverged > 1:
        text += f"\n({tally.diverged} re-executed actions diverged in all)"
    return text
