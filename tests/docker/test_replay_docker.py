"""Replay against DockerRuntime: record a session into a durable log, replay-verify it."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import msgspec
import pytest
from rich.console import Console
from support import RUNTIME_MODES

from events import (
    CmdOutputObservation,
    CmdRunAction,
    Event,
    EventSource,
    EventStream,
    FileEditAction,
    FileEditObservation,
    FileReadAction,
    FileWriteAction,
)
from events.log import read_log
from openhands_rt import SandboxConfig
from openhands_rt.docker_runtime import DockerRuntime
from openhands_rt.replay import replay_file
from openhands_rt.replay_cli import replay_command

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[2]
REAL = REPO / "tests" / "data" / "openhands-trajectories"
HANDWRITTEN = REPO / "tests" / "data" / "trajectories" / "notes_session.json"

SESSION = [
    CmdRunAction("echo hello && python3 -c 'print(6 * 7)'"),
    FileWriteAction("/workspace/notes.txt", "alpha\nbeta\n"),
    FileReadAction("/workspace/notes.txt"),
    FileEditAction("/workspace/notes.txt", "str_replace", old_str="beta", new_str="gamma"),
    FileEditAction("/workspace", "view"),
    CmdRunAction("export GREETING=hi && cd /tmp && pwd"),
    CmdRunAction('pwd; echo "$GREETING"; whoami'),
    CmdRunAction("cat /workspace/notes.txt; false"),
    FileReadAction("/workspace/missing.txt"),
]


def config(
    base_image: str, workspace: Path | None = None, runtime_mode: str = "build"
) -> SandboxConfig:
    return SandboxConfig(
        base_container_image=base_image,
        runtime_mode=runtime_mode,
        workspace_dir=None if workspace is None else str(workspace),
        no_change_timeout=5.0,
        timeout=60.0,
    )


async def record(log: Path, cfg: SandboxConfig) -> list[Event]:
    stream = EventStream(log_path=log)
    async with stream, DockerRuntime(stream, cfg) as rt:
        for action in SESSION:
            await rt.run(action)
    return read_log(log)


@pytest.mark.parametrize("replay_mode", RUNTIME_MODES)
async def test_docker_session_replays_and_verifies(
    base_image: str, tmp_path: Path, replay_mode: str
) -> None:
    # Recorded in build mode; verified in each mode: mount mode's observations are the same.
    log = tmp_path / "session.log"
    events = await record(log, config(base_image))
    outputs = [e for e in events if isinstance(e, CmdOutputObservation)]
    assert [o.exit_code for o in outputs] == [0, 0, 0, 1]
    assert outputs[2].content.split() == ["/tmp", "hi", "openhands"]

    output = tmp_path / "replayed.log"
    replay_config = config(base_image, runtime_mode=replay_mode)
    result = await replay_file(log, verify=True, config=replay_config, output_log=output)
    assert result.divergence is None
    assert (result.total, result.executed, result.matched) == (9, 9, 9)
    replayed_edit = next(e for e in read_log(output) if isinstance(e, FileEditObservation))
    assert replayed_edit.new_content == "alpha\ngamma\n"


async def test_docker_modified_observation_diverges_with_exit_1(
    base_image: str, tmp_path: Path
) -> None:
    log = tmp_path / "session.log"
    events = await record(log, config(base_image))
    target = [e for e in events if isinstance(e, CmdOutputObservation)][2]
    tampered = tmp_path / "tampered.log"
    stream = EventStream(log_path=tampered)
    async with stream:
        for event in events:
            if event.id == target.id:
                event = msgspec.structs.replace(event, content="/tmp\nhello\nopenhands")
            stream.append(
                msgspec.structs.replace(event, id=-1), source=event.source or EventSource.AGENT
            )
    out = io.StringIO()
    args = argparse.Namespace(
        path=str(tampered),
        verify=True,
        serve=False,
        base_image=base_image,
        local=False,
        workspace=None,
        until=None,
        output_log=None,
    )
    code = await replay_command(args, Console(file=out, width=200, highlight=False))
    assert code == 1, out.getvalue()
    text = out.getvalue()
    assert (
        f"divergence at recorded event {target.id} (the observation of action {target.cause})"
        in text
    )
    assert "-hello\n+hi" in text


async def test_docker_real_trajectory_with_and_without_its_initial_state(
    base_image: str, tmp_path: Path
) -> None:
    trajectory = REAL / "wrong_initial_state.json"
    result = await replay_file(trajectory, verify=True, config=config(base_image))
    assert result.divergence is not None
    assert (result.divergence.action_id, result.divergence.observation_id) == (3, 4)

    # Given the file it was recorded with, the whole trajectory (view, mv, view) verifies.
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "game_2048.py").write_text("print(2048)\n")
    result = await replay_file(trajectory, verify=True, config=config(base_image, workspace))
    assert result.divergence is None, result.divergence and result.divergence.describe()
    assert (result.executed, result.matched) == (3, 3)
    assert sorted(p.name for p in workspace.iterdir()) == ["2048.py"]


async def test_docker_handwritten_and_basic_trajectories_verify(base_image: str) -> None:
    for trajectory, runnable in ((HANDWRITTEN, 5), (REAL / "basic.json", 1)):
        result = await replay_file(trajectory, verify=True, config=config(base_image))
        assert result.divergence is None, result.divergence and result.divergence.describe()
        assert result.matched == runnable
