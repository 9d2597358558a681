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
from openhands_rt import LocalRuntime

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
    # The page reaches its own sandbox's routes, relative to where it is served.
    assert "new WebSocket(url)" in page
    assert 'new URL("events", location.href)' in page
    assert 'fetch("run"' in page
    assert 'data-sandbox="main"' in page


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
    stream = (await server.app[web_stream.SANDBOXES].get("main")).stream
    before = len(stream)
    async with session.post(server.make_url(path), **kwargs) as response:
        assert response.status == 400
    assert len(stream) == before


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
        ws = await session.ws_connect(server.make_url("/events"))
        with anyio.fail_after(30):
            while True:
                message = await ws.receive()
                assert message.type == aiohttp.WSMsgType.TEXT, message
                event = decode_event(message.data.encode())
                if isinstance(event, RuntimeStatusObservation) and event.status == "ready":
                    break
        runtime = (await app[web_stream.SANDBOXES].get("main")).runtime
        assert isinstance(runtime, LocalRuntime)
        process = runtime.process
        assert process is not None
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
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLES / "web_stream.py"),
        "--local",
        "--port",
        "0",
        "--log-dir",
        str(logs),
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
        assert f"event logs in {logs}".encode() in out
        assert [p.name for p in logs.iterdir()] == ["main.log"]
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def run_and_wait(
    session: aiohttp.ClientSession, server: TestServer, prefix: str, command: str
) -> CmdOutputObservation:
    """POST ``command`` to the sandbox under ``prefix`` and wait for its observation."""
    async with session.post(server.make_url(f"{prefix}run"), json={"command": command}) as response:
        assert response.status == 202, await response.text()
        action_id = (await response.json())["id"]
    async with session.ws_connect(server.make_url(f"{prefix}events?from={action_id}")) as ws:
        events = await events_until(ws, CmdOutputObservation, action_id)
    observation = events[-1]
    assert isinstance(observation, CmdOutputObservation)
    return observation


async def test_named_sandboxes_are_separate(session: aiohttp.ClientSession, tmp_path: Path) -> None:
    app = web_stream.create_app(local=True, log_dir=tmp_path / "logs")
    server = TestServer(app)
    async with server:
        async with session.get(server.make_url("/s/alpha/")) as response:
            assert response.status == 200
            assert 'data-sandbox="alpha"' in await response.text()
        written = await run_and_wait(session, server, "/s/alpha/", "echo alpha > marker; pwd")
        missing = await run_and_wait(session, server, "/s/beta/", "pwd; cat marker")
        assert written.exit_code == 0
        assert missing.exit_code == 1
        assert "No such file" in missing.content
        # Each LocalRuntime has its own working directory: two sandboxes, not one.
        assert written.content != missing.content.splitlines()[0]
        assert app[web_stream.SANDBOXES].names() == ["alpha", "beta"]
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["alpha.log", "beta.log"]


async def test_history_comes_back_from_the_log_after_a_restart(
    session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    logs = tmp_path / "logs"
    server = TestServer(web_stream.create_app(local=True, log_dir=logs))
    async with server:
        first = await run_and_wait(session, server, "/s/kept/", "echo remembered")
    assert first.content == "remembered"
    server = TestServer(web_stream.create_app(local=True, log_dir=logs))
    async with server:
        async with session.ws_connect(server.make_url("/s/kept/events?from=0")) as ws:
            replayed = await events_until(ws, CmdOutputObservation, first.cause or -1)
            assert replayed[-1] == first  # the same event, id and timestamp included
            statuses: list[str] = []
            with anyio.fail_after(30):
                while "ready" not in statuses[len(statuses) - 1 :]:
                    event = decode_event((await ws.receive()).data.encode())
                    if isinstance(event, RuntimeStatusObservation):
                        statuses.append(event.status)
        # The first app's sandbox closed, then the second one started on the same log.
        assert statuses[-3:] == ["closed", "starting", "ready"]
        again = await run_and_wait(session, server, "/s/kept/", "echo again")
        assert again.id > first.id


async def test_new_redirects_to_a_fresh_sandbox_and_names_are_checked(
    server: TestServer, session: aiohttp.ClientSession
) -> None:
    async with session.get(server.make_url("/new"), allow_redirects=False) as response:
        assert response.status == 302
        assert re.fullmatch(r"/s/[0-9a-f]{8}/", response.headers["Location"])
    async with session.get(server.make_url("/s/alpha"), allow_redirects=False) as response:
        assert response.status == 302
        assert response.headers["Location"] == "/s/alpha/"
    for bad in ("/s/-x/", "/s/a.b/", "/s/" + "x" * 41 + "/"):
        async with session.post(server.make_url(bad + "run"), json={"command": "ls"}) as response:
            assert response.status == 404, bad
    assert server.app[web_stream.SANDBOXES].names() == []


async def test_sandboxes_beyond_the_limit_are_refused(session: aiohttp.ClientSession) -> None:
    server = TestServer(web_stream.create_app(local=True, max_sandboxes=1))
    async with server:
        async with session.post(server.make_url("/s/one/run"), json={"command": "true"}) as r:
            assert r.status == 202
        async with session.post(server.make_url("/s/two/run"), json={"command": "true"}) as r:
            assert r.status == 503
            assert "at most 1 sandboxes" in await r.text()
        assert server.app[web_stream.SANDBOXES].names() == ["one"]
