"""Dropping root: the server starts as root in a container only to become the sandbox user.

Docker sandboxes mount the host's workspace at /workspace. Files the sandbox
writes there must be usable by the host user, so the sandbox user takes the
uid that owns the workspace when that owner is not root. The image has a user
(``openhands``, uid 1000 when free); when the wanted uid differs, its passwd
and group entries are rewritten before the switch. When the workspace is owned
by root, the user is granted write access to it (ownership of the top
directory only) rather than the sandbox running as root.

Capabilities needed for this, and only until the switch: CHOWN, SETUID,
SETGID, DAC_OVERRIDE (see docs/containment.md). After ``setuid`` to a non-root uid the kernel
clears every capability.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import resource

__all__ = ["become_user", "renumbered"]

logger = logging.getLogger(__name__)


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


def _rewrite_ids(path: str, name: str, new_id: int, *, fields: tuple[int, ...]) -> None:
    with open(path, encoding="utf-8") as f:
        text = renumbered(f.read(), name, new_id, fields=fields)
    tmp = f"{path}.openhands-rt"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, os.stat(path).st_mode & 0o7777)
    os.replace(tmp, path)


def become_user(
    username: str, *, workspace: str, uid: int | None = None, max_processes: int | None = None
) -> list[str]:
    """Switch this process to ``username`` (optionally re-numbered to ``uid``).

    Returns notes about what was changed (reported to the host). Must be called
    as root before any thread or child process exists.
    """
    notes: list[str] = []
    entry = pwd.getpwnam(username)
    target_uid = entry.pw_uid if uid is None else uid
    target_gid = entry.pw_gid if uid is None else uid
    if target_uid == 0:
        raise ValueError("refusing to 'become' root: run the server without --username instead")
    if target_uid != entry.pw_uid:
        old_uid = entry.pw_uid
        _rewrite_ids("/etc/passwd", username, target_uid, fields=(2, 3))
        with contextlib.suppress(FileNotFoundError):
            _rewrite_ids("/etc/group", username, target_gid, fields=(2,))
        home = entry.pw_dir
        if os.path.isdir(home):
            for root, dirs, files in os.walk(home):
                for name in dirs + files:
                    p = os.path.join(root, name)
                    if os.lstat(p).st_uid == old_uid:
                        os.lchown(p, target_uid, target_gid)
            os.chown(home, target_uid, target_gid)
        notes.append(f"sandbox user {username} runs as uid {target_uid} (the workspace owner)")
    st = os.stat(workspace)
    if st.st_uid == 0 and target_uid != 0:
        os.chown(workspace, target_uid, target_gid)
        notes.append(
            f"the workspace was owned by root: its top directory now belongs to uid {target_uid} "
            "so that the sandbox user can write there"
        )
    if max_processes is not None:
        # Per-uid process cap. Used under gVisor, whose sandbox has its own kernel (so
        # the count is per sandbox) and which dies when the host's pids cgroup is hit.
        resource.setrlimit(resource.RLIMIT_NPROC, (max_processes, max_processes))
    os.setgroups([target_gid])
    os.setgid(target_gid)
    os.setuid(target_uid)
    home = pwd.getpwuid(target_uid).pw_dir
    os.environ.update({"HOME": home, "USER": username, "LOGNAME": username})
    for note in notes:
        logger.info("%s", note)
    return notes
