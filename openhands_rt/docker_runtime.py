"""DockerRuntime: one sandbox container per runtime, driven through aiodocker.

The container is named ``openhands-runtime-{session_id}`` and labelled with
the session id, our version and its owner (host, pid and the pid's start time,
so a reused pid is not mistaken for a live owner). The server listens on
:data:`SERVER_PORT` inside (a high port agents do not use), published on the
host's 127.0.0.1 with a port Docker chooses; with ``network="none"`` there is
no port at all and the channel runs over a Unix socket in a host directory
bind-mounted into the container.

The container starts as root only long enough for the server to make itself
unreachable for the agent and act as the sandbox user (see
:mod:`container_server.privileges`): every capability is dropped except the five
that switch needs, ``no-new-privileges`` is set, and Docker's init reaps
zombies. The server runs on an isolated interpreter (``python -I``: neither the
working directory nor anything from the environment on its path), so nothing
the agent writes is ever imported by it. Readiness is the server's own
"listening on" line in the container's log stream (an event, not a poll),
under a deadline.

The session key is in no environment: each sandbox has a **run directory** on
the host (private to the host user, in the temp directory) holding the key
file and, with ``network="none"``, the server's socket. It is bind-mounted
below a root-only tmpfs (:data:`RUN_DIR_IN_CONTAINER`, mode 0700), so that no
sandbox process but the server (root, until it drops its privileges after
reading the key and binding its socket) can reach it, even though the sandbox
user usually has the host user's uid. On the host the channel checks the
socket before it sends the key (:func:`openhands_rt.channel.connect_checked`).

A container that exits while the runtime uses it (``docker kill``, the server
killed or OOM-killed: the server is the init's only child, so its death ends
the container) is noticed through Docker's wait endpoint: the pending actions
are answered with ``ErrorObservation`` and a ``RuntimeStatusObservation(error)``
is appended. Then either the caller's ``connect()`` starts a fresh sandbox, or,
with ``auto_restart=True``, the runtime starts the same container again by
itself (processes lost, the container's files kept except tmpfs mounts; at
most :data:`RESTART_LIMIT` times per :data:`RESTART_WINDOW` seconds) and
reports ``ready`` with a "restarted" message. Losing the Docker engine itself
is reported the same way but never restarted.

``read_only_root=True`` makes the root filesystem read-only; /tmp, the sandbox
user's home and (when no ``workspace_dir`` is mounted) /workspace are then
size-limited tmpfs mounts owned by the sandbox user. Where the user must be
re-numbered to the workspace owner's uid, the image's /etc/passwd and
/etc/group (read from a never-started container) are rewritten on the host
and bind-mounted read-only, because the server cannot rewrite them in place.
See docs/containment.md for what is and is not limited.

One session id, one owner: a runtime holds its sandbox's lease
(:mod:`openhands_rt.leases`, an ``flock`` in the run directory) from start to
close, so a second runtime with the same ``session_id`` — in this process or
another — is refused with :class:`~openhands_rt.errors.SessionInUseError`
instead of sharing (and, on close, removing) the first one's container.
Attaching to a ``keep_runtime_alive`` sandbox is the explicit exception: once
its owner has closed it, a new runtime with its session id takes it over
(``attached`` is then true) and owns it from then on; its ``config`` decides
whether closing keeps it or removes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import tempfile
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiodocker
import aiohttp
from aiodocker.exceptions import DockerError

from events import EventStream, RuntimeStatus
from events.accounts import renumbered
from events.wire import CHANNEL_PATH, READY_LINE_PREFIX
from openhands_rt.config import SandboxConfig, check_workspace_dir
from openhands_rt.errors import SandboxError, SandboxStartError, SessionInUseError
from openhands_rt.leases import SessionLease
from openhands_rt.plugins import check_plugins
from openhands_rt.runtime import EventStreamRuntime, SandboxEndpoint
from openhands_rt.sandboxes import (
    HOST_DIR_PREFIX,
    LABEL_KEEP_ALIVE,
    LABEL_SESSION,
    owner_labels,
    reap_orphans,
)

__all__ = ["CONTAINER_PREFIX", "RESTART_LIMIT", "RESTART_WINDOW", "SERVER_PORT", "DockerRuntime"]

logger = logging.getLogger(__name__)

CONTAINER_PREFIX = "openhands-runtime-"
SERVER_PORT = 30150
SERVER_PYTHON = "/openhands_rt/venv/bin/python"
#: ``-I``: isolated; the server's path is the image's root-owned code and venv only.
SERVER_COMMAND = [SERVER_PYTHON, "-I", "-m", "container_server"]
#: A root-only (0700) tmpfs; the host's run directory is mounted inside it.
RUN_DIR_IN_CONTAINER = "/run/openhands-rt"
HOST_DIR_IN_CONTAINER = f"{RUN_DIR_IN_CONTAINER}/host"
KEY_FILE = "key"
SOCKET_FILE = "server.sock"
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
# auto_restart gives up when the container dies this often within the window:
# a server that cannot stay up is reported, not restarted forever.
RESTART_LIMIT = 3
RESTART_WINDOW = 60.0
_DOCKER_UNREACHABLE = 900  # aiodocker's DockerError status for "cannot connect"
_LOG_TAIL = 50


@dataclass
class _WritablePlaces:
    """What a read-only-root container gets mounted to stay usable."""

    tmpfs: dict[str, str] = field(default_factory=dict)
    binds: list[str] = field(default_factory=list)


class DockerRuntime(EventStreamRuntime):
    """A sandbox in a Docker container (see the module docstring).

    ``auto_restart=True``: when the container exits unexpectedly and still
    exists, start it again (see the module docstring); off by default, so
    that a dead sandbox stays dead until the caller decides. ``None`` takes
    ``config.auto_restart``.
    """

    session_scope = "docker"

    def __init__(
        self,
        stream: EventStream,
        config: SandboxConfig | None = None,
        *,
        session_id: str | None = None,
        client_id: str | None = None,
        docker: aiodocker.Docker | None = None,
        auto_restart: bool | None = None,
    ) -> None:
        super().__init__(stream, config, session_id=session_id, client_id=client_id)
        self._docker = docker
        self._owns_docker = docker is None
        self.container: Any = None  # aiodocker DockerContainer
        self.image: str | None = None
        self.attached = False
        self.auto_restart = self.config.auto_restart if auto_restart is None else auto_restart
        self.restarts = 0  # how many times auto_restart brought the container back
        self._watcher: asyncio.Task[None] | None = None
        self._restarter: asyncio.Task[None] | None = None
        self._restarting = False
        self._restart_times: deque[float] = deque(maxlen=RESTART_LIMIT)
        self._connect_lock = asyncio.Lock()
        self._run_dir: str | None = None  # on the host: the key, and the socket (network none)
        self.endpoint: SandboxEndpoint | None = None
        self._etc_dir: str | None = None
        self._stopping = False
        self._lease: SessionLease | None = None

    @property
    def container_name(self) -> str:
        return CONTAINER_PREFIX + self.session_id

    def _client(self) -> aiodocker.Docker:
        if self._docker is None:
            self._docker = aiodocker.Docker()
        return self._docker

    async def connect(self) -> None:
        # Serialized: an automatic restart and the caller's connect() must not both start one.
        async with self._connect_lock:
            await super().connect()

    def report_status(self, status: RuntimeStatus, message: str = "") -> None:
        if self._restarting and status is RuntimeStatus.READY:
            message = f"restarted: {message}; {self._restart_note()}"
        super().report_status(status, message)

    def _restart_note(self) -> str:
        if self.config.read_only_root:
            kept = "the root filesystem is read-only" + (
                " and the workspace is mounted" if self.config.workspace_dir else ""
            )
            lost = "the tmpfs mounts (/tmp, the home directory"
            lost += ")" if self.config.workspace_dir else ", /workspace)"
        else:
            kept = "the container's files are kept"
            # gVisor mounts its own in-memory /tmp unless the container has one.
            lost = "/tmp" if self.config.oci_runtime == "runsc" else ""
        gone = "its processes and shell state" + (f" and {lost}" if lost else "")
        return f"{self.container_name} was started again: {gone} are gone; {kept}"

    # ------------------------------------------------------------------ start

    async def _start_sandbox(self) -> SandboxEndpoint:
        check_plugins(self.config.plugins)
        docker = self._client()
        self._stopping = False
        try:
            await reap_orphans(docker)
            existing = await self._existing_container()
            if self._restarting:
                if existing is None:
                    raise SandboxError(
                        f"{self.container_name} was removed, so it cannot be started again; "
                        "connect() makes a fresh sandbox"
                    )
                return await self._start_again(existing)
            if existing is not None:
                endpoint = await self._attach(existing)
                if endpoint is not None:
                    return endpoint
            self.image = await self._resolve_image()
            return await self._create_and_start(self.image)
        except DockerError as exc:
            if exc.status == _DOCKER_UNREACHABLE:
                raise SandboxError(f"cannot reach the Docker engine: {exc.message}") from exc
            raise SandboxError(f"Docker refused: {exc.message}") from exc
        except aiodocker.exceptions.DockerContainerError as exc:  # pragma: no cover - subclass
            raise SandboxError(f"Docker refused: {exc}") from exc
        except (OSError, aiohttp.ClientError) as exc:
            raise SandboxError(f"cannot reach the Docker engine: {exc}") from exc

    async def _existing_container(self) -> Any:
        try:
            return await self._client().containers.get(self.container_name)
        except DockerError as exc:
            if exc.status == 404:
                return None
            raise

    def _api_key_of(self, info: Mapping[str, Any]) -> str:
        run_dir = _run_dir_of(info)
        api_key = ""
        if run_dir is not None:
            with (
                contextlib.suppress(OSError),
                open(os.path.join(run_dir, KEY_FILE), encoding="utf-8") as f,
            ):
                api_key = f.read().strip()
        if not api_key:
            raise SandboxError(
                f"container {self.container_name} exists but is not an openhands-rt sandbox "
                "(no session key); remove it or choose another session id"
            )
        return api_key

    def _hold(self, run_dir: str | None) -> None:
        """Hold the lease of the sandbox whose run directory this is (SessionInUseError)."""
        if run_dir is None or not os.path.isdir(run_dir):
            return  # not ours, or its owner is gone and took the directory with it
        if self._lease is not None and self._lease.run_dir == run_dir:
            return
        lease = SessionLease.acquire(
            run_dir, session_id=self.session_id, sandbox=self.container_name
        )
        self._release_lease()
        self._lease = lease

    def _release_lease(self) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            lease.release()

    async def _attach(self, container: Any) -> SandboxEndpoint | None:
        """Attach to a running container of this session, or clear a dead one away."""
        info = await container.show()
        # Before anything else: a container another live runtime uses is not touched.
        self._hold(_run_dir_of(info))
        if not info["State"].get("Running"):
            await container.delete(force=True)
            self._release_lease()
            return None
        api_key = self._api_key_of(info)
        self.container = container
        self.attached = True
        self._run_dir = _run_dir_of(info)
        endpoint = self._endpoint_from(info, api_key)
        self.report_status(RuntimeStatus.STARTING, f"attached to running {self.container_name}")
        self._watch(container)
        return endpoint

    async def _start_again(self, container: Any) -> SandboxEndpoint:
        """Start this session's stopped container again (auto_restart)."""
        try:
            return await self._start_existing(container)
        except DockerError as exc:
            # A removal racing the restart: gone (404) or going (409) by now.
            if exc.status in (404, 409):
                raise SandboxError(
                    f"{self.container_name} was removed while it was being started again "
                    f"({exc.message}); connect() makes a fresh sandbox"
                ) from exc
            raise

    async def _start_existing(self, container: Any) -> SandboxEndpoint:
        info = await container.show()
        if info["State"].get("Running"):
            endpoint = await self._attach(container)
            assert endpoint is not None
            return endpoint
        if info["State"].get("Status") in ("removing", "dead"):
            raise SandboxError(
                f"{self.container_name} is being removed, so it cannot be started again; "
                "connect() makes a fresh sandbox"
            )
        self._hold(_run_dir_of(info))
        api_key = self._api_key_of(info)
        self.container = container
        self._run_dir = _run_dir_of(info)
        self.report_status(RuntimeStatus.STARTING, f"starting {self.container_name} again")
        # The log still holds the previous run's "listening on" line: read only newer ones.
        since = time.time()
        await container.start()
        await self._until_listening(container, since=since)
        endpoint = self._endpoint_from(await container.show(), api_key)
        self._watch(container)
        return endpoint

    async def _resolve_image(self) -> str:
        docker = self._client()
        if self.config.runtime_container_image:
            image = self.config.runtime_container_image
            try:
                await docker.images.inspect(image)
            except DockerError as exc:
                if exc.status == 404:
                    raise SandboxError(
                        f"runtime image {image!r} does not exist locally (nothing can be pulled "
                        "here; build it with `openhands-rt build`)"
                    ) from exc
                raise
            return image
        from openhands_rt.image import BuildProgress, build_runtime_image

        self.report_status(
            RuntimeStatus.BUILDING,
            f"resolving the runtime image for {self.config.base_container_image}",
        )

        def progress(event: BuildProgress) -> None:
            # A handful of readable events; the raw build output is in the build log.
            self.report_status(RuntimeStatus.BUILDING, event.message)

        result = await build_runtime_image(
            self.config.base_container_image,
            plugins=list(self.config.plugins),
            repository=self.config.runtime_image_repository,
            on_progress=progress,
            docker=docker,
        )
        built: str = result.image
        return built

    def _workspace_owner(self) -> tuple[str | None, int | None]:
        if self.config.workspace_dir is None:
            return None, None
        path = os.path.abspath(self.config.workspace_dir)
        try:
            # Checked again here: the config may have been changed, or the file system.
            check_workspace_dir(path)
            os.makedirs(path, exist_ok=True)
        except (ValueError, OSError) as exc:
            raise SandboxError(f"cannot use the workspace directory {path}: {exc}") from exc
        return path, os.stat(path).st_uid

    def _user_id_flag(self, owner_uid: int | None) -> int | None:
        """The uid the sandbox user is re-numbered to (``--user-id``), if any."""
        if self.config.run_as_root or owner_uid is None or owner_uid == 0:
            return None
        return owner_uid

    def _tmpfs_size_mb(self, default_mb: int) -> int:
        if self.config.memory_mb is None:
            return default_mb
        return min(default_mb, max(_TMPFS_MIN_MB, self.config.memory_mb // 4))

    async def _writable_places(self, image: str) -> _WritablePlaces:
        """Mounts that keep a read-only-root sandbox usable (see the module docstring)."""
        _, owner_uid = self._workspace_owner()
        wanted_uid = self._user_id_flag(owner_uid)
        username = "root" if self.config.run_as_root else SANDBOX_USER
        passwd, group = await self._image_files(image, ("/etc/passwd", "/etc/group"))
        entry = next(
            (f for f in (line.split(":") for line in passwd.splitlines()) if f[0] == username),
            None,
        )
        if entry is None or len(entry) < 6:
            raise SandboxError(f"image {image} has no user {username!r} in /etc/passwd")
        uid, gid, home = int(entry[2]), int(entry[3]), entry[5]
        places = _WritablePlaces()
        if wanted_uid is not None and wanted_uid != uid:
            # privileges.become_user would rewrite these in place; here it finds them
            # already right (uid and gid = the workspace owner, as it would make them).
            uid = gid = wanted_uid
            files = {
                "passwd": renumbered(passwd, username, uid, fields=(2, 3)),
                "group": renumbered(group, username, gid, fields=(2,)),
            }
            self._etc_dir = await asyncio.to_thread(_write_etc_dir, self.session_id, files)
            places.binds += [f"{self._etc_dir}/{n}:/etc/{n}:ro" for n in files]
        owned = f"uid={uid},gid={gid}"
        places.tmpfs["/tmp"] = (
            f"rw,exec,nosuid,nodev,mode=1777,size={self._tmpfs_size_mb(TMPFS_TMP_MB)}m"
        )
        places.tmpfs[home] = (
            f"rw,exec,nosuid,nodev,mode=0700,{owned},size={self._tmpfs_size_mb(TMPFS_HOME_MB)}m"
        )
        if self.config.workspace_dir is None:
            places.tmpfs["/workspace"] = (
                f"rw,exec,nosuid,nodev,mode=0755,{owned},"
                f"size={self._tmpfs_size_mb(TMPFS_WORKSPACE_MB)}m"
            )
        return places

    async def _image_files(self, image: str, paths: tuple[str, ...]) -> list[str]:
        """Text of files in ``image``, read through a container that is never started."""
        docker = self._client()
        # Labelled like a sandbox of this session, so that gc reaps it if we die right here.
        labels = {**self.config.labels, LABEL_SESSION: self.session_id, **owner_labels()}
        probe = await docker.containers.create(
            {"Image": image, "Entrypoint": ["/nonexistent"], "Labels": labels}
        )
        try:
            texts = []
            for path in paths:
                try:
                    tar = await probe.get_archive(path)
                except DockerError as exc:
                    if exc.status == 404:
                        texts.append("")
                        continue
                    raise
                with tar:
                    member = tar.extractfile(tar.getmembers()[0])
                    data = member.read() if member is not None else b""
                texts.append(data.decode("utf-8", errors="surrogateescape"))
            return texts
        finally:
            with contextlib.suppress(DockerError):
                await probe.delete(force=True)

    def _container_config(
        self, image: str, run_dir: str, writable: _WritablePlaces | None = None
    ) -> dict[str, Any]:
        cfg = self.config
        workspace, owner_uid = self._workspace_owner()
        cmd = [*SERVER_COMMAND, "--working-dir", "/workspace"]
        cmd += ["--api-key-file", f"{HOST_DIR_IN_CONTAINER}/{KEY_FILE}"]
        cmd += ["--no-change-timeout", str(cfg.no_change_timeout)]
        if cfg.allow_multiple_commands:
            cmd.append("--allow-multiple-commands")
        cmd += ["--default-timeout", str(cfg.timeout)]
        if cfg.network == "none":
            cmd += ["--unix-socket", f"{HOST_DIR_IN_CONTAINER}/{SOCKET_FILE}"]
        else:
            cmd += ["--host", "0.0.0.0", "--port", str(SERVER_PORT)]
        if cfg.plugins:
            cmd += ["--plugins", *(p.name for p in cfg.plugins)]
        if not cfg.run_as_root:
            cmd += ["--username", SANDBOX_USER]
            user_id = self._user_id_flag(owner_uid)
            if user_id is not None:
                cmd += ["--user-id", str(user_id)]
        binds = []
        if workspace is not None:
            binds.append(f"{workspace}:/workspace:rw")
        binds.append(f"{run_dir}:{HOST_DIR_IN_CONTAINER}:rw")
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
        if cfg.network != "none":
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
            LABEL_SESSION: self.session_id,
            LABEL_KEEP_ALIVE: "true" if cfg.keep_runtime_alive else "false",
            **owner_labels(),
        }
        config: dict[str, Any] = {
            "Image": image,
            "Entrypoint": cmd[:1],
            "Cmd": cmd[1:],
            "Env": [f"{k}={v}" for k, v in cfg.env.items()],
            "Labels": labels,
            "User": "0:0",
            "WorkingDir": "/workspace",
            "Hostname": f"sandbox-{self.session_id[:20]}".rstrip("-"),
            "HostConfig": host_config,
        }
        if cfg.network != "none":
            config["ExposedPorts"] = {f"{SERVER_PORT}/tcp": {}}
        return config

    def _endpoint_from(self, info: Mapping[str, Any], api_key: str) -> SandboxEndpoint:
        self.endpoint = self._find_endpoint(info, api_key)
        return self.endpoint

    def _find_endpoint(self, info: Mapping[str, Any], api_key: str) -> SandboxEndpoint:
        if self.config.network == "none" or info["HostConfig"].get("NetworkMode") == "none":
            run_dir = _run_dir_of(info)
            if run_dir is None:
                raise SandboxError(f"{self.container_name} has no network and no socket mount")
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
        raise SandboxError(f"{self.container_name} publishes no port for the server")

    async def _create_and_start(self, image: str) -> SandboxEndpoint:
        docker = self._client()
        api_key = secrets.token_urlsafe(32)
        self._run_dir = await asyncio.to_thread(_make_run_dir, self.session_id, api_key)
        self._hold(self._run_dir)
        writable = await self._writable_places(image) if self.config.read_only_root else None
        config = self._container_config(image, self._run_dir, writable)
        self.report_status(RuntimeStatus.STARTING, f"creating {self.container_name} from {image}")
        try:
            container = await docker.containers.create(config, name=self.container_name)
        except DockerError as exc:
            if exc.status == 409:  # another runtime made it between our look and now
                raise SessionInUseError(
                    f"session {self.session_id!r} is in use: {self.container_name} was just "
                    "created by another runtime",
                    session_id=self.session_id,
                    owner="",
                ) from exc
            raise
        self.container = container
        try:
            await container.start()
            await self._until_listening(container)
            endpoint = self._endpoint_from(await container.show(), api_key)
        except (SandboxStartError, DockerError):
            # A sandbox that never became ready is not kept, keep_runtime_alive or not.
            await self._remove_container()
            raise
        self._watch(container)
        return endpoint

    async def _until_listening(self, container: Any, *, since: float | None = None) -> None:
        """Wait for the server's "listening on" line under the startup deadline.

        On failure raises :class:`SandboxStartError` with the container's last
        log lines.
        """
        try:
            await asyncio.wait_for(
                self._wait_listening(container, since=since), self.config.startup_timeout
            )
        except asyncio.TimeoutError:
            tail = await self._log_tail(container)
            raise SandboxStartError(
                f"sandbox {self.container_name} was not ready within "
                f"{self.config.startup_timeout} s",
                log_tail=tail,
            ) from None
        except (SandboxStartError, DockerError) as exc:
            tail = await self._log_tail(container)
            if isinstance(exc, SandboxStartError):
                raise SandboxStartError(str(exc), log_tail=tail) from None
            raise SandboxStartError(
                f"sandbox {self.container_name} failed to start: {exc.message}", log_tail=tail
            ) from exc

    async def _wait_listening(self, container: Any, *, since: float | None = None) -> None:
        """Return once the server prints its "listening on" line (followed log stream)."""
        docker = self._client()
        params = {"stdout": "1", "stderr": "0", "follow": "1"}
        if since is not None:
            params["since"] = f"{since:.9f}"
        # aiodocker's own log follower leaves its response open when the caller stops
        # early; this request is closed explicitly instead.
        async with docker._query(f"containers/{container.id}/logs", params=params) as response:
            try:
                buffer = b""
                async for data in response.content.iter_any():
                    buffer += data
                    for line in _demultiplex_lines(buffer):
                        if line.startswith(READY_LINE_PREFIX.encode()):
                            return
            finally:
                response.close()
        info = await container.show()
        code = info["State"].get("ExitCode")
        raise SandboxStartError(
            f"sandbox {self.container_name} exited with code {code} before listening"
        )

    async def _log_tail(self, container: Any) -> list[str]:
        try:
            lines = await container.log(stdout=True, stderr=True, tail=_LOG_TAIL)
        except (DockerError, OSError, aiohttp.ClientError):
            return []
        return [line.rstrip("\n") for line in "".join(lines).splitlines()][-_LOG_TAIL:]

    # ------------------------------------------------------------------ death, restart, stop

    def _watch(self, container: Any) -> None:
        self._watcher = asyncio.get_running_loop().create_task(self._watch_container(container))

    async def _watch_container(self, container: Any) -> None:
        try:
            result = await container.wait()
        except (DockerError, OSError, aiohttp.ClientError) as exc:
            # The engine went away (dockerd stopped or restarted): nothing to restart with.
            if not self._stopping:
                reason = f"lost contact with the Docker engine: {exc}"
                logger.warning("%s", reason)
                self._sandbox_died(reason)
            return
        if self._stopping:
            return
        reason = await self._exit_reason(container, result)
        restart = self._may_restart()
        if restart:
            reason += "; starting it again (auto_restart)"
        elif self.auto_restart and not self._closed:
            reason += (
                f"; not restarted: it died {RESTART_LIMIT} times within {RESTART_WINDOW:.0f} s"
            )
        logger.warning("%s", reason)
        self._sandbox_died(reason)
        if restart:
            self._restarter = asyncio.get_running_loop().create_task(self._restart())

    async def _exit_reason(self, container: Any, result: Mapping[str, Any]) -> str:
        reason = (
            f"sandbox container {self.container_name} died "
            f"(exited with status {result.get('StatusCode')}"
        )
        try:
            state = (await container.show())["State"]
        except (DockerError, OSError, aiohttp.ClientError):
            state = {}
        if state.get("OOMKilled"):
            reason += ", killed by the out-of-memory killer"
        return reason + ")"

    def _may_restart(self) -> bool:
        if not self.auto_restart or self._closed:
            return False
        times = self._restart_times
        now = time.monotonic()
        return len(times) < RESTART_LIMIT or now - times[0] > RESTART_WINDOW

    async def _restart(self) -> None:
        self._restart_times.append(time.monotonic())
        self._restarting = True
        try:
            await self.connect()
        except Exception as exc:
            # connect() has reported it (status error) and cleaned up; the caller's
            # connect() makes a fresh sandbox.
            logger.warning("could not start %s again: %s", self.container_name, exc)
        else:
            self.restarts += 1
        finally:
            self._restarting = False

    async def _remove_container(self) -> None:
        container, self.container = self.container, None
        if container is None:
            return
        with contextlib.suppress(DockerError):
            await container.delete(force=True)

    async def _stop_sandbox(self) -> None:
        self._stopping = True
        tasks = [t for t in (self._restarter, self._watcher) if t is not None]
        self._restarter = self._watcher = None
        for task in tasks:
            # A failed restart stops the sandbox from inside the restart task itself.
            if task is asyncio.current_task():
                continue
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        try:
            if self.config.keep_runtime_alive:
                self.container = None
            else:
                await self._remove_container()
        finally:
            self._release_lease()
            if not self.config.keep_runtime_alive:
                for directory in (self._run_dir, self._etc_dir):
                    if directory is not None:
                        shutil.rmtree(directory, ignore_errors=True)
                self._run_dir = self._etc_dir = None
            if self._owns_docker and self._docker is not None:
                # Made again on the next connect(); never left open past a stop.
                await self._docker.close()
                self._docker = None


def _make_run_dir(session_id: str, api_key: str) -> str:
    """A new host directory, private to this user (0700), holding the key file (0600)."""
    directory = tempfile.mkdtemp(prefix=f"{HOST_DIR_PREFIX}{session_id}-")
    fd = os.open(os.path.join(directory, KEY_FILE), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(api_key)
    return directory


def _run_dir_of(info: Mapping[str, Any]) -> str | None:
    """The host run directory a container has mounted (None: not one of ours, or older)."""
    for bind in info["HostConfig"].get("Binds") or []:
        parts = bind.split(":")
        if len(parts) >= 2 and parts[1] == HOST_DIR_IN_CONTAINER:
            return str(parts[0])
    return None


def _write_etc_dir(session_id: str, files: Mapping[str, str]) -> str:
    """A new host directory holding ``files`` (name → text), readable by everyone."""
    directory = tempfile.mkdtemp(prefix=f"{HOST_DIR_PREFIX}{session_id}-etc-")
    os.chmod(directory, 0o755)
    for name, text in files.items():
        path = os.path.join(directory, name)
        with open(path, "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(text)
        os.chmod(path, 0o644)
    return directory


def _demultiplex_lines(buffer: bytes) -> list[bytes]:
    """Lines of a Docker multiplexed log stream (8-byte frame headers), complete frames only."""
    payload = bytearray()
    offset = 0
    while offset + 8 <= len(buffer):
        size = int.from_bytes(buffer[offset + 4 : offset + 8], "big")
        if offset + 8 + size > len(buffer):
            break
        payload += buffer[offset + 8 : offset + 8 + size]
        offset += 8 + size
    return bytes(payload).splitlines()
