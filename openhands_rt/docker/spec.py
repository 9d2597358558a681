"""The sandbox container's specification: command, mounts, limits, security.

Pure functions of a :class:`~openhands_rt.config.SandboxConfig` (and what was
read from the image and the host): the body of Docker's create request, and
the endpoint read back from an inspected container. No engine calls here.

The server listens on :data:`SERVER_PORT` inside (a high port agents do not
use), published on the host's 127.0.0.1 with a port Docker chooses; with
``channel="unix"`` (always with ``network="none"``) there is no port at all and
the channel runs over a Unix socket in the run directory
(:mod:`openhands_rt.docker.rundir`), which also spares the engine the port's
set-up and a docker-proxy process per sandbox.

The container starts as root only long enough for the server to make itself
unreachable for the agent and act as the sandbox user: every capability is
dropped except the five that switch needs (:data:`SWITCH_CAPABILITIES`),
``no-new-privileges`` is set, and Docker's init reaps zombies. The server runs
on an isolated interpreter (``python -I``: neither the working directory nor
anything from the environment on its path), so nothing the agent writes is
ever imported by it.

``read_only_root=True`` makes the root filesystem read-only; /tmp, the sandbox
user's home and (when no ``workspace_dir`` is mounted) /workspace are then
size-limited tmpfs mounts owned by the sandbox user (:func:`writable_places`).
Where the user must be re-numbered to the workspace owner's uid, the image's
/etc/passwd and /etc/group are rewritten on the host and bind-mounted
read-only, because the server cannot rewrite them in place. See
docs/containment.md for what is and is not limited.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from events.accounts import first_free_id, renumbered, with_account, with_root_account
from events.wire import CHANNEL_PATH
from openhands_rt.bundle import BUNDLE_MOUNT, Bundle
from openhands_rt.config import SandboxConfig, channel_of, check_workspace_dir
from openhands_rt.docker.rundir import (
    HOST_DIR_IN_CONTAINER,
    KEY_FILE,
    RUN_DIR_IN_CONTAINER,
    SHELL_STATE_FILE,
    SOCKET_FILE,
    run_dir_of,
)
from openhands_rt.errors import SandboxError
from openhands_rt.runtime import SandboxEndpoint
from openhands_rt.sandboxes import CONTAINER_PREFIX, LABEL_KEEP_ALIVE, LABEL_SESSION, owner_labels

__all__ = [
    "CONTAINER_PREFIX",
    "RUNSC_MEMORY_HEADROOM_MB",
    "SANDBOX_USER",
    "SERVER_COMMAND",
    "SERVER_PORT",
    "SERVER_PYTHON",
    "SWITCH_CAPABILITIES",
    "TMPFS_HOME_MB",
    "TMPFS_TMP_MB",
    "TMPFS_WORKSPACE_MB",
    "WritablePlaces",
    "container_config",
    "find_endpoint",
    "tmpfs_size_mb",
    "user_id_flag",
    "workspace_owner",
    "writable_places",
]

SERVER_PORT = 30150
SERVER_PYTHON = "/openhands_rt/venv/bin/python"
#: ``-I``: isolated; the server's path is the image's root-owned code and venv only.
SERVER_COMMAND = [SERVER_PYTHON, "-I", "-m", "container_server"]
SANDBOX_USER = "openhands"
# Needed only while the server starts, as root; it drops every one of them (and
# empties the bounding set) before it starts anything. SETUID/SETGID: acting as
# the sandbox user; SETPCAP: emptying the bounding set that every process the
# agent starts inherits; CHOWN: giving a root-owned workspace, or a home
# re-numbered to the workspace owner, to the sandbox user, and the channel's
# socket to the host user; DAC_OVERRIDE: reading private directories of that
# home while re-numbering, and the key in (and the socket into) the host user's
# run directory. Nothing else (FOWNER included) is needed: docs/containment.md.
SWITCH_CAPABILITIES = ["CHOWN", "SETUID", "SETGID", "SETPCAP", "DAC_OVERRIDE"]
RUNSC_MEMORY_HEADROOM_MB = 256
# Writable tmpfs sizes with read_only_root (MB); each is capped at a quarter of
# memory_mb, because tmpfs pages are charged to the container's memory and a
# full tmpfs must end in ENOSPC, not in the OOM killer taking the server.
TMPFS_TMP_MB = 512
TMPFS_HOME_MB = 256
TMPFS_WORKSPACE_MB = 1024
_TMPFS_MIN_MB = 16


@dataclass
class WritablePlaces:
    """What a read-only-root container gets mounted to stay usable.

    ``etc_files``: rewritten ``passwd``/``group`` texts (name → text) that the
    caller writes to a host directory and bind-mounts read-only over /etc
    (:meth:`bind_etc`); empty when the image's own files are right.
    """

    tmpfs: dict[str, str] = field(default_factory=dict)
    binds: list[str] = field(default_factory=list)
    etc_files: dict[str, str] = field(default_factory=dict)

    def bind_etc(self, etc_dir: str) -> None:
        """Mount the files of :attr:`etc_files`, written to ``etc_dir``, over /etc."""
        self.binds += [f"{etc_dir}/{name}:/etc/{name}:ro" for name in self.etc_files]


def workspace_owner(config: SandboxConfig) -> tuple[str | None, int | None]:
    """The absolute workspace directory (made if missing) and its owner's uid, or Nones."""
    if config.workspace_dir is None:
        return None, None
    path = os.path.abspath(config.workspace_dir)
    try:
        # Checked again here: the config may have been changed, or the file system.
        check_workspace_dir(path)
        os.makedirs(path, exist_ok=True)
    except (ValueError, OSError) as exc:
        raise SandboxError(f"cannot use the workspace directory {path}: {exc}") from exc
    return path, os.stat(path).st_uid


def user_id_flag(config: SandboxConfig, owner_uid: int | None) -> int | None:
    """The uid the sandbox user is re-numbered to (``--user-id``), if any."""
    if config.run_as_root or owner_uid is None or owner_uid == 0:
        return None
    return owner_uid


def tmpfs_size_mb(config: SandboxConfig, default_mb: int) -> int:
    """A writable tmpfs's size: ``default_mb``, at most a quarter of ``memory_mb``."""
    if config.memory_mb is None:
        return default_mb
    return min(default_mb, max(_TMPFS_MIN_MB, config.memory_mb // 4))


def _passwd_entry(passwd: str, username: str) -> list[str] | None:
    for fields in (line.split(":") for line in passwd.splitlines()):
        if fields[0] == username and len(fields) >= 6:
            return fields
    return None


def writable_places(
    config: SandboxConfig,
    *,
    image: str,
    passwd: str,
    group: str,
    owner_uid: int | None,
    shell: str | None = None,
) -> WritablePlaces:
    """Mounts that keep a read-only-root sandbox usable (see the module docstring).

    ``passwd`` and ``group``: the image's /etc files ("" when missing);
    ``owner_uid``: the workspace owner's uid (:func:`workspace_owner`).
    ``shell``: for an image used as it is (mount mode), which may lack the
    user: its login shell in the entry made for it (with the workspace
    owner's uid, else the first free one, as the server would add it); None:
    a missing user is an error (a runtime image always has it).
    """
    wanted_uid = user_id_flag(config, owner_uid)
    username = "root" if config.run_as_root else SANDBOX_USER
    places = WritablePlaces()
    entry = _passwd_entry(passwd, username)
    if entry is None and shell is not None:
        if config.run_as_root:
            passwd, group = with_root_account(passwd, group, shell=shell)
        else:
            uid = wanted_uid if wanted_uid is not None else first_free_id(passwd, group)
            home = f"/home/{username}"
            passwd, group = with_account(passwd, group, username, uid, home=home, shell=shell)
        places.etc_files = {"passwd": passwd, "group": group}
        entry = _passwd_entry(passwd, username)
    if entry is None:
        raise SandboxError(f"image {image} has no user {username!r} in /etc/passwd")
    uid, gid, home = int(entry[2]), int(entry[3]), entry[5]
    if wanted_uid is not None and wanted_uid != uid:
        # privileges.become_user would rewrite these in place; here it finds them
        # already right (uid and gid = the workspace owner, as it would make them).
        uid = gid = wanted_uid
        places.etc_files = {
            "passwd": renumbered(passwd, username, uid, fields=(2, 3)),
            "group": renumbered(group, username, gid, fields=(2,)),
        }
    owned = f"uid={uid},gid={gid}"
    places.tmpfs["/tmp"] = (
        f"rw,exec,nosuid,nodev,mode=1777,size={tmpfs_size_mb(config, TMPFS_TMP_MB)}m"
    )
    places.tmpfs[home] = (
        f"rw,exec,nosuid,nodev,mode=0700,{owned},size={tmpfs_size_mb(config, TMPFS_HOME_MB)}m"
    )
    if config.workspace_dir is None:
        places.tmpfs["/workspace"] = (
            f"rw,exec,nosuid,nodev,mode=0755,{owned},"
            f"size={tmpfs_size_mb(config, TMPFS_WORKSPACE_MB)}m"
        )
    return places


def container_config(
    config: SandboxConfig,
    *,
    session_id: str,
    image: str,
    run_dir: str,
    workspace: str | None,
    owner_uid: int | None,
    writable: WritablePlaces | None = None,
    bundle: Bundle | None = None,
) -> dict[str, Any]:
    """The body of Docker's create request for this session's sandbox.

    ``bundle``: mount mode, ``image`` used as it is; the server starts from
    the bundle, mounted read-only at :data:`~openhands_rt.bundle.BUNDLE_MOUNT`.
    """
    cfg = config
    server = SERVER_COMMAND if bundle is None else bundle.server_command()
    cmd = [*server, "--working-dir", "/workspace"]
    cmd += ["--api-key-file", f"{HOST_DIR_IN_CONTAINER}/{KEY_FILE}"]
    # Read only if there (rundir.write_shell_state: a sandbox restored from a snapshot).
    cmd += ["--shell-state", f"{HOST_DIR_IN_CONTAINER}/{SHELL_STATE_FILE}"]
    cmd += ["--no-change-timeout", str(cfg.no_change_timeout)]
    if cfg.allow_multiple_commands:
        cmd.append("--allow-multiple-commands")
    cmd += ["--default-timeout", str(cfg.timeout)]
    on_socket = channel_of(cfg) == "unix"
    if on_socket:
        cmd += ["--unix-socket", f"{HOST_DIR_IN_CONTAINER}/{SOCKET_FILE}"]
    else:
        cmd += ["--host", "0.0.0.0", "--port", str(SERVER_PORT)]
    if cfg.plugins:
        cmd += ["--plugins", *(p.name for p in cfg.plugins)]
    if not cfg.run_as_root:
        cmd += ["--username", SANDBOX_USER]
        user_id = user_id_flag(cfg, owner_uid)
        if user_id is not None:
            cmd += ["--user-id", str(user_id)]
    binds = []
    if workspace is not None:
        binds.append(f"{workspace}:/workspace:rw")
    binds.append(f"{run_dir}:{HOST_DIR_IN_CONTAINER}:rw")
    if bundle is not None:
        binds.append(f"{bundle.path}:{BUNDLE_MOUNT}:ro")
    host_config: dict[str, Any] = {
        "Init": True,
        "NetworkMode": cfg.network,
        "Binds": binds,
        "SecurityOpt": ["no-new-privileges"],
        # Root-only: the sandbox user cannot reach the run directory mounted inside.
        "Tmpfs": {RUN_DIR_IN_CONTAINER: "rw,noexec,nosuid,nodev,mode=0700,size=64k"},
    }
    if not cfg.run_as_root:
        host_config["CapDrop"] = ["ALL"]
        host_config["CapAdd"] = SWITCH_CAPABILITIES
    if not on_socket:
        host_config["PortBindings"] = {
            f"{SERVER_PORT}/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]
        }
    if cfg.cpus is not None:
        host_config["NanoCpus"] = int(cfg.cpus * 1e9)
    if cfg.memory_mb is not None:
        memory_mb = cfg.memory_mb
        if cfg.oci_runtime == "runsc":
            # Under gVisor the host OOM killer takes the whole sandbox (the sentry), so
            # each process the shell starts is capped inside at memory_mb and the host
            # limit leaves room for the sentry and the server.
            cmd += ["--max-process-memory-mb", str(cfg.memory_mb)]
            memory_mb += RUNSC_MEMORY_HEADROOM_MB
        host_config["Memory"] = memory_mb * 1024 * 1024
        host_config["MemorySwap"] = memory_mb * 1024 * 1024
    if cfg.pids_limit is not None:
        if cfg.oci_runtime == "runsc":
            # gVisor's sentry threads count against the host pids cgroup and the whole
            # sandbox dies when it is reached; the limit is enforced inside instead.
            cmd += ["--max-processes", str(cfg.pids_limit)]
        else:
            host_config["PidsLimit"] = cfg.pids_limit
    if cfg.oci_runtime:
        host_config["Runtime"] = cfg.oci_runtime
    if writable is not None:
        host_config["ReadonlyRootfs"] = True
        host_config["Tmpfs"].update(writable.tmpfs)
        binds.extend(writable.binds)
    labels = {
        **cfg.labels,
        LABEL_SESSION: session_id,
        LABEL_KEEP_ALIVE: "true" if cfg.keep_runtime_alive else "false",
        **owner_labels(),
    }
    body: dict[str, Any] = {
        "Image": image,
        "Entrypoint": cmd[:1],
        "Cmd": cmd[1:],
        "Env": [f"{k}={v}" for k, v in cfg.env.items()],
        "Labels": labels,
        "User": "0:0",
        "WorkingDir": "/workspace",
        "Hostname": f"sandbox-{session_id[:20]}".rstrip("-"),
        "HostConfig": host_config,
    }
    if not on_socket:
        body["ExposedPorts"] = {f"{SERVER_PORT}/tcp": {}}
    return body


def find_endpoint(
    config: SandboxConfig, info: Mapping[str, Any], *, api_key: str, name: str
) -> SandboxEndpoint:
    """Where the server of the inspected container ``info`` (named ``name``) listens.

    The container says it, whatever ``config`` asks now (an attached sandbox may
    have been made with another channel): its server's ``--unix-socket`` flag.
    """
    server_argv = (info.get("Config") or {}).get("Cmd") or []
    on_socket = "--unix-socket" in server_argv
    if on_socket or config.network == "none" or info["HostConfig"].get("NetworkMode") == "none":
        run_dir = run_dir_of(info)
        if run_dir is None:
            raise SandboxError(f"{name} listens on a socket but has no run directory mounted")
        return SandboxEndpoint(
            url=f"ws://sandbox{CHANNEL_PATH}",
            api_key=api_key,
            unix_socket=os.path.join(run_dir, SOCKET_FILE),
            # The server binds its socket as root, before it drops to the sandbox user.
            peer_uid=0,
        )
    ports = (info["NetworkSettings"].get("Ports") or {}).get(f"{SERVER_PORT}/tcp") or []
    for binding in ports:
        if binding.get("HostIp") in ("127.0.0.1", "") and binding.get("HostPort"):
            return SandboxEndpoint(
                url=f"ws://127.0.0.1:{binding['HostPort']}{CHANNEL_PATH}", api_key=api_key
            )
    raise SandboxError(f"{name} publishes no port for the server")
