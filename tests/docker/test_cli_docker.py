"""The command line against a real engine.

Other sandboxes of ours may run on the same engine (a user's, another test
run's): every check looks only at what the test made.
"""

from __future__ import annotations

import asyncio
import os
import sys

import pytest
from support import ConfigFactory, session_id

from events import EventStream
from openhands_rt import DockerRuntime
from openhands_rt.docker_runtime import CONTAINER_PREFIX

pytestmark = pytest.mark.docker


async def cli(*args: str, timeout: float = 180) -> tuple[int, str, str]:
    """Run ``openhands-rt ARGS``; its exit code, standard output and standard error."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "openhands_rt.cli",
        *args,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "COLUMNS": "200"},
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except asyncio.TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def listed_by_ps(*args: str) -> set[str]:
    code, stdout, stderr = await cli("ps", *args)
    assert code == 0, stderr
    return {word for word in stdout.split() if word.startswith(CONTAINER_PREFIX)}


async def test_run_in_a_sandbox_streams_and_exits_with_the_code(
    runtime_image: str, make_config: ConfigFactory
) -> None:
    run = asyncio.create_task(
        cli("run", "--image", runtime_image, "--", "whoami; hostname; (exit 3)")
    )
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
