"""The action channel's sans-I/O core: synchronous, no socket, no event loop, no clock."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from events import (
    Action,
    CmdOutputChunk,
    CmdOutputObservation,
    CmdRunAction,
    ErrorObservation,
    Event,
    RuntimeStatus,
    RuntimeStatusObservation,
    decode_event,
    encode_event,
)
from events.control import (
    InterruptRequest,
    ShellState,
    ShellStateError,
    ShellStateRequest,
    decode_control,
    encode_control,
)
from events.wire import ErrorId
from openhands_rt.channel_core import ChannelProtocol, ChannelState
from openhands_rt.errors import SandboxClosedError


def action(action_id: int, command: str = "true") -> Action:
    return msgspec.structs.replace(CmdRunAction(command), id=action_id)


def answer(action_id: int, content: str = "ok") -> bytes:
    return encode_event(CmdOutputObservation(content, "true", cause=action_id))


def chunk(action_id: int, seq: int = 0) -> bytes:
    return encode_event(CmdOutputChunk(action_id, seq, f"part {seq}"))


def sent_ids(frames: list[bytes]) -> list[int]:
    return [decode_event(frame).id for frame in frames]


def open_channel(**kwargs: float) -> ChannelProtocol:
    protocol = ChannelProtocol(**kwargs)
    protocol.connected()
    return protocol


# ---------------------------------------------------------------------- sending


def test_an_action_is_sent_and_pending_until_its_observation() -> None:
    protocol = open_channel()
    protocol.send(action(3, "echo hi"))
    frames = protocol.data_to_send()
    assert [decode_event(f) for f in frames] == [action(3, "echo hi")]
    assert set(protocol.pending) == {3}
    assert protocol.data_to_send() == []  # handed out once

    protocol.frame(answer(3, "hi"))
    [delivered] = protocol.events_received()
    assert isinstance(delivered, CmdOutputObservation)
    assert (delivered.cause, delivered.content) == (3, "hi")
    assert protocol.pending == {}


def test_an_action_without_an_id_is_refused() -> None:
    protocol = open_channel()
    with pytest.raises(ValueError, match="stream id"):
        protocol.send(CmdRunAction("true"))
    assert protocol.pending == {}


def test_before_the_first_connection_actions_wait_and_go_out_in_id_order() -> None:
    protocol = ChannelProtocol()
    protocol.send(action(5))
    protocol.send(action(2))
    assert protocol.data_to_send() == []
    protocol.connected()
    assert sent_ids(protocol.data_to_send()) == [2, 5]


def test_a_closed_channel_refuses_to_send() -> None:
    protocol = open_channel()
    protocol.close()
    with pytest.raises(SandboxClosedError):
        protocol.send(action(1))
    protocol.frame(encode_event(RuntimeStatusObservation(RuntimeStatus.ERROR, "late")))
    assert protocol.events_received() == []


# ---------------------------------------------------------------------- routing


def test_chunks_are_delivered_for_pending_actions_only() -> None:
    protocol = open_channel()
    protocol.send(action(1))
    protocol.frame(chunk(1, 0))
    protocol.frame(chunk(7, 0))  # not ours
    protocol.frame(answer(1))
    protocol.frame(chunk(1, 1))  # after the answer
    delivered = protocol.events_received()
    assert [(type(e).__name__, e.cause) for e in delivered] == [
        ("CmdOutputChunk", 1),
        ("CmdOutputObservation", 1),
    ]


def test_a_second_observation_for_an_id_is_dropped() -> None:
    protocol = open_channel()
    protocol.send(action(4))
    protocol.frame(answer(4, "first"))
    protocol.frame(answer(4, "cached copy"))
    delivered = protocol.events_received()
    assert [e.content for e in delivered if isinstance(e, CmdOutputObservation)] == ["first"]


def test_events_of_no_action_are_delivered_and_server_ids_dropped() -> None:
    protocol = open_channel()
    status = msgspec.structs.replace(
        RuntimeStatusObservation(RuntimeStatus.STARTING, "note"), id=12
    )
    protocol.frame(encode_event(status))
    [delivered] = protocol.events_received()
    assert isinstance(delivered, RuntimeStatusObservation)
    assert delivered.message == "note"
    assert delivered.id == -1  # the host stream numbers it


@given(st.binary(max_size=200))
def test_any_bytes_are_routed_or_dropped_never_raised(data: bytes) -> None:
    protocol = open_channel()
    protocol.send(action(0))
    protocol.frame(data)
    delivered = protocol.events_received()
    assert len(delivered) <= 1
    for event in delivered:
        assert event.id == -1
        assert event.cause in (None, 0)


def test_an_undecodable_frame_is_dropped(caplog: pytest.LogCaptureFixture) -> None:
    protocol = open_channel()
    protocol.send(action(0))
    protocol.frame(b"\xff not json")
    assert protocol.events_received() == []
    assert set(protocol.pending) == {0}
    assert "undecodable frame" in caplog.text


# ---------------------------------------------------------------------- interrupts


def test_an_interrupt_goes_out_for_a_pending_action_on_an_open_connection_only() -> None:
    protocol = open_channel()
    protocol.send(action(2))
    protocol.data_to_send()
    protocol.interrupt(2)
    protocol.interrupt(9)  # not pending
    [frame] = protocol.data_to_send()
    assert decode_control(frame) == InterruptRequest(2)
    protocol.disconnected(now=0.0)
    protocol.interrupt(2)
    assert protocol.data_to_send() == []
    protocol.connected()
    assert sent_ids(protocol.data_to_send()) == [2]  # the action, not the interrupt


# ---------------------------------------------------------------------- reconnecting


def test_a_reconnect_resends_unanswered_actions_in_id_order() -> None:
    protocol = open_channel()
    for action_id in (3, 1, 2):
        protocol.send(action(action_id))
    protocol.data_to_send()
    protocol.frame(answer(2))
    protocol.disconnected(now=100.0)
    assert protocol.state is ChannelState.RECONNECTING
    assert protocol.next_attempt == 100.0  # at once
    protocol.send(action(0))  # while disconnected: waits
    assert protocol.data_to_send() == []
    protocol.connected()
    assert sent_ids(protocol.data_to_send()) == [0, 1, 3]
    assert protocol.next_attempt is None


def test_backoff_doubles_up_to_its_maximum_then_gives_up_past_the_deadline() -> None:
    protocol = open_channel(reconnect_deadline=3.0, backoff_start=0.25, backoff_max=1.0)
    protocol.send(action(1))
    protocol.send(action(0))
    protocol.disconnected(now=10.0)
    attempts = []
    while protocol.next_attempt is not None:
        now = protocol.next_attempt
        attempts.append(now)
        protocol.tick(now)
        protocol.connect_failed(now, "refused")
    assert attempts == [10.0, 10.25, 10.75, 11.75, 12.75]
    assert protocol.state is ChannelState.GAVE_UP
    assert protocol.pending == {}
    errors = protocol.events_received()
    assert [(type(e).__name__, e.cause) for e in errors] == [
        ("ErrorObservation", 0),
        ("ErrorObservation", 1),
        ("RuntimeStatusObservation", None),
    ]
    first = errors[0]
    assert isinstance(first, ErrorObservation)
    assert first.error_id == ErrorId.CONNECTION_LOST
    assert "could not reconnect within 3.0 s (refused)" in first.content
    status = errors[2]
    assert isinstance(status, RuntimeStatusObservation)
    assert status.status is RuntimeStatus.ERROR
    assert status.message.startswith("action channel: could not reconnect")
    # Later actions are answered at once, never sent.
    protocol.send(action(5))
    assert protocol.data_to_send() == []
    [late] = protocol.events_received()
    assert isinstance(late, ErrorObservation)
    assert late.cause == 5


def test_a_tick_past_the_deadline_gives_up() -> None:
    protocol = open_channel(reconnect_deadline=5.0)
    protocol.send(action(0))
    protocol.disconnected(now=0.0)
    protocol.tick(5.0)
    assert protocol.state is ChannelState.RECONNECTING
    protocol.tick(5.5)
    assert protocol.state is ChannelState.GAVE_UP
    assert protocol.next_attempt is None
    assert [e.cause for e in protocol.events_received()] == [0, None]


def test_a_reconnect_that_succeeds_resets_the_backoff() -> None:
    protocol = open_channel(reconnect_deadline=30.0, backoff_start=0.5, backoff_max=4.0)
    protocol.disconnected(now=0.0)
    protocol.connect_failed(0.0, "x")
    protocol.connect_failed(0.5, "x")
    assert protocol.next_attempt == 1.5
    protocol.connected()
    protocol.disconnected(now=50.0)
    protocol.connect_failed(50.0, "x")
    assert protocol.next_attempt == 50.5


def test_fail_answers_every_pending_action_once_in_id_order() -> None:
    protocol = open_channel()
    for action_id in (9, 4):
        protocol.send(action(action_id))
    protocol.fail("the container died", permanently=False)
    protocol.fail("again", permanently=False)
    delivered = protocol.events_received()
    assert [e.cause for e in delivered] == [4, 9]
    assert all(isinstance(e, ErrorObservation) for e in delivered)
    assert "the container died" in delivered[0].content  # type: ignore[attr-defined]
    protocol.send(action(10))  # not permanent: sent as usual
    assert sent_ids(protocol.data_to_send())[-1] == 10


def test_inputs_out_of_place_change_nothing() -> None:
    protocol = ChannelProtocol()
    protocol.disconnected(now=1.0)  # never connected
    protocol.connect_failed(1.0, "x")
    protocol.tick(1e9)
    assert protocol.state is ChannelState.IDLE
    assert protocol.next_attempt is None
    protocol.close()
    protocol.connected()
    assert protocol.state is ChannelState.CLOSED


# ---------------------------------------------------------------------- the state machine


class ChannelMachine(RuleBasedStateMachine):
    """Random sends, answers, chunks, drops, failed attempts and clock ticks.

    The model: which ids were sent, which were answered (by what), and what
    the server has seen on the current connection.
    """

    @initialize(deadline=st.floats(0.0, 5.0))
    def start(self, deadline: float) -> None:
        self.protocol = ChannelProtocol(reconnect_deadline=deadline)
        self.protocol.connected()
        self.now = 0.0
        self.next_id = 0
        self.sent: set[int] = set()
        self.answers: dict[int, list[Event]] = {}
        self.on_wire: list[int] = []  # ids written on the current connection
        self.delivered_chunks: list[CmdOutputChunk] = []
        self.gave_up = False

    def _drain(self) -> None:
        frames = self.protocol.data_to_send()
        if frames:
            assert self.protocol.is_open()
        for frame in frames:
            event = decode_event(frame)
            assert event.id in self.protocol.pending  # only unanswered ids go out
            self.on_wire.append(event.id)
        for event in self.protocol.events_received():
            if isinstance(event, CmdOutputChunk):
                assert event.cause not in self.answers  # chunks come before the answer
                self.delivered_chunks.append(event)
            elif isinstance(event, RuntimeStatusObservation):
                assert event.status is RuntimeStatus.ERROR
                self.gave_up = True
            else:
                assert event.cause is not None
                assert event.cause in self.sent
                self.answers.setdefault(event.cause, []).append(event)

    @rule(count=st.integers(1, 3))
    def send(self, count: int) -> None:
        for _ in range(count):
            self.protocol.send(action(self.next_id))
            self.sent.add(self.next_id)
            self.next_id += 1
        self._drain()

    @precondition(lambda self: self.sent)
    @rule(data=st.data())
    def server_answers(self, data: st.DataObject) -> None:
        # Anything the server may say about any id it was ever sent: duplicates too.
        action_id = data.draw(st.sampled_from(sorted(self.sent)))
        self.protocol.frame(answer(action_id))
        self._drain()

    @precondition(lambda self: self.sent)
    @rule(data=st.data(), seq=st.integers(0, 3))
    def server_streams(self, data: st.DataObject, seq: int) -> None:
        action_id = data.draw(st.sampled_from(sorted(self.sent)))
        self.protocol.frame(chunk(action_id, seq))
        self._drain()

    @rule(data=st.binary(max_size=20))
    def garbage(self, data: bytes) -> None:
        self.protocol.frame(data)
        self._drain()

    @rule(elapsed=st.floats(0.0, 2.0))
    def drop(self, elapsed: float) -> None:
        self.now += elapsed
        was_open = self.protocol.is_open()
        self.protocol.disconnected(self.now)
        self.on_wire.clear()
        if was_open:
            assert self.protocol.next_attempt == self.now
        self._drain()

    @precondition(lambda self: self.protocol.next_attempt is not None)
    @rule(succeeds=st.booleans())
    def attempt(self, succeeds: bool) -> None:
        at = self.protocol.next_attempt
        assert at is not None
        self.now = max(self.now, at)
        self.protocol.tick(self.now)
        if self.protocol.next_attempt is None:
            self._drain()
            return
        if succeeds:
            self.protocol.connected()
            frames = self.protocol.data_to_send()
            ids = sent_ids(frames)
            assert ids == sorted(self.protocol.pending)  # every unanswered id, in id order
            self.on_wire.extend(ids)
        else:
            self.protocol.connect_failed(self.now, "refused")
        self._drain()

    @rule(elapsed=st.floats(0.0, 10.0))
    def tick(self, elapsed: float) -> None:
        self.now += elapsed
        self.protocol.tick(self.now)
        self._drain()

    @rule()
    def owner_fails_it(self) -> None:
        self.protocol.fail("the sandbox died", permanently=False)
        self._drain()
        assert self.protocol.pending == {}

    @invariant()
    def every_action_gets_at_most_one_answer(self) -> None:
        if not hasattr(self, "protocol"):
            return
        for action_id, answers in self.answers.items():
            assert len(answers) == 1, (action_id, answers)

    @invariant()
    def answered_or_pending_never_both_never_neither(self) -> None:
        if not hasattr(self, "protocol"):
            return
        pending = set(self.protocol.pending)
        assert pending.isdisjoint(self.answers)
        assert pending | set(self.answers) == self.sent

    @invariant()
    def giving_up_leaves_nothing_pending(self) -> None:
        if not hasattr(self, "protocol"):
            return
        if self.protocol.state is ChannelState.GAVE_UP:
            assert self.gave_up
            assert self.protocol.pending == {}
            assert self.protocol.next_attempt is None
            for answers in self.answers.values():
                assert all(isinstance(a, CmdOutputObservation | ErrorObservation) for a in answers)

    @invariant()
    def the_connection_sees_each_pending_action(self) -> None:
        if not hasattr(self, "protocol"):
            return
        if self.protocol.is_open():
            assert set(self.protocol.pending) <= set(self.on_wire)


ChannelMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
test_channel_state_machine = ChannelMachine.TestCase


def test_a_dead_reader_answers_everything_then_reports_its_error() -> None:
    protocol = open_channel()
    protocol.send(action(2))
    protocol.send(action(1))
    assert sent_ids(protocol.data_to_send()) == [2, 1]
    protocol.died("the action channel failed: RuntimeError: boom")
    delivered = protocol.events_received()
    assert [(type(e).__name__, e.cause) for e in delivered] == [
        ("ErrorObservation", 1),
        ("ErrorObservation", 2),
        ("RuntimeStatusObservation", None),
    ]
    status = delivered[-1]
    assert isinstance(status, RuntimeStatusObservation)
    assert status.message == "the action channel failed: RuntimeError: boom"
    protocol.send(action(3))
    assert protocol.data_to_send() == []
    assert [e.cause for e in protocol.events_received()] == [3]


# --------------------------------------------------------------------------- shell state


def shell_state_reply(request_id: int, cwd: str = "/w") -> bytes:
    return encode_control(ShellState(request_id=request_id, cwd=cwd, env={"A": "1"}))


def test_a_shell_state_request_goes_out_and_its_answer_comes_back_once() -> None:
    protocol = ChannelProtocol()
    protocol.connected()
    request_id = protocol.request_shell_state()
    assert protocol.data_to_send() == [encode_control(ShellStateRequest(request_id))]
    protocol.frame(shell_state_reply(request_id))
    protocol.frame(shell_state_reply(request_id, cwd="/again"))  # a duplicate: dropped
    assert protocol.shell_states_received() == [
        (request_id, ShellState(request_id=request_id, cwd="/w", env={"A": "1"}))
    ]
    assert protocol.events_received() == []  # never an event
    assert not protocol.state_requests


def test_the_servers_refusal_is_the_answer() -> None:
    protocol = ChannelProtocol()
    protocol.connected()
    request_id = protocol.request_shell_state()
    protocol.frame(encode_control(ShellStateError(request_id, "a command runs")))
    assert protocol.shell_states_received() == [
        (request_id, ShellStateError(request_id, "a command runs"))
    ]


def test_an_answer_to_no_request_is_dropped() -> None:
    protocol = ChannelProtocol()
    protocol.connected()
    protocol.frame(shell_state_reply(42))
    assert protocol.shell_states_received() == []
    assert protocol.events_received() == []


def test_a_lost_connection_fails_the_request_and_a_late_answer_is_dropped() -> None:
    protocol = ChannelProtocol()
    protocol.connected()
    request_id = protocol.request_shell_state()
    protocol.send(action(1))
    protocol.disconnected(now=5.0)
    [(answered, reason)] = protocol.shell_states_received()
    assert answered == request_id
    assert isinstance(reason, str)
    assert "lost" in reason
    protocol.connected()
    # Resent: the pending action, not the request (the state it would read is another).
    assert protocol.data_to_send() == [encode_event(action(1))]
    protocol.frame(shell_state_reply(request_id))
    assert protocol.shell_states_received() == []


@pytest.mark.parametrize("when", ["idle", "reconnecting", "failed", "closed"])
def test_without_an_open_connection_the_request_fails_at_once(when: str) -> None:
    protocol = ChannelProtocol()
    if when != "idle":
        protocol.connected()
    if when == "reconnecting":
        protocol.disconnected(now=0.0)
    if when == "failed":
        protocol.fail("the sandbox died")
    if when == "closed":
        protocol.close()
        with pytest.raises(SandboxClosedError):
            protocol.request_shell_state()
        return
    request_id = protocol.request_shell_state()
    assert protocol.data_to_send() == []
    [(answered, reason)] = protocol.shell_states_received()
    assert answered == request_id
    assert isinstance(reason, str)
    assert ("the sandbox died" in reason) if when == "failed" else (when in reason)


@pytest.mark.parametrize("end", ["fail", "died", "close", "give_up"])
def test_a_failing_or_closing_channel_answers_the_requests_in_flight(end: str) -> None:
    protocol = ChannelProtocol(reconnect_deadline=1.0)
    protocol.connected()
    first, second = protocol.request_shell_state(), protocol.request_shell_state()
    if end == "fail":
        protocol.fail("gone")
    elif end == "died":
        protocol.died("reader failed")
    elif end == "close":
        protocol.close()
    else:
        protocol.disconnected(now=0.0)
        assert [rid for rid, _ in protocol.shell_states_received()] == [first, second]
        return
    answers = protocol.shell_states_received()
    assert [rid for rid, _ in answers] == [first, second]
    assert all(isinstance(reason, str) for _, reason in answers)
