"""DockerRuntime: one sandbox container per runtime, driven through aiodocker.

The container is named ``openhands-runtime-{session_id}`` and labelled with
the session id, our version and its owner (host, pid and the pid's start time,
so a reused pid is not mistaken for a live owner). What it is made of is
:mod:`openhands_rt.docker.spec`; where its key and socket live,
:mod:`openhands_rt.docker.rundir`; how it is waited for and removed,
:mod:`openhands_rt.docker.lifecycle`; how an existing one is taken over,
:mod:`openhands_rt.docker.attach`.

A container that exits while the runtime uses it is noticed through Docker's
wait endpoint: the pending actions are answered with ``ErrorObservation`` and a
``RuntimeStatusObservation(error)`` is appended. Then either the caller's
``connect()`` starts a fresh sandbox, or, with ``auto_restart=True``, the
runtime starts the same container again by itself (processes lost, the
container's files kept except tmpfs mounts; see
:mod:`openhands_rt.docker.restart`) and reports ``ready`` with a "restarted"
message. Losing the Docker engine itself is reported the same way but never
restarted.

One session id, one owner: a runtime holds its sandbox's lease
(:mod:`openhands_rt.leases`, an ``flock`` in the run directory) from start to
close, so a second runtime with the same ``session_id`` — in this process or
another — is refused with :class:`~openhands_rt.errors.SessionInUseError`
instead of sharing (and, on close, removing) the first one's container.
Attaching to a ``keep_runtime_alive`` sandbox is the explicit exception: once
its owner has closed it, a new runtime with its session id takes it over
(``attached`` is then true) and owns it from then on; its ``config`` decides
whether closing keeps it or removes it.

Tasks: besides the runtime's own group (the channel reader, from ``connect()``
until ``aclose()``), each sandbox has a :class:`~openhands_rt.supervisor.Supervisor`
of its own, opened by the sandbox's start and closed by its stop (a runtime may
start several sandboxes, one after the other); its children are the container's
watcher (one per started container) and an automatic restart.
A start that fails removes what it made (the container, the run directory).
"""

from __future__ import annotations

import logging
import os
import secrets
import time
from typing import Any

import aiodocker
import anyio

from events import EventStream, RuntimeStatus, SnapshotObservation
from openhands_rt import snapshots
from openhands_rt.bundle import Bundle
from openhands_rt.config import SandboxConfig
from openhands_rt.docker import lifecycle, mount, rundir, snapshot, spec
from openhands_rt.docker.attach import AttachingRuntime
from openhands_rt.docker.engine import (
    Conflict,
    EngineError,
    EngineUnreachable,
    NotFound,
    translated,
)
from openhands_rt.docker.restart import RestartBudget, restart_note
from openhands_rt.docker.spec import CONTAINER_PREFIX
from openhands_rt.errors import (
    SandboxClosedError,
    SandboxError,
    SandboxStartError,
    SessionInUseError,
)
from openhands_rt.leases import LeaseHolder
from openhands_rt.plugins import check_plugins
from openhands_rt.runtime import SandboxEndpoint
from openhands_rt.sandboxes import LABEL_SESSION, owner_labels, reap_orphans
from openhands_rt.snapshots import SnapshotInfo
from openhands_rt.supervisor import Supervisor, describe_error

__all__ = ["CONTAINER_PREFIX", "DockerRuntime"]

logger = logging.getLogger(__name__)


class DockerRuntime(AttachingRuntime):
    """A sandbox in a Docker container (see the module docstring).

    ``auto_restart=True``: when the container exits unexpectedly and still
    exists, start it again (see the module docstring); off by default, so
    that a dead sandbox stays dead until the caller decides. ``None`` takes
    ``config.auto_restart``.

    ``snapshot``: the id of a snapshot (:meth:`snapshot`) to start from: the
    container is made from its image, with ``config``'s other settings (a
    snapshot of a mount-mode sandbox starts in mount mode, whatever
    ``config.runtime_mode`` says: its image has no server of its own); before
    the first start the workspace gets the snapshot's files (added to what a
    given ``workspace_dir`` holds; nothing is removed) and the shell the
    recorded working directory and exported environment. A snapshot that does
    not exist is a :class:`SandboxError` at ``connect()``. A later fresh
    sandbox of the same runtime (after its death) is made from the image again,
    its workspace left as it is.
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
        snapshot: str | None = None,
    ) -> None:
        super().__init__(stream, config, session_id=session_id, client_id=client_id)
        self._docker = docker
        self._owns_docker = docker is None
        self.container: Any = None  # aiodocker DockerContainer
        self.image: str | None = None
        self._bundle: Bundle | None = None  # mount mode: the runtime bundle mounted
        self.attached = False
        self.auto_restart = self.config.auto_restart if auto_restart is None else auto_restart
        self.restarts = 0  # how many times auto_restart brought the container back
        # The sandbox's tasks, from _start_sandbox() to _stop_sandbox() (see the module docstring).
        self._tasks = Supervisor(f"docker-{self.session_id}", on_failure=self._task_died)
        self._restarting = False
        self._restart_budget = RestartBudget()
        self._connect_lock = anyio.Lock()
        self._run_dir: str | None = None  # on the host: the key, and the socket (network none)
        self.endpoint: SandboxEndpoint | None = None
        self._etc_dir: str | None = None
        self._stopping = False
        self._leases = LeaseHolder(session_id=self.session_id, sandbox=self.container_name)
        #: The snapshot this sandbox starts from (None: the config's image).
        self.from_snapshot = snapshot
        self._restore: SnapshotInfo | None = None  # found by the start; filled in once
        self._restored = False
        self._snapshot_lock = anyio.Lock()

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
            message = f"restarted: {message}; {restart_note(self.config, self.container_name)}"
        super().report_status(status, message)

    # ------------------------------------------------------------------ start

    async def _start_sandbox(self) -> SandboxEndpoint:
        check_plugins(self.config.plugins)
        docker = self._client()
        self._stopping = False
        await self._tasks.start()
        try:
            await reap_orphans(docker)
            existing = await lifecycle.find_container(docker, self.container_name)
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
        except EngineUnreachable as exc:
            raise SandboxError(f"cannot reach the Docker engine: {exc.message}") from exc
        except EngineError as exc:
            raise SandboxError(f"Docker refused: {exc.message}") from exc
        except OSError as exc:
            raise SandboxError(f"cannot reach the Docker engine: {exc}") from exc

    async def _resolve_image(self) -> str:
        """The image to make the container from; in mount mode, the bundle too."""

        def report(message: str) -> None:
            self.report_status(RuntimeStatus.BUILDING, message)

        if self.from_snapshot is not None:
            self._restore = await snapshots.snapshot_info(self.from_snapshot, docker=self._client())
            # A mount-mode snapshot has no server of its own: the bundle is mounted again.
            self._bundle = (
                await mount.runtime_bundle(self.config, report=report)
                if self._restore.runtime_mode == "mount"
                else None
            )
            return self._restore.image
        if self.config.runtime_mode == "mount":
            image = mount.mounted_image(self.config)
            await mount.check_image(self._client(), image)
            self._bundle = await mount.runtime_bundle(self.config, report=report)
            return image
        self._bundle = None
        return await lifecycle.resolve_image(self._client(), self.config, report=report)

    async def _writable_places(self, image: str, owner_uid: int | None) -> spec.WritablePlaces:
        """Mounts that keep a read-only-root sandbox usable (:func:`spec.writable_places`)."""
        # Labelled like a sandbox of this session, so that gc reaps it if we die right here.
        labels = {**self.config.labels, LABEL_SESSION: self.session_id, **owner_labels()}
        passwd, group = await lifecycle.image_files(
            self._client(), image, ("/etc/passwd", "/etc/group"), labels=labels
        )
        shell = self._bundle.shell() if self._bundle is not None else None
        places = spec.writable_places(
            self.config,
            image=image,
            passwd=passwd,
            group=group,
            owner_uid=owner_uid,
            shell=shell,
        )
        if places.etc_files:
            self._etc_dir = await anyio.to_thread.run_sync(
                rundir.write_etc_dir, self.session_id, places.etc_files
            )
            places.bind_etc(self._etc_dir)
        return places

    async def _create_and_start(self, image: str) -> SandboxEndpoint:
        """Make this session's container from ``image``, start it and wait until it listens.

        What a failed (or cancelled) start made is removed before the error
        propagates — the container and the run directory — keep_runtime_alive or
        not: a sandbox that never became ready is no sandbox to keep.
        """
        workspace, owner_uid = spec.workspace_owner(self.config)
        api_key = secrets.token_urlsafe(32)
        self._run_dir = await anyio.to_thread.run_sync(
            rundir.make_run_dir, self.session_id, api_key
        )
        try:
            self._leases.hold(self._run_dir)
            writable = (
                await self._writable_places(image, owner_uid)
                if self.config.read_only_root
                else None
            )
            body = spec.container_config(
                self.config,
                session_id=self.session_id,
                image=image,
                run_dir=self._run_dir,
                workspace=workspace,
                owner_uid=owner_uid,
                writable=writable,
                bundle=self._bundle,
            )
            self.report_status(
                RuntimeStatus.STARTING, f"creating {self.container_name} from {image}"
            )
            try:
                # Shielded: a create cancelled in flight may still be carried out by the
                # engine after we looked for its container, which would then be left behind.
                with anyio.CancelScope(shield=True), translated():
                    self.container = await self._client().containers.create(
                        body, name=self.container_name
                    )
            except Conflict as exc:  # another runtime made it between our look and now
                raise SessionInUseError(
                    f"session {self.session_id!r} is in use: {self.container_name} was just "
                    "created by another runtime",
                    session_id=self.session_id,
                    owner="",
                ) from exc
            if self._restore is not None and not self._restored:
                await self._fill_from_snapshot(self._restore, self.container)
            with translated():
                await self.container.start()
            await self._until_listening(self.container)
            with translated():
                info = await self.container.show()
            endpoint = self._endpoint_from(info, api_key)
            self._restored = self._restore is not None
        except BaseException as exc:
            logger.warning(
                "starting %s failed (%s): removing its container and run directory",
                self.container_name,
                type(exc).__name__,
            )
            await self._discard()
            raise
        self._watch(self.container)
        return endpoint

    async def _until_listening(self, container: Any, *, since: float | None = None) -> None:
        """Wait for the server's "listening on" line under the startup deadline.

        On failure raises :class:`SandboxStartError` with the container's last
        log lines.
        """
        name, timeout = self.container_name, self.config.startup_timeout
        try:
            with anyio.fail_after(timeout):
                await lifecycle.wait_listening(self._client(), container, name=name, since=since)
        except TimeoutError:
            tail = await lifecycle.log_tail(container)
            raise SandboxStartError(
                f"sandbox {name} was not ready within {timeout} s", log_tail=tail
            ) from None
        except SandboxStartError as exc:
            raise SandboxStartError(
                str(exc), log_tail=await lifecycle.log_tail(container)
            ) from None
        except EngineError as exc:
            tail = await lifecycle.log_tail(container)
            raise SandboxStartError(
                f"sandbox {name} failed to start: {exc.message}", log_tail=tail
            ) from exc

    async def _discard(self) -> None:
        """Remove this start's container and host directories (shielded from cancellation)."""
        with anyio.CancelScope(shield=True):
            if self.container is None and self._run_dir is not None:
                # Cancelled during the create request: the engine may have made it anyway.
                self.container = await lifecycle.find_container(
                    self._client(), self.container_name, run_dir=self._run_dir
                )
            await self._remove_container()
            self._leases.release()
            run_dir, etc_dir = self._run_dir, self._etc_dir
            self._run_dir = self._etc_dir = None
            await anyio.to_thread.run_sync(rundir.remove_dirs, run_dir, etc_dir)

    # ------------------------------------------------------------------ snapshots

    async def snapshot(self) -> SnapshotObservation:
        """Record the sandbox's whole state as a snapshot; append and return its event.

        Waits until every action of the stream has its observation, reads the
        shell's working directory and exported environment, then pauses the
        container for the commit of its file system and the copy of its workspace
        (:mod:`openhands_rt.docker.snapshot`), and unpauses it: the sandbox goes on
        as before. The event (source environment, no cause) comes after every
        event whose effects the snapshot holds. ``DockerRuntime(..., snapshot=ID)``
        starts a sandbox from it; :func:`openhands_rt.remove_snapshot` removes it.
        Processes are not kept (a restored sandbox starts its own). A
        ``read_only_root`` sandbox keeps its writable places in tmpfs mounts, which
        no snapshot can hold: refused.
        """
        async with self._snapshot_lock:
            container, channel = self.container, self._channel
            if self._closed or container is None or channel is None:
                raise SandboxClosedError("the runtime is not connected")
            if self.config.read_only_root:
                raise SandboxError(
                    "a read_only_root sandbox cannot be snapshotted: its /tmp, home "
                    "and workspace are tmpfs mounts, which a commit does not hold"
                )
            return await snapshot.take(
                self._client(),
                container,
                stream=self.stream,
                channel=channel,
                session_id=self.session_id,
                runtime_mode="mount" if self._bundle is not None else "build",
                workspace_dir=(
                    os.path.abspath(self.config.workspace_dir)
                    if self.config.workspace_dir is not None
                    else None
                ),
                facts={
                    "image": self.image,
                    "oci_runtime": self.config.oci_runtime,
                    "run_as_root": self.config.run_as_root,
                    "workspace_bound": self.config.workspace_dir is not None,
                    "from_snapshot": self.from_snapshot,
                },
            )

    async def _fill_from_snapshot(self, info: SnapshotInfo, container: Any) -> None:
        """Before the first start: the snapshot's workspace and its shell's state."""
        if self.config.read_only_root and self.config.workspace_dir is None:
            raise SandboxError(
                f"snapshot {info.snapshot_id} cannot fill a read_only_root sandbox's "
                "tmpfs workspace; give it a workspace_dir"
            )
        try:
            await snapshot.fill_workspace(container, info.workspace_archive)
            shell = await anyio.Path(info.shell_file).read_bytes()
        except FileNotFoundError as exc:
            if exc.filename == str(info.shell_file):
                return  # recorded without the shell's state: it starts as usual
            raise SandboxError(
                f"snapshot {info.snapshot_id} is incomplete ({exc.filename} is missing)"
            ) from exc
        assert self._run_dir is not None
        try:
            state = snapshot.decode_shell(shell)
        except ValueError as exc:
            raise SandboxError(f"snapshot {info.snapshot_id} is damaged: {exc}") from exc
        await anyio.to_thread.run_sync(snapshot.write_shell_state, self._run_dir, state)

    async def _change_session(self, session_id: str) -> None:
        """Take ``session_id``: the container is renamed to it (:meth:`hand_over`).

        Refused with :class:`SessionInUseError` when a runtime in this process
        holds that session, or a container of that name exists (another
        process's sandbox, kept alive or not).
        """
        if self.config.keep_runtime_alive:
            # Found again by name and run directory; a renamed one would be another's.
            raise SandboxError("a kept-alive sandbox cannot change its session id")
        old = self.session_id
        self._claim_session(session_id)
        try:
            if self.container is not None:
                with translated():
                    await self.container.rename(spec.CONTAINER_PREFIX + session_id)
        except Conflict as exc:
            self._release_session(session_id)
            raise SessionInUseError(
                f"session {session_id!r} is in use: a container named "
                f"{spec.CONTAINER_PREFIX + session_id} exists",
                session_id=session_id,
                owner="",
            ) from exc
        except NotFound as exc:
            self._release_session(session_id)
            raise SandboxClosedError(f"{self.container_name} is gone: {exc.message}") from exc
        except EngineError as exc:
            self._release_session(session_id)
            raise SandboxError(f"Docker refused to rename the sandbox: {exc.message}") from exc
        except BaseException:
            self._release_session(session_id)
            raise
        self.session_id = session_id
        self._leases.session_id = session_id
        self._leases.sandbox = self.container_name
        self._release_session(old)

    # ------------------------------------------------------------------ death, restart, stop

    def _watch(self, container: Any) -> None:
        self._tasks.start_soon(self._watch_container, container, name=f"{self._tasks.name}-watch")

    async def _watch_container(self, container: Any) -> None:
        try:
            with translated():
                result = await container.wait()
        except (EngineError, OSError) as exc:
            # The engine went away (dockerd stopped or restarted): nothing to restart with.
            if not self._stopping:
                reason = f"lost contact with the Docker engine: {exc}"
                logger.warning("%s", reason)
                self._sandbox_died(reason)
            return
        if self._stopping:
            return
        reason = await lifecycle.exit_reason(container, result, name=self.container_name)
        restart = self._may_restart()
        if restart:
            reason += "; starting it again (auto_restart)"
        elif self.auto_restart and not self._closed:
            reason += "; " + self._restart_budget.exhausted_note()
        logger.warning("%s", reason)
        self._sandbox_died(reason)
        if restart:
            self._tasks.start_soon(self._restart, name=f"{self._tasks.name}-restart")

    def _may_restart(self) -> bool:
        if not self.auto_restart or self._closed:
            return False
        return self._restart_budget.allows(time.monotonic())

    async def _restart(self) -> None:
        self._restart_budget.spend(time.monotonic())
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

    def _task_died(self, exc: Exception) -> None:
        """A task of this sandbox failed unexpectedly: the sandbox is unusable, say so."""
        self._sandbox_died(
            f"the Docker runtime of {self.container_name} failed: {describe_error(exc)}"
        )

    async def _remove_container(self) -> None:
        container, self.container = self.container, None
        if container is not None:
            await lifecycle.remove(container)

    async def _stop_sandbox(self) -> None:
        self._stopping = True
        # A failed restart stops the sandbox from inside the restart task itself: the
        # group is then cancelled last, once the cleanup below is done.
        inside = self._tasks.is_current()
        # Shielded: a stop that a cancellation cut short would leave the container,
        # the run directory or the lease behind.
        with anyio.CancelScope(shield=True):
            try:
                if not inside:
                    await self._tasks.aclose()
                if self.config.keep_runtime_alive:
                    self.container = None
                else:
                    await self._remove_container()
            finally:
                self._leases.release()
                if not self.config.keep_runtime_alive:
                    run_dir, etc_dir = self._run_dir, self._etc_dir
                    self._run_dir = self._etc_dir = None
                    await anyio.to_thread.run_sync(rundir.remove_dirs, run_dir, etc_dir)
                if self._owns_docker and self._docker is not None:
                    # Made again on the next connect(); never left open past a stop.
                    await self._docker.close()
                    self._docker = None
                if inside:
                    self._tasks.cancel()
