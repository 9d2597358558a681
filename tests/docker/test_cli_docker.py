"""The command line against a real engine."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from openhands_rt.docker_runtime import CONTAINER_PREFIX

pytestmark = pytest.mark.docker


def cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "openhands_rt.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
    )


def our_containers() -> set[str]:
    result = cli("ps")
    assert result.returncode == 0, result.stderr
    return {word for word in result.stdout.split() if word.startswith(CONTAINER_PREFIX)}


def test_run_in_a_sandbox_streams_and_exits_with_the_code(runtime_image: str) -> None:
    before = our_containers()
    result = cli("run", "--image", runtime_image, "--", "whoami; hostname; (exit 3)")
    assert result.returncode == 3, result.stderr
    user, host = result.stdout.split()
    assert user == "openhands"
    assert host.startswith("sandbox-")
    assert our_containers() <= before, "the sandbox was not removed"


def test_errors_are_one_line_and_ps_gc_work() -> None:
    result = cli("run", "--image", "openhands-rt-test/no-such-image:x", "--", "true")
    assert result.returncode != 0
    assert "no-such-image" in result.stderr
    assert "Traceback" not in result.stderr
    gc = cli("gc")
    assert gc.returncode == 0, gc.stderr
    assert "orphaned sandbox" in gc.stdout
