"""The bundle's errors: one subtree of :class:`openhands_rt.SandboxError`.

::

    SandboxError
    └── BundleError          the runtime bundle cannot be made or read
        └── MarkerError      (also ValueError) a requirement or marker that does not parse
"""

from __future__ import annotations

from openhands_rt.errors import SandboxError

__all__ = ["BundleError"]


class BundleError(SandboxError):
    """The runtime bundle cannot be made (a missing tool, library or file) or read."""
