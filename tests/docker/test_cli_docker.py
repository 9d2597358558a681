"""The command line against a real engine.

Other sandboxes of ours may run on the same engine (a user's, another test
run's): every check looks only at what the test made.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiodocker
import pytest
from aiodocker.exceptions import DockerError
from support import ConfigFactory, cli, session_id

from events import EventStream
from openhands_rt import DockerRuntime, SandboxError
from openhands_rt.docker_runtime import CONTAINER_PREFIX
from openhands_rt.sandboxes import LABEL_OWNER, owner_labels

pytestmark = pytest.mark.docker


def cli_sync(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """``openhands-rt ARGS`` run to its end (for tests that need no event loop meanwhile)."""
    return subprocess.run(
        [sys.executable, "-m", "openhands_rt.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
    )


async def listed_by_ps(*args: str) -> set[str]:
    code, stdout, stderr = await cli("ps", *args)
    assert code == 0, stderr
    return {word for word in stdout.split() if word.startswith(CONTAINER_PREFIX)}


@pytest.fixture
def image_args(runtime_mode: str, runtime_image: str, base_image: str) -> list[str]:
    """The CLI's image options in each runtime mode: the built image, or no build at all."""
    if runtime_mode == "mount":
        return ["--no-build", "--base-image", base_image]
    return ["--image", runtime_image]


async def test_run_in_a_sandbox_streams_and_exits_with_the_code(
    image_args: list[str], make_config: ConfigFactory
) -> None:
    run = asyncio.create_task(cli("run", *image_args, "--", "whoami; hostname; (exit 3)"))
    # Another sandbox of ours starts while the command runs and is still there when we look.
    async with (
        EventStream() as stream,
        DockerRuntime(stream, make_config(), session_id=session_id()) as neighbour,
    ):
        code, stdout, stderr = await run
        assert code == 3, stderr
        user, host = stdout.split()
        assert user == "openhands"
        assert host.startswith("sandbox-")
        # The hostname is "sandbox-" + the session id's first 20 characters; ids are shorter.
        session = host.removeprefix("sandbox-")
        assert 0 < len(session) < 20
        listed = await listed_by_ps()
        assert neighbour.container_name in listed, "ps does not list a running sandbox"
        assert CONTAINER_PREFIX + session not in listed, "the sandbox was not removed"


async def test_errors_are_one_line_and_ps_gc_work(test_labels: dict[str, str]) -> None:
    code, _, stderr = await cli("run", "--image", "openhands-rt-test/no-such-image:x", "--", "true")
    assert code != 0
    assert "no-such-image" in stderr
    assert "Traceback" not in stderr
    # gc only what carries this run's labels: orphans on the engine that are not ours stay.
    scope = [arg for key, value in test_labels.items() for arg in ("--label", f"{key}={value}")]
    code, stdout, stderr = await cli("gc", *scope)
    assert code == 0, stderr
    assert "orphaned sandbox" in stdout
    code, _, stderr = await cli("gc", "--label", "no-equals-sign")
    assert code != 0
    assert "KEY=VALUE" in stderr
    assert "Traceback" not in stderr


async def test_ps_with_a_label_lists_only_sandboxes_carrying_it(
    make_config: ConfigFactory,
) -> None:
    scope = "org.openhands-rt.test-scope"
    configs = [make_config(labels={**make_config().labels, scope: session_id()}) for _ in "ab"]
    async with (
        EventStream() as first_stream,
        EventStream() as second_stream,
        DockerRuntime(first_stream, configs[0], session_id=session_id()) as first,
        DockerRuntime(second_stream, configs[1], session_id=session_id()) as second,
    ):
        only_first = await listed_by_ps("--label", f"{scope}={configs[0].labels[scope]}")
        assert only_first == {first.container_name}
        assert {first.container_name, second.container_name} <= await listed_by_ps()


# ---------------------------------------------------------------- argv, stdin (issue 14)


def test_several_arguments_are_one_argv_and_one_argument_is_a_shell_line(
    image_args: list[str],
) -> None:
    result = cli_sync("run", *image_args, "--", "printf", "%s|", "a b", "c")
    assert result.returncode == 0, result.stderr
    # A short output comes whole in the observation, right-stripped: the CLI ends it with "\n".
    assert result.stdout == "a b|c|\n"
    result = cli_sync("run", *image_args, "--", "echo", "it's")
    assert (result.returncode, result.stdout) == (0, "it's\n"), result.stderr
    result = cli_sync("run", *image_args, "--", "sh", "-c", "exit 5")
    assert result.returncode == 5, result.stderr
    result = cli_sync("run", *image_args, "--", "echo one && echo two; exit 4")
    assert (result.returncode, result.stdout.split()) == (4, ["one", "two"]), result.stderr


def cli_with_input(
    *args: str, data: bytes, timeout: float = 180
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "openhands_rt.cli", *args],
        input=data,
        capture_output=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200"},
        check=False,
    )


def test_stdin_is_closed_unless_interactive(image_args: list[str]) -> None:
    # Without -i the command sees end of input at once (it used to wait forever).
    result = cli_with_input("run", *image_args, "--", "cat; echo done", data=b"hi\n", timeout=120)
    assert (result.returncode, result.stdout) == (0, b"done\n"), result.stderr


def test_interactive_passes_every_byte_and_end_of_input(image_args: list[str]) -> None:
    text = b"first\n\n   indented  \n\ttab\x03\x04 and \xc3\xa9t\xc3\xa9\n" + b"x" * 9000 + b"\n"
    binary = bytes(range(256)) * 600  # not UTF-8: relayed in base64
    for data in (text, binary):
        result = cli_with_input("run", "-i", *image_args, "--", "sha256sum; wc -c", data=data)
        assert result.returncode == 0, result.stderr
        digest, _, count = result.stdout.decode().split()
        assert digest == hashlib.sha256(data).hexdigest()
        assert int(count) == 0, "the second command read input the first should have taken"


# ---------------------------------------------------------------- ending the CLI (issue 14)


async def containers_of(docker: aiodocker.Docker, pid: int) -> list[Any]:
    """The containers the process ``pid`` (alive) owns."""
    owner = owner_labels(pid)[LABEL_OWNER]
    return list(
        await docker.containers.list(all=True, filters={"label": [f"{LABEL_OWNER}={owner}"]})
    )


class Terminal:
    """The master side of a pty: what the program wrote, consumed marker by marker."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.unread = b""

    async def expect(self, marker: bytes, timeout: float) -> bytes:
        """Everything up to and including the next ``marker``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while marker not in self.unread:
            ready = asyncio.Event()
            loop.add_reader(self.fd, ready.set)
            try:
                await asyncio.wait_for(ready.wait(), max(0.0, deadline - loop.time()))
            finally:
                loop.remove_reader(self.fd)
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:  # EIO: the other side of the terminal is gone
                chunk = b""
            if not chunk:
                raise AssertionError(f"end of output before {marker!r}: {self.unread!r}")
            self.unread += chunk
        end = self.unread.index(marker) + len(marker)
        seen, self.unread = self.unread[:end], self.unread[end:]
        return seen


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
async def test_every_way_of_ending_run_removes_its_sandbox(
    image_args: list[str], docker: aiodocker.Docker, signum: int
) -> None:
    """SIGINT (Ctrl-C), SIGTERM (``timeout``, ``kill``), SIGHUP (the terminal closed)."""
    master, slave = os.openpty()
    command = [sys.executable, "-m", "openhands_rt.cli", "run", *image_args]
    command += ["--", "echo started; sleep 60"]
    # SIGHUP as when a terminal closes: the CLI leads a session whose terminal is the pty.
    prefix = ["setsid", "--ctty"] if signum == signal.SIGHUP else []
    proc = await asyncio.create_subprocess_exec(
        *prefix, *command, stdin=slave, stdout=slave, stderr=slave, start_new_session=not prefix
    )
    os.close(slave)
    os.set_blocking(master, False)
    made: list[Any] = []
    try:
        await Terminal(master).expect(b"started", timeout=120)
        made = await containers_of(docker, proc.pid)
        assert len(made) == 1, made
        if signum == signal.SIGHUP:
            os.close(master)
            master = -1
        else:
            proc.send_signal(signum)
        code = await asyncio.wait_for(proc.wait(), 60)
        assert code == 128 + signum
        assert await containers_of_ids(docker, [c.id for c in made]) == []
    finally:
        if master >= 0:
            os.close(master)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        for container in made:
            with contextlib.suppress(DockerError):
                await container.delete(force=True)


async def containers_of_ids(docker: aiodocker.Docker, ids: list[str]) -> list[str]:
    left = []
    for container_id in ids:
        try:
            await docker.containers.get(container_id)
        except DockerError as exc:
            if exc.status != 404:
                raise
        else:
            left.append(container_id)
    return left


# ---------------------------------------------------------------- the shell, as typed (issue 14)


async def test_shell_ctrl_c_interrupts_the_command_and_ctrl_d_leaves(
    image_args: list[str], docker: aiodocker.Docker
) -> None:
    master, slave = os.openpty()
    # A session whose controlling terminal is the pty: Ctrl-C there is SIGINT, as for a user.
    proc = await asyncio.create_subprocess_exec(
        *("setsid", "--ctty", sys.executable, "-m", "openhands_rt.cli"),
        *("shell", *image_args),
        stdin=slave,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    os.set_blocking(master, False)
    made: list[Any] = []
    loop = asyncio.get_running_loop()

    terminal = Terminal(master)

    async def typed(keys: bytes, until: bytes, timeout: float = 30) -> bytes:
        os.write(master, keys)
        return await terminal.expect(until, timeout)

    try:
        await terminal.expect(b"$ ", timeout=120)
        made = await containers_of(docker, proc.pid)
        assert len(made) == 1, made
        await typed(b"echo slee''ping; sleep 30; echo not interrupted\n", b"sleeping")
        started = loop.time()
        after = await typed(b"\x03", b"$ ", timeout=10)
        assert loop.time() - started < 3, "the prompt took too long to come back"
        assert b"130" in after  # the sandbox's command ended with SIGINT's status
        out = await typed(b"echo alive $((6*7))\n", b"alive 42")
        assert b"not interrupted" not in out
        # A running command reads what is typed.
        await typed(b"read word; echo got $word\n", b"\n")
        await typed(b"hello\n", b"got hello")
        # Ctrl-C at the prompt drops the line being typed.
        await terminal.expect(b"$ ", timeout=10)
        await typed(b"echo dro''pped", b"pped")
        await typed(b"\x03", b"$ ", timeout=10)
        out = await typed(b"echo fre''sh\n", b"fresh\r\n")
        assert b"dropped" not in out
        await terminal.expect(b"$ ", timeout=10)
        os.write(master, b"\x04")  # Ctrl-D at the prompt
        assert await asyncio.wait_for(proc.wait(), 60) == 0
        assert await containers_of_ids(docker, [c.id for c in made]) == []
    finally:
        os.close(master)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        for container in made:
            with contextlib.suppress(DockerError):
                await container.delete(force=True)


def test_a_root_owned_workspace_given_to_the_sandbox_user_is_said(
    image_args: list[str], tmp_path: Path
) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    os.chown(workspace, 0, 0)  # the tests run as root in CI; made explicit here
    result = cli_sync("run", *image_args, "--workspace", str(workspace), "--", "true")
    assert result.returncode == 0, result.stderr
    said = " ".join(result.stderr.split())
    assert "note: the workspace was owned by root" in said, result.stderr


async def test_docker_runtime_says_what_is_wrong_with_the_workspace(
    make_config: Any, tmp_path: Path
) -> None:
    config = make_config()
    config.workspace_dir = str(tmp_path / "file")  # after the config's own check
    (tmp_path / "file").write_text("x")
    async with EventStream() as stream:
        runtime = DockerRuntime(stream, config)
        with pytest.raises(SandboxError, match="is a file, not a directory") as caught:
            await runtime.connect()
        assert "Docker engine" not in str(caught.value)
