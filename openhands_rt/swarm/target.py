"""``SwarmTarget``: where sandboxes made by something else (``fork``) go on a swarm."""

from __future__ import annotations

from dataclasses import dataclass

from events import EventStream
from openhands_rt.config import SandboxConfig
from openhands_rt.swarm.engine import RegistryAuth
from openhands_rt.swarm.runtime import SwarmRuntime

__all__ = ["SwarmTarget"]


@dataclass(frozen=True)
class SwarmTarget:
    """A manager, the registry and placement constraints: what a :class:`SwarmRuntime`
    needs beyond its stream and config (``fork(..., swarm=SwarmTarget(...))``)."""

    docker_host: str | None = None
    registry: str | None = None
    placement: tuple[str, ...] = ()
    registry_auth: RegistryAuth | None = None

    def runtime(
        self,
        stream: EventStream,
        config: SandboxConfig | None = None,
        *,
        session_id: str | None = None,
        client_id: str | None = None,
        snapshot: str | None = None,
    ) -> SwarmRuntime:
        return SwarmRuntime(
            stream,
            config,
            session_id=session_id,
            client_id=client_id,
            docker_host=self.docker_host,
            registry=self.registry,
            placement=self.placement,
            snapshot=snapshot,
            registry_auth=self.registry_auth,
        )
