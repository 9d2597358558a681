"""The examples with their default runtime, DockerRuntime, against a real engine.

Each test labels its sandbox with this run's test label (removed at the end of
the session by conftest.py) plus a label of its own, and checks that no
container carrying that label is left when the example is done.
"""

from __future__ import annotations

import asyncio
import importlib.util
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType

import aiohttp
import anyio
import pytest
from aiohttp.test_utils import TestServer

from events import CmdOutputObservation, CmdRunAction, decode_event
from openhands_rt import SandboxConfig
from openhands_rt.docker_client import open_docker
from openhands_rt.image import build_runtime_image

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EXAMPLE_LABEL = "org.openhands-rt.test-example"


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def example_image(base_image: str, test_repository: str, test_labels: dict[str, str]) -> str:
    result = asyncio.run(
        build_runtime_image(base_image, repository=test_repository, labels=test_labels)
    )
    return result.image


@pytest.fixture
async def labels(test_labels: dict[str, str]) -> AsyncIterator[dict[str, str]]:
    """This run's labels plus one for this test; asserts its containers are gone after."""
    own = f"{EXAMPLE_LABEL}={uuid.uuid4().hex[:12]}"
    key, value = own.split("=")
    yield {**test_labels, key: value}
    async with open_docker() as docker:
        left = await docker.containers.list(all=True, filters={"label": [own]})
    assert left == [], "the example left its sandbox container behind"


async def test_agent_subscriber_in_docker(example_image: str, labels: dict[str, str]) -> None:
    label_args = [arg for key, value in labels.items() for arg in ("--label", f"{key}={value}")]
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLES / "agent_subscriber.py"),
        "--runtime-image",
        example_image,
        "--secret",
        "77",
        *label_args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        with anyio.fail_after(120):
            out_bytes, err_bytes = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    out, err = out_bytes.decode(), err_bytes.decode()
    assert process.returncode == 0, err
    assert "summary: the secret was 77; found in 7 guesses" in out
    assert "summary: guesses [50, 75, 88, 81, 78, 76, 77]" in out
    assert "-> FileReadObservation /workspace/secret.txt" in out  # it ran in the container


async def test_web_stream_in_docker(example_image: str, labels: dict[str, str]) -> None:
    web_stream = load_example("web_stream")
    config = SandboxConfig(runtime_container_image=example_image, labels=labels)
    server = TestServer(web_stream.create_app(config=config))
    async with server, aiohttp.ClientSession() as session:
        async with session.post(
            server.make_url("/run"), json={"command": "hostname; whoami"}
        ) as response:
            assert response.status == 202
            action_id = (await response.json())["id"]
        async with session.ws_connect(server.make_url(f"/events?from={action_id}")) as ws:
            with anyio.fail_after(60):
                while True:
                    message = await ws.receive()
                    assert message.type == aiohttp.WSMsgType.TEXT, message
                    event = decode_event(message.data.encode())
                    if event.id == action_id:
                        assert isinstance(event, CmdRunAction)
                    if isinstance(event, CmdOutputObservation) and event.cause == action_id:
                        break
    hostname, user = event.content.splitlines()
    assert hostname.startswith("sandbox-")
    assert user == "openhands"
