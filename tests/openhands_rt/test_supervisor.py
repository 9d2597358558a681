"""Supervisor: one task group, opened and closed by different tasks, never silent.

First the class itself (what the runtime's group and a Docker sandbox's group
rely on), then the runtime's use of it: one supervisor from connect() to aclose().
"""

from __future__ import annotations

import asyncio
import builtins
import logging
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
from openhands_rt import LocalRuntime, SandboxClosedError, SandboxConfig, SandboxStartError
from openhands_rt.channel import ChannelClient
from openhands_rt.supervisor import Supervisor, describe_error


class Failures:
    def __init__(self) -> None:
        self.seen: list[Exception] = []
        self.heard = anyio.Event()

    def __call__(self, exc: Exception) -> None:
        self.seen.append(exc)
        self.heard.set()


def supervisor_tasks(name: str) -> list[str]:
    names = (task.get_name() for task in asyncio.all_tasks())
    return sorted(n for n in names if n.startswith(f"{name}-"))


# ---------------------------------------------------------------- the class


async def test_nothing_runs_before_start_and_after_close() -> None:
    failures = Failures()
    supervisor = Supervisor("t", on_failure=failures)
    assert not supervisor.running
    assert supervisor_tasks("t") == []  # the constructor starts nothing
    with pytest.raises(SandboxClosedError, match="not running"):
        supervisor.start_soon(anyio.sleep, 0, name="early")
    assert await supervisor.start() is True
    assert supervisor.running
    assert supervisor_tasks("t") == ["t-supervisor"]
    assert await supervisor.start() is False  # running: this call opened nothing
    await supervisor.aclose()
    assert not supervisor.running
    await asyncio.sleep(0)
    assert supervisor_tasks("t") == []
    with pytest.raises(SandboxClosedError, match="not running"):
        supervisor.start_soon(anyio.sleep, 0, name="late")
    await supervisor.aclose()  # twice is fine
    assert failures.seen == []


async def test_children_are_named() -> None:
    supervisor = Supervisor("named", on_failure=Failures())
    await supervisor.start()

    async def watcher() -> None:
        await anyio.sleep_forever()

    supervisor.start_soon(watcher, name="named-given")
    supervisor.start_soon(watcher)
    await asyncio.sleep(0)
    assert supervisor_tasks("named") == ["named-given", "named-supervisor", "named-watcher"]
    await supervisor.aclose()


async def test_close_cancels_the_children_and_waits_for_them() -> None:
    supervisor = Supervisor("t", on_failure=Failures())
    await supervisor.start()
    started, finished = anyio.Event(), anyio.Event()

    async def forever() -> None:
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.01)  # a child's cleanup may await; close waits for it
            finished.set()

    supervisor.start_soon(forever, name="forever")
    await started.wait()
    await supervisor.aclose()
    assert finished.is_set()


async def test_start_and_close_from_different_tasks() -> None:
    supervisor = Supervisor("t", on_failure=Failures())
    cancelled = anyio.Event()

    async def forever() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()

    async def open_it() -> bool:
        opened = await supervisor.start()
        supervisor.start_soon(forever, name="forever")
        return opened

    assert await asyncio.get_running_loop().create_task(open_it()) is True
    assert supervisor.running
    await asyncio.get_running_loop().create_task(supervisor.aclose())
    assert cancelled.is_set()
    assert not supervisor.running


async def test_a_cancelled_close_still_waits_for_the_children() -> None:
    supervisor = Supervisor("t", on_failure=Failures())
    await supervisor.start()
    release, finished, closed = anyio.Event(), anyio.Event(), anyio.Event()

    async def slow_cleanup() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True):
                await release.wait()
            finished.set()

    supervisor.start_soon(slow_cleanup, name="slow")
    await asyncio.sleep(0)
    async with anyio.create_task_group() as task_group:

        async def close_it(scope: anyio.CancelScope) -> None:
            with scope:
                await supervisor.aclose()
            closed.set()

        scope = anyio.CancelScope()
        task_group.start_soon(close_it, scope)
        await anyio.sleep(0.05)
        scope.cancel()  # the closer's own deadline passes...
        await anyio.sleep(0.05)
        assert not closed.is_set()  # ...but a close is shielded: it waits for the group
        release.set()
    assert finished.is_set()
    assert closed.is_set()


async def test_a_dying_child_takes_the_group_down_loudly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failures = Failures()
    supervisor = Supervisor("owner-x", on_failure=failures)
    await supervisor.start()
    sibling_cancelled = anyio.Event()

    async def sibling() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            sibling_cancelled.set()

    async def dies() -> None:
        raise ValueError("the watcher broke")

    supervisor.start_soon(sibling, name="sibling")
    with caplog.at_level(logging.ERROR, logger="openhands_rt.supervisor"):
        supervisor.start_soon(dies, name="dies")
        with anyio.fail_after(5):
            await sibling_cancelled.wait()
            await failures.heard.wait()
    assert len(failures.seen) == 1
    assert describe_error(failures.seen[0]) == "ValueError: the watcher broke"
    assert "owner-x: a task died" in caplog.text
    assert "ValueError: the watcher broke" in caplog.text  # with its traceback
    assert not supervisor.running
    with pytest.raises(SandboxClosedError, match="not running"):
        supervisor.start_soon(sibling, name="too-late")
    await supervisor.aclose()
    # The owner can open it again (the next connect()).
    assert await supervisor.start() is True
    assert supervisor.running
    await supervisor.aclose()


async def test_after_a_failure_start_opens_a_new_group_without_a_close() -> None:
    failures = Failures()
    supervisor = Supervisor("t", on_failure=failures)
    await supervisor.start()

    async def dies() -> None:
        raise OSError("gone")

    supervisor.start_soon(dies, name="dies")
    with anyio.fail_after(5):
        await failures.heard.wait()
    assert await supervisor.start() is True
    assert supervisor.running
    await supervisor.aclose()
    assert [describe_error(e) for e in failures.seen] == ["OSError: gone"]


async def test_a_child_may_close_its_own_group() -> None:
    supervisor = Supervisor("t", on_failure=Failures())
    await supervisor.start()
    done = anyio.Event()
    inside: list[bool] = []

    async def closes_itself() -> None:
        inside.append(supervisor.is_current())
        assert await supervisor.start() is False  # from inside: a no-op
        await supervisor.aclose()  # cancels, does not wait for itself
        done.set()

    supervisor.start_soon(closes_itself, name="closer")
    with anyio.fail_after(5):
        await done.wait()
    assert inside == [True]
    assert not supervisor.is_current()
    assert not supervisor.running
    # A later start() from outside waits for that group to end and opens a new one.
    with anyio.fail_after(5):
        assert await supervisor.start() is True
    assert supervisor.running
    await supervisor.aclose()


async def test_the_tasks_a_child_starts_are_inside_its_group() -> None:
    outer = Supervisor("outer", on_failure=Failures())
    other = Supervisor("other", on_failure=Failures())
    await outer.start()
    await other.start()
    seen: dict[str, list[bool]] = {}
    done = anyio.Event()

    async def nested(label: str) -> None:
        seen[label] = [outer.is_current(), other.is_current()]

    async def child() -> None:
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(nested, "grandchild")
        # A task it starts in another supervisor's group belongs to that one.
        other.start_soon(nested, "other's child", name="other-nested")
        done.set()

    outer.start_soon(child, name="outer-child")
    with anyio.fail_after(5):
        await done.wait()
        while "other's child" not in seen:  # noqa: ASYNC110 (a test's own task)
            await anyio.sleep(0.01)
    assert seen == {"grandchild": [True, False], "other's child": [False, True]}
    assert not outer.is_current()
    await outer.aclose()
    await other.aclose()


async def test_a_start_cancelled_while_waiting_leaves_no_task_behind() -> None:
    supervisor = Supervisor("cancelled", on_failure=Failures())
    starting = asyncio.create_task(supervisor.start())
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    await asyncio.sleep(0)
    assert supervisor_tasks("cancelled") == []
    assert not supervisor.running


def test_describe_error_names_the_one_error_of_a_group() -> None:
    error = ValueError("x")
    assert describe_error(error) == "ValueError: x"
    assert describe_error(builtins.ExceptionGroup("g", [error])) == "ValueError: x"
    nested = builtins.BaseExceptionGroup(
        "outer", [builtins.ExceptionGroup("inner", [KeyError("k")])]
    )
    assert describe_error(nested) == "KeyError: 'k'"
    two = builtins.ExceptionGroup("two", [ValueError("a"), OSError("b")])
    assert describe_error(two) == "ExceptionGroup: two (2 sub-exceptions)"


# ---------------------------------------------------------------- the runtime's group


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
