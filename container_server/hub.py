"""ChannelHub: the asyncio side of the hub — action runs in a task group, frames to outboxes.

The protocol (which client owns which action, the result cache that makes a
resend idempotent, where chunks and observations go) is
:class:`~container_server.hub_core.HubCore`, which does no I/O; this adapter
feeds it what happens and carries out what it decides.

Task ownership: an action's run outlives the connection that sent it (a
reconnect picks up its result), so every run is a task of the hub's task
group, entered by ``async with hub`` (the server's service,
:mod:`container_server.service`) and cancelled when that block is left. A run
that fails unexpectedly is logged and answered with an ``internal_error``
observation; a failure of the hub itself (a broken invariant) ends the task
group and with it the service, loudly.

Each connection's outgoing frames go through its :class:`Outbox`, drained by
that connection's one writer (:mod:`container_server.channel`), so the chunks
of an action always precede its observation on the wire.

A request for the shell's state (:meth:`ChannelHub.shell_state`) is a task
of the same group: it is answered once the requesting client's earlier actions
have finished (:meth:`ActionExecutor.shell_state
<container_server.executor.ActionExecutor.shell_state>`), on the connection
that asked (a client whose connection dropped has failed the request itself).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Self, assert_never

import msgspec

from container_server.executor import ActionExecutor
from container_server.hub_core import (
    Attachment,
    Close,
    Decision,
    Deliver,
    Greet,
    HubCore,
    Interrupt,
    Start,
)
from container_server.shell_state import ShellStateUnavailable
from events import CmdOutputChunk, ErrorObservation, Event, Observation
from events.control import ControlReply, ShellStateError
from events.wire import ErrorId, RunnableAction

__all__ = ["Attachment", "ChannelHub", "Outbox"]

logger = logging.getLogger(__name__)

#: The events a client's first connection gets before anything else.
Greeting = Callable[[], Iterable[Event]]


class Outbox:
    """One connection's outgoing frames, in order.

    Bounded: a peer that stops reading makes its frames pile up here once the
    socket buffers are full. Past ``max_frames`` frames, or ``max_chunk_chars``
    characters of command output (a chunk frame holds up to a megabyte, so a
    bound on frames alone would let a command's output fill the sandbox's
    memory), the outbox closes and calls ``on_overflow`` (which drops the
    connection); results stay cached, so a client that reconnects and resends
    its ids loses nothing but chunks.
    """

    __slots__ = (
        "_chunk_chars",
        "_max_chunk_chars",
        "_max_frames",
        "_on_overflow",
        "_queue",
        "closed",
        "overflowed",
    )

    def __init__(
        self,
        *,
        max_frames: int = 10_000,
        max_chunk_chars: int = 64 << 20,
        on_overflow: Callable[[], None] | None = None,
    ) -> None:
        self._queue: asyncio.Queue[Event | ControlReply | None] = asyncio.Queue()
        self._max_frames = max_frames
        self._max_chunk_chars = max_chunk_chars
        self._chunk_chars = 0  # of the chunks queued now
        self._on_overflow = on_overflow
        self.closed = False
        self.overflowed = False

    def put(self, event: Event | ControlReply) -> None:
        if self.closed:
            return
        if type(event) is CmdOutputChunk:
            self._chunk_chars += len(event.data)
        if self._queue.qsize() >= self._max_frames or self._chunk_chars > self._max_chunk_chars:
            self.overflowed = True
            self.close()
            if self._on_overflow is not None:
                self._on_overflow()
            return
        self._queue.put_nowait(event)

    def _taken(self, event: Event | ControlReply | None) -> Event | ControlReply | None:
        if type(event) is CmdOutputChunk:
            self._chunk_chars -= len(event.data)
        return event

    def close(self) -> None:
        """Nothing more goes in; the writer sends what is queued, then stops."""
        if not self.closed:
            self.closed = True
            self._queue.put_nowait(None)

    async def get(self) -> Event | ControlReply | None:
        """The next frame, waiting for one; None once the outbox is closed and drained."""
        return self._taken(await self._queue.get())

    def take_queued(self) -> list[Event | ControlReply | None]:
        """Every frame queued now, in order (a None among them: closed), without waiting."""
        queue, taken = self._queue, self._taken
        return [taken(queue.get_nowait()) for _ in range(queue.qsize())]


class ChannelHub:
    """Routes actions from connections to the executor, exactly once per (client, id)."""

    def __init__(
        self,
        executor: ActionExecutor,
        *,
        max_results: int = 1024,
        max_clients: int = 64,
        greeting: Greeting | None = None,
    ) -> None:
        self._executor = executor
        self._core = HubCore(max_results=max_results, max_clients=max_clients)
        self._greeting = greeting
        self._outboxes: dict[Attachment, Outbox] = {}
        # asyncio's own task group, not anyio's: an action's task is started per action,
        # and anyio's start_soon costs ~40 us more per task (a cancel scope each).
        self._task_group: asyncio.TaskGroup | None = None
        # Every action's run, by the client whose it is.
        self._runs: dict[asyncio.Task[None], str] = {}
        self._requests: set[asyncio.Task[None]] = set()
        self._closed = False
        self.last_activity = time.monotonic()

    @property
    def running_actions(self) -> int:
        return self._core.running_count

    @property
    def core(self) -> HubCore:
        """The protocol state (read it; drive it only through this adapter)."""
        return self._core

    async def __aenter__(self) -> Self:
        if self._task_group is not None or self._closed:
            raise RuntimeError("a ChannelHub is entered once")
        task_group = asyncio.TaskGroup()
        await task_group.__aenter__()
        self._task_group = task_group
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Cancel every running action and wait for its task; close every outbox."""
        task_group, self._task_group = self._task_group, None
        self._closed = True
        assert task_group is not None
        for run in [*self._runs, *self._requests]:
            run.cancel()
        try:
            await task_group.__aexit__(exc_type, exc, tb)
        finally:
            for outbox in self._outboxes.values():
                outbox.close()

    # ------------------------------------------------------------------ connections

    def attach(
        self,
        client_id: str,
        *,
        max_frames: int = 10_000,
        max_chunk_chars: int = 64 << 20,
        on_overflow: Callable[[], None] | None = None,
    ) -> tuple[Attachment, Outbox]:
        """A connection for ``client_id`` opened: it becomes the client's current one."""
        outbox = Outbox(
            max_frames=max_frames, max_chunk_chars=max_chunk_chars, on_overflow=on_overflow
        )
        attachment, decisions = self._core.attach(client_id)
        self._outboxes[attachment] = outbox
        self._apply(decisions)
        return attachment, outbox

    def detach(self, attachment: Attachment) -> None:
        """The connection closed: its outbox closes, its client's runs go on."""
        self._core.detach(attachment)
        outbox = self._outboxes.pop(attachment, None)
        if outbox is not None:
            outbox.close()

    def send(self, attachment: Attachment, event: Event) -> None:
        """Send ``event`` on ``attachment`` (a reply about a frame, not an action's answer)."""
        outbox = self._outboxes.get(attachment)
        if outbox is not None:
            outbox.put(event)

    # ------------------------------------------------------------------ actions

    def submit(self, attachment: Attachment, action: RunnableAction) -> None:
        """Run ``action`` for ``attachment``'s client unless that id already ran or is running."""
        self.last_activity = time.monotonic()
        if self._task_group is None:
            self.send(
                attachment,
                ErrorObservation(
                    "The server is shutting down: the action was not run.",
                    error_id=ErrorId.INTERNAL_ERROR,
                    cause=action.id,
                ),
            )
            return
        self._apply(self._core.action(attachment, action))

    def interrupt(self, attachment: Attachment, action_id: int) -> None:
        """Interrupt the client's running action ``action_id``; its observation says so."""
        decisions = self._core.interrupt(attachment, action_id)
        if not decisions:
            logger.info("interrupt of action %d: it is not running", action_id)
        self._apply(decisions)

    def shell_state(self, attachment: Attachment, request_id: int) -> None:
        """Answer ``attachment`` with the shell's state once its client's actions sent
        before this request have finished (a :class:`ShellState` or a :class:`ShellStateError`)."""
        if self._task_group is None:
            self._reply(attachment, ShellStateError(request_id, "the server is shutting down"))
            return
        client_id = attachment.client_id
        earlier = [run for run, owner in self._runs.items() if owner == client_id]
        request = self._task_group.create_task(
            self._shell_state(attachment, request_id, earlier),
            name=f"shell state {client_id}/{request_id}",
        )
        self._requests.add(request)
        request.add_done_callback(self._requests.discard)

    async def _shell_state(
        self, attachment: Attachment, request_id: int, earlier: list[asyncio.Task[None]]
    ) -> None:
        reply: ControlReply
        try:
            state = await self._executor.shell_state(earlier)
            reply = msgspec.structs.replace(state, request_id=request_id)
        except ShellStateUnavailable as exc:
            reply = ShellStateError(request_id, str(exc))
        except Exception as exc:
            logger.exception("reading the shell's state failed")
            reply = ShellStateError(request_id, f"{type(exc).__name__}: {exc}")
        self._reply(attachment, reply)

    def _reply(self, attachment: Attachment, reply: ControlReply) -> None:
        outbox = self._outboxes.get(attachment)
        if outbox is not None:
            outbox.put(reply)

    # ------------------------------------------------------------------ decisions

    def _apply(self, decisions: list[Decision]) -> None:
        for decision in decisions:
            match decision:
                case Deliver(attachment, event):
                    self.send(attachment, event)
                case Start(client_id, action):
                    assert self._task_group is not None
                    run = self._task_group.create_task(
                        self._run(client_id, action), name=f"action {client_id}/{action.id}"
                    )
                    self._runs[run] = client_id
                    run.add_done_callback(self._forget_run)
                case Greet(attachment):
                    for event in self._greeting() if self._greeting is not None else ():
                        self.send(attachment, event)
                case Close(attachment):
                    outbox = self._outboxes.get(attachment)
                    if outbox is not None:
                        outbox.close()
                case Interrupt(_, action):
                    if not self._executor.interrupt(action):
                        logger.info("interrupt of action %d: nothing to interrupt", action.id)
                case _:
                    assert_never(decision)

    def _forget_run(self, run: asyncio.Task[None]) -> None:
        del self._runs[run]

    async def _run(self, client_id: str, action: RunnableAction) -> None:
        def on_chunk(chunk: CmdOutputChunk) -> None:
            self._apply(self._core.chunk(client_id, chunk))

        observation: Observation
        try:
            observation = await self._executor.run(action, on_chunk)
        except Exception as exc:
            # The executor answers every failure of an action itself; this is a failure
            # of the executor. The client gets an answer, the log the traceback.
            logger.exception("the run of action %d of client %s failed", action.id, client_id)
            observation = ErrorObservation(
                f"The runtime failed to run {type(action).__name__}: {type(exc).__name__}: {exc}",
                error_id=ErrorId.INTERNAL_ERROR,
            )
        self._apply(self._core.finished(client_id, action.id, observation))
        self.last_activity = time.monotonic()
