"""Errors raised by openhands_rt.

Error tree::

    SandboxError                    root of every error this package raises
     ├── SandboxBuildError          the runtime image build failed (names its log, quotes the tail)
     ├── SandboxStartError          the sandbox did not become ready (carries the log tail)
     ├── SandboxConnectionError     the action channel to the sandbox is lost or refused
     ├── SessionInUseError          the session id is held by another live runtime
     └── SandboxClosedError         the runtime was used after close()

Third-party errors (aiodocker, websockets, OSError) are translated at the edge
with ``raise SandboxError(...) from exc``.
"""

from __future__ import annotations

__all__ = [
    "SandboxBuildError",
    "SandboxClosedError",
    "SandboxConnectionError",
    "SandboxError",
    "SandboxStartError",
    "SessionInUseError",
]


class SandboxError(Exception):
    """Root of every error raised by openhands_rt."""


class SandboxBuildError(SandboxError):
    """The runtime image could not be built.

    ``message`` says what failed; ``log_tail`` holds the last build output lines and
    ``log_file`` names the file with all of them (None when none was written).
    """

    def __init__(
        self, message: str, *, log_tail: list[str] | None = None, log_file: str | None = None
    ) -> None:
        self.message = message
        self.log_tail = list(log_tail or [])
        self.log_file = log_file
        text = message
        if log_file is not None:
            text += f"\nbuild log: {log_file}"
        if self.log_tail:
            text += "\n--- last build output ---\n" + "\n".join(self.log_tail)
        super().__init__(text)


class SandboxStartError(SandboxError):
    """The sandbox did not become ready. ``log_tail`` holds its last log lines."""

    def __init__(self, message: str, *, log_tail: list[str] | None = None) -> None:
        self.log_tail = list(log_tail or [])
        text = message
        if self.log_tail:
            text += "\n--- last sandbox output ---\n" + "\n".join(self.log_tail)
        super().__init__(text)


class SandboxConnectionError(SandboxError):
    """The action channel is lost, refused or unauthorized."""


class SandboxClosedError(SandboxError):
    """The runtime was used after it was closed."""


class SessionInUseError(SandboxError):
    """Another live runtime (in this process or another one) holds this session id.

    ``owner`` says who: ``"this process"`` or the owning process as
    ``host/boot_id/pid/start_time`` (see :func:`openhands_rt.sandboxes.owner_labels`).
    """

    def __init__(self, message: str, *, session_id: str, owner: str) -> None:
        super().__init__(message)
        self.session_id = session_id
        self.owner = owner
