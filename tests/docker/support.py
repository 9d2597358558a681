"""Helpers shared by the Docker tests (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable

from events import CmdOutputObservation, CmdRunAction
from openhands_rt import DockerRuntime, SandboxConfig
from openhands_rt.docker_client import open_docker

__all__ = ["OCI_RUNTIMES", "ConfigFactory", "engine_runtimes", "session_id", "sh"]

ConfigFactory = Callable[..., SandboxConfig]


def engine_runtimes() -> set[str]:
    """The OCI runtimes the local engine has registered (empty without an engine)."""

    async def query() -> set[str]:
        async with open_docker() as docker:
            info = await docker.system.info()
        return set((info.get("Runtimes") or {}).keys())

    try:
        return asyncio.run(query())
    except Exception:
        return set()


# In CI the engine must have gVisor: a missing runsc fails these tests, never skips them.
OCI_RUNTIMES = (
    ["runc", "runsc"] if os.environ.get("CI") or "runsc" in engine_runtimes() else ["runc"]
)


def session_id() -> str:
    return "t" + uuid.uuid4().hex[:10]


async def sh(rt: DockerRuntime, command: str, **kwargs: object) -> CmdOutputObservation:
    obs = await rt.run(CmdRunAction(command, **kwargs))  # type: ignore[arg-type]
    assert isinstance(obs, CmdOutputObservation), obs
    return obs
