"""Test-wide settings: hypothesis profiles and the `docker` marker policy."""

from __future__ import annotations

import os

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


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if docker_available():
        return
    if os.environ.get("CI"):
        # In CI the engine must be there (.ci/run starts it): fail loudly, never skip.
        return
    skip = pytest.mark.skip(reason="no Docker engine (no /var/run/docker.sock); run scripts/test")
    for item in items:
        if "docker" in item.keywords:
            item.add_marker(skip)
