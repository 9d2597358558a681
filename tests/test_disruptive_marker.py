"""Tests that stop or restart the Docker engine run only when asked.

Checked by collecting (never running) the suite in a child pytest with a probe
plugin that prints, per test, the reasons of the skip markers it carries once
collection is done: the disruptive test must carry ours unless
``OPENHANDS_RT_DISRUPTIVE_TESTS=1``, and nothing else may.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VARIABLE = "OPENHANDS_RT_DISRUPTIVE_TESTS"
DISRUPTIVE = "tests/docker/test_faults.py::test_dockerd_restart_gives_clear_errors_then_recovers"

PROBE = """
import json


def pytest_collection_finish(session):
    for item in session.items:
        reasons = [m.kwargs.get("reason", "") for m in item.iter_markers("skip")]
        print("PROBE " + json.dumps([item.nodeid, reasons]))
"""


def collected_skips(tmp_path: Path, *args: str, wanted: str | None) -> dict[str, list[str]]:
    """nodeid -> skip reasons, as a child pytest collects ``args`` (nothing runs)."""
    (tmp_path / "skip_probe.py").write_text(PROBE)
    env = {k: v for k, v in os.environ.items() if k != VARIABLE}
    if wanted is not None:
        env[VARIABLE] = wanted
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path), env.get("PYTHONPATH")]))
    probe = ["-p", "skip_probe", "-p", "no:cacheprovider"]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", *probe, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    found: dict[str, list[str]] = {}
    for line in result.stdout.splitlines():
        if line.startswith("PROBE "):
            nodeid, reasons = json.loads(line.removeprefix("PROBE "))
            found[nodeid] = reasons
    assert found, result.stdout
    return found


def disruptive(nodeids: Iterable[str]) -> set[str]:
    """The engine-restart test's node ids (one per runtime mode)."""
    found = {nodeid for nodeid in nodeids if nodeid.split("[")[0] == DISRUPTIVE}
    assert found, "the engine-restart test was not collected"
    return found


def ours(reasons: list[str]) -> bool:
    return any(VARIABLE in reason for reason in reasons)


@pytest.mark.parametrize("wanted", [None, "0"])
def test_the_engine_restart_is_skipped_unless_asked(tmp_path: Path, wanted: str | None) -> None:
    skips = collected_skips(tmp_path, "tests/docker/test_faults.py", wanted=wanted)
    restarts = disruptive(skips)
    assert all(ours(skips[nodeid]) for nodeid in restarts), skips
    others = {nodeid for nodeid, reasons in skips.items() if ours(reasons)} - restarts
    assert not others, f"skipped as disruptive but not marked so: {others}"


def test_the_engine_restart_runs_when_asked(tmp_path: Path) -> None:
    skips = collected_skips(tmp_path, "tests/docker/test_faults.py", wanted="1")
    assert disruptive(skips)
    assert not any(ours(reasons) for reasons in skips.values()), skips


def test_the_marker_selects_the_disruptive_tests(tmp_path: Path) -> None:
    selected = collected_skips(tmp_path, "-m", "disrupts_engine", "tests/docker", wanted="1")
    assert set(selected) == disruptive(selected)
