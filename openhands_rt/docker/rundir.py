"""A sandbox's run directory on the host: the session key, the server's socket.

The session key is in no environment: each sandbox has a **run directory** on
the host (private to the host user, in the temp directory) holding the key
file and, with ``network="none"``, the server's socket. It is bind-mounted
below a root-only tmpfs (:data:`RUN_DIR_IN_CONTAINER`, mode 0700), so that no
sandbox process but the server (root, until it drops its privileges after
reading the key and binding its socket) can reach it, even though the sandbox
user usually has the host user's uid. On the host the channel checks the
socket before it sends the key (:func:`openhands_rt.channel.connect_checked`).

The run directory is also what names a sandbox's owner: its lease
(:mod:`openhands_rt.leases`) is an ``flock`` on a file in it, and a kept-alive
sandbox is found again through the bind mount (:func:`run_dir_of`).

A sandbox restored from a snapshot finds the shell's state there too
(:func:`write_shell_state`, :data:`SHELL_STATE_FILE`): written before the
container starts, read by the server as root at its start, like the key; the
server is always told where to look and starts a fresh shell when the file is
not there.

With a read-only root and a re-numbered sandbox user, a second directory
holds the rewritten ``/etc/passwd`` and ``/etc/group`` (:func:`write_etc_dir`).

Everything here is blocking file-system work: call it through a thread.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

from events.control import ShellState, encode_control
from openhands_rt.errors import SandboxError
from openhands_rt.sandboxes import HOST_DIR_PREFIX

__all__ = [
    "HOST_DIR_IN_CONTAINER",
    "KEY_FILE",
    "RUN_DIR_IN_CONTAINER",
    "SHELL_STATE_FILE",
    "SOCKET_FILE",
    "key_of",
    "make_run_dir",
    "read_key",
    "remove_dirs",
    "run_dir_of",
    "write_etc_dir",
    "write_shell_state",
]

#: A root-only (0700) tmpfs; the host's run directory is mounted inside it.
RUN_DIR_IN_CONTAINER = "/run/openhands-rt"
HOST_DIR_IN_CONTAINER = f"{RUN_DIR_IN_CONTAINER}/host"
KEY_FILE = "key"
SOCKET_FILE = "server.sock"
SHELL_STATE_FILE = "shell-state.json"


def make_run_dir(session_id: str, api_key: str) -> str:
    """A new host directory, private to this user (0700), holding the key file (0600)."""
    directory = tempfile.mkdtemp(prefix=f"{HOST_DIR_PREFIX}{session_id}-")
    try:
        fd = os.open(os.path.join(directory, KEY_FILE), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(api_key)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    return directory


def read_key(run_dir: str | None) -> str:
    """The session key in ``run_dir`` ("" when there is none or it cannot be read)."""
    if run_dir is None:
        return ""
    with (
        contextlib.suppress(OSError),
        open(os.path.join(run_dir, KEY_FILE), encoding="utf-8") as f,
    ):
        return f.read().strip()
    return ""


def key_of(info: Mapping[str, Any], *, name: str) -> str:
    """The session key of the inspected container ``info`` (named ``name``).

    Raises :class:`SandboxError` when it has none: a container of that name that
    is not one of our sandboxes (or whose run directory is gone).
    """
    api_key = read_key(run_dir_of(info))
    if not api_key:
        raise SandboxError(
            f"container {name} exists but is not an openhands-rt sandbox "
            "(no session key); remove it or choose another session id"
        )
    return api_key


def run_dir_of(info: Mapping[str, Any]) -> str | None:
    """The host run directory a container has mounted (None: not one of ours, or older)."""
    for bind in info["HostConfig"].get("Binds") or []:
        parts = bind.split(":")
        if len(parts) >= 2 and parts[1] == HOST_DIR_IN_CONTAINER:
            return str(parts[0])
    return None


def write_shell_state(run_dir: str, state: ShellState) -> str:
    """Write ``state`` into ``run_dir`` (0600, msgspec JSON): the sandbox's shell starts in it.

    Call it before the container starts (the server reads it once, at its
    start; a restart of the same container reads it again). Returns the file's
    path on the host.
    """
    path = os.path.join(run_dir, SHELL_STATE_FILE)
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(encode_control(state))
    os.replace(tmp, path)
    return path


def write_etc_dir(session_id: str, files: Mapping[str, str]) -> str:
    """A new host directory holding ``files`` (name → text), readable by everyone."""
    directory = tempfile.mkdtemp(prefix=f"{HOST_DIR_PREFIX}{session_id}-etc-")
    os.chmod(directory, 0o755)
    for name, text in files.items():
        path = os.path.join(directory, name)
        with open(path, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(text)
        os.chmod(path, 0o644)
    return directory


def remove_dirs(*directories: str | None) -> None:
    """Remove these host directories and everything in them (None and missing: skipped)."""
    for directory in directories:
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)
