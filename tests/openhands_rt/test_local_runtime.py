"""LocalRuntime end to end: stream -> channel -> server subprocess -> bash -> stream."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from events import (
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
    RuntimeStatusObservation,
)
from openhands_rt import LocalRuntime, PluginRequirement, SandboxConfig, SandboxStartError
from openhands_rt.plugins import UnknownPluginError


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is gone for our purposes once reaped.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[LocalRuntime]:
    stream = EventStream()
    config = SandboxConfig(workspace_dir=str(tmp_path), no_change_timeout=2.0, timeout=30.0)
    async with stream, LocalRuntime(stream, config, session_id="t") as rt:
        yield rt


async def test_echo_through_the_stream(runtime: LocalRuntime) -> None:
    obs = await runtime.run(CmdRunAction("echo hi"))
    assert isinstance(obs, CmdOutputObservation)
    assert obs.content.strip() == "hi"
    assert obs.exit_code == 0
    assert obs.source == EventSource.ENVIRONMENT
    assert obs.id >= 0
    action = runtime.stream.get(obs.cause)  # type: ignore[arg-type]
    assert isinstance(action, CmdRunAction)
    assert action.command == "echo hi"
    assert action.source == EventSource.AGENT
    assert runtime.stream.get(obs.id) == obs


async def test_status_events_and_order(tmp_path: Path) -> None:
    stream = EventStream()
    async with stream:
        async with LocalRuntime(stream, SandboxConfig(workspace_dir=str(tmp_path))) as rt:
            await rt.run(CmdRunAction("true"))
        statuses = [
            e.status for e in stream.iter_events() if isinstance(e, RuntimeStatusObservation)
        ]
    assert statuses == ["starting", "ready", "closed"]


async def test_action_appended_by_someone_else_is_executed(runtime: LocalRuntime) -> None:
    stream = runtime.stream
    answered: asyncio.Future[Event] = asyncio.get_running_loop().create_future()

    async def watch(event: Event) -> None:
        if isinstance(event, CmdOutputObservation) and not answered.done():
            answered.set_result(event)

    stream.subscribe(watch, subscriber_id="watcher")
    action = stream.append(CmdRunAction("echo from-user"), source=EventSource.USER)
    obs = await asyncio.wait_for(answered, 10)
    assert obs.cause == action.id
    assert isinstance(obs, CmdOutputObservation)
    assert "from-user" in obs.content


async def test_environment_actions_are_not_executed(runtime: LocalRuntime, tmp_path: Path) -> None:
    runtime.stream.append(
        CmdRunAction(f"touch {tmp_path}/should-not-exist"), source=EventSource.ENVIRONMENT
    )
    await runtime.run(CmdRunAction("true"))  # the runtime saw the first one before this one
    assert not (tmp_path / "should-not-exist").exists()


async def test_files_and_editor(runtime: LocalRuntime, tmp_path: Path) -> None:
    await runtime.run(FileWriteAction("app.py", "print('v1')\n"))
    read = await runtime.run(FileReadAction("app.py"))
    assert isinstance(read, FileReadObservation)
    assert "print('v1')" in read.content
    edit = await runtime.run(
        FileEditAction(str(tmp_path / "app.py"), "str_replace", old_str="v1", new_str="v2")
    )
    assert isinstance(edit, FileEditObservation)
    assert (tmp_path / "app.py").read_text() == "print('v2')\n"
    run = await runtime.run(CmdRunAction("python3 app.py"))
    assert isinstance(run, CmdOutputObservation)
    assert run.content.strip() == "v2"


async def test_chunks_are_on_the_stream(runtime: LocalRuntime) -> None:
    obs = await runtime.run(CmdRunAction("for i in 1 2 3; do echo n$i; sleep 0.2; done"))
    chunks = [
        e
        for e in runtime.stream.iter_events()
        if isinstance(e, CmdOutputChunk) and e.cause == obs.cause
    ]
    assert chunks, "a command printing over 0.6 s streams chunks"
    assert all(c.id < obs.id for c in chunks)
    assert "".join(c.data for c in chunks).strip() == obs.content.strip()  # type: ignore[attr-defined]


async def test_reconnect_mid_command_runs_it_once(runtime: LocalRuntime, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    task = asyncio.create_task(runtime.run(CmdRunAction(f"sleep 1; echo done | tee -a {marker}")))
    await asyncio.sleep(0.3)
    channel = runtime._channel
    assert channel is not None
    await channel.drop_connection()
    obs = await asyncio.wait_for(task, 15)
    assert isinstance(obs, CmdOutputObservation)
    assert obs.content.count("done") == 1
    assert marker.read_text() == "done\n"
    assert channel.reconnects >= 1
    answers = [e for e in runtime.stream.iter_events() if isinstance(e, CmdOutputObservation)]
    assert len([a for a in answers if a.cause == obs.cause]) == 1


async def test_close_leaves_no_process_behind(tmp_path: Path) -> None:
    stream = EventStream()
    async with stream:
        rt = LocalRuntime(stream, SandboxConfig(workspace_dir=str(tmp_path)))
        async with rt:
            assert rt.process is not None
            server_pid = rt.process.pid
            obs = await rt.run(CmdRunAction("echo $$; sleep 300 & echo $!"))
            assert isinstance(obs, CmdOutputObservation)
            lines = obs.content.split()  # bash also prints the job line "[1] PID"
            bash_pid, sleep_pid = int(lines[0]), int(lines[-1])
            assert pid_alive(bash_pid)
            assert pid_alive(sleep_pid)
        deadline = asyncio.get_running_loop().time() + 5
        while any(pid_alive(p) for p in (server_pid, bash_pid, sleep_pid)):
            assert asyncio.get_running_loop().time() < deadline, "processes left behind"
            await asyncio.sleep(0.05)


async def test_temporary_workspace_is_removed(tmp_path: Path) -> None:
    stream = EventStream()
    async with stream:
        async with LocalRuntime(stream) as rt:
            obs = await rt.run(CmdRunAction("pwd"))
            assert isinstance(obs, CmdOutputObservation)
            workspace = Path(obs.content.strip())
            assert workspace.is_dir()
        assert not workspace.exists()


async def test_unknown_plugin_fails_before_start() -> None:
    stream = EventStream()
    async with stream:
        rt = LocalRuntime(stream, SandboxConfig(plugins=[PluginRequirement("no-such-plugin")]))
        with pytest.raises(UnknownPluginError, match="no-such-plugin"):
            await rt.connect()
        assert rt.process is None


class _BrokenServerRuntime(LocalRuntime):
    def _server_command(self, working_dir: str) -> list[str]:
        return [
            sys.executable,
            "-c",
            "import sys; print('boom: no server here', file=sys.stderr); sys.exit(3)",
        ]


async def test_start_error_carries_the_server_stderr() -> None:
    stream = EventStream()
    async with stream:
        rt = _BrokenServerRuntime(stream)
        with pytest.raises(SandboxStartError, match="boom: no server here"):
            await rt.connect()
        statuses = [e for e in stream.iter_events() if isinstance(e, RuntimeStatusObservation)]
        assert [s.status for s in statuses] == ["starting", "error"]


async def test_run_after_close_raises(tmp_path: Path) -> None:
    stream = EventStream()
    async with stream:
        rt = LocalRuntime(stream, SandboxConfig(workspace_dir=str(tmp_path)))
        async with rt:
            pass
        with pytest.raises(Exception, match=r"not connected|closed"):
            await rt.run(CmdRunAction("true"))


async def test_error_observation_for_missing_file(runtime: LocalRuntime) -> None:
    obs = await runtime.run(FileReadAction("/definitely/not/here.txt"))
    assert isinstance(obs, ErrorObservation)
    assert "not found" in obs.content.lower()


async def test_actions_appended_before_connect_are_run_once(tmp_path: Path) -> None:
    stream = EventStream()
    async with stream:
        early = stream.append(CmdRunAction(f"echo early >> {tmp_path}/log"))
        async with LocalRuntime(stream, SandboxConfig(workspace_dir=str(tmp_path))) as rt:
            await rt.run(CmdRunAction("true"))  # the shell runs the resent one first
            assert [a.id for a in rt.pending_actions()] == []
        answers = [
            e
            for e in stream.iter_events()
            if isinstance(e, CmdOutputObservation) and e.cause == early.id
        ]
    assert len(answers) == 1
    assert (tmp_path / "log").read_text() == "early\n"
