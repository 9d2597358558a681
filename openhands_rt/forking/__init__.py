"""Forking a session at any event: a new stream and sandbox in the state the source had then.

- :mod:`.plan` — what a fork copies, restores from and re-executes (pure);
- :mod:`.fork` — :func:`fork`, the async context manager that does it.

Error tree::

    SandboxError
     └── ForkError (also ValueError)   no such event, not an event log, an output log with events
"""

from openhands_rt.forking.fork import ForkReport, fork
from openhands_rt.forking.plan import (
    ForkError,
    ForkPlan,
    SnapshotChoice,
    latest_snapshot,
    plan_fork,
)

__all__ = [
    "ForkError",
    "ForkPlan",
    "ForkReport",
    "SnapshotChoice",
    "fork",
    "latest_snapshot",
    "plan_fork",
]
