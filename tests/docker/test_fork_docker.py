"""fork(source, at_event=N) against a real engine, in both runtime modes (no snapshot yet).

The source is a closed durable log (a session long finished), a live stream,
or the log of a process killed mid-session; the fork's sandbox is checked
from the inside: files in and outside the workspace, the shell's directory
and its exported environment.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import sys
import textwrap
from pathlib import Path

import anyio
import pytest
from aiodocker.exceptions import DockerError
from rich.console import Console
from support import ConfigFactory, session_id, sh

from events import (
    CmdOutputObservation,
    CmdRunAction,
    ErrorObservation,
    Event,
    EventStream,
    FileWriteAction,
    RuntimeStatusObservation,
)
from events.log import read_log
from events.wire import ErrorId
from openhands_rt import DockerRuntime, SandboxConfig, fork
from openhands_rt.cli import build_parser
from openhands_rt.docker_client import open_docker
from openhands_rt.docker_runtime import CONTAINER_PREFIX
from openhands_rt.fork_cli import fork_command
from openhands_rt.forking import ForkReport

pytestmark = pytest.mark.docker

REPO = Path(__file__).resolve().parents[2]

# What the source session does; the fork point is right after the observation of the
# last command here (the line marked "fork here").
BEFORE = [
    "mkdir -p /workspace/proj && cd /workspace/proj && echo alpha > a.txt",
    "echo home > ~/home.txt && export MODE=fast",
    "cd /tmp && echo beta >> /workspace/proj/a.txt",
    "cd /workspace/proj",  # fork here
]
AFTER = [
    "rm a.txt /tmp/outside.txt && export MODE=slow && cd /",
]
CHECK = "pwd; echo $MODE; cat a.txt /tmp/outside.txt ~/home.txt"
RESTORED = ["/workspace/proj", "fast", "alpha", "beta", "outside", "home"]


async def record(stream: EventStream, rt: DockerRuntime) -> int:
    """Run the source session on ``rt``; the id of the fork point."""
    for command in BEFORE[:2]:
        await sh(rt, command)
    await rt.run(FileWriteAction("/tmp/outside.txt", "outside\n"))  # outside the workspace
    for command in BEFORE[2:]:
        await sh(rt, command)
    at = len(stream) - 1
    assert isinstance(stream.get(at), CmdOutputObservation)
    for command in AFTER:
        await sh(rt, command)
    return at


async def record_log(log: Path, config: SandboxConfig) -> int:
    stream = EventStream(log_path=log)
    async with stream, DockerRuntime(stream, config, session_id=session_id()) as rt:
        return await record(stream, rt)


async def test_fork_of_a_closed_log_restores_files_cwd_and_env(
    make_config: ConfigFactory, oci_runtime: str, tmp_path: Path
) -> None:
    config = make_config(oci_runtime=oci_runtime)
    log = tmp_path / "source.log"
    at = await record_log(log, config)
    source = log.read_bytes()
    reports: list[ForkReport] = []
    async with fork(
        log, at_event=at, config=config, session_id=session_id(), on_report=reports.append
    ) as rt:
        assert isinstance(rt, DockerRuntime)
        assert list(rt.stream.iter_events(0, at)) == read_log(log)[: at + 1]
        obs = await sh(rt, CHECK)
        assert obs.content.split() == RESTORED
        assert obs.exit_code == 0
    assert log.read_bytes() == source
    (report,) = reports
    assert (report.executed, report.matched, report.diverged, report.pending) == (5, 5, 0, 0)
    assert report.snapshot_id is None


async def test_an_agent_tries_two_strategies_from_the_same_state(
    make_config: ConfigFactory, stream: EventStream
) -> None:
    config = make_config()
    async with DockerRuntime(stream, config, session_id=session_id()) as source_rt:
        at = await record(stream, source_rt)
        length = len(stream)
        async with (
            fork(stream, at, config=config, session_id=session_id()) as first,
            fork(stream, at, config=config, session_id=session_id()) as second,
        ):
            assert first.stream is not second.stream
            assert first.stream.stream_id != second.stream.stream_id
            await sh(first, "echo plan-a >> a.txt && export MODE=a")
            await sh(second, "rm a.txt && export MODE=b && cd /tmp")
            a = await sh(first, "pwd; echo $MODE; cat a.txt")
            b = await sh(second, "pwd; echo $MODE; ls /workspace/proj")
            assert a.content.split() == ["/workspace/proj", "a", "alpha", "beta", "plan-a"]
            assert b.content.split() == ["/tmp", "b"]
            # Each fork's stream holds its own continuation after the same copies.
            assert list(first.stream.iter_events(0, at)) == list(second.stream.iter_events(0, at))
        # The source: no event appended, its sandbox as the session left it.
        assert len(stream) == length
        obs = await sh(source_rt, "pwd; echo $MODE; ls /workspace/proj")
        assert obs.content.split() == ["/", "slow"]


async def test_step_n_is_re_run_with_a_different_command(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    config = make_config()
    log = tmp_path / "source.log"
    at = await record_log(log, config)
    events = read_log(log)
    step_n = next(e for e in events if isinstance(e, CmdRunAction) and e.command == AFTER[0])
    async with fork(log, step_n.id - 1, config=config, session_id=session_id()) as rt:
        assert len(rt.stream) > step_n.id  # the copies stop before step N: it is not there
        assert rt.stream.get(step_n.id) != step_n
        await sh(rt, "mv a.txt b.txt && export MODE=other")
        obs = await sh(rt, "pwd; echo $MODE; ls; cat /tmp/outside.txt")
        assert obs.content.split() == ["/workspace/proj", "other", "b.txt", "outside"]
    assert at == step_n.id - 1


CRASHING_HOST = textwrap.dedent(
    """
    import asyncio, json, sys
    from events import CmdRunAction, EventStream
    from openhands_rt import DockerRuntime, SandboxConfig

    async def main(log: str, session: str, config_json: str) -> None:
        config = SandboxConfig(**json.loads(config_json))
        stream = EventStream(log_path=log)
        rt = DockerRuntime(stream, config, session_id=session)
        await rt.connect()
        await rt.run(CmdRunAction("echo one > /workspace/f && export K=v && cd /tmp"))
        # In flight when the host dies: appended (and on disk), never answered.
        stream.append(CmdRunAction("echo late >> /workspace/f"))
        await stream.flush()
        print("in flight", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main(*sys.argv[1:]))
    """
)


CONFIG_FIELDS = (
    "runtime_mode",
    "base_container_image",
    "runtime_container_image",
    "labels",
    "timeout",
    "no_change_timeout",
)


async def test_a_session_whose_host_died_is_recovered_from_its_log(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    config = make_config()
    log = tmp_path / "crashed.log"
    dead_session = session_id()
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CRASHING_HOST,
        str(log),
        dead_session,
        json.dumps({name: getattr(config, name) for name in CONFIG_FIELDS}),
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        assert child.stdout is not None
        with anyio.fail_after(120):
            line = await child.stdout.readline()
        assert line == b"in flight\n"
        child.send_signal(signal.SIGKILL)
        await child.wait()
        events = read_log(log)
        last = events[-1]
        # The log may end with the action itself, or with an output chunk or the answer
        # the dying host still wrote: the fork continues from whatever it holds.
        in_flight = next(e for e in reversed(events) if isinstance(e, CmdRunAction))
        assert in_flight.command == "echo late >> /workspace/f"
        reports: list[ForkReport] = []
        async with fork(
            log, last.id, config=config, session_id=session_id(), on_report=reports.append
        ) as rt:
            obs = await sh(rt, "pwd; echo $K; cat /workspace/f")
            assert obs.content.split() == ["/tmp", "v", "one", "late"]
        answered = any(
            isinstance(e, CmdOutputObservation) and e.cause == in_flight.id for e in events
        )
        assert reports[0].pending == (0 if answered else 1)
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
        async with open_docker() as docker:
            try:
                container = await docker.containers.get(CONTAINER_PREFIX + dead_session)
                await container.delete(force=True)
            except DockerError as exc:
                if exc.status != 404:
                    raise


async def test_a_divergence_names_the_first_differing_event(
    make_config: ConfigFactory, stream: EventStream
) -> None:
    config = make_config()
    async with DockerRuntime(stream, config, session_id=session_id()) as rt:
        await sh(rt, "echo one > /workspace/f")
        noise = await sh(rt, "od -An -tx1 -N16 /dev/urandom")  # differs on every run
        await sh(rt, "echo two >> /workspace/f")
    end = len(stream) - 1
    async with fork(stream, end, config=config, session_id=session_id()) as forked:
        errors = [e for e in forked.stream.iter_events(end + 1) if isinstance(e, ErrorObservation)]
        (error,) = errors
        assert error.error_id == ErrorId.FORK_DIVERGED
        assert error.content.startswith(
            f"divergence at recorded event {noise.id} (the observation of action "
            f"{noise.cause}): command output differs"
        )
        # The re-execution went on past it.
        assert (await sh(forked, "cat /workspace/f")).content.split() == ["one", "two"]


async def test_the_fork_command_keeps_the_fork_log(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    config = make_config()
    log = tmp_path / "source.log"
    at = await record_log(log, config)
    out = tmp_path / "fork.log"
    args: argparse.Namespace = build_parser().parse_args(
        ["fork", str(log), "--at", str(at), "--out", str(out)]
    )
    text = io.StringIO()
    code = await fork_command(args, config, Console(file=text, width=200, highlight=False))
    assert code == 0, text.getvalue()
    printed = text.getvalue()
    assert f"forking {log} at event {at}" in printed
    assert f"{at + 1} events copied; fresh sandbox, 5 actions re-executed: 5 matched" in printed
    assert f"the fork's event log: {out}" in printed
    kept: list[Event] = read_log(out)
    assert kept[: at + 1] == read_log(log)[: at + 1]
    statuses = [e for e in kept[at + 1 :] if isinstance(e, RuntimeStatusObservation)]
    assert [s.status for s in statuses] == ["starting", "ready", "closed"]
    assert "5 actions re-executed (5 matched)" in statuses[0].message
    # Forking into a log that holds events is refused: exit code 2.
    again = build_parser().parse_args(["fork", str(log), "--at", "0", "--out", str(out)])
    assert await fork_command(again, config, Console(file=io.StringIO())) == 2


async def test_the_fork_command_opens_a_shell_on_the_fork(
    make_config: ConfigFactory,
    runtime_mode: str,
    runtime_image: str,
    base_image: str,
    tmp_path: Path,
) -> None:
    log = tmp_path / "source.log"
    at = await record_log(log, make_config())
    typed = tmp_path / "typed.txt"
    typed.write_text("echo mode=$MODE; pwd\ncat a.txt\n")
    mounted = runtime_mode == "mount"
    image = ["--no-build", "--base-image", base_image] if mounted else ["--image", runtime_image]
    with typed.open("rb") as stdin:
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "openhands_rt.cli", "fork", str(log), "--at", str(at)),
            *("--shell", *image),
            stdin=stdin,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "COLUMNS": "200", "PYTHONPATH": str(REPO)},
        )
        with anyio.fail_after(180):
            stdout, stderr = await process.communicate()
    text = stdout.decode()
    assert process.returncode == 0, text + stderr.decode()
    assert f"{at + 1} events copied" in text
    assert "mode=fast" in text
    assert "/workspace/proj" in text
    assert "alpha\nbeta" in text
