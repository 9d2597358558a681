"""The durable log against real process deaths and real disk errors (child processes)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
from pathlib import Path

from events import CmdRunAction, EventStream
from events.log import read_log

REPO = Path(__file__).resolve().parents[2]

CRASH_CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from events import CmdRunAction, EventStream

    async def main(path: str, flushed: int) -> None:
        stream = EventStream(log_path=path)
        for i in range(flushed):
            stream.append(CmdRunAction(command=f"echo {i}"))
        await stream.flush()
        print("flushed", flush=True)
        i = flushed
        while True:  # keep the writer busy until the parent kills us
            stream.append(CmdRunAction(command=f"echo {i} " + "x" * (i % 300)))
            i += 1
            if i % 500 == 0:
                await asyncio.sleep(0)
            if i == flushed + 20_000:
                print("appending", flush=True)

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    """
)

DISK_FULL_CHILD = textwrap.dedent(
    """
    import asyncio, resource, signal, sys
    from events import CmdRunAction, EventStream
    from events.log import LogWriteError

    async def main(path: str, limit: int) -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of dying
        stream = EventStream(log_path=path)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
        flushed = 0
        try:
            while True:
                for _ in range(7):
                    stream.append(CmdRunAction(command="x" * 100))
                await stream.flush()
                flushed = len(stream)
        except LogWriteError as exc:
            print("flush-error", flushed, exc.first_lost_id, flush=True)
        try:
            stream.append(CmdRunAction(command="after"))
        except LogWriteError:
            print("append-error", flush=True)
        try:
            await stream.aclose()
        except LogWriteError:
            print("close-error", flush=True)

    asyncio.run(main(sys.argv[1], int(sys.argv[2])))
    """
)


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


async def test_sigkill_while_appending_loses_nothing_that_was_flushed(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    flushed = 1000
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CRASH_CHILD,
        str(path),
        str(flushed),
        stdout=asyncio.subprocess.PIPE,
        env=child_env(),
    )
    assert child.stdout is not None
    try:
        assert await asyncio.wait_for(child.stdout.readline(), 30) == b"flushed\n"
        assert await asyncio.wait_for(child.stdout.readline(), 30) == b"appending\n"
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()
    assert child.returncode == -signal.SIGKILL

    stream = EventStream(log_path=path)
    recovered = list(stream.iter_events())
    assert len(recovered) >= flushed
    assert [e.id for e in recovered] == list(range(len(recovered)))
    commands = [e.command for e in recovered[:flushed] if isinstance(e, CmdRunAction)]
    assert commands == [f"echo {i}" for i in range(flushed)]
    new = stream.append(CmdRunAction(command="after the crash"))
    assert new.id == len(recovered)
    await stream.aclose()
    again = read_log(path)
    assert len(again) == len(recovered) + 1
    assert again[-1] == new


async def test_a_disk_error_is_raised_never_silent_and_the_log_reopens_intact(
    tmp_path: Path,
) -> None:
    path = tmp_path / "events.log"
    limit = 64 * 1024
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        DISK_FULL_CHILD,
        str(path),
        str(limit),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=child_env(),
    )
    stdout, stderr = await asyncio.wait_for(child.communicate(), 60)
    assert child.returncode == 0, stderr.decode()
    lines = stdout.decode().splitlines()
    assert lines[0].startswith("flush-error"), (lines, stderr.decode())
    _, flushed, first_lost = lines[0].split()
    assert lines[1:] == ["append-error", "close-error"]
    assert b"File too large" in stderr  # the cause was logged, with the OS's words
    assert int(flushed) > 0
    assert os.path.getsize(path) <= limit

    async with EventStream(log_path=path) as stream:
        # Everything that flush() confirmed is there; the failed batch was cut off.
        assert len(stream) == int(first_lost) >= int(flushed)
        assert [e.id for e in stream.iter_events()] == list(range(len(stream)))
        stream.append(CmdRunAction(command="more room now"))
        await stream.flush()
    assert len(read_log(path)) == int(first_lost) + 1
