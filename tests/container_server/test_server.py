"""The aiohttp server with a real bash, driven by a real websockets client."""

from __future__ import annotations

import asyncio
import io
import json
import tarfile
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import msgspec
import pytest
from aiohttp.test_utils import TestServer
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from container_server.app import ServerSettings, create_app
from events import (
    CmdOutputChunk,
    CmdOutputObservation,
    CmdRunAction,
    ErrorObservation,
    Event,
    FileReadAction,
    FileReadObservation,
    FileWriteAction,
    RuntimeStatusObservation,
    decode_event,
    encode_event,
)

KEY = "test-key-0123456789"
HEADERS = {"X-Session-API-Key": KEY}


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[TestServer]:
    settings = ServerSettings(
        working_dir=str(tmp_path), api_key=KEY, no_change_timeout=1.0, max_frame_bytes=1 << 20
    )
    srv = TestServer(create_app(settings), host="127.0.0.1")
    await srv.start_server()
    try:
        yield srv
    finally:
        await srv.close()


def ws_url(srv: TestServer, client_id: str = "c1") -> str:
    return f"ws://127.0.0.1:{srv.port}/ws?client_id={client_id}"


async def open_ws(srv: TestServer, client_id: str = "c1") -> ClientConnection:
    return await connect(ws_url(srv, client_id), additional_headers=HEADERS, max_size=None)


async def recv_event(ws: ClientConnection, timeout: float = 10.0) -> Event:
    return decode_event(await asyncio.wait_for(ws.recv(), timeout))


async def recv_answer(ws: ClientConnection, cause: int, timeout: float = 10.0) -> Event:
    """Skip chunks and unrelated frames until the observation answering ``cause``."""
    while True:
        event = await recv_event(ws, timeout)
        if event.cause == cause and not isinstance(event, CmdOutputChunk):
            return event


def act(action: Event, action_id: int) -> bytes:
    return encode_event(msgspec.structs.replace(action, id=action_id))


# ---------------------------------------------------------------- auth and REST


async def test_alive_needs_no_key(server: TestServer) -> None:
    async with aiohttp.ClientSession() as http, http.get(server.make_url("/alive")) as r:
        assert r.status == 200
        assert await r.text() == "ok"


@pytest.mark.parametrize("path", ["/server_info", "/files?path=.", "/download?path=.", "/ws"])
@pytest.mark.parametrize("key", [None, "wrong", KEY[:-1], KEY + "x", ""])
async def test_every_endpoint_but_alive_needs_the_key(
    server: TestServer, path: str, key: str | None
) -> None:
    headers = {} if key is None else {"X-Session-API-Key": key}
    async with (
        aiohttp.ClientSession() as http,
        http.get(server.make_url(path), headers=headers) as r,
    ):
        assert r.status == 401
        body = await r.text()
    assert body == "unauthorized"
    assert KEY not in body


async def test_upload_needs_the_key(server: TestServer) -> None:
    async with (
        aiohttp.ClientSession() as http,
        http.post(server.make_url("/upload?path=x"), data=b"junk") as r,
    ):
        assert r.status == 401


async def test_websocket_handshake_refused_without_key(server: TestServer) -> None:
    with pytest.raises(InvalidStatus) as info:
        await connect(ws_url(server), additional_headers={"X-Session-API-Key": "nope"})
    assert info.value.response.status_code == 401


async def test_server_info(server: TestServer, tmp_path: Path) -> None:
    async with (
        aiohttp.ClientSession(headers=HEADERS) as http,
        http.get(server.make_url("/server_info")) as r,
    ):
        assert r.status == 200
        info = await r.json()
    assert info["uptime"] >= 0
    assert info["idle_time"] >= 0
    assert info["memory_rss_bytes"] > 10_000_000
    assert info["working_dir"] == str(tmp_path)
    assert info["running_actions"] == 0


async def test_upload_download_and_list(server: TestServer, tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = b"hello from the host\n"
        info = tarfile.TarInfo("pkg/hello.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    async with (
        aiohttp.ClientSession(headers=HEADERS) as http,
        http.post(server.make_url("/upload?path=up"), data=buf.getvalue()) as r,
    ):
        assert r.status == 200, await r.text()
        assert (tmp_path / "up" / "pkg" / "hello.txt").read_bytes() == b"hello from the host\n"
        async with http.get(server.make_url("/files?path=up/pkg")) as r:
            assert r.status == 200
            listing = await r.json()
        assert [e["name"] for e in listing] == ["hello.txt"]
        async with http.get(server.make_url("/download?path=up/pkg/hello.txt")) as r:
            assert r.status == 200
            body = await r.read()
        with tarfile.open(fileobj=io.BytesIO(body)) as tar:
            member = tar.getmembers()[0]
            extracted = tar.extractfile(member)
            assert extracted is not None
            assert extracted.read() == b"hello from the host\n"
        async with http.get(server.make_url("/download?path=missing")) as r:
            assert r.status == 404


async def test_upload_refuses_path_traversal(server: TestServer, tmp_path: Path) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    async with (
        aiohttp.ClientSession(headers=HEADERS) as http,
        http.post(server.make_url("/upload?path=in"), data=buf.getvalue()) as r,
    ):
        assert r.status == 400
    assert not (tmp_path / "escaped.txt").exists()


async def test_openapi_description(server: TestServer) -> None:
    async with (
        aiohttp.ClientSession(headers=HEADERS) as http,
        http.get(server.make_url("/openapi.json")) as r,
    ):
        spec = await r.json()
    assert set(spec["paths"]) >= {"/alive", "/server_info", "/files", "/download", "/upload"}


# ---------------------------------------------------------------- the action channel


async def test_echo_round_trip(server: TestServer) -> None:
    async with await open_ws(server) as ws:
        await ws.send(act(CmdRunAction("echo hi"), 7))
        obs = await recv_answer(ws, 7)
    assert isinstance(obs, CmdOutputObservation)
    assert obs.content.strip() == "hi"
    assert obs.exit_code == 0
    assert obs.cause == 7


async def test_bad_frames_get_clean_errors_and_the_connection_survives(
    server: TestServer,
) -> None:
    async with await open_ws(server) as ws:
        for bad in [b"", b"{", b"\xff\xfe", b"[]", b'{"type":"nope"}', "not json"]:
            await ws.send(bad)
            err = await recv_event(ws)
            assert isinstance(err, ErrorObservation)
            assert err.error_id == "bad_frame"
        await ws.send(encode_event(RuntimeStatusObservation("ready", id=3)))
        err = await recv_event(ws)
        assert isinstance(err, ErrorObservation)
        assert err.error_id == "not_an_action"
        await ws.send(encode_event(CmdRunAction("echo x")))
        err = await recv_event(ws)
        assert isinstance(err, ErrorObservation)
        assert err.error_id == "missing_action_id"
        await ws.send(act(CmdRunAction("echo still-alive"), 1))
        obs = await recv_answer(ws, 1)
        assert isinstance(obs, CmdOutputObservation)
        assert "still-alive" in obs.content


async def test_oversized_frame_closes_only_that_connection(server: TestServer) -> None:
    ws = await open_ws(server)
    await ws.send(b"x" * (2 << 20))
    with pytest.raises(ConnectionClosed):
        await asyncio.wait_for(ws.recv(), 10)
    assert ws.close_code == 1009
    async with await open_ws(server) as ws2:
        await ws2.send(act(CmdRunAction("echo fine"), 1))
        obs = await recv_answer(ws2, 1)
        assert isinstance(obs, CmdOutputObservation)
        assert "fine" in obs.content


async def test_resent_id_is_answered_from_the_cache(server: TestServer, tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    action = act(CmdRunAction(f"echo run >> {counter}; wc -l < {counter}"), 5)
    async with await open_ws(server) as ws:
        await ws.send(action)
        first = await recv_answer(ws, 5)
    async with await open_ws(server) as ws:
        await ws.send(action)
        second = await recv_answer(ws, 5)
    assert first == second
    assert counter.read_text() == "run\n"


async def test_cache_is_per_client(server: TestServer, tmp_path: Path) -> None:
    counter = tmp_path / "runs"
    action = act(CmdRunAction(f"echo run >> {counter}"), 0)
    async with await open_ws(server, "a") as ws:
        await ws.send(action)
        await recv_answer(ws, 0)
    async with await open_ws(server, "b") as ws:
        await ws.send(action)
        await recv_answer(ws, 0)
    assert counter.read_text() == "run\nrun\n"


async def test_reconnect_mid_action_yields_one_result(server: TestServer, tmp_path: Path) -> None:
    marker = tmp_path / "done-count"
    action = act(CmdRunAction(f"sleep 1; echo done | tee -a {marker}", blocking=True), 11)
    ws = await open_ws(server)
    await ws.send(action)
    await asyncio.sleep(0.2)  # let the command start before dropping the connection
    await ws.close()
    async with await open_ws(server) as ws2:
        await ws2.send(action)
        obs = await recv_answer(ws2, 11)
    assert isinstance(obs, CmdOutputObservation)
    assert obs.content.count("done") == 1
    assert marker.read_text() == "done\n"


async def test_chunks_stream_while_a_command_runs(server: TestServer) -> None:
    async with await open_ws(server) as ws:
        await ws.send(act(CmdRunAction("for i in 1 2 3 4; do echo line$i; sleep 0.15; done"), 2))
        chunks: list[CmdOutputChunk] = []
        while True:
            event = await recv_event(ws)
            if isinstance(event, CmdOutputChunk):
                chunks.append(event)
            elif event.cause == 2:
                obs = event
                break
    assert isinstance(obs, CmdOutputObservation)
    assert len(chunks) >= 2
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert all(c.cause == 2 for c in chunks)
    streamed = "".join(c.data for c in chunks)
    for i in range(1, 5):
        assert f"line{i}" in streamed
    assert streamed.strip() == obs.content.strip()


async def test_file_read_runs_while_the_shell_is_busy(server: TestServer, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("readable\n")
    async with await open_ws(server) as ws:
        await ws.send(act(CmdRunAction("sleep 3", blocking=True), 1))
        await asyncio.sleep(0.1)
        loop = asyncio.get_running_loop()
        start = loop.time()
        await ws.send(act(FileReadAction("notes.txt"), 2))
        obs = await recv_answer(ws, 2)
        elapsed = loop.time() - start
        assert isinstance(obs, FileReadObservation)
        assert "readable" in obs.content
        assert elapsed < 1.0
        await ws.send(act(CmdRunAction("C-c", is_input=True), 3))
        await recv_answer(ws, 1)


async def test_oversized_observation_becomes_an_error(server: TestServer, tmp_path: Path) -> None:
    (tmp_path / "big.txt").write_text("y" * (3 << 20))
    async with await open_ws(server) as ws:
        await ws.send(act(FileReadAction("big.txt"), 4))
        obs = await recv_answer(ws, 4)
    assert isinstance(obs, ErrorObservation)
    assert obs.error_id == "observation_too_large"


async def test_write_then_read(server: TestServer) -> None:
    async with await open_ws(server) as ws:
        await ws.send(act(FileWriteAction("sub/a.txt", "alpha\n"), 1))
        await recv_answer(ws, 1)
        await ws.send(act(FileReadAction("sub/a.txt"), 2))
        obs = await recv_answer(ws, 2)
    assert isinstance(obs, FileReadObservation)
    assert "alpha" in obs.content


def test_openapi_is_valid_json() -> None:
    from container_server.openapi import OPENAPI_SPEC

    assert json.loads(json.dumps(OPENAPI_SPEC))["openapi"].startswith("3.")


async def test_a_client_that_never_reads_is_dropped_and_loses_no_result(tmp_path: Path) -> None:
    settings = ServerSettings(
        working_dir=str(tmp_path), api_key=KEY, max_frame_bytes=1 << 21, max_outbox_frames=20
    )
    (tmp_path / "big.txt").write_text("z" * 500_000)
    srv = TestServer(create_app(settings), host="127.0.0.1")
    await srv.start_server()
    try:
        ws = await open_ws(srv, "lazy")
        # ~500 KB answers that nobody reads: socket buffers fill, then the outbox.
        for action_id in range(400):
            try:
                await ws.send(act(FileReadAction("big.txt"), action_id))
            except ConnectionClosed:
                break

        async def read_until_dropped() -> None:
            while True:
                await asyncio.wait_for(ws.recv(), 10)

        with pytest.raises(ConnectionClosed):
            await read_until_dropped()
        # Let the reads already started finish (their results go to the cache, not to
        # a connection), then come back.
        async with aiohttp.ClientSession(headers=HEADERS) as http:
            for _ in range(200):
                async with http.get(srv.make_url("/server_info")) as r:
                    if (await r.json())["running_actions"] == 0:
                        break
                await asyncio.sleep(0.05)
        # The server lives on, and the results are kept for a client that comes back.
        async with await open_ws(srv, "lazy") as again:
            await again.send(act(FileReadAction("big.txt"), 0))
            obs = await recv_answer(again, 0)
            assert isinstance(obs, FileReadObservation)
            assert len(obs.content) == 500_000
            await again.send(act(CmdRunAction("echo alive"), 1000))
            alive = await recv_answer(again, 1000)
            assert isinstance(alive, CmdOutputObservation)
            assert alive.content.strip() == "alive"
    finally:
        await srv.close()


async def test_a_client_that_never_reads_a_commands_output_is_dropped(tmp_path: Path) -> None:
    """Chunk frames hold up to a megabyte each, so the outbox is bounded in characters of
    output too: a command's output for a client that does not read it cannot pile up in
    the server. The connection is dropped; the result stays for the client's return."""
    settings = ServerSettings(
        working_dir=str(tmp_path), api_key=KEY, max_outbox_chunk_chars=200_000
    )
    srv = TestServer(create_app(settings), host="127.0.0.1")
    await srv.start_server()
    try:
        ws = await open_ws(srv, "lazy")
        command = "head -c 40000000 /dev/zero | base64 | cat; echo END"
        await ws.send(act(CmdRunAction(command, blocking=True), 0))
        # Nobody reads while the ~54 MB of output is produced.
        async with aiohttp.ClientSession(headers=HEADERS) as http:
            for _ in range(1200):
                await asyncio.sleep(0.1)
                async with http.get(srv.make_url("/server_info")) as r:
                    if (await r.json())["running_actions"] == 0:
                        break
        received = 0

        async def read_until_dropped() -> None:
            nonlocal received
            while True:
                received += len(await asyncio.wait_for(ws.recv(), 10))

        with pytest.raises(ConnectionClosed):
            await read_until_dropped()
        assert received < 20_000_000  # what the socket buffers held, not the output
        async with await open_ws(srv, "lazy") as again:
            await again.send(act(CmdRunAction(command, blocking=True), 0))
            obs = await recv_answer(again, 0)
            assert isinstance(obs, CmdOutputObservation)
            assert obs.exit_code == 0
            assert obs.content.rstrip().endswith("END")
    finally:
        await srv.close()
