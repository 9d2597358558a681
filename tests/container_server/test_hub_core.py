"""The hub's protocol core, driven synchronously: no loop, no socket, no shell."""

from __future__ import annotations

from collections import OrderedDict

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    invariant,
    precondition,
    rule,
)

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
from events import (
    CmdOutputChunk,
    CmdOutputObservation,
    CmdRunAction,
    ErrorObservation,
    FileReadAction,
    Observation,
)


def cmd(action_id: int, command: str = "true") -> CmdRunAction:
    return CmdRunAction(command, id=action_id)


def obs(text: str) -> CmdOutputObservation:
    return CmdOutputObservation(text, command="true")


# ------------------------------------------------------------------ attach / detach


def test_a_clients_first_attachment_is_greeted_and_a_newer_one_replaces_it() -> None:
    core = HubCore()
    first, decisions = core.attach("a")
    assert decisions == [Greet(first)]
    assert core.current("a") is first
    second, decisions = core.attach("a")
    assert decisions == [Close(first)]
    assert core.current("a") is second
    assert (first.client_id, second.client_id) == ("a", "a")
    assert second.serial > first.serial


def test_detach_of_a_replaced_attachment_leaves_the_current_one() -> None:
    core = HubCore()
    first, _ = core.attach("a")
    second, _ = core.attach("a")
    core.detach(first)
    assert core.current("a") is second
    core.detach(second)
    assert core.current("a") is None
    third, decisions = core.attach("a")
    assert decisions == []  # remembered: no second greeting
    assert core.current("a") is third


# ------------------------------------------------------------------ exactly once


def test_an_action_runs_once_and_its_resends_are_answered_without_running_again() -> None:
    core = HubCore()
    att, _ = core.attach("a")
    action = cmd(5)
    assert core.action(att, action) == [Start("a", action)]
    assert core.running("a") == [5]
    assert core.running_count == 1
    assert core.action(att, action) == []  # running: it answers when it finishes
    decisions = core.finished("a", 5, obs("hi"))
    [deliver] = decisions
    assert isinstance(deliver, Deliver)
    assert deliver.attachment is att
    assert isinstance(deliver.event, CmdOutputObservation)
    assert (deliver.event.content, deliver.event.cause) == ("hi", 5)
    assert core.running("a") == []
    assert core.running_count == 0
    assert core.cached("a") == [5]
    again = core.action(att, action)
    assert again == [Deliver(att, deliver.event)]


def test_a_resend_after_a_reconnect_attaches_to_the_running_action() -> None:
    core = HubCore()
    first, _ = core.attach("a")
    assert core.action(first, cmd(11)) == [Start("a", cmd(11))]
    core.detach(first)
    second, _ = core.attach("a")
    assert core.action(second, cmd(11)) == []
    [deliver] = core.finished("a", 11, obs("done"))
    assert isinstance(deliver, Deliver)
    assert deliver.attachment is second


def test_an_answer_with_nobody_attached_is_cached_for_the_next_attachment() -> None:
    core = HubCore()
    first, _ = core.attach("a")
    core.action(first, cmd(1))
    core.detach(first)
    assert core.finished("a", 1, obs("kept")) == []
    second, _ = core.attach("a")
    [deliver] = core.action(second, cmd(1))
    assert isinstance(deliver, Deliver)
    assert deliver.attachment is second
    assert isinstance(deliver.event, CmdOutputObservation)
    assert (deliver.event.content, deliver.event.cause) == ("kept", 1)


def test_a_replaced_attachments_resend_is_answered_on_the_current_one() -> None:
    core = HubCore()
    old, _ = core.attach("a")
    core.action(old, cmd(2))
    core.finished("a", 2, obs("x"))
    new, _ = core.attach("a")
    [deliver] = core.action(old, cmd(2))
    assert isinstance(deliver, Deliver)
    assert deliver.attachment is new


def test_ids_are_per_client() -> None:
    core = HubCore()
    a, _ = core.attach("a")
    b, _ = core.attach("b")
    assert core.action(a, cmd(0)) == [Start("a", cmd(0))]
    core.finished("a", 0, obs("a's"))
    assert core.action(b, cmd(0)) == [Start("b", cmd(0))]
    [deliver] = core.finished("b", 0, obs("b's"))
    assert isinstance(deliver, Deliver)
    assert deliver.attachment is b


def test_the_observation_gets_the_actions_id_as_cause() -> None:
    core = HubCore()
    att, _ = core.attach("a")
    core.action(att, FileReadAction("f", id=3))
    error = ErrorObservation("boom", error_id="internal_error", cause=99)
    [deliver] = core.finished("a", 3, error)
    assert isinstance(deliver, Deliver)
    assert deliver.event.cause == 3
    assert isinstance(deliver.event, ErrorObservation)
    assert deliver.event.error_id == "internal_error"


# ------------------------------------------------------------------ chunks


def test_chunks_go_to_the_owning_clients_current_attachment_only() -> None:
    core = HubCore()
    a1, _ = core.attach("a")
    b, _ = core.attach("b")
    core.action(a1, cmd(4))
    chunk = CmdOutputChunk(4, 0, "partial")
    assert core.chunk("a", chunk) == [Deliver(a1, chunk)]
    a2, _ = core.attach("a")
    assert core.chunk("a", CmdOutputChunk(4, 1, "more")) == [
        Deliver(a2, CmdOutputChunk(4, 1, "more"))
    ]
    core.detach(a2)
    assert core.chunk("a", CmdOutputChunk(4, 2, "lost")) == []
    assert all(
        d.attachment is not b for d in core.finished("a", 4, obs("")) if isinstance(d, Deliver)
    )


def test_chunk_or_answer_of_an_action_that_is_not_running_is_a_bug() -> None:
    core = HubCore()
    att, _ = core.attach("a")
    with pytest.raises(LookupError):
        core.chunk("a", CmdOutputChunk(1, 0, "x"))
    with pytest.raises(LookupError):
        core.finished("a", 1, obs(""))
    with pytest.raises(LookupError):
        core.finished("nobody", 1, obs(""))
    core.action(att, cmd(1))
    core.finished("a", 1, obs(""))
    with pytest.raises(LookupError):
        core.finished("a", 1, obs(""))  # an action answers once
    with pytest.raises(LookupError):
        core.chunk("a", CmdOutputChunk(1, 0, "late"))


# ------------------------------------------------------------------ interrupt


def test_interrupt_targets_only_the_clients_own_running_action() -> None:
    core = HubCore()
    a, _ = core.attach("a")
    b, _ = core.attach("b")
    action = cmd(7, "sleep 9")
    core.action(a, action)
    assert core.interrupt(a, 7) == [Interrupt("a", action)]
    assert core.interrupt(b, 7) == []  # b's action 7 is another action, not running
    assert core.interrupt(a, 8) == []  # never sent
    core.finished("a", 7, obs(""))
    assert core.interrupt(a, 7) == []  # finished: the request lost the race


# ------------------------------------------------------------------ limits


def test_the_cache_keeps_the_last_max_results_answers() -> None:
    core = HubCore(max_results=2)
    att, _ = core.attach("a")
    for action_id in range(3):
        core.action(att, cmd(action_id))
        core.finished("a", action_id, obs(str(action_id)))
    assert core.cached("a") == [1, 2]
    # An evicted id runs again (the host never resends that far back).
    assert core.action(att, cmd(0)) == [Start("a", cmd(0))]


def test_idle_clients_are_forgotten_least_recent_first_but_never_busy_ones() -> None:
    core = HubCore(max_clients=2)
    a, _ = core.attach("a")
    core.action(a, cmd(0))
    core.finished("a", 0, obs(""))
    core.detach(a)
    b, _ = core.attach("b")
    core.action(b, cmd(0))  # b stays busy: running, and attached
    core.attach("c")
    assert core.client_ids == ["b", "c"]  # a was idle: forgotten with its results
    a2, decisions = core.attach("a")
    assert decisions == [Greet(a2)]  # a new client again
    assert core.client_ids == ["b", "c", "a"]  # b is busy: nobody is forgotten
    assert core.action(a2, cmd(0)) == [Start("a", cmd(0))]


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        HubCore(max_results=0)
    with pytest.raises(ValueError, match="at least 1"):
        HubCore(max_clients=0)


def test_a_stale_attachment_of_a_forgotten_client_gets_nothing() -> None:
    core = HubCore(max_clients=1)
    a, _ = core.attach("a")
    core.detach(a)
    core.attach("b")
    assert core.client_ids == ["b"]
    assert core.interrupt(a, 0) == []
    assert core.action(a, cmd(0)) == [Start("a", cmd(0))]
    assert core.finished("a", 0, obs("")) == []  # nobody of a is attached


# ------------------------------------------------------------------ the state machine

CLIENTS = ("a", "b", "c")
IDS = st.integers(min_value=0, max_value=4)


class HubMachine(RuleBasedStateMachine):
    """Random attach/detach/resend/chunk/finish/interrupt, checked against a plain model.

    Invariants: an action id runs at most once per client while its answer is cached
    (or it runs); every ask from an attachment is answered exactly once on the client's
    current attachment (at once from the cache, or when the run finishes); chunks and
    observations reach only the owning client's current attachment; a detached or
    replaced attachment receives nothing more; the cache and the client table respect
    their limits.
    """

    attachments = Bundle("attachments")

    def __init__(self) -> None:
        super().__init__()
        self.core = HubCore(max_results=3, max_clients=2)
        # The model.
        self.clients: OrderedDict[str, None] = OrderedDict()  # remembered, LRU order
        self.current: dict[str, Attachment] = {}
        self.cache: dict[str, OrderedDict[int, Observation]] = {}
        self.running: dict[tuple[str, int], CmdRunAction] = {}
        self.live: set[Attachment] = set()  # attached (current or replaced, not detached)
        self.runs: dict[tuple[str, int], int] = {}
        # Ids whose answer left the cache (evicted, or their client forgotten).
        self.may_run_again: set[tuple[str, int]] = set()
        self.answers = 0
        self.chunk_seq: dict[tuple[str, int], int] = {}
        # What each attachment received, and what the model says it should have.
        self.received: dict[Attachment, list[Observation | CmdOutputChunk]] = {}
        self.expected: dict[Attachment, list[Observation | CmdOutputChunk]] = {}

    # -------------------------------------------------------------- the world

    def deliveries(self, decisions: list[Decision]) -> None:
        for decision in decisions:
            if isinstance(decision, Deliver):
                assert decision.attachment in self.live, "delivered to a detached attachment"
                owner = decision.attachment.client_id
                assert self.current.get(owner) is decision.attachment, "not the current one"
                assert isinstance(decision.event, Observation | CmdOutputChunk)
                self.received[decision.attachment].append(decision.event)

    def expect(self, client_id: str, event: Observation | CmdOutputChunk) -> None:
        attachment = self.current.get(client_id)
        if attachment is not None:
            self.expected[attachment].append(event)

    def remember(self, client_id: str) -> None:
        self.clients[client_id] = None
        self.cache[client_id] = OrderedDict()
        while len(self.clients) > self.core.max_clients:
            oldest = next(iter(self.clients))
            if self.busy(oldest):
                break
            del self.clients[oldest]
            self.may_run_again.update((oldest, i) for i in self.cache.pop(oldest))

    def busy(self, client_id: str) -> bool:
        return client_id in self.current or any(c == client_id for c, _ in self.running)

    # -------------------------------------------------------------- rules

    @rule(target=attachments, client_id=st.sampled_from(CLIENTS))
    def attach(self, client_id: str) -> Attachment:
        new = client_id not in self.clients
        previous = self.current.get(client_id)
        attachment, decisions = self.core.attach(client_id)
        expected: list[Decision] = [] if previous is None else [Close(previous)]
        if new:
            expected.append(Greet(attachment))
        assert decisions == expected
        if new:
            self.remember(client_id)
            # Clients are forgotten when a new one comes: past the limit only behind a busy one.
            assert len(self.clients) <= self.core.max_clients or self.busy(next(iter(self.clients)))
        else:
            self.clients.move_to_end(client_id)
        self.current[client_id] = attachment
        self.live.add(attachment)
        self.received[attachment] = []
        self.expected[attachment] = []
        return attachment

    @rule(attachment=consumes(attachments))
    def detach(self, attachment: Attachment) -> None:
        self.core.detach(attachment)
        self.live.discard(attachment)
        if self.current.get(attachment.client_id) is attachment:
            del self.current[attachment.client_id]

    @rule(attachment=attachments, action_id=IDS)
    def send(self, attachment: Attachment, action_id: int) -> None:
        client_id = attachment.client_id
        key = (client_id, action_id)
        action = cmd(action_id, f"echo {action_id}")
        decisions = self.core.action(attachment, action)
        if client_id not in self.clients:
            # A replaced attachment of a client forgotten since: the client starts afresh.
            self.remember(client_id)
        cached = self.cache[client_id].get(action_id)
        if cached is not None:
            self.expect(client_id, cached)
            assert not any(isinstance(d, Start) for d in decisions), "cached id ran again"
        elif key in self.running:
            assert decisions == [], "running id started again"
        else:
            assert decisions == [Start(client_id, action)]
            if key in self.runs:
                # A second run: only once the first one's answer is no longer cached.
                assert key in self.may_run_again, key
                self.may_run_again.discard(key)
            self.running[key] = action
            self.runs[key] = self.runs.get(key, 0) + 1
            self.chunk_seq[key] = 0
        self.deliveries(decisions)

    @precondition(lambda self: bool(self.running))
    @rule(data=st.data())
    def chunk(self, data: st.DataObject) -> None:
        client_id, action_id = key = data.draw(st.sampled_from(sorted(self.running)))
        chunk = CmdOutputChunk(action_id, self.chunk_seq[key], f"{client_id}{action_id}")
        self.chunk_seq[key] += 1
        self.expect(client_id, chunk)
        self.deliveries(self.core.chunk(client_id, chunk))

    @precondition(lambda self: bool(self.running))
    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        client_id, action_id = key = data.draw(st.sampled_from(sorted(self.running)))
        del self.running[key]
        self.answers += 1
        answer = CmdOutputObservation(
            f"answer {self.answers}", command=f"echo {action_id}", cause=action_id
        )
        cache = self.cache[client_id]
        cache[action_id] = answer
        if len(cache) > self.core.max_results:
            evicted, _ = cache.popitem(last=False)
            self.may_run_again.add((client_id, evicted))
        self.expect(client_id, answer)
        self.deliveries(self.core.finished(client_id, action_id, answer))

    @rule(attachment=attachments, action_id=IDS)
    def interrupt(self, attachment: Attachment, action_id: int) -> None:
        decisions = self.core.interrupt(attachment, action_id)
        running = self.running.get((attachment.client_id, action_id))
        assert decisions == ([] if running is None else [Interrupt(attachment.client_id, running)])

    # -------------------------------------------------------------- invariants

    @invariant()
    def every_attachment_got_exactly_what_it_was_owed(self) -> None:
        for attachment, received in self.received.items():
            assert received == self.expected[attachment], attachment

    @invariant()
    def the_core_agrees_with_the_model(self) -> None:
        assert self.core.running_count == len(self.running)
        assert self.core.client_ids == list(self.clients)
        for client_id in self.clients:
            assert self.core.cached(client_id) == list(self.cache[client_id])
            assert self.core.current(client_id) is self.current.get(client_id)
            assert sorted(self.core.running(client_id)) == sorted(
                i for c, i in self.running if c == client_id
            )
            assert len(self.cache[client_id]) <= self.core.max_results


HubMachine.TestCase.settings = settings(max_examples=100, stateful_step_count=25, deadline=None)
test_hub_machine = HubMachine.TestCase
