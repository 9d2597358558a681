"""Replaying recorded event logs: execute, verify (first divergence), serve-recorded.

Inputs (:func:`load_recording` tells them apart by their first bytes):

- our durable event log (:mod:`events.log`; it starts with the log magic), read
  with :func:`events.log.read_log`, which never changes the file (a torn tail is
  skipped with a warning);
- an OpenHands trajectory: a JSON list of OpenHands event dicts, loaded with
  :func:`events.compat.load_openhands_trajectory` (string ids, legacy editor
  encodings, extra fields and event types we do not run are all accepted).

Anything else raises :class:`ReplayInputError`.

Pairing: a *runnable* action is a shell, IPython, read, write or editor action
whose source is the agent or the user (or unknown); its recorded observation is
the first :class:`~events.Observation` whose ``cause`` is the action's id.
Recorded :class:`~events.CmdOutputChunk`\\ s of runnable actions and
:class:`~events.RuntimeStatusObservation`\\ s are dropped (the replay makes its
own). Every other event (OpenHands messages, finish, agent-state changes,
``null`` observations, ...) is *carried*: appended to the new stream as it was
(new id; its ``cause`` renumbered when it points at an event already replayed),
never executed.

Modes:

- **execute** (:func:`replay`, ``verify=False``): run every runnable action in
  order through a connected runtime, appending to its stream;
- **verify** (``verify=True``): as execute, and compare each new observation
  with the recorded one (below); stop at the first :class:`Divergence`;
- **serve-recorded** (:class:`RecordedRuntime`): no sandbox at all; each action
  an agent runs is matched against the next recorded action and answered with
  the recorded observation.

``until``: the replay stops after the recorded event with that id (events with
a larger id are neither executed nor carried).

Normalization (:func:`normalize_text`), applied to both sides of every
comparison: ``\\r\\n`` → ``\\n``; ANSI escape sequences and control characters
other than tab and newline removed; trailing whitespace trimmed on every line
and at the end. What is compared, by the recorded observation
(:func:`compare_observations`):

- an :class:`~events.ErrorObservation` on one side only is a divergence; two
  errors match when their ``error_id`` is equal or either is empty (error
  texts differ between implementations, so they are not compared);
- command output: the exit code and ``content``; ``metadata.prefix``/``suffix``
  (notes to the agent, e.g. the timeout texts), pid, hostname, user, working
  directory and interpreter are not compared;
- IPython output: ``content`` without its trailing ``[Jupyter ...]`` lines;
- a read, or an editor ``view`` (recorded as a read or an edit observation):
  ``content``;
- any other editor command: the resulting file content, ``new_content``, when it
  was recorded; otherwise success only. The editor's message and the diff are not
  compared (they are not byte-comparable across implementations);
- a write: success (the observation has no other result);
- any other pair of observation types that differ is a divergence.

Timestamps, ids, sources, durations and the ``extra`` of foreign formats are
never compared.

``/workspace`` with a local sandbox: OpenHands (and our Docker sandboxes) run
with the workspace at ``/workspace``, but a :class:`~openhands_rt.local.LocalRuntime`
works in a host directory. With ``map_workspace=DIR`` every path-carrying
action (read, write, edit ``path`` and a command's ``cwd``) whose path is
``/workspace`` or below it is rewritten to ``DIR``; command *text* is never
rewritten (it is opaque shell). In the comparison, a replayed text is also
tried with ``DIR`` written back as ``/workspace``, so listings and messages
that name the path still match; a log recorded in that same local directory
matches as it is.

Error tree::

    SandboxError
     └── ReplayError                            bad output log, and the root of:
          ├── ReplayInputError (also ValueError)  the file is neither format (or broken)
          └── ReplayMismatchError                 serve-recorded: not the next recorded action
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import anyio.to_thread
import msgspec

from events import (
    Action,
    CmdOutputChunk,
    CmdOutputObservation,
    CmdRunAction,
    ErrorObservation,
    Event,
    EventSource,
    EventStream,
    FileEditAction,
    FileEditObservation,
    FileReadAction,
    FileReadObservation,
    FileWriteAction,
    FileWriteObservation,
    IPythonRunCellAction,
    IPythonRunCellObservation,
    Observation,
    RuntimeStatus,
    RuntimeStatusObservation,
    Subscription,
)
from events.ansi import strip_ansi
from events.compat import load_openhands_trajectory
from events.log import MAGIC, NotALogError, read_log
from events.wire import ErrorId, is_runnable
from openhands_rt.config import SandboxConfig
from openhands_rt.errors import SandboxClosedError, SandboxError
from openhands_rt.runtime import EventStreamRuntime

__all__ = [
    "REPLAY_MISMATCH_ERROR_ID",
    "WORKSPACE",
    "Divergence",
    "Mismatch",
    "RecordedRuntime",
    "RecordedStep",
    "Recording",
    "RecordingFormat",
    "ReplayError",
    "ReplayInputError",
    "ReplayMismatchError",
    "ReplayResult",
    "StepReport",
    "action_fields",
    "compare_observations",
    "describe_action",
    "detect_format",
    "is_runnable",
    "load_recording",
    "map_action_paths",
    "normalize_text",
    "replay",
    "replay_file",
    "replay_recording",
    "same_action",
]

logger = logging.getLogger(__name__)

WORKSPACE: Final = "/workspace"
"""Where OpenHands and our Docker sandboxes keep the workspace."""

REPLAY_MISMATCH_ERROR_ID: Final = ErrorId.REPLAY_MISMATCH
"""``error_id`` of the ErrorObservation a :class:`RecordedRuntime` gives a divergent action."""

RecordingFormat = Literal["event_log", "openhands"]

_replace: Final = msgspec.structs.replace
_JUPYTER_TRAILER_RE: Final = re.compile(r"(?:\n?\[Jupyter [^\n]*\][ \t]*)+\Z")
# Fields that say who/when, not what: never part of an action's identity.
_ACTION_METADATA: Final = frozenset({"id", "timestamp", "source", "cause", "extra", "thought"})


class ReplayError(SandboxError):
    """Root of the errors raised by :mod:`openhands_rt.replay` (tree in the module docstring)."""


class ReplayInputError(ReplayError, ValueError):
    """The input is neither an event log nor an OpenHands trajectory (or is broken)."""


class ReplayMismatchError(ReplayError):
    """An action given to a :class:`RecordedRuntime` is not the next recorded action.

    ``expected`` is that recorded action (``None`` when the recording has no
    more actions) and ``actual`` the stored action that was given.
    """

    def __init__(self, message: str, *, expected: Action | None, actual: Action) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual

    @property
    def event_id(self) -> int | None:
        """The recorded id of the expected action."""
        return None if self.expected is None else self.expected.id


# --------------------------------------------------------------------------- loading


@dataclass(frozen=True)
class RecordedStep:
    """A runnable recorded action and its recorded observation (``None``: none was recorded)."""

    action: Action
    observation: Observation | None


@dataclass(frozen=True)
class Recording:
    """A loaded recording: every event in order, and the runnable steps among them."""

    events: list[Event]
    format: RecordingFormat
    steps: list[RecordedStep] = field(init=False)
    replaced: frozenset[int] = field(init=False)
    """Ids of recorded events a replay makes anew (observations, chunks, runtime status)."""
    _chunks: dict[int, list[CmdOutputChunk]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        actions: list[Action] = []
        runnable: set[int] = set()
        observations: dict[int, Observation] = {}
        chunks: dict[int, list[CmdOutputChunk]] = {}
        replaced: set[int] = set()
        for event in self.events:
            if is_runnable(event):
                assert isinstance(event, Action)
                actions.append(event)
                runnable.add(event.id)
            elif isinstance(event, RuntimeStatusObservation):
                replaced.add(event.id)
            elif isinstance(event, Observation | CmdOutputChunk) and event.cause in runnable:
                replaced.add(event.id)
                if isinstance(event, CmdOutputChunk):
                    chunks.setdefault(event.cause, []).append(event)
                elif event.cause not in observations:
                    observations[event.cause] = event
        steps = [RecordedStep(action, observations.get(action.id)) for action in actions]
        object.__setattr__(self, "steps", steps)
        object.__setattr__(self, "replaced", frozenset(replaced))
        object.__setattr__(self, "_chunks", chunks)

    def chunks_of(self, action_id: int) -> list[CmdOutputChunk]:
        """The recorded output chunks of the action ``action_id``, in order."""
        return list(self._chunks.get(action_id, ()))


def detect_format(head: bytes) -> RecordingFormat:
    """Which kind of recording starts with ``head`` (a few hundred bytes suffice).

    Raises :class:`ReplayInputError` when it is neither.
    """
    if head.startswith(MAGIC):
        return "event_log"
    text = head.lstrip(b"\xef\xbb\xbf").lstrip()
    if text.startswith(b"["):
        return "openhands"
    what = "an empty file, " if not head else ""
    raise ReplayInputError(
        f"{what}neither an openhands-rt event log (no log header) "
        "nor an OpenHands trajectory (a JSON list of events)"
    )


def load_recording(path: str | os.PathLike[str]) -> Recording:
    """Load an event log or an OpenHands trajectory (blocking file I/O: use a thread)."""
    try:
        with open(path, "rb") as file:
            head = file.read(4096)
    except OSError as exc:
        raise ReplayInputError(f"cannot read {os.fspath(path)}: {exc.strerror or exc}") from exc
    try:
        kind = detect_format(head)
    except ReplayInputError as exc:
        raise ReplayInputError(f"{os.fspath(path)}: {exc}") from None
    try:
        events = read_log(path) if kind == "event_log" else load_openhands_trajectory(path)
    except NotALogError as exc:
        raise ReplayInputError(f"{os.fspath(path)}: {exc}") from exc
    except ValueError as exc:
        raise ReplayInputError(
            f"{os.fspath(path)}: not a valid OpenHands trajectory: {exc}"
        ) from exc
    except OSError as exc:
        raise ReplayInputError(f"cannot read {os.fspath(path)}: {exc.strerror or exc}") from exc
    return Recording(events, kind)


# --------------------------------------------------------------------------- comparing


def normalize_text(text: str) -> str:
    """The documented normalization: CRLF, ANSI/control characters, trailing whitespace."""
    text = strip_ansi(text.replace("\r\n", "\n"))
    return "\n".join(line.rstrip() for line in text.split("\n")).rstrip()


def _strip_jupyter_trailer(text: str) -> str:
    return _JUPYTER_TRAILER_RE.sub("", text)


@dataclass(frozen=True)
class Mismatch:
    """Why two observations differ, and the texts to show as a diff."""

    reason: str
    expected: str
    actual: str


def _is_view(action: Action) -> bool:
    return isinstance(action, FileEditAction) and action.command == "view"


def _content_of(observation: Observation) -> str | None:
    content = getattr(observation, "content", None)
    return content if isinstance(content, str) else None


def _texts_match(expected: str, actual: str, workspace: str | None) -> tuple[bool, str]:
    """Equal after normalization (also with ``workspace`` written back as /workspace)."""
    want, got = normalize_text(expected), normalize_text(actual)
    if want == got:
        return True, got
    if workspace is not None:
        unmapped = normalize_text(_unmap_workspace(actual, workspace))
        if unmapped == want:
            return True, unmapped
        return False, unmapped
    return False, got


def _kind(observation: Observation) -> str:
    return type(observation).__name__


def compare_observations(
    action: Action,
    expected: Observation,
    actual: Observation,
    *,
    workspace: str | None = None,
) -> Mismatch | None:
    """``None`` when ``actual`` matches the recorded ``expected`` (see the module docstring).

    ``workspace``: the local directory that stood in for ``/workspace``.
    """
    if isinstance(expected, ErrorObservation) and isinstance(actual, ErrorObservation):
        if expected.error_id and actual.error_id and expected.error_id != actual.error_id:
            return Mismatch(
                f"error kind differs: recorded {expected.error_id!r}, replayed {actual.error_id!r}",
                expected.content,
                actual.content,
            )
        return None
    if isinstance(expected, ErrorObservation) or isinstance(actual, ErrorObservation):
        return Mismatch(
            "recorded an error, replay succeeded"
            if isinstance(expected, ErrorObservation)
            else "recorded a success, replay failed",
            f"[{_kind(expected)}]\n{normalize_text(_content_of(expected) or '')}",
            f"[{_kind(actual)}]\n{normalize_text(_content_of(actual) or '')}",
        )

    if isinstance(expected, CmdOutputObservation):
        if not isinstance(actual, CmdOutputObservation):
            return _type_mismatch(expected, actual)
        same, shown = _texts_match(expected.content, actual.content, workspace)
        if expected.exit_code != actual.exit_code:
            return Mismatch(
                f"exit code differs: recorded {expected.exit_code}, replayed {actual.exit_code}",
                normalize_text(expected.content),
                shown,
            )
        if not same:
            return Mismatch("command output differs", normalize_text(expected.content), shown)
        return None

    if isinstance(expected, IPythonRunCellObservation):
        if not isinstance(actual, IPythonRunCellObservation):
            return _type_mismatch(expected, actual)
        want = _strip_jupyter_trailer(normalize_text(expected.content))
        got = _strip_jupyter_trailer(normalize_text(actual.content))
        same, shown = _texts_match(want, got, workspace)
        if not same:
            return Mismatch("IPython output differs", want, shown)
        return None

    read_like = (FileReadObservation, FileEditObservation)
    if isinstance(expected, FileReadObservation) or (
        isinstance(expected, FileEditObservation) and _is_view(action)
    ):
        if not isinstance(actual, read_like):
            return _type_mismatch(expected, actual)
        same, shown = _texts_match(expected.content, actual.content, workspace)
        if not same:
            return Mismatch("content differs", normalize_text(expected.content), shown)
        return None

    if isinstance(expected, FileEditObservation):
        if not isinstance(actual, FileEditObservation):
            return _type_mismatch(expected, actual)
        if expected.new_content is None:
            return None
        if actual.new_content is None:
            return Mismatch(
                "the replayed edit reported no file content",
                normalize_text(expected.new_content),
                "",
            )
        same, shown = _texts_match(expected.new_content, actual.new_content, workspace)
        if not same:
            return Mismatch(
                "file content after the edit differs", normalize_text(expected.new_content), shown
            )
        return None

    if isinstance(expected, FileWriteObservation):
        if not isinstance(actual, FileWriteObservation):
            return _type_mismatch(expected, actual)
        return None

    if type(expected) is not type(actual):
        return _type_mismatch(expected, actual)
    # An observation kind a sandbox action does not produce: nothing more to compare.
    return None


def _type_mismatch(expected: Observation, actual: Observation) -> Mismatch:
    return Mismatch(
        f"observation type differs: recorded {_kind(expected)}, replayed {_kind(actual)}",
        f"[{_kind(expected)}]\n{normalize_text(_content_of(expected) or '')}",
        f"[{_kind(actual)}]\n{normalize_text(_content_of(actual) or '')}",
    )


def describe_action(action: Action) -> str:
    """One line naming an action, for reports."""
    if isinstance(action, CmdRunAction):
        text = f"run {action.command!r}"
        if action.is_input:
            text += " (input)"
        return text
    if isinstance(action, IPythonRunCellAction):
        return f"run_ipython {_clip(action.code)!r}"
    if isinstance(action, FileReadAction):
        bounds = (
            "" if (action.start, action.end) == (0, -1) else f" lines {action.start}..{action.end}"
        )
        return f"read {action.path}{bounds}"
    if isinstance(action, FileWriteAction):
        return f"write {action.path} ({len(action.content)} chars)"
    if isinstance(action, FileEditAction):
        return f"edit {action.command} {action.path}"
    return type(action).__name__


def _clip(text: str, limit: int = 80) -> str:
    first = text.split("\n", 1)[0]
    return first if len(first) <= limit and "\n" not in text else first[:limit] + "…"


# --------------------------------------------------------------------------- /workspace


def _maps(path: str) -> bool:
    return path == WORKSPACE or path.startswith(WORKSPACE + "/")


def _map_path(path: str, workspace: str) -> str:
    return workspace + path[len(WORKSPACE) :] if _maps(path) else path


def map_action_paths(action: Action, workspace: str) -> Action:
    """``action`` with a path at or under ``/workspace`` moved under ``workspace``."""
    if isinstance(action, FileReadAction | FileWriteAction | FileEditAction):
        if _maps(action.path):
            return _replace(action, path=_map_path(action.path, workspace))
    elif isinstance(action, CmdRunAction) and action.cwd is not None and _maps(action.cwd):
        return _replace(action, cwd=_map_path(action.cwd, workspace))
    return action


def _unmap_workspace(text: str, workspace: str) -> str:
    text = _workspace_pattern(workspace).sub(WORKSPACE, text)
    real = os.path.realpath(workspace)
    if real != workspace:
        text = _workspace_pattern(real).sub(WORKSPACE, text)
    return text


def _workspace_pattern(workspace: str) -> re.Pattern[str]:
    # Only the whole directory name: /tmp/ws must not match inside /tmp/ws2.
    return re.compile(re.escape(workspace.rstrip("/")) + r"(?![\w.-])")


# --------------------------------------------------------------------------- replaying


@dataclass(frozen=True)
class Divergence:
    """The first replayed observation that does not match the recording."""

    action_id: int
    """The recorded id of the action whose result diverged."""
    observation_id: int
    """The recorded id of the observation that did not match."""
    action: Action
    expected: Observation
    actual: Observation
    reason: str
    diff: str
    """A unified diff of the normalized texts, recorded → replayed ("" when they are equal)."""

    def describe(self) -> str:
        lines = [
            f"divergence at recorded event {self.observation_id} "
            f"(the observation of action {self.action_id}): {self.reason}",
            f"action {self.action_id}: {describe_action(self.action)}",
        ]
        lines.append(self.diff.rstrip("\n") if self.diff else "(the compared texts are equal)")
        return "\n".join(lines)


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


def _unified_diff(expected: str, actual: str, observation_id: int, new_id: int) -> str:
    if expected == actual:
        return ""
    return "".join(
        difflib.unified_diff(
            (expected + "\n").splitlines(keepends=True),
            (actual + "\n").splitlines(keepends=True),
            fromfile=f"recorded (event {observation_id})",
            tofile=f"replayed (event {new_id})",
        )
    )


def _fresh(event: Event, cause: int | None) -> Event:
    return _replace(event, id=-1, timestamp=None, source=None, cause=cause)


def _steps_until(recording: Recording, until: int | None) -> list[RecordedStep]:
    return [s for s in recording.steps if until is None or s.action.id <= until]


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
    ``/workspace`` (see the module docstring).
    """
    stream = runtime.stream
    steps = _steps_until(recording, until)
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
            stored = stream.append(_fresh(event, cause), source=source)
            renumbered[event.id] = stored.id
            carried += 1
            continue
        action = _fresh(step.action, None)
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
                    divergence = Divergence(
                        action_id=step.action.id,
                        observation_id=step.observation.id,
                        action=step.action,
                        expected=step.observation,
                        actual=actual,
                        reason=mismatch.reason,
                        diff=_unified_diff(
                            mismatch.expected, mismatch.actual, step.observation.id, actual.id
                        ),
                    )
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


# --------------------------------------------------------------------------- serve-recorded


def action_fields(action: Action) -> dict[str, Any]:
    """What an action asks for: its fields without metadata, ``extra`` and ``thought``."""
    fields = msgspec.structs.asdict(action)
    return {k: v for k, v in fields.items() if k not in _ACTION_METADATA}


def same_action(recorded: Action, action: Action) -> bool:
    """Whether ``action`` asks for what ``recorded`` asked (see :func:`action_fields`)."""
    return type(recorded) is type(action) and action_fields(recorded) == action_fields(action)


class RecordedRuntime(EventStreamRuntime):
    """A runtime with no sandbox: answers each action with the recorded observation.

    The actions must come in the recorded order: each one is compared with the
    next recorded runnable action (:func:`same_action`: type and every field
    but metadata, ``extra`` and ``thought``). A match gets the recorded
    chunks and observation, appended to the stream with ``cause`` = the new
    action's id. A divergent action gets an :class:`~events.ErrorObservation`
    (``error_id`` :data:`REPLAY_MISMATCH_ERROR_ID`) naming the recorded event,
    and :meth:`run` raises :class:`ReplayMismatchError`; the recording does not
    advance, so the right action can still follow. Like every runtime it also
    answers actions appended to the stream by anyone else.
    """

    def __init__(
        self,
        stream: EventStream,
        recording: Recording,
        *,
        session_id: str | None = None,
    ) -> None:
        super().__init__(stream, None, session_id=session_id)
        self.recording = recording
        self._steps: Sequence[RecordedStep] = recording.steps
        self._position = 0
        self._answered: set[int] = set()
        self._feed: Subscription | None = None

    @property
    def position(self) -> int:
        """How many recorded actions have been served."""
        return self._position

    @property
    def remaining(self) -> int:
        return len(self._steps) - self._position

    async def connect(self) -> None:
        if self._closed:
            raise SandboxClosedError("this runtime was closed; make a new one")
        if self._connected:
            return
        self.report_status(RuntimeStatus.STARTING, f"serving recorded session {self.session_id}")
        self._feed = self.stream.subscribe(
            self._on_stream_event, subscriber_id=f"recorded-runtime-{self.client_id}"
        )
        self._connected = True
        self.report_status(
            RuntimeStatus.READY, f"recorded session {self.session_id}: {len(self._steps)} actions"
        )

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._feed is not None:
            self._feed.unsubscribe()
            self._feed = None
        self._connected = False
        self.report_status(RuntimeStatus.CLOSED, f"recorded session {self.session_id} closed")

    async def run(self, action: Action) -> Observation:
        """Append ``action``, answer it from the recording, return the stored observation.

        Raises :class:`ReplayMismatchError` when it is not the next recorded action.
        """
        if self._closed or not self._connected:
            raise SandboxClosedError("the runtime is not connected")
        stored = self.stream.append(action, source=EventSource.AGENT)
        assert isinstance(stored, Action)
        self._answered.add(stored.id)
        observation, error = self._answer(stored)
        if error is not None:
            raise error
        return observation

    async def _on_stream_event(self, event: Event) -> None:
        if not is_runnable(event):
            return
        if event.id in self._answered:
            self._answered.discard(event.id)
            return
        assert isinstance(event, Action)
        self._answer(event)

    def _answer(self, action: Action) -> tuple[Observation, ReplayMismatchError | None]:
        expected = self._steps[self._position] if self._position < len(self._steps) else None
        if expected is None or not same_action(expected.action, action):
            error = self._mismatch(expected, action)
            observation = self.stream.append(
                ErrorObservation(str(error), error_id=REPLAY_MISMATCH_ERROR_ID, cause=action.id),
                source=EventSource.ENVIRONMENT,
            )
            assert isinstance(observation, Observation)
            return observation, error
        self._position += 1
        if expected.observation is None:
            missing = ErrorObservation(
                f"recorded event {expected.action.id} has no recorded observation to serve",
                error_id=REPLAY_MISMATCH_ERROR_ID,
                cause=action.id,
            )
            refusal = self.stream.append(missing, source=EventSource.ENVIRONMENT)
            return refusal, None
        for chunk in self.recording.chunks_of(expected.action.id):
            self.stream.append(_fresh(chunk, action.id), source=EventSource.ENVIRONMENT)
        stored = self.stream.append(
            _fresh(expected.observation, action.id), source=EventSource.ENVIRONMENT
        )
        assert isinstance(stored, Observation)
        return stored, None

    def _mismatch(self, expected: RecordedStep | None, action: Action) -> ReplayMismatchError:
        if expected is None:
            message = (
                f"action {action.id} ({describe_action(action)}) is not in the recording: "
                f"all {len(self._steps)} recorded actions were served"
            )
            return ReplayMismatchError(message, expected=None, actual=action)
        recorded = expected.action
        message = (
            f"action {action.id} ({describe_action(action)}) does not match recorded event "
            f"{recorded.id} ({describe_action(recorded)})"
        )
        differing = _differing_fields(recorded, action)
        if differing:
            message += f"; differing fields: {', '.join(differing)}"
        return ReplayMismatchError(message, expected=recorded, actual=action)


def _differing_fields(recorded: Action, action: Action) -> list[str]:
    if type(recorded) is not type(action):
        return [f"type ({type(recorded).__name__} recorded, {type(action).__name__} given)"]
    want: Mapping[str, Any] = action_fields(recorded)
    got: Mapping[str, Any] = action_fields(action)
    return [name for name in want if want[name] != got.get(name)]
