"""The server's lifetime: a failed start cancels what was started, a dead service is loud."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import anyio
import pytest
from aiohttp.test_utils import TestServer
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from container_server.app import STATE, ServerSettings, create_app
from container_server.bash import BashStartError
from container_server.executor import ActionExecutor
from container_server.plugins import Plugin, PluginHost, PluginStatus
from events import CmdRunAction, ErrorObservation, Observation, decode_event, encode_event

KEY = "test-key-0123456789"


def other_tasks() -> set[asyncio.Task[object]]:
    return asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]


def test_the_app_is_built_without_an_event_loop(tmp_path: Path) -> None:
    app = create_app(ServerSettings(working_dir=str(tmp_path), api_key=KEY))
    state = app[STATE]
    state.stop()  # before it ever ran: the service will return at once
    assert not state.ready.is_set()


class HangingPlugin(Plugin):
    """Initializes forever; records that it began and that it was cancelled."""

    name = "hanging"

    def __init__(self) -> None:
        self.began = asyncio.Event()
        self.cancelled = False
        self.closed = False

    async def initialize(self, username: str | None, *, working_dir: str = ".") -> None:
        self.began.set()
        try:
            await anyio.sleep_forever()
        except BaseException:
            self.cancelled = True
            raise


class ShellFailsExecutor(ActionExecutor):
    """Its shell fails to start once the plugins are initializing."""

    def __init__(self, plugin: HangingPlugin, working_dir: str) -> None:
        super().__init__(working_dir=working_dir, plugins=PluginHost([plugin]))
        self.plugin = plugin
        self.closed = False

    async def start(self) -> None:
        await self.plugin.began.wait()
        raise BashStartError("bash: no such shell")

    async def aclose(self) -> None:
        self.closed = True
        await super().aclose()


async def test_a_failed_start_cancels_the_other_start_and_reports_the_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    plugin = HangingPlugin()
    executor = ShellFailsExecutor(plugin, str(tmp_path))
    app = create_app(ServerSettings(working_dir=str(tmp_path), api_key=KEY), executor)
    server = TestServer(app, host="127.0.0.1")
    try:
        with pytest.raises(BashStartError, match="no such shell"):
            await server.start_server()
    finally:
        await server.close()
    assert plugin.cancelled  # the plugin's start did not go on alone
    assert executor.closed  # what had started is closed again
    assert other_tasks() == set()
    state = app[STATE]
    assert state.init_error == "BashStartError: bash: no such shell"
    assert not state.ready.is_set()
    assert state.stopped.is_set()
    assert any(
        r.levelno == logging.ERROR and "initialization failed" in r.getMessage()
        for r in caplog.records
    )


class FailingPluginHost(PluginHost):
    async def initialize(self, username: str | None, *, working_dir: str) -> list[PluginStatus]:
        await asyncio.sleep(0.05)  # the shell is starting meanwhile
        raise OSError("no room for a kernel")


async def test_a_failed_plugin_start_cancels_and_closes_the_shell(tmp_path: Path) -> None:
    executor = ActionExecutor(working_dir=str(tmp_path), plugins=FailingPluginHost())
    app = create_app(ServerSettings(working_dir=str(tmp_path), api_key=KEY), executor)
    server = TestServer(app, host="127.0.0.1")
    try:
        with pytest.raises(OSError, match="no room"):
            await server.start_server()
    finally:
        await server.close()
    assert not executor.bash.is_alive
    assert other_tasks() == set()
    assert app[STATE].init_error == "OSError: no room for a kernel"


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[TestServer]:
    settings = ServerSettings(working_dir=str(tmp_path), api_key=KEY, no_change_timeout=1.0)
    srv = TestServer(create_app(settings), host="127.0.0.1")
    await srv.start_server()
    try:
        yield srv
    finally:
        await srv.close()


async def test_stopping_the_server_cancels_running_actions_and_leaves_no_task(
    tmp_path: Path,
) -> None:
    settings = ServerSettings(working_dir=str(tmp_path), api_key=KEY, no_change_timeout=30.0)
    server = TestServer(create_app(settings), host="127.0.0.1")
    await server.start_server()
    state = server.app[STATE]
    try:
        url = f"ws://127.0.0.1:{server.port}/ws?client_id=c"
        async with connect(url, additional_headers={"X-Session-API-Key": KEY}) as ws:
            await ws.send(encode_event(CmdRunAction("sleep 30", blocking=True, id=1)))
            with anyio.fail_after(10):
                while state.hub.running_actions == 0:  # noqa: ASYNC110 - nothing to wait on
                    await asyncio.sleep(0.01)
    finally:
        with anyio.fail_after(20):
            await server.close()
    assert state.stopped.is_set()
    assert state.hub.running_actions == 1  # cancelled, never answered
    assert not state.executor.bash.is_alive
    assert other_tasks() == set()


async def test_a_service_that_dies_is_loud_and_stops_the_server(
    server: TestServer, caplog: pytest.LogCaptureFixture
) -> None:
    state = server.app[STATE]

    def broken(client_id: str, action_id: int, observation: Observation) -> list[object]:
        raise RuntimeError("a broken invariant")

    state.hub.core.finished = broken  # type: ignore[method-assign, assignment]
    url = f"ws://127.0.0.1:{server.port}/ws?client_id=c"
    headers = {"X-Session-API-Key": KEY}
    async with connect(url, additional_headers=headers) as ws:
        await ws.send(encode_event(CmdRunAction("true", id=1)))
        with anyio.fail_after(10):
            await state.stopped.wait()
        # The connection is told that nothing more is coming, not left waiting.
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 10)
        assert ws.close_code == 1001
    async with connect(url, additional_headers=headers) as ws:
        await ws.send(encode_event(CmdRunAction("true", id=2)))
        answer = decode_event(await asyncio.wait_for(ws.recv(), 10))
    assert isinstance(answer, ErrorObservation)
    assert (answer.error_id, answer.cause) == ("internal_error", 2)
    assert "shutting down" in answer.content
    assert state.failure is not None
    assert state.init_error is not None
    assert "a broken invariant" in state.init_error
    assert any(
        r.levelno == logging.CRITICAL and "service died" in r.getMessage() for r in caplog.records
    )
    async with aiohttp.ClientSession() as http, http.get(server.make_url("/alive")) as r:
        assert r.status == 503
        assert "a broken invariant" in await r.text()
