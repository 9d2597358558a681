"""When a dead sandbox is started again by itself (``auto_restart``), and what it lost.

A container that exits while the runtime uses it (``docker kill``, the server
killed or OOM-killed: the server is the init's only child, so its death ends
the container) is noticed through Docker's wait endpoint. With
``auto_restart=True`` the runtime starts the same container again — at most
:data:`RESTART_LIMIT` times per :data:`RESTART_WINDOW` seconds, so that a
server that cannot stay up is reported, not restarted forever — and its
``ready`` event says what the restart lost (:func:`restart_note`).

Pure: clock readings in, decisions out.
"""

from __future__ import annotations

from collections import deque

from openhands_rt.config import SandboxConfig

__all__ = ["RESTART_LIMIT", "RESTART_WINDOW", "RestartBudget", "restart_note"]

RESTART_LIMIT = 3
RESTART_WINDOW = 60.0


class RestartBudget:
    """At most ``limit`` restarts within any ``window`` seconds (monotonic clock readings)."""

    def __init__(self, limit: int = RESTART_LIMIT, window: float = RESTART_WINDOW) -> None:
        self.limit = limit
        self.window = window
        self._times: deque[float] = deque(maxlen=limit)

    def allows(self, now: float) -> bool:
        """Whether a restart at ``now`` stays within the budget."""
        times = self._times
        return len(times) < self.limit or now - times[0] > self.window

    def spend(self, now: float) -> None:
        """Record a restart at ``now``."""
        self._times.append(now)

    def exhausted_note(self) -> str:
        """Why a death is not followed by a restart, for the error event."""
        return f"not restarted: it died {self.limit} times within {self.window:.0f} s"


def restart_note(config: SandboxConfig, name: str) -> str:
    """What the restarted container ``name`` kept and lost (its ``ready`` message)."""
    if config.read_only_root:
        kept = "the root filesystem is read-only" + (
            " and the workspace is mounted" if config.workspace_dir else ""
        )
        lost = "the tmpfs mounts (/tmp, the home directory"
        lost += ")" if config.workspace_dir else ", /workspace)"
    else:
        kept = "the container's files are kept"
        # gVisor mounts its own in-memory /tmp unless the container has one.
        lost = "/tmp" if config.oci_runtime == "runsc" else ""
    gone = "its processes and shell state" + (f" and {lost}" if lost else "")
    return f"{name} was started again: {gone} are gone; {kept}"
