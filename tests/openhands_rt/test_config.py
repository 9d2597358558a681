"""SandboxConfig validation and defaults."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from events import EventStream
from openhands_rt import DockerRuntime, SandboxConfig, image
from openhands_rt.config import DEFAULT_BASE_IMAGE, channel_of


def test_defaults_follow_the_api() -> None:
    config = SandboxConfig()
    # One default, the base image that works offline (openhands-rt base-image bootstrap).
    assert config.base_container_image == "openhands-rt/base:bookworm" == DEFAULT_BASE_IMAGE
    assert image.DEFAULT_BASE_IMAGE == DEFAULT_BASE_IMAGE
    assert config.timeout == 120.0
    assert config.no_change_timeout == 10.0
    assert config.network == "bridge"
    assert config.plugins == []
    assert not config.keep_runtime_alive
    assert not config.run_as_root


@pytest.mark.parametrize(
    "bad",
    [
        {"timeout": 0},
        {"timeout": -1.0},
        {"no_change_timeout": math.inf},
        {"startup_timeout": math.nan},
        {"network": "host"},
        {"cpus": 0},
        {"memory_mb": 4},
        {"pids_limit": 0},
        {"env": {"A=B": "x"}},
        {"env": {"": "x"}},
    ],
)
def test_invalid_values_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="SandboxConfig"):
        SandboxConfig(**bad)  # type: ignore[arg-type]


async def test_auto_restart_comes_from_the_config_unless_given() -> None:
    async with EventStream() as stream:
        assert DockerRuntime(stream, SandboxConfig(auto_restart=True)).auto_restart
        assert not DockerRuntime(stream, SandboxConfig()).auto_restart
        assert not DockerRuntime(
            stream, SandboxConfig(auto_restart=True), auto_restart=False
        ).auto_restart


def test_a_workspace_that_is_a_file_is_refused(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match=r"'.*/file' is not usable: it is a file, not a dir"):
        SandboxConfig(workspace_dir=str(tmp_path / "file"))
    with pytest.raises(ValueError, match=r"its parent .*/file is a file, not a directory"):
        SandboxConfig(workspace_dir=str(tmp_path / "file" / "sub"))
    SandboxConfig(workspace_dir=str(tmp_path / "new" / "sub"))  # made by the runtime


def test_the_runtime_mode_is_build_or_mount() -> None:
    assert SandboxConfig().runtime_mode == "build"
    assert SandboxConfig(runtime_mode="mount").runtime_mode == "mount"
    with pytest.raises(ValueError, match="runtime_mode"):
        SandboxConfig(runtime_mode="copy")


def test_the_channel_follows_the_network_unless_chosen() -> None:
    assert channel_of(SandboxConfig()) == "tcp"
    assert channel_of(SandboxConfig(network="none")) == "unix"
    assert channel_of(SandboxConfig(channel="unix")) == "unix"
    assert channel_of(SandboxConfig(network="none", channel="unix")) == "unix"
    assert channel_of(SandboxConfig(channel="tcp")) == "tcp"
    with pytest.raises(ValueError, match="channel"):
        SandboxConfig(channel="udp")
    with pytest.raises(ValueError, match="needs a network"):
        SandboxConfig(network="none", channel="tcp")
