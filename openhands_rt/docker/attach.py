"""Finding a session's container again: attaching to it, or starting it again.

A runtime whose session id names an existing container does not make a new
one. A running container of this session — a ``keep_runtime_alive`` sandbox
whose owner has closed it — is *attached* to (``attached`` is then true) and
owned from then on; a stopped one is removed, so that a fresh one can be
made. With ``auto_restart`` a container that died is started again in place
(:meth:`AttachingRuntime._start_again`).

Before anything else the runtime takes the sandbox's lease
(:class:`~openhands_rt.leases.LeaseHolder`): a container another live runtime
uses — in this process or another — is never touched, and the attempt is
refused with :class:`~openhands_rt.errors.SessionInUseError`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from events import RuntimeStatus
from openhands_rt.docker import rundir, spec
from openhands_rt.docker.engine import Conflict, NotFound, translated
from openhands_rt.errors import SandboxError
from openhands_rt.leases import LeaseHolder
from openhands_rt.runtime import EventStreamRuntime, SandboxEndpoint

__all__ = ["AttachingRuntime"]


class AttachingRuntime(EventStreamRuntime):
    """The part of :class:`~openhands_rt.docker.runtime.DockerRuntime` that takes
    over an existing container of its session (see the module docstring)."""

    container: Any  # aiodocker DockerContainer, None without one
    attached: bool
    endpoint: SandboxEndpoint | None
    _run_dir: str | None  # on the host: the key, and the socket (network none)
    _leases: LeaseHolder

    if TYPE_CHECKING:  # provided by DockerRuntime

        def _watch(self, container: Any) -> None: ...

        async def _until_listening(self, container: Any, *, since: float | None = None) -> None: ...

    @property
    def container_name(self) -> str:
        return spec.CONTAINER_PREFIX + self.session_id

    def _endpoint_from(self, info: Mapping[str, Any], api_key: str) -> SandboxEndpoint:
        self.endpoint = spec.find_endpoint(
            self.config, info, api_key=api_key, name=self.container_name
        )
        return self.endpoint

    async def _attach(self, container: Any) -> SandboxEndpoint | None:
        """Attach to a running container of this session, or clear a dead one away."""
        with translated():
            info = await container.show()
        # Before anything else: a container another live runtime uses is not touched.
        self._leases.hold(rundir.run_dir_of(info))
        if not info["State"].get("Running"):
            with translated():
                await container.delete(force=True, v=True)
            self._leases.release()
            return None
        api_key = rundir.key_of(info, name=self.container_name)
        self.container = container
        self.attached = True
        self._run_dir = rundir.run_dir_of(info)
        endpoint = self._endpoint_from(info, api_key)
        self.report_status(RuntimeStatus.STARTING, f"attached to running {self.container_name}")
        self._watch(container)
        return endpoint

    async def _start_again(self, container: Any) -> SandboxEndpoint:
        """Start this session's stopped container again (auto_restart)."""
        try:
            return await self._start_existing(container)
        except (NotFound, Conflict) as exc:
            # A removal racing the restart: gone or going by now.
            raise SandboxError(
                f"{self.container_name} was removed while it was being started again "
                f"({exc.message}); connect() makes a fresh sandbox"
            ) from exc

    async def _start_existing(self, container: Any) -> SandboxEndpoint:
        with translated():
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
        self._leases.hold(rundir.run_dir_of(info))
        api_key = rundir.key_of(info, name=self.container_name)
        self.container = container
        self._run_dir = rundir.run_dir_of(info)
        self.report_status(RuntimeStatus.STARTING, f"starting {self.container_name} again")
        # The log still holds the previous run's "listening on" line: read only newer ones.
        since = time.time()
        with translated():
            await container.start()
        await self._until_listening(container, since=since)
        with translated():
            info = await container.show()
        endpoint = self._endpoint_from(info, api_key)
        self._watch(container)
        return endpoint
