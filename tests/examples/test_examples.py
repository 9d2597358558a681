"""The examples, run for real with LocalRuntime (the Docker runs are in tests/docker).

- ``agent_subscriber.py`` runs as a script, as a user would run it;
- ``web_stream.py``'s app runs in-process behind aiohttp's TestServer and is
  driven by a real ClientSession and WebSocket; its ``main()`` also runs once as
  a script, stopped with SIGINT.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType

import aiohttp
import anyio
import pytest
from aiohttp.test_utils import TestServer

from events import (
    CmdOutputChunk,
    CmdOutputObservation,
    CmdRunAction,
    Event,
    EventSource,
    RuntimeStatusObservation,
    decode_event,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being made
    spec.loader.exec_module(module)
    return module


web_stream = load_example("web_stream")


async def run_script(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        with anyio.fail_after(60):
            out, err = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


def find(pattern: str, text: str) -> re.Match[str]:
    match = re.search(pattern, text)
    assert match is not None, f"{pattern!r} not in:\n{text}"
    return match


# ---------------------------------------------------------------- agent_subscriber.py


async def test_agent_subscriber_finds_a_given_secret() -> None:
    code, out, err = await run_script(
        str(EXAMPLES / "agent_subscriber.py"), "--local", "--secret", "42"
    )
    assert code == 0, err
    # Bisection from 50 can only take this path to 42: each guess followed a verdict.
    assert "summary: guesses [50, 25, 37, 43, 40, 41, 42]" in out
    assert "summary: the secret was 42; found in 7 guesses" in out
    verdicts = re.findall(r"-> exit 0: '(higher|lower|correct)'", out)
    assert verdicts == ["lower", "higher", "higher", "lower", "higher", "higher", "correct"]
    # The slow command's chunks reached the agent before its observation did.
    lines = out.splitlines()
    first_chunk = next(i for i, line in enumerate(lines) if "(chunk of #" in line)
    observation = next(i for i, line in enumerate(lines) if "'thinking 1\\nthinking 2" in line)
    assert first_chunk < observation
    streamed = int(find(r"output chunks streamed before their observations: (\d+)", out)[1])
    assert streamed >= 1
    assert re.search(r"events seen through the subscription: .*CmdRunAction 9\b", out), out


async def test_agent_subscriber_finds_the_sandbox_secret() -> None:
    code, out, err = await run_script(str(EXAMPLES / "agent_subscriber.py"), "--local")
    assert code == 0, err
    match = find(r"the secret was (\d+); found in (\d+) guesses", out)
    secret, count = int(match[1]), int(match[2])
    assert 1 <= secret <= 100
    assert 1 <= count <= 7
    guesses = json.loads(find(r"summary: guesses (\[.*\])", out)[1])
    assert guesses[-1] == secret
    assert len(guesses) == count


async def test_agent_subscriber_reports_a_failure_in_one_line() -> None:
    code, _, err = await run_script(
        str(EXAMPLES / "agent_subscriber.py"), "--local", "--deadline", "0.001"
    )
    assert code == 1
    assert err.startswith("agent failed: no result within 0.001 s")
    assert "Traceback" not in err


# ---------------------------------------------------------------- web_stream.py


@pytest.fixture
async def server() -> AsyncIterator[TestServer]:
    test_server = TestServer(web_stream.create_app(local=True))
    async with test_server:
        yield test_server


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


async def events_until(
    ws: aiohttp.ClientWebSocketResponse[bool], done: type[Event], cause: int
) -> list[Event]:
    """Events from the socket up to the ``done``-typed one that answers ``cause``."""
    received: list[Event] = []
    with anyio.fail_after(30):
        while True:
            message = await ws.receive()
            assert message.type == aiohttp.WSMsgType.TEXT, message
            event = decode_event(message.data.encode())
            received.append(event)
            if isinstance(event, done) and event.cause == cause:
                return received


async def test_page_opens_the_event_socket(
    server: TestServer, session: aiohttp.ClientSession
) -> None:
    async with session.get(server.make_url("/")) as response:
        assert response.status == 200
        assert response.content_type == "text/html"
        page = await response.text()
    assert "new WebSocket(" in page
    assert "/events?from=0" in page
    assert 'fetch("/run"' in page


async def test_command_streams_action_chunks_and_observation(
    server: TestServer, session: aiohttp.ClientSession
) -> None:
    async with session.ws_connect(server.make_url("/events")) as ws:
        command = "for i in 1 2 3; do echo tick $i; sleep 0.1; done"
        async with session.post(server.make_url("/run"), json={"command": command}) as response:
            assert response.status == 202
            action_id = (await response.json())["id"]
        events = await events_until(ws, CmdOutputObservation, action_id)
    # History first: the runtime's status events from id 0, then the ids without a gap.
    assert [e.id for e in events] == list(range(len(events)))
    assert isinstance(events[0], RuntimeStatusObservation)
    action = next(e for e in events if e.id == action_id)
    assert isinstance(action, CmdRunAction)
    assert action.command == command
    assert action.source == EventSource.USER
    chunks = [e for e in events if isinstance(e, CmdOutputChunk) and e.cause == action_id]
    assert chunks, "the command's output was not streamed"
    assert "".join(c.data for c in chunks).replace("\r\n", "\n") == "tick 1\ntick 2\ntick 3\n"
    observation = events[-1]
    assert isinstance(observation, CmdOutputObservation)
    assert observation.content == "tick 1\ntick 2\ntick 3"
    assert observation.exit_code == 0
    assert all(e.id < observation.id for e in chunks)


async def test_form_post_and_replay_from_an_id(
    server: TestServer, session: aiohttp.ClientSession
) -> None:
    form = aiohttp.FormData({"command": "echo from-a-form"})
    async with session.post(server.make_url("/run"), data=form) as response:
        assert response.status == 202
        action_id = (await response.json())["id"]
    # A socket opened afterwards, from the action's id: the action first, then its answer.
    async with session.ws_connect(server.make_url(f"/events?from={action_id}")) as ws:
        events = await events_until(ws, CmdOutputObservation, action_id)
    assert events[0].id == action_id
    assert isinstance(events[0], CmdRunAction)
    observation = events[-1]
    assert isinstance(observation, CmdOutputObservation)
    assert observation.content == "from-a-form"


@pytest.mark.parametrize(
    ("path", "kwargs"),
    [
        ("/run", {"json": {"command": ""}}),
        ("/run", {"json": ["echo hi"]}),
        ("/run", {"data": b"{not json", "headers": {"Content-Type": "application/json"}}),
        ("/run", {"data": {"cmd": "echo hi"}}),
    ],
)
async def test_bad_run_requests_are_refused(
    server: TestServer, session: aiohttp.ClientSession, path: str, kwargs: dict[str, object]
) -> None:
    before = len(server.app[web_stream.STREAM])
    async with session.post(server.make_url(path), **kwargs) as response:
        assert response.status == 400
    assert len(server.app[web_stream.STREAM]) == before


@pytest.mark.parametrize("query", ["from=-1", "from=abc"])
async def test_bad_event_socket_requests_are_refused(
    server: TestServer, session: aiohttp.ClientSession, query: str
) -> None:
    async with session.get(server.make_url(f"/events?{query}")) as response:
        assert response.status == 400


async def test_stopping_the_app_closes_open_sockets_and_the_sandbox(
    session: aiohttp.ClientSession,
) -> None:
    app = web_stream.create_app(local=True)
    server = TestServer(app)
    await server.start_server()
    try:
        process = app[web_stream.RUNTIME].process
        assert process is not None
        ws = await session.ws_connect(server.make_url("/events"))
        first = await ws.receive()
        assert first.type == aiohttp.WSMsgType.TEXT
    finally:
        with anyio.fail_after(10):
            await server.close()
    with anyio.fail_after(10):
        while (message := await ws.receive()).type == aiohttp.WSMsgType.TEXT:
            pass
    assert message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
    await ws.close()
    assert process.returncode is not None  # the local server process was stopped


async def test_web_stream_script_serves_and_stops_on_sigint(
    session: aiohttp.ClientSession,
) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLES / "web_stream.py"),
        "--local",
        "--port",
        "0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        with anyio.fail_after(30):
            line = ""
            while not line.startswith("serving on "):
                raw = await process.stdout.readline()
                assert raw, "the script exited before serving"
                line = raw.decode()
        url = line.split()[2]
        async with session.post(url + "run", json={"command": "echo via-script"}) as response:
            assert response.status == 202
            action_id = (await response.json())["id"]
        async with session.ws_connect(url + f"events?from={action_id}") as ws:
            events = await events_until(ws, CmdOutputObservation, action_id)
        assert isinstance(events[-1], CmdOutputObservation)
        assert events[-1].content == "via-script"
        process.send_signal(signal.SIGINT)
        with anyio.fail_after(15):
            out, err = await process.communicate()
        assert process.returncode == 0, err
        assert b"stopping" in out
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
