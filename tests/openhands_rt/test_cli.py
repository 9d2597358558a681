"""The command line, run as a real process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run(
        [sys.executable, "-m", "openhands_rt.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def test_help_lists_the_commands() -> None:
    result = cli("--help")
    assert result.returncode == 0
    for command in ("build", "run", "shell", "replay", "ps", "gc", "base-image", "demo"):
        assert command in result.stdout


def test_run_streams_output_and_exits_with_the_command_code() -> None:
    result = cli("run", "--local", "--", "for i in 1 2 3; do echo line$i; sleep 0.1; done")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["line1", "line2", "line3"]
    assert cli("run", "--local", "--", "exit 7").returncode == 7


def test_run_without_a_command_is_one_clear_line() -> None:
    result = cli("run", "--local")
    assert result.returncode != 0
    assert result.stderr.strip().startswith("error:")
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_replay_of_a_file_that_is_neither_format(tmp_path: pytest.TempPathFactory) -> None:
    path = os.path.join(str(tmp_path), "notes.txt")
    with open(path, "w") as f:
        f.write("just text\n")
    result = cli("replay", "--local", path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_shell_runs_lines_and_leaves_on_eof() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "openhands_rt.cli", "shell", "--local"],
        input="cd /tmp\npwd\necho hello from the shell\n",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "/tmp" in result.stdout
    assert "hello from the shell" in result.stdout
