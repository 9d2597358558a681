"""What a fork at event N does, decided from the source's events alone (pure: no I/O).

Given the source's history and ``at_event`` (N), :func:`plan_fork` says:

- which events the fork's stream starts with: copies of 0..N (N = -1: none);
- from which snapshot the sandbox starts (:func:`latest_snapshot`: the latest
  one at or before N that this engine still has), or from nothing;
- which recorded actions are re-executed, in order: the runnable actions
  (:func:`events.wire.is_runnable`; never status events, chunks, observations or
  the environment's own actions) after that snapshot, up to N, that some
  observation up to N answers; each comes with the observation to verify it
  against (:class:`~openhands_rt.replay.RecordedStep`);
- which actions are *pending*: runnable actions up to N that no observation up
  to N answers (typically N itself, an action whose answer came after it). They
  are not re-executed: the fork's stream holds them unanswered, so the fork's
  runtime sends them once it serves that stream (as any runtime does with the
  unanswered actions of a stream it connects to) and their observations land in
  the fork's stream, after the copies. Re-executing them as well would run
  them twice.
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from dataclasses import dataclass

from events import Action, Event, Observation, SnapshotObservation
from openhands_rt.errors import SandboxError
from openhands_rt.replay.recording import RecordedStep, Recording

__all__ = ["ForkError", "ForkPlan", "SnapshotChoice", "latest_snapshot", "plan_fork"]


class ForkError(SandboxError, ValueError):
    """A fork that cannot be made: an event id the source does not have, a source that is
    not an event log, an output log that already holds events."""


@dataclass(frozen=True)
class SnapshotChoice:
    """The snapshot a fork starts from: the recorded event that names it, and its id."""

    event_id: int
    snapshot_id: str


@dataclass(frozen=True)
class ForkPlan:
    """What a fork at ``at_event`` copies, restores, re-executes and leaves pending."""

    at_event: int
    events: list[Event]
    """The source's events 0..at_event: the fork's stream starts with these."""
    snapshot: SnapshotChoice | None
    steps: list[RecordedStep]
    """The actions to re-execute, in id order, each with its recorded observation."""
    pending: list[Action]
    """Runnable actions up to ``at_event`` that nothing up to it answers."""


# ------------------------------------------------------------------ the snapshot path


def snapshot_id_of(event: Event) -> str | None:
    """The snapshot ``event`` records (``None``: it records none)."""
    return event.snapshot_id if isinstance(event, SnapshotObservation) else None


def latest_snapshot(
    events: Sequence[Event], at_event: int, usable: Container[str]
) -> SnapshotChoice | None:
    """The latest snapshot event at or before ``at_event`` whose snapshot is ``usable``.

    A snapshot holds the sandbox as it was once every action before its event
    was answered, so the actions after it are all a fork has to re-execute.
    One that is gone (removed, or taken on another engine) is skipped for an
    earlier one; with none, the fork starts from a fresh sandbox.
    """
    for event in reversed(events[: at_event + 1]):
        snapshot_id = snapshot_id_of(event)
        if snapshot_id is not None and snapshot_id in usable:
            return SnapshotChoice(event.id, snapshot_id)
    return None


# ------------------------------------------------------------------ the plan


def check_at_event(length: int, at_event: int, *, where: str = "the source") -> None:
    """Raise :class:`ForkError` unless ``at_event`` is -1 or an id of ``length`` events."""
    if isinstance(at_event, bool) or not isinstance(at_event, int):
        raise ForkError(f"at_event must be an event id (an integer), not {at_event!r}")
    if at_event < -1:
        raise ForkError(
            f"at_event must be -1 (before the first event) or an event id, not {at_event}"
        )
    if at_event >= length:
        held = f"events 0..{length - 1}" if length else "no events"
        raise ForkError(f"{where} holds {held}: there is no event {at_event} to fork at")


def plan_fork(
    events: Sequence[Event], at_event: int, usable_snapshots: Container[str] = frozenset()
) -> ForkPlan:
    """Decide a fork of ``events`` (a whole history, ids 0, 1, 2, ...) at ``at_event``.

    ``usable_snapshots``: the snapshot ids this engine can start a sandbox
    from. Raises :class:`ForkError` for an ``at_event`` below -1 or past the
    last event, or a history whose ids are not 0, 1, 2, ...
    """
    check_at_event(len(events), at_event)
    prefix = list(events[: at_event + 1])
    for position, event in enumerate(prefix):
        if event.id != position:
            raise ForkError(
                f"the source's event at position {position} has id {event.id}: "
                "a fork needs the gapless ids of an event stream"
            )
    snapshot = latest_snapshot(prefix, at_event, usable_snapshots)
    answered = {e.cause for e in prefix if isinstance(e, Observation) and e.cause is not None}
    after = -1 if snapshot is None else snapshot.event_id
    steps: list[RecordedStep] = []
    pending: list[Action] = []
    for step in Recording(prefix, "event_log").steps:
        if step.action.id not in answered:
            pending.append(step.action)
        elif step.action.id > after:
            steps.append(step)
    return ForkPlan(at_event, prefix, snapshot, steps, pending)
