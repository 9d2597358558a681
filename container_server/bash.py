"""The persistent bash session: one interactive bash on a PTY, driven by asyncio.

This is the thin I/O driver over :mod:`container_server.bash_protocol` (what
to write, how to read the stream back) and follows OpenHands' semantics for
``CmdRunAction`` (the texts are in the protocol module):

* A command runs until its prompt comes back (completed), until it prints
  nothing for ``no_change_timeout`` seconds (soft timeout; not with
  ``blocking=True``) or until its hard timeout (``action.timeout``, else
  ``default_timeout``; ``0`` means none, as in OpenHands). After a timeout the
  process keeps running: ``""`` waits for more of its output, ``is_input=True``
  text is typed into it (then Enter), ``C-c``/``C-d``/``C-z`` (any
  ``C-<letter>``, with or without ``is_input``) send that control key. Each of
  these returns only the output new since the previous observation, with the
  continuation prefix. A new command while one runs is not sent.
* Several top-level commands in one action (``ls\npwd``) are not run: the
  answer is OpenHands' ``ERROR: Cannot execute multiple commands at once.``
  error (:mod:`container_server.bash_split`), unless the session allows them
  (``allow_multiple_commands``). One compound command (a loop, a heredoc, an
  ``&&`` chain, a function) is one command.
* ``action.cwd`` runs the command in that directory; the session's own
  working directory is restored at the next prompt.
* Output is read as it arrives (``loop.add_reader`` on the non-blocking PTY
  master) and handed to ``on_output`` cleaned (escape sequences and control
  bytes removed, ``\\r\\n`` → ``\\n``; a progress line's bare ``\\r`` is
  kept in the stream). The observation's content has ``\\r`` overwrites settled
  as a terminal shows them, is right-stripped, and is cut to
  ``max_output_chars`` (head and tail halves around a marker).
* Output printed while no command runs (a background job between commands)
  is dropped; output of a running command that nobody is waiting for is kept
  for the next observation (bounded, head and tail).
* If bash dies (``exit``, ``kill -9 $$``), what it printed is returned, a new
  bash starts in the same directory (if it still exists) and the suffix says
  so. The old session's processes are killed.
* :meth:`BashSession.aclose` kills every process of the shell's session
  (background jobs too; a process that called ``setsid`` has left it), reaps
  bash and closes the PTY.

The PTY has echo and output post-processing off, 1000x1000 cells; bash runs
``--norc --noprofile --noediting`` with ``TERM=dumb``, ``PAGER=cat``,
``GIT_PAGER=cat``, ``PYTHONUNBUFFERED=1``, job control on, history off.
``SESSION_API_KEY`` is removed from the environment the shell inherits.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import functools
import logging
import math
import os
import pwd
import resource
import secrets
import select
import shutil
import signal
import struct
import termios
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Final

from container_server.bash_protocol import (
    CONTINUATION_PREFIX,
    NO_RUNNING_COMMAND_INPUT,
    NO_RUNNING_COMMAND_LOGS,
    OutputText,
    PromptInfo,
    PromptParser,
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
from container_server.privileges import child_credentials
from container_server.truncate import LastLinesBuffer
from events import CmdOutputMetadata, CmdOutputObservation, CmdRunAction, ErrorObservation
from events.wire import ErrorId

__all__ = ["BashSession", "BashStartError"]

logger = logging.getLogger(__name__)

OutputCallback = Callable[[str], None]

_TERMINAL_SIZE: Final = (1000, 1000)  # rows, columns: long lines are not wrapped
_START_TIMEOUT: Final = 30.0  # seconds for a new bash to show its first prompt
_EXIT_WAIT: Final = 2.0  # seconds aclose() waits for killed processes to be gone
_READS_PER_WAKEUP: Final = 16  # a PTY read returns at most ~4 KiB; batch them per wakeup
_READ_SIZE: Final = 1 << 16
_DRAIN_READS: Final = 4096  # ~16 MiB at most
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


class BashStartError(RuntimeError):
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
    _quiet_termios(attrs)
    attrs[0] &= ~termios.IXON  # a ^S in typed input must not freeze the output
    if hasattr(termios, "IUTF8"):
        attrs[0] |= termios.IUTF8
    termios.tcsetattr(fd, termios.TCSANOW, attrs)
    rows, columns = _TERMINAL_SIZE
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))


_ECHO_FLAGS: Final = termios.ECHO | termios.ECHOE | termios.ECHOK | termios.ECHONL


def _quiet_termios(attrs: list[Any]) -> bool:
    """Echo off (the command is not repeated), no output post-processing; True if changed."""
    lflag: int = attrs[3]
    oflag: int = attrs[1]
    # Without OPOST the kernel does not turn \n into \r\n, and a program writing line by
    # line costs one tty write per line instead of one per special character.
    new_lflag, new_oflag = lflag & ~_ECHO_FLAGS, oflag & ~termios.OPOST
    attrs[3], attrs[1] = new_lflag, new_oflag
    return (new_lflag, new_oflag) != (lflag, oflag)


def _session_members(session_id: int) -> list[int]:
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


def _kill_session(session_id: int) -> list[int]:
    members = _session_members(session_id)
    for pid in members:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(session_id, signal.SIGKILL)
    return members


async def _wait_gone(pids: list[int], timeout: float) -> None:
    """Wait until the processes have exited (pidfd readability), at most ``timeout`` s."""
    if not pids or not hasattr(os, "pidfd_open"):
        return
    loop = asyncio.get_running_loop()
    waiters: list[asyncio.Future[None]] = []
    fds: list[int] = []
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            continue  # already gone, or pidfds unsupported
        fds.append(fd)
        waiter: asyncio.Future[None] = loop.create_future()
        loop.add_reader(fd, _resolve, waiter)
        waiters.append(waiter)
    try:
        if waiters:
            await asyncio.wait(waiters, timeout=timeout)
    finally:
        for fd in fds:
            loop.remove_reader(fd)
            os.close(fd)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _exit_status(returncode: int) -> int:
    # asyncio reports death by signal N as -N; a shell says 128 + N.
    return 128 - returncode if returncode < 0 else returncode


class BashSession:
    """One persistent interactive bash. Construct, then ``await start()`` (or ``async with``)."""

    def __init__(
        self,
        *,
        working_dir: str,
        username: str | None = None,
        user_id: int | None = None,
        no_change_timeout: float = 10.0,
        default_timeout: float | None = 120.0,
        max_output_chars: int = 30_000,
        env: Mapping[str, str] | None = None,
        rlimits: Mapping[int, tuple[int, int]] | None = None,
        allow_multiple_commands: bool = False,
    ) -> None:
        self._working_dir = working_dir
        self._allow_multiple_commands = allow_multiple_commands
        # resource.RLIMIT_* -> (soft, hard), applied to bash before it runs anything,
        # so every process the agent starts inherits them.
        self._rlimits = dict(rlimits or {})
        self._username = username
        self._user_id = user_id
        self._no_change_timeout = no_change_timeout
        self._default_timeout = default_timeout
        self._max_output_chars = max_output_chars
        self._extra_env = dict(env or {})
        self._nonce = secrets.token_hex(16)
        self._lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._master = -1
        self._reading = False
        self._exit_task: asyncio.Task[None] | None = None
        self._pidfd = -1
        self._death_poll: select.poll | None = None
        self._parser = PromptParser(self._nonce)
        self._output = LastLinesBuffer(max(max_output_chars, 1024))
        self._on_output: OutputCallback | None = None
        self._last_prompt: PromptInfo | None = None
        self._running = False
        self._observed = False  # an observation was already returned for the running command
        self._completed: PromptInfo | None = None
        self._reprompted = False
        self._exited_status: int | None = None
        self._wakeup: asyncio.Future[None] | None = None
        self._last_activity = 0.0
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> BashSession:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Spawn bash and wait for its first prompt."""
        if self._proc is not None or self._closed:
            raise RuntimeError("a BashSession starts once")
        self._loop = asyncio.get_running_loop()
        await self._spawn(self._working_dir)

    async def aclose(self) -> None:
        """Kill the shell's session, reap bash, close the PTY. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._wake()
        await self._terminate()

    @property
    def cwd(self) -> str:
        """The working directory the last prompt reported."""
        if self._last_prompt is not None and self._last_prompt.working_dir:
            return self._last_prompt.working_dir
        return self._working_dir

    @property
    def is_alive(self) -> bool:
        """bash is up (False once it died, until the next ``run`` restarts it)."""
        return self._proc is not None and self._exited_status is None and not self._closed

    @property
    def is_running(self) -> bool:
        """A command was sent and its prompt has not come back yet."""
        return self._running

    # ------------------------------------------------------------------ running actions

    async def run(
        self, action: CmdRunAction, on_output: OutputCallback | None = None
    ) -> CmdOutputObservation | ErrorObservation:
        """Run (or continue, or type into) a command; see the module docstring."""
        if self._closed or self._proc is None:
            return ErrorObservation(
                "ERROR: The bash session is not running.", error_id=ErrorId.BASH_SESSION_CLOSED
            )
        stripped = action.command.strip()
        key = special_key(stripped)
        is_new_command = bool(stripped) and not action.is_input and key is None
        if is_new_command and not self._allow_multiple_commands:
            commands = split_commands(stripped)
            if len(commands) > 1:
                # OpenHands' answer: agents trained on it chain commands instead.
                return ErrorObservation(
                    multiple_commands_error(commands), error_id=ErrorId.MULTIPLE_COMMANDS
                )
        if is_new_command and self._running and self._exited_status is None:
            return self._refuse(action)
        async with self._lock:
            note = ""
            if self._exited_status is None and self._exit_task is not None and self._has_died():
                # Dead but not reaped yet: let the watcher record how it ended.
                await asyncio.wait([self._exit_task])
            if self._exited_status is not None:
                # Died while nobody waited (killed from outside, or with a timed-out command).
                if self._running and not is_new_command:
                    # This continues the command that died with the shell: say how it ended.
                    prefix = CONTINUATION_PREFIX if self._observed else ""
                    return await self._shell_died(action, prefix, None)
                note = await self._restart()
            if self._is_closed():
                return ErrorObservation(
                    "ERROR: The bash session was closed.", error_id=ErrorId.BASH_SESSION_CLOSED
                )
            if is_new_command and self._running:
                return self._refuse(action)
            if not is_new_command and not self._running and self._completed is None:
                content = NO_RUNNING_COMMAND_LOGS if not stripped else NO_RUNNING_COMMAND_INPUT
                return CmdOutputObservation(
                    content,
                    command=action.command,
                    metadata=self._metadata(exit_code=-1, suffix=note),
                    hidden=action.hidden,
                )
            return await self._run_locked(action, stripped, key, is_new_command, note, on_output)

    async def _run_locked(
        self,
        action: CmdRunAction,
        stripped: str,
        key: bytes | None,
        is_new_command: bool,
        note: str,
        on_output: OutputCallback | None,
    ) -> CmdOutputObservation | ErrorObservation:
        loop = self._require_loop()
        timeout = self._default_timeout if action.timeout is None else action.timeout
        hard = timeout if timeout else None  # 0 or None: no hard timeout (OpenHands)
        soft = None if action.blocking else self._no_change_timeout
        start = loop.time()
        continuation = self._observed
        if is_new_command:
            self._output.clear()
            self._completed = None
            self._reprompted = False
            self._observed = continuation = False
            self._running = True
            self._requiet_pty()
            data = encode_command(action.command, cwd=action.cwd)
        elif not self._running:
            # It finished after the last observation: report that, type nothing into bash.
            data = b""
        elif key is not None:
            data = key
        elif stripped:
            data = encode_input(stripped)
        else:
            data = b""
        self._on_output = on_output
        try:
            if data:
                await self._write(data, None if hard is None else start + hard)
            outcome = await self._wait(start, soft=soft, hard=hard)
        finally:
            self._on_output = None
        prefix = CONTINUATION_PREFIX if continuation else ""
        key_name = stripped if key is not None and data else None
        if outcome == "exited":
            return await self._shell_died(action, prefix, key_name)
        content, truncated = self._output.take(self._max_output_chars)
        prefix += truncated
        if outcome == "completed":
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
                    suffix=completed_suffix(info.exit_code, key_name) + note,
                ),
                hidden=action.hidden,
            )
        self._observed = True
        if outcome == "hard":
            assert hard is not None
            suffix = hard_timeout_suffix(hard)
        else:
            suffix = soft_timeout_suffix(self._no_change_timeout)
        return CmdOutputObservation(
            content,
            command=action.command,
            metadata=self._metadata(exit_code=-1, prefix=prefix, suffix=suffix + note),
            hidden=action.hidden,
        )

    def send_key(self, key: bytes) -> bool:
        """Type a control key into the running command now, without waiting for the session.

        For an interrupt while another action waits on the command: that
        action's observation reports how the command ended. False when no
        command runs or the PTY refused the byte.
        """
        if not self._running or self._closed or self._master < 0:
            return False
        try:
            return os.write(self._master, key) == len(key)
        except OSError as exc:
            logger.warning("writing a control key to the bash PTY failed: %s", exc)
            return False

    def _refuse(self, action: CmdRunAction) -> CmdOutputObservation:
        """A new command while one runs: not sent; the running one's new output is returned."""
        content = truncated = ""
        if not self._lock.locked():
            # Nobody is waiting on the running command: this observation takes its output.
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

    async def _shell_died(
        self, action: CmdRunAction, prefix: str, key_name: str | None
    ) -> CmdOutputObservation | ErrorObservation:
        status = self._exited_status if self._exited_status is not None else -1
        content, truncated = self._output.take(self._max_output_chars)
        prefix += truncated
        if self._closed:
            return ErrorObservation(
                "ERROR: The bash session was closed while the command ran.",
                error_id=ErrorId.BASH_SESSION_CLOSED,
            )
        note = await self._restart()
        return CmdOutputObservation(
            content,
            command=action.command,
            metadata=self._metadata(
                exit_code=status, prefix=prefix, suffix=completed_suffix(status, key_name) + note
            ),
            hidden=action.hidden,
        )

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

    async def _wait(self, start: float, *, soft: float | None, hard: float | None) -> str:
        """Until completion, shell exit, soft or hard timeout; returns which one."""
        loop = self._require_loop()
        self._last_activity = start
        hard_deadline = math.inf if hard is None else start + hard
        while True:
            if self._completed is not None:
                return "completed"
            if self._exited_status is not None or self._closed:
                return "exited"
            now = loop.time()
            if now >= hard_deadline:
                return "hard"
            deadline = hard_deadline
            if soft is not None:
                soft_deadline = self._last_activity + soft
                if now >= soft_deadline:
                    return "soft"
                deadline = min(deadline, soft_deadline)
            # Woken by a prompt, the shell's death or the earliest deadline; output only
            # moves the soft deadline, which is re-read when the timer fires.
            wakeup: asyncio.Future[None] = loop.create_future()
            self._wakeup = wakeup
            timer = None if math.isinf(deadline) else loop.call_at(deadline, _resolve, wakeup)
            try:
                await wakeup
            finally:
                self._wakeup = None
                if timer is not None:
                    timer.cancel()

    def _is_closed(self) -> bool:
        # A method, not the attribute: it changes while a coroutine awaits.
        return self._closed

    def _has_died(self) -> bool:
        """bash has exited (perhaps not reaped yet); a pidfd poll, no blocking."""
        return bool(self._death_poll is not None and self._death_poll.poll(0))

    def _wake(self) -> None:
        if self._wakeup is not None:
            _resolve(self._wakeup)

    # ------------------------------------------------------------------ the PTY

    def _require_loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "BashSession.start() was not awaited"
        return self._loop

    def _on_readable(self) -> None:
        self._read_available(_READS_PER_WAKEUP)

    def _read_available(self, max_reads: int) -> bool:
        """Read up to ``max_reads`` times; True if more may be waiting."""
        for _ in range(max_reads):
            try:
                data = os.read(self._master, _READ_SIZE)
            except BlockingIOError:
                return False
            except OSError as exc:
                # EIO: no process holds the PTY's other end any more.
                if exc.errno != errno.EIO:
                    logger.warning("reading the bash PTY failed: %s", exc)
                self._stop_reading()
                return False
            if not data:
                self._stop_reading()
                return False
            self._feed(data)
        return True

    def _drain(self) -> None:
        """Read what is already buffered in the PTY (the shell just exited)."""
        if self._reading:
            # Bounded: a leftover background process may still be writing.
            self._read_available(_DRAIN_READS)

    def _feed(self, data: bytes) -> None:
        self._last_activity = self._require_loop().time()
        for event in self._parser.feed(data):
            if isinstance(event, OutputText):
                if self._running:
                    self._emit(event.text)
            else:
                info = event.info
                previous = self._last_prompt
                self._last_prompt = info
                if (
                    self._running
                    and previous is not None
                    and info.seq == previous.seq
                    and not self._reprompted
                    and self._poke_prompt()
                ):
                    # The previous prompt printed again, unexpanded: what interactive bash
                    # does after an eval whose text ended inside a quote or after a
                    # backslash (see bash_protocol), so $? is not in it. An empty line
                    # makes bash prompt afresh with $? unchanged.
                    self._reprompted = True
                    continue
                if self._running:
                    self._running = False
                    self._completed = info
                    self._wake()

    def _poke_prompt(self) -> bool:
        try:
            return os.write(self._master, b"\n") == 1
        except OSError:
            return False

    def _emit(self, text: str) -> None:
        self._output.append(text)
        callback = self._on_output
        if callback is not None:
            try:
                callback(text)
            except Exception:
                logger.exception("on_output callback failed; output streaming stopped")
                self._on_output = None

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._require_loop().remove_reader(self._master)

    def _requiet_pty(self) -> None:
        # A program (or `stty sane`) may have turned echo back on while it ran.
        try:
            attrs = termios.tcgetattr(self._master)
            if _quiet_termios(attrs):
                termios.tcsetattr(self._master, termios.TCSANOW, attrs)
        except termios.error as exc:
            logger.debug("cannot re-apply the PTY settings: %s", exc)

    async def _write(self, data: bytes, deadline: float | None) -> None:
        """Write all of ``data`` to the PTY, waiting for room; gives up at ``deadline``."""
        loop = self._require_loop()
        view = memoryview(data)
        while view:
            try:
                written = os.write(self._master, view)
            except BlockingIOError:
                written = 0
            except OSError as exc:
                logger.warning("writing to the bash PTY failed: %s", exc)
                return
            view = view[written:]
            if not view:
                return
            room: asyncio.Future[None] = loop.create_future()
            loop.add_writer(self._master, _resolve, room)
            try:
                remaining = None if deadline is None else max(0.0, deadline - loop.time())
                done, _ = await asyncio.wait([room], timeout=remaining)
            finally:
                loop.remove_writer(self._master)
            if not done:
                logger.warning(
                    "the PTY took no input until the timeout; %d bytes dropped", len(view)
                )
                return

    # ------------------------------------------------------------------ the process

    def _environment(self, cwd: str, uid: int | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
        env.update(_DEFAULT_ENV)
        if uid is not None:
            try:
                entry: pwd.struct_passwd | None = pwd.getpwuid(uid)
            except KeyError:
                entry = None
            name = entry.pw_name if entry else (self._username or str(uid))
            env.update(
                HOME=entry.pw_dir if entry else "/",
                USER=name,
                LOGNAME=name,
                SHELL="/bin/bash",
            )
        env.update(self._extra_env)
        env["PWD"] = cwd
        return env

    def _target_uid(self) -> int | None:
        """The uid to switch to: only when running as root and asked for another user.

        A server that already acts as the sandbox user (real uid 0, effective uid
        the sandbox user's: :mod:`container_server.privileges`) starts bash as its
        effective user; that is not a switch this method decides.
        """
        if os.geteuid() != 0:
            if self._user_id is not None and self._user_id != os.geteuid():
                logger.warning(
                    "not root: bash runs as uid %d, not as the requested uid %d",
                    os.geteuid(),
                    self._user_id,
                )
            return None
        uid = self._user_id
        if uid is None and self._username is not None:
            try:
                uid = pwd.getpwnam(self._username).pw_uid
            except KeyError:
                logger.warning("no user %r: bash runs as root", self._username)
        return uid if uid else None

    async def _spawn(self, cwd: str) -> None:
        loop = self._require_loop()
        uid = self._target_uid()
        env = self._environment(cwd, uid)
        bash = shutil.which("bash", path=env.get("PATH", os.defpath))
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
                env=env,
                start_new_session=True,
                preexec_fn=functools.partial(_prepare_child, tuple(self._rlimits.items())),
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
        self._proc = proc
        self._master = master
        self._parser = PromptParser(self._nonce)
        self._last_prompt = None  # a new shell counts its prompts from 1 again
        self._exited_status = None
        self._running = True  # until the first prompt: the setup script is the "command"
        self._completed = None
        loop.add_reader(master, self._on_readable)
        self._reading = True
        self._exit_task = asyncio.ensure_future(self._watch_exit(proc))
        self._open_pidfd(proc.pid)
        start = loop.time()
        await self._write(encode_command(setup_script(self._nonce)), start + _START_TIMEOUT)
        outcome = await self._wait(start, soft=None, hard=_START_TIMEOUT)
        startup_output = self._output.render(2000)
        self._output.clear()
        self._completed = None
        if outcome != "completed":
            self._running = False
            await self._terminate()
            raise BashStartError(f"bash did not start ({outcome}); it printed: {startup_output!r}")
        logger.debug("bash %d started in %s", proc.pid, self.cwd)

    def _open_pidfd(self, pid: int) -> None:
        if not hasattr(os, "pidfd_open"):
            return
        try:
            self._pidfd = os.pidfd_open(pid)
        except OSError as exc:  # an old kernel or a sandbox without pidfds
            logger.debug("no pidfd for bash: %s", exc)
            return
        self._death_poll = select.poll()
        self._death_poll.register(self._pidfd, select.POLLIN)

    async def _watch_exit(self, proc: asyncio.subprocess.Process) -> None:
        returncode = await proc.wait()
        self._drain()
        for event in self._parser.flush():
            if isinstance(event, OutputText) and self._running:
                self._emit(event.text)
        self._exited_status = _exit_status(returncode)
        logger.info("bash %d exited with status %d", proc.pid, self._exited_status)
        self._wake()

    async def _restart(self) -> str:
        """Replace a dead shell; returns the note for the observation."""
        status = self._exited_status if self._exited_status is not None else -1
        previous_cwd = self.cwd
        await self._terminate()
        self._running = False
        self._observed = False
        self._output.clear()
        cwd = next(
            (d for d in (previous_cwd, self._working_dir) if os.path.isdir(d)),
            os.path.expanduser("~") if os.path.isdir(os.path.expanduser("~")) else "/",
        )
        self._proc = None
        await self._spawn(cwd)
        return restart_note(status, self.cwd)

    async def _terminate(self) -> None:
        """Kill the shell's session, reap bash, stop reading and close the PTY."""
        proc = self._proc
        if self._exit_task is not None:
            self._exit_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._exit_task
            self._exit_task = None
        killed: list[int] = []
        if proc is not None:
            # bash is its session's leader: the session id is its pid.
            killed = _kill_session(proc.pid)
            await proc.wait()
        self._stop_reading()
        if self._master >= 0:
            os.close(self._master)
            self._master = -1
        if self._pidfd >= 0:
            self._death_poll = None
            os.close(self._pidfd)
            self._pidfd = -1
        await _wait_gone([pid for pid in killed if proc is None or pid != proc.pid], _EXIT_WAIT)
