"""The shell's state through the whole channel (LocalRuntime: client, hub, server, bash), and
a second runtime started in it (``LocalRuntime(shell_state=...)``, the server's --shell-state)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from events import CmdOutputObservation, CmdRunAction, EventStream
from events.control import ShellState
from openhands_rt import LocalRuntime, SandboxConfig
from openhands_rt.errors import SandboxConnectionError, SandboxError


def config(workspace: Path) -> SandboxConfig:
    return SandboxConfig(workspace_dir=str(workspace), no_change_timeout=1.0, timeout=30.0)


@pytest.fixture
async def runtime(tmp_path: Path) -> AsyncIterator[LocalRuntime]:
    async with EventStream() as stream, LocalRuntime(stream, config(tmp_path)) as rt:
        yield rt


async def sh(rt: LocalRuntime, command: str) -> CmdOutputObservation:
    observation = await rt.run(CmdRunAction(command))
    assert isinstance(observation, CmdOutputObservation), observation
    return observation


async def sent(runtime: LocalRuntime, running: asyncio.Task[object]) -> None:
    """Let ``running`` take its first step: run() appends the action and hands its frame
    to the channel without awaiting in between, so a later frame goes out after it."""
    await asyncio.sleep(0)
    assert not running.done()
    assert isinstance(list(runtime.stream.iter_events())[-1], CmdRunAction)


async def test_it_is_read_between_actions_and_is_not_on_the_stream(
    runtime: LocalRuntime, tmp_path: Path
) -> None:
    await sh(runtime, "mkdir -p a/b && cd a/b && export X=$'1\\n2' && (exit 3)")
    events = list(runtime.stream.iter_events())
    state = await runtime.shell_state()
    assert list(runtime.stream.iter_events()) == events
    assert state.cwd == str(tmp_path / "a" / "b")
    assert state.env["X"] == "1\n2"
    after = await sh(runtime, 'echo "$? $X"')
    assert after.content == "3 1\n2"


async def test_a_request_sent_behind_a_running_action_waits_for_it(
    runtime: LocalRuntime,
) -> None:
    running = asyncio.create_task(runtime.run(CmdRunAction("sleep 0.5; export LATE=yes")))
    await sent(runtime, running)
    state = await runtime.shell_state()
    assert running.done()
    assert state.env["LATE"] == "yes"


async def test_a_command_running_past_its_timeout_is_the_servers_refusal(
    runtime: LocalRuntime,
) -> None:
    assert (await sh(runtime, "sleep 30")).exit_code == -1
    with pytest.raises(SandboxError, match="still running") as caught:
        await runtime.shell_state()
    assert not isinstance(caught.value, SandboxConnectionError)
    await sh(runtime, "C-c")
    assert (await runtime.shell_state()).cwd


async def test_a_lost_connection_fails_the_request(runtime: LocalRuntime) -> None:
    running = asyncio.create_task(runtime.run(CmdRunAction("sleep 0.5; echo done")))
    await sent(runtime, running)
    reading = asyncio.create_task(runtime.shell_state())
    await asyncio.sleep(0)  # the request goes out behind the action
    channel = runtime._channel
    assert channel is not None
    await channel.drop_connection()
    with pytest.raises(SandboxConnectionError, match="lost"):
        await reading
    observation = await running  # the action itself is resent and answered
    assert isinstance(observation, CmdOutputObservation)
    assert "done" in observation.content


async def test_a_second_runtime_starts_in_the_first_ones_state(tmp_path: Path) -> None:
    async with EventStream() as stream, LocalRuntime(stream, config(tmp_path)) as rt:
        await sh(rt, "mkdir -p sub && cd sub && export X='a b' EMPTY= && unset PAGER")
        state = await rt.shell_state()
    async with (
        EventStream() as stream2,
        LocalRuntime(stream2, config(tmp_path), shell_state=state) as rt2,
    ):
        assert (await sh(rt2, "pwd")).content == str(tmp_path / "sub")
        assert (await sh(rt2, 'echo "[$X] [${EMPTY-unset}] ${PAGER-unset}"')).content == (
            "[a b] [] unset"
        )
        assert (await sh(rt2, "bash -c 'echo \"$X\"'")).content == "a b"
        assert (await rt2.shell_state()).env["X"] == "a b"


async def test_a_restored_cwd_that_is_gone_starts_in_the_workspace(tmp_path: Path) -> None:
    state = ShellState(cwd=str(tmp_path / "gone"), env={"X": "kept", "PATH": "/usr/bin:/bin"})
    async with (
        EventStream() as stream,
        LocalRuntime(stream, config(tmp_path), shell_state=state) as rt,
    ):
        assert (await sh(rt, "pwd; echo $X")).content == f"{tmp_path}\nkept"
