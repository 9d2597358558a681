"""Privileges: the server keeps an identity the agent cannot touch, and acts as the sandbox user.

In a container the server starts as root and, before it starts anything,
ends up as two identities in one process (see docs/containment.md):

- its **real and saved uid stay 0**. That is what the kernel checks when
  another process signals it, ptraces it or reads its ``/proc`` entries, so the
  agent (the sandbox user) can do none of these, and nothing the agent runs
  can ever take uid 0: it has no capability and no setuid route (no_new_privs);
- its **effective uid** (and so its filesystem uid), its gid and its groups are
  the sandbox user's, so every file action acts exactly as the agent would (a
  file the agent cannot read, the editor cannot read either) and every file it
  creates belongs to the sandbox user;
- it has **no capability at all**: permitted, effective, inheritable, ambient
  and bounding sets are emptied, ``no_new_privs`` is set and the process is not
  dumpable.

Everything the server starts (bash, the Jupyter kernel) is started with
:func:`child_credentials`, which makes the sandbox uid its real, effective and
saved uid: a child that kept the server's real uid 0 could switch back to it.

Before the switch, as root: the sandbox user may be re-numbered to the uid
that owns the workspace (files the sandbox writes there must be usable by the
host user); a root-owned workspace's top directory is given to the sandbox
user. Capabilities needed until the switch, and only until then: CHOWN, SETUID,
SETGID, SETPCAP (emptying the bounding set), DAC_OVERRIDE (reading private
directories while re-numbering, the session key and the channel's socket in
the host's run directory).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import pwd
import resource
from dataclasses import dataclass, field

from events.accounts import first_free_id, renumbered, with_account, with_root_account

__all__ = [
    "SandboxIdentity",
    "child_credentials",
    "drop_privileges",
    "prepare_sandbox_user",
]

logger = logging.getLogger(__name__)

_PR_SET_DUMPABLE = 4
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_LINUX_CAPABILITY_VERSION_3 = 0x20080522
_MAX_CAPABILITY = 63


@dataclass(frozen=True)
class SandboxIdentity:
    """Who the agent is: the uid, gid and groups the server acts as and starts children as."""

    username: str
    uid: int
    gid: int
    groups: tuple[int, ...] = ()
    home: str = "/"
    notes: list[str] = field(default_factory=list, compare=False)


def _rewrite_ids(path: str, name: str, new_id: int, *, fields: tuple[int, ...]) -> None:
    with open(path, encoding="utf-8") as f:
        text = renumbered(f.read(), name, new_id, fields=fields)
    tmp = f"{path}.openhands-rt"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, os.stat(path).st_mode & 0o7777)
    os.replace(tmp, path)


def _read_or_empty(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def _write(path: str, text: str, mode: int) -> None:
    tmp = f"{path}.openhands-rt"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _add_account(username: str, uid: int | None, shell: str) -> str:
    """Add ``username`` to /etc/passwd and /etc/group (made when missing); a note saying so.

    For images with neither the user nor ``useradd`` (busybox, distroless): the
    uid is ``uid`` (the workspace owner's) or the first free one from 1000.
    """
    passwd, group = _read_or_empty("/etc/passwd"), _read_or_empty("/etc/group")
    new_uid = uid if uid is not None else first_free_id(passwd, group)
    home = f"/home/{username}"
    passwd, group = with_account(passwd, group, username, new_uid, home=home, shell=shell)
    os.makedirs("/etc", exist_ok=True)
    _write("/etc/passwd", passwd, 0o644)
    _write("/etc/group", group, 0o644)
    os.makedirs(home, mode=0o700, exist_ok=True)
    os.chown(home, new_uid, new_uid)
    return f"the image has no user {username}: added it to /etc/passwd with uid {new_uid}"


def ensure_root_account(shell: str) -> list[str]:
    """Give uid 0 a passwd entry and a home where the image has none (busybox, scratch).

    For a server that runs the agent as root (no ``--username``): without the
    entry ``whoami`` fails and Docker leaves ``HOME=/``. Returns the notes
    saying what was added (none when the entry exists).
    """
    try:
        pwd.getpwuid(0)
        return []
    except KeyError:
        pass
    passwd, group = with_root_account(
        _read_or_empty("/etc/passwd"), _read_or_empty("/etc/group"), shell=shell
    )
    os.makedirs("/etc", exist_ok=True)
    _write("/etc/passwd", passwd, 0o644)
    _write("/etc/group", group, 0o644)
    os.makedirs("/root", mode=0o700, exist_ok=True)
    if os.environ.get("HOME", "/") == "/":
        os.environ["HOME"] = "/root"
    return ["the image has no passwd entry for root: added one, with home /root"]


def prepare_sandbox_user(
    username: str,
    *,
    workspace: str,
    uid: int | None = None,
    max_processes: int | None = None,
    shell: str = "/bin/bash",
) -> SandboxIdentity:
    """Make ``username`` (optionally re-numbered to ``uid``) ready to be acted as.

    Runs as root, before :func:`drop_privileges`. A user the image does not
    have is added (``shell`` its login shell). The returned identity's
    ``notes`` say what was changed (reported to the host).
    """
    notes: list[str] = []
    try:
        entry = pwd.getpwnam(username)
    except KeyError:
        notes.append(_add_account(username, uid, shell))
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
    if st.st_uid == 0:
        os.chown(workspace, target_uid, target_gid)
        notes.append(
            f"the workspace was owned by root: its top directory now belongs to uid {target_uid} "
            "so that the sandbox user can write there"
        )
    if max_processes is not None:
        # Per-uid process cap. Used under gVisor, whose sandbox has its own kernel (so
        # the count is per sandbox) and which dies when the host's pids cgroup is hit.
        # Counted against the real uid: the agent's processes, not the server (uid 0).
        resource.setrlimit(resource.RLIMIT_NPROC, (max_processes, max_processes))
    try:
        groups = tuple(sorted(set(os.getgrouplist(username, target_gid))))
    except OSError:
        groups = (target_gid,)
    home = pwd.getpwuid(target_uid).pw_dir
    for note in notes:
        logger.info("%s", note)
    return SandboxIdentity(username, target_uid, target_gid, groups, home, notes)


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _prctl(libc: ctypes.CDLL, option: int, arg: int = 0) -> int:
    result: int = libc.prctl(option, ctypes.c_ulong(arg), 0, 0, 0)
    return 0 if result == 0 else ctypes.get_errno()


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _empty_bounding_set(libc: ctypes.CDLL) -> None:
    for cap in range(_MAX_CAPABILITY + 1):
        err = _prctl(libc, _PR_CAPBSET_DROP, cap)
        if err == errno.EINVAL:
            return  # past the kernel's last capability
        if err:
            raise OSError(err, f"cannot drop capability {cap} from the bounding set")


def _clear_capabilities(libc: ctypes.CDLL) -> None:
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if libc.capset(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "cannot clear the capability sets")
    # Not every kernel has ambient capabilities (gVisor's has none to clear).
    _prctl(libc, _PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL)


def drop_privileges(identity: SandboxIdentity) -> None:
    """Keep uid 0 as real and saved uid only; act as ``identity``; no capability left.

    Must be called as root, before any thread or child process exists. Raises
    OSError when a step fails: the caller must not go on with privileges left.
    """
    libc = _libc()
    # Needs CAP_SETPCAP, so first: every child would otherwise inherit the bounding set.
    _empty_bounding_set(libc)
    os.setgroups(list(identity.groups) or [identity.gid])
    os.setresgid(identity.gid, identity.gid, identity.gid)
    os.setresuid(0, identity.uid, 0)
    # The effective set is empty now (euid != 0); the permitted set still holds what
    # the container gave us until it is cleared.
    _clear_capabilities(libc)
    err = _prctl(libc, _PR_SET_NO_NEW_PRIVS, 1)
    if err:
        raise OSError(err, "cannot set no_new_privs")
    # The kernel already made us non-dumpable at the euid change; said explicitly so
    # that no later change of credentials turns it back on.
    _prctl(libc, _PR_SET_DUMPABLE, 0)
    os.environ.update({"HOME": identity.home, "USER": identity.username})
    os.environ["LOGNAME"] = identity.username


def child_credentials() -> dict[str, int]:
    """``subprocess`` keyword arguments that start a child as this process's effective user.

    Empty when the process has one identity; otherwise ``user`` and ``group``, so
    that the child's real, effective and saved uid and gid are all the sandbox
    user's (it could take the server's real uid back otherwise). Its groups are
    inherited: the server already has exactly the sandbox user's.
    """
    ruid, euid, suid = os.getresuid()
    rgid, egid, sgid = os.getresgid()
    if ruid == euid == suid and rgid == egid == sgid:
        return {}
    return {"user": euid, "group": egid}
