"""The action channel's server-side protocol, with no I/O: who owns which action, what runs.

A *client* is one host-side stream/runtime instance, identified by the
``client_id`` it sends when it opens the channel; each open channel of a
client is an :class:`Attachment`, and the newest attachment of a client is its
*current* one (an older one is told to close). Action ids are only unique per
client (a second stream attaching to a kept-alive sandbox starts at 0 again),
so everything here is keyed by ``(client_id, action_id)``.

Exactly once across reconnects: an action id that is running is not started
again (its observation goes to the client's current attachment when it
finishes), and an id that already finished is answered from the client's
result cache, however often it is resent. Chunks and observations go to the
current attachment of the client whose action made them, and to no other.

Limits: each client's cache keeps its last ``max_results`` observations (an id
evicted from it runs again if resent: the host resends only ids it has no
answer for, and never ``max_results`` ids back); at most ``max_clients``
clients are remembered, the least recently attached forgotten first unless it
is attached or has an action running.

:class:`HubCore` is driven by its adapter (:mod:`container_server.hub`): it
feeds in what happened — :meth:`~HubCore.attach`, :meth:`~HubCore.detach`,
:meth:`~HubCore.action`, :meth:`~HubCore.chunk`, :meth:`~HubCore.finished`,
:meth:`~HubCore.interrupt` — and carries out the decisions each returns, in
order: :class:`Start` a run, :class:`Deliver` an event to an attachment,
:class:`Greet` a client's first attachment, :class:`Close` a replaced
attachment, :class:`Interrupt` a run. No clock, no task, no socket: every case
is tested synchronously (tests/container_server/test_hub_core.py).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import msgspec

from events import CmdOutputChunk, Event, Observation
from events.wire import RunnableAction

__all__ = [
    "Attachment",
    "Close",
    "Decision",
    "Deliver",
    "Greet",
    "HubCore",
    "Interrupt",
    "Start",
]


class Attachment:
    """One open channel of a client; compared by identity."""

    __slots__ = ("client_id", "serial")

    def __init__(self, client_id: str, serial: int) -> None:
        self.client_id = client_id
        #: Counts the attachments of all clients: which came first, for logs and tests.
        self.serial = serial

    def __repr__(self) -> str:
        return f"Attachment({self.client_id!r}, #{self.serial})"


@dataclass(frozen=True, slots=True)
class Start:
    """Run ``action`` for ``client_id``; report its output and end with chunk/finished."""

    client_id: str
    action: RunnableAction


@dataclass(frozen=True, slots=True)
class Deliver:
    """Send ``event`` (a chunk or an observation) on ``attachment``."""

    attachment: Attachment
    event: Event


@dataclass(frozen=True, slots=True)
class Greet:
    """``attachment`` is its client's first: tell it what the sandbox's start had to say."""

    attachment: Attachment


@dataclass(frozen=True, slots=True)
class Close:
    """``attachment`` was replaced by a newer one of its client: send it nothing more."""

    attachment: Attachment


@dataclass(frozen=True, slots=True)
class Interrupt:
    """Interrupt the run of ``action`` (the client asked; its observation says how it ended)."""

    client_id: str
    action: RunnableAction


Decision = Start | Deliver | Greet | Close | Interrupt


class _Client:
    __slots__ = ("current", "results", "running")

    def __init__(self) -> None:
        self.results: OrderedDict[int, Observation] = OrderedDict()
        self.running: dict[int, RunnableAction] = {}
        self.current: Attachment | None = None

    @property
    def busy(self) -> bool:
        return bool(self.running) or self.current is not None


class HubCore:
    """The hub's state: clients, their attachments, running actions and result caches."""

    def __init__(self, *, max_results: int = 1024, max_clients: int = 64) -> None:
        if max_results < 1 or max_clients < 1:
            raise ValueError("max_results and max_clients must be at least 1")
        self.max_results = max_results
        self.max_clients = max_clients
        self._clients: OrderedDict[str, _Client] = OrderedDict()
        self._serial = 0
        self._running_count = 0

    # ------------------------------------------------------------------ queries

    @property
    def running_count(self) -> int:
        """How many actions run now, of all clients."""
        return self._running_count

    @property
    def client_ids(self) -> list[str]:
        """The remembered clients, least recently attached first."""
        return list(self._clients)

    def current(self, client_id: str) -> Attachment | None:
        client = self._clients.get(client_id)
        return None if client is None else client.current

    def running(self, client_id: str) -> list[int]:
        """The ids of ``client_id``'s running actions, in the order they started."""
        client = self._clients.get(client_id)
        return [] if client is None else list(client.running)

    def cached(self, client_id: str) -> list[int]:
        """The ids ``client_id``'s cache answers, oldest first."""
        client = self._clients.get(client_id)
        return [] if client is None else list(client.results)

    # ------------------------------------------------------------------ inputs

    def attach(self, client_id: str) -> tuple[Attachment, list[Decision]]:
        """A channel of ``client_id`` opened: it becomes the client's current attachment."""
        decisions: list[Decision] = []
        client = self._clients.get(client_id)
        new = client is None
        if client is None:
            client = self._clients[client_id] = _Client()
            self._forget_idle_clients()
        else:
            self._clients.move_to_end(client_id)
        self._serial += 1
        attachment = Attachment(client_id, self._serial)
        if client.current is not None:
            decisions.append(Close(client.current))  # the newest channel wins
        client.current = attachment
        if new:
            decisions.append(Greet(attachment))
        return attachment, decisions

    def detach(self, attachment: Attachment) -> None:
        """``attachment``'s channel closed; its client's runs and results stay."""
        client = self._clients.get(attachment.client_id)
        if client is not None and client.current is attachment:
            client.current = None

    def action(self, attachment: Attachment, action: RunnableAction) -> list[Decision]:
        """``attachment`` sent ``action`` (with an id): run it, unless it ran or is running."""
        client = self._client(attachment)
        cached = client.results.get(action.id)
        if cached is not None:
            return self._deliver(client, cached)
        if action.id in client.running:
            return []  # its observation goes to the current attachment when it finishes
        client.running[action.id] = action
        self._running_count += 1
        return [Start(attachment.client_id, action)]

    def chunk(self, client_id: str, chunk: CmdOutputChunk) -> list[Decision]:
        """The run of ``client_id``'s action ``chunk.cause`` produced ``chunk``."""
        client = self._clients.get(client_id)
        if client is None or chunk.cause not in client.running:
            raise LookupError(f"no action {chunk.cause} of client {client_id!r} is running")
        return self._deliver(client, chunk)

    def finished(self, client_id: str, action_id: int, observation: Observation) -> list[Decision]:
        """The run of ``client_id``'s action ``action_id`` ended with ``observation``.

        The observation's ``cause`` becomes ``action_id``; it is cached and goes to
        the client's current attachment.
        """
        client = self._clients.get(client_id)
        if client is None or client.running.pop(action_id, None) is None:
            raise LookupError(f"no action {action_id} of client {client_id!r} is running")
        self._running_count -= 1
        if observation.cause != action_id:
            observation = msgspec.structs.replace(observation, cause=action_id)
        client.results[action_id] = observation
        if len(client.results) > self.max_results:
            client.results.popitem(last=False)
        return self._deliver(client, observation)

    def interrupt(self, attachment: Attachment, action_id: int) -> list[Decision]:
        """``attachment`` asks to interrupt its client's action ``action_id``.

        Nothing happens for an action that is not running (finished, or never
        sent): the request races the answer by nature.
        """
        client = self._clients.get(attachment.client_id)
        action = None if client is None else client.running.get(action_id)
        if action is None:
            return []
        return [Interrupt(attachment.client_id, action)]

    # ------------------------------------------------------------------ internals

    def _client(self, attachment: Attachment) -> _Client:
        client = self._clients.get(attachment.client_id)
        if client is None:
            # A client is forgotten only once no attachment of it is current; one it
            # replaced may still send. Its client starts afresh (no results to offer).
            client = self._clients[attachment.client_id] = _Client()
            self._forget_idle_clients()
        return client

    def _deliver(self, client: _Client, event: Event) -> list[Decision]:
        if client.current is None:
            return []
        return [Deliver(client.current, event)]

    def _forget_idle_clients(self) -> None:
        while len(self._clients) > self.max_clients:
            oldest_id, oldest = next(iter(self._clients.items()))
            if oldest.busy:
                break  # never forget a client that is attached or has work in flight
            del self._clients[oldest_id]
