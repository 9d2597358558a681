"""The channel's websockets adapter against a real websockets server (no sandbox)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
import msgspec
import pytest
from websockets.asyncio.server import Server, ServerConnection, serve

from events import (
    CmdOutputObservation,
    CmdRunAction,
    ErrorObservation,
    Event,
    RuntimeStatus,
    RuntimeStatusObservation,
    decode_event,
    encode_event,
)
from events.wire import ErrorId
from openhands_rt.channel import ChannelClient


class EchoServer:
    """Answers each action with an observation naming it; remembers the ids it was sent."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self.silent = False  # receive, never answer
        self.connections: list[ServerConnection] = []

    async def handler(self, ws: ServerConnection) -> None:
        self.connections.append(ws)
        async for data in ws:
            action = decode_event(data)
            self.received.append(action.id)
            if not self.silent:
                await ws.send(encode_event(CmdOutputObservation("ok", "true", cause=action.id)))


@pytest.fixture
async def server() -> AsyncIterator[tuple[EchoServer, Server]]:
    echo = EchoServer()
    async with serve(echo.handler, "127.0.0.1", 0) as ws_server:
        yield echo, ws_server


def url_of(ws_server: Server) -> str:
    host, port = next(iter(ws_server.sockets)).getsockname()[:2]
    return f"ws://{host}:{port}/ws"


def action(action_id: int) -> CmdRunAction:
    return msgspec.structs.replace(CmdRunAction("true"), id=action_id)


async def until(predicate: object, within: float = 10) -> None:
    with anyio.fail_after(within):
        while not predicate():  # type: ignore[operator]  # noqa: ASYNC110 (test helper)
            await anyio.sleep(0.01)


async def test_send_and_answer(server: tuple[EchoServer, Server]) -> None:
    _, ws_server = server
    events: list[Event] = []
    client = ChannelClient(url_of(ws_server), api_key="k", client_id="c", on_event=events.append)
    async with client:
        await client.send(action(0))
        await until(lambda: events)
    assert [(type(e).__name__, e.cause) for e in events] == [("CmdOutputObservation", 0)]
    assert client.pending == {}


async def test_a_dropped_connection_resends_what_is_unanswered(
    server: tuple[EchoServer, Server],
) -> None:
    echo, ws_server = server
    events: list[Event] = []
    client = ChannelClient(url_of(ws_server), api_key="k", client_id="c", on_event=events.append)
    async with client:
        echo.silent = True
        await client.send(action(2))
        await client.send(action(1))
        await until(lambda: echo.received == [2, 1])
        echo.silent = False
        await client.drop_connection()
        await until(lambda: len(events) == 2)
    assert client.reconnects == 1
    assert echo.received == [2, 1, 1, 2]  # resent in id order on the new connection
    assert sorted(e.cause for e in events) == [1, 2]  # type: ignore[type-var]


async def test_the_owner_hears_of_each_drop(server: tuple[EchoServer, Server]) -> None:
    _, ws_server = server
    drops: list[bool] = []
    client = ChannelClient(url_of(ws_server), api_key="k", client_id="c", on_event=print)
    # Called from the reader before it reconnects: the connection is not open then.
    client.on_disconnect = lambda: drops.append(client.protocol.is_open())
    async with client:
        await client.drop_connection()
        await until(lambda: client.reconnects == 1)
        await client.drop_connection()
        await until(lambda: client.reconnects == 2)
    assert drops == [False, False]


async def test_no_server_to_reconnect_to_answers_with_errors(
    server: tuple[EchoServer, Server],
) -> None:
    echo, ws_server = server
    events: list[Event] = []
    client = ChannelClient(
        url_of(ws_server),
        api_key="k",
        client_id="c",
        on_event=events.append,
        reconnect_deadline=0.3,
    )
    async with client:
        echo.silent = True
        await client.send(action(0))
        await until(lambda: echo.received)
        ws_server.close()  # and it is gone for good
        await until(lambda: len(events) == 2)
        error, status = events
        assert isinstance(error, ErrorObservation)
        assert error.error_id == ErrorId.CONNECTION_LOST
        assert error.cause == 0
        assert isinstance(status, RuntimeStatusObservation)
        assert status.status is RuntimeStatus.ERROR
        await client.send(action(1))  # answered at once
        assert [e.cause for e in events[2:]] == [1]


async def test_an_on_event_that_raises_fails_the_client_loudly(
    server: tuple[EchoServer, Server],
) -> None:
    echo, ws_server = server
    seen: list[Event] = []

    def on_event(event: Event) -> None:
        seen.append(event)
        if isinstance(event, CmdOutputObservation):
            raise RuntimeError("cannot take it")

    client = ChannelClient(url_of(ws_server), api_key="k", client_id="c", on_event=on_event)
    dies = pytest.RaisesGroup(pytest.RaisesExc(RuntimeError, match="cannot take it"))
    with dies:
        async with client:
            echo.silent = True
            await client.send(action(5))  # pending when the reader dies
            await until(lambda: echo.received)
            echo.silent = False
            await client.send(action(6))
            await anyio.sleep_forever()
    assert [type(e).__name__ for e in seen] == [
        "CmdOutputObservation",
        "ErrorObservation",
        "RuntimeStatusObservation",
    ]
    assert seen[1].cause == 5
    assert "RuntimeError: cannot take it" in seen[2].message  # type: ignore[attr-defined]
