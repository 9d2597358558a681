"""Helpers shared by the Docker tests (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable

from aiodocker.exceptions import DockerError

from events import CmdOutputObservation, CmdRunAction, Event, EventStream, RuntimeStatusObservation
from openhands_rt import SandboxConfig
from openhands_rt.docker_client import open_docker
from openhands_rt.runtime import EventStreamRuntime

__all__ = [
    "OCI_RUNTIMES",
    "RUNTIME_MODES",
    "ConfigFactory",
    "RuntimeFactory",
    "SandboxGone",
    "cli",
    "config_factory",
    "container_exists",
    "engine_runtimes",
    "is_status",
    "next_event",
    "session_id",
    "sh",
]

ConfigFactory = Callable[..., SandboxConfig]
#: ``make_runtime(stream, config, session_id=...)``: the runtime class under test
#: (conftest's ``make_runtime``: DockerRuntime here, SwarmRuntime in tests/swarm).
RuntimeFactory = Callable[..., EventStreamRuntime]
#: ``await sandbox_gone(rt)``: whether ``rt``'s sandbox no longer exists on its engine.
SandboxGone = Callable[[EventStreamRuntime], Awaitable[bool]]


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


# Every sandbox test runs in both: the built runtime image, and the base image as it is.
RUNTIME_MODES = ["build", "mount"]


def config_factory(
    runtime_mode: str, *, runtime_image: str, base_image: str, labels: dict[str, str]
) -> ConfigFactory:
    """SandboxConfig factory for ``runtime_mode``: ``runtime_image`` (build) or
    ``base_image`` as it is (mount), ``labels``, short timeouts; overrides win."""

    def make(**overrides: object) -> SandboxConfig:
        kwargs: dict[str, object] = {
            "labels": dict(labels),
            "no_change_timeout": 5.0,
            "timeout": 60.0,
        }
        if runtime_mode == "mount":
            kwargs.update(runtime_mode="mount", base_container_image=base_image)
        else:
            kwargs["runtime_container_image"] = runtime_image
        kwargs.update(overrides)
        return SandboxConfig(**kwargs)  # type: ignore[arg-type]

    return make


def session_id() -> str:
    return "t" + uuid.uuid4().hex[:10]


async def sh(rt: EventStreamRuntime, command: str, **kwargs: object) -> CmdOutputObservation:
    obs = await rt.run(CmdRunAction(command, **kwargs))  # type: ignore[arg-type]
    assert isinstance(obs, CmdOutputObservation), obs
    return obs


async def container_exists(name: str) -> bool:
    async with open_docker() as docker:
        try:
            await docker.containers.get(name)
        except DockerError as exc:
            if exc.status == 404:
                return False
            raise
    return True


async def next_event(
    stream: EventStream, start: int, match: Callable[[Event], bool], *, within: float
) -> tuple[Event, float]:
    """The first event from id ``start`` on that ``match``es, and when it was seen (monotonic)."""

    async def find() -> Event:
        async for event in stream.follow(start):
            if match(event):
                return event
        raise AssertionError("the stream closed")

    event = await asyncio.wait_for(find(), within)
    return event, time.monotonic()


def is_status(status: str, *words: str) -> Callable[[Event], bool]:
    """Matches a RuntimeStatusObservation of ``status`` whose message has every word."""

    def match(event: Event) -> bool:
        return (
            isinstance(event, RuntimeStatusObservation)
            and event.status == status
            and all(w in event.message for w in words)
        )

    return match


async def cli(*args: str, timeout: float = 180) -> tuple[int, str, str]:
    """Run ``openhands-rt ARGS``; its exit code, standard output and standard error."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "openhands_rt.cli",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "COLUMNS": "200"},
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except asyncio.TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()
