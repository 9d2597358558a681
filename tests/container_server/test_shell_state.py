"""The shell's state read between actions and restored in a new shell, against a real bash."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from container_server.bash import BashSession
from container_server.executor import ActionExecutor
from container_server.shell_state import (
    NOT_CAPTURED,
    ShellStateUnavailable,
    capture_script,
    parse_capture,
    read_state_file,
    restored_environment,
)
from events import CmdOutputObservation, CmdRunAction
from events.control import ShellState, encode_control

SOFT = 0.5  # no_change_timeout, seconds


@pytest.fixture
async def executor(tmp_path: Path) -> AsyncIterator[ActionExecutor]:
    executor = ActionExecutor(working_dir=str(tmp_path), no_change_timeout=SOFT)
    await executor.start()
    try:
        yield executor
    finally:
        await executor.aclose()


async def sh(executor: ActionExecutor, command: str, **kwargs: object) -> CmdOutputObservation:
    observation = await executor.run(CmdRunAction(command, id=1, **kwargs))  # type: ignore[arg-type]
    assert isinstance(observation, CmdOutputObservation), observation
    return observation


# --------------------------------------------------------------------------- capture


async def test_the_cwd_and_what_the_agent_exported_are_read(
    executor: ActionExecutor, tmp_path: Path
) -> None:
    await sh(executor, "mkdir sub && cd sub && export GREETING=hello")
    state = await executor.shell_state()
    assert state.cwd == str(tmp_path / "sub")
    assert state.env["GREETING"] == "hello"
    assert state.env["PATH"] == os.environ["PATH"]  # inherited exports are the shell's too


WEIRD_VALUES = {
    "newlines": "one\ntwo\n\nthree\n",
    "quotes": 'it\'s "quoted" `tick` $(not run) \\back',
    "unicode": "héllo wörld ✓ 日本",
    "equals": "a=b==c=",
    "empty": "",
    "control": "tab\there\x01\x1b[31mred\r",
    "long": "x" * 5000 + "\n" + "y" * 40_000,
}


def ansi_c(value: str) -> str:
    """``value`` as a bash word, every byte escaped."""
    return "$'" + "".join(f"\\x{b:02x}" for b in value.encode()) + "'"


@pytest.mark.parametrize("name", sorted(WEIRD_VALUES))
async def test_weird_values_are_read_exactly(executor: ActionExecutor, name: str) -> None:
    value = WEIRD_VALUES[name]
    await sh(executor, f"export WEIRD={ansi_c(value)}")
    state = await executor.shell_state()
    assert state.env["WEIRD"] == value


async def test_unset_variables_unexported_ones_arrays_and_functions_are_not_in_it(
    executor: ActionExecutor,
) -> None:
    await sh(
        executor,
        "export GONE=1 KEPT=2; unset GONE; LOCAL_ONLY=3; export DECLARED_ONLY; "
        "declare -ax ARRAY=(a b); myfn() { :; }; export -f myfn",
    )
    state = await executor.shell_state()
    assert state.env["KEPT"] == "2"
    for name in ("GONE", "LOCAL_ONLY", "DECLARED_ONLY", "ARRAY", "myfn", "BASH_FUNC_myfn%%"):
        assert name not in state.env, name


async def test_the_servers_own_machinery_is_not_in_it(executor: ActionExecutor) -> None:
    await sh(executor, "export PS1='mine> '")
    # PS1 is the session's again at the next prompt; a PROMPT_COMMAND of the agent's
    # then keeps it (changing both at once leaves the session without its prompt).
    await sh(executor, "export PROMPT_COMMAND=true __oh_mine=1 HOSTNAME=h MINE=1")
    state = await executor.shell_state()
    assert state.env["MINE"] == "1"
    assert not (set(state.env) & NOT_CAPTURED), state.env.keys()
    assert not [name for name in state.env if name.startswith("__oh_")]


async def test_the_next_action_sees_the_same_status_last_argument_and_output(
    executor: ActionExecutor,
) -> None:
    await sh(executor, "echo one two")
    await sh(executor, "(exit 7)")
    await executor.shell_state()
    after = await sh(executor, 'echo "status=$? last=$_"')
    assert after.content == "status=7 last=(exit 7)"
    # Nothing of the capture is left for the agent to see.
    leftovers = await sh(executor, "declare -F | grep -c __oh_state; echo ${__oh_rc-none}")
    assert leftovers.content.split() == ["0", "none"]


async def test_set_e_set_u_noclobber_and_ifs_change_nothing(executor: ActionExecutor) -> None:
    before = (await sh(executor, "echo $$")).content
    await sh(executor, "set -eu -o noclobber; shopt -s nullglob failglob; IFS=x; export A=1")
    state = await executor.shell_state()
    assert state.env["A"] == "1"
    again = await executor.shell_state()  # the file's directory is new each time
    assert again == state
    after = await sh(executor, "echo $$; echo $-")
    pid, flags = after.content.split("\n")
    assert pid == before  # the same shell: errexit did not end it
    assert "e" in flags
    assert "u" in flags


async def test_a_changed_prompt_or_prompt_command_does_not_disturb_it(
    executor: ActionExecutor,
) -> None:
    await sh(executor, "PS1='custom> '")
    await sh(executor, "PROMPT_COMMAND='echo from-prompt-command'")
    without = await sh(executor, "echo x")
    state = await executor.shell_state()
    assert state.cwd
    with_capture = await sh(executor, "echo x")
    assert with_capture.content == without.content == "x\nfrom-prompt-command"


async def test_a_deleted_cwd_is_read_as_it_was(executor: ActionExecutor, tmp_path: Path) -> None:
    await sh(executor, "mkdir doomed && cd doomed && rmdir ../doomed")
    state = await executor.shell_state()
    assert state.cwd == str(tmp_path / "doomed")


async def test_a_running_command_makes_it_unavailable_until_it_stops(
    executor: ActionExecutor,
) -> None:
    running = await sh(executor, "sleep 30")
    assert running.exit_code == -1
    with pytest.raises(ShellStateUnavailable, match="still running"):
        await executor.shell_state()
    stopped = await sh(executor, "C-c")
    assert stopped.exit_code == 130
    assert (await executor.shell_state()).cwd


async def test_it_waits_for_earlier_actions_and_comes_before_later_ones(
    executor: ActionExecutor, tmp_path: Path
) -> None:
    earlier = asyncio.create_task(
        executor.run(CmdRunAction("sleep 0.3; mkdir -p a && cd a; export EARLY=1", id=1))
    )
    await asyncio.sleep(0)  # the action takes its place in the shell's queue
    reading = asyncio.create_task(executor.shell_state([earlier]))
    later = asyncio.create_task(executor.run(CmdRunAction("export LATE=1; cd /", id=2)))
    state = await reading
    assert state.env.get("EARLY") == "1"
    assert "LATE" not in state.env
    assert state.cwd == str(tmp_path / "a")
    await later


async def test_it_waits_for_an_earlier_file_action_too(
    executor: ActionExecutor, tmp_path: Path
) -> None:
    gate = asyncio.Event()

    async def slow_file_action() -> None:
        await gate.wait()

    earlier = asyncio.create_task(slow_file_action())
    reading = asyncio.create_task(executor.shell_state([earlier]))
    await asyncio.sleep(0.1)
    assert not reading.done()
    gate.set()
    assert (await reading).cwd == str(tmp_path)


# --------------------------------------------------------------------------- the format


def test_a_capture_cut_short_is_refused() -> None:
    with pytest.raises(ValueError, match="end"):
        parse_capture(b"/w\0A=1\0B=")
    with pytest.raises(ValueError, match="NAME=value"):
        parse_capture(b"/w\0NOEQUALS\0")


def test_the_capture_is_one_line_short_enough_for_the_tty() -> None:
    line = capture_script("/tmp/openhands-rt-shell-abcdefgh/state")
    assert "\n" not in line
    assert len(line.encode()) < 4000


def test_a_state_file_round_trips_and_a_missing_one_is_none(tmp_path: Path) -> None:
    state = ShellState(cwd="/w/é", env={"A": "1\n2", "EMPTY": ""})
    path = tmp_path / "state.json"
    path.write_bytes(encode_control(state))
    assert read_state_file(str(path)) == state
    assert read_state_file(str(tmp_path / "missing.json")) is None
    path.write_bytes(b'{"control":"interrupt","action_id":1}')
    with pytest.raises(ValueError, match="interrupt"):
        read_state_file(str(path))


def test_a_restored_environment_carries_no_machinery() -> None:
    state = ShellState(cwd="/", env={"A": "1", "PS1": "x", "__oh_n": "y", "SHLVL": "3"})
    assert restored_environment(state) == {"A": "1"}


# --------------------------------------------------------------------------- restore


async def test_a_restored_path_does_not_choose_the_shell(tmp_path: Path) -> None:
    # The agent's PATH, captured in a snapshot, names a "bash" of its own: the restored
    # session's shell must still be the system's (the agent's program would stand in
    # for the shell the server talks to).
    planted = tmp_path / "planted"
    planted.mkdir()
    marker = tmp_path / "ran"
    fake = planted / "bash"
    fake.write_text(f'#!/bin/sh\ntouch {marker}\nexec /bin/bash "$@"\n')
    fake.chmod(0o755)
    state = ShellState(cwd=str(tmp_path), env={"PATH": f"{planted}:{os.environ['PATH']}"})
    session = await restored(tmp_path, state)
    try:
        assert (await run(session, "echo $PATH")).startswith(str(planted))
    finally:
        await session.aclose()
    assert not marker.exists()


async def restored(tmp_path: Path, state: ShellState) -> BashSession:
    session = BashSession(working_dir=str(tmp_path), no_change_timeout=SOFT, restore=state)
    await session.start()
    return session


async def run(session: BashSession, command: str) -> str:
    observation = await session.run(CmdRunAction(command))
    assert isinstance(observation, CmdOutputObservation), observation
    return observation.content


async def test_a_restored_shell_starts_in_the_cwd_with_exactly_that_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SERVER_ONLY", "the server has it")
    (tmp_path / "deep" / "dir").mkdir(parents=True)
    state = ShellState(
        cwd=str(tmp_path / "deep" / "dir"),
        env={"PATH": os.environ["PATH"], "X": "a b\nc", "EMPTY": ""},
    )
    session = await restored(tmp_path, state)
    try:
        assert await run(session, "pwd") == str(tmp_path / "deep" / "dir")
        assert await run(session, 'printf "%s|" "$X" "${EMPTY-unset}"') == "a b\nc||"
        assert await run(session, "echo ${SERVER_ONLY-not inherited}") == "not inherited"
        # Exported, not just set: a child process sees them.
        assert await run(session, "bash -c 'echo \"$X\"'") == "a b\nc"
        assert await run(session, "env | grep -c '^EMPTY=$'") == "1"
    finally:
        await session.aclose()


async def test_a_missing_cwd_falls_back_to_the_workspace_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = ShellState(cwd=str(tmp_path / "gone"), env={"PATH": os.environ["PATH"], "X": "1"})
    with caplog.at_level(logging.WARNING, logger="container_server.bash"):
        session = await restored(tmp_path, state)
    try:
        assert await run(session, "pwd; echo $X") == f"{tmp_path}\n1"
    finally:
        await session.aclose()
    assert any(str(tmp_path / "gone") in r.getMessage() for r in caplog.records)


async def test_read_then_restored_then_read_again_is_the_same_state(
    executor: ActionExecutor, tmp_path: Path
) -> None:
    await sh(
        executor, f"mkdir -p w && cd w && export V={ansi_c(WEIRD_VALUES['quotes'])} N=$'1\\n2'"
    )
    state = await executor.shell_state()
    second = ActionExecutor(working_dir=str(tmp_path), no_change_timeout=SOFT, restore=state)
    await second.start()
    try:
        again = await second.shell_state()
    finally:
        await second.aclose()
    assert again.cwd == state.cwd
    # OLDPWD is the shell's to set: a new shell starts without one.
    assert {k: v for k, v in again.env.items() if k != "OLDPWD"} == {
        k: v for k, v in state.env.items() if k != "OLDPWD"
    }
