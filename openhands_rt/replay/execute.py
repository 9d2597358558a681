"""Re-running a recording's actions on a runtime: execute and verify modes.

- **execute** (:func:`replay`, ``verify=False``): run every runnable action in
  order through a connected runtime, appending to its stream; every carried
  event (see :mod:`.recording`) is appended as it was, with a new id and its
  ``cause`` renumbered when it points at an event already replayed;
- **verify** (``verify=True``): as execute, and compare each new observation
  with the recorded one (:mod:`.verify`); stop at the first
  :class:`~openhands_rt.replay.Divergence`.

Pipelining: a run of recorded shell commands (plain commands: not input to a
running one, not a control key) is sent up to ``max_in_flight`` at a time,
without waiting for each answer before sending the next. The sandbox's server
runs shell actions one after another on its one shell, in the order sent, so
each command still starts after the one before it has finished, as when the
recording was made; what no longer happens is a round trip to this process in
between. Everything else is a barrier: an IPython, file or editor action (they
run beside the shell in the server), shell input and control keys, a carried
event, and a command whose recorded observation says it had not finished (or
that has none) are sent only once every earlier action has been answered, and
nothing is sent after them until they are answered. Observations are compared
and reported (``on_step``) in the recorded order.

In verify mode the replay stops at the first divergence: nothing more is sent,
and the result counts nothing past it, as without pipelining. The commands
already sent behind the divergent one (at most ``max_in_flight - 1``, each a
plain shell command that came right after it in the recording) still run and
their actions and observations are in the stream; the replay returns once they
are answered. ``max_in_flight=1`` sends nothing before the previous answer.
Observations come back in order, but the stream records each action when it
was sent, so with pipelining an action can precede the observations of the
ones sent before it. Cancelling a replay cancels every run in flight: each
interrupts its own command, as a cancelled ``EventStreamRuntime.run`` does, and
the cancellation completes once they are answered (bounded by the runtime's
``interrupt_grace``).

``until``: the replay stops after the recorded event with that id (events with
a larger id are neither executed nor carried). :func:`replay_recording` and
:func:`replay_file` make the sandbox (local or Docker) and its stream, own them
for the replay (``async with``) and close them after.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import anyio
import anyio.to_thread

from events import Action, CmdOutputObservation, CmdRunAction, EventSource, EventStream, Observation
from events.wire import special_key
from openhands_rt.config import SandboxConfig
from openhands_rt.replay.errors import ReplayError
from openhands_rt.replay.recording import RecordedStep, Recording, fresh_copy, load_recording
from openhands_rt.replay.verify import Divergence, compare_observations
from openhands_rt.replay.workspace import map_action_paths
from openhands_rt.runtime import EventStreamRuntime

__all__ = [
    "MAX_IN_FLIGHT",
    "ReplayResult",
    "StepReport",
    "replay",
    "replay_file",
    "replay_recording",
]

logger = logging.getLogger(__name__)

MAX_IN_FLIGHT: Final = 8
"""How many recorded shell commands a replay keeps sent but unanswered, by default.

The round trip is what pipelining saves, and a few in flight already keep the
server busy; a small window also bounds what still runs after a divergence.
"""


@dataclass(frozen=True)
class StepReport:
    """Progress of a replay: sent after each executed action."""

    index: int
    """0-based position among the actions this replay runs."""
    total: int
    step: RecordedStep
    actual: Observation
    matched: bool | None
    """``True``/``False`` in verify mode; ``None`` when not compared."""


@dataclass(frozen=True)
class ReplayResult:
    """What a replay did."""

    total: int
    """Runnable actions the replay was to run (up to ``until``)."""
    executed: int
    matched: int
    """Observations compared and found equal (verify mode)."""
    unverified: int
    """Actions run in verify mode that had no recorded observation to compare with."""
    carried: int
    """Non-runnable events appended as they were."""
    divergence: Divergence | None = None

    @property
    def ok(self) -> bool:
        return self.divergence is None


async def replay(
    recording: Recording,
    runtime: EventStreamRuntime,
    *,
    verify: bool = False,
    until: int | None = None,
    map_workspace: str | None = None,
    on_step: Callable[[StepReport], None] | None = None,
    max_in_flight: int = MAX_IN_FLIGHT,
) -> ReplayResult:
    """Re-run the recording's runnable actions through a connected ``runtime``.

    New events go to ``runtime.stream``; non-runnable events are carried. With
    ``verify`` each observation is compared with the recorded one and the replay
    stops at the first divergence. ``until``: stop after the recorded event with
    that id. ``map_workspace``: the local directory standing in for
    ``/workspace`` (see :mod:`openhands_rt.replay.workspace`). ``max_in_flight``:
    how many shell commands may be sent before the first of them is answered
    (pipelining, see the module docstring; 1: none).
    """
    if max_in_flight < 1:
        raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
    run = _Replay(recording, runtime, verify, until, map_workspace, on_step)
    try:
        await run.run(max_in_flight)
    except BaseException:
        await _settle(run.in_flight, cancel=True)
        raise
    # After a divergence, the commands already sent behind it are answered first.
    await _settle(run.in_flight, cancel=False)
    return run.result()


class _Replay:
    """One replay's progress: the steps sent and not yet answered, the counts, the result."""

    def __init__(
        self,
        recording: Recording,
        runtime: EventStreamRuntime,
        verify: bool,
        until: int | None,
        map_workspace: str | None,
        on_step: Callable[[StepReport], None] | None,
    ) -> None:
        self.recording = recording
        self.runtime = runtime
        self.verify = verify
        self.until = until
        self.map_workspace = map_workspace
        self.on_step = on_step
        self.steps = recording.steps_until(until)
        self.in_flight: collections.deque[tuple[RecordedStep, asyncio.Task[Observation]]] = (
            collections.deque()
        )
        # Whether the last step sent lets the next command be sent before its answer.
        self.followable = True
        self.renumbered: dict[int, int] = {}
        self.executed = self.matched = self.unverified = self.carried = 0
        self.divergence: Divergence | None = None

    def result(self) -> ReplayResult:
        return ReplayResult(
            len(self.steps),
            self.executed,
            self.matched,
            self.unverified,
            self.carried,
            self.divergence,
        )

    async def run(self, max_in_flight: int) -> None:
        recording, stream = self.recording, self.runtime.stream
        by_action = {step.action.id: step for step in self.steps}
        for event in recording.events:
            if self.until is not None and event.id > self.until:
                break
            if event.id in recording.replaced:
                continue
            step = by_action.get(event.id)
            if step is None:
                # Carried where it was: after the observations of every action before it.
                if not await self._answer(keep=0):
                    return
                cause = (
                    None if event.cause is None else self.renumbered.get(event.cause, event.cause)
                )
                source = event.source if event.source is not None else EventSource.AGENT
                stored = stream.append(fresh_copy(event, cause), source=source)
                self.renumbered[event.id] = stored.id
                self.carried += 1
                continue
            pipelined = max_in_flight > 1 and _plain_command(step.action)
            keep = max_in_flight - 1 if pipelined and self.followable else 0
            if not await self._answer(keep=keep):
                return
            action = fresh_copy(step.action, None)
            assert isinstance(action, Action)
            if self.map_workspace is not None:
                action = map_action_paths(action, self.map_workspace)
            task = asyncio.create_task(
                self.runtime.run(action), name=f"replay of recorded action {step.action.id}"
            )
            self.in_flight.append((step, task))
            self.followable = pipelined and _finished(step.observation)
        await self._answer(keep=0)

    async def _answer(self, *, keep: int) -> bool:
        """Take the answers of the oldest steps sent until ``keep`` are left unanswered.

        ``False`` once a divergence is found (the replay stops).
        """
        while len(self.in_flight) > keep:
            step, task = self.in_flight[0]
            # Cancelled here, the replay cancels this run with the others (see replay).
            actual = await task
            self.in_flight.popleft()
            if not self._check(step, actual):
                return False
        return True

    def _check(self, step: RecordedStep, actual: Observation) -> bool:
        """Count and report one answered step; ``False`` when it diverged."""
        if actual.cause is not None:
            self.renumbered[step.action.id] = actual.cause
        self.executed += 1
        outcome: bool | None = None
        if self.verify:
            if step.observation is None:
                self.unverified += 1
            else:
                mismatch = compare_observations(
                    step.action, step.observation, actual, workspace=self.map_workspace
                )
                outcome = mismatch is None
                if mismatch is None:
                    self.matched += 1
                else:
                    self.divergence = Divergence.of(step.action, step.observation, actual, mismatch)
        if self.on_step is not None:
            self.on_step(StepReport(self.executed - 1, len(self.steps), step, actual, outcome))
        if self.divergence is not None:
            logger.info("replay diverged at recorded event %d", self.divergence.observation_id)
            return False
        return True


def _plain_command(action: Action) -> bool:
    """A new shell command: the server runs it on the shell, after every one sent before it."""
    return (
        isinstance(action, CmdRunAction)
        and not action.is_input
        and bool(action.command.strip())
        and special_key(action.command) is None
    )


def _finished(observation: Observation | None) -> bool:
    """Whether the recorded command had finished (exit code known) when it was answered."""
    return isinstance(observation, CmdOutputObservation) and observation.exit_code != -1


async def _settle(
    in_flight: collections.deque[tuple[RecordedStep, asyncio.Task[Observation]]],
    *,
    cancel: bool,
) -> None:
    """Wait until every run still in flight has ended; ``cancel``: cancel them first.

    A cancelled run interrupts its action (see ``EventStreamRuntime.run``), which
    is bounded by the runtime's ``interrupt_grace``. If the wait itself is
    cancelled, the runs are cancelled and awaited all the same.
    """
    tasks = [task for _, task in in_flight]
    in_flight.clear()
    if not tasks:
        return
    try:
        if cancel:
            await _settle_cancelled(tasks)
        else:
            try:
                await asyncio.wait(tasks)
            except BaseException:
                await _settle_cancelled(tasks)
                raise
    finally:
        for task in tasks:
            if task.done() and not task.cancelled() and (exc := task.exception()) is not None:
                logger.debug("a replayed action past the end of the replay failed: %r", exc)


async def _settle_cancelled(tasks: list[asyncio.Task[Observation]]) -> None:
    for task in tasks:
        task.cancel()
    with anyio.CancelScope(shield=True):
        await asyncio.wait(tasks)


async def replay_recording(
    recording: Recording,
    *,
    verify: bool = False,
    local: bool = False,
    config: SandboxConfig | None = None,
    until: int | None = None,
    output_log: str | os.PathLike[str] | None = None,
    on_step: Callable[[StepReport], None] | None = None,
    on_ready: Callable[[EventStreamRuntime], None] | None = None,
    max_in_flight: int = MAX_IN_FLIGHT,
) -> ReplayResult:
    """Replay into a fresh sandbox: a :class:`~openhands_rt.local.LocalRuntime` with
    ``local``, else a :class:`~openhands_rt.docker_runtime.DockerRuntime` built from
    ``config.base_container_image``.

    The new events go to a new stream, durable when ``output_log`` is given (a
    path that must not hold a log with events already). With ``local`` the
    sandbox's directory stands in for ``/workspace``. ``on_ready`` is called
    once the sandbox is up. ``max_in_flight`` as for :func:`replay`.
    """
    config = config if config is not None else SandboxConfig()
    if output_log is not None:
        stream = await anyio.to_thread.run_sync(_open_output_log, output_log)
    else:
        stream = EventStream()
    async with stream:
        runtime: EventStreamRuntime
        if local:
            from openhands_rt.local import LocalRuntime

            runtime = LocalRuntime(stream, config)
        else:
            from openhands_rt.docker_runtime import DockerRuntime

            runtime = DockerRuntime(stream, config)
        async with runtime:
            workspace = getattr(runtime, "working_dir", None) if local else None
            if on_ready is not None:
                on_ready(runtime)
            return await replay(
                recording,
                runtime,
                verify=verify,
                until=until,
                map_workspace=workspace,
                on_step=on_step,
                max_in_flight=max_in_flight,
            )


def _open_output_log(path: str | os.PathLike[str]) -> EventStream:
    stream = EventStream(log_path=path)
    if len(stream):
        stream.close()
        raise ReplayError(
            f"{os.fspath(path)} already holds {len(stream)} events: give a new output log path"
        )
    return stream


async def replay_file(
    path: str | os.PathLike[str],
    *,
    verify: bool = False,
    local: bool = False,
    config: SandboxConfig | None = None,
    until: int | None = None,
    output_log: str | os.PathLike[str] | None = None,
    on_step: Callable[[StepReport], None] | None = None,
    max_in_flight: int = MAX_IN_FLIGHT,
) -> ReplayResult:
    """:func:`load_recording` then :func:`replay_recording`."""
    recording = await anyio.to_thread.run_sync(load_recording, path)
    return await replay_recording(
        recording,
        verify=verify,
        local=local,
        config=config,
        until=until,
        output_log=output_log,
        on_step=on_step,
        max_in_flight=max_in_flight,
    )
