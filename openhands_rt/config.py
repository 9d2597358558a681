"""SandboxConfig: everything a runtime needs to know about the sandbox it makes."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from openhands_rt.plugins import PluginRequirement

__all__ = [
    "CHANNELS",
    "DEFAULT_BASE_IMAGE",
    "RUNTIME_MODES",
    "SandboxConfig",
    "channel_of",
    "check_workspace_dir",
    "cli_base_image",
]

#: The one default base image: made offline by ``openhands-rt base-image bootstrap``.
DEFAULT_BASE_IMAGE = "openhands-rt/base:bookworm"


def cli_base_image() -> str:
    """The base image the CLI's commands use: ``$OPENHANDS_RT_BASE_IMAGE``, else the default."""
    return os.environ.get("OPENHANDS_RT_BASE_IMAGE", DEFAULT_BASE_IMAGE)


_NETWORKS = ("bridge", "none")
#: ``build``: the three-tag runtime image; ``mount``: the image as it is, with the
#: runtime bundle mounted read-only (:mod:`openhands_rt.bundle`).
RUNTIME_MODES = ("build", "mount")
#: How the host reaches a Docker sandbox's server: ``tcp``, a port the engine publishes
#: on the host's 127.0.0.1 (one docker-proxy per sandbox); ``unix``, a Unix socket in
#: the sandbox's run directory, no port published (the only way with ``network="none"``).
CHANNELS = ("tcp", "unix")


@dataclass(kw_only=True)
class SandboxConfig:
    """Configuration of one sandbox (docs/api.md describes its public fields).

    ``timeout`` is the default hard timeout of an action and
    ``no_change_timeout`` the soft (no new output) timeout, both in seconds.

    ``run_as_root=True`` gives up the containment of docs/containment.md: the
    agent is root in the container with Docker's default capabilities, so it
    can kill or replace the server, read the session key and leave root-owned
    setuid files in a mounted workspace; only what Docker itself gives
    (namespaces, its seccomp profile, no-new-privileges, limits) still holds.
    """

    base_container_image: str = DEFAULT_BASE_IMAGE
    runtime_container_image: str | None = None
    workspace_dir: str | None = None
    timeout: float = 120.0
    no_change_timeout: float = 10.0
    keep_runtime_alive: bool = False
    run_as_root: bool = False
    env: dict[str, str] = field(default_factory=dict)
    cpus: float | None = None
    memory_mb: int | None = None
    pids_limit: int | None = None
    network: str = "bridge"
    oci_runtime: str | None = None
    plugins: list[PluginRequirement] = field(default_factory=list)
    runtime_image_repository: str = "openhands-rt/runtime"
    startup_timeout: float = 60.0
    read_only_root: bool = False
    labels: dict[str, str] = field(default_factory=dict)  # extra labels on the container
    auto_restart: bool = False  # DockerRuntime: start a sandbox whose server died again
    # OpenHands refuses several top-level commands in one CmdRunAction (an ErrorObservation
    # "Cannot execute multiple commands at once"); True runs them all, one after the other.
    allow_multiple_commands: bool = False
    # "build": the runtime image built from base_container_image (or runtime_container_image);
    # "mount": no build, the image (runtime_container_image, else base_container_image) as it
    # is, with the runtime bundle mounted read-only.
    runtime_mode: str = "build"
    # DockerRuntime: how the host reaches the server, one of CHANNELS; None: "unix" with
    # network="none", else "tcp" (channel_of). "unix" publishes no port: a cheaper start.
    channel: str | None = None

    def __post_init__(self) -> None:
        for name in ("timeout", "no_change_timeout", "startup_timeout"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"SandboxConfig.{name} must be a positive number of seconds")
        if self.runtime_mode not in RUNTIME_MODES:
            raise ValueError(f"SandboxConfig.runtime_mode must be one of {RUNTIME_MODES}")
        if self.network not in _NETWORKS:
            raise ValueError(f"SandboxConfig.network must be one of {_NETWORKS}")
        if self.channel is not None and self.channel not in CHANNELS:
            raise ValueError(f"SandboxConfig.channel must be None or one of {CHANNELS}")
        if self.channel == "tcp" and self.network == "none":
            raise ValueError(
                "SandboxConfig.channel='tcp' needs a network: with network='none' the "
                "channel is a Unix socket"
            )
        if self.cpus is not None and self.cpus <= 0:
            raise ValueError("SandboxConfig.cpus must be > 0")
        if self.memory_mb is not None and self.memory_mb < 6:
            raise ValueError("SandboxConfig.memory_mb must be >= 6 (Docker's minimum)")
        if self.pids_limit is not None and self.pids_limit < 1:
            raise ValueError("SandboxConfig.pids_limit must be >= 1")
        if self.workspace_dir is not None:
            check_workspace_dir(self.workspace_dir)
        for key in self.env:
            if not key or "=" in key or "\x00" in key:
                raise ValueError(f"SandboxConfig.env has an invalid variable name {key!r}")


def channel_of(config: SandboxConfig) -> str:
    """The channel a sandbox of ``config`` uses (one of :data:`CHANNELS`)."""
    if config.channel is not None:
        return config.channel
    return "unix" if config.network == "none" else "tcp"


def check_workspace_dir(path: str) -> None:
    """Raise ``ValueError`` saying what is wrong when ``path`` cannot be the workspace.

    A missing directory is fine (the runtime makes it); something else in its
    place, or in the place of one of its parents, is not.
    """
    probe = os.path.abspath(path)
    while True:
        if os.path.lexists(probe):
            if not os.path.isdir(probe):
                what = "its parent " + probe if probe != os.path.abspath(path) else "it"
                raise ValueError(
                    f"SandboxConfig.workspace_dir {path!r} is not usable: "
                    f"{what} is a file, not a directory"
                )
            return
        parent = os.path.dirname(probe)
        if parent == probe:
            return
        probe = parent
