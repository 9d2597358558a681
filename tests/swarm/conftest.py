"""Fixtures of the swarm tests (issue 19): a real three-node cluster for the session.

- ``swarm_cluster``: the cluster of cluster.py (the bootstrapped base image loaded
  into node 1), made once per session, torn down at its end — and checked: the
  session ends with an error when anything of it is left;
- ``swarm_labels``: this run's labels (on every container, network and volume);
- ``say``: writes a line to the terminal (figures measured by the tests);
- the fixtures tests/docker's behaviour tests take, with the same names, for
  test_docker_suite.py, which runs them on Swarm: ``make_runtime`` (a
  ``SwarmRuntime`` on the cluster), ``make_config`` (build mode only),
  ``stream``, ``sandbox_gone``, ``oci_runtime`` (runc: the nodes' engines run
  it, and say so in a node label), ``runtime_mode``, ``runtime_image``,
  ``base_image``, ``test_labels``, ``test_repository``, ``workspace`` (None: no
  host directory on a node), ``runtime_of_each_kind`` and ``rt`` (test_fidelity's:
  a connected ``SwarmRuntime``, in the session's loop).

The tests run in the session's event loop (the cluster's registry process and its
log reader belong to it): mark them ``pytest.mark.asyncio(loop_scope="session")``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from cluster import RUN_LABEL, SwarmCluster, leftovers, open_swarm_cluster, sweep
from registry_process import REGISTRY_BINARY, registry_missing

from events import EventStream
from openhands_rt.docker_client import open_docker
from openhands_rt.image import DEFAULT_BASE_IMAGE, bootstrap_base_image, build_runtime_image
from openhands_rt.runtime import EventStreamRuntime
from openhands_rt.swarm.runtime import SwarmRuntime
from openhands_rt.swarm.spec import OCI_RUNTIME_NODE_LABEL

# test_docker_suite.py imports tests/docker's test modules, and they their support.py.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "docker"))

from support import ConfigFactory, RuntimeFactory, SandboxGone, config_factory, session_id

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


# ---------------------------------------------------------------- tests/docker's fixtures


@pytest.fixture
def make_runtime(swarm_cluster: SwarmCluster) -> RuntimeFactory:
    """``SwarmRuntime`` on the cluster: ``make_runtime(stream, config, session_id=...)``."""
    return partial(
        SwarmRuntime,
        docker_host=swarm_cluster.manager,
        registry=swarm_cluster.registry,
        registry_auth=swarm_cluster.registry_auth,
    )


@pytest.fixture
def sandbox_gone(swarm_cluster: SwarmCluster) -> SandboxGone:
    """``await sandbox_gone(rt)``: the manager knows no service named ``rt.service_name``."""

    async def gone(rt: EventStreamRuntime) -> bool:
        assert isinstance(rt, SwarmRuntime), rt
        async with swarm_cluster.engine(1) as manager:
            services = await manager.services.list(filters={"name": rt.service_name})
        # The name filter matches prefixes: compare the names.
        return all(s["Spec"]["Name"] != rt.service_name for s in services)

    return gone


@pytest.fixture(scope="session")
def runtime_mode() -> str:
    """Build mode only: SwarmRuntime refuses runtime_mode="mount" (not built yet)."""
    return "build"


@pytest.fixture(scope="session")
def runtime_image(swarm_runtime_image: str) -> str:
    return swarm_runtime_image


@pytest.fixture(scope="session")
def base_image(swarm_base_image: str) -> str:
    return swarm_base_image


@pytest.fixture(scope="session")
def test_labels(swarm_labels: dict[str, str]) -> dict[str, str]:
    return swarm_labels


@pytest.fixture(scope="session")
def test_repository() -> str:
    return SWARM_REPOSITORY


@pytest.fixture
def make_config(
    swarm_runtime_image: str, swarm_base_image: str, swarm_labels: dict[str, str]
) -> ConfigFactory:
    """tests/docker's config factory in build mode, with the swarm tests' image and labels."""
    return config_factory(
        "build",
        runtime_image=swarm_runtime_image,
        base_image=swarm_base_image,
        labels=swarm_labels,
    )


@pytest_asyncio.fixture(loop_scope="session")
async def stream() -> AsyncIterator[EventStream]:
    async with EventStream() as s:
        yield s


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def oci_runtime(swarm_cluster: SwarmCluster) -> str:
    """runc, the nodes' engines' default runtime, written on each node as the label
    SwarmRuntime places ``oci_runtime`` by (a service cannot pick its OCI runtime)."""
    async with swarm_cluster.engine(1) as manager:
        for node in await manager.nodes.list():
            spec = dict(node["Spec"])
            spec["Labels"] = {**(spec.get("Labels") or {}), OCI_RUNTIME_NODE_LABEL: "runc"}
            await manager.nodes.update(
                node_id=node["ID"], version=node["Version"]["Index"], spec=spec
            )
    return "runc"


@pytest.fixture
def workspace() -> None:
    """No host directory is mounted on a node: the attacks use the sandbox's /workspace."""
    return None


@pytest.fixture
def runtime_of_each_kind(
    make_runtime: RuntimeFactory, make_config: ConfigFactory
) -> RuntimeFactory:
    """test_fidelity's factory (``runtime_of_each_kind(stream, **overrides)``): Swarm."""

    def swarm(stream: EventStream, **overrides: object) -> EventStreamRuntime:
        return make_runtime(stream, make_config(**overrides), session_id=session_id())

    return swarm


@pytest_asyncio.fixture(loop_scope="session")
async def rt(
    runtime_of_each_kind: RuntimeFactory, stream: EventStream
) -> AsyncIterator[EventStreamRuntime]:
    """test_fidelity's connected runtime, here in the session's loop."""
    async with runtime_of_each_kind(stream) as runtime:
        yield runtime
