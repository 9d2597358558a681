"""TaskSupervisor: the runtime's task group, opened and closed by different tasks."""

from __future__ import annotations

import asyncio
import logging

import anyio
import pytest

from openhands_rt.docker.supervisor import TaskSupervisor


class Crashes:
    def __init__(self) -> None:
        self.seen: list[BaseException] = []
        self.heard = anyio.Event()

    def __call__(self, exc: BaseException) -> None:
        self.seen.append(exc)
        self.heard.set()


async def test_nothing_runs_before_start_and_after_close() -> None:
    crashes = Crashes()
    supervisor = TaskSupervisor("t", on_crash=crashes)
    assert not supervisor.running
    with pytest.raises(RuntimeError, match="not running"):
        supervisor.start_soon(anyio.sleep, 0, name="early")
    await supervisor.start()
    assert supervisor.running
    await supervisor.aclose()
    assert not supervisor.running
    with pytest.raises(RuntimeError, match="not running"):
        supervisor.start_soon(anyio.sleep, 0, name="late")
    assert crashes.seen == []


async def test_close_cancels_the_children_and_waits_for_them() -> None:
    supervisor = TaskSupervisor("t", on_crash=Crashes())
    await supervisor.start()
    started, finished = anyio.Event(), anyio.Event()

    async def forever() -> None:
        started.set()
        try:
            await anyio.sleep_forever()
        finally:
            finished.set()

    supervisor.start_soon(forever, name="forever")
    await started.wait()
    await supervisor.aclose()
    assert finished.is_set()


async def test_start_and_close_from_different_tasks() -> None:
    supervisor = TaskSupervisor("t", on_crash=Crashes())
    cancelled = anyio.Event()

    async def forever() -> None:
        try:
            await anyio.sleep_forever()
        finally:
            cancelled.set()

    async def open_it() -> None:
        await supervisor.start()
        supervisor.start_soon(forever, name="forever")

    await asyncio.get_running_loop().create_task(open_it())
    assert supervisor.running
    await asyncio.get_running_loop().create_task(supervisor.aclose())
    assert cancelled.is_set()
    assert not supervisor.running


async def test_a_dying_child_takes_the_group_down_loudly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    crashes = Crashes()
    supervisor = TaskSupervisor("owner-x", on_crash=crashes)
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
    with caplog.at_level(logging.ERROR, logger="openhands_rt.docker.supervisor"):
        supervisor.start_soon(dies, name="dies")
        with anyio.fail_after(5):
            await sibling_cancelled.wait()
            await crashes.heard.wait()
    assert [type(e) for e in crashes.seen] == [ValueError]
    assert str(crashes.seen[0]) == "the watcher broke"
    assert "owner-x: a task died" in caplog.text
    assert not supervisor.running
    await supervisor.aclose()
    # The owner can open it again (the next connect()).
    await supervisor.start()
    assert supervisor.running
    await supervisor.aclose()


async def test_a_child_may_close_its_own_group() -> None:
    supervisor = TaskSupervisor("t", on_crash=Crashes())
    await supervisor.start()
    done = anyio.Event()
    inside: list[bool] = []

    async def closes_itself() -> None:
        inside.append(supervisor.is_current())
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
        await supervisor.start()
    assert supervisor.running
    await supervisor.aclose()
