"""The Docker runtime's former module path, kept for its importers.

The code lives in the :mod:`openhands_rt.docker` package now:
:class:`DockerRuntime` in :mod:`openhands_rt.docker.runtime`, the container's
specification in :mod:`openhands_rt.docker.spec`, the run directory in
:mod:`openhands_rt.docker.rundir`, the restart budget in
:mod:`openhands_rt.docker.restart`.
"""

from __future__ import annotations

from openhands_rt.docker.restart import RESTART_LIMIT, RESTART_WINDOW
from openhands_rt.docker.rundir import (
    HOST_DIR_IN_CONTAINER,
    KEY_FILE,
    RUN_DIR_IN_CONTAINER,
    SOCKET_FILE,
)
from openhands_rt.docker.runtime import CONTAINER_PREFIX, DockerRuntime
from openhands_rt.docker.spec import (
    RUNSC_MEMORY_HEADROOM_MB,
    SANDBOX_USER,
    SERVER_COMMAND,
    SERVER_PORT,
    SERVER_PYTHON,
    SWITCH_CAPABILITIES,
    TMPFS_HOME_MB,
    TMPFS_TMP_MB,
    TMPFS_WORKSPACE_MB,
)

__all__ = [
    "CONTAINER_PREFIX",
    "HOST_DIR_IN_CONTAINER",
    "KEY_FILE",
    "RESTART_LIMIT",
    "RESTART_WINDOW",
    "RUNSC_MEMORY_HEADROOM_MB",
    "RUN_DIR_IN_CONTAINER",
    "SANDBOX_USER",
    "SERVER_COMMAND",
    "SERVER_PORT",
    "SERVER_PYTHON",
    "SOCKET_FILE",
    "SWITCH_CAPABILITIES",
    "TMPFS_HOME_MB",
    "TMPFS_TMP_MB",
    "TMPFS_WORKSPACE_MB",
    "DockerRuntime",
]
