"""How the server starts another interpreter like its own (a plugin's kernel).

Usually that is ``sys.executable``. A server started from a runtime bundle
runs through the bundle's dynamic loader (the image's libc, if any, plays no
part), so its executable cannot be started directly: the launcher passes the
whole command with ``--python-command`` and :func:`use_python_command` records
it for the process.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence

__all__ = ["parse_python_command", "python_command", "use_python_command"]

_command: tuple[str, ...] = ()


def python_command() -> list[str]:
    """The argv prefix that starts an interpreter like this one (``-c``/a script follows)."""
    return list(_command) if _command else [sys.executable]


def use_python_command(argv: Sequence[str]) -> None:
    """Make ``argv`` what :func:`python_command` returns for the rest of the process."""
    global _command
    _command = tuple(argv)


def parse_python_command(text: str) -> list[str]:
    """The ``--python-command`` flag's value: a JSON array of one or more strings."""
    try:
        argv = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"--python-command is not JSON: {exc}") from None
    if not (isinstance(argv, list) and argv and all(isinstance(a, str) and a for a in argv)):
        raise ValueError("--python-command must be a JSON array of non-empty strings")
    return argv
