"""A durable event log that cannot be written fails every caller at once (issue 14, point 9)."""

from __future__ import annotations

import asyncio
import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest

import events.log
from events import CmdOutputObservation, CmdRunAction, EventStream, FileWriteAction
from events.log import LogWriteError
from openhands_rt import LocalRuntime, SandboxConfig


def fill(directory: Path) -> None:
    """Fill the file system holding ``directory`` to the last byte."""
    block = b"\0" * 4096
    with open(directory / "filler", "wb", buffering=0) as f:
        for _ in range(1024):
            try:
                f.write(block)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                return
    raise AssertionError("a 1 MiB file system took 4 MiB")


def config(workspace: Path) -> SandboxConfig:
    return SandboxConfig(workspace_dir=str(workspace), no_change_timeout=5.0, timeout=60.0)


async def test_run_fails_at_once_when_the_disk_is_full(
    small_filesystem: Path, tmp_path: Path
) -> None:
    log_path = small_filesystem / "events.log"
    workspace = tmp_path / "ws"
    stream = EventStream(log_path=log_path)
    rt = LocalRuntime(stream, config(workspace), session_id="diskfull")
    try:
        await rt.connect()
        first = await rt.run(CmdRunAction("echo before"))
        assert isinstance(first, CmdOutputObservation)
        await stream.flush()
        flushed = len(stream)
        fill(small_filesystem)
        # The action itself is larger than any slack left in the log's last page.
        with pytest.raises(LogWriteError) as caught:
            await asyncio.wait_for(rt.run(CmdRunAction("echo " + "x" * 9000)), 20)
        message = str(caught.value)
        assert str(log_path) in message
        assert "No space left on device" in message
        assert caught.value.first_lost_id >= flushed
        assert stream.write_error is not None
        # Later appends are refused with it; nothing more is stored.
        length = len(stream)
        with pytest.raises(LogWriteError):
            stream.append(FileWriteAction("/workspace/f", "after"))
        with pytest.raises(LogWriteError):
            await asyncio.wait_for(rt.run(CmdRunAction("echo again")), 20)
        assert len(stream) == length
    finally:
        await asyncio.wait_for(rt.aclose(), 20)
        with pytest.raises(LogWriteError):
            await asyncio.wait_for(stream.aclose(), 20)
    assert rt.process is None
    (small_filesystem / "filler").unlink()
    # What was flushed before is intact and the reopened log takes new events.
    async with EventStream(log_path=log_path) as reopened:
        kept = list(reopened.iter_events())
        assert [e.id for e in kept] == list(range(len(kept)))
        assert len(kept) >= flushed
        assert kept[first.id] == first
        reopened.append(CmdRunAction("echo after"))
        await reopened.flush()


class FailingWrite:
    """Stands in for the log's ``_write_all``: fails with ENOSPC once armed."""

    def __init__(self, real: Callable[[int, bytes], None]) -> None:
        self.real = real
        self.armed = False

    def __call__(self, fd: int, data: bytes) -> None:
        if self.armed:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.real(fd, data)


@pytest.fixture
def failing_write(monkeypatch: pytest.MonkeyPatch) -> FailingWrite:
    fake = FailingWrite(events.log._write_all)
    monkeypatch.setattr(events.log, "_write_all", fake)
    return fake


async def test_a_running_command_is_abandoned_when_the_log_fails(
    failing_write: FailingWrite, tmp_path: Path
) -> None:
    log_path = tmp_path / "events.log"
    stream = EventStream(log_path=log_path)
    rt = LocalRuntime(stream, config(tmp_path / "ws"), session_id="enospc")
    try:
        await rt.connect()
        await rt.run(CmdRunAction("echo before"))
        await stream.flush()
        running = asyncio.ensure_future(rt.run(CmdRunAction("sleep 30", blocking=True)))
        follower = asyncio.ensure_future(_drain(stream))
        await asyncio.sleep(0.5)
        assert not running.done()
        failing_write.armed = True
        # Any later append (here by someone else) makes the writer fail: the caller
        # waiting for the sleep's observation hears of it at once, not after 30 s.
        stream.append(FileWriteAction("/workspace/f", "x"))
        with pytest.raises(LogWriteError) as caught:
            await asyncio.wait_for(running, 5)
        assert isinstance(caught.value.__cause__, OSError)
        assert caught.value.__cause__.errno == errno.ENOSPC
        # follow() ends with the error instead of waiting for events that cannot come.
        with pytest.raises(LogWriteError):
            await asyncio.wait_for(follower, 5)
    finally:
        await asyncio.wait_for(rt.aclose(), 20)
        with pytest.raises(LogWriteError):
            await asyncio.wait_for(stream.aclose(), 20)


async def _drain(stream: EventStream) -> None:
    async for _ in stream.follow():
        pass
