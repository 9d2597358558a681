"""Replay through runtimes: execute and verify through LocalRuntime, serve-recorded, the CLI.

The pure parts are tested in test_replay_recording, test_replay_verify and
test_replay_serve_core.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import msgspec
import pytest
from rich.console import Console

from events import (
    Action,
    CmdOutputChunk,
    CmdOutputObservation,
    CmdRunAction,
    ErrorObservation,
    Event,
    EventSource,
    EventStream,
    FileEditAction,
    FileEditObservation,
    FileReadAction,
    FileReadObservation,
    FileWriteAction,
    IPythonRunCellAction,
    IPythonRunCellObservation,
    OpenHandsEvent,
    decode_event,
    encode_event,
)
from events.compat import load_openhands_trajectory, to_openhands_dict
from events.log import read_log
from openhands_rt import JupyterRequirement, LocalRuntime, SandboxConfig
from openhands_rt.replay import (
    REPLAY_MISMATCH_ERROR_ID,
    RecordedRuntime,
    Recording,
    ReplayMismatchError,
    StepReport,
    load_recording,
    replay_file,
)
from openhands_rt.replay_cli import replay_command, serve_lines

REPO = Path(__file__).resolve().parents[2]
HANDWRITTEN = REPO / "tests" / "data" / "trajectories" / "notes_session.json"
REAL = REPO / "tests" / "data" / "openhands-trajectories"


def config(workspace: Path | None = None) -> SandboxConfig:
    return SandboxConfig(
        workspace_dir=None if workspace is None else str(workspace),
        no_change_timeout=2.0,
        timeout=30.0,
    )


def real(name: str) -> Path:
    path = REAL / name
    if not path.exists():
        pytest.fail(f"missing real OpenHands trajectory {path}")
    return path


async def record(
    log: Path,
    workspace: Path,
    actions: Sequence[Action],
) -> list[Event]:
    """Run ``actions`` through LocalRuntime into a durable log; return the log's events."""
    stream = EventStream(log_path=log)
    async with stream, LocalRuntime(stream, config(workspace)) as rt:
        for action in actions:
            await rt.run(action)
    return read_log(log)


def fresh_workspace(workspace: Path) -> None:
    shutil.rmtree(workspace, ignore_errors=True)
    workspace.mkdir()


SESSION: list[Action] = [
    CmdRunAction("echo hello"),
    FileWriteAction("notes.txt", "alpha\nbeta\n"),
    FileReadAction("notes.txt"),
    FileEditAction("notes.txt", "str_replace", old_str="beta", new_str="gamma"),
    FileEditAction("notes.txt", "view"),
    FileEditAction("app.py", "create", file_text="print('hi')\n"),
    CmdRunAction("python3 app.py; printf 'tab\\there  \\r\\n'"),
    CmdRunAction("false"),
    FileReadAction("missing.txt"),
    CmdRunAction("cat notes.txt && ls"),
]


# ------------------------------------------------------------------ verify through LocalRuntime


async def test_recorded_session_replays_and_verifies(tmp_path: Path) -> None:
    workspace, log = tmp_path / "ws", tmp_path / "session.log"
    workspace.mkdir()
    recorded = await record(log, workspace, SESSION)
    assert any(isinstance(e, ErrorObservation) for e in recorded)  # the missing file
    fresh_workspace(workspace)
    reports: list[StepReport] = []
    output = tmp_path / "replayed.log"
    result = await replay_file(
        log,
        verify=True,
        local=True,
        config=config(workspace),
        output_log=output,
        on_step=reports.append,
    )
    assert result.divergence is None
    assert (result.total, result.executed, result.matched, result.unverified) == (10, 10, 10, 0)
    assert [r.index for r in reports] == list(range(10))
    assert all(r.matched for r in reports)
    assert (workspace / "notes.txt").read_text() == "alpha\ngamma\n"
    replayed = read_log(output)
    commands = [e.command for e in replayed if isinstance(e, CmdRunAction)]
    assert commands == [a.command for a in SESSION if isinstance(a, CmdRunAction)]


async def test_nondeterministic_command_diverges_at_its_id(tmp_path: Path) -> None:
    workspace, log = tmp_path / "ws", tmp_path / "session.log"
    workspace.mkdir()
    events = await record(
        log,
        workspace,
        [CmdRunAction("echo before"), CmdRunAction("date +%N"), CmdRunAction("echo after")],
    )
    date_action = next(e for e in events if isinstance(e, CmdRunAction) and e.command == "date +%N")
    date_obs = next(
        e for e in events if isinstance(e, CmdOutputObservation) and e.cause == date_action.id
    )
    fresh_workspace(workspace)
    result = await replay_file(log, verify=True, local=True, config=config(workspace))
    divergence = result.divergence
    assert divergence is not None
    assert (divergence.action_id, divergence.observation_id) == (date_action.id, date_obs.id)
    assert divergence.reason == "command output differs"
    assert (result.executed, result.matched) == (2, 1)  # "echo after" never ran
    assert f"-{date_obs.content.strip()}" in divergence.diff
    assert f"+{divergence.actual.content.strip()}" in divergence.diff  # type: ignore[attr-defined]
    text = divergence.describe()
    assert (
        f"divergence at recorded event {date_obs.id} (the observation of action {date_action.id})"
        in text
    )
    assert "run 'date +%N'" in text


async def test_one_in_flight_runs_nothing_past_a_divergence(tmp_path: Path) -> None:
    """The default pipelines shell commands (the one recorded after a divergent command may
    already run); max_in_flight=1 sends nothing behind a command before its answer."""
    workspace, log = tmp_path / "ws", tmp_path / "session.log"
    workspace.mkdir()
    commands = [CmdRunAction("date +%N"), CmdRunAction("touch ran-after")]
    await record(log, workspace, commands)
    for max_in_flight, ran_after in ((1, False), (8, True)):
        fresh_workspace(workspace)
        output = tmp_path / f"replayed-{max_in_flight}.log"
        result = await replay_file(
            log,
            verify=True,
            local=True,
            config=config(workspace),
            output_log=output,
            max_in_flight=max_in_flight,
        )
        assert result.divergence is not None
        assert (result.executed, result.matched) == (1, 0)
        assert (workspace / "ran-after").exists() is ran_after
        sent = [e.command for e in read_log(output) if isinstance(e, CmdRunAction)]
        assert ("touch ran-after" in sent) is ran_after


async def test_until_stops_after_the_given_event(tmp_path: Path) -> None:
    workspace, log = tmp_path / "ws", tmp_path / "session.log"
    workspace.mkdir()
    events = await record(
        log,
        workspace,
        [CmdRunAction("touch one"), CmdRunAction("touch two"), CmdRunAction("touch three")],
    )
    two = next(e for e in events if isinstance(e, CmdRunAction) and e.command == "touch two")
    fresh_workspace(workspace)
    result = await replay_file(log, verify=True, local=True, config=config(workspace), until=two.id)
    assert result.divergence is None
    assert (result.total, result.executed, result.matched) == (2, 2, 2)
    assert sorted(p.name for p in workspace.iterdir()) == ["one", "two"]


async def test_modified_observation_diverges_at_that_id(tmp_path: Path) -> None:
    workspace, log = tmp_path / "ws", tmp_path / "session.log"
    workspace.mkdir()
    events = await record(log, workspace, SESSION[:4])
    target = next(e for e in events if isinstance(e, FileReadObservation))
    # A new log built from the recorded events through the API, one observation replaced.
    tampered = tmp_path / "tampered.log"
    stream = EventStream(log_path=tampered)
    async with stream:
        for event in events:
            if event.id == target.id:
                event = msgspec.structs.replace(event, content="alpha\nBETA\n")
            stored = stream.append(
                msgspec.structs.replace(event, id=-1), source=event.source or EventSource.AGENT
            )
            assert stored.id == event.id
    fresh_workspace(workspace)
    result = await replay_file(tampered, verify=True, local=True, config=config(workspace))
    assert result.divergence is not None
    assert result.divergence.observation_id == target.id
    assert result.divergence.action_id == target.cause
    assert "-BETA\n+beta" in result.divergence.diff

    # The command line says the same, with exit code 1.
    fresh_workspace(workspace)
    out = io.StringIO()
    code = await replay_command(
        cli_args(tampered, verify=True, workspace=workspace), console_to(out)
    )
    assert code == 1
    text = out.getvalue()
    assert f"divergence at recorded event {target.id}" in text
    assert "-BETA" in text
    # ... and the untampered log verifies: exit code 0.
    fresh_workspace(workspace)
    out = io.StringIO()
    assert (
        await replay_command(cli_args(log, verify=True, workspace=workspace), console_to(out)) == 0
    )
    assert "all 4 observations match" in out.getvalue()


async def test_ipython_cells_replay_and_verify(tmp_path: Path) -> None:
    workspace, log = tmp_path / "ws", tmp_path / "session.log"
    workspace.mkdir()
    cfg = SandboxConfig(
        workspace_dir=str(workspace), plugins=[JupyterRequirement()], no_change_timeout=2.0
    )
    actions: list[Action] = [
        IPythonRunCellAction("import os\nprint(6 * 7)\nos.getcwd()"),
        CmdRunAction("mkdir sub && cd sub"),
        IPythonRunCellAction("print(os.getcwd().endswith('sub'))"),
        IPythonRunCellAction("import random\nprint(random.random())"),
    ]
    stream = EventStream(log_path=log)
    async with stream, LocalRuntime(stream, cfg) as rt:
        cells = [await rt.run(action) for action in actions]
    assert isinstance(cells[0], IPythonRunCellObservation)
    assert "[Jupyter current working directory:" in cells[0].content
    fresh_workspace(workspace)
    result = await replay_file(log, verify=True, local=True, config=cfg)
    assert result.divergence is not None
    assert result.divergence.action_id == cells[3].cause
    assert result.divergence.reason == "IPython output differs"
    assert result.matched == 3


async def test_handwritten_trajectory_replays_and_verifies(tmp_path: Path) -> None:
    output = tmp_path / "out.log"
    result = await replay_file(
        HANDWRITTEN, verify=True, local=True, config=config(), output_log=output
    )
    assert result.divergence is None
    assert (result.executed, result.matched, result.carried) == (5, 5, 4)
    replayed = read_log(output)
    # The carried events are there, in their place, with their original content.
    original = json.loads(HANDWRITTEN.read_text())
    carried = [e for e in replayed if isinstance(e, OpenHandsEvent)]
    assert [e.data["args"]["content"] for e in carried if e.kind == "message"] == [
        original[0]["args"]["content"],
        original[12]["args"]["content"],
    ]
    kinds = [
        e.kind if isinstance(e, OpenHandsEvent) else type(e).__name__
        for e in replayed
        if not isinstance(e, CmdOutputChunk)
    ]
    runnable_and_carried = [k for k in kinds if k not in ("RuntimeStatusObservation",)]
    assert runnable_and_carried == [
        "message",
        "agent_state_changed",
        "CmdRunAction",
        "CmdOutputObservation",
        "FileWriteAction",
        "FileWriteObservation",
        "FileReadAction",
        "FileReadObservation",
        "FileEditAction",
        "FileEditObservation",
        "CmdRunAction",
        "CmdOutputObservation",
        "message",
        "finish",
    ]
    # Every replayed event still converts to OpenHands' format.
    for event in replayed:
        if (
            not isinstance(event, CmdOutputChunk)
            and type(event).__name__ != "RuntimeStatusObservation"
        ):
            assert to_openhands_dict(event)


async def test_handwritten_trajectory_with_a_wrong_result_diverges(tmp_path: Path) -> None:
    data = json.loads(HANDWRITTEN.read_text())
    data[9]["extras"]["new_content"] = "alpha\ndelta\n"
    path = tmp_path / "wrong.json"
    path.write_text(json.dumps(data))
    result = await replay_file(path, verify=True, local=True, config=config())
    assert result.divergence is not None
    assert (result.divergence.action_id, result.divergence.observation_id) == (8, 9)
    assert result.divergence.reason == "file content after the edit differs"


async def test_real_wrong_initial_state_diverges_at_its_first_view(tmp_path: Path) -> None:
    result = await replay_file(
        real("wrong_initial_state.json"), verify=True, local=True, config=config()
    )
    divergence = result.divergence
    assert divergence is not None
    assert (divergence.action_id, divergence.observation_id) == (3, 4)
    assert isinstance(divergence.action, FileEditAction)
    assert divergence.action.command == "view"
    assert "-/workspace/game_2048.py" in divergence.diff
    assert result.executed == 1

    # With the file it was recorded with, that view matches (stop before the `mv`,
    # which names the host's /workspace).
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "game_2048.py").write_text("print(2048)\n")
    result = await replay_file(
        real("wrong_initial_state.json"), verify=True, local=True, config=config(workspace), until=4
    )
    assert result.divergence is None
    assert (result.executed, result.matched) == (1, 1)


async def test_real_basic_replays_and_verifies(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    result = await replay_file(
        real("basic.json"), verify=True, local=True, config=config(workspace)
    )
    assert result.divergence is None
    assert (result.executed, result.matched, result.carried) == (1, 1, 2)
    recorded = load_openhands_trajectory(real("basic.json"))
    edit = next(e for e in recorded if isinstance(e, FileEditObservation))
    assert (workspace / "game_2048.py").read_text() == edit.new_content


async def test_execute_mode_does_not_compare(tmp_path: Path) -> None:
    data = json.loads(HANDWRITTEN.read_text())
    data[3]["content"] = "something else entirely"
    path = tmp_path / "t.json"
    path.write_text(json.dumps(data))
    result = await replay_file(path, local=True, config=config())
    assert result.divergence is None
    assert (result.executed, result.matched) == (5, 0)


# --------------------------------------------------------------------------- serve-recorded


async def test_serve_recorded_drives_a_scripted_agent() -> None:
    recording = load_recording(HANDWRITTEN)
    recorded = {s.action.id: s.observation for s in recording.steps}
    script = [s.action for s in recording.steps]
    stream = EventStream()
    async with stream, RecordedRuntime(stream, recording) as rt:
        answers = []
        for action in script[:2]:
            fresh = msgspec.structs.replace(
                action, id=-1, timestamp=None, source=None, thought="mine"
            )
            answers.append(await rt.run(fresh))
        for action, answer in zip(script[:2], answers, strict=True):
            expected = recorded[action.id]
            assert type(answer) is type(expected)
            assert answer.content == expected.content  # type: ignore[attr-defined]
            assert isinstance(stream.get(answer.cause), type(action))  # type: ignore[arg-type]
            assert answer.source == EventSource.ENVIRONMENT
        # A different action: a clear error naming the recorded event, and an answer on the stream.
        with pytest.raises(
            ReplayMismatchError,
            match=r"does not match recorded event 6 \(read /workspace/src/notes.txt\)",
        ) as info:
            await rt.run(FileReadAction("/workspace/src/other.txt"))
        assert info.value.event_id == 6
        assert "differing fields: path" in str(info.value)
        last = stream.get(len(stream) - 1)
        assert isinstance(last, ErrorObservation)
        assert last.error_id == REPLAY_MISMATCH_ERROR_ID
        assert "recorded event 6" in last.content
        # The recording did not advance: the right action still gets its answer.
        answer = await rt.run(FileReadAction("/workspace/src/notes.txt"))
        assert answer.content == "alpha\nbeta\n"  # type: ignore[attr-defined]
        assert rt.position == 3


async def test_serve_recorded_answers_actions_appended_by_others_and_runs_out() -> None:
    recording = Recording(
        [
            CmdRunAction("echo hi", id=0, source=EventSource.AGENT),
            CmdOutputChunk(0, 0, "hi\n", id=1, source=EventSource.ENVIRONMENT),
            CmdOutputObservation("hi", "echo hi", id=2, cause=0, source=EventSource.ENVIRONMENT),
        ],
        "event_log",
    )
    stream = EventStream()
    async with stream, RecordedRuntime(stream, recording) as rt:
        seen: list[Event] = []
        async for event in stream.follow():
            seen.append(event)
            if event.id == 1:  # the READY status: now act like a UI appending an action
                stream.append(CmdRunAction("echo hi"), source=EventSource.USER)
            if isinstance(event, CmdOutputObservation):
                break
        chunk, obs = seen[-2], seen[-1]
        assert isinstance(chunk, CmdOutputChunk)
        assert (chunk.cause, chunk.data) == (2, "hi\n")
        assert isinstance(obs, CmdOutputObservation)
        assert (obs.cause, obs.content) == (2, "hi")
        with pytest.raises(ReplayMismatchError, match="all 1 recorded actions were served") as info:
            await rt.run(CmdRunAction("echo hi"))
        assert info.value.expected is None


async def test_serve_lines_protocol() -> None:
    recording = load_recording(HANDWRITTEN)
    original = json.loads(HANDWRITTEN.read_text())
    lines = [
        json.dumps(original[2]),  # OpenHands form in, OpenHands form out
        "",
        "not json",
        json.dumps({"action": "message", "args": {"content": "hi"}}),
        json.dumps(to_openhands_dict(recording.steps[1].action)),
        encode_event(msgspec.structs.replace(recording.steps[2].action, id=-1)).decode(),
        json.dumps(original[10]),  # out of order: not the next recorded action
    ]
    out: list[bytes] = []
    errors: list[str] = []
    code, served = await serve_lines(
        recording, io.BytesIO("\n".join(lines).encode() + b"\n"), out.append, on_error=errors.append
    )
    assert (code, served) == (1, 3)
    answers = [json.loads(line) for line in out]
    assert answers[0]["observation"] == "run"
    assert answers[0]["content"] == "hello\nworld"
    assert (answers[1]["type"], answers[1]["error_id"]) == ("error", "bad_request")
    assert (answers[2]["observation"], answers[2]["extras"]["error_id"]) == ("error", "bad_request")
    assert (answers[3]["observation"], answers[3]["cause"]) == ("write", 4)
    # Our own format in, our own format out; no id given: the served session's id.
    served_read = decode_event(out[4])
    assert isinstance(served_read, FileReadObservation)
    assert served_read.content == "alpha\nbeta\n"
    assert served_read.cause is not None
    assert served_read.cause >= 0
    assert answers[5]["extras"]["error_id"] == REPLAY_MISMATCH_ERROR_ID
    assert answers[5]["cause"] == 10
    assert "does not match recorded event 8 (edit str_replace" in answers[5]["content"]
    assert len(errors) == 1
    assert "recorded event 8" in errors[0]


# --------------------------------------------------------------------------- CLI


def cli_args(path: Path, **overrides: object) -> argparse.Namespace:
    values: dict[str, object] = {
        "path": str(path),
        "verify": False,
        "serve": False,
        "base_image": None,
        "local": True,
        "workspace": None,
        "until": None,
        "output_log": None,
    }
    values.update({k: str(v) if isinstance(v, Path) else v for k, v in overrides.items()})
    return argparse.Namespace(**values)


def console_to(out: io.StringIO) -> Console:
    return Console(file=out, width=200, highlight=False, force_terminal=False)


async def test_cli_refuses_a_file_that_is_neither(tmp_path: Path) -> None:
    path = tmp_path / "notes.md"
    path.write_text("# not a recording\n")
    out = io.StringIO()
    assert await replay_command(cli_args(path, verify=True), console_to(out)) == 2
    lines = out.getvalue().strip().splitlines()
    assert len(lines) == 1
    assert lines[0] == (
        f"error: {path}: neither an openhands-rt event log (no log header) "
        "nor an OpenHands trajectory (a JSON list of events)"
    )


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"serve": True, "verify": True}, "--serve runs no sandbox"),
        ({"until": "seven"}, "--until takes an event id"),
        ({"image": "x:y"}, "--local runs no container"),
        ({"max_in_flight": 0}, "--max-in-flight takes a number >= 1"),
    ],
)
async def test_cli_refuses_bad_options(overrides: dict[str, object], message: str) -> None:
    out = io.StringIO()
    assert await replay_command(cli_args(HANDWRITTEN, **overrides), console_to(out)) == 2
    assert message in out.getvalue()


async def test_cli_refuses_an_existing_output_log(tmp_path: Path) -> None:
    existing = tmp_path / "existing.log"
    existing.write_bytes(b"data")
    out = io.StringIO()
    assert await replay_command(cli_args(HANDWRITTEN, output_log=existing), console_to(out)) == 2
    assert "exists and is not empty" in out.getvalue()
    assert existing.read_bytes() == b"data"


async def test_cli_verify_with_until_and_output_log(tmp_path: Path) -> None:
    out = io.StringIO()
    output = tmp_path / "new.log"
    code = await replay_command(
        cli_args(HANDWRITTEN, verify=True, until=5, output_log=output), console_to(out)
    )
    assert code == 0, out.getvalue()
    assert "all 2 observations match; 2 actions run, 2 other events carried" in out.getvalue()
    assert sum(isinstance(e, CmdRunAction | FileWriteAction) for e in read_log(output)) == 2


async def test_cli_verify_divergence_of_a_real_trajectory() -> None:
    out = io.StringIO()
    code = await replay_command(
        cli_args(real("wrong_initial_state.json"), verify=True), console_to(out)
    )
    assert code == 1
    text = out.getvalue()
    assert "divergence at recorded event 4 (the observation of action 3): content differs" in text
    assert "action 3: edit view /workspace" in text


def test_cli_serve_over_stdin_and_stdout() -> None:
    original = json.loads(HANDWRITTEN.read_text())
    program = (
        "import argparse, asyncio, sys\n"
        "from rich.console import Console\n"
        "from openhands_rt.replay_cli import replay_command\n"
        "args = argparse.Namespace(path=sys.argv[1], verify=False, serve=True, base_image=None,\n"
        "    local=False, workspace=None, until=None, output_log=None)\n"
        "sys.exit(asyncio.run(replay_command(args, Console(stderr=True))))\n"
    )
    stdin = "".join(json.dumps({**original[i], "id": 100 + i}) + "\n" for i in (2, 4, 6))
    done = subprocess.run(
        [sys.executable, "-c", program, str(HANDWRITTEN)],
        input=stdin.encode(),
        capture_output=True,
        timeout=60,
        check=False,
        env={**os.environ, "NO_COLOR": "1"},
    )
    assert done.returncode == 0, done.stderr.decode()
    answers = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert [a["observation"] for a in answers] == ["run", "write", "read"]
    assert [a["cause"] for a in answers] == [102, 104, 106]  # the ids the client gave
    assert answers[2]["content"] == "alpha\nbeta\n"
    assert "served 3 of 5 recorded actions" in done.stderr.decode()

    mismatch = subprocess.run(
        [sys.executable, "-c", program, str(HANDWRITTEN)],
        input=(json.dumps(original[10]) + "\n").encode(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert mismatch.returncode == 1
    assert "does not match recorded event 2" in mismatch.stderr.decode()
    assert json.loads(mismatch.stdout)["extras"]["error_id"] == REPLAY_MISMATCH_ERROR_ID
