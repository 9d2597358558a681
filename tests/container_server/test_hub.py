"""ChannelHub, the hub's asyncio adapter: runs in its task group, answers in outboxes.

The executor here is a real ActionExecutor whose ``run`` is replaced per test (no
shell is started): what is under test is the task handling around it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import pytest

from container_server.chunks import ChunkSink
from container_server.executor import ActionExecutor
from container_server.hub import ChannelHub, Outbox
from events import (
    CmdOutputChunk,
    CmdOutputObservation,
    CmdRunAction,
    ErrorObservation,
    Event,
    Observation,
    RuntimeStatus,
    RuntimeStatusObservation,
)
from events.wire import RunnableAction

Run = Callable[[RunnableAction, ChunkSink | None], Awaitable[Observation]]


class ScriptedExecutor(ActionExecutor):
    def __init__(self, tmp_path: Path, run: Run) -> None:
        super().__init__(working_dir=str(tmp_path))
        self._script = run
        self.interrupted: list[int] = []

    async def run(self, action: RunnableAction, on_chunk: ChunkSink | None = None) -> Observation:
        return await self._script(action, on_chunk)

    def interrupt(self, action: RunnableAction) -> bool:
        self.interrupted.append(action.id)
        return True


async def next_frame(outbox: Outbox) -> Event | None:
    with anyio.fail_after(5):
        return await outbox.get()


async def test_a_run_answers_the_current_connection_with_its_chunks_first(tmp_path: Path) -> None:
    release = asyncio.Event()

    async def run(action: RunnableAction, on_chunk: ChunkSink | None) -> Observation:
        assert on_chunk is not None
        on_chunk(CmdOutputChunk(action.id, 0, "part"))
        await release.wait()
        return CmdOutputObservation("all", command="x")

    async with ChannelHub(ScriptedExecutor(tmp_path, run)) as hub:
        first, first_box = hub.attach("a")
        hub.submit(first, CmdRunAction("x", id=4))
        assert await next_frame(first_box) == CmdOutputChunk(4, 0, "part")
        assert hub.running_actions == 1
        hub.detach(first)
        assert await next_frame(first_box) is None
        second, second_box = hub.attach("a")
        hub.submit(second, CmdRunAction("x", id=4))  # a resend: attaches to the run
        release.set()
        answer = await next_frame(second_box)
        assert isinstance(answer, CmdOutputObservation)
        assert (answer.content, answer.cause) == ("all", 4)
        assert hub.running_actions == 0
        hub.submit(second, CmdRunAction("x", id=4))
        assert await next_frame(second_box) == answer  # from the cache


async def test_a_run_that_fails_is_answered_with_an_internal_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def run(action: RunnableAction, on_chunk: ChunkSink | None) -> Observation:
        raise RuntimeError("the executor broke")

    async with ChannelHub(ScriptedExecutor(tmp_path, run)) as hub:
        attachment, outbox = hub.attach("a")
        hub.submit(attachment, CmdRunAction("x", id=1))
        answer = await next_frame(outbox)
    assert isinstance(answer, ErrorObservation)
    assert (answer.error_id, answer.cause) == ("internal_error", 1)
    assert "the executor broke" in answer.content
    assert any(
        r.levelno == logging.ERROR and "action 1 of client a failed" in r.getMessage()
        for r in caplog.records
    )


async def test_leaving_the_hub_cancels_its_runs_and_closes_its_outboxes(tmp_path: Path) -> None:
    began = asyncio.Event()
    cancelled = asyncio.Event()

    async def run(action: RunnableAction, on_chunk: ChunkSink | None) -> Observation:
        began.set()
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()
        raise AssertionError("unreachable")  # pragma: no cover

    hub = ChannelHub(ScriptedExecutor(tmp_path, run))
    async with hub:
        attachment, outbox = hub.attach("a")
        hub.submit(attachment, CmdRunAction("x", id=1))
        await began.wait()
    assert cancelled.is_set()
    assert await next_frame(outbox) is None
    hub.submit(attachment, CmdRunAction("x", id=2))  # its connection is done: nothing
    assert outbox.closed
    again, box = hub.attach("a")
    hub.submit(again, CmdRunAction("x", id=3))
    answer = await next_frame(box)
    assert isinstance(answer, ErrorObservation)
    assert (answer.error_id, answer.cause) == ("internal_error", 3)
    with pytest.raises(RuntimeError, match="entered once"):
        async with hub:
            pass  # pragma: no cover


async def test_greeting_replacement_and_interrupt(tmp_path: Path) -> None:
    release = asyncio.Event()

    async def run(action: RunnableAction, on_chunk: ChunkSink | None) -> Observation:
        await release.wait()
        return CmdOutputObservation("", command="x")

    note = RuntimeStatusObservation(RuntimeStatus.STARTING, "hello")
    executor = ScriptedExecutor(tmp_path, run)
    async with ChannelHub(executor, greeting=lambda: [note]) as hub:
        _, first_box = hub.attach("a")
        assert await next_frame(first_box) == note
        second, second_box = hub.attach("a")  # replaces the first: no second greeting
        assert await next_frame(first_box) is None
        hub.submit(second, CmdRunAction("x", id=1))
        await asyncio.sleep(0)
        hub.interrupt(second, 1)
        hub.interrupt(second, 2)  # not running: nothing to do
        assert executor.interrupted == [1]
        release.set()
        answer = await next_frame(second_box)
        assert isinstance(answer, CmdOutputObservation)
        assert answer.cause == 1
