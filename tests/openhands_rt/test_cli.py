"""The command line, run as a real process."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from events import (
    Event,
    EventSource,
    EventStream,
    IPythonRunCellAction,
    IPythonRunCellObservation,
    Observation,
    RuntimeStatusObservation,
)


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


# ------------------------------------------------------------ errors say what is wrong (issue 14)


def test_a_workspace_that_is_a_file_is_named_as_the_problem(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "notes.txt"
    not_a_dir.write_text("x")
    for workspace in (not_a_dir, not_a_dir / "sub"):
        result = cli("run", "--local", "--workspace", str(workspace), "--", "true")
        assert result.returncode == 1
        assert "is a file, not a directory" in result.stderr, result.stderr
        assert "Docker engine" not in result.stderr


def test_unknown_plugins_are_refused_alike_and_test_plugins_are_not_offered(
    tmp_path: Path,
) -> None:
    log = tmp_path / "session.log"
    log.write_bytes(b"")
    commands = {
        # replay: its own code for unusable options, 2; its messages on standard output
        ("build",): 1,
        ("replay", "--local", str(log)): 2,
        ("run", "--local", "--", "true"): 1,
    }
    for command, code in commands.items():
        tail = command[-2:] if command[0] == "run" else ()
        head = command[: len(command) - len(tail)]
        result = cli(*head, "--plugins", "nosuch", *tail, timeout=60)
        said = " ".join((result.stdout + result.stderr).split())
        assert result.returncode == code, (command, said)
        assert "unknown plugin 'nosuch'; known: agent_skills, jupyter" in said
        assert not {"shout", "broken", "hangs"} & set(said.replace(",", " ").split())
    help_text = cli("run", "--help").stdout
    assert "plugins: agent_skills, jupyter" in " ".join(help_text.split())
    assert "shout" not in help_text


def test_timeout_says_why_the_exit_code_is_124() -> None:
    result = cli("run", "--local", "--timeout", "1", "--", "sleep 20")
    assert result.returncode == 124
    assert "did not finish within 1 s (--timeout)" in " ".join(result.stderr.split())


def test_replay_takes_the_plugins_the_session_was_recorded_with(tmp_path: Path) -> None:
    log = tmp_path / "session.log"

    async def record() -> None:
        async with EventStream(log_path=log) as stream:
            stream.append(IPythonRunCellAction("print(6 * 7)"), source=EventSource.AGENT)

    asyncio.run(record())
    replayed = tmp_path / "replayed.log"
    result = cli(
        "replay", "--local", "--plugins", "jupyter", "--output-log", str(replayed), str(log)
    )
    assert result.returncode == 0, result.stdout + result.stderr

    async def answers() -> list[Event]:
        async with EventStream(log_path=replayed) as stream:
            return [e for e in stream.iter_events() if isinstance(e, Observation)]

    [answer] = [e for e in asyncio.run(answers()) if not isinstance(e, RuntimeStatusObservation)]
    assert isinstance(answer, IPythonRunCellObservation), answer
    assert answer.content.startswith("42\n")


@pytest.mark.parametrize("command", ["ps", "gc"])
def test_ps_and_gc_without_an_engine_say_so_in_one_line(command: str, tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": "200", "DOCKER_HOST": f"unix://{tmp_path}/no-engine.sock"}
    result = subprocess.run(
        [sys.executable, "-m", "openhands_rt.cli", command],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert result.returncode != 0
    assert result.stderr.strip().startswith("error:")
    # The engine's refusal arrives named (EngineUnreachable), not as aiodocker's DockerError.
    assert "DockerError" not in result.stderr
    assert "Traceback" not in result.stderr
    assert "no-engine.sock" in result.stderr
