"""Crash safety with real processes and real signals (issue 8, item 1).

A host process using a durable stream and a kept-alive DockerRuntime is
SIGKILLed in the middle of a long command and in the middle of a burst of
appends; a new process (this test) reopens the log and attaches to the kept
container. Nothing flushed is lost, the torn tail is dropped, no action runs
twice, and the pending action's observation is recovered.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from events import CmdOutputObservation, CmdRunAction, EventStream
from openhands_rt import DockerRuntime, SandboxConfig
from openhands_rt.docker_client import open_docker
from openhands_rt.docker_runtime import CONTAINER_PREFIX

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]

CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from events import CmdRunAction, EventSource, EventStream
    from openhands_rt import DockerRuntime, SandboxConfig

    log_path, image, session, workspace, label_key, label_value = sys.argv[1:7]

    async def main() -> None:
        stream = EventStream(log_path=log_path)
        config = SandboxConfig(
            runtime_container_image=image, workspace_dir=workspace, keep_runtime_alive=True,
            labels={label_key: label_value}, no_change_timeout=30,
        )
        rt = DockerRuntime(stream, config, session_id=session)
        await rt.connect()
        await rt.run(CmdRunAction("echo warm"))
        action = stream.append(
            CmdRunAction("sleep 2; echo finished >> /workspace/marker; echo done", blocking=True)
        )
        await stream.flush()
        print("APPENDED", action.id, flush=True)
        await asyncio.sleep(0.5)  # the runtime has sent it; the sandbox is running it
        print("RUNNING", flush=True)
        # A burst of appends, flushed every 500: the parent kills us somewhere in it.
        for i in range(1_000_000):
            stream.append(CmdRunAction(f"true {i}"), source=EventSource.ENVIRONMENT)
            if i % 500 == 499:
                await stream.flush()
                print("FLUSHED", len(stream), flush=True)

    asyncio.run(main())
    """
)


async def test_sigkill_mid_command_and_mid_burst_then_recover(
    tmp_path: Path, runtime_image: str, test_labels: dict[str, str]
) -> None:
    log_path = tmp_path / "session.log"
    workspace = tmp_path / "ws"
    workspace.mkdir()
    session = "crash" + uuid.uuid4().hex[:8]
    ((label_key, label_value),) = test_labels.items()
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        str(log_path),
        runtime_image,
        session,
        str(workspace),
        label_key,
        label_value,
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None
    pending_id = -1
    flushed = 0
    try:
        while True:
            line = (await asyncio.wait_for(child.stdout.readline(), 60)).decode().split()
            assert line, "the child exited early"
            if line[0] == "APPENDED":
                pending_id = int(line[1])
            elif line[0] == "FLUSHED":
                flushed = int(line[1])
                if flushed >= 3000:
                    break
        child.send_signal(signal.SIGKILL)  # mid-burst, mid-command (sleep 2 is running)
        await child.wait()
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    assert pending_id >= 0

    # The command finishes in the sandbox while nobody is connected.
    await asyncio.sleep(2.5)

    stream = EventStream(log_path=log_path)
    async with stream:
        events = list(stream.iter_events())
        assert [e.id for e in events] == list(range(len(events))), "ids must stay gapless"
        assert len(events) >= flushed, "flushed events were lost"
        config = SandboxConfig(
            runtime_container_image=runtime_image,
            workspace_dir=str(workspace),
            labels=dict(test_labels),
        )
        async with DockerRuntime(stream, config, session_id=session) as rt:
            assert rt.attached
            assert rt.client_id == stream.stream_id
            obs = await rt.run(CmdRunAction("cat /workspace/marker"))
            recovered = [
                e
                for e in stream.iter_events()
                if isinstance(e, CmdOutputObservation) and e.cause == pending_id
            ]
    assert isinstance(obs, CmdOutputObservation)
    assert obs.content.strip() == "finished", "the pending action ran twice (or never)"
    assert len(recovered) == 1
    assert recovered[0].content.strip() == "done"
    assert recovered[0].exit_code == 0
    async with open_docker() as docker:
        names = [c["Names"][0] for c in await docker.containers.list(all=True)]
    assert f"/{CONTAINER_PREFIX}{session}" not in names
