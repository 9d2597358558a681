"""BashSession against a real bash on a real PTY."""

from __future__ import annotations

import asyncio
import os
import pwd
import re
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest

from container_server.bash import BashSession, BashSessionError, BashStartError
from container_server.bash_process import session_members
from container_server.bash_protocol import (
    CONTINUATION_PREFIX,
    NO_RUNNING_COMMAND_INPUT,
    NO_RUNNING_COMMAND_LOGS,
    completed_suffix,
    hard_timeout_suffix,
    soft_timeout_suffix,
)
from container_server.errors import ServerError
from container_server.truncate import TRUNCATION_MARKER, truncated_lines_prefix
from events import CmdOutputObservation, CmdRunAction, ErrorObservation

SOFT = 0.5  # no_change_timeout in these tests, seconds


@pytest.fixture
async def bash(tmp_path: Path) -> AsyncIterator[BashSession]:
    async with BashSession(working_dir=str(tmp_path), no_change_timeout=SOFT) as session:
        yield session


async def run(session: BashSession, command: str, **kwargs: object) -> CmdOutputObservation:
    observation = await session.run(CmdRunAction(command, **kwargs))  # type: ignore[arg-type]
    assert isinstance(observation, CmdOutputObservation), observation
    return observation


def is_running(session: BashSession) -> bool:
    # A call, so that mypy does not carry a narrowed property across awaits.
    return session.is_running


# --------------------------------------------------------------------------- basics


async def test_echo(bash: BashSession, tmp_path: Path) -> None:
    pieces: list[str] = []
    obs = await bash.run(CmdRunAction("echo hi"), on_output=pieces.append)
    assert isinstance(obs, CmdOutputObservation)
    assert obs.content == "hi"
    assert pieces == ["hi\n"]  # no echoed command, no prompt
    assert obs.exit_code == 0
    meta = obs.metadata
    assert meta.suffix == "\n[The command completed with exit code 0.]"
    assert meta.prefix == ""
    assert meta.working_dir == str(tmp_path)
    assert meta.username == pwd.getpwuid(os.geteuid()).pw_name
    assert meta.hostname == socket.gethostname().split(".")[0]
    path = os.environ["PATH"]
    expected_python = shutil.which("python", path=path) or shutil.which("python3", path=path)
    assert meta.py_interpreter_path == expected_python
    assert obs.command == "echo hi"
    assert not bash.is_running
    assert bash.cwd == str(tmp_path)


async def test_exit_codes(bash: BashSession) -> None:
    assert (await run(bash, "false")).exit_code == 1
    obs = await run(bash, "echo $?")
    assert obs.content == "1"  # the next command sees the previous status
    obs = await run(bash, "no_such_command_xyz")
    assert obs.exit_code == 127
    assert "command not found" in obs.content
    obs = await run(bash, "(exit 42)")
    assert obs.exit_code == 42
    assert obs.metadata.suffix == completed_suffix(42)


async def test_state_persists(bash: BashSession) -> None:
    assert (await run(bash, "cd /tmp")).metadata.working_dir == "/tmp"
    assert (await run(bash, "pwd")).content == "/tmp"
    assert bash.cwd == "/tmp"
    await run(bash, "export GREETING=hello")
    assert (await run(bash, "echo $GREETING")).content == "hello"
    await run(bash, 'greet() { echo "hi $1"; }')
    assert (await run(bash, "greet there")).content == "hi there"
    await run(bash, "alias ll='echo aliased'")
    assert (await run(bash, "ll")).content == "aliased"


async def test_multiline_commands(bash: BashSession, tmp_path: Path) -> None:
    obs = await run(bash, "cat << EOF\nline 1\nline 2\nEOF")
    assert obs.content == "line 1\nline 2"
    obs = await run(bash, "for i in 1 2 3; do\n  echo $i\ndone")
    assert obs.content == "1\n2\n3"
    obs = await run(bash, "echo a && echo b; echo c")
    assert obs.content == "a\nb\nc"
    obs = await run(bash, "echo one \\\n  two")
    assert obs.content == "one two"
    obs = await run(bash, "if true; then\n  echo yes\nfi")
    assert obs.content == "yes"


SEVERAL = "x=1\nwhile [ $x -le 2 ]; do echo w$x; x=$((x+1)); done\nfalse"


async def test_several_commands_are_refused_as_openhands_does(bash: BashSession) -> None:
    obs = await bash.run(CmdRunAction(SEVERAL))
    assert isinstance(obs, ErrorObservation)
    assert obs.error_id == "multiple_commands"
    assert obs.content == (
        "ERROR: Cannot execute multiple commands at once.\n"
        "Please run each command separately OR chain them into a single command via && or ;\n"
        "Provided commands:\n(1) x=1\n(2) while [ $x -le 2 ]; do echo w$x; x=$((x+1)); done\n"
        "(3) false"
    )
    # Nothing ran; the session goes on.
    assert (await run(bash, "echo ${x:-unset}")).content == "unset"


async def test_several_commands_run_when_the_session_allows_them(tmp_path: Path) -> None:
    async with BashSession(
        working_dir=str(tmp_path), no_change_timeout=SOFT, allow_multiple_commands=True
    ) as session:
        obs = await run(session, SEVERAL)
        assert obs.content == "w1\nw2"
        assert obs.exit_code == 1  # one action, one status: the last command's


async def test_special_characters_round_trip(bash: BashSession, tmp_path: Path) -> None:
    text = "quotes ' \" back\\slash $HOME `x` tab\t! unicode \u00e9\u2603 \\n"
    target = tmp_path / "special.txt"
    obs = await run(bash, f"cat > {target} << 'EOF'\n{text}\nEOF")
    assert obs.exit_code == 0
    assert target.read_text() == text + "\n"


async def test_long_commands(bash: BashSession, tmp_path: Path) -> None:
    # Far past the tty's 4095-byte line limit.
    long_line = "x" * 10_000
    obs = await run(bash, f"echo {long_line} | wc -c")
    assert obs.content == "10001"
    body = "\n".join(f"line {i}: {'y' * 60} 'quoted' \"dq\" $VAR" for i in range(2000))
    target = tmp_path / "big.txt"
    obs = await run(bash, f"cat > {target} << 'EOF'\n{body}\nEOF")
    assert obs.exit_code == 0
    assert target.read_text() == body + "\n"


async def test_syntax_errors_do_not_wedge(bash: BashSession) -> None:
    obs = await run(bash, "if then fi")
    assert obs.exit_code == 2
    assert "syntax error" in obs.content
    obs = await run(bash, 'echo "unclosed')
    assert obs.exit_code == 2
    assert "unexpected EOF" in obs.content
    obs = await run(bash, "echo 'single")
    assert obs.exit_code == 2
    obs = await run(bash, "echo trailing \\")
    assert obs.exit_code == 0
    assert obs.content == "trailing \\"
    obs = await run(bash, "(echo")
    assert obs.exit_code == 2
    assert (await run(bash, "echo still alive")).content == "still alive"


async def test_terminal_output_is_cleaned(bash: BashSession) -> None:
    assert (await run(bash, r"printf '\033[31mred\033[0m'")).content == "red"
    assert (await run(bash, "printf abc")).content == "abc"
    assert (await run(bash, r"printf 'a\r\nb\r\n'")).content == "a\nb"
    obs = await run(bash, r"printf 'progress 10%%\rprogress 100%%\ndone\n'")
    assert obs.content == "progress 100%\ndone"
    obs = await run(bash, r"printf '\xff\xfe ok\n'")
    assert obs.content == "\ufffd\ufffd ok"
    assert obs.exit_code == 0


async def test_cwd_runs_elsewhere_and_keeps_the_session_cwd(
    bash: BashSession, tmp_path: Path
) -> None:
    other = tmp_path / "sub dir"
    other.mkdir()
    obs = await run(bash, "pwd; cd /", cwd=str(other))
    assert obs.content == str(other)
    assert obs.metadata.working_dir == str(tmp_path)
    assert (await run(bash, "pwd")).content == str(tmp_path)
    obs = await run(bash, "echo never", cwd=str(tmp_path / "missing"))
    assert obs.exit_code == 1
    assert "never" not in obs.content


async def test_python_interpreter_follows_path(bash: BashSession, tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "python"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    obs = await run(bash, f"export PATH={bindir}:$PATH")
    assert obs.metadata.py_interpreter_path == str(fake)


async def test_env_is_passed_and_the_api_key_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SESSION_API_KEY", "secret-key")
    async with BashSession(working_dir=str(tmp_path), env={"EXTRA_VAR": "extra"}) as session:
        obs = await run(session, "echo ${EXTRA_VAR}-${SESSION_API_KEY:-unset}-$TERM-$PAGER")
        assert obs.content == "extra-unset-dumb-cat"


# --------------------------------------------------------------------------- timeouts, input


async def test_interactive_input(bash: BashSession) -> None:
    obs = await run(bash, 'read -p "Enter name: " name && echo "Hello $name"')
    assert "Enter name:" in obs.content
    assert obs.exit_code == -1
    assert obs.metadata.suffix == soft_timeout_suffix(SOFT)
    assert is_running(bash)
    obs = await run(bash, "John", is_input=True)
    assert "Hello John" in obs.content
    assert obs.exit_code == 0
    assert obs.metadata.prefix == CONTINUATION_PREFIX
    assert obs.metadata.suffix == completed_suffix(0)
    assert not is_running(bash)
    obs = await run(bash, "cat << EOF\nline 1\nline 2\nEOF")
    assert obs.content == "line 1\nline 2"


async def test_hard_timeout_then_continue(bash: BashSession) -> None:
    seen: list[str] = []
    obs = await run(bash, "for i in {1..5}; do echo $i; sleep 0.3; done", timeout=0.5)
    assert obs.exit_code == -1
    assert obs.metadata.suffix == hard_timeout_suffix(0.5)
    assert obs.metadata.prefix == ""
    seen.append(obs.content)
    for _ in range(20):
        obs = await run(bash, "", timeout=0.5)
        assert obs.metadata.prefix == CONTINUATION_PREFIX
        seen.append(obs.content)
        if obs.exit_code != -1:
            break
    assert obs.exit_code == 0
    assert obs.metadata.suffix == completed_suffix(0)
    numbers = "\n".join(part for part in seen if part).split()
    assert numbers == ["1", "2", "3", "4", "5"]  # each line exactly once
    assert len(seen) >= 3


async def test_hard_timeout_text_is_openhands_float(bash: BashSession) -> None:
    """OpenHands prints a whole-second hard timeout as a float: "after 1.0 seconds"."""
    obs = await run(bash, "sleep 3", timeout=1, blocking=True)
    assert obs.exit_code == -1
    assert obs.metadata.suffix.startswith("\n[The command timed out after 1.0 seconds. ")
    await run(bash, "C-c", is_input=True)


async def test_soft_timeout_keeps_the_process_running(bash: BashSession) -> None:
    obs = await run(bash, "echo start; sleep 1.2; echo end")
    assert obs.content == "start"
    assert obs.metadata.suffix == soft_timeout_suffix(SOFT)
    obs = await run(bash, "")
    assert obs.metadata.prefix == CONTINUATION_PREFIX
    # Either another stall (nothing new) or the end; the process was never killed.
    if obs.exit_code == -1:
        assert obs.content == ""
        obs = await run(bash, "", blocking=True)
    assert obs.content == "end"
    assert obs.exit_code == 0


@pytest.mark.parametrize("follow_up", ["", "C-c", "typed text"])
async def test_completion_between_observations_is_reported(
    bash: BashSession, follow_up: str
) -> None:
    obs = await run(bash, "echo a; sleep 0.6; echo b")
    assert obs.content == "a"
    await asyncio.sleep(1.5)  # it finishes while nobody waits
    assert not is_running(bash)
    obs = await run(bash, follow_up, is_input=bool(follow_up))
    assert obs.content == "b"
    assert obs.exit_code == 0
    assert obs.metadata.prefix == CONTINUATION_PREFIX
    assert obs.metadata.suffix == completed_suffix(0)  # nothing was sent to the shell
    assert (await run(bash, "")).content == NO_RUNNING_COMMAND_LOGS


async def test_blocking_ignores_the_soft_timeout(bash: BashSession) -> None:
    obs = await run(bash, "sleep 1.2; echo done", blocking=True)
    assert obs.content == "done"
    assert obs.exit_code == 0


async def test_control_c(bash: BashSession) -> None:
    obs = await run(bash, "sleep 100")
    assert obs.exit_code == -1
    obs = await run(bash, "C-c", is_input=True)
    assert obs.exit_code == 130
    assert obs.metadata.suffix == completed_suffix(130, "C-c")
    assert (await run(bash, "echo ok")).content == "ok"


async def test_control_c_stops_a_loop(bash: BashSession) -> None:
    await run(bash, "for i in 1 2 3; do sleep 10; done; echo after")
    obs = await run(bash, "C-c")  # a key works without is_input too
    assert obs.exit_code == 130
    assert "after" not in obs.content


async def test_control_d_and_control_z(bash: BashSession) -> None:
    await run(bash, "cat")
    obs = await run(bash, "hello", is_input=True)
    assert obs.content == "hello"  # cat's copy: typed input is not echoed
    assert obs.exit_code == -1
    obs = await run(bash, "C-d", is_input=True)
    assert obs.exit_code == 0
    await run(bash, "sleep 100")
    obs = await run(bash, "C-z", is_input=True)
    assert obs.exit_code == 148
    assert "Stopped" in obs.content
    assert (await run(bash, "kill -9 %1; wait")).exit_code in (0, 137)


async def test_nothing_running(bash: BashSession) -> None:
    obs = await run(bash, "")
    assert obs.content == NO_RUNNING_COMMAND_LOGS
    obs = await run(bash, "some input", is_input=True)
    assert obs.content == NO_RUNNING_COMMAND_INPUT
    obs = await run(bash, "C-c", is_input=True)
    assert obs.content == NO_RUNNING_COMMAND_INPUT
    assert (await run(bash, "echo fine")).content == "fine"


async def test_new_command_while_running_is_not_executed(bash: BashSession) -> None:
    await run(bash, "echo first; sleep 100")
    obs = await run(bash, "echo second")
    assert obs.exit_code == -1
    assert 'Your command "echo second" is NOT executed.' in obs.metadata.suffix
    assert "second" not in obs.content
    obs = await run(bash, "C-c", is_input=True)
    assert obs.exit_code == 130


async def start_in_background(
    session: BashSession, command: str
) -> asyncio.Future[CmdOutputObservation | ErrorObservation]:
    """Start ``command`` (which first prints "started") and return once it printed that."""
    started = asyncio.Event()
    task = asyncio.ensure_future(
        session.run(CmdRunAction(command, blocking=True), on_output=lambda _: started.set())
    )
    await started.wait()
    return task


async def test_concurrent_run_is_refused(bash: BashSession) -> None:
    first = await start_in_background(bash, "echo started; sleep 0.3; echo done")
    second = await run(bash, "echo other")
    assert second.exit_code == -1
    assert "is NOT executed" in second.metadata.suffix
    assert second.content == ""  # the waiting run gets the output
    result = await first
    assert isinstance(result, CmdOutputObservation)
    assert result.content == "started\ndone"
    assert result.exit_code == 0


async def test_background_server_does_not_wedge(bash: BashSession) -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    obs = await run(bash, "python3 -m http.server 0 &")
    assert loop.time() - started < 2
    assert obs.exit_code == 0
    job = re.match(r"\[1\] (\d+)", obs.content)
    assert job is not None, obs.content
    assert obs.metadata.pid == int(job.group(1))
    obs = await run(bash, "echo next")
    # The server's banner comes whenever it comes, maybe within this command's output.
    assert "next" in obs.content.splitlines()
    assert obs.exit_code == 0
    assert obs.metadata.pid == int(job.group(1))


async def wait_gone(pid: int) -> None:
    """Until process ``pid`` has exited (its pidfd turns readable)."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return  # exited and already reaped
    gone = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_reader(pidfd, gone.set)
    try:
        with anyio.fail_after(5):
            await gone.wait()
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)


@pytest.mark.parametrize("noticed_while_waiting", [True, False])
async def test_shell_dying_under_a_timed_out_command(
    bash: BashSession, noticed_while_waiting: bool
) -> None:
    obs = await run(bash, "echo $$; sleep 0.7; echo last words; kill -9 $$")
    assert obs.exit_code == -1
    if not noticed_while_waiting:
        await wait_gone(int(obs.content))
    obs = await run(bash, "", blocking=True)
    assert obs.content == "last words"
    assert obs.exit_code == 137
    assert obs.metadata.prefix == CONTINUATION_PREFIX
    assert obs.metadata.suffix.startswith(completed_suffix(137))
    assert "new bash session" in obs.metadata.suffix
    assert (await run(bash, "echo fresh")).content == "fresh"


# --------------------------------------------------------------------------- volume


async def test_five_thousand_lines(bash: BashSession) -> None:
    obs = await run(bash, "seq 1 5000")
    lines = obs.content.split("\n")
    assert lines == [str(i) for i in range(1, 5001)]


async def test_fifty_thousand_lines_are_truncated(bash: BashSession) -> None:
    """The last 10,000 lines are kept (and said so), then cut to head and tail; the
    stream still carried every line."""
    pieces: list[str] = []
    obs = await bash.run(CmdRunAction("seq 1 50000"), on_output=pieces.append)
    assert isinstance(obs, CmdOutputObservation)
    assert obs.exit_code == 0
    assert obs.metadata.prefix == truncated_lines_prefix(10_000)
    head, marker, tail = obs.content.partition(TRUNCATION_MARKER)
    assert marker
    assert head.startswith("40001\n40002\n")
    assert tail.endswith("49999\n50000")
    assert len(head) == len(tail) == 15_000
    assert "".join(pieces) == "".join(f"{i}\n" for i in range(1, 50001))


# --------------------------------------------------------------------------- the shell dies


async def test_exit_restarts_the_shell(bash: BashSession, tmp_path: Path) -> None:
    await run(bash, "export LOST=yes; cd /tmp")
    obs = await run(bash, "exit 3")
    assert obs.exit_code == 3
    assert "a new bash session was started in /tmp" in obs.metadata.suffix
    assert obs.metadata.suffix.startswith(completed_suffix(3))
    obs = await run(bash, "echo ${LOST:-gone}; pwd")
    assert obs.content == "gone\n/tmp"
    assert obs.exit_code == 0


async def test_killed_shell_restarts(bash: BashSession) -> None:
    obs = await run(bash, "echo before; kill -9 $$")
    assert obs.content == "before"
    assert obs.exit_code == 137
    assert "new bash session" in obs.metadata.suffix
    assert (await run(bash, "echo after")).content == "after"


async def test_shell_killed_while_idle_restarts_on_next_run(bash: BashSession) -> None:
    obs = await run(bash, "echo $$")
    assert bash.is_alive
    os.kill(int(obs.content), 9)
    await wait_gone(int(obs.content))
    obs = await run(bash, "echo works")
    assert obs.content == "works"
    assert "new bash session" in obs.metadata.suffix


@pytest.fixture
def no_pidfds(monkeypatch: pytest.MonkeyPatch) -> None:
    """As on a kernel (or a sandbox) without pidfds: bash's exit is watched by a task."""

    def unsupported(pid: int, flags: int = 0) -> int:
        raise OSError(38, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", unsupported)


@pytest.mark.usefixtures("no_pidfds")
async def test_without_pidfds_a_dying_shell_is_noticed_and_replaced(tmp_path: Path) -> None:
    async with BashSession(working_dir=str(tmp_path), no_change_timeout=SOFT) as session:
        obs = await run(session, "echo before; kill -9 $$", blocking=True)
        assert (obs.content, obs.exit_code) == ("before", 137)
        assert "new bash session" in obs.metadata.suffix
        obs = await run(session, "exit 3")
        assert obs.exit_code == 3
        assert (await run(session, "echo after")).content == "after"


async def test_a_failing_reader_puts_the_session_down_loudly(
    bash: BashSession, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(data: bytes, now: float) -> list[str]:
        raise ValueError("core bug")

    monkeypatch.setattr(bash._core, "receive_output", broken)
    with pytest.raises(BashSessionError, match="core bug") as raised:
        await bash.run(CmdRunAction("echo hi", blocking=True))
    assert isinstance(raised.value, ServerError)
    assert isinstance(raised.value.__cause__, ValueError)
    assert "the session is down" in caplog.text
    with pytest.raises(BashSessionError):  # and stays down
        await bash.run(CmdRunAction("echo again"))


def test_start_error_is_a_server_error() -> None:
    assert issubclass(BashStartError, ServerError)
    assert issubclass(BashStartError, RuntimeError)


# --------------------------------------------------------------------------- lifecycle


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


async def test_aclose_leaves_no_process_and_no_fd(tmp_path: Path) -> None:
    before = _open_fds()
    session = BashSession(working_dir=str(tmp_path), no_change_timeout=SOFT)
    assert session.cwd == str(tmp_path)
    await session.start()
    obs = await run(session, "sleep 300 & python3 -m http.server 0 >/dev/null 2>&1 & echo $$")
    shell_pid = int(obs.content.splitlines()[-1])
    assert len(session_members(shell_pid)) == 3
    await run(session, "sleep 100")  # and one running in the foreground
    await session.aclose()
    assert session_members(shell_pid) == []
    assert not os.path.exists(f"/proc/{shell_pid}")
    assert _open_fds() <= before
    await session.aclose()  # idempotent
    closed = await session.run(CmdRunAction("echo hi"))
    assert isinstance(closed, ErrorObservation)


async def test_start_in_a_missing_directory_fails_cleanly(tmp_path: Path) -> None:
    before = _open_fds()
    session = BashSession(working_dir=str(tmp_path / "missing"))
    with pytest.raises(BashStartError, match="missing"):
        await session.start()
    await session.aclose()
    assert _open_fds() <= before


async def test_aclose_while_a_run_waits(tmp_path: Path) -> None:
    session = BashSession(working_dir=str(tmp_path))
    await session.start()
    waiting = await start_in_background(session, "echo started; sleep 100")
    await session.aclose()
    assert isinstance(await waiting, ErrorObservation)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
async def test_runs_as_the_given_user(tmp_path: Path) -> None:
    tmp_path.chmod(0o777)
    async with BashSession(working_dir=str(tmp_path), user_id=65534) as session:
        obs = await run(session, "id -u; echo $HOME")
        uid, home = obs.content.splitlines()
        assert uid == "65534"
        try:
            assert home == pwd.getpwuid(65534).pw_dir
        except KeyError:
            assert home == "/"


async def test_a_prompt_command_and_a_ps1_of_the_agent_leave_the_session_working(
    bash: BashSession,
) -> None:
    # In this order the session used to stop seeing prompts: the agent's PROMPT_COMMAND
    # replaced the one that puts our PS1 back, then its PS1 replaced ours.
    await run(bash, "PROMPT_COMMAND='echo from-hook'")
    await run(bash, "PS1='mine> '")
    obs = await run(bash, "echo still")
    assert obs.exit_code == 0
    assert obs.content.splitlines() == ["still", "from-hook"]
    obs = await run(bash, "export PROMPT_COMMAND=\"true; $PROMPT_COMMAND\"; PS1='$ '; echo again")
    assert obs.exit_code == 0
    assert obs.content.splitlines()[0] == "again"
