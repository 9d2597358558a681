"""Who owns the runtime's tasks: one supervisor from connect() to aclose(), never silent."""

from __future__ import annotations

import asyncio
from pathlib import Path

import anyio
import pytest

from events import (
    CmdOutputObservation,
    CmdRunAction,
    ErrorObservation,
    EventStream,
    RuntimeStatus,
    RuntimeStatusObservation,
)
from events.wire import ErrorId
from openhands_rt import LocalRuntime, SandboxConfig, SandboxStartError
from openhands_rt.channel import ChannelClient


def config(workspace: Path) -> SandboxConfig:
    return SandboxConfig(workspace_dir=str(workspace), no_change_timeout=5.0, timeout=30.0)


def runtime_tasks() -> list[str]:
    names = (task.get_name() for task in asyncio.all_tasks())
    return sorted(name for name in names if name.startswith(("runtime-", "local-server-")))


async def until_pending(channel: ChannelClient) -> None:
    with anyio.fail_after(10):
        while not channel.pending:  # noqa: ASYNC110 (the channel has no event for this)
            await anyio.sleep(0.01)


def statuses(stream: EventStream) -> list[RuntimeStatusObservation]:
    return [e for e in stream.iter_events() if isinstance(e, RuntimeStatusObservation)]


async def test_connect_and_aclose_from_different_tasks(tmp_path: Path) -> None:
    async with EventStream() as stream:
        rt = LocalRuntime(stream, config(tmp_path), session_id="split")
        assert runtime_tasks() == []  # the constructor starts nothing
        await asyncio.create_task(rt.connect())  # a fixture's setup...
        assert runtime_tasks() == [
            "local-server-split-output",
            "runtime-split-channel",
            "runtime-split-log-failure",
            "runtime-split-supervisor",
        ]
        obs = await asyncio.wait_for(rt.run(CmdRunAction("echo still here")), 20)
        assert isinstance(obs, CmdOutputObservation)
        assert obs.content.strip() == "still here"
        process = rt.process
        assert process is not None
        await asyncio.create_task(rt.aclose())  # ...and its teardown, in another task
        assert process.returncode is not None
        await asyncio.sleep(0)
        assert runtime_tasks() == []
        assert [s.status for s in statuses(stream)] == ["starting", "ready", "closed"]


async def test_a_failed_start_leaves_no_task_behind() -> None:
    class BrokenServer(LocalRuntime):
        def _server_command(self, working_dir: str) -> list[str]:
            return ["sh", "-c", "echo 'boom: not a server' >&2; exit 3"]

    async with EventStream() as stream:
        rt = BrokenServer(stream, session_id="broken")
        with pytest.raises(SandboxStartError, match="boom: not a server"):
            await rt.connect()
        await asyncio.sleep(0)
        assert runtime_tasks() == []
        assert not rt._supervisor.running
        await rt.aclose()


async def test_the_channel_readers_death_is_the_runtimes_error_event(tmp_path: Path) -> None:
    async with (
        EventStream() as stream,
        LocalRuntime(stream, config(tmp_path), session_id="reader") as rt,
    ):
        channel = rt._channel
        assert isinstance(channel, ChannelClient)

        def broken_frame(data: bytes | str) -> None:
            raise RuntimeError("a frame handler that raises")

        running = asyncio.create_task(rt.run(CmdRunAction("sleep 0.5; echo late")))
        await until_pending(channel)
        channel.protocol.frame = broken_frame  # type: ignore[method-assign]
        obs = await asyncio.wait_for(running, 20)
        # The pending action is answered, on the stream, with the reason...
        assert isinstance(obs, ErrorObservation)
        assert obs.error_id == ErrorId.CONNECTION_LOST
        assert "RuntimeError: a frame handler that raises" in obs.content
        assert stream.get(obs.id) == obs
        # ...and the runtime says so.
        last = statuses(stream)[-1]
        assert last.status is RuntimeStatus.ERROR
        assert "the action channel failed: RuntimeError" in last.message
        assert last.id > obs.id
        # Nothing waits for an answer that cannot come: the next action fails at once.
        again = await asyncio.wait_for(rt.run(CmdRunAction("echo again")), 5)
        assert isinstance(again, ErrorObservation)
        assert again.error_id == ErrorId.CONNECTION_LOST
    assert statuses(stream)[-1].status is RuntimeStatus.CLOSED


async def test_a_task_that_dies_takes_the_runtime_down_loudly(tmp_path: Path) -> None:
    async with (
        EventStream() as stream,
        LocalRuntime(stream, config(tmp_path), session_id="loud") as rt,
    ):
        running = asyncio.create_task(rt.run(CmdRunAction("sleep 30")))
        channel = rt._channel
        assert isinstance(channel, ChannelClient)
        await until_pending(channel)

        async def dies() -> None:
            raise OSError("a watcher lost its file")

        rt._start_soon(dies, name="runtime-loud-watcher")
        obs = await asyncio.wait_for(running, 10)
        assert isinstance(obs, ErrorObservation)
        assert "OSError: a watcher lost its file" in obs.content
        last = statuses(stream)[-1]
        assert last.status is RuntimeStatus.ERROR
        assert last.message == "the runtime failed: OSError: a watcher lost its file"
        await asyncio.sleep(0)
        # Its other tasks were cancelled with it.
        assert "runtime-loud-channel" not in runtime_tasks()
    assert runtime_tasks() == []
