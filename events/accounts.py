"""The sandbox user's account files, as both sides write them.

The server re-numbers the sandbox user in place (root, before it drops its
privileges); for a read-only root file system the host writes the same files
beforehand and mounts them, and the server then finds them already right.
Both must produce the same text, so both use :func:`renumbered`.
"""

from __future__ import annotations

__all__ = ["renumbered"]


def renumbered(text: str, name: str, new_id: int, *, fields: tuple[int, ...]) -> str:
    """``text`` (passwd or group format) with ``fields`` of ``name``'s line set to ``new_id``."""
    out = []
    for line in text.splitlines(keepends=True):
        parts = line.rstrip("\n").split(":")
        if parts[0] == name:
            for i in fields:
                if i < len(parts):
                    parts[i] = str(new_id)
            line = ":".join(parts) + "\n"
        out.append(line)
    return "".join(out)
