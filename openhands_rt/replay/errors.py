"""The errors of :mod:`openhands_rt.replay`, all under openhands_rt's root.

Error tree::

    SandboxError                               openhands_rt's root (openhands_rt.errors)
     └── ReplayError                            bad output log, and the root of:
          ├── ReplayInputError (also ValueError)  the file is neither format (or broken)
          └── ReplayMismatchError                 serve-recorded: not the next recorded action
"""

from __future__ import annotations

from events import Action
from openhands_rt.errors import SandboxError

__all__ = ["ReplayError", "ReplayInputError", "ReplayMismatchError"]


class ReplayError(SandboxError):
    """Root of the errors raised by :mod:`openhands_rt.replay` (tree in the module docstring)."""


class ReplayInputError(ReplayError, ValueError):
    """The input is neither an event log nor an OpenHands trajectory (or is broken)."""


class ReplayMismatchError(ReplayError):
    """An action given to a :class:`~openhands_rt.replay.RecordedRuntime` is not the next
    recorded action.

    ``expected`` is that recorded action (``None`` when the recording has no
    more actions) and ``actual`` the stored action that was given.
    """

    def __init__(self, message: str, *, expected: Action | None, actual: Action) -> None:
        super().__init__(message)
        self.expected = expected
        self.actual = actual

    @property
    def event_id(self) -> int | None:
        """The recorded id of the expected action."""
        return None if self.expected is None else self.expected.id
