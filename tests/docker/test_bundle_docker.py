"""The runtime bundle runs the real server in a container made from a busybox-only image.

The image (the ``busybox_image`` fixture of images.py) holds Debian's static
busybox and its applet links, nothing else (no python, no bash, no libc, no
/etc/passwd, no /tmp, no /workspace). The container is the one DockerRuntime
would create (openhands_rt.docker.spec), with the bundle bind-mounted
read-only and its launcher in place of the build mode's
``python -I -m container_server``.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiodocker
import anyio
import msgspec
import pytest

from events import (
    CmdOutputObservation,
    CmdRunAction,
    Event,
    FileReadAction,
    FileReadObservation,
)
from openhands_rt import SandboxConfig
from openhands_rt.bundle import BUNDLE_MOUNT, Bundle, make_bundle
from openhands_rt.channel import ChannelClient
from openhands_rt.docker.lifecycle import wait_listening
from openhands_rt.docker.rundir import make_run_dir, remove_dirs
from openhands_rt.docker.spec import SERVER_COMMAND, container_config, find_endpoint

pytestmark = pytest.mark.docker

WORKSPACE_OWNER = 4242


@pytest.fixture(scope="module")
def bundle() -> Bundle:
    started = time.monotonic()
    made = make_bundle()
    print(f"bundle {made.key}: {time.monotonic() - started:.2f} s")  # made, or found
    return made


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "workspace"
    path.mkdir()
    (path / "notes.txt").write_text("from the host\n")
    os.chown(path, WORKSPACE_OWNER, WORKSPACE_OWNER)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _body(config: SandboxConfig, bundle: Bundle, run_dir: str, workspace: Path) -> dict[str, Any]:
    body = container_config(
        config,
        session_id=uuid.uuid4().hex[:16],
        image=config.runtime_container_image or "",
        run_dir=run_dir,
        workspace=str(workspace),
        owner_uid=WORKSPACE_OWNER,
    )
    command = [*body["Entrypoint"], *body["Cmd"]]
    assert command[: len(SERVER_COMMAND)] == SERVER_COMMAND
    assert "--user-id" in command
    command = [*bundle.server_command(), *command[len(SERVER_COMMAND) :]]
    body["Entrypoint"], body["Cmd"] = command[:1], command[1:]
    body["HostConfig"]["Binds"].append(f"{bundle.path}:{BUNDLE_MOUNT}:ro")
    return body


@pytest.mark.timeout(120)
async def test_the_bundle_serves_a_busybox_only_image(
    docker: aiodocker.Docker,
    bundle: Bundle,
    busybox_image: str,
    workspace: Path,
    test_labels: dict[str, str],
    oci_runtime: str,
) -> None:
    config = SandboxConfig(
        runtime_container_image=busybox_image, labels=dict(test_labels), oci_runtime=oci_runtime
    )
    api_key = uuid.uuid4().hex
    run_dir = make_run_dir("bundle-test", api_key)
    name = f"openhands-rt-bundle-test-{uuid.uuid4().hex[:8]}"
    container = await docker.containers.create(_body(config, bundle, run_dir, workspace), name=name)
    try:
        since = time.time() - 1
        started = time.monotonic()
        await container.start()
        with anyio.fail_after(30):
            await wait_listening(docker, container, name=name, since=since)
        ready = time.monotonic() - started
        info = await container.show()
        endpoint = find_endpoint(config, info, api_key=api_key, name=name)

        answers: dict[int, Event] = {}
        arrived = {cause: anyio.Event() for cause in (1, 2, 3)}

        def on_event(event: Event) -> None:
            if isinstance(event, (CmdOutputObservation, FileReadObservation)) and event.cause:
                answers[event.cause] = event
                arrived[event.cause].set()

        client = ChannelClient(
            endpoint.url, api_key=api_key, client_id="bundle-test", on_event=on_event
        )

        async def answer(cause: int) -> Event:
            with anyio.fail_after(30):
                await arrived[cause].wait()
            return answers[cause]

        async with client:
            await client.send(
                msgspec.structs.replace(CmdRunAction("echo hi; id -u; echo $BASH"), id=1)
            )
            ran = await answer(1)
            first_observation = time.monotonic() - started
            await client.send(msgspec.structs.replace(FileReadAction("/workspace/notes.txt"), id=2))
            read = await answer(2)
            await client.send(
                msgspec.structs.replace(
                    CmdRunAction("echo made > /tmp/x && cat /tmp/x && ls -ld /workspace"), id=3
                )
            )
            tmp = await answer(3)
        print(
            f"docker start → readiness line {ready:.3f} s, → first observation "
            f"{first_observation:.3f} s"
        )
        assert isinstance(ran, CmdOutputObservation)
        assert ran.exit_code == 0
        assert ran.content.split() == ["hi", str(WORKSPACE_OWNER), f"{BUNDLE_MOUNT}/bin/bash"]
        assert isinstance(read, FileReadObservation)
        assert read.content == "from the host\n"
        assert isinstance(tmp, CmdOutputObservation)
        assert tmp.exit_code == 0
        assert tmp.content.splitlines()[0] == "made"
    finally:
        logs = "".join(await container.log(stdout=True, stderr=True))
        await container.delete(force=True)
        remove_dirs(run_dir)
        print(logs)
