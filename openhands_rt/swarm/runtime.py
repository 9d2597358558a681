"""SwarmRuntime: the sandbox as a one-replica Docker Swarm service on any node.

Same behaviour as :class:`~openhands_rt.docker_runtime.DockerRuntime`; what
differs is where the sandbox runs and how the host reaches it
(docs/scale-out.md):

- ``docker_host`` is a manager's engine URL. The runtime image is resolved
  (built when missing) on this host's engine, and with ``registry`` pushed
  there through the manager and named by digest, so every node pulls exactly
  it; ``registry=None``: the image is on every node already.
- The sandbox is the service ``openhands-runtime-<slug>-<h8>``
  (:func:`~openhands_rt.swarm.spec.service_name`), placed by Swarm's scheduler
  (reservations from ``cpus``/``memory_mb``, ``placement`` constraints),
  ``RestartPolicy: none``. Its server is reached on the host-mode port its
  node published, over TLS with the server's certificate pinned: a key pair
  made for this sandbox alone, whose private half reaches the server as a
  Docker secret, as does the session key (0400 root, in a root-only tmpfs).
  This host keeps the key and the certificate in a private run directory
  (named by a service label), which is also where the session's lease lives:
  a kept-alive sandbox is attached to again from this host.
- Death: a node the manager reports ``down`` (its engine or machine lost)
  kills the sandboxes it held, reported from the manager's event stream; a
  dropped channel makes the runtime read the task's state (Swarm has no task
  events), with backoff until the channel is back or the task has ended;
  the service removed by someone else is a death too. Each is reported as on
  Docker: every pending action gets an ``ErrorObservation``, the stream a
  ``RuntimeStatusObservation(error)``; ``connect()`` then makes a fresh
  sandbox, which Swarm places on the nodes left.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
from collections.abc import Mapping, Sequence
from typing import Any

import aiodocker
import anyio

from events import EventStream, RuntimeStatus, SnapshotObservation
from events.wire import CHANNEL_PATH, READY_LINE_PREFIX
from openhands_rt.channel import ChannelClient
from openhands_rt.config import SandboxConfig
from openhands_rt.docker import lifecycle, rundir
from openhands_rt.docker.engine import (
    Conflict,
    EngineError,
    EngineUnreachable,
    NotFound,
    translated,
)
from openhands_rt.errors import (
    SandboxClosedError,
    SandboxError,
    SandboxStartError,
    SessionInUseError,
)
from openhands_rt.leases import LeaseHolder
from openhands_rt.plugins import check_plugins
from openhands_rt.runtime import EventStreamRuntime, SandboxEndpoint
from openhands_rt.sandboxes import LABEL_KEEP_ALIVE, LABEL_SESSION, owner_labels
from openhands_rt.supervisor import Supervisor, describe_error
from openhands_rt.swarm import engine as swarm_engine
from openhands_rt.swarm import spec
from openhands_rt.swarm.engine import RegistryAuth
from openhands_rt.swarm.sandboxes import LABEL_HOST_DIR, reap_swarm_orphans
from openhands_rt.swarm.snapshot import (
    ENGINE_NODE_LABEL,
    SwarmSnapshot,
    read_swarm_snapshot,
    shell_secret,
)
from openhands_rt.swarm.snapshot import take as take_snapshot
from openhands_rt.swarm.tasks import (
    TERMINAL_STATES,
    ContainerNotStarted,
    find_task,
    node_address,
    published_port,
    start_failure,
    task_reason,
)

__all__ = ["LABEL_HOST_DIR", "SwarmRuntime"]

logger = logging.getLogger(__name__)

_CERT_FILE = "server.pem"
# Re-reading a task while waiting for a state Swarm sends no event for: seconds.
_FIRST_LOOK, _LONGEST_LOOK = 0.05, 1.0
# Starts whose container the node's engine could not start, in all (ContainerNotStarted).
_START_ATTEMPTS = 3
_LOG_TAIL = 50  # lines of a failed start's output in its SandboxStartError


class SwarmRuntime(EventStreamRuntime):
    """A sandbox as a Docker Swarm service (see the module docstring).

    ``docker_host``: a manager's engine URL (None: ``DOCKER_HOST`` or the local
    socket); ``registry``: ``HOST:PORT`` of the registry the nodes pull from
    (None: the image is on every node); ``registry_auth``: its credentials, for the
    pushes and handed to Swarm for the nodes' pulls; ``placement``: Swarm placement
    constraints, e.g. ``["node.labels.pool==eval"]``; ``docker``: this host's
    engine, where the runtime image is built.
    """

    session_scope = "swarm"

    def __init__(
        self,
        stream: EventStream,
        config: SandboxConfig | None = None,
        *,
        session_id: str | None = None,
        client_id: str | None = None,
        docker_host: str | None = None,
        registry: str | None = None,
        placement: Sequence[str] = (),
        docker: aiodocker.Docker | None = None,
        snapshot: str | None = None,
        registry_auth: RegistryAuth | None = None,
    ) -> None:
        super().__init__(stream, config, session_id=session_id, client_id=client_id)
        self.docker_host = docker_host
        self.registry = registry
        self.registry_auth = registry_auth
        self.placement = list(placement)
        self._local = docker
        self._owns_local = docker is None
        self._manager: aiodocker.Docker | None = None
        #: The service's name, fixed at creation (a hand-over changes the session id only).
        self.service_name = spec.service_name(self.session_id)
        self.service_id: str | None = None
        self.task_id: str | None = None
        self.node_id: str | None = None
        self.node_address: str | None = None
        self.container_id: str | None = None
        self.image: str | None = None  # the reference the service runs
        self.attached = False
        self.endpoint: SandboxEndpoint | None = None
        self._secret_ids: list[str] = []
        self._run_dir: str | None = None
        self._leases = LeaseHolder(session_id=self.session_id, sandbox=self.service_name)
        self._tasks = Supervisor(f"swarm-{self.session_id}", on_failure=self._task_died)
        self._stopping = False
        self._checking_task = False
        #: The swarm snapshot this sandbox starts from (None: the config's image).
        self.from_snapshot = snapshot
        self._restore: SwarmSnapshot | None = None
        self._restored = False
        self._snapshot_lock = anyio.Lock()

    # ------------------------------------------------------------------ engines

    def _manager_client(self) -> aiodocker.Docker:
        if self._manager is None:
            self._manager = aiodocker.Docker(url=self.docker_host)
        return self._manager

    def _local_client(self) -> aiodocker.Docker:
        if self._local is None:
            self._local = aiodocker.Docker()
        return self._local

    async def _check_manager(self, manager: aiodocker.Docker) -> None:
        with translated():
            info = await manager.system.info()
        swarm = info.get("Swarm") or {}
        if swarm.get("LocalNodeState") != "active" or not swarm.get("ControlAvailable"):
            raise SandboxError(
                f"{self.docker_host or 'the Docker engine'} is not a Swarm manager "
                f"(swarm state {swarm.get('LocalNodeState')!r}); give a manager's URL"
            )

    # ------------------------------------------------------------------ start

    async def _start_sandbox(self) -> SandboxEndpoint:
        check_plugins(self.config.plugins)
        spec.check_config(self.config)
        manager = self._manager_client()
        self._stopping = False
        await self._tasks.start()
        try:
            if self.service_id is not None:
                await self._discard()  # the previous sandbox died: clear it away first
            await self._check_manager(manager)
            await reap_swarm_orphans(manager)
            existing = await self._find_service(manager)
            if existing is not None:
                endpoint = await self._attach(existing)
                if endpoint is not None:
                    return endpoint
            if self.from_snapshot is not None and not self._restored:
                self._restore = await read_swarm_snapshot(self.from_snapshot)
                self.image = self._restore.image  # in the registry, by digest
            else:
                self._restore = None
                self.image = await self._resolve_image(manager)
            return await self._create(self.image)
        except EngineUnreachable as exc:
            raise SandboxError(f"cannot reach the Swarm manager: {exc.message}") from exc
        except EngineError as exc:
            raise SandboxError(f"Docker refused: {exc.message}") from exc
        except OSError as exc:
            raise SandboxError(f"cannot reach the Swarm manager: {exc}") from exc

    async def _find_service(self, manager: aiodocker.Docker) -> dict[str, Any] | None:
        try:
            with translated():
                return dict(await manager._query_json(f"services/{self.service_name}"))
        except NotFound:
            return None

    async def _resolve_image(self, manager: aiodocker.Docker) -> str:
        def report(message: str) -> None:
            self.report_status(RuntimeStatus.BUILDING, message)

        local = self._local_client()
        image = await lifecycle.resolve_image(local, self.config, report=report)
        if self.registry is not None:
            report(f"pushing {image} to {self.registry}")
        return await swarm_engine.distribute_image(
            local, manager, image, self.registry, self.registry_auth
        )

    def _registry_header(self) -> dict[str, str]:
        if self.registry is None or self.registry_auth is None:
            return {}
        return {"X-Registry-Auth": swarm_engine.auth_header(self.registry_auth, self.registry)}

    async def _create(self, image: str) -> SandboxEndpoint:
        """:meth:`_create_once`, again when the node's engine could not start the
        container at all (see :class:`ContainerNotStarted`)."""
        for attempt in range(1, _START_ATTEMPTS + 1):
            try:
                return await self._create_once(image)
            except ContainerNotStarted as exc:
                if attempt == _START_ATTEMPTS:
                    raise
                logger.warning("%s; trying again (attempt %d)", exc, attempt + 1)
                self.report_status(RuntimeStatus.STARTING, f"{exc}; trying again")
        raise AssertionError("unreachable")

    async def _create_once(self, image: str) -> SandboxEndpoint:
        """Make the service, wait until its server listens; on any failure remove
        what was made (service, secrets, run directory)."""
        from openhands_rt.swarm.tls import make_server_identity  # the swarm extra

        manager = self._manager_client()
        name = self.service_name
        api_key = secrets.token_urlsafe(32)
        identity = await anyio.to_thread.run_sync(make_server_identity, spec.server_name(name))
        self._run_dir = await anyio.to_thread.run_sync(rundir.make_run_dir, name, api_key)
        try:
            await anyio.Path(self._run_dir, _CERT_FILE).write_text(identity.cert_pem)
            self._leases.hold(self._run_dir)
            token = secrets.token_hex(6)
            contents = {"key": api_key.encode(), "tls": identity.bundle_pem}
            shell = shell_secret(self._restore) if self._restore is not None else None
            if shell is not None:
                contents["shell"] = shell  # the server starts its shell in that state
            made = {
                kind: await self._make_secret(manager, spec.secret_name(token, kind), data)
                for kind, data in contents.items()
            }
            labels = {
                **self.config.labels,
                LABEL_SESSION: self.session_id,
                LABEL_KEEP_ALIVE: "true" if self.config.keep_runtime_alive else "false",
                LABEL_HOST_DIR: self._run_dir,
                **owner_labels(),
            }
            body = spec.service_spec(
                self.config,
                session_id=self.session_id,
                name=name,
                image=image,
                secrets=made,
                labels=labels,
                placement=self.placement,
            )
            self.report_status(RuntimeStatus.STARTING, f"creating service {name} from {image}")
            try:
                # Shielded: a create cancelled in flight may still be carried out.
                with anyio.CancelScope(shield=True), translated():
                    created = await manager._query_json(
                        "services/create",
                        "POST",
                        data=json.dumps(body),
                        # Kept by Swarm with the task: the node pulls with it.
                        headers=self._registry_header(),
                    )
            except Conflict as exc:
                raise SessionInUseError(
                    f"session {self.session_id!r} is in use: the service {name} exists "
                    "(made by another runtime, maybe on another host)",
                    session_id=self.session_id,
                    owner="",
                ) from exc
            self.service_id = str(created["ID"])
            task = await self._until_listening()
            endpoint = await self._endpoint_from(task, api_key, identity.cert_pem)
            self._restored = self._restore is not None
        except BaseException as exc:
            logger.warning("starting %s failed (%s): removing it", name, type(exc).__name__)
            await self._discard()
            raise
        self._watch()
        return endpoint

    async def _make_secret(
        self, manager: aiodocker.Docker, name: str, data: bytes
    ) -> tuple[str, str]:
        labels = {
            **self.config.labels,
            spec.LABEL_SERVICE: self.service_name,
            LABEL_SESSION: self.session_id,
            **owner_labels(),
        }
        secret_id = await swarm_engine.create_secret(manager, name, data, labels)
        self._secret_ids.append(secret_id)
        return secret_id, name

    async def _task(self) -> dict[str, Any] | None:
        with translated():
            tasks = await self._manager_client()._query_json(
                "tasks", params={"filters": json.dumps({"service": [self.service_id]})}
            )
        return find_task(tasks)

    async def _until_listening(self) -> dict[str, Any]:
        """The running task once its server printed its line; under the startup deadline.

        The line comes through the manager's log stream of the service; the task
        (its state, node and port) is read again on each line and with backoff
        (Swarm sends no task events), so a task that fails is reported at once
        with the scheduler's or the engine's reason.
        """
        name, timeout = self.service_name, self.config.startup_timeout
        heard = anyio.Event()
        last: dict[str, Any] | None = None
        try:
            with anyio.fail_after(timeout):
                async with anyio.create_task_group() as group:
                    group.start_soon(
                        swarm_engine.wait_for_line,
                        self._manager_client(),
                        self.service_id,
                        READY_LINE_PREFIX.encode(),
                        heard,
                    )
                    delay = _FIRST_LOOK
                    while True:
                        last = await self._task()
                        state = (last or {}).get("Status", {}).get("State")
                        if state in TERMINAL_STATES or (
                            heard.is_set()
                            and state == "running"
                            and last is not None
                            and published_port(last)
                        ):
                            group.cancel_scope.cancel()
                            break
                        with anyio.move_on_after(delay):
                            await heard.wait()
                        delay = min(delay * 2, _LONGEST_LOOK)
        except TimeoutError:
            where = task_reason(last) if last is not None else "no task was made"
            raise SandboxStartError(
                f"sandbox {name} was not ready within {timeout} s ({where})"
            ) from None
        assert last is not None
        # Raised here: raised in the task group, it would come out as an ExceptionGroup.
        if state in TERMINAL_STATES:
            manager, service = self._manager_client(), str(self.service_id)
            tail = await swarm_engine.service_log_tail(manager, service, _LOG_TAIL)
            raise start_failure(last, name=name, heard=heard.is_set(), log_tail=tail)
        self.task_id = str(last["ID"])
        return last

    async def _endpoint_from(
        self, task: Mapping[str, Any], api_key: str, cert_pem: str
    ) -> SandboxEndpoint:
        self.task_id = str(task["ID"])
        self.node_id = str(task["NodeID"])
        self.container_id = (task["Status"].get("ContainerStatus") or {}).get("ContainerID")
        with translated():
            node = await self._manager_client()._query_json(f"nodes/{self.node_id}")
        self.node_address = node_address(node)
        port = published_port(task)
        host = f"[{self.node_address}]" if ":" in self.node_address else self.node_address
        self.endpoint = SandboxEndpoint(
            url=f"wss://{host}:{port}{CHANNEL_PATH}",
            api_key=api_key,
            server_cert=cert_pem,
            server_name=spec.server_name(self.service_name),
        )
        return self.endpoint

    async def _change_session(self, session_id: str) -> None:
        # The service's name is its session's (found by it, claimed by its creation).
        raise SandboxError("a swarm sandbox keeps its session id (hand over with client_id)")

    # ------------------------------------------------------------------ snapshots

    async def snapshot(self) -> SnapshotObservation:
        """Record the sandbox's file system and shell state as a snapshot in the registry.

        As :meth:`DockerRuntime.snapshot <openhands_rt.docker_runtime.DockerRuntime.snapshot>`
        (waits for every answer, reads the shell's state, pauses only for the commit),
        on the sandbox's node: the node must carry the label
        ``org.openhands-rt.engine`` (its engine's URL), and the runtime a registry,
        where the image is pushed (:mod:`openhands_rt.swarm.snapshot`).
        ``SwarmRuntime(..., snapshot=ID)`` starts a sandbox from it on any node.
        """
        async with self._snapshot_lock:
            channel, container_id = self._channel, self.container_id
            if self._closed or channel is None or container_id is None:
                raise SandboxClosedError("the runtime is not connected")
            if self.registry is None:
                raise SandboxError("a swarm snapshot goes to the registry: give a registry")
            with translated():
                node = await self._manager_client()._query_json(f"nodes/{self.node_id}")
            url = ((node.get("Spec") or {}).get("Labels") or {}).get(ENGINE_NODE_LABEL)
            if not url:
                raise SandboxError(
                    f"node {self.node_address} has no {ENGINE_NODE_LABEL} label naming its "
                    "engine's URL: a snapshot needs that engine (pause, commit, push)"
                )
            async with aiodocker.Docker(url=url) as engine:
                return await take_snapshot(
                    engine,
                    container_id,
                    stream=self.stream,
                    channel=channel,
                    session_id=self.session_id,
                    registry=self.registry,
                    auth=self.registry_auth,
                    facts={"image": self.image, "from_snapshot": self.from_snapshot},
                )

    # ------------------------------------------------------------------ attach

    async def _attach(self, service: Mapping[str, Any]) -> SandboxEndpoint | None:
        """Take over this session's kept-alive service, or clear a dead one away."""
        labels = (service.get("Spec") or {}).get("Labels") or {}
        run_dir = labels.get(LABEL_HOST_DIR)
        if run_dir is None or not os.path.isdir(run_dir):
            raise SessionInUseError(
                f"session {self.session_id!r} is in use: the service {self.service_name} "
                f"belongs to a runtime on another host ({labels.get('org.openhands-rt.owner')})",
                session_id=self.session_id,
                owner=str(labels.get("org.openhands-rt.owner", "")),
            )
        self._leases.hold(run_dir)  # a live runtime's sandbox is never touched
        self.service_id = str(service["ID"])
        self._run_dir = run_dir
        self._secret_ids = [
            s["SecretID"]
            for s in service["Spec"]["TaskTemplate"]["ContainerSpec"].get("Secrets") or []
        ]
        task = await self._task()
        if (
            task is None
            or task.get("DesiredState") != "running"
            or task["Status"].get("State") != "running"
        ):
            await self._discard()
            return None
        api_key = await anyio.to_thread.run_sync(rundir.read_key, run_dir)
        cert = await anyio.Path(run_dir, _CERT_FILE).read_text()
        endpoint = await self._endpoint_from(task, api_key, cert)
        self.attached = True
        self.report_status(RuntimeStatus.STARTING, f"attached to running {self.service_name}")
        self._watch()
        return endpoint

    # ------------------------------------------------------------------ death

    def _watch(self) -> None:
        self._tasks.start_soon(self._watch_manager, name=f"{self._tasks.name}-watch")

    async def _watch_manager(self) -> None:
        """Report the sandbox dead when its node goes down or its service is removed."""
        manager = self._manager_client()
        try:
            async with swarm_engine.engine_events(manager, {"type": ["node", "service"]}) as events:
                # Subscribed: now a node already down cannot slip by.
                with translated():
                    node = await manager._query_json(f"nodes/{self.node_id}")
                if node["Status"].get("State") == "down":
                    return self._died(f"node {self.node_address} is down")
                async for event in events:
                    actor = event.get("Actor") or {}
                    if event.get("Type") == "node" and actor.get("ID") == self.node_id:
                        if (actor.get("Attributes") or {}).get("state.new") == "down":
                            return self._died(
                                f"node {self.node_address} ({self.node_id}) is down: "
                                "its engine or machine was lost"
                            )
                    elif (
                        event.get("Type") == "service"
                        and event.get("Action") == "remove"
                        and actor.get("ID") == self.service_id
                    ):
                        return self._died(f"the service {self.service_name} was removed")
        except (EngineError, OSError) as exc:
            if not self._stopping:
                self._died(f"lost contact with the Swarm manager: {exc}")
            return
        if not self._stopping:
            self._died("lost contact with the Swarm manager (its event stream ended)")

    def _channel_lost(self) -> None:
        """The channel dropped: find out whether the task ended (in the sandbox's tasks)."""
        if not self._checking_task and not self._stopping:
            self._checking_task = True
            self._tasks.start_soon(self._check_task, name=f"{self._tasks.name}-task")

    async def _check_task(self) -> None:
        channel = self._channel
        delay = _FIRST_LOOK
        try:
            while channel is not None and channel is self._channel and not self._stopping:
                if channel.protocol.is_open():
                    return  # back: the network hiccuped, the sandbox lives
                task = await self._task()
                if task is None or task["Status"].get("State") in TERMINAL_STATES:
                    reason = task_reason(task) if task is not None else "its task is gone"
                    return self._died(f"sandbox {self.service_name} died ({reason})")
                await anyio.sleep(delay)  # backoff: Swarm has no task events
                delay = min(delay * 2, _LONGEST_LOOK)
        finally:
            self._checking_task = False

    def _died(self, reason: str) -> None:
        if self._stopping or self._closed:
            return
        logger.warning("%s", reason)
        self._sandbox_died(reason)

    def _task_died(self, exc: Exception) -> None:
        self._died(f"the Swarm runtime of {self.service_name} failed: {describe_error(exc)}")

    async def _open_channel(self, endpoint: SandboxEndpoint) -> ChannelClient:
        channel = await super()._open_channel(endpoint)
        channel.on_disconnect = self._channel_lost
        return channel

    # ------------------------------------------------------------------ stop

    async def _discard(self) -> None:
        """Remove the service, its secrets and the run directory (shielded)."""
        with anyio.CancelScope(shield=True):
            await self._remove_service()
            self._leases.release()
            run_dir, self._run_dir = self._run_dir, None
            await anyio.to_thread.run_sync(rundir.remove_dirs, run_dir)

    async def _remove_service(self) -> None:
        service_id, self.service_id = self.service_id, None
        secret_ids, self._secret_ids = self._secret_ids, []
        try:
            await swarm_engine.remove_service(self._manager_client(), service_id, secret_ids)
        except (EngineError, OSError) as exc:
            logger.warning("could not remove %s: %s", self.service_name, exc)

    async def _stop_sandbox(self) -> None:
        self._stopping = True
        inside = self._tasks.is_current()
        with anyio.CancelScope(shield=True):
            try:
                if not inside:
                    await self._tasks.aclose()
                if self.config.keep_runtime_alive:
                    self.service_id = None
                    self._secret_ids = []
                else:
                    await self._remove_service()
            finally:
                self._leases.release()
                if not self.config.keep_runtime_alive:
                    run_dir, self._run_dir = self._run_dir, None
                    await anyio.to_thread.run_sync(rundir.remove_dirs, run_dir)
                for client, owned in ((self._manager, True), (self._local, self._owns_local)):
                    if client is not None and owned:
                        await client.close()
                self._manager = None
                if self._owns_local:
                    self._local = None
                if inside:
                    self._tasks.cancel()
