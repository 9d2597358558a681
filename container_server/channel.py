"""The action channel's server end: ``GET /ws?client_id=ID``, one WebSocket per connection.

A connection is attached to the hub (:mod:`container_server.hub`) for as long
as it is open. Incoming frames are read by the handler itself and classified
by :func:`parse_frame` (pure): an action to submit, a control request (an
interrupt, a request for the shell's state: :mod:`events.control`), or a frame
refused with an ``ErrorObservation``. Outgoing frames go through the
connection's outbox and one writer task, which lives in a task group owned by
the handler: the handler returns only once the writer sent what was queued,
and a writer that fails for any reason but a gone peer fails the handler.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import assert_never

import anyio
from aiohttp import WSMsgType, web

from container_server.hub import Attachment, ChannelHub, Outbox
from container_server.service import STATE
from events import (
    ErrorObservation,
    Event,
    EventDecodeError,
    decode_event,
    encode_event,
)
from events.control import (
    ControlDecodeError,
    ControlReply,
    InterruptRequest,
    ShellState,
    ShellStateError,
    ShellStateRequest,
    decode_control,
    encode_control,
)
from events.wire import (
    ACTION_TYPES,
    CLIENT_ID_PARAM,
    CloseCode,
    ErrorId,
    RunnableAction,
)

__all__ = ["MAX_CLIENT_ID_CHARS", "MAX_ERROR_DETAIL_CHARS", "Refuse", "Submit", "parse_frame"]

logger = logging.getLogger(__name__)

#: A frame-level error quotes at most this much of the decoder's message (which can quote
#: the offending input, e.g. a megabyte-long unknown tag).
MAX_ERROR_DETAIL_CHARS = 500
MAX_CLIENT_ID_CHARS = 200


@dataclass(frozen=True, slots=True)
class Submit:
    """The frame is an action with an id: run it (once)."""

    action: RunnableAction


@dataclass(frozen=True, slots=True)
class Refuse:
    """The frame cannot be acted on: answer it with ``error``."""

    error: ErrorObservation


Frame = Submit | InterruptRequest | ShellStateRequest | Refuse


def parse_frame(data: bytes | str) -> Frame:
    """What a received frame asks for; never raises, whatever the bytes."""
    try:
        event = decode_event(data)
    except EventDecodeError as exc:
        try:
            return decode_control(data)
        except ControlDecodeError:
            pass
        detail = str(exc)
        if len(detail) > MAX_ERROR_DETAIL_CHARS:
            half = MAX_ERROR_DETAIL_CHARS // 2
            detail = f"{detail[:half]} ... {detail[-half:]}"
        return Refuse(ErrorObservation(f"Bad frame: {detail}", error_id=ErrorId.BAD_FRAME))
    if not isinstance(event, ACTION_TYPES):
        return Refuse(
            ErrorObservation(
                f"Not an action: {type(event).__name__} cannot be run",
                error_id=ErrorId.NOT_AN_ACTION,
                cause=event.id if event.id >= 0 else None,
            )
        )
    if event.id < 0:
        return Refuse(
            ErrorObservation(
                "Action has no id: append it to a stream (or set id) before sending",
                error_id=ErrorId.MISSING_ACTION_ID,
            )
        )
    return Submit(event)


def handle_frame(hub: ChannelHub, attachment: Attachment, data: bytes | str) -> None:
    frame = parse_frame(data)
    match frame:
        case Submit(action):
            hub.submit(attachment, action)
        case InterruptRequest(action_id=action_id):
            hub.interrupt(attachment, action_id)
        case ShellStateRequest(request_id=request_id):
            hub.shell_state(attachment, request_id)
        case Refuse(error):
            hub.send(attachment, error)
        case _:
            assert_never(frame)


def _encode_bounded(event: Event | ControlReply, max_bytes: int) -> bytes:
    if isinstance(event, ShellState | ShellStateError):
        return _encode_reply(event, max_bytes)
    frame = encode_event(event)
    if len(frame) <= max_bytes:
        return frame
    # The peer would drop the connection over an oversized frame: say so instead.
    return encode_event(
        ErrorObservation(
            f"The {type(event).__name__} is {len(frame)} bytes encoded, over the channel's "
            f"{max_bytes}-byte frame limit; read the file in ranges or download it instead.",
            error_id=ErrorId.OBSERVATION_TOO_LARGE,
            cause=event.cause,
        )
    )


def _encode_reply(reply: ControlReply, max_bytes: int) -> bytes:
    frame = encode_control(reply)
    if len(frame) <= max_bytes:
        return frame
    return encode_control(
        ShellStateError(
            reply.request_id,
            f"the shell's state is {len(frame)} bytes encoded, over the channel's "
            f"{max_bytes}-byte frame limit",
        )
    )


async def _write(ws: web.WebSocketResponse, outbox: Outbox, max_bytes: int) -> None:
    """Send the outbox's frames until it closes, then close the connection.

    The outbox closes when the connection ends, when a newer connection of the
    client replaces this one, or when the hub stops: in the last two the peer
    is told (``1001 going away``) instead of being left waiting.
    """
    try:
        await _send_all(ws, outbox, max_bytes)
        await ws.close(code=CloseCode.GOING_AWAY, message=b"no more replies on this connection")
    except ConnectionError as exc:
        # A peer that is gone keeps its results cached for a reconnect.
        logger.debug("channel writer: the peer is gone (%s)", exc)


async def _send_all(ws: web.WebSocketResponse, outbox: Outbox, max_bytes: int) -> None:
    while True:
        event = await outbox.get()
        if event is None:
            return
        await ws.send_bytes(_encode_bounded(event, max_bytes))
        # Then whatever else is queued, so a burst of chunks costs one wake-up.
        for more in outbox.take_queued():
            if more is None:
                return
            await ws.send_bytes(_encode_bounded(more, max_bytes))


async def websocket(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    client_id = request.query.get(CLIENT_ID_PARAM) or "anonymous"
    if len(client_id) > MAX_CLIENT_ID_CHARS:
        raise web.HTTPBadRequest(text="client_id too long")
    await state.ready.wait()
    ws = web.WebSocketResponse(
        # aiohttp refuses a message of exactly max_msg_size; ours is the largest allowed.
        max_msg_size=state.settings.max_frame_bytes + 1,
        # No server heartbeat: aiohttp schedules a timer reset for every frame received,
        # a loop callback per action. The client pings (20 s) and notices a dead server;
        # a dead client's connection is replaced when it reconnects, and its results
        # stay cached either way.
        heartbeat=None,
        compress=False,
    )
    await ws.prepare(request)

    def overflow() -> None:
        logger.warning("client %s does not read its replies; dropping its connection", client_id)
        if request.transport is not None:
            request.transport.abort()  # the writer may be blocked on a full socket

    hub = state.hub
    attachment, outbox = hub.attach(
        client_id,
        max_frames=state.settings.max_outbox_frames,
        max_chunk_chars=state.settings.max_outbox_chunk_chars,
        on_overflow=overflow,
    )
    async with anyio.create_task_group() as task_group:
        task_group.start_soon(
            _write, ws, outbox, state.settings.max_frame_bytes, name=f"channel writer {client_id}"
        )
        try:
            async for msg in ws:
                if msg.type in (WSMsgType.BINARY, WSMsgType.TEXT):
                    handle_frame(hub, attachment, msg.data)
                elif msg.type == WSMsgType.ERROR:
                    logger.warning("websocket error from %s: %s", client_id, ws.exception())
                    break
            if ws.close_code == CloseCode.MESSAGE_TOO_BIG:
                logger.warning("client %s sent an oversized frame", client_id)
        finally:
            # The outbox closes: the writer sends what is queued and returns.
            hub.detach(attachment)
    return ws
