"""The host side of the action channel: one WebSocket per runtime, actions multiplexed by id.

Every frame is one msgspec-encoded event. The client sends actions (which
already carry their stream id) and receives chunks and observations whose
``cause`` is that id.

Exactly-once across reconnects: actions not yet answered stay in ``pending``;
when the connection drops the client reconnects with backoff and resends them
in id order. The server recognises ids it already ran (or is running) for this
``client_id`` and answers from its result cache instead of running them again.
If the connection cannot be re-established within ``reconnect_deadline``
seconds, every pending action is answered with an ``ErrorObservation``
(``error_id=ErrorId.CONNECTION_LOST``) and a ``RuntimeStatusObservation(error)`` is
reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import stat
import struct
import time
from collections.abc import Callable

import msgspec
from websockets.asyncio.client import ClientConnection, connect, unix_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from events import (
    Action,
    CmdOutputChunk,
    ErrorObservation,
    Event,
    EventDecodeError,
    RuntimeStatus,
    RuntimeStatusObservation,
    decode_event,
    encode_event,
)
from events.control import InterruptRequest, encode_control
from events.wire import API_KEY_HEADER, CLIENT_ID_PARAM, MAX_FRAME_BYTES, ErrorId
from openhands_rt.errors import SandboxClosedError, SandboxConnectionError

__all__ = ["API_KEY_HEADER", "ChannelClient"]

logger = logging.getLogger(__name__)

_BACKOFF_START = 0.02
_BACKOFF_MAX = 1.0


def _connect_checked_sync(path: str, peer_uid: int) -> socket.socket:
    directory, name = os.path.split(path)
    # The directory is pinned by a descriptor and the socket reached through it: a
    # rename of the directory between the checks and the connect changes nothing.
    dir_fd = os.open(directory or ".", os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        st = os.fstat(dir_fd)
        if st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise SandboxConnectionError(
                f"refusing the channel socket: {directory} is not private to this user "
                f"(owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o})"
            )
        target = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        if not stat.S_ISSOCK(target.st_mode):
            raise SandboxConnectionError(f"refusing the channel socket: {path} is not a socket")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(10)
            sock.connect(f"/proc/self/fd/{dir_fd}/{name}")
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
            pid, uid, _gid = struct.unpack("3i", creds)
            if uid != peer_uid:
                raise SandboxConnectionError(
                    f"refusing the channel socket {path}: it is served by uid {uid} "
                    f"(pid {pid}), not by the sandbox's server (uid {peer_uid})"
                )
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock
    finally:
        os.close(dir_fd)


async def connect_checked(path: str, *, peer_uid: int) -> socket.socket:
    """A connected Unix socket to ``path``, once it is known to be the sandbox's server.

    Before any byte (the key above all) is sent: the socket's directory must be
    private to this user (so that no one else can have put a socket there), and
    the listening process must have ``peer_uid`` (``SO_PEERCRED``; the server binds
    its socket as root, which no process of the agent is). Raises
    :class:`SandboxConnectionError` otherwise; ``OSError`` when the connect fails.
    """
    return await asyncio.to_thread(_connect_checked_sync, path, peer_uid)


class ChannelClient:
    """A reconnecting action channel to one sandbox server.

    ``on_event`` receives every chunk and observation from the server, in
    arrival order, synchronously from the reader task.
    """

    def __init__(
        self,
        url: str,
        *,
        api_key: str,
        client_id: str,
        on_event: Callable[[Event], None],
        unix_socket: str | None = None,
        peer_uid: int | None = None,
        max_frame_bytes: int = MAX_FRAME_BYTES,
        reconnect_deadline: float = 30.0,
    ) -> None:
        self._url = url
        self._api_key = api_key
        self._client_id = client_id
        self._on_event = on_event
        self._unix_socket = unix_socket
        self._peer_uid = peer_uid
        self._max_frame_bytes = max_frame_bytes
        self._reconnect_deadline = reconnect_deadline
        self.pending: dict[int, bytes] = {}
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._closing = False
        self._failed: str | None = None
        self.reconnects = 0

    @property
    def ws_url(self) -> str:
        sep = "&" if "?" in self._url else "?"
        return f"{self._url}{sep}{CLIENT_ID_PARAM}={self._client_id}"

    async def _open(self) -> ClientConnection:
        headers = {API_KEY_HEADER: self._api_key}
        kwargs: dict[str, object] = {
            "additional_headers": headers,
            "max_size": self._max_frame_bytes + 1024,
            "compression": None,
            "ping_interval": 20,
            "ping_timeout": 20,
            "open_timeout": 10,
            "close_timeout": 2,
        }
        try:
            if self._unix_socket is not None:
                if self._peer_uid is None:
                    return await unix_connect(self._unix_socket, self.ws_url, **kwargs)
                sock = await connect_checked(self._unix_socket, peer_uid=self._peer_uid)
                return await unix_connect(None, self.ws_url, sock=sock, **kwargs)
            return await connect(self.ws_url, **kwargs)  # type: ignore[arg-type]
        except InvalidStatus as exc:
            if exc.response.status_code == 401:
                raise SandboxConnectionError("the sandbox refused the session API key") from exc
            raise SandboxConnectionError(
                f"the sandbox answered the channel handshake with {exc.response.status_code}"
            ) from exc

    async def open(self) -> None:
        """Connect; errors here are raised to the caller (no retry)."""
        try:
            self._ws = await self._open()
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            raise SandboxConnectionError(f"cannot open the action channel: {exc}") from exc
        self._connected.set()
        self._reader = asyncio.get_running_loop().create_task(self._read_loop())

    async def send(self, action: Action) -> None:
        """Send ``action`` (it must have an id); it stays pending until answered."""
        if self._closing:
            raise SandboxClosedError("the action channel is closed")
        frame = encode_event(action)
        self.pending[action.id] = frame
        if self._failed is not None:
            self._answer_error(action.id, self._failed)
            return
        ws = self._ws
        if ws is None or not self._connected.is_set():
            return  # resent by the reconnect
        # On a closed connection the read loop reconnects and resends everything pending.
        with contextlib.suppress(ConnectionClosed):
            await ws.send(frame)

    async def interrupt(self, action_id: int) -> None:
        """Ask the server to interrupt pending action ``action_id`` (a control frame).

        Best effort: on a lost connection the request is dropped (the
        reconnect resends actions, not interrupts). The action is still
        answered by its own observation.
        """
        ws = self._ws
        if action_id not in self.pending or ws is None or not self._connected.is_set():
            return
        with contextlib.suppress(ConnectionClosed):
            await ws.send(encode_control(InterruptRequest(action_id)))

    def _answer_error(self, action_id: int, reason: str) -> None:
        if self.pending.pop(action_id, None) is None:
            return
        self._on_event(
            ErrorObservation(
                f"The sandbox connection was lost before this action finished: {reason}",
                error_id=ErrorId.CONNECTION_LOST,
                cause=action_id,
            )
        )

    def fail_pending(self, reason: str, *, permanently: bool = True) -> None:
        """Answer every pending action with an error (e.g. the container died)."""
        if permanently:
            self._failed = reason
        for action_id in sorted(self.pending):
            self._answer_error(action_id, reason)

    def _dispatch(self, data: bytes | str) -> None:
        try:
            event = decode_event(data)
        except EventDecodeError as exc:
            logger.warning("dropping an undecodable frame from the sandbox: %s", exc)
            return
        if event.id >= 0:
            event = msgspec.structs.replace(event, id=-1)
        cause = event.cause
        if cause is not None and not isinstance(event, CmdOutputChunk):
            if cause not in self.pending:
                return  # a duplicate answer after a resend: already delivered
            del self.pending[cause]
        self._on_event(event)

    async def _read_loop(self) -> None:
        while True:
            ws = self._ws
            assert ws is not None
            try:
                async for data in ws:
                    self._dispatch(data)
            except ConnectionClosed:
                pass
            if self._closing:
                return
            self._connected.clear()
            logger.warning("action channel to %s lost; reconnecting", self._url)
            if not await self._reconnect():
                return

    async def _reconnect(self) -> bool:
        deadline = time.monotonic() + self._reconnect_deadline
        delay = _BACKOFF_START
        last_error = "connection closed"
        while not self._closing:
            try:
                self._ws = await self._open()
            except (OSError, InvalidHandshake, TimeoutError, SandboxConnectionError) as exc:
                last_error = str(exc) or type(exc).__name__
                if time.monotonic() + delay > deadline:
                    break
                await asyncio.sleep(delay)  # backoff between attempts, not a poll
                delay = min(delay * 2, _BACKOFF_MAX)
                continue
            self.reconnects += 1
            self._connected.set()
            for action_id in sorted(self.pending):
                try:
                    await self._ws.send(self.pending[action_id])
                except ConnectionClosed:
                    break  # the loop notices and reconnects again
            return True
        if self._closing:
            return False
        reason = f"could not reconnect within {self._reconnect_deadline} s ({last_error})"
        self.fail_pending(reason)
        self._on_event(RuntimeStatusObservation(RuntimeStatus.ERROR, f"action channel: {reason}"))
        return False

    async def drop_connection(self) -> None:
        """Close the socket without closing the client (tests: forces a reconnect)."""
        if self._ws is not None:
            await self._ws.close()

    async def aclose(self) -> None:
        self._closing = True
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
