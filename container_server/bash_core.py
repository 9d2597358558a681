"""The bash session's state machine: bytes and clock readings in, decisions out.

Pure, like websockets' ``protocol.py``: no I/O, no asyncio, no clock of its
own. The asyncio driver (:class:`container_server.bash.BashSession`) owns the
PTY and the process; it hands this core what it reads (:meth:`BashCore.receive_output`)
and when (``now``, seconds on any monotonic clock), and asks it what to do:

* :meth:`~BashCore.check` and :meth:`~BashCore.begin` turn a ``CmdRunAction``
  into an answer at once (refused, several commands, nothing running) or into
  the bytes to write to the PTY, after which a *wait* is open;
* :meth:`~BashCore.outcome` says, at a clock reading, whether the wait is over
  (:class:`Outcome`: the prompt came back, the shell exited, the hard or the
  soft timeout passed) and :meth:`~BashCore.next_deadline` when to ask again
  if nothing arrives;
* :meth:`~BashCore.finish` makes the observation (or, for a dead shell, a
  :class:`ShellDied` whose observation follows the restart);
* :meth:`~BashCore.data_to_send` is what the core itself needs written: the
  empty line that makes bash prompt afresh after an ``eval`` that ended inside
  a quote (see :mod:`container_server.bash_protocol`);
* :meth:`~BashCore.begin_internal` and :meth:`~BashCore.finish_internal` run a
  command of the server's own between two actions (reading the shell's state):
  its output is discarded and what the agent's last command left (output not
  observed yet, an end not reported yet) is kept for the agent's next action.

State (one shell at a time; a restart calls :meth:`~BashCore.shell_started`
again)::

    starting --first prompt--> idle --begin(new command)--> running
    running --prompt--> completed --finish--> idle
    running --soft/hard timeout--> finish: observed (still running; "" waits
        more, is_input types, C-<letter> sends a key)
    any --shell_exited--> exited --(driver restarts the shell)--> starting

Output printed while no command runs is dropped; output of a running command
is kept (:class:`~container_server.truncate.LastLinesBuffer`) until an
observation takes it, so each byte of it is in exactly one observation.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import Final, assert_never

from container_server.bash_protocol import (
    CONTINUATION_PREFIX,
    NO_RUNNING_COMMAND_INPUT,
    NO_RUNNING_COMMAND_LOGS,
    OutputText,
    PromptInfo,
    PromptParser,
    PromptSeen,
    completed_suffix,
    encode_command,
    encode_input,
    hard_timeout_suffix,
    not_executed_suffix,
    restart_note,
    setup_script,
    soft_timeout_suffix,
    special_key,
)
from container_server.bash_split import multiple_commands_error, split_commands
from container_server.truncate import LastLinesBuffer
from events import CmdOutputMetadata, CmdOutputObservation, CmdRunAction, ErrorObservation
from events.wire import ErrorId

__all__ = [
    "SESSION_CLOSED",
    "SESSION_CLOSED_WHILE_RUNNING",
    "SESSION_NOT_RUNNING",
    "BashCore",
    "Outcome",
    "Request",
    "ShellDied",
]

SESSION_NOT_RUNNING: Final = "ERROR: The bash session is not running."
SESSION_CLOSED: Final = "ERROR: The bash session was closed."
SESSION_CLOSED_WHILE_RUNNING: Final = "ERROR: The bash session was closed while the command ran."
# The tty line discipline drops input past 4095 bytes per line.
_MAX_INTERNAL_LINE_BYTES: Final = 4000
# How much of a failed startup's output the error message quotes, in characters.
_STARTUP_OUTPUT_CHARS: Final = 2000


class Outcome(enum.Enum):
    """How a wait ended."""

    COMPLETED = "completed"  # the prompt came back
    EXITED = "exited"  # the shell exited, or the session was closed
    HARD_TIMEOUT = "hard"  # the action's timeout passed
    SOFT_TIMEOUT = "soft"  # nothing new for no_change_timeout seconds


@dataclass(frozen=True, slots=True)
class Request:
    """A ``CmdRunAction`` read the way the session reads it."""

    action: CmdRunAction
    stripped: str
    key: bytes | None  # the control byte of C-<letter>
    is_new_command: bool  # not a continuation: neither input, nor a key, nor ""

    @classmethod
    def of(cls, action: CmdRunAction) -> Request:
        stripped = action.command.strip()
        key = special_key(stripped)
        is_new = bool(stripped) and not action.is_input and key is None
        return cls(action, stripped, key, is_new)


@dataclass(frozen=True, slots=True)
class ShellDied:
    """The shell died under a command: what it printed; the observation follows the restart."""

    action: CmdRunAction
    content: str
    prefix: str
    exit_status: int
    key_name: str | None


@dataclass(frozen=True, slots=True)
class _Wait:
    """The wait that is open: for a command's prompt, or for a new shell's first one."""

    action: CmdRunAction | None  # None: the setup script of a new shell
    start: float
    soft: float | None  # no_change_timeout, None when blocking
    hard: float | None  # None: no hard timeout
    continuation: bool  # an observation of this command was returned before
    key_name: str | None  # "C-c" when that key was sent
    note: str  # a restart note for the suffix

    @property
    def hard_deadline(self) -> float:
        return math.inf if self.hard is None else self.start + self.hard


class BashCore:
    """The session's protocol state; see the module docstring."""

    def __init__(
        self,
        *,
        nonce: str,
        working_dir: str,
        no_change_timeout: float = 10.0,
        default_timeout: float | None = 120.0,
        max_output_chars: int = 30_000,
        allow_multiple_commands: bool = False,
    ) -> None:
        self._nonce = nonce
        self._working_dir = working_dir
        self._no_change_timeout = no_change_timeout
        self._default_timeout = default_timeout
        self._max_output_chars = max_output_chars
        self._allow_multiple_commands = allow_multiple_commands
        self._parser = PromptParser(nonce)
        self._output = LastLinesBuffer(max(max_output_chars, 1024))
        self._last_prompt: PromptInfo | None = None
        self._running = False
        self._observed = False  # an observation was already returned for the running command
        self._completed: PromptInfo | None = None
        self._reprompted = False
        self._exited_status: int | None = None
        self._closed = False
        self._last_activity = 0.0
        self._wait: _Wait | None = None
        self._to_send = bytearray()
        # The agent's command's state, put aside while an internal command runs.
        self._stashed: tuple[LastLinesBuffer, PromptInfo | None, bool] | None = None

    # ------------------------------------------------------------------ state

    @property
    def cwd(self) -> str:
        """The working directory the last prompt reported, else the session's."""
        if self._last_prompt is not None and self._last_prompt.working_dir:
            return self._last_prompt.working_dir
        return self._working_dir

    @property
    def is_running(self) -> bool:
        """A command (or a new shell's setup) was sent and its prompt has not come back."""
        return self._running

    @property
    def exited_status(self) -> int | None:
        """The shell's exit status (``128 + N`` for signal N) once it exited, else None."""
        return self._exited_status

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def waiting(self) -> bool:
        """A wait is open (between :meth:`begin` and :meth:`finish`)."""
        return self._wait is not None

    def close(self) -> None:
        """The session is closing: an open wait ends with :attr:`Outcome.EXITED`."""
        self._closed = True

    # ------------------------------------------------------------------ the shell

    def shell_started(self, now: float, *, timeout: float) -> bytes:
        """A new bash is on the PTY: returns its setup script and opens the wait for its
        first prompt (``timeout`` seconds at most)."""
        self._parser = PromptParser(self._nonce)
        self._last_prompt = None  # a new shell counts its prompts from 1 again
        self._exited_status = None
        self._running = True  # until the first prompt: the setup script is the "command"
        self._completed = None
        self._to_send.clear()
        self._wait = _Wait(None, now, None, timeout, False, None, "")
        self._last_activity = now
        return encode_command(setup_script(self._nonce))

    def startup_finished(self, outcome: Outcome) -> str | None:
        """Closes the startup wait: None if bash is up, else what it printed."""
        startup_output = self._output.render(_STARTUP_OUTPUT_CHARS)
        self._output.clear()
        self._completed = None
        self._wait = None
        if outcome is Outcome.COMPLETED:
            return None
        self._running = False
        return startup_output

    def shell_exited(self, status: int) -> list[str]:
        """bash exited and the PTY was drained: returns the output held back until now."""
        texts = []
        for event in self._parser.flush():
            if isinstance(event, OutputText) and self._running:
                self._output.append(event.text)
                texts.append(event.text)
        self._exited_status = status
        return texts

    def forget_command(self) -> None:
        """The dead shell is being replaced: its command and its output are gone."""
        self._running = False
        self._observed = False
        self._output.clear()

    def restart_note(self, exit_status: int) -> str:
        return restart_note(exit_status, self.cwd)

    # ------------------------------------------------------------------ bytes in

    def receive_output(self, data: bytes, now: float) -> list[str]:
        """Bytes read from the PTY at ``now``; returns the running command's new output text."""
        self._last_activity = now
        texts: list[str] = []
        for event in self._parser.feed(data):
            match event:
                case OutputText(text=text):
                    if self._running:
                        self._output.append(text)
                        texts.append(text)
                case PromptSeen(info=info):
                    self._prompt(info)
                case _:
                    assert_never(event)
        return texts

    def _prompt(self, info: PromptInfo) -> None:
        previous = self._last_prompt
        self._last_prompt = info
        if (
            self._running
            and previous is not None
            and info.seq == previous.seq
            and not self._reprompted
        ):
            # The previous prompt printed again, unexpanded: what interactive bash does
            # after an eval whose text ended inside a quote or after a backslash (see
            # bash_protocol), so $? is not in it. An empty line makes bash prompt afresh
            # with $? unchanged.
            self._reprompted = True
            self._to_send += b"\n"
            return
        if self._running:
            self._running = False
            self._completed = info

    @property
    def has_data_to_send(self) -> bool:
        return bool(self._to_send)

    def data_to_send(self) -> bytes:
        """What the core needs written to the PTY now (then forgotten)."""
        data = bytes(self._to_send)
        self._to_send.clear()
        return data

    def send_failed(self) -> None:
        """The empty line of :meth:`data_to_send` was not written: the repeated prompt
        ends the command (bash will not prompt again by itself)."""
        if self._running and self._reprompted and self._last_prompt is not None:
            self._running = False
            self._completed = self._last_prompt

    # ------------------------------------------------------------------ actions

    @staticmethod
    def unavailable(text: str) -> ErrorObservation:
        """The answer to an action the session cannot take: one of the ``SESSION_*`` texts."""
        return ErrorObservation(text, error_id=ErrorId.BASH_SESSION_CLOSED)

    def check(
        self, action: CmdRunAction, *, busy: bool
    ) -> Request | ErrorObservation | CmdOutputObservation:
        """What can be answered before waiting for the session (``busy``: an action waits
        on the running command): several commands, a new command while one runs."""
        request = Request.of(action)
        if request.is_new_command and not self._allow_multiple_commands:
            commands = split_commands(request.stripped)
            if len(commands) > 1:
                # OpenHands' answer: agents trained on it chain commands instead.
                return ErrorObservation(
                    multiple_commands_error(commands), error_id=ErrorId.MULTIPLE_COMMANDS
                )
        if request.is_new_command and self._running and self._exited_status is None:
            return self.refuse(action, busy=busy)
        return request

    def refuse(self, action: CmdRunAction, *, busy: bool) -> CmdOutputObservation:
        """A new command while one runs: not sent; the running one's new output is returned
        unless another action (``busy``) waits for it."""
        content = truncated = ""
        if not busy:
            content, truncated = self._output.take(self._max_output_chars)
            self._observed = True
        return CmdOutputObservation(
            content,
            command=action.command,
            metadata=self._metadata(
                exit_code=-1,
                prefix=CONTINUATION_PREFIX + truncated,
                suffix=not_executed_suffix(action.command.strip()),
            ),
            hidden=action.hidden,
        )

    def died_continuation(self, request: Request) -> ShellDied | None:
        """The shell was found dead: if ``request`` continues the command it died under,
        that command's end (else None: the driver restarts the shell and goes on)."""
        if self._running and not request.is_new_command:
            prefix = CONTINUATION_PREFIX if self._observed else ""
            return self._take_died(request.action, prefix, None)
        return None

    def begin(
        self, request: Request, now: float, *, note: str = ""
    ) -> bytes | CmdOutputObservation:
        """Start (or continue) a command at ``now``: the bytes to write, after which a wait is
        open; or the answer at once. ``note`` ends the suffix (a restart note)."""
        action = request.action
        if request.is_new_command and self._running:
            return self.refuse(action, busy=True)
        if not request.is_new_command and not self._running and self._completed is None:
            content = NO_RUNNING_COMMAND_LOGS if not request.stripped else NO_RUNNING_COMMAND_INPUT
            return CmdOutputObservation(
                content,
                command=action.command,
                metadata=self._metadata(exit_code=-1, suffix=note),
                hidden=action.hidden,
            )
        timeout = self._default_timeout if action.timeout is None else action.timeout
        hard = timeout if timeout else None  # 0 or None: no hard timeout (OpenHands)
        soft = None if action.blocking else self._no_change_timeout
        continuation = self._observed
        if request.is_new_command:
            self._output.clear()
            self._completed = None
            self._reprompted = False
            self._observed = continuation = False
            self._running = True
            data = encode_command(action.command, cwd=action.cwd)
        elif not self._running:
            # It finished after the last observation: report that, type nothing into bash.
            data = b""
        elif request.key is not None:
            data = request.key
        elif request.stripped:
            data = encode_input(request.stripped)
        else:
            data = b""
        key_name = request.stripped if request.key is not None and data else None
        self._wait = _Wait(action, now, soft, hard, continuation, key_name, note)
        self._last_activity = now
        return data

    def write_deadline(self) -> float:
        """Until when writing the wait's input may block (its hard deadline)."""
        assert self._wait is not None, "no wait is open"
        return self._wait.hard_deadline

    def outcome(self, now: float) -> Outcome | None:
        """Whether the open wait is over at ``now`` (None: not yet)."""
        wait = self._wait
        assert wait is not None, "no wait is open"
        if self._completed is not None:
            return Outcome.COMPLETED
        if self._exited_status is not None or self._closed:
            return Outcome.EXITED
        if now >= wait.hard_deadline:
            return Outcome.HARD_TIMEOUT
        if wait.soft is not None and now >= self._last_activity + wait.soft:
            return Outcome.SOFT_TIMEOUT
        return None

    def next_deadline(self) -> float:
        """When :meth:`outcome` may change with no new bytes (``math.inf``: never)."""
        wait = self._wait
        assert wait is not None, "no wait is open"
        if wait.soft is None:
            return wait.hard_deadline
        return min(wait.hard_deadline, self._last_activity + wait.soft)

    def finish(self, outcome: Outcome) -> CmdOutputObservation | ShellDied:
        """Close the wait with ``outcome`` (from :meth:`outcome`); the observation."""
        wait = self._wait
        assert wait is not None, "no wait is open"
        assert wait.action is not None, "the startup wait ends with startup_finished()"
        self._wait = None
        action = wait.action
        prefix = CONTINUATION_PREFIX if wait.continuation else ""
        if outcome is Outcome.EXITED:
            return self._take_died(action, prefix, wait.key_name)
        content, truncated = self._output.take(self._max_output_chars)
        prefix += truncated
        match outcome:
            case Outcome.COMPLETED:
                info = self._completed
                assert info is not None
                self._completed = None
                self._observed = False
                return CmdOutputObservation(
                    content,
                    command=action.command,
                    metadata=self._metadata(
                        exit_code=info.exit_code,
                        pid=info.pid,
                        prefix=prefix,
                        suffix=completed_suffix(info.exit_code, wait.key_name) + wait.note,
                    ),
                    hidden=action.hidden,
                )
            case Outcome.HARD_TIMEOUT:
                assert wait.hard is not None
                suffix = hard_timeout_suffix(wait.hard)
            case Outcome.SOFT_TIMEOUT:
                suffix = soft_timeout_suffix(self._no_change_timeout)
            case _:
                assert_never(outcome)
        self._observed = True
        return CmdOutputObservation(
            content,
            command=action.command,
            metadata=self._metadata(exit_code=-1, prefix=prefix, suffix=suffix + wait.note),
            hidden=action.hidden,
        )

    def died_observation(self, died: ShellDied, note: str) -> CmdOutputObservation:
        """The observation of a command the shell died under, once a new shell is up."""
        return CmdOutputObservation(
            died.content,
            command=died.action.command,
            metadata=self._metadata(
                exit_code=died.exit_status,
                prefix=died.prefix,
                suffix=completed_suffix(died.exit_status, died.key_name) + note,
            ),
            hidden=died.action.hidden,
        )

    # ------------------------------------------------------------------ internal commands

    def begin_internal(self, line: str, now: float) -> bytes:
        """Type the server's own ``line`` of bash into the idle shell at ``now``: the bytes
        to write, after which a wait is open (no timeout of its own: the caller bounds it);
        close it with :meth:`finish_internal`.

        The line is typed as it is, not through ``eval`` (whose argument would be left
        in ``$_``): it must be one complete line, short enough for the tty.
        """
        data = line.encode("utf-8") + b"\n"
        if b"\n" in data[:-1] or len(data) > _MAX_INTERNAL_LINE_BYTES:
            raise ValueError("an internal command is one line of at most 4000 bytes")
        if self._running or self._wait is not None or self._exited_status is not None:
            raise RuntimeError("an internal command runs only in an idle shell")
        self._stashed = (self._output, self._completed, self._observed)
        self._output = LastLinesBuffer(1024)
        self._completed = None
        self._reprompted = False
        self._running = True
        self._wait = _Wait(None, now, None, None, False, None, "")
        self._last_activity = now
        return data

    def finish_internal(self, outcome: Outcome | None) -> int | None:
        """Close the internal command's wait: its exit code if its prompt came back, else
        None (``outcome`` None: the wait was abandoned, e.g. past the caller's deadline).

        The agent's command's state is back as it was; a command that did not end
        keeps the shell busy (the agent's next command is refused until ``C-c``).
        """
        stashed = self._stashed
        assert stashed is not None, "no internal command runs"
        info = self._completed
        self._wait = None
        self._stashed = None
        self._output, self._completed, self._observed = stashed
        if outcome is Outcome.COMPLETED and info is not None:
            return info.exit_code
        if outcome is not Outcome.EXITED:
            self._completed = None
            self._observed = True
        else:
            self._running = False
        return None

    def _take_died(self, action: CmdRunAction, prefix: str, key_name: str | None) -> ShellDied:
        status = self._exited_status if self._exited_status is not None else -1
        content, truncated = self._output.take(self._max_output_chars)
        return ShellDied(action, content, prefix + truncated, status, key_name)

    def _metadata(
        self, *, exit_code: int, pid: int = -1, prefix: str = "", suffix: str = ""
    ) -> CmdOutputMetadata:
        info = self._last_prompt
        return CmdOutputMetadata(
            exit_code=exit_code,
            pid=pid,
            username=info.username if info else None,
            hostname=info.hostname if info else None,
            working_dir=info.working_dir if info else self._working_dir,
            py_interpreter_path=info.py_interpreter_path if info else None,
            prefix=prefix,
            suffix=suffix,
        )
