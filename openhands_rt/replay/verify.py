"""Verifying a replay: normalising texts, comparing observations, reporting a divergence.

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
never compared. With a local sandbox standing in for ``/workspace`` the replayed
text is also tried with that directory written back (:mod:`.workspace`).

The first observation that does not match is a :class:`Divergence`: both
observations, the reason and a unified diff of the normalized texts.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Final, TypeGuard, assert_never, get_args

from events import (
    Action,
    CmdOutputObservation,
    CmdRunAction,
    ErrorObservation,
    FileEditAction,
    FileEditObservation,
    FileReadAction,
    FileReadObservation,
    FileWriteAction,
    FileWriteObservation,
    IPythonRunCellAction,
    IPythonRunCellObservation,
    Observation,
    RuntimeStatusObservation,
    SnapshotObservation,
)
from events.ansi import strip_ansi
from events.wire import RunnableAction
from openhands_rt.replay.workspace import unmap_workspace

__all__ = [
    "KnownObservation",
    "Mismatch",
    "compare_observations",
    "describe_action",
    "normalize_text",
]

#: Every observation of the event union (:data:`events.codec.AnyEvent`): the comparison
#: is an exhaustive match over these (a test keeps this equal to the union's observations).
KnownObservation = (
    CmdOutputObservation
    | IPythonRunCellObservation
    | FileReadObservation
    | FileWriteObservation
    | FileEditObservation
    | ErrorObservation
    | RuntimeStatusObservation
    | SnapshotObservation
)

_KNOWN_TYPES: Final = frozenset(get_args(KnownObservation))


def _known(observation: Observation) -> TypeGuard[KnownObservation]:
    """Whether ``observation`` is of the closed union (its exact type first: that is cheap)."""
    return type(observation) in _KNOWN_TYPES or isinstance(observation, KnownObservation)


_JUPYTER_TRAILER_RE: Final = re.compile(r"(?:\n?\[Jupyter [^\n]*\][ \t]*)+\Z")


def normalize_text(text: str) -> str:
    """The documented normalization: CRLF, ANSI/control characters, trailing whitespace."""
    text = strip_ansi(text.replace("\r\n", "\n"))
    return "\n".join(line.rstrip() for line in text.split("\n")).rstrip()


@dataclass(frozen=True)
class Mismatch:
    """Why two observations differ, and the texts to show as a diff."""

    reason: str
    expected: str
    actual: str


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
    if isinstance(actual, ErrorObservation) and not isinstance(expected, ErrorObservation):
        return _one_sided_error("recorded a success, replay failed", expected, actual)
    if not _known(expected):
        # Observation is an open base class: a type outside the event union (a test's,
        # a plugin's) has no known result to compare, only its type.
        return None if type(expected) is type(actual) else _type_mismatch(expected, actual)
    match expected:
        case ErrorObservation():
            return _compare_errors(expected, actual)
        case CmdOutputObservation():
            return _compare_command(expected, actual, workspace)
        case IPythonRunCellObservation():
            return _compare_ipython(expected, actual, workspace)
        case FileReadObservation():
            return _compare_content(expected, actual, workspace)
        case FileEditObservation() if _is_view(action):
            return _compare_content(expected, actual, workspace)
        case FileEditObservation():
            return _compare_edit(expected, actual, workspace)
        case FileWriteObservation():
            # A write's observation carries no result but success.
            return (
                None
                if isinstance(actual, FileWriteObservation)
                else _type_mismatch(expected, actual)
            )
        case RuntimeStatusObservation() | SnapshotObservation():
            # Not the result of an action: nothing to compare but the type.
            return None if type(actual) is type(expected) else _type_mismatch(expected, actual)
        case _:
            assert_never(expected)


def _compare_errors(expected: ErrorObservation, actual: Observation) -> Mismatch | None:
    if not isinstance(actual, ErrorObservation):
        return _one_sided_error("recorded an error, replay succeeded", expected, actual)
    if expected.error_id and actual.error_id and expected.error_id != actual.error_id:
        return Mismatch(
            f"error kind differs: recorded {expected.error_id!r}, replayed {actual.error_id!r}",
            expected.content,
            actual.content,
        )
    return None


def _compare_command(
    expected: CmdOutputObservation, actual: Observation, workspace: str | None
) -> Mismatch | None:
    if not isinstance(actual, CmdOutputObservation):
        return _type_mismatch(expected, actual)
    if expected.exit_code != actual.exit_code:
        return Mismatch(
            f"exit code differs: recorded {expected.exit_code}, replayed {actual.exit_code}",
            normalize_text(expected.content),
            _normalized_texts(expected.content, actual.content, workspace)[1],
        )
    same, shown = _texts_match(expected.content, actual.content, workspace)
    if not same:
        return Mismatch("command output differs", normalize_text(expected.content), shown)
    return None


def _compare_ipython(
    expected: IPythonRunCellObservation, actual: Observation, workspace: str | None
) -> Mismatch | None:
    if not isinstance(actual, IPythonRunCellObservation):
        return _type_mismatch(expected, actual)
    want = _strip_jupyter_trailer(normalize_text(expected.content))
    got = _strip_jupyter_trailer(normalize_text(actual.content))
    same, shown = _texts_match(want, got, workspace)
    if not same:
        return Mismatch("IPython output differs", want, shown)
    return None


def _compare_content(
    expected: FileReadObservation | FileEditObservation,
    actual: Observation,
    workspace: str | None,
) -> Mismatch | None:
    """A read or an editor ``view``: either observation type may carry the text."""
    if not isinstance(actual, FileReadObservation | FileEditObservation):
        return _type_mismatch(expected, actual)
    same, shown = _texts_match(expected.content, actual.content, workspace)
    if not same:
        return Mismatch("content differs", normalize_text(expected.content), shown)
    return None


def _compare_edit(
    expected: FileEditObservation, actual: Observation, workspace: str | None
) -> Mismatch | None:
    if not isinstance(actual, FileEditObservation):
        return _type_mismatch(expected, actual)
    if expected.new_content is None:
        return None
    if actual.new_content is None:
        return Mismatch(
            "the replayed edit reported no file content", normalize_text(expected.new_content), ""
        )
    same, shown = _texts_match(expected.new_content, actual.new_content, workspace)
    if not same:
        return Mismatch(
            "file content after the edit differs", normalize_text(expected.new_content), shown
        )
    return None


def _texts_match(expected: str, actual: str, workspace: str | None) -> tuple[bool, str]:
    """Equal after normalization (also with ``workspace`` written back as /workspace);
    when not, the replayed text as a report shows it."""
    if expected == actual:
        # Equal texts normalize alike: a matching replay mostly costs no normalization.
        return True, actual
    return _normalized_texts(expected, actual, workspace)


def _normalized_texts(expected: str, actual: str, workspace: str | None) -> tuple[bool, str]:
    """As :func:`_texts_match`, always with the normalized replayed text."""
    want, got = normalize_text(expected), normalize_text(actual)
    if want == got:
        return True, got
    if workspace is not None:
        unmapped = normalize_text(unmap_workspace(actual, workspace))
        return unmapped == want, unmapped
    return False, got


def _strip_jupyter_trailer(text: str) -> str:
    return _JUPYTER_TRAILER_RE.sub("", text)


def _is_view(action: Action) -> bool:
    return isinstance(action, FileEditAction) and action.command == "view"


def _kind(observation: Observation) -> str:
    return type(observation).__name__


def _content_of(observation: Observation) -> str:
    """The text an observation carries, for a report ("" when it carries none)."""
    if not _known(observation):
        content = getattr(observation, "content", None)  # an open subclass: it may have one
        return content if isinstance(content, str) else ""
    match observation:
        case (
            CmdOutputObservation()
            | IPythonRunCellObservation()
            | FileReadObservation()
            | FileWriteObservation()
            | FileEditObservation()
            | ErrorObservation()
        ):
            return observation.content
        case RuntimeStatusObservation() | SnapshotObservation():
            return ""  # a runtime fact, no text of a result
        case _:
            assert_never(observation)


def _one_sided_error(reason: str, expected: Observation, actual: Observation) -> Mismatch:
    return Mismatch(reason, _labelled(expected), _labelled(actual))


def _type_mismatch(expected: Observation, actual: Observation) -> Mismatch:
    return Mismatch(
        f"observation type differs: recorded {_kind(expected)}, replayed {_kind(actual)}",
        _labelled(expected),
        _labelled(actual),
    )


def _labelled(observation: Observation) -> str:
    return f"[{_kind(observation)}]\n{normalize_text(_content_of(observation))}"


# --------------------------------------------------------------------------- reporting


def describe_action(action: Action) -> str:
    """One line naming an action, for reports."""
    if not isinstance(action, RunnableAction):
        return type(action).__name__  # Action is an open base class
    match action:
        case CmdRunAction():
            return f"run {action.command!r}" + (" (input)" if action.is_input else "")
        case IPythonRunCellAction():
            return f"run_ipython {_clip(action.code)!r}"
        case FileReadAction():
            bounds = (
                ""
                if (action.start, action.end) == (0, -1)
                else f" lines {action.start}..{action.end}"
            )
            return f"read {action.path}{bounds}"
        case FileWriteAction():
            return f"write {action.path} ({len(action.content)} chars)"
        case FileEditAction():
            return f"edit {action.command} {action.path}"
        case _:
            assert_never(action)


def _clip(text: str, limit: int = 80) -> str:
    first = text.split("\n", 1)[0]
    return first if len(first) <= limit and "\n" not in text else first[:limit] + "…"


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

    @classmethod
    def of(
        cls, action: Action, expected: Observation, actual: Observation, mismatch: Mismatch
    ) -> Divergence:
        """The divergence of ``actual`` from the recorded ``action``/``expected`` pair."""
        return cls(
            action_id=action.id,
            observation_id=expected.id,
            action=action,
            expected=expected,
            actual=actual,
            reason=mismatch.reason,
            diff=unified_diff(mismatch.expected, mismatch.actual, expected.id, actual.id),
        )

    def describe(self) -> str:
        lines = [
            f"divergence at recorded event {self.observation_id} "
            f"(the observation of action {self.action_id}): {self.reason}",
            f"action {self.action_id}: {describe_action(self.action)}",
        ]
        lines.append(self.diff.rstrip("\n") if self.diff else "(the compared texts are equal)")
        return "\n".join(lines)


def unified_diff(expected: str, actual: str, observation_id: int, new_id: int) -> str:
    """The normalized texts as a unified diff, recorded → replayed ("" when equal)."""
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
