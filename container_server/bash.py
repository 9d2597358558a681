"""The persistent bash session: one interactive bash on a PTY, driven by asyncio.

:class:`BashSession` is the thin I/O adapter over :class:`~container_server.bash_core.BashCore`
(the protocol: what to write, what the bytes read back mean, when a wait is
over) and :mod:`container_server.bash_process` (spawning bash on its PTY,
killing its session). It follows OpenHands' semantics for ``CmdRunAction``
(the texts are in :mod:`container_server.bash_protocol`):

* A command runs until its prompt comes back (completed), until it prints
  nothing for ``no_change_timeout`` seconds (soft timeout; not with
  ``blocking=True``) or until its hard timeout (``action.timeout``, else
  ``default_timeout``; ``0`` means none, as in OpenHands). After a timeout the
  process keeps running: ``""`` waits for more of its output, ``is_input=True``
  text is typed into it (then Enter), ``C-c``/``C-d``/``C-z`` (any
  ``C-<letter>``, with or without ``is_input``) send that control key. Each of
  these returns only the output new since the previous observation, with the
  continuation prefix. A new command while one runs is not sent.
* Several top-level commands in one action (``ls\\npwd``) are not run: the
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

Concurrency: the session runs no task of its own between calls. The PTY is
read by a ``loop.add_reader`` callback and bash's death is noticed by one on
its pidfd; both only feed the core and wake the waiting call, which reaps a
dead bash itself. Without pidfds (an old kernel, some sandboxes) the waiting
call watches ``proc.wait()`` in a task group it owns for the length of the
wait. If a callback fails, the session is down: every later call raises
:class:`BashSessionError` (never silence). ``start()`` and ``aclose()`` may be
called from different tasks (the server starts the shell beside the plugins).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import math
import os
import secrets
import select
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Final

import anyio

from container_server.bash_core import (
    SESSION_CLOSED,
    SESSION_CLOSED_WHILE_RUNNING,
    SESSION_NOT_RUNNING,
    BashCore,
    Outcome,
    Request,
    ShellDied,
)
from container_server.bash_process import (
    BashStartError,
    exit_status,
    kill_session,
    requiet,
    spawn_bash,
    wait_gone,
)
from container_server.errors import ServerError
from container_server.shell_state import ShellStateUnavailable, restored_environment
from events import CmdOutputObservation, CmdRunAction, ErrorObservation
from events.control import ShellState

__all__ = ["BashSession", "BashSessionError", "BashStartError"]

logger = logging.getLogger(__name__)

OutputCallback = Callable[[str], None]

_START_TIMEOUT: Final = 30.0  # seconds for a new bash to show its first prompt
_EXIT_WAIT: Final = 2.0  # seconds aclose() waits for killed processes to be gone
_READS_PER_WAKEUP: Final = 16  # a PTY read returns at most ~4 KiB; batch them per wakeup
_READ_SIZE: Final = 1 << 16
_DRAIN_READS: Final = 4096  # ~16 MiB at most


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class BashSessionError(ServerError, RuntimeError):
    """The session's PTY reader or exit watcher failed: the session is down."""


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
        bash_path: str | None = None,
        restore: ShellState | None = None,
    ) -> None:
        self._working_dir = working_dir
        # A restored shell (container_server.shell_state) starts, and restarts, in that state.
        self._start_dir = restore.cwd if restore is not None else working_dir
        self._base_env = restored_environment(restore) if restore is not None else None
        self._bash_path = bash_path
        # resource.RLIMIT_* -> (soft, hard), applied to bash before it runs anything,
        # so every process the agent starts inherits them.
        self._rlimits = dict(rlimits or {})
        self._username = username
        self._user_id = user_id
        self._extra_env = dict(env or {})
        self._core = BashCore(
            nonce=secrets.token_hex(16),
            working_dir=working_dir,
            no_change_timeout=no_change_timeout,
            default_timeout=default_timeout,
            max_output_chars=max_output_chars,
            allow_multiple_commands=allow_multiple_commands,
        )
        self._lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._master = -1
        self._reading = False
        self._pidfd = -1
        self._death_poll: select.poll | None = None
        self._exit_noticed = False  # the pidfd turned readable: bash exited
        self._on_output: OutputCallback | None = None
        self._wakeup: asyncio.Future[None] | None = None
        self._failure: BaseException | None = None

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
        if self._proc is not None or self._core.closed:
            raise RuntimeError("a BashSession starts once")
        self._loop = asyncio.get_running_loop()
        start_dir = self._start_dir
        if start_dir != self._working_dir and not os.path.isdir(start_dir):
            logger.warning(
                "the restored working directory %s does not exist; the shell starts in %s",
                start_dir,
                self._working_dir,
            )
            start_dir = self._working_dir
        await self._spawn(start_dir)

    async def aclose(self) -> None:
        """Kill the shell's session, reap bash, close the PTY. Idempotent."""
        if self._core.closed:
            return
        self._core.close()
        self._wake()
        await self._terminate()

    @property
    def cwd(self) -> str:
        """The working directory the last prompt reported."""
        return self._core.cwd

    @property
    def is_alive(self) -> bool:
        """bash is up (False once it died, until the next ``run`` restarts it)."""
        return (
            self._proc is not None
            and self._core.exited_status is None
            and not self._core.closed
            and not self._has_died()
        )

    @property
    def is_running(self) -> bool:
        """A command was sent and its prompt has not come back yet."""
        return self._core.is_running

    # ------------------------------------------------------------------ running actions

    async def run(
        self, action: CmdRunAction, on_output: OutputCallback | None = None
    ) -> CmdOutputObservation | ErrorObservation:
        """Run (or continue, or type into) a command; see the module docstring."""
        self._raise_failure()
        core = self._core
        if core.closed or self._proc is None:
            return core.unavailable(SESSION_NOT_RUNNING)
        request = core.check(action, busy=self._lock.locked())
        if not isinstance(request, Request):
            return request
        async with self._lock:
            note = ""
            if core.exited_status is None and self._has_died():
                await self._reap()  # dead but not reaped yet
            if core.exited_status is not None:
                # Died while nobody waited (killed from outside, or with a timed-out command).
                died = core.died_continuation(request)
                if died is not None:
                    return await self._replace_shell(died)
                note = await self._restart()
            if self._is_closed():
                return core.unavailable(SESSION_CLOSED)
            step = core.begin(request, self._require_loop().time(), note=note)
            if isinstance(step, CmdOutputObservation):
                return step
            if request.is_new_command:
                requiet(self._master)
            self._on_output = on_output
            try:
                if step:
                    await self._write(step, core.write_deadline())
                outcome = await self._wait()
            finally:
                self._on_output = None
            result = core.finish(outcome)
            if isinstance(result, ShellDied):
                return await self._replace_shell(result)
            return result

    async def run_internal(self, command: str) -> int | None:
        """Run the server's own ``command`` in the idle shell; its exit code (None: the
        shell exited). Bound it at the call site: a cancelled wait leaves the shell busy.

        Its output is discarded and the agent's last command's unobserved output
        and unreported end are kept (:meth:`BashCore.begin_internal`). Raises
        :class:`ShellStateUnavailable` when the shell is not idle: a command runs
        (after its timeout) or the shell is down.
        """
        self._raise_failure()
        core = self._core
        async with self._lock:
            if core.exited_status is None and not core.closed and self._has_died():
                await self._reap()
            if core.closed or self._proc is None or core.exited_status is not None:
                raise ShellStateUnavailable(
                    "the shell is not running (a command's next action starts a new one)"
                )
            if core.is_running:
                raise ShellStateUnavailable(
                    "a command is still running in the shell; its state is read between "
                    'commands: wait for it (send "") or stop it (send "C-c")'
                )
            loop = self._require_loop()
            step = core.begin_internal(command, loop.time())
            outcome: Outcome | None = None
            try:
                await self._write(step, core.write_deadline())
                outcome = await self._wait()
            finally:
                status = core.finish_internal(outcome)
            return status

    def send_key(self, key: bytes) -> bool:
        """Type a control key into the running command now, without waiting for the session.

        For an interrupt while another action waits on the command: that
        action's observation reports how the command ended. False when no
        command runs or the PTY refused the byte.
        """
        if not self._core.is_running or self._core.closed or self._master < 0:
            return False
        try:
            return os.write(self._master, key) == len(key)
        except OSError as exc:
            logger.warning("writing a control key to the bash PTY failed: %s", exc)
            return False

    async def _replace_shell(self, died: ShellDied) -> CmdOutputObservation | ErrorObservation:
        if self._is_closed():
            return self._core.unavailable(SESSION_CLOSED_WHILE_RUNNING)
        note = await self._restart()
        return self._core.died_observation(died, note)

    async def _wait(self) -> Outcome:
        """Until the core's wait is over: completion, shell exit, soft or hard timeout."""
        proc = self._proc
        if self._pidfd >= 0 or proc is None:
            return await self._wait_for_outcome()
        # No pidfd to tell us: a task watches for bash's exit while we wait.
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._notice_exit, proc)
            try:
                outcome = await self._wait_for_outcome()
            finally:
                tg.cancel_scope.cancel()
        return outcome

    async def _wait_for_outcome(self) -> Outcome:
        core = self._core
        loop = self._require_loop()
        while True:
            self._raise_failure()
            # The pidfd callback (or _notice_exit) says so: no syscall per wakeup.
            if self._exit_noticed and core.exited_status is None and not core.closed:
                await self._reap()
            now = loop.time()
            outcome = core.outcome(now)
            if outcome is not None:
                return outcome
            # Woken by a prompt, the shell's death, aclose() or a failure; output only
            # moves the soft deadline, which is read again when this one passes. The
            # deadline is the core's (data), armed as a loop timer: an anyio cancel scope
            # and Event cost ~10x more per wait, and a command's round trip is ~0.3 ms.
            wakeup: asyncio.Future[None] = loop.create_future()
            self._wakeup = wakeup
            deadline = core.next_deadline()
            timer = None if math.isinf(deadline) else loop.call_at(deadline, _resolve, wakeup)
            try:
                await wakeup
            finally:
                self._wakeup = None
                if timer is not None:
                    timer.cancel()

    async def _notice_exit(self, proc: asyncio.subprocess.Process) -> None:
        await proc.wait()
        self._exit_noticed = True
        self._wake()

    def _is_closed(self) -> bool:
        # A method, not the property: mypy must not carry a narrowing across awaits.
        return self._core.closed

    def _has_died(self) -> bool:
        """bash has exited (perhaps not reaped yet); no blocking."""
        if self._exit_noticed:
            return True
        if self._death_poll is not None:
            return bool(self._death_poll.poll(0))
        return self._proc is not None and self._proc.returncode is not None

    def _wake(self) -> None:
        if self._wakeup is not None:
            _resolve(self._wakeup)

    def _fail(self, exc: BaseException, what: str) -> None:
        """A callback failed: the session is down, and says so to every caller."""
        logger.error("the bash session's %s failed; the session is down", what, exc_info=exc)
        if self._failure is None:
            self._failure = exc
        self._stop_reading()
        self._wake()

    def _raise_failure(self) -> None:
        if self._failure is not None:
            raise BashSessionError(
                f"the bash session is down: {type(self._failure).__name__}: {self._failure}"
            ) from self._failure

    # ------------------------------------------------------------------ the PTY

    def _require_loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "BashSession.start() was not awaited"
        return self._loop

    def _on_readable(self) -> None:
        try:
            self._read_available(_READS_PER_WAKEUP)
        except Exception as exc:
            self._fail(exc, "PTY reader")

    def _read_available(self, max_reads: int) -> bool:
        """Read up to ``max_reads`` times; True if more may be waiting.

        What up to :data:`_READS_PER_WAKEUP` reads return is fed to the core at once:
        a PTY read returns at most ~4 KiB, and the core's work is per call.
        """
        batch: list[bytes] = []
        more = True
        for _ in range(max_reads):
            try:
                data = os.read(self._master, _READ_SIZE)
            except BlockingIOError:
                more = False
                break
            except OSError as exc:
                # EIO: no process holds the PTY's other end any more.
                if exc.errno != errno.EIO:
                    logger.warning("reading the bash PTY failed: %s", exc)
                self._stop_reading()
                more = False
                break
            if not data:
                self._stop_reading()
                more = False
                break
            batch.append(data)
            if len(batch) == _READS_PER_WAKEUP:
                self._feed(b"".join(batch))
                batch.clear()
        if batch:
            self._feed(batch[0] if len(batch) == 1 else b"".join(batch))
        return more

    def _drain(self) -> None:
        """Read what is already buffered in the PTY (the shell just exited)."""
        if self._reading:
            # Bounded: a leftover background process may still be writing.
            self._read_available(_DRAIN_READS)

    def _feed(self, data: bytes) -> None:
        core = self._core
        texts = core.receive_output(data, self._require_loop().time())
        if texts:
            self._emit(texts)
        if core.has_data_to_send:
            self._send_now(core.data_to_send())
        if not core.is_running:
            self._wake()

    def _send_now(self, data: bytes) -> None:
        try:
            sent = os.write(self._master, data) == len(data)
        except OSError:
            sent = False
        if not sent:
            self._core.send_failed()

    def _emit(self, texts: list[str]) -> None:
        callback = self._on_output
        if callback is None:
            return
        for text in texts:
            try:
                callback(text)
            except Exception:
                logger.exception("on_output callback failed; output streaming stopped")
                self._on_output = None
                return

    def _stop_reading(self) -> None:
        if self._reading:
            self._reading = False
            self._require_loop().remove_reader(self._master)

    async def _write(self, data: bytes, deadline: float) -> None:
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
            with anyio.move_on_after(deadline - loop.time()) as scope:
                await anyio.wait_writable(self._master)
            if scope.cancelled_caught:
                logger.warning(
                    "the PTY took no input until the timeout; %d bytes dropped", len(view)
                )
                return

    # ------------------------------------------------------------------ the process

    async def _spawn(self, cwd: str) -> None:
        loop = self._require_loop()
        proc, master = await spawn_bash(
            cwd,
            username=self._username,
            user_id=self._user_id,
            env=self._extra_env,
            base_env=self._base_env,
            rlimits=self._rlimits,
            bash_path=self._bash_path,
        )
        self._proc = proc
        self._master = master
        self._exit_noticed = False
        loop.add_reader(master, self._on_readable)
        self._reading = True
        self._watch_exit(proc.pid)
        try:
            start = loop.time()
            setup = self._core.shell_started(start, timeout=_START_TIMEOUT)
            await self._write(setup, start + _START_TIMEOUT)
            outcome = await self._wait()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._terminate()
            raise
        startup_output = self._core.startup_finished(outcome)
        if startup_output is not None:
            await self._terminate()
            raise BashStartError(
                f"bash did not start ({outcome.value}); it printed: {startup_output!r}"
            )
        logger.debug("bash %d started in %s", proc.pid, self.cwd)

    def _watch_exit(self, pid: int) -> None:
        """Notice bash's exit by its pidfd turning readable (a callback, not a task)."""
        if not hasattr(os, "pidfd_open"):
            return
        try:
            self._pidfd = os.pidfd_open(pid)
        except OSError as exc:  # an old kernel or a sandbox without pidfds
            logger.debug("no pidfd for bash: %s", exc)
            return
        self._death_poll = select.poll()
        self._death_poll.register(self._pidfd, select.POLLIN)
        self._require_loop().add_reader(self._pidfd, self._on_exit)

    def _on_exit(self) -> None:
        # Level-triggered: a dead process's pidfd stays readable, so stop watching now.
        self._require_loop().remove_reader(self._pidfd)
        self._exit_noticed = True
        self._wake()

    async def _reap(self) -> None:
        """bash exited: collect its status and its last output into the core."""
        proc = self._proc
        assert proc is not None
        returncode = await proc.wait()
        if self._core.exited_status is not None or self._core.closed:
            return  # reaped meanwhile by another caller, or aclose() took over
        self._drain()
        status = exit_status(returncode)
        self._emit(self._core.shell_exited(status))
        logger.info("bash %d exited with status %d", proc.pid, status)

    async def _restart(self) -> str:
        """Replace a dead shell; returns the note for the observation."""
        core = self._core
        status = core.exited_status if core.exited_status is not None else -1
        previous_cwd = core.cwd
        await self._terminate()
        core.forget_command()
        home = os.path.expanduser("~")
        cwd = next(
            (d for d in (previous_cwd, self._working_dir) if os.path.isdir(d)),
            home if os.path.isdir(home) else "/",
        )
        self._proc = None
        await self._spawn(cwd)
        return core.restart_note(status)

    async def _terminate(self) -> None:
        """Kill the shell's session, reap bash, stop reading and close the PTY."""
        proc = self._proc
        killed: list[int] = []
        if proc is not None:
            # bash is its session's leader: the session id is its pid.
            killed = kill_session(proc.pid)
            await proc.wait()
        self._stop_reading()
        if self._master >= 0:
            os.close(self._master)
            self._master = -1
        if self._pidfd >= 0:
            self._require_loop().remove_reader(self._pidfd)
            self._death_poll = None
            os.close(self._pidfd)
            self._pidfd = -1
        with anyio.move_on_after(_EXIT_WAIT):
            await wait_gone([pid for pid in killed if proc is None or pid != proc.pid])
