"""The event vocabulary: every action, observation and runtime event.

Every event is a frozen :class:`msgspec.Struct` in one tagged union (tag field
``"type"``). Tags are part of the wire format and of every durable log ever
written: they never change, even when a class is renamed. A new field always
gets a default; a field's type never changes.

Event metadata (``id``, ``timestamp``, ``source``, ``cause``) is keyword-only
and filled in by :class:`events.EventStream` when the event is appended;
``id`` is ``-1`` before that.

Validation happens at construction (``__post_init__``) and therefore also on
decode, where msgspec turns the ``ValueError`` into a validation error.
"""

import enum
import math
from typing import Any, Final, Literal

import msgspec

__all__ = [
    "EDITOR_COMMANDS",
    "Action",
    "CmdOutputChunk",
    "CmdOutputMetadata",
    "CmdOutputObservation",
    "CmdRunAction",
    "ErrorObservation",
    "Event",
    "EventSource",
    "FileEditAction",
    "FileEditObservation",
    "FileReadAction",
    "FileReadObservation",
    "FileWriteAction",
    "FileWriteObservation",
    "IPythonRunCellAction",
    "IPythonRunCellObservation",
    "Observation",
    "OpenHandsEvent",
    "RuntimeStatus",
    "RuntimeStatusObservation",
    "SnapshotObservation",
]


class _StrEnum(str, enum.Enum):
    # enum.StrEnum is 3.11+; the in-container packages also run on 3.10.
    def __str__(self) -> str:
        return str(self.value)


class EventSource(_StrEnum):
    """Who produced an event."""

    AGENT = "agent"
    USER = "user"
    ENVIRONMENT = "environment"


class RuntimeStatus(_StrEnum):
    """Lifecycle states reported by :class:`RuntimeStatusObservation`."""

    BUILDING = "building"
    STARTING = "starting"
    READY = "ready"
    ERROR = "error"
    CLOSED = "closed"


EDITOR_COMMANDS: Final = frozenset({"view", "create", "str_replace", "insert", "undo_edit"})


def _check_timeout(event: "Event", timeout: float | None) -> None:
    if timeout is None:
        return
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise ValueError(f"timeout must be a number of seconds, got {timeout!r}")
    if not math.isfinite(timeout) or timeout < 0:
        raise ValueError(f"timeout must be finite and >= 0 seconds, got {timeout!r}")
    if isinstance(timeout, int):
        # Stored as float so that encode -> decode -> encode gives the same bytes.
        msgspec.structs.force_setattr(event, "timeout", float(timeout))


class Event(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="type", omit_defaults=True, gc=False
):
    """Base of every event. ``id`` is -1 until the stream assigns one.

    ``extra`` keeps fields of a foreign format that we do not model (e.g. the
    ``tool_call_metadata`` or ``llm_metrics`` of an OpenHands event), so that
    converting back loses nothing. It is never interpreted by the runtime.
    """

    id: int = -1
    timestamp: str | None = None
    source: EventSource | None = None
    cause: int | None = None
    extra: dict[str, Any] | None = None


class Action(Event, frozen=True, kw_only=True):
    """Something an agent or user asks the sandbox to do."""


class Observation(Event, frozen=True, kw_only=True):
    """The result of an action (``cause`` = the action's id) or a runtime fact."""


# --------------------------------------------------------------------------- actions


class CmdRunAction(Action, frozen=True, tag="cmd_run"):
    """Run ``command`` in the session's persistent bash.

    ``is_input=True`` sends the text to the running process instead; the
    texts ``C-c``, ``C-d`` and ``C-z`` are sent as those control keys.
    ``timeout`` is the hard timeout in seconds; ``blocking=True`` disables the
    soft (no-new-output) timeout.
    """

    command: str
    is_input: bool = False
    blocking: bool = False
    timeout: float | None = None
    cwd: str | None = None
    hidden: bool = False
    thought: str = ""

    def __post_init__(self) -> None:
        _check_timeout(self, self.timeout)


class IPythonRunCellAction(Action, frozen=True, tag="ipython_run_cell"):
    """Run ``code`` in the sandbox's IPython kernel (the ``jupyter`` plugin)."""

    code: str
    timeout: float | None = None
    thought: str = ""

    def __post_init__(self) -> None:
        _check_timeout(self, self.timeout)


class FileReadAction(Action, frozen=True, tag="file_read"):
    """Read a file; ``start``/``end`` are 0-based line bounds (``end=-1``: to the end)."""

    path: str
    start: int = 0
    end: int = -1
    view_range: list[int] | None = None
    thought: str = ""


class FileWriteAction(Action, frozen=True, tag="file_write"):
    """Write ``content`` to a file (replacing lines ``start``..``end`` when given)."""

    path: str
    content: str
    start: int = 0
    end: int = -1
    thought: str = ""


class FileEditAction(Action, frozen=True, tag="file_edit"):
    """An OpenHands ``str_replace_editor`` call."""

    path: str
    command: str
    file_text: str | None = None
    old_str: str | None = None
    new_str: str | None = None
    insert_line: int | None = None
    view_range: list[int] | None = None
    thought: str = ""

    def __post_init__(self) -> None:
        if self.command not in EDITOR_COMMANDS:
            raise ValueError(
                f"FileEditAction.command must be one of {sorted(EDITOR_COMMANDS)}, "
                f"got {self.command!r}"
            )
        # A missing parameter (file_text for create, old_str for str_replace, new_str or
        # insert_line for insert) is not refused here: as in OpenHands, the editor answers
        # it ("Parameter `file_text` is required for command: create."), which is what an
        # agent trained on OpenHands reads.
        if self.view_range is not None and len(self.view_range) != 2:
            raise ValueError(f"view_range must be [start, end], got {self.view_range!r}")


# --------------------------------------------------------------------------- observations


class CmdOutputMetadata(msgspec.Struct, frozen=True, kw_only=True):
    """What the shell knew when a command returned. ``exit_code`` -1: still running."""

    exit_code: int = -1
    pid: int = -1
    username: str | None = None
    hostname: str | None = None
    working_dir: str | None = None
    py_interpreter_path: str | None = None
    prefix: str = ""
    suffix: str = ""


class CmdOutputObservation(Observation, frozen=True, tag="cmd_output"):
    """What a command printed; every note to the agent is in ``metadata.prefix/suffix``."""

    content: str
    command: str
    metadata: CmdOutputMetadata = msgspec.field(default_factory=CmdOutputMetadata)
    hidden: bool = False

    @property
    def exit_code(self) -> int:
        return self.metadata.exit_code

    @property
    def message(self) -> str:
        return f"Command `{self.command}` executed with exit code {self.exit_code}."

    def to_agent_text(self) -> str:
        """The text an OpenHands agent sees: prefix + content + suffix."""
        return f"{self.metadata.prefix}{self.content}{self.metadata.suffix}"


class CmdOutputChunk(Event, frozen=True, tag="cmd_output_chunk"):
    """Partial output of the running action ``cause``; ``seq`` counts from 0 per action."""

    cause: int  # narrowed: a chunk always has a cause
    seq: int
    data: str


class IPythonRunCellObservation(Observation, frozen=True, tag="ipython_run_cell_output"):
    """What an IPython cell produced; images as ``data:`` URLs."""

    content: str
    code: str
    image_urls: list[str] = []


class FileReadObservation(Observation, frozen=True, tag="file_read_output"):
    content: str
    path: str


class FileWriteObservation(Observation, frozen=True, tag="file_write_output"):
    path: str
    content: str = ""


class FileEditObservation(Observation, frozen=True, tag="file_edit_output"):
    content: str
    path: str
    prev_exist: bool = False
    old_content: str | None = None
    new_content: str | None = None
    diff: str = ""


class ErrorObservation(Observation, frozen=True, tag="error"):
    """An action failed; ``error_id`` is a fixed machine-readable code."""

    content: str
    error_id: str = ""


class RuntimeStatusObservation(Observation, frozen=True, tag="runtime_status"):
    """A runtime lifecycle change (building / starting / ready / error / closed)."""

    status: RuntimeStatus
    message: str = ""

    def __post_init__(self) -> None:
        if self.status not in RuntimeStatus.__members__.values():
            raise ValueError(
                f"status must be one of {[s.value for s in RuntimeStatus]}, got {self.status!r}"
            )


class SnapshotObservation(Observation, frozen=True, tag="snapshot"):
    """The sandbox's state was recorded as snapshot ``snapshot_id`` (a runtime fact, no answer).

    A snapshot holds the whole file system (the workspace included) and the
    shell's working directory and exported environment, as they were once every
    action before this event had been answered; a sandbox can be started from it.
    ``content``: a line for people.
    """

    snapshot_id: str
    content: str = ""

    def __post_init__(self) -> None:
        if not self.snapshot_id:
            raise ValueError("snapshot_id must not be empty")


# --------------------------------------------------------------------------- foreign events


class OpenHandsEvent(Event, frozen=True, tag="openhands"):
    """An OpenHands event we do not execute (message, finish, agent state, null, ...).

    ``data`` is the original OpenHands dict, kept whole so that a trajectory
    passes through us without losing anything. ``kind`` is its ``action`` or
    ``observation`` name, e.g. ``"message"``.
    """

    kind: str
    data: dict[str, Any]
    is_action: bool = False


EventKind = Literal[
    "cmd_run",
    "ipython_run_cell",
    "file_read",
    "file_write",
    "file_edit",
    "cmd_output",
    "cmd_output_chunk",
    "ipython_run_cell_output",
    "file_read_output",
    "file_write_output",
    "file_edit_output",
    "error",
    "runtime_status",
    "snapshot",
    "openhands",
]
