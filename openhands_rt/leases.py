"""Session leases: which live runtime owns a sandbox, across processes.

A sandbox's host run directory (see :mod:`openhands_rt.docker.rundir`) holds
a lease file, :data:`LEASE_FILE`. The runtime that uses the sandbox holds an
exclusive ``flock`` on it for as long as it does, and writes its owner
string (:func:`openhands_rt.sandboxes.owner_labels`: host, boot id, pid and
the pid's start time) into it so that a refused runtime can say who owns it.

Why a lock and not the container's owner label: the label names the process
that *created* the container, forever (Docker cannot change a running
container's labels), while ownership moves: a ``keep_runtime_alive`` sandbox
whose owner closed it is free for another runtime to attach to, although its
creator may still be alive. The kernel drops an ``flock`` when its holder
exits however it exits, so a crashed owner never leaves a stale lease. A
lock conflicts between two open file descriptions even inside one process,
so this also catches two runtimes of one process (which
:class:`~openhands_rt.runtime.EventStreamRuntime` refuses earlier, with a
clearer message).

The operations are a few bytes of local file I/O each: they run on the caller's
thread.
"""

from __future__ import annotations

import contextlib
import fcntl
import os

from openhands_rt.errors import SessionInUseError
from openhands_rt.sandboxes import LABEL_OWNER, owner_labels

__all__ = ["LEASE_FILE", "LeaseHolder", "SessionLease"]

LEASE_FILE = "owner"


class SessionLease:
    """An exclusive hold on one sandbox's run directory; :meth:`release` gives it up."""

    def __init__(self, run_dir: str, fd: int) -> None:
        self.run_dir = run_dir
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, run_dir: str, *, session_id: str, sandbox: str) -> SessionLease:
        """Take the lease of the sandbox whose run directory is ``run_dir``.

        Raises :class:`SessionInUseError` (naming the owner) when a live runtime
        holds it; ``OSError`` when the file cannot be opened.
        """
        path = os.path.join(run_dir, LEASE_FILE)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = os.pread(fd, 4096, 0).decode(errors="replace").strip()
                raise SessionInUseError(
                    f"session {session_id!r} is in use: {sandbox} belongs to a live runtime "
                    f"({describe_owner(owner)}); close that runtime first, or choose another "
                    "session id",
                    session_id=session_id,
                    owner=owner,
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, owner_labels()[LABEL_OWNER].encode() + b"\n", 0)
        except BaseException:
            os.close(fd)
            raise
        return cls(run_dir, fd)

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Give the sandbox up (closing the file drops the lock). Idempotent."""
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)


class LeaseHolder:
    """The one lease a runtime holds at a time, on the sandbox it uses.

    ``sandbox``: the sandbox's name, for the refusal's message.
    """

    def __init__(self, *, session_id: str, sandbox: str) -> None:
        self.session_id = session_id
        self.sandbox = sandbox
        self.lease: SessionLease | None = None

    def hold(self, run_dir: str | None) -> None:
        """Hold the lease of the sandbox whose run directory this is, giving up any other.

        No-op when ``run_dir`` is None or gone (not ours, or its owner is gone and
        took the directory with it) or already held. Raises
        :class:`SessionInUseError` when a live runtime holds it.
        """
        if run_dir is None or not os.path.isdir(run_dir):
            return
        if self.lease is not None and self.lease.run_dir == run_dir:
            return
        lease = SessionLease.acquire(run_dir, session_id=self.session_id, sandbox=self.sandbox)
        self.release()
        self.lease = lease

    def release(self) -> None:
        """Give up the lease held, if any. Idempotent."""
        lease, self.lease = self.lease, None
        if lease is not None:
            lease.release()


def describe_owner(owner: str) -> str:
    """``host/boot_id/pid/start`` → ``process PID on host HOST`` (as is if malformed)."""
    parts = owner.split("/")
    if len(parts) != 4:
        return f"owner {owner!r}" if owner else "owner unknown"
    host, _boot_id, pid, _start = parts
    return f"process {pid} on host {host}"
