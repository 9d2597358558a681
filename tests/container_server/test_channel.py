"""parse_frame, the channel's pure frame classifier: every input gets exactly one answer."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from container_server.channel import MAX_ERROR_DETAIL_CHARS, Refuse, Submit, parse_frame
from events import CmdRunAction, FileReadAction, RuntimeStatusObservation, encode_event
from events.control import InterruptRequest, ShellStateRequest, encode_control


def test_an_action_with_an_id_is_submitted() -> None:
    action = FileReadAction("a.txt", id=3)
    assert parse_frame(encode_event(action)) == Submit(action)
    assert parse_frame(encode_event(action).decode()) == Submit(action)


def test_an_interrupt_request_is_recognised() -> None:
    frame = encode_control(InterruptRequest(action_id=9))
    assert parse_frame(frame) == InterruptRequest(action_id=9)


def test_a_shell_state_request_is_recognised() -> None:
    frame = encode_control(ShellStateRequest(request_id=4))
    assert parse_frame(frame) == ShellStateRequest(request_id=4)


def test_refusals_carry_their_error_id() -> None:
    cases = {
        b"{": "bad_frame",
        b'{"type":"nope"}': "bad_frame",
        encode_event(RuntimeStatusObservation("ready", id=3)): "not_an_action",
        encode_event(CmdRunAction("echo x")): "missing_action_id",
    }
    for data, error_id in cases.items():
        frame = parse_frame(data)
        assert isinstance(frame, Refuse), data
        assert frame.error.error_id == error_id
    not_an_action = parse_frame(encode_event(RuntimeStatusObservation("ready", id=3)))
    assert isinstance(not_an_action, Refuse)
    assert not_an_action.error.cause == 3


def test_a_bad_frames_error_quotes_little_of_it() -> None:
    frame = parse_frame(b'{"type":"' + b"x" * 100_000 + b'"}')
    assert isinstance(frame, Refuse)
    assert len(frame.error.content) <= MAX_ERROR_DETAIL_CHARS + 20


@given(st.one_of(st.binary(max_size=300), st.text(max_size=300)))
def test_any_bytes_get_one_answer_and_never_an_exception(data: bytes | str) -> None:
    frame = parse_frame(data)
    assert isinstance(frame, Submit | InterruptRequest | ShellStateRequest | Refuse)
    if isinstance(frame, Submit):
        assert frame.action.id >= 0
