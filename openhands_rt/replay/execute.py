"""Re-running a recording's actions on a runtime: execute and verify modes.

- **execute** (:func:`replay`, ``verify=False``): run every runnable action in
  order through a connected runtime, appending to its stream; every carried
  event (see :mod:`.recording`) is appended as it was, with a new id and its
  ``cause`` renumbered when it points at an event already replayed;
- **verify** (``verify=True``): as execute, and compare each new observation
  with the recorded one (:mod:`.verify`); stop at the first
  :class:`~openhands_rt.replay.Divergence`.

``until``: the replay stops after the recorded event with that id (events with
a larger id are neither executed nor carried). :func:`replay_recording` and
:func:`replay_file` make the sandbox (local or Docker) and its stream, own them
for the replay (``async with``) and close them after.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass

import anyio.to_thread

from events import Action, EventSource, EventStream, Observation
from openhands_rt.config import SandboxConfig
from openhands_rt.replay.errors import ReplayError
from openhands_rt.replay.recording import RecordedStep, Recording, fresh_copy, load_recording
from openhands_rt.replay.verify import Divergence, compare_observations
from openhands_rt.replay.workspace import map_action_paths
from openhands_rt.runtime import EventStreamRuntime

__all__ = ["ReplayResult", "StepReport", "replay", "replay_file", "replay_recording"]

logger = logging.getLogger(__name__)


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
) -> ReplayResult:
    """Re-run the recording's runnable actions through a connected ``runtime``.

    New events go to ``runtime.stream``; non-runnable events are carried. With
    ``verify`` each observation is compared with the recorded one and the replay
    stops at the first divergence. ``until``: stop after the recorded event with
    that id. ``map_workspace``: the local directory standing in for
    ``/workspace`` (see :mod:`openhands_rt.replay.workspace`).
    """
    stream = runtime.stream
    steps = recording.steps_until(until)
    by_action = {step.action.id: step for step in steps}
    renumbered: dict[int, int] = {}
    executed = matched = unverified = carried = 0
    for event in recording.events:
        if until is not None and event.id > until:
            break
        if event.id in recording.replaced:
            continue
        step = by_action.get(event.id)
        if step is None:
            cause = None if event.cause is None else renumbered.get(event.cause, event.cause)
            source = event.source if event.source is not None else EventSource.AGENT
            stored = stream.append(fresh_copy(event, cause), source=source)
            renumbered[event.id] = stored.id
            carried += 1
            continue
        action = fresh_copy(step.action, None)
        assert isinstance(action, Action)
        if map_workspace is not None:
            action = map_action_paths(action, map_workspace)
        actual = await runtime.run(action)
        if actual.cause is not None:
            renumbered[event.id] = actual.cause
        executed += 1
        outcome: bool | None = None
        divergence: Divergence | None = None
        if verify:
            if step.observation is None:
                unverified += 1
            else:
                mismatch = compare_observations(
                    step.action, step.observation, actual, workspace=map_workspace
                )
                outcome = mismatch is None
                if mismatch is None:
                    matched += 1
                else:
                    divergence = Divergence.of(step.action, step.observation, actual, mismatch)
        if on_step is not None:
            on_step(StepReport(executed - 1, len(steps), step, actual, outcome))
        if divergence is not None:
            logger.info("replay diverged at recorded event %d", divergence.observation_id)
            return ReplayResult(len(steps), executed, matched, unverified, carried, divergence)
    return ReplayResult(len(steps), executed, matched, unverified, carried)


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
) -> ReplayResult:
    """Replay into a fresh sandbox: a :class:`~openhands_rt.local.LocalRuntime` with
    ``local``, else a :class:`~openhands_rt.docker_runtime.DockerRuntime` built from
    ``config.base_container_image``.

    The new events go to a new stream, durable when ``output_log`` is given (a
    path that must not hold a log with events already). With ``local`` the
    sandbox's directory stands in for ``/workspace``. ``on_ready`` is called
    once the sandbox is up.
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
    )
