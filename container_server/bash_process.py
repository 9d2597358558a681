"""The bash process on its PTY: spawn it, quiet the terminal, kill its whole session.

The PTY has echo and output post-processing off, 1000x1000 cells; bash runs
``--norc --noprofile --noediting`` with ``TERM=dumb``, ``PAGER=cat``,
``GIT_PAGER=cat``, ``PYTHONUNBUFFERED=1``, job control on. ``SESSION_API_KEY``
(and the prompt variables) are removed from the environment the shell
inherits. Run as root and asked for another user, bash starts as that user
(its PTY chowned to it); else as the server's (effective) user.

What bash is sent and how its output is read is
:mod:`container_server.bash_core`'s business, not this module's.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import functools
import logging
import os
import pwd
import resource
import shutil
import signal
import struct
import termios
from collections.abc import Mapping
from typing import Any, Final

import anyio

from container_server.errors import ServerError
from container_server.privileges import child_credentials

__all__ = [
    "BashStartError",
    "exit_status",
    "kill_session",
    "quiet_termios",
    "requiet",
    "session_members",
    "spawn_bash",
    "wait_gone",
]

logger = logging.getLogger(__name__)

_TERMINAL_SIZE: Final = (1000, 1000)  # rows, columns: long lines are not wrapped
# Inherited variables the shell must not see or must not be confused by.
_DROPPED_ENV: Final = (
    "SESSION_API_KEY",
    "PS1",
    "PS2",
    "PS0",
    "PROMPT_COMMAND",
    "BASH_ENV",
    "ENV",
)
_DEFAULT_ENV: Final = {
    "TERM": "dumb",
    "PAGER": "cat",
    "GIT_PAGER": "cat",
    "PYTHONUNBUFFERED": "1",
}
_ECHO_FLAGS: Final = termios.ECHO | termios.ECHOE | termios.ECHOK | termios.ECHONL


class BashStartError(ServerError, RuntimeError):
    """bash could not be started, or died before its first prompt."""


def _acquire_controlling_tty() -> None:
    # Runs in the child between fork and exec (after setsid): the PTY becomes the
    # session's controlling terminal, which is what makes C-c reach the foreground job.
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _prepare_child(rlimits: tuple[tuple[int, tuple[int, int]], ...]) -> None:
    # Between fork and exec: limits set here bind bash and everything it starts.
    for limit, values in rlimits:
        resource.setrlimit(limit, values)
    _acquire_controlling_tty()


def _configure_pty(fd: int) -> None:
    attrs = termios.tcgetattr(fd)
    quiet_termios(attrs)
    attrs[0] &= ~termios.IXON  # a ^S in typed input must not freeze the output
    if hasattr(termios, "IUTF8"):
        attrs[0] |= termios.IUTF8
    termios.tcsetattr(fd, termios.TCSANOW, attrs)
    rows, columns = _TERMINAL_SIZE
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))


def quiet_termios(attrs: list[Any]) -> bool:
    """Echo off (the command is not repeated), no output post-processing; True if changed."""
    lflag: int = attrs[3]
    oflag: int = attrs[1]
    # Without OPOST the kernel does not turn \n into \r\n, and a program writing line by
    # line costs one tty write per line instead of one per special character.
    new_lflag, new_oflag = lflag & ~_ECHO_FLAGS, oflag & ~termios.OPOST
    attrs[3], attrs[1] = new_lflag, new_oflag
    return (new_lflag, new_oflag) != (lflag, oflag)


def requiet(master: int) -> None:
    """Re-apply :func:`quiet_termios`: a program (or ``stty sane``) may have turned echo on."""
    try:
        attrs = termios.tcgetattr(master)
        if quiet_termios(attrs):
            termios.tcsetattr(master, termios.TCSANOW, attrs)
    except termios.error as exc:
        logger.debug("cannot re-apply the PTY settings: %s", exc)


def session_members(session_id: int) -> list[int]:
    """Live processes of a session, from /proc (memory-backed: no disk I/O)."""
    members = []
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        # Fields after the parenthesised command name: state ppid pgrp session ...
        fields = stat[stat.rfind(b")") + 2 :].split()
        if len(fields) > 3 and fields[0] != b"Z" and int(fields[3]) == session_id:
            members.append(int(entry))
    return members


def kill_session(session_id: int) -> list[int]:
    """SIGKILL every process of the session; returns the ones that were alive."""
    members = session_members(session_id)
    for pid in members:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(session_id, signal.SIGKILL)
    return members


async def wait_gone(pids: list[int]) -> None:
    """Wait until the processes have exited (pidfd readability); bound it at the call site."""
    if not pids or not hasattr(os, "pidfd_open"):
        return
    fds: list[int] = []
    for pid in pids:
        try:
            fds.append(os.pidfd_open(pid))
        except OSError:
            continue  # already gone, or pidfds unsupported
    try:
        for fd in fds:
            await anyio.wait_readable(fd)
    finally:
        for fd in fds:
            os.close(fd)


def exit_status(returncode: int) -> int:
    """asyncio reports death by signal N as -N; a shell says 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def _environment(
    cwd: str,
    uid: int | None,
    username: str | None,
    extra: Mapping[str, str],
    shell: str,
    base: Mapping[str, str] | None = None,
) -> dict[str, str]:
    if base is not None:
        # A restored shell's environment is the one it had, nothing added to it.
        env = {k: v for k, v in base.items() if k not in _DROPPED_ENV}
        env.update(extra)
        env["PWD"] = cwd
        return env
    env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
    env.update(_DEFAULT_ENV)
    if uid is not None:
        try:
            entry: pwd.struct_passwd | None = pwd.getpwuid(uid)
        except KeyError:
            entry = None
        name = entry.pw_name if entry else (username or str(uid))
        env.update(
            HOME=entry.pw_dir if entry else "/",
            USER=name,
            LOGNAME=name,
            SHELL=shell,
        )
    env.update(extra)
    env["PWD"] = cwd
    return env


def _target_uid(username: str | None, user_id: int | None) -> int | None:
    """The uid to switch to: only when running as root and asked for another user.

    A server that already acts as the sandbox user (real uid 0, effective uid
    the sandbox user's: :mod:`container_server.privileges`) starts bash as its
    effective user; that is not a switch this function decides.
    """
    if os.geteuid() != 0:
        if user_id is not None and user_id != os.geteuid():
            logger.warning(
                "not root: bash runs as uid %d, not as the requested uid %d",
                os.geteuid(),
                user_id,
            )
        return None
    uid = user_id
    if uid is None and username is not None:
        try:
            uid = pwd.getpwnam(username).pw_uid
        except KeyError:
            logger.warning("no user %r: bash runs as root", username)
    return uid if uid else None


async def spawn_bash(
    cwd: str,
    *,
    username: str | None,
    user_id: int | None,
    env: Mapping[str, str],
    rlimits: Mapping[int, tuple[int, int]],
    bash_path: str | None = None,
    base_env: Mapping[str, str] | None = None,
) -> tuple[asyncio.subprocess.Process, int]:
    """Start an interactive bash on a new PTY; returns it and the PTY's non-blocking master.

    ``bash_path``: the binary to start (a runtime bundle's static bash); default:
    ``bash`` on the PATH. ``base_env``: the whole environment to start with
    (a restored shell's) instead of the server's with the defaults; ``env`` is
    added to either.
    """
    uid = _target_uid(username, user_id)
    environment = _environment(cwd, uid, username, env, bash_path or "/bin/bash", base_env)
    # The server's own PATH finds the shell: a restored environment is the agent's, and
    # its PATH must not choose the program the server starts as the session's shell.
    search = environment if base_env is None else os.environ
    bash = bash_path or shutil.which("bash", path=search.get("PATH", os.defpath))
    if bash is None:
        raise BashStartError("bash was not found on PATH")
    user_args: dict[str, object] = dict(child_credentials())
    if uid is not None:
        try:
            entry = pwd.getpwuid(uid)
            groups = os.getgrouplist(entry.pw_name, entry.pw_gid)
            gid = entry.pw_gid
        except KeyError:
            gid, groups = uid, []
        user_args = {"user": uid, "group": gid, "extra_groups": groups}
    master, slave = os.openpty()
    try:
        _configure_pty(slave)
        if uid is not None:
            # The user's programs may open /dev/tty (ssh, sudo, read </dev/tty).
            os.fchown(slave, uid, -1)
        os.set_blocking(master, False)
        proc = await asyncio.create_subprocess_exec(
            bash,
            "--norc",
            "--noprofile",
            "--noediting",
            "-i",
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=cwd,
            env=environment,
            start_new_session=True,
            preexec_fn=functools.partial(_prepare_child, tuple(rlimits.items())),
            **user_args,  # type: ignore[arg-type]
        )
    except OSError as exc:
        os.close(master)
        raise BashStartError(f"cannot start bash in {cwd}: {exc}") from exc
    except BaseException:
        os.close(master)
        raise
    finally:
        os.close(slave)
    return proc, master
