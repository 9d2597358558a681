"""DockerRuntime: one sandbox container per runtime, driven through aiodocker.

The container is named ``openhands-runtime-{session_id}`` and labelled with
the session id, our version and its owner (host, pid and the pid's start time,
so a reused pid is not mistaken for a live owner). The server listens on
:data:`SERVER_PORT` inside (a high port agents do not use), published on the
host's 127.0.0.1 with a port Docker chooses; with ``network="none"`` there is
no port at all and the channel runs over a Unix socket in a host directory
bind-mounted into the container.

The container starts as root only long enough for the server to become the
sandbox user (see :mod:`container_server.privileges`); every capability is
dropped except the five that switch needs, ``no-new-privileges`` is set, and
Docker's init reaps zombies. Readiness is the server's own "listening on" line
in the container's log stream (an event, not a poll), under a deadline.

A container that exits while the runtime uses it (``docker kill``, OOM of the
server, ...) is noticed through Docker's wait endpoint: the pending actions are
answered with ``ErrorObservation`` and a ``RuntimeStatusObservation(error)`` is
appended; ``connect()`` then starts a fresh sandbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

import aiodocker
from aiodocker.exceptions import DockerError

from events import EventStream, RuntimeStatus
from openhands_rt.config import SandboxConfig
from openhands_rt.errors import SandboxError, SandboxStartError
from openhands_rt.plugins import check_plugins
from openhands_rt.runtime import EventStreamRuntime, SandboxEndpoint
from openhands_rt.sandboxes import (
    LABEL_KEEP_ALIVE,
    LABEL_SESSION,
    owner_labels,
    reap_orphans,
)

__all__ = ["CONTAINER_PREFIX", "SERVER_PORT", "DockerRuntime"]

logger = logging.getLogger(__name__)

CONTAINER_PREFIX = "openhands-runtime-"
SERVER_PORT = 30150
SERVER_PYTHON = "/openhands_rt/venv/bin/python"
SOCKET_DIR_IN_CONTAINER = "/openhands_rt/sock"
SANDBOX_USER = "openhands"
# Needed only while the server switches from root to the sandbox user; the
# kernel clears them all at setuid to a non-root uid.
SWITCH_CAPABILITIES = ["CHOWN", "SETUID", "SETGID", "DAC_OVERRIDE", "FOWNER"]
RUNSC_MEMORY_HEADROOM_MB = 256
_LISTENING = "listening on "
_LOG_TAIL = 50


class DockerRuntime(EventStreamRuntime):
    """A sandbox in a Docker container (see the module docstring)."""

    def __init__(
        self,
        stream: EventStream,
        config: SandboxConfig | None = None,
        *,
        session_id: str | None = None,
        client_id: str | None = None,
        docker: aiodocker.Docker | None = None,
    ) -> None:
        super().__init__(stream, config, session_id=session_id, client_id=client_id)
        self._docker = docker
        self._owns_docker = docker is None
        self.container: Any = None  # aiodocker DockerContainer
        self.image: str | None = None
        self.attached = False
        self._watcher: asyncio.Task[None] | None = None
        self._socket_dir: str | None = None
        self._stopping = False

    @property
    def container_name(self) -> str:
        return CONTAINER_PREFIX + self.session_id

    def _client(self) -> aiodocker.Docker:
        if self._docker is None:
            self._docker = aiodocker.Docker()
        return self._docker

    # ------------------------------------------------------------------ start

    async def _start_sandbox(self) -> SandboxEndpoint:
        check_plugins(self.config.plugins)
        docker = self._client()
        self._stopping = False
        try:
            await reap_orphans(docker)
            existing = await self._existing_container()
            if existing is not None:
                endpoint = await self._attach(existing)
                if endpoint is not None:
                    return endpoint
            self.image = await self._resolve_image()
            return await self._create_and_start(self.image)
        except DockerError as exc:
            raise SandboxError(f"Docker refused: {exc.message}") from exc
        except aiodocker.exceptions.DockerContainerError as exc:  # pragma: no cover - subclass
            raise SandboxError(f"Docker refused: {exc}") from exc
        except OSError as exc:
            raise SandboxError(f"cannot reach the Docker engine: {exc}") from exc

    async def _existing_container(self) -> Any:
        try:
            return await self._client().containers.get(self.container_name)
        except DockerError as exc:
            if exc.status == 404:
                return None
            raise

    async def _attach(self, container: Any) -> SandboxEndpoint | None:
        """Attach to a running container of this session, or clear a dead one away."""
        info = await container.show()
        if not info["State"].get("Running"):
            await container.delete(force=True)
            return None
        env = dict(e.split("=", 1) for e in info["Config"].get("Env") or [] if "=" in e)
        api_key = env.get("SESSION_API_KEY")
        if not api_key:
            raise SandboxError(
                f"container {self.container_name} exists but is not an openhands-rt sandbox "
                "(no session key); remove it or choose another session id"
            )
        self.container = container
        self.attached = True
        endpoint = self._endpoint_from(info, api_key)
        self.report_status(RuntimeStatus.STARTING, f"attached to running {self.container_name}")
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
        from openhands_rt.image import build_runtime_image

        self.report_status(
            RuntimeStatus.BUILDING,
            f"resolving the runtime image for {self.config.base_container_image}",
        )

        def progress(line: str) -> None:
            self.report_status(RuntimeStatus.BUILDING, line)

        result = await build_runtime_image(
            self.config.base_container_image,
            plugins=list(self.config.plugins),
            repository=self.config.runtime_image_repository,
            on_progress=progress,
            docker=docker,
        )
        image: str = result.image
        return image

    def _workspace_owner(self) -> tuple[str | None, int | None]:
        if self.config.workspace_dir is None:
            return None, None
        path = os.path.abspath(self.config.workspace_dir)
        os.makedirs(path, exist_ok=True)
        return path, os.stat(path).st_uid

    def _container_config(self, image: str, api_key: str) -> dict[str, Any]:
        cfg = self.config
        workspace, owner_uid = self._workspace_owner()
        cmd = [SERVER_PYTHON, "-m", "container_server", "--working-dir", "/workspace"]
        cmd += ["--no-change-timeout", str(cfg.no_change_timeout)]
        cmd += ["--default-timeout", str(cfg.timeout)]
        if cfg.network == "none":
            cmd += ["--unix-socket", f"{SOCKET_DIR_IN_CONTAINER}/server.sock"]
        else:
            cmd += ["--host", "0.0.0.0", "--port", str(SERVER_PORT)]
        if cfg.plugins:
            cmd += ["--plugins", *(p.name for p in cfg.plugins)]
        if not cfg.run_as_root:
            cmd += ["--username", SANDBOX_USER]
            if owner_uid is not None and owner_uid != 0:
                cmd += ["--user-id", str(owner_uid)]
        binds = []
        if workspace is not None:
            binds.append(f"{workspace}:/workspace:rw")
        if self._socket_dir is not None:
            binds.append(f"{self._socket_dir}:{SOCKET_DIR_IN_CONTAINER}:rw")
        host_config: dict[str, Any] = {
            "Init": True,
            "NetworkMode": cfg.network,
            "Binds": binds,
            "SecurityOpt": ["no-new-privileges"],
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
        if cfg.read_only_root:
            host_config["ReadonlyRootfs"] = True
            host_config["Tmpfs"] = {"/tmp": "rw,exec,size=512m", "/home": "rw,exec,size=256m"}
        labels = {
            **cfg.labels,
            LABEL_SESSION: self.session_id,
            LABEL_KEEP_ALIVE: "true" if cfg.keep_runtime_alive else "false",
            **owner_labels(),
        }
        env = {**cfg.env, "SESSION_API_KEY": api_key}
        config: dict[str, Any] = {
            "Image": image,
            "Entrypoint": cmd[:1],
            "Cmd": cmd[1:],
            "Env": [f"{k}={v}" for k, v in env.items()],
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
        if self.config.network == "none" or info["HostConfig"].get("NetworkMode") == "none":
            binds = info["HostConfig"].get("Binds") or []
            host_dir = next(
                (b.split(":")[0] for b in binds if b.split(":")[1] == SOCKET_DIR_IN_CONTAINER),
                None,
            )
            if host_dir is None:
                raise SandboxError(f"{self.container_name} has no network and no socket mount")
            return SandboxEndpoint(
                url="ws://sandbox/ws", api_key=api_key, unix_socket=f"{host_dir}/server.sock"
            )
        ports = (info["NetworkSettings"].get("Ports") or {}).get(f"{SERVER_PORT}/tcp") or []
        for binding in ports:
            if binding.get("HostIp") in ("127.0.0.1", "") and binding.get("HostPort"):
                return SandboxEndpoint(
                    url=f"ws://127.0.0.1:{binding['HostPort']}/ws", api_key=api_key
                )
        raise SandboxError(f"{self.container_name} publishes no port for the server")

    async def _create_and_start(self, image: str) -> SandboxEndpoint:
        docker = self._client()
        api_key = secrets.token_urlsafe(32)
        if self.config.network == "none":
            self._socket_dir = tempfile.mkdtemp(prefix=f"openhands-rt-{self.session_id}-")
            # The sandbox user (any uid) must be able to create its socket here.
            os.chmod(self._socket_dir, 0o777)
        config = self._container_config(image, api_key)
        self.report_status(RuntimeStatus.STARTING, f"creating {self.container_name} from {image}")
        container = await docker.containers.create(config, name=self.container_name)
        self.container = container
        try:
            await container.start()
            await asyncio.wait_for(self._wait_listening(container), self.config.startup_timeout)
            info = await container.show()
            endpoint = self._endpoint_from(info, api_key)
        except asyncio.TimeoutError:
            tail = await self._log_tail(container)
            await self._remove_container()
            raise SandboxStartError(
                f"sandbox {self.container_name} was not ready within "
                f"{self.config.startup_timeout} s",
                log_tail=tail,
            ) from None
        except (SandboxStartError, DockerError) as exc:
            tail = await self._log_tail(container)
            await self._remove_container()
            if isinstance(exc, SandboxStartError):
                raise SandboxStartError(str(exc), log_tail=tail) from None
            raise SandboxStartError(
                f"sandbox {self.container_name} failed to start: {exc.message}", log_tail=tail
            ) from exc
        self._watch(container)
        return endpoint

    async def _wait_listening(self, container: Any) -> None:
        """Return once the server prints its "listening on" line (followed log stream)."""
        docker = self._client()
        params = {"stdout": "1", "stderr": "0", "follow": "1"}
        # aiodocker's own log follower leaves its response open when the caller stops
        # early; this request is closed explicitly instead.
        async with docker._query(f"containers/{container.id}/logs", params=params) as response:
            try:
                buffer = b""
                async for data in response.content.iter_any():
                    buffer += data
                    for line in _demultiplex_lines(buffer):
                        if line.startswith(_LISTENING.encode()):
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
        except DockerError:
            return []
        return [line.rstrip("\n") for line in "".join(lines).splitlines()][-_LOG_TAIL:]

    # ------------------------------------------------------------------ death and stop

    def _watch(self, container: Any) -> None:
        self._watcher = asyncio.get_running_loop().create_task(self._watch_container(container))

    async def _watch_container(self, container: Any) -> None:
        try:
            result = await container.wait()
        except (DockerError, OSError) as exc:
            if self._stopping:
                return
            reason = f"lost contact with the Docker engine: {exc}"
        else:
            if self._stopping:
                return
            code = result.get("StatusCode")
            reason = f"sandbox container {self.container_name} exited (status {code})"
        logger.warning("%s", reason)
        self._sandbox_died(reason)

    async def _remove_container(self) -> None:
        container, self.container = self.container, None
        if container is None:
            return
        with contextlib.suppress(DockerError):
            await container.delete(force=True)

    async def _stop_sandbox(self) -> None:
        self._stopping = True
        if self._watcher is not None:
            self._watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._watcher
            self._watcher = None
        try:
            if self.config.keep_runtime_alive:
                self.container = None
            else:
                await self._remove_container()
        finally:
            if self._socket_dir is not None and not self.config.keep_runtime_alive:
                shutil.rmtree(self._socket_dir, ignore_errors=True)
                self._socket_dir = None
            if self._owns_docker and self._docker is not None:
                # Made again on the next connect(); never left open past a stop.
                await self._docker.close()
                self._docker = None


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
