"""Sandboxes on a Docker Swarm: the runtime and what it needs across hosts (docs/scale-out.md).

- :mod:`~openhands_rt.swarm.runtime`: :class:`SwarmRuntime`;
- :mod:`~openhands_rt.swarm.spec`: the service's name and body (pure);
- :mod:`~openhands_rt.swarm.tasks`: reading tasks and nodes (pure);
- :mod:`~openhands_rt.swarm.engine`: the manager's streams, secrets, image distribution;
- :mod:`~openhands_rt.swarm.sandboxes`: ``ps`` and ``gc`` of services;
- :mod:`~openhands_rt.swarm.tls`: the per-sandbox server identity (the ``swarm`` extra).
"""

from openhands_rt.swarm.runtime import SwarmRuntime, SwarmTarget
from openhands_rt.swarm.sandboxes import list_swarm_sandboxes, reap_swarm_orphans

__all__ = ["SwarmRuntime", "SwarmTarget", "list_swarm_sandboxes", "reap_swarm_orphans"]
