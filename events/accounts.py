"""The sandbox user's account files, as both sides write them.

The server re-numbers the sandbox user in place (root, before it drops its
privileges); for a read-only root file system the host writes the same files
beforehand and mounts them, and the server then finds them already right.
Both must produce the same text, so both use :func:`renumbered`.
"""

from __future__ import annotations

__all__ = ["first_free_id", "renumbered", "with_account", "with_root_account"]


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


def first_free_id(passwd: str, group: str, *, start: int = 1000) -> int:
    """The lowest id from ``start`` up: no uid in ``passwd`` and no gid in ``group``."""
    used: set[int] = set()
    for text, position in ((passwd, 2), (group, 2)):
        for line in text.splitlines():
            parts = line.split(":")
            if len(parts) > position and parts[position].isdigit():
                used.add(int(parts[position]))
    free = start
    while free in used:
        free += 1
    return free


def with_account(
    passwd: str, group: str, name: str, uid: int, *, home: str, shell: str
) -> tuple[str, str]:
    """``passwd`` and ``group`` with user ``name`` (uid and gid ``uid``) and its group added.

    For images that have no such user and no ``useradd`` (busybox, distroless):
    an empty ``passwd``/``group`` (no file at all) first gets root's entries, so
    that uid 0 keeps its name. A group already using gid ``uid`` is left as is
    and none is added (the user's primary gid is still ``uid``).
    """

    def append(text: str, line: str) -> str:
        return text + ("" if not text or text.endswith("\n") else "\n") + line + "\n"

    if not passwd.strip():
        passwd = "root:x:0:0:root:/root:/bin/sh\n"
    if not group.strip():
        group = "root:x:0:\n"
    passwd = append(passwd, f"{name}:x:{uid}:{uid}::{home}:{shell}")
    gids = {
        parts[2] for parts in (line.split(":") for line in group.splitlines()) if len(parts) > 2
    }
    if str(uid) not in gids:
        group = append(group, f"{name}:x:{uid}:")
    return passwd, group


def with_root_account(passwd: str, group: str, *, shell: str) -> tuple[str, str]:
    """``passwd`` and ``group`` with root's entries (home /root) put first where missing.

    For an agent that runs as root on an image without them (busybox, scratch):
    without the entry ``whoami`` fails and Docker leaves ``HOME=/``.
    """

    def named(text: str, name: str) -> bool:
        return any(line.split(":")[0] == name for line in text.splitlines())

    if not named(passwd, "root"):
        passwd = f"root:x:0:0:root:/root:{shell}\n" + passwd
    if not named(group, "root"):
        group = "root:x:0:\n" + group
    return passwd, group
