"""Fixtures of the swarm tests (issue 19): a real three-node cluster for the session.

- ``swarm_cluster``: the cluster of cluster.py (the bootstrapped base image loaded
  into node 1), made once per session, torn down at its end — and checked: the
  session ends with an error when anything of it is left;
- ``swarm_labels``: this run's labels (on every container, network and volume);
- ``say``: writes a line to the terminal (figures measured by the tests).

The tests run in the session's event loop (the cluster's registry process and its
log reader belong to it): mark them ``pytest.mark.asyncio(loop_scope="session")``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from cluster import RUN_LABEL, SwarmCluster, leftovers, open_swarm_cluster, sweep
from registry_process import REGISTRY_BINARY, registry_missing

from openhands_rt.docker_client import open_docker
from openhands_rt.image import DEFAULT_BASE_IMAGE, bootstrap_base_image, build_runtime_image

RUN_ID = "s" + uuid.uuid4().hex[:11]
#: The runtime image the swarm tests build (apart from the real ``openhands-rt/runtime``).
SWARM_REPOSITORY = "openhands-rt-test/swarm-runtime"


def require_registry_binary() -> None:
    """In CI the registry must be installed (a missing one fails); elsewhere: skip."""
    if (missing := registry_missing()) is None:
        return
    if os.environ.get("CI"):
        pytest.fail(missing)
    pytest.skip(missing)


@pytest.fixture(scope="session")
def registry_required() -> Callable[[], None]:
    """Call it first in a test that makes a cluster of its own."""
    return require_registry_binary


@pytest.fixture(scope="session")
def swarm_run_id() -> str:
    return RUN_ID


@pytest.fixture(scope="session")
def swarm_labels() -> dict[str, str]:
    return {RUN_LABEL: RUN_ID}


@pytest.fixture(scope="session")
def say(request: pytest.FixtureRequest) -> Callable[[str], None]:
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")

    def write(line: str) -> None:
        if reporter is None:
            return
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            reporter.write_line(f"swarm: {line}")

    return write


@pytest.fixture(scope="session")
def swarm_base_image() -> str:
    """The bootstrapped base image (made when missing; never removed)."""
    return asyncio.run(bootstrap_base_image(DEFAULT_BASE_IMAGE))


def remove_by_hand(run_id: str, record: dict[str, Any]) -> list[str]:
    """The last resort when a cluster could not unwind (its loop died): sweep by label
    and name, stop the registry, remove the directory. What could not be removed."""
    failures = asyncio.run(sweep(run_id, f"{RUN_LABEL}={run_id}"))
    pid = record.get("registry_pid")
    cmdline = Path(f"/proc/{pid}/cmdline")
    if pid is not None and cmdline.exists() and REGISTRY_BINARY.encode() in cmdline.read_bytes():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    tmp = record.get("tmp")
    if tmp is not None:
        shutil.rmtree(tmp, ignore_errors=True)
    return failures


@pytest.fixture(scope="session")
def swarm_runtime_image(swarm_base_image: str, swarm_labels: dict[str, str]) -> Iterator[str]:
    """The runtime image of this source tree, built on the host's engine (where
    ``SwarmRuntime`` builds); removed at the end when this session built it."""
    result = asyncio.run(
        build_runtime_image(swarm_base_image, repository=SWARM_REPOSITORY, labels=swarm_labels)
    )
    yield result.image
    asyncio.run(_remove_images(f"{RUN_LABEL}={RUN_ID}"))


async def _remove_images(label: str) -> None:
    async with open_docker() as host:
        for image in await host.images.list(filters={"label": [label]}):
            with contextlib.suppress(Exception):
                await host.images.delete(image["Id"], force=True)


@pytest.fixture(scope="session")
def _swarm_safety_net() -> Iterator[dict[str, Any]]:
    """Torn down after ``swarm_cluster``: removes by hand whatever it left, and fails
    the session's teardown naming it."""
    record: dict[str, Any] = {}
    yield record
    left = asyncio.run(
        leftovers(
            RUN_ID,
            f"{RUN_LABEL}={RUN_ID}",
            tmp=record.get("tmp"),
            registry_pid=record.get("registry_pid"),
            registry=record.get("registry"),
            network_id=record.get("network_id"),
        )
    )
    if left:
        failures = remove_by_hand(RUN_ID, record)
        pytest.fail(f"the swarm cluster left {left} (removed by hand; failures: {failures})")


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def swarm_cluster(
    _swarm_safety_net: dict[str, Any],
    swarm_base_image: str,
    swarm_labels: dict[str, str],
    say: Callable[[str], None],
) -> AsyncIterator[SwarmCluster]:
    require_registry_binary()
    async with open_swarm_cluster(
        run_id=RUN_ID,
        labels=swarm_labels,
        base_image=swarm_base_image,
        images=[swarm_base_image],
    ) as cluster:
        _swarm_safety_net.update(
            tmp=cluster.tmp,
            registry_pid=cluster.registry_pid,
            registry=cluster.registry,
            network_id=cluster.network_id,
        )
        for what, seconds in cluster.timings.items():
            say(f"{what}: {seconds:.1f} s")
        yield cluster
