"""One session id, one owner (issue 14, point 11): a live runtime's session id is refused."""

from __future__ import annotations

import asyncio
import json
import sys
import textwrap

import pytest
from support import ConfigFactory, RuntimeFactory, SandboxGone, container_exists, session_id, sh

from events import EventStream
from openhands_rt import DockerRuntime, SandboxError, SessionInUseError
from openhands_rt.docker_runtime import CONTAINER_PREFIX

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]


async def test_a_second_runtime_in_this_process_is_refused(
    make_runtime: RuntimeFactory, make_config: ConfigFactory, sandbox_gone: SandboxGone
) -> None:
    sid = session_id()
    async with (
        EventStream() as stream1,
        EventStream() as stream2,
        make_runtime(stream1, make_config(), session_id=sid) as rt1,
    ):
        # On another stream (it would share the container) and on the same one
        # (its actions would never be answered): both refused, at once.
        for stream in (stream2, stream1):
            second = make_runtime(stream, make_config(), session_id=sid)
            with pytest.raises(SessionInUseError, match=sid) as caught:
                await asyncio.wait_for(second.connect(), 30)
            assert isinstance(caught.value, SandboxError)
            assert caught.value.session_id == sid
            await second.aclose()
        # The refused runtimes touched nothing: the owner's sandbox works on.
        obs = await asyncio.wait_for(sh(rt1, "echo still here"), 30)
        assert obs.content.strip() == "still here"
    assert await sandbox_gone(rt1)


async def test_a_kept_alive_sandbox_whose_owner_closed_it_can_be_attached(
    make_runtime: RuntimeFactory, make_config: ConfigFactory, sandbox_gone: SandboxGone
) -> None:
    sid = session_id()
    async with (
        EventStream() as stream1,
        make_runtime(stream1, make_config(keep_runtime_alive=True), session_id=sid) as rt1,
    ):
        await sh(rt1, "echo kept > /tmp/kept")
        async with EventStream() as other:
            refused = make_runtime(other, make_config(), session_id=sid)
            with pytest.raises(SessionInUseError):
                await refused.connect()
            await refused.aclose()
    # Its owner closed it: attaching is the documented way to take it over.
    async with (
        EventStream() as stream2,
        make_runtime(stream2, make_config(), session_id=sid) as rt2,
    ):
        assert rt2.attached
        obs = await sh(rt2, "cat /tmp/kept")
        assert obs.content.strip() == "kept"
    assert await sandbox_gone(rt2)


OWNER_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    from events import EventStream
    from openhands_rt import DockerRuntime, SandboxConfig

    async def main() -> None:
        args = json.loads(sys.argv[1])
        config = SandboxConfig(runtime_container_image=args["image"], labels=args["labels"])
        async with EventStream() as stream:
            async with DockerRuntime(stream, config, session_id=args["sid"]):
                print("ready", flush=True)
                await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)

    asyncio.run(main())
    """
)


async def test_a_session_owned_by_another_process_is_refused(
    make_config: ConfigFactory, runtime_image: str, test_labels: dict[str, str]
) -> None:
    sid = session_id()
    args = json.dumps({"image": runtime_image, "labels": test_labels, "sid": sid})
    owner = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        OWNER_SCRIPT,
        args,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert owner.stdin is not None
    assert owner.stdout is not None
    try:
        line = await asyncio.wait_for(owner.stdout.readline(), 120)
        assert line.strip() == b"ready"
        async with EventStream() as stream:
            second = DockerRuntime(stream, make_config(), session_id=sid)
            with pytest.raises(SessionInUseError, match=f"process {owner.pid}"):
                await asyncio.wait_for(second.connect(), 30)
            await second.aclose()
        # Refused without harm: the owner's container is still there and running.
        assert await container_exists(CONTAINER_PREFIX + sid)
    finally:
        owner.stdin.write(b"close\n")
        await owner.stdin.drain()
        assert await asyncio.wait_for(owner.wait(), 60) == 0
    assert not await container_exists(CONTAINER_PREFIX + sid)
