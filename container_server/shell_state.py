"""The shell's state — working directory and exported environment — read, and restored.

**Reading it** (:meth:`ActionExecutor.shell_state
<container_server.executor.ActionExecutor.shell_state>`): between two actions, the server runs a
command of its own in the agent's shell (:meth:`BashCore.begin_internal
<container_server.bash_core.BashCore.begin_internal>`: its output is discarded,
what the agent's last command left is kept). The command is bash builtins
only (any image's bash, the bundle's static one included; nothing on the
``PATH`` is needed): it writes ``$PWD`` and every exported variable as
NUL-terminated ``NAME=value`` records into a file in a private directory of
the server's, so no value is bent by the terminal (newlines, control bytes,
``=`` and quotes in values, any length). It keeps what the agent sees: ``$?``
and ``$_`` are the same after it as before, options (``set -e``, ``set -u``,
``noclobber``), ``IFS`` and the agent's own ``PS1``/``PROMPT_COMMAND`` do not
change what it does.

What is *not* captured (:data:`NOT_CAPTURED`): what the shell or the server
sets afresh for every shell — the prompt machinery (``PS0``, ``PS1``, ``PS2``,
``PS4``, ``PROMPT_COMMAND``, the session's ``__oh_*`` variables), ``PWD``
(that is the state's ``cwd``), ``SHLVL``, ``_``,
``HOSTNAME`` (the sandbox's own name), and the variables a shell never
inherits (``SESSION_API_KEY``, ``BASH_ENV``, ``ENV``). Exported arrays are left
out (a command does not see them either), and so are exported functions.

**Restoring it** (:func:`restored_environment`): a new shell starts with
exactly the captured environment (a variable the agent had unset stays unset)
in the captured directory; a directory that is gone is replaced by the
workspace, and the server's log says so (:class:`container_server.bash.BashSession`).
"""

from __future__ import annotations

import logging
from typing import Final

from container_server.bash_protocol import quoted_word
from container_server.errors import ServerError
from events.control import ShellState, decode_shell_state

__all__ = [
    "CAPTURE_TIMEOUT",
    "NOT_CAPTURED",
    "ShellStateUnavailable",
    "capture_script",
    "is_captured",
    "parse_capture",
    "read_state_file",
    "restored_environment",
]

logger = logging.getLogger(__name__)

#: Names never captured nor restored (see the module docstring); ``__oh_*`` neither.
NOT_CAPTURED: Final = frozenset(
    {
        "PS0",
        "PS1",
        "PS2",
        "PS4",
        "PROMPT_COMMAND",
        "PWD",
        "SHLVL",
        "_",
        "HOSTNAME",
        "SESSION_API_KEY",
        "BASH_ENV",
        "ENV",
    }
)
_PRIVATE_PREFIX: Final = "__oh_"
_STATE_FILE: Final = "state"
#: Seconds the capture may take: builtins writing a small file; past this the shell is stuck.
CAPTURE_TIMEOUT: Final = 10.0


class ShellStateUnavailable(ServerError, RuntimeError):
    """The shell's state cannot be read now (the message says why, for the client)."""


def is_captured(name: str) -> bool:
    return name not in NOT_CAPTURED and not name.startswith(_PRIVATE_PREFIX)


def capture_script(path: str) -> str:
    """One line of bash that writes the shell's state to ``path`` (the module docstring).

    Typed at the prompt as it is (not through ``eval``, which would leave its
    text in ``$_``): ``$?`` and ``$_`` are saved first, then a function is
    defined, called and removed; its ``local`` keeps its variables (``IFS``
    among them) to itself; it returns the saved status, and the saved ``$_``
    is its call's last argument, so both are what they were.
    """
    body = "; ".join(
        [
            "\\builtin unset -f __oh_state",
            "\\builtin unset __oh_rc __oh_last",
            "\\builtin local IFS=$' \\t\\n' __oh_v",
            "{ \\builtin printf '%s\\0' \"$PWD\"",
            "for __oh_v in $(\\builtin compgen -e); do "
            # Arrays are exported to no command; ${!v@a} needs bash 4.4 (on an
            # older bash an exported array is kept as its first element).
            "if ((BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] >= 404)); then "
            "case ${!__oh_v@a} in *[aA]*) continue ;; esac; fi"
            '; \\builtin printf \'%s=%s\\0\' "$__oh_v" "${!__oh_v}"; done'
            f"; }} >| {quoted_word(path)}",
            '\\builtin return "$1"',
        ]
    )
    return (
        f'__oh_rc=$? __oh_last=$_; __oh_state() {{ {body}; }}; __oh_state "$__oh_rc" "$__oh_last"'
    )


def parse_capture(data: bytes) -> ShellState:
    """The state :func:`capture_script` wrote (its bytes); ValueError if it is cut short."""
    if not data.endswith(b"\0"):
        raise ValueError("the shell's state was not written to its end")
    records = data[:-1].split(b"\0")
    cwd = records[0].decode("utf-8", "replace")
    env: dict[str, str] = {}
    for record in records[1:]:
        name, sep, value = record.partition(b"=")
        if not sep:
            raise ValueError(f"not a NAME=value record: {record[:100]!r}")
        text = name.decode("utf-8", "replace")
        if is_captured(text):
            env[text] = value.decode("utf-8", "replace")
    return ShellState(cwd=cwd, env=env)


def restored_environment(state: ShellState) -> dict[str, str]:
    """The environment a shell restored to ``state`` starts with (what it may carry)."""
    return {name: value for name, value in state.env.items() if is_captured(name)}


def read_state_file(path: str) -> ShellState | None:
    """The state in ``path`` (written by the host), None if there is no such file.

    Raises ``OSError`` when it cannot be read and ``ValueError`` when it is not a
    state.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    return decode_shell_state(data)
