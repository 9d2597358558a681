"""openhands-rt: an event-sourced asyncio sandbox runtime for AI coding agents."""

from openhands_rt.config import SandboxConfig
from openhands_rt.docker_runtime import DockerRuntime
from openhands_rt.errors import (
    SandboxBuildError,
    SandboxClosedError,
    SandboxConnectionError,
    SandboxError,
    SandboxStartError,
    SessionInUseError,
)
from openhands_rt.forking import fork
from openhands_rt.local import LocalRuntime
from openhands_rt.plugins import ALL_PLUGINS, JupyterRequirement, Plugin, PluginRequirement
from openhands_rt.pool import SandboxPool
from openhands_rt.runtime import EventStreamRuntime
from openhands_rt.snapshots import SnapshotInfo, list_snapshots, remove_snapshot
from openhands_rt.swarm import SwarmRuntime, SwarmTarget

__all__ = [
    "ALL_PLUGINS",
    "DockerRuntime",
    "EventStreamRuntime",
    "JupyterRequirement",
    "LocalRuntime",
    "Plugin",
    "PluginRequirement",
    "SandboxBuildError",
    "SandboxClosedError",
    "SandboxConfig",
    "SandboxConnectionError",
    "SandboxError",
    "SandboxPool",
    "SandboxStartError",
    "SessionInUseError",
    "SnapshotInfo",
    "SwarmRuntime",
    "SwarmTarget",
    "fork",
    "list_snapshots",
    "remove_snapshot",
]
