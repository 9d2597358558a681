"""Sandboxes on a Docker Swarm: the runtime and what it needs across hosts (docs/scale-out.md).

- :mod:`~openhands_rt.swarm.runtime`: :class:`SwarmRuntime`;
- :mod:`~openhands_rt.swarm.spec`: the service's name and body (pure);
- :mod:`~openhands_rt.swarm.tasks`: reading tasks and nodes (pure);
- :mod:`~openhands_rt.swarm.engine`: the manager's streams, secrets, image distribution;
- :mod:`~openhands_rt.swarm.sandboxes`: ``ps`` and ``gc`` of services;
- :mod:`~openhands_rt.swarm.snapshot`: snapshots committed on the node, pushed to the registry;
- :mod:`~openhands_rt.swarm.target`: :class:`SwarmTarget` (``fork(..., swarm=...)``);
- :mod:`~openhands_rt.swarm.tls`: the per-sandbox server identity (the ``swarm`` extra).
"""

from openhands_rt.swarm.engine import RegistryAuth
from openhands_rt.swarm.runtime import SwarmRuntime
from openhands_rt.swarm.sandboxes import list_swarm_sandboxes, reap_swarm_orphans
from openhands_rt.swarm.snapshot import list_swarm_snapshots, remove_swarm_snapshot
from openhands_rt.swarm.target import SwarmTarget

__all__ = [
    "RegistryAuth",
    "SwarmRuntime",
    "SwarmTarget",
    "list_swarm_sandboxes",
    "list_swarm_snapshots",
    "reap_swarm_orphans",
    "remove_swarm_snapshot",
]
