"""The pure core of the persistent bash session: bytes to write, bytes read, texts.

No I/O, no clocks, no awaits (like the websockets protocol core): the asyncio
driver in :mod:`container_server.bash` writes what this module encodes and
feeds it what it reads.

The prompt sentinel
    After every command bash runs ``PROMPT_COMMAND`` and prints ``PS1``. Ours
    prints one record, with no newline around it, so output that does not end
    in a newline is still told apart::

        RS "OHRT" nonce US exit_code US bg_pid US seq US user US host US python US cwd RS nonce RS

    (RS = 0x1e, US = 0x1f.) The random per-session nonce is not in the text of
    ``PS1`` itself (it is expanded from a variable), so printing ``$PS1``,
    ``set`` or ``env`` does not forge a prompt. The cwd comes last and the
    record ends with the nonce again, so any directory name parses. The prompt
    forks nothing: ``$?``, ``$!``, ``\\u``, ``\\h`` and ``$PWD`` are expanded by
    bash itself, and the python interpreter is looked up with builtins only,
    and only when ``$PATH`` changed or the last answer stopped being
    executable. ``seq`` counts prompt expansions (an arithmetic expansion in
    ``PS1``): after an ``eval`` that hit an unclosed quote, interactive bash
    prints the *previous* prompt string again, unexpanded, and an unchanged
    ``seq`` is how that is recognised (the command failed to parse: status 2).

Delivering a command
    A command is sent as *one* word to ``eval``, ANSI-C quoted (``$'...'``)
    with every control character escaped, so that whatever it contains
    (newlines, heredocs, an unclosed quote, a trailing backslash) bash reads one
    complete line and runs one command: a syntax error in it ends as a prompt
    with exit code 2, never as bash waiting for more input. The tty line
    discipline drops input past 4095 bytes per line, so long commands are split
    into quoted pieces joined by backslash-newline continuations. ``$?`` is
    eval's status, which is the command's, and the next command sees it.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from typing import Final

from events.ansi import TerminalTextCleaner
from events.wire import special_key

__all__ = [
    "CONTINUATION_PREFIX",
    "NO_RUNNING_COMMAND_INPUT",
    "NO_RUNNING_COMMAND_LOGS",
    "TIMEOUT_ADVICE",
    "OutputText",
    "ParserEvent",
    "PromptInfo",
    "PromptParser",
    "PromptSeen",
    "completed_suffix",
    "encode_command",
    "encode_input",
    "format_seconds",
    "hard_timeout_suffix",
    "not_executed_suffix",
    "quoted_word",
    "restart_note",
    "setup_script",
    "soft_timeout_suffix",
    "special_key",
]

# --------------------------------------------------------------------------- texts
# OpenHands' wording (runtime/utils/bash.py, bash_constants.py): agents trained on
# OpenHands read them the same way.

TIMEOUT_ADVICE: Final = (
    "You may wait longer to see additional output by sending empty command '', "
    "send other commands to interact with the current process, "
    'send keys ("C-c", "C-z", "C-d") to interrupt/kill the previous command '
    "before sending your new command, or use the timeout parameter in execute_bash "
    "for future commands."
)
CONTINUATION_PREFIX: Final = "[Below is the output of the previous command.]\n"
NO_RUNNING_COMMAND_LOGS: Final = "ERROR: No previous running command to retrieve logs from."
NO_RUNNING_COMMAND_INPUT: Final = "ERROR: No previous running command to interact with."


def format_seconds(seconds: float) -> str:
    """``10.0`` → ``"10"``, ``1.5`` → ``"1.5"``: how a timeout reads in a note."""
    if float(seconds).is_integer():
        return str(int(seconds))
    return f"{seconds:g}"


def completed_suffix(exit_code: int, key: str | None = None) -> str:
    if key is not None:
        return (
            f"\n[The command completed with exit code {exit_code}. "
            f"CTRL+{key[-1].upper()} was sent.]"
        )
    return f"\n[The command completed with exit code {exit_code}.]"


def soft_timeout_suffix(seconds: float) -> str:
    return (
        f"\n[The command has no new output after {format_seconds(seconds)} seconds. "
        f"{TIMEOUT_ADVICE}]"
    )


def hard_timeout_suffix(seconds: float) -> str:
    # OpenHands' hard timeouts are floats and it prints them as such: "1.0", "120.0".
    return f"\n[The command timed out after {float(seconds)} seconds. {TIMEOUT_ADVICE}]"


def not_executed_suffix(command: str) -> str:
    return (
        f'\n[Your command "{command}" is NOT executed. The previous command is still '
        "running - You CANNOT send new commands until the previous command is completed. "
        "By setting `is_input` to `true`, you can interact with the current process: "
        f"{TIMEOUT_ADVICE}]"
    )


def restart_note(exit_status: int, working_dir: str) -> str:
    """Our own note (OpenHands has none): the shell died and a fresh one took its place."""
    return (
        f"\n[The bash session exited (exit code {exit_status}), so a new bash session was "
        f"started in {working_dir}. Environment variables, shell functions and aliases of "
        "the old session are gone, and its background processes were stopped.]"
    )


# --------------------------------------------------------------------------- input


def encode_input(text: str) -> bytes:
    """Text typed into the running process, then Enter."""
    return text.encode("utf-8", "replace") + b"\n"


# Each quoted piece stays far below the 4095-byte line limit of the tty: a character is
# at most 4 bytes, raw UTF-8 or a \xHH escape.
_PIECE_CHARS: Final = 900
_QUOTE_TABLE: Final = {
    **{code: f"\\x{code:02x}" for code in range(1, 0x20)},
    0: "",  # a bash string cannot hold NUL
    0x7F: "\\x7f",
    ord("\\"): "\\\\",
    ord("'"): "\\'",
    ord("\n"): "\\n",
    ord("\t"): "\\t",
    ord("\r"): "\\r",
}


def _ansi_c_quote(text: str) -> str:
    return "$'" + text.translate(_QUOTE_TABLE) + "'"


def quoted_word(text: str) -> str:
    """``text`` as one bash word spread over lines short enough for the tty."""
    if len(text) <= _PIECE_CHARS:
        return _ansi_c_quote(text)
    return "\\\n".join(
        _ansi_c_quote(text[start : start + _PIECE_CHARS])
        for start in range(0, len(text), _PIECE_CHARS)
    )


def encode_command(command: str, *, cwd: str | None = None) -> bytes:
    """The input that makes the idle shell run ``command`` as one action.

    With ``cwd`` the command runs in that directory and the shell's own working
    directory is restored at the next prompt (also after ``C-c``).
    """
    line = f"\\builtin eval -- {quoted_word(command)}\n"
    if cwd is not None:
        line = f"__oh_back=$PWD; __oh_backold=$OLDPWD; \\builtin cd -- {quoted_word(cwd)} && {line}"
    return line.encode("utf-8", "replace")


def setup_script(nonce: str) -> str:
    """Bash code run once in a new shell: the prompt sentinel and quiet settings."""
    if not re.fullmatch(r"[0-9a-f]{8,64}", nonce):
        raise ValueError("the nonce must be 8 to 64 lowercase hex digits")
    ps1 = (
        r"\036OHRT${__oh_n}\037$?\037${!:--1}\037$((__oh_seq+=1))\037\u\037\h\037"
        r"${__oh_py}\037${PWD}\036${__oh_n}\036"
    )
    return "\n".join(
        [
            f"__oh_n={nonce}",
            "__oh_seq=0 __oh_py= __oh_path=",
            f"__oh_ps1='{ps1}'",
            # No history: a '!' in a command is literal and nothing accumulates.
            "set +H +o history",
            # A stray C-d at the prompt must not end the shell.
            "set -o ignoreeof",
            "__oh_findpy() {",
            '  local rest="$PATH:" dir py3=',
            "  __oh_py=",
            "  while [[ -n $rest ]]; do",
            "    dir=${rest%%:*}; rest=${rest#*:}; [[ -n $dir ]] || dir=.",
            "    if [[ -f $dir/python && -x $dir/python ]]; then __oh_py=$dir/python; return 0; fi",
            "    if [[ -z $py3 && -f $dir/python3 && -x $dir/python3 ]]; then py3=$dir/python3; fi",
            "  done",
            "  __oh_py=$py3",
            "}",
            "__oh_prompt() {",
            "  if [[ -n ${__oh_back+x} ]]; then",
            '    builtin cd -- "$__oh_back" 2>/dev/null; OLDPWD=$__oh_backold',
            "    unset __oh_back __oh_backold",
            "  fi",
            '  if [[ $PATH != "$__oh_path" || ! -x $__oh_py ]]; then',
            "    __oh_path=$PATH; __oh_findpy",
            "  fi",
            # Re-asserted each time: `source venv/bin/activate` and friends rewrite PS1.
            "  PS1=$__oh_ps1; PS2=",
            "}",
            # An array: bash 5.1+ runs every element, and an agent's plain assignment
            # (`PROMPT_COMMAND=hook`, or a tool prepending to it) replaces element 0
            # only, so the second one still puts our PS1 back — also after the agent
            # has set PS1 too. Older bash runs element 0, as it ran the plain string.
            "PS0= PS2= PROMPT_COMMAND=(__oh_prompt __oh_prompt)",
        ]
    )


# --------------------------------------------------------------------------- output


@dataclass(frozen=True)
class PromptInfo:
    """What the shell reported in a prompt."""

    exit_code: int
    pid: int
    seq: int
    username: str
    hostname: str
    working_dir: str
    py_interpreter_path: str | None


@dataclass(frozen=True)
class OutputText:
    """Cleaned output text: escape sequences and control bytes removed, ``\\r\\n`` → ``\\n``."""

    text: str


@dataclass(frozen=True)
class PromptSeen:
    """The shell is back at its prompt."""

    info: PromptInfo


ParserEvent = OutputText | PromptSeen

_RS: Final = b"\x1e"
_FIELD_SEPARATOR: Final = b"\x1f"
# A prompt body is a handful of short fields and one path (PATH_MAX 4096).
_MAX_PROMPT_BODY: Final = 64 * 1024


def _to_int(raw: bytes) -> int:
    try:
        return int(raw)
    except ValueError:
        return -1


class PromptParser:
    """Splits the PTY byte stream into output text and prompts.

    ``feed`` accepts any split of the stream: the same bytes cut at other
    points give the same events (texts may be cut differently).
    """

    def __init__(self, nonce: str) -> None:
        token = nonce.encode("ascii")
        self._begin = b"\x1eOHRT" + token + _FIELD_SEPARATOR
        self._end = b"\x1e" + token + b"\x1e"
        self._pending = b""
        self._in_prompt = False
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._cleaner = TerminalTextCleaner()

    def feed(self, data: bytes) -> list[ParserEvent]:
        events: list[ParserEvent] = []
        if self._pending:
            data = self._pending + data
            self._pending = b""
        pos = 0
        size = len(data)
        while pos < size:
            if not self._in_prompt:
                # memchr for the marker's first byte first: most output has none.
                start = data.find(self._begin, pos) if data.find(_RS, pos) >= 0 else -1
                if start < 0:
                    held = self._partial_begin(data, pos)
                    self._output(data[pos : size - held], events)
                    self._pending = data[size - held :]
                    return events
                self._output(data[pos:start], events)
                self._finish_output(events)
                pos = start + len(self._begin)
                self._in_prompt = True
            end = data.find(self._end, pos)
            if end < 0:
                if size - pos > _MAX_PROMPT_BODY:
                    # Not a prompt after all (or a broken one): it was output.
                    self._in_prompt = False
                    self._output(self._begin + data[pos:], events)
                    return events
                self._pending = data[pos:]
                return events
            events.append(PromptSeen(self._parse_body(data[pos:end])))
            pos = end + len(self._end)
            self._in_prompt = False
        return events

    def flush(self) -> list[ParserEvent]:
        """End of stream: whatever is held back is output."""
        events: list[ParserEvent] = []
        pending, self._pending = self._pending, b""
        if self._in_prompt:
            pending = self._begin + pending
            self._in_prompt = False
        self._output(pending, events)
        self._finish_output(events)
        return events

    def _partial_begin(self, data: bytes, pos: int) -> int:
        """Length of the longest tail of ``data`` that could start the begin marker."""
        start = data.rfind(b"\x1e", max(pos, len(data) - len(self._begin) + 1))
        if start >= 0 and self._begin.startswith(data[start:]):
            return len(data) - start
        return 0

    def _output(self, data: bytes, events: list[ParserEvent]) -> None:
        if not data:
            return
        text = self._cleaner.feed(self._decoder.decode(data))
        if text:
            events.append(OutputText(text))

    def _finish_output(self, events: list[ParserEvent]) -> None:
        text = self._decoder.decode(b"", True)
        text = self._cleaner.feed(text) + self._cleaner.flush()
        self._decoder.reset()
        if text:
            events.append(OutputText(text))

    @staticmethod
    def _parse_body(body: bytes) -> PromptInfo:
        fields = body.split(_FIELD_SEPARATOR, 6)
        fields += [b""] * (7 - len(fields))
        python = fields[5].decode("utf-8", "replace")
        return PromptInfo(
            exit_code=_to_int(fields[0]),
            pid=_to_int(fields[1]),
            seq=_to_int(fields[2]),
            username=fields[3].decode("utf-8", "replace"),
            hostname=fields[4].decode("utf-8", "replace"),
            working_dir=fields[6].decode("utf-8", "replace"),
            py_interpreter_path=python or None,
        )
