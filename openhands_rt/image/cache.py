"""Where openhands-rt keeps host-side caches (wheelhouses, probes, pip)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_dir"]


def cache_dir(*parts: str) -> Path:
    """``$OPENHANDS_RT_CACHE_DIR`` or ``$XDG_CACHE_HOME/openhands-rt`` (``~/.cache``), joined.

    Nothing is created here; writers create what they need.
    """
    root = os.environ.get("OPENHANDS_RT_CACHE_DIR")
    if root:
        base = Path(root)
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = (Path(xdg) if xdg else Path.home() / ".cache") / "openhands-rt"
    return base.joinpath(*parts)
