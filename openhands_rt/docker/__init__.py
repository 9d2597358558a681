"""The Docker sandbox: :class:`DockerRuntime` and the pieces it is made of.

Modules, each one concept:

- :mod:`~openhands_rt.docker.engine` — the aiodocker edge: Docker's refusals
  as named errors (``NotFound``, ``Conflict``, ``EngineUnreachable``);
- :mod:`~openhands_rt.docker.spec` — the container's specification (command,
  mounts, tmpfs, limits, capabilities) and the endpoint read back from it;
- :mod:`~openhands_rt.docker.rundir` — the host run directory (key, socket);
- :mod:`~openhands_rt.docker.lifecycle` — readiness, logs, exit, removal;
- :mod:`~openhands_rt.docker.restart` — the auto-restart budget (pure);
- :mod:`~openhands_rt.docker.attach` — taking over a session's existing
  container (attach, start again), under the session's lease;
- :mod:`~openhands_rt.docker.runtime` — :class:`DockerRuntime`, which makes,
  starts, watches, restarts and stops.

Error tree (below :class:`openhands_rt.errors.SandboxError`)::

    SandboxError
     └── EngineError             the engine refused a request
          ├── NotFound           404
          ├── Conflict           409
          └── EngineUnreachable  no engine answered

Names load on first use (PEP 562), so the low-level modules that only need
:mod:`~openhands_rt.docker.engine` do not load the runtime.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from events.lazy import lazy_exports

if TYPE_CHECKING:
    from openhands_rt.docker.engine import Conflict, EngineError, EngineUnreachable, NotFound
    from openhands_rt.docker.runtime import DockerRuntime
    from openhands_rt.docker.spec import CONTAINER_PREFIX

__all__ = [
    "CONTAINER_PREFIX",
    "Conflict",
    "DockerRuntime",
    "EngineError",
    "EngineUnreachable",
    "NotFound",
]

_HOMES = {
    "CONTAINER_PREFIX": "openhands_rt.docker.spec",
    "Conflict": "openhands_rt.docker.engine",
    "DockerRuntime": "openhands_rt.docker.runtime",
    "EngineError": "openhands_rt.docker.engine",
    "EngineUnreachable": "openhands_rt.docker.engine",
    "NotFound": "openhands_rt.docker.engine",
}


__getattr__, __dir__ = lazy_exports(globals(), _HOMES)
