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

Beside the actions, :meth:`ChannelClient.shell_state` asks for the shell's
working directory and exported environment (a control frame, never on the
stream), read after every action sent before it has finished.

Across hosts the channel is ``wss://``, with the server's certificate pinned:
:func:`pinned_context` trusts that one certificate and nothing else, and a
``wss://`` client without such a context is refused (a sandbox is never
verified against the system's CAs).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import stat
import struct
import urllib.parse
from collections.abc import Callable, Mapping
from types import TracebackType

import anyio
import anyio.abc
from websockets.asyncio.client import ClientConnection, connect, unix_connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from events import Action, Event
from events.allocator import settle_allocator
from events.control import ShellState
from events.wire import API_KEY_HEADER, CLIENT_ID_PARAM, MAX_FRAME_BYTES
from openhands_rt.channel_core import ChannelProtocol
from openhands_rt.errors import SandboxConnectionError, SandboxError

__all__ = ["API_KEY_HEADER", "ChannelClient", "pinned_context"]

logger = logging.getLogger(__name__)


def pinned_context(cert_pem: str) -> ssl.SSLContext:
    """A TLS client context that trusts exactly ``cert_pem`` (a sandbox server's certificate).

    No system CA is loaded: the pinned certificate is the only trust anchor,
    so only the holder of its private key completes the handshake. The host
    name is checked too (``server_hostname`` of the connection against the
    certificate's DNS name), and TLS 1.3 is the minimum (the server is ours).
    Raises :class:`ssl.SSLError` when ``cert_pem`` holds no certificate.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = True
    context.load_verify_locations(cadata=cert_pem)
    return context


def _tls_error(exc: BaseException) -> ssl.SSLError | None:
    """The TLS error behind ``exc`` (itself or a cause), if a handshake failed."""
    visited: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in visited:
        if isinstance(current, ssl.SSLError):
            return current
        visited.add(id(current))
        current = current.__cause__ or current.__context__
    return None


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
    connecting = asyncio.ensure_future(asyncio.to_thread(_connect_checked_sync, path, peer_uid))
    try:
        # Not cancelled with us: the thread runs on, and its socket must not be dropped.
        return await asyncio.shield(connecting)
    except asyncio.CancelledError:
        connecting.add_done_callback(_close_result)
        raise


def _close_result(done: asyncio.Future[socket.socket]) -> None:
    """Close the socket a connect finished with after its caller was cancelled."""
    if not done.cancelled() and done.exception() is None:
        done.result().close()


class ChannelClient:
    """A reconnecting action channel to one sandbox server: websockets around :mod:`channel_core`.

    ``on_event`` receives every chunk and observation from the server, in
    arrival order, synchronously from the task that runs :meth:`run`.

    The client starts no task. Its owner connects (:meth:`open`), then runs
    :meth:`run` — the reader: frames in, reconnects with backoff — in a task
    group of its own (:class:`~openhands_rt.runtime.EventStreamRuntime` runs it
    in its supervisor), and closes it with :meth:`aclose`. ``async with
    client:`` does all three for a client used on its own. :meth:`run`
    returns once the client is closed or has given up reconnecting; any other
    end is an exception, for the owner to report.

    A ``wss://`` url needs ``ssl_context`` (:func:`pinned_context` of the
    sandbox's certificate; without it the constructor raises
    :class:`SandboxConnectionError`), and ``server_hostname`` is the name the
    certificate must be for (default: the url's host). A refused certificate
    fails :meth:`open` with :class:`SandboxConnectionError`. ``ssl_context``
    with another scheme is a :class:`ValueError`.
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
        ssl_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> None:
        if url.startswith("wss://") and ssl_context is None:
            # Never the system's CAs for a sandbox: its certificate is pinned or nothing.
            raise SandboxConnectionError(
                f"refusing {url}: a wss:// channel needs the sandbox's pinned certificate "
                "(ssl_context=pinned_context(...))"
            )
        if ssl_context is not None and not url.startswith("wss://"):
            raise ValueError(f"ssl_context given for {url}: TLS channels use wss:// URLs")
        self._url = url
        self._ssl_context = ssl_context
        self._server_hostname = server_hostname
        self._api_key = api_key
        self._client_id = client_id
        self._on_event = on_event
        self._unix_socket = unix_socket
        self._peer_uid = peer_uid
        self._max_frame_bytes = max_frame_bytes
        self.protocol = ChannelProtocol(reconnect_deadline=reconnect_deadline)
        self._ws: ClientConnection | None = None
        # Cancels run(); made there (a cancel scope needs a running event loop).
        self._reader_scope: anyio.CancelScope | None = None
        self._task_group: anyio.abc.TaskGroup | None = None
        self.reconnects = 0
        #: Called (from the reader) each time the connection drops, before reconnecting.
        self.on_disconnect: Callable[[], None] | None = None
        self._state_waiters: dict[int, asyncio.Future[ShellState]] = {}

    @property
    def pending(self) -> Mapping[int, bytes]:
        """Encoded actions sent and not answered yet, by id."""
        return self.protocol.pending

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
            # Straight to the sandbox, whatever proxy the environment names: a proxy on the
            # way would see a ws:// channel's key in clear, and cannot reach a node anyway.
            "proxy": None,
        }
        try:
            if self._unix_socket is not None:
                if self._peer_uid is None:
                    return await unix_connect(self._unix_socket, self.ws_url, **kwargs)
                sock = await connect_checked(self._unix_socket, peer_uid=self._peer_uid)
                try:
                    return await unix_connect(None, self.ws_url, sock=sock, **kwargs)
                except BaseException:
                    sock.close()  # a failed or cancelled handshake leaves it to us
                    raise
            if self._ssl_context is not None:
                kwargs["ssl"] = self._ssl_context
                if self._server_hostname is not None:
                    kwargs["server_hostname"] = self._server_hostname
            return await connect(self.ws_url, **kwargs)  # type: ignore[arg-type]
        except InvalidStatus as exc:
            if exc.response.status_code == 401:
                raise SandboxConnectionError("the sandbox refused the session API key") from exc
            raise SandboxConnectionError(
                f"the sandbox answered the channel handshake with {exc.response.status_code}"
            ) from exc

    def _expected_name(self) -> str:
        if self._server_hostname is not None:
            return self._server_hostname
        return urllib.parse.urlsplit(self._url).hostname or self._url

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        """Connect; errors here are raised to the caller (no retry)."""
        settle_allocator()
        try:
            self._ws = await self._open()
        except (OSError, InvalidHandshake, TimeoutError) as exc:
            tls_error = _tls_error(exc)
            if isinstance(tls_error, ssl.SSLCertVerificationError):
                raise SandboxConnectionError(
                    "cannot open the action channel: the sandbox's TLS certificate was refused "
                    f"(not the pinned one, or not for {self._expected_name()}): "
                    f"{tls_error.verify_message}"
                ) from exc
            if tls_error is not None:
                raise SandboxConnectionError(
                    f"cannot open the action channel: the TLS handshake failed: {tls_error}"
                ) from exc
            raise SandboxConnectionError(f"cannot open the action channel: {exc}") from exc
        self.protocol.connected()
        await self._flush()

    async def __aenter__(self) -> ChannelClient:
        await self.open()
        task_group = anyio.create_task_group()
        await task_group.__aenter__()
        self._task_group = task_group
        task_group.start_soon(self.run, name=f"channel-reader {self._url}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        task_group, self._task_group = self._task_group, None
        try:
            await self.aclose()
        finally:
            if task_group is not None:
                await task_group.__aexit__(exc_type, exc, tb)

    async def aclose(self) -> None:
        """Stop the reader and close the connection; what is pending stays so (fail_pending)."""
        self.close_soon()
        await self._close_connection()

    def close_soon(self) -> None:
        """Like :meth:`aclose`, from synchronous code: the reader closes the socket as it ends."""
        self.protocol.close()
        self._deliver_shell_states()
        if self._reader_scope is not None:
            self._reader_scope.cancel()

    async def _close_connection(self) -> None:
        ws = self._ws
        if ws is None:
            return
        # Also on the way out of a cancelled reader: the socket is closed, not leaked.
        with anyio.CancelScope(shield=True):
            await ws.close()

    # ------------------------------------------------------------------ the owner

    async def send(self, action: Action) -> None:
        """Send ``action`` (it must have an id); it stays pending until answered."""
        self.protocol.send(action)
        await self._flush()

    async def interrupt(self, action_id: int) -> None:
        """Ask the server to interrupt pending action ``action_id`` (a control frame).

        Best effort: on a lost connection the request is dropped (the
        reconnect resends actions, not interrupts). The action is still
        answered by its own observation.
        """
        self.protocol.interrupt(action_id)
        await self._flush()

    async def shell_state(self) -> ShellState:
        """The shell's working directory and exported environment, between two actions.

        Read by the server once every action this client sent before the call
        has finished, and before any shell action sent after it; it is not an
        event and appears on no stream. Raises :class:`SandboxConnectionError`
        when the connection is lost (or the channel fails or closes) before the
        answer, or is not open; :class:`SandboxError` when the server cannot
        read the state now (a command still runs in the shell after its
        timeout: interrupt it or wait for it first).
        """
        loop = asyncio.get_running_loop()
        request_id = self.protocol.request_shell_state()
        waiter: asyncio.Future[ShellState] = loop.create_future()
        self._state_waiters[request_id] = waiter
        try:
            await self._flush()
            return await waiter
        finally:
            self._state_waiters.pop(request_id, None)

    def fail_pending(self, reason: str, *, permanently: bool = True) -> None:
        """Answer every pending action with an error (e.g. the container died)."""
        self.protocol.fail(reason, permanently=permanently)
        self._deliver()

    async def drop_connection(self) -> None:
        """Close the socket without closing the client (tests: forces a reconnect)."""
        if self._ws is not None:
            await self._ws.close()

    # ------------------------------------------------------------------ the reader

    async def run(self) -> None:
        """Read frames and reconnect until the client is closed or gives up.

        An exception out of here (a frame the owner's ``on_event`` cannot
        take, a bug) first answers every pending action with an error and
        delivers a ``RuntimeStatusObservation(error)`` naming it: the client
        is failed for good.
        """
        self._reader_scope = anyio.CancelScope()
        with self._reader_scope:
            try:
                while self.protocol.is_open():
                    ws = self._ws
                    assert ws is not None
                    try:
                        async for data in ws:
                            self.protocol.frame(data)
                            self._deliver()
                    except ConnectionClosed:
                        pass
                    if not self.protocol.is_open():
                        return  # closed meanwhile
                    self.protocol.disconnected(_now())
                    self._deliver_shell_states()
                    if self.on_disconnect is not None:
                        self.on_disconnect()
                    logger.warning("action channel to %s lost; reconnecting", self._url)
                    await self._reconnect()
            except Exception as exc:
                # Never silent: every pending action is answered, then the status says why.
                self.protocol.died(f"the action channel failed: {type(exc).__name__}: {exc}")
                self._deliver()
                raise
            finally:
                await self._close_connection()

    async def _reconnect(self) -> None:
        while (attempt_at := self.protocol.next_attempt) is not None:
            await anyio.sleep(max(0.0, attempt_at - _now()))  # backoff, not a poll
            self.protocol.tick(_now())
            if self.protocol.next_attempt is None:
                break
            try:
                ws = await self._open()
            except (OSError, InvalidHandshake, TimeoutError, SandboxConnectionError) as exc:
                self.protocol.connect_failed(_now(), str(exc) or type(exc).__name__)
                continue
            self._ws = ws
            self.reconnects += 1
            self.protocol.connected()
            await self._flush()
            return
        self._deliver()  # gave up: the errors of what was pending, and the status

    # ------------------------------------------------------------------ decisions

    def _deliver(self) -> None:
        for event in self.protocol.events_received():
            self._on_event(event)
        if self.protocol.has_shell_states:
            self._deliver_shell_states()

    def _deliver_shell_states(self) -> None:
        for request_id, answer in self.protocol.shell_states_received():
            waiter = self._state_waiters.get(request_id)
            if waiter is None or waiter.done():
                continue  # its caller was cancelled
            if isinstance(answer, ShellState):
                waiter.set_result(answer)
            elif isinstance(answer, str):
                waiter.set_exception(
                    SandboxConnectionError(f"the shell's state was not read: {answer}")
                )
            else:
                waiter.set_exception(
                    SandboxError(f"the sandbox cannot read its shell's state: {answer.message}")
                )

    async def _flush(self) -> None:
        self._deliver()
        frames = self.protocol.data_to_send()
        ws = self._ws
        if not frames or ws is None:
            return
        try:
            for frame in frames:
                await ws.send(frame)
        except ConnectionClosed:
            pass  # the reader notices, reconnects and resends everything pending


def _now() -> float:
    return anyio.current_time()
