"""Fixtures for tests against a real Docker engine.

- ``docker``: an aiodocker client for the test (closed after it);
- ``base_image``: the bootstrapped Debian base image (made once when missing, kept);
- ``test_labels``: labels to put on every image and container a test makes. At
  the end of the session everything carrying this run's label is removed
  (containers first, then images, children before parents);
- ``busybox_image``, ``debian_without_python_image``, ``bullseye_image``: the
  test images of mount mode, made in the session (images.py);
- ``make_runtime``: the runtime class the behaviour tests run
  (``make_runtime(stream, config, session_id=...)``): ``DockerRuntime`` here;
  tests/swarm's conftest gives ``SwarmRuntime`` to the same tests;
- ``sandbox_gone``: ``await sandbox_gone(rt)``, whether ``rt``'s container is gone.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Iterator

import aiodocker
import pytest
from aiodocker.exceptions import DockerError
from images import bullseye_image, busybox_image, debian_without_python_image
from support import (
    OCI_RUNTIMES,
    RUNTIME_MODES,
    ConfigFactory,
    RuntimeFactory,
    SandboxGone,
    config_factory,
    container_exists,
)

from events import EventStream
from openhands_rt import DockerRuntime
from openhands_rt.docker_client import open_docker
from openhands_rt.image import DEFAULT_BASE_IMAGE, bootstrap_base_image, build_runtime_image

logger = logging.getLogger(__name__)

RUN_LABEL = "org.openhands-rt.test-run"
RUN_ID = uuid.uuid4().hex[:12]
TEST_REPOSITORY = "openhands-rt-test/runtime"
# Fixtures of images.py, registered here.
__all__ = ["bullseye_image", "busybox_image", "debian_without_python_image"]


@pytest.fixture(scope="session")
def test_run_id() -> str:
    """Unique to this pytest session; the value of the ``org.openhands-rt.test-run`` label."""
    return RUN_ID


@pytest.fixture(scope="session")
def test_labels() -> dict[str, str]:
    """Put these on every image and container a test makes: they are removed at the end."""
    return {RUN_LABEL: RUN_ID}


@pytest.fixture(scope="session")
def test_repository() -> str:
    """A repository for test builds, apart from the real ``openhands-rt/runtime``."""
    return TEST_REPOSITORY


@pytest.fixture
async def docker() -> AsyncIterator[aiodocker.Docker]:
    async with open_docker() as client:
        yield client


@pytest.fixture(scope="session")
def base_image() -> str:
    """The bootstrapped base image (debootstrap + import when missing; never removed)."""
    return asyncio.run(bootstrap_base_image(DEFAULT_BASE_IMAGE))


@pytest.fixture(scope="session")
def runtime_image(base_image: str, test_repository: str, test_labels: dict[str, str]) -> str:
    """The runtime image of this source tree, built once into the test repository."""
    result = asyncio.run(
        build_runtime_image(base_image, repository=test_repository, labels=test_labels)
    )
    return result.image


@pytest.fixture(params=RUNTIME_MODES)
def runtime_mode(request: pytest.FixtureRequest) -> str:
    """Each way of making a sandbox: the built runtime image, and the base image as it is
    with the runtime bundle mounted (``runtime_mode="mount"``)."""
    return str(request.param)


@pytest.fixture
def make_config(
    runtime_image: str, base_image: str, runtime_mode: str, test_labels: dict[str, str]
) -> ConfigFactory:
    """SandboxConfig factory, in each runtime mode: the test runtime image (build) or the
    base image as it is (mount), the run's labels, short timeouts."""
    return config_factory(
        runtime_mode, runtime_image=runtime_image, base_image=base_image, labels=test_labels
    )


@pytest.fixture
def make_runtime() -> RuntimeFactory:
    """The runtime class of the behaviour tests: ``DockerRuntime``."""
    return DockerRuntime


@pytest.fixture
def sandbox_gone() -> SandboxGone:
    """``await sandbox_gone(rt)``: no container named ``rt.container_name`` exists."""

    async def gone(rt: object) -> bool:
        assert isinstance(rt, DockerRuntime), rt
        return not await container_exists(rt.container_name)

    return gone


@pytest.fixture
async def stream() -> AsyncIterator[EventStream]:
    async with EventStream() as s:
        yield s


@pytest.fixture(params=OCI_RUNTIMES)
def oci_runtime(request: pytest.FixtureRequest) -> str:
    """Each OCI runtime the suite covers: runc, and runsc (gVisor) where registered/in CI."""
    return str(request.param)


async def remove_labelled(label: str) -> list[str]:
    """Remove every container, then every image, carrying ``label``; returns what failed."""
    failures: list[str] = []
    async with open_docker() as client:
        for container in await client.containers.list(all=True, filters={"label": [label]}):
            try:
                await container.delete(force=True)
            except DockerError as exc:
                failures.append(f"container {container.id}: {exc.message}")
        images = await client.images.list(all=True, filters={"label": [label]})
        pending = [str(image["Id"]) for image in images]
        # Children must go before their parents; retry until nothing moves.
        while pending:
            left: list[str] = []
            errors: list[str] = []
            for image_id in pending:
                try:
                    await client.images.delete(image_id, force=True)
                except DockerError as exc:
                    if exc.status != 404:
                        left.append(image_id)
                        errors.append(f"image {image_id}: {exc.message}")
            if len(left) == len(pending):
                failures += errors
                break
            pending = left
    return failures


@pytest.fixture(scope="session", autouse=True)
def _remove_what_the_tests_made() -> Iterator[None]:
    yield
    failures = asyncio.run(remove_labelled(f"{RUN_LABEL}={RUN_ID}"))
    if failures:
        logger.warning("could not remove test resources: %s", failures)
