"""EventStreamRuntime: the runtime is one subscriber of the event stream.

It forwards every runnable action appended by an agent or a user to the
sandbox's action channel, and appends each chunk and observation the sandbox
sends back (source ``environment``, ``cause`` = the action's id). ``run()`` is
a convenience on top: append, then wait for the observation that answers it.

Subclasses make the sandbox (:class:`~openhands_rt.local.LocalRuntime`,
:class:`~openhands_rt.docker_runtime.DockerRuntime`) by implementing
``_start_sandbox`` and ``_stop_sandbox``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import uuid
import weakref
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Any, ClassVar, Final, TypeVar, assert_never

import anyio
import anyio.abc

from events import (
    Action,
    CmdOutputChunk,
    CmdRunAction,
    Event,
    EventSource,
    EventStream,
    IPythonRunCellAction,
    Observation,
    OpenHandsEvent,
    RuntimeStatus,
    RuntimeStatusObservation,
    Subscription,
)
from events.codec import AnyEvent
from events.control import ShellState
from events.wire import ACTION_TYPES, is_runnable, special_key
from openhands_rt.channel import ChannelClient, pinned_context
from openhands_rt.config import SandboxConfig
from openhands_rt.errors import (
    SandboxClosedError,
    SandboxConnectionError,
    SandboxError,
    SessionInUseError,
)
from openhands_rt.supervisor import Supervisor, describe_error

__all__ = ["EventStreamRuntime", "SandboxEndpoint"]

logger = logging.getLogger(__name__)

_INTERRUPT_GRACE = 5.0
_R = TypeVar("_R", bound="EventStreamRuntime")

# The runtimes of this process that hold a session id, by (session_scope, session_id).
_session_owners: weakref.WeakValueDictionary[tuple[str, str], EventStreamRuntime] = (
    weakref.WeakValueDictionary()
)


@dataclass(frozen=True)
class SandboxEndpoint:
    """Where a sandbox's server listens."""

    url: str  # ws://host:port/ws (with unix_socket: the URL used in the handshake)
    api_key: str
    unix_socket: str | None = None
    # The uid the process listening on unix_socket must have (SO_PEERCRED); None: unchecked.
    peer_uid: int | None = None
    # With a wss:// url: the server's certificate (PEM), the channel's only trust anchor.
    server_cert: str | None = None
    # The DNS name that certificate is for (what the handshake checks); None: the url's host.
    server_name: str | None = None


# Looked up once: an enum member's attribute lookup costs more than the rest of an
# append's argument handling on Python 3.11 (two per action on the hot path).
_AGENT: Final = EventSource.AGENT
_ENVIRONMENT: Final = EventSource.ENVIRONMENT


class EventStreamRuntime:
    """Base class of runtimes; see the module docstring.

    One session id, one owner: from ``connect()`` until ``aclose()`` a runtime
    holds its session id, and another runtime of the same kind in this process
    that connects with it is refused with :class:`SessionInUseError` (on
    another stream it would share the sandbox, on the same one it would answer
    every action twice). Subclasses whose sandboxes other processes can reach
    by session id (:class:`~openhands_rt.docker_runtime.DockerRuntime`) also
    refuse a session held by another process.
    """

    #: Runtimes with the same scope share the session-id namespace; ``None``: no claim.
    session_scope: ClassVar[str | None] = None
    #: How long a cancelled run() waits for its interrupted action's observation, seconds.
    interrupt_grace: float = _INTERRUPT_GRACE

    def __init__(
        self,
        stream: EventStream,
        config: SandboxConfig | None = None,
        *,
        session_id: str | None = None,
        client_id: str | None = None,
    ) -> None:
        self.stream = stream
        self.config = config if config is not None else SandboxConfig()
        self.session_id = session_id or uuid.uuid4().hex[:12]
        # The server caches results per (client, action id). Action ids are unique
        # within a stream, and a durable stream keeps its id across reopens, so a
        # process that reopens the log after a crash is the same client.
        self.client_id = client_id or stream.stream_id
        self._channel: ChannelClient | None = None
        self._endpoint: SandboxEndpoint | None = None
        self._stream_watch: anyio.CancelScope | None = None
        self._subscription: Subscription | None = None
        self._waiters: dict[int, asyncio.Future[Observation]] = {}
        self._dispatched: set[int] = set()
        self._closed = False
        self._connected = False
        # Every background task of this runtime lives in its task group, from the first
        # connect() until aclose() (see openhands_rt.supervisor).
        self._supervisor = Supervisor(f"runtime-{self.session_id}", on_failure=self._task_failed)

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self: _R) -> _R:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def _start_sandbox(self) -> SandboxEndpoint:
        raise NotImplementedError

    async def _stop_sandbox(self) -> None:
        raise NotImplementedError

    def report_status(self, status: RuntimeStatus, message: str = "") -> None:
        """Append a RuntimeStatusObservation (source environment) to the stream."""
        try:
            self.stream.append(
                RuntimeStatusObservation(status, message), source=EventSource.ENVIRONMENT
            )
        except Exception:
            logger.exception("could not append a runtime status event")

    async def connect(self) -> None:
        """Start (or attach to) the sandbox and open the action channel.

        The first connect() starts the runtime's supervisor task group (see
        :meth:`_start_soon`); aclose() ends it, from whatever task calls it.
        """
        if self._closed:
            raise SandboxClosedError("this runtime was closed; make a new one")
        if self._connected:
            return
        self._claim_session()
        self.report_status(RuntimeStatus.STARTING, f"starting sandbox {self.session_id}")
        started_supervisor = False
        channel: ChannelClient | None = None
        try:
            started_supervisor = await self._supervisor.start()
            if started_supervisor:
                self._watch_stream(self.stream)
            endpoint = await self._start_sandbox()
            channel = await self._open_channel(endpoint)
        except BaseException as exc:
            if not isinstance(exc, asyncio.CancelledError):
                message = (
                    str(exc) if isinstance(exc, SandboxError) else f"{type(exc).__name__}: {exc}"
                )
                self.report_status(RuntimeStatus.ERROR, message)
            with anyio.CancelScope(shield=True):
                if channel is not None:
                    await channel.aclose()
                await self._stop_quietly()
                if started_supervisor:
                    # A failed start cancels what it started (the sandbox's own tasks too).
                    await self._supervisor.aclose()
            self._release_session()
            raise
        self._channel = channel
        self._endpoint = endpoint
        self._connected = True
        await self._serve_stream()

    async def _open_channel(self, endpoint: SandboxEndpoint) -> ChannelClient:
        """Open the action channel to ``endpoint`` and start its reader (in the supervisor)."""
        ssl_context = None
        if endpoint.server_cert is not None:
            try:
                ssl_context = pinned_context(endpoint.server_cert)
            except ssl.SSLError as exc:
                raise SandboxConnectionError(
                    f"the sandbox's certificate cannot be pinned: {exc}"
                ) from exc
        channel = ChannelClient(
            endpoint.url,
            api_key=endpoint.api_key,
            client_id=self.client_id,
            on_event=self._on_channel_event,
            unix_socket=endpoint.unix_socket,
            peer_uid=endpoint.peer_uid,
            ssl_context=ssl_context,
            server_hostname=endpoint.server_name,
        )
        await channel.open()
        self._start_soon(self._serve_channel, channel, name=f"runtime-{self.session_id}-channel")
        return channel

    async def _serve_stream(self) -> None:
        """Subscribe to ``self.stream``, send what it left unanswered, report ``ready``."""
        # Events before this id are history (scanned for unanswered actions below);
        # the subscription delivers every later one.
        boundary = len(self.stream)
        self._subscription = self.stream.subscribe(
            self._on_stream_event, subscriber_id=f"runtime-{self.session_id}-{uuid.uuid4().hex[:8]}"
        )
        resumed = await self._resume_pending(boundary)
        note = f"; resent {resumed} unanswered action(s)" if resumed else ""
        self.report_status(RuntimeStatus.READY, f"sandbox {self.session_id} is ready{note}")

    # ------------------------------------------------------------------ handing over

    async def hand_over(
        self,
        stream: EventStream,
        *,
        session_id: str | None = None,
        client_id: str | None = None,
    ) -> None:
        """Serve ``stream`` from now on, with the sandbox as it is (a warm pool, a fork).

        The runtime must be connected and idle (no action of its stream
        waiting for its observation). It stops listening to its current
        stream, takes ``session_id`` (refused with :class:`SessionInUseError`
        when another runtime holds it; a Docker sandbox's container is renamed
        to it) and ``client_id`` (the server's result cache is per client: a
        sandbox that ran actions for another stream must get a new one, or the
        new stream's action ids would be answered from the old one's results;
        the channel is opened again under it), then subscribes to ``stream``,
        sends the actions it left unanswered, and reports ``ready`` on it —
        as :meth:`connect` does. Nothing is appended to the old stream.
        """
        if self._closed or not self._connected or self._channel is None:
            raise SandboxClosedError("only a connected runtime can be handed over")
        if self._waiters or self._channel.pending:
            raise SandboxError("the runtime is busy: an action is still waiting for its answer")
        if session_id is not None and session_id != self.session_id:
            await self._change_session(session_id)
        if client_id is not None and client_id != self.client_id:
            assert self._endpoint is not None
            old, self.client_id = self._channel, client_id
            self._channel = await self._open_channel(self._endpoint)
            await old.aclose()
        if self._subscription is not None:
            self._subscription.unsubscribe()
            self._subscription = None
        self.stream = stream
        if self._stream_watch is not None:
            self._stream_watch.cancel()
        self._watch_stream(stream)
        await self._serve_stream()

    async def _change_session(self, session_id: str) -> None:
        """Take ``session_id`` in place of the current one (subclasses rename their sandbox)."""
        old = self.session_id
        self._claim_session(session_id)
        self.session_id = session_id
        self._release_session(old)

    # ------------------------------------------------------------------ the supervisor

    def _start_soon(
        self, func: Callable[..., Coroutine[Any, Any, object]], *args: Any, name: str | None = None
    ) -> None:
        """Run ``func(*args)`` in the runtime's task group, from connect() until aclose().

        For subclasses too (a container watcher, a log drainer): the task is
        cancelled by aclose(); if it raises, the runtime reports the error
        (a ``RuntimeStatusObservation(error)``, every waiting action answered)
        and its other tasks are cancelled.
        """
        self._supervisor.start_soon(func, *args, name=name)

    async def _serve_channel(self, channel: ChannelClient) -> None:
        try:
            await channel.run()
        except Exception:
            # The reader died; the channel answered what was pending and appended the
            # error status (through _on_channel_event). The runtime lives on: later
            # actions are answered with that error at once.
            logger.exception("sandbox %s: the action channel failed", self.session_id)

    def _task_failed(self, exc: Exception) -> None:
        # A task of this runtime died: loudly, on the stream and in every waiting run().
        reason = f"the runtime failed: {describe_error(exc)}"
        if self._channel is not None:
            self._channel.fail_pending(reason)
        for future in self._waiters.values():
            if not future.done():
                future.set_exception(SandboxError(reason))
        self.report_status(RuntimeStatus.ERROR, reason)

    def _claim_session(self, session_id: str | None = None) -> None:
        if self.session_scope is None:
            return
        session_id = self.session_id if session_id is None else session_id
        key = (self.session_scope, session_id)
        owner = _session_owners.get(key)
        if owner is not None and owner is not self:
            raise SessionInUseError(
                f"session {session_id!r} is in use by another live runtime in this "
                f"process ({type(owner).__name__} on {owner.stream!r}); close it first, "
                "or choose another session id",
                session_id=session_id,
                owner="this process",
            )
        _session_owners[key] = self

    def _release_session(self, session_id: str | None = None) -> None:
        if self.session_scope is None:
            return
        key = (self.session_scope, self.session_id if session_id is None else session_id)
        if _session_owners.get(key) is self:
            del _session_owners[key]

    def pending_actions(self, end: int | None = None) -> list[Action]:
        """Runnable agent/user actions (ids below ``end``) that no observation answers yet."""
        answered: set[int] = set()
        actions: list[Action] = []
        last = None if end is None else end - 1
        for event in self.stream.iter_events(0, last):
            if isinstance(event, Observation) and event.cause is not None:
                answered.add(event.cause)
            elif is_runnable(event):
                actions.append(event)
        return [a for a in actions if a.id not in answered]

    async def _resume_pending(self, boundary: int) -> int:
        # After a crash (or an action appended while no runtime was connected) the
        # stream holds actions nobody answered. Sending them again is safe: the server
        # answers ids it already ran for this client from its result cache.
        channel = self._channel
        if channel is None:
            return 0
        if boundary == 0:
            return 0
        pending = self.pending_actions(boundary)
        for action in pending:
            await channel.send(action)
        return len(pending)

    def _watch_stream(self, stream: EventStream) -> None:
        scope = self._stream_watch = anyio.CancelScope()
        self._start_soon(
            self._watch_stream_failure, stream, scope, name=f"runtime-{self.session_id}-log-failure"
        )

    async def _watch_stream_failure(self, stream: EventStream, scope: anyio.CancelScope) -> None:
        # A durable stream whose log failed takes no more events, so no observation
        # can ever answer a waiting run(): each gets the log's error instead.
        with scope:
            error = await stream.wait_write_error()
        if scope.cancel_called:
            return  # the runtime was handed over to another stream
        logger.error("sandbox %s: the event stream failed: %s", self.session_id, error)
        for future in self._waiters.values():
            if not future.done():
                future.set_exception(stream.write_error or error)

    async def _stop_quietly(self) -> None:
        try:
            await self._stop_sandbox()
        except Exception:
            logger.exception("stopping sandbox %s failed", self.session_id)

    def _sandbox_died(self, reason: str) -> None:
        """The sandbox is gone: answer what is pending, report, allow connect() again."""
        channel, self._channel = self._channel, None
        if self._subscription is not None:
            self._subscription.unsubscribe()
            self._subscription = None
        if channel is not None:
            channel.fail_pending(reason)
            # The reader (in the supervisor) sees its channel closed and ends; the
            # socket is closed on its way out.
            channel.close_soon()
        self._connected = False
        self.report_status(RuntimeStatus.ERROR, reason)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._subscription is not None:
            self._subscription.unsubscribe()
            self._subscription = None
        try:
            if self._channel is not None:
                self._channel.fail_pending("the runtime was closed")
                await self._channel.aclose()
                self._channel = None
            for future in self._waiters.values():
                if not future.done():
                    future.set_exception(SandboxClosedError("the runtime was closed"))
            self._waiters.clear()
            await self._supervisor.aclose()
        finally:
            try:
                await self._stop_sandbox()
            finally:
                self._release_session()
        self._connected = False
        self.report_status(RuntimeStatus.CLOSED, f"sandbox {self.session_id} closed")

    # ------------------------------------------------------------------ actions

    async def run(self, action: Action) -> Observation:
        """Append ``action`` (source agent), wait for its observation and return it.

        Cancelling the call interrupts what it started before the cancellation
        completes: for a new shell command, the runtime appends
        ``CmdRunAction("C-c", is_input=True)`` (source *environment*, its
        ``thought`` naming the interrupted action) and sends it; for an IPython
        cell it asks the server to interrupt the kernel (a control frame, see
        :mod:`events.control`; the cell's observation says it was
        interrupted). Then it waits up to :attr:`interrupt_grace` seconds for
        the action's observation (exit code 130, ``KeyboardInterrupt``), so the
        next action runs at once. What ignores the interrupt is left running
        after that grace, as after a timeout.
        """
        if self._closed or self._channel is None:
            raise SandboxClosedError("the runtime is not connected")
        stored = self.stream.append(action, source=_AGENT)
        future: asyncio.Future[Observation] = asyncio.get_running_loop().create_future()
        self._waiters[stored.id] = future
        try:
            if isinstance(stored, ACTION_TYPES):
                self._dispatched.add(stored.id)
                await self._channel.send(stored)
            # Awaited directly (asyncio.wait would cost a callback and a future more per
            # action): a cancellation cancels the future with us, and the interrupt below
            # waits for the answer on the one _answer_after_cancel puts in its place.
            return await future
        except asyncio.CancelledError:
            await self._interrupt(stored, self._answer_after_cancel(stored.id, future))
            raise
        finally:
            self._waiters.pop(stored.id, None)

    def _answer_after_cancel(
        self, action_id: int, future: asyncio.Future[Observation]
    ) -> asyncio.Future[Observation]:
        """The future that gets ``action_id``'s answer now that run() was cancelled.

        ``future`` itself when it was not cancelled (answered already, or the
        cancellation came before run() waited on it); else whatever
        :meth:`_on_channel_event` put in its place meanwhile (an answer that came
        after the cancellation), else a fresh one in ``_waiters``.
        """
        if not future.cancelled():
            return future
        current = self._waiters.get(action_id)
        if current is not None and current is not future:
            return current
        fresh: asyncio.Future[Observation] = asyncio.get_running_loop().create_future()
        self._waiters[action_id] = fresh
        return fresh

    async def shell_state(self) -> ShellState:
        """The sandbox shell's working directory and exported environment, between actions.

        Read after every action sent before the call has finished; nothing is
        appended to the stream. See :meth:`ChannelClient.shell_state
        <openhands_rt.channel.ChannelClient.shell_state>` for its errors.
        """
        if self._closed or self._channel is None:
            raise SandboxClosedError("the runtime is not connected")
        return await self._channel.shell_state()

    async def _interrupt(self, action: Action, answered: asyncio.Future[Observation]) -> None:
        """Interrupt ``action`` (its run() was cancelled) and wait, bounded, for its answer."""
        shell = _starts_a_command(action)
        if answered.done() or not (shell or isinstance(action, IPythonRunCellAction)):
            return
        channel = self._channel
        if channel is None or self._closed:
            return
        # anyio cancels again at every await inside a cancelled scope: shielded, the
        # interrupt still goes out and the answer is awaited (never past the grace).
        with anyio.CancelScope(shield=True), anyio.move_on_after(self.interrupt_grace):
            if not shell:
                # A kernel interrupt is a control request, not an event: the cell's
                # observation records it (see events.control).
                await channel.interrupt(action.id)
                await asyncio.wait([answered])
                return
            try:
                interrupt = self.stream.append(
                    CmdRunAction(
                        "C-c",
                        is_input=True,
                        thought=f"Interrupting action {action.id}: its run() was cancelled.",
                    ),
                    source=EventSource.ENVIRONMENT,
                )
            except Exception:
                logger.exception("could not append the interrupt of action %d", action.id)
                return
            with contextlib.suppress(SandboxClosedError):
                await channel.send(interrupt)
            await asyncio.wait([answered])
        if not answered.done():
            logger.warning(
                "action %d was still running %.1f s after it was interrupted",
                action.id,
                self.interrupt_grace,
            )

    async def _on_stream_event(self, event: Event) -> None:
        if not is_runnable(event):
            return
        if event.id in self._dispatched:
            # run() sent it already; the subscriber sees ids in order, so this is the
            # last time anybody asks about this id.
            self._dispatched.discard(event.id)
            return
        channel = self._channel
        if channel is None:
            return
        with contextlib.suppress(SandboxClosedError):
            await channel.send(event)

    def _on_channel_event(self, event: Event) -> None:
        try:
            stored = self.stream.append(event, source=_ENVIRONMENT)
        except Exception as exc:
            logger.exception("could not append %s to the stream", type(event).__name__)
            # The caller waiting for this observation hears why it never comes.
            future = self._waiters.get(event.cause) if event.cause is not None else None
            if isinstance(event, Observation) and future is not None and not future.done():
                future.set_exception(exc)
            return
        answered: AnyEvent = stored  # type: ignore[assignment]  # the decoder's union, no other
        match answered:
            case CmdOutputChunk() | Action() | OpenHandsEvent():
                pass  # a chunk on the way, or no answer: nobody waits for it
            case Observation():
                cause = answered.cause
                future = self._waiters.get(cause) if cause is not None else None
                if future is None:
                    return
                if future.cancelled():
                    # run() was cancelled and has not yet asked for the answer: keep it
                    # for the interrupt's wait (_answer_after_cancel).
                    assert cause is not None
                    future = asyncio.get_running_loop().create_future()
                    self._waiters[cause] = future
                if not future.done():
                    future.set_result(answered)
            case _:
                assert_never(answered)


def _starts_a_command(action: Action) -> bool:
    """A new shell command (not input to a running one, not a control key)."""
    return (
        isinstance(action, CmdRunAction)
        and not action.is_input
        and bool(action.command.strip())
        and special_key(action.command) is None
    )
