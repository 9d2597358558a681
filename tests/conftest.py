"""Test-wide settings: hypothesis profiles, the `docker` and `disrupts_engine` marker policies."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=100
)
settings.register_profile(
    "ci", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=200
)
settings.load_profile("ci" if os.environ.get("CI") else "default")


def docker_available() -> bool:
    return os.path.exists(os.environ.get("DOCKER_SOCKET", "/var/run/docker.sock"))


#: Set to 1 to run the tests marked ``disrupts_engine`` (.ci/run does).
DISRUPTIVE_TESTS_VARIABLE = "OPENHANDS_RT_DISRUPTIVE_TESTS"


def disruptive_tests_wanted() -> bool:
    return os.environ.get(DISRUPTIVE_TESTS_VARIABLE) == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not disruptive_tests_wanted():
        # Stopping the engine would kill every other container on it: a user's, or
        # another test run's. Only a machine that is there for it (CI) runs these.
        disruptive = pytest.mark.skip(
            reason=f"stops or restarts the Docker engine; set {DISRUPTIVE_TESTS_VARIABLE}=1 "
            "to run it (on a machine where nothing else uses that engine)"
        )
        for item in items:
            if "disrupts_engine" in item.keywords:
                item.add_marker(disruptive)
    if docker_available():
        return
    if os.environ.get("CI"):
        # In CI the engine must be there (.ci/run starts it): fail loudly, never skip.
        return
    skip = pytest.mark.skip(reason="no Docker engine (no /var/run/docker.sock); run scripts/test")
    for item in items:
        if "docker" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs, unmounted after the test (mounting needs root: CI runs as root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    where = tmp_path / "small"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)
