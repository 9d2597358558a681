"""The action channel's server side: clients, their connections and result caches.

A *client* is one host-side stream/runtime instance, identified by the
``client_id`` it sends when it opens the channel. Action ids are only unique
per client (a second stream attaching to a kept-alive sandbox starts at 0
again), so results are cached per ``(client_id, action_id)``.

Exactly-once execution across reconnects: an action id that is running is not
started again (its result goes to the client's *current* connection when it
finishes), and an id that already finished is answered from the cache. The
cache keeps the last ``max_results`` results per client and at most
``max_clients`` clients (least recently seen evicted first).

Outgoing frames of one connection go through one queue drained by one writer,
so the chunks of an action always precede its observation on the wire.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable

import msgspec

from container_server.executor import ActionExecutor, RunnableAction
from events import CmdOutputChunk, Event, Observation

__all__ = ["ChannelHub", "ClientState", "Outbox"]

logger = logging.getLogger(__name__)


class Outbox:
    """One connection's outgoing frames, in order.

    Bounded: a peer that stops reading makes its frames pile up here once the
    socket buffers are full. Past ``max_frames`` the outbox closes and calls
    ``on_overflow`` (which drops the connection); results stay cached, so a
    client that reconnects and resends its ids loses nothing but chunks.
    """

    __slots__ = ("_max_frames", "_on_overflow", "_queue", "closed", "overflowed")

    def __init__(
        self, *, max_frames: int = 10_000, on_overflow: Callable[[], None] | None = None
    ) -> None:
        self._queue: asyncio.Queue[Event | None] = asyncio.Queue()
        self._max_frames = max_frames
        self._on_overflow = on_overflow
        self.closed = False
        self.overflowed = False

    def put(self, event: Event) -> None:
        if self.closed:
            return
        if self._queue.qsize() >= self._max_frames:
            self.overflowed = True
            self.close()
            if self._on_overflow is not None:
                self._on_overflow()
            return
        self._queue.put_nowait(event)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._queue.put_nowait(None)

    async def get(self) -> Event | None:
        return await self._queue.get()

    def get_nowait(self) -> Event | None:
        """The next frame if one is queued (raises asyncio.QueueEmpty otherwise)."""
        return self._queue.get_nowait()


class ClientState:
    """Per-client result cache, running actions and current connection."""

    def __init__(self, client_id: str, *, max_results: int) -> None:
        self.client_id = client_id
        self.max_results = max_results
        self.results: OrderedDict[int, Observation] = OrderedDict()
        self.running: set[int] = set()
        self.outbox: Outbox | None = None
        self.greeted = False

    def send(self, event: Event) -> None:
        if self.outbox is not None:
            self.outbox.put(event)

    def remember(self, action_id: int, observation: Observation) -> None:
        self.results[action_id] = observation
        if len(self.results) > self.max_results:
            self.results.popitem(last=False)


class ChannelHub:
    """Routes actions from connections to the executor, exactly once per id."""

    def __init__(
        self, executor: ActionExecutor, *, max_results: int = 1024, max_clients: int = 64
    ) -> None:
        self._executor = executor
        # Action tasks outlive the connection that sent them (a reconnect picks up
        # the result), so they belong to the hub, which cancels them in aclose().
        self._tasks: set[asyncio.Task[None]] = set()
        self._max_results = max_results
        self._max_clients = max_clients
        self._clients: OrderedDict[str, ClientState] = OrderedDict()
        # The running actions by (client id, action id): what an interrupt request targets.
        self._running: dict[tuple[str, int], RunnableAction] = {}
        self.running_actions = 0
        self.last_activity = time.monotonic()

    def attach(
        self,
        client_id: str,
        *,
        max_frames: int = 10_000,
        on_overflow: Callable[[], None] | None = None,
    ) -> tuple[ClientState, Outbox]:
        """A connection for ``client_id`` opened: it becomes the client's current one."""
        client = self._clients.get(client_id)
        if client is None:
            client = ClientState(client_id, max_results=self._max_results)
            self._clients[client_id] = client
            while len(self._clients) > self._max_clients:
                oldest_id, oldest = next(iter(self._clients.items()))
                if oldest.running or oldest.outbox is not None:
                    break  # never evict a client that is connected or has work in flight
                del self._clients[oldest_id]
        else:
            self._clients.move_to_end(client_id)
        if client.outbox is not None:
            client.outbox.close()  # the newest connection wins
        outbox = Outbox(max_frames=max_frames, on_overflow=on_overflow)
        client.outbox = outbox
        return client, outbox

    def detach(self, client: ClientState, outbox: Outbox) -> None:
        outbox.close()
        if client.outbox is outbox:
            client.outbox = None

    def submit(self, client: ClientState, action: RunnableAction) -> None:
        """Run ``action`` for ``client`` unless that id already ran or is running."""
        self.last_activity = time.monotonic()
        cached = client.results.get(action.id)
        if cached is not None:
            client.send(cached)
            return
        if action.id in client.running:
            return  # its result goes to the current connection when it finishes
        client.running.add(action.id)
        self._running[(client.client_id, action.id)] = action
        self.running_actions += 1
        task = asyncio.get_running_loop().create_task(self._run(client, action))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def interrupt(self, client: ClientState, action_id: int) -> None:
        """Interrupt ``client``'s running action ``action_id``; its observation says so.

        Nothing happens for an action that is not running (finished, or never
        sent): the request races the answer by nature.
        """
        action = self._running.get((client.client_id, action_id))
        if action is None:
            logger.info("interrupt of action %d: it is not running", action_id)
            return
        if not self._executor.interrupt(action):
            logger.info("interrupt of action %d: nothing to interrupt", action_id)

    async def aclose(self) -> None:
        """Cancel every running action task and wait for them."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        for client in self._clients.values():
            if client.outbox is not None:
                client.outbox.close()

    async def _run(self, client: ClientState, action: RunnableAction) -> None:
        def on_chunk(chunk: CmdOutputChunk) -> None:
            client.send(chunk)

        try:
            observation = await self._executor.run(action, on_chunk)
            observation = msgspec.structs.replace(observation, cause=action.id)
            client.remember(action.id, observation)
            client.send(observation)
        finally:
            client.running.discard(action.id)
            self._running.pop((client.client_id, action.id), None)
            self.running_actions -= 1
            self.last_activity = time.monotonic()
