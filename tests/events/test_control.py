"""Control frames: round trip, and never confused with an event either way."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from events import (
    CmdRunAction,
    EventDecodeError,
    IPythonRunCellAction,
    decode_event,
    encode_event,
)
from events.control import (
    ControlDecodeError,
    InterruptRequest,
    ShellState,
    ShellStateError,
    ShellStateRequest,
    decode_control,
    decode_reply,
    decode_shell_state,
    encode_control,
)


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_interrupt_request_round_trips_and_is_no_event(action_id: int) -> None:
    frame = encode_control(InterruptRequest(action_id))
    assert decode_control(frame) == InterruptRequest(action_id)
    assert decode_control(frame.decode()) == InterruptRequest(action_id)
    with pytest.raises(EventDecodeError):
        decode_event(frame)


@pytest.mark.parametrize(
    "event",
    [CmdRunAction("C-c", is_input=True, id=3), IPythonRunCellAction("print(1)", id=4)],
)
def test_an_event_is_no_control_frame(event: CmdRunAction | IPythonRunCellAction) -> None:
    with pytest.raises(ControlDecodeError):
        decode_control(encode_event(event))


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"{}",
        b'{"control":"other","action_id":1}',
        b'{"control":"interrupt"}',
        b"[" * 200 + b"]" * 200,  # nesting
        b"\xff\xfe",
        b'{"control":"interrupt","action_id":1,"pad":"' + b"x" * 300 + b'"}',
    ],
)
def test_malformed_control_frames_are_refused(data: bytes) -> None:
    # Each must raise the module's own error: anything else would crash the connection.
    with pytest.raises(ControlDecodeError):
        decode_control(data)


@given(
    st.integers(min_value=0, max_value=2**63 - 1),
    st.text(),
    st.dictionaries(st.text(min_size=1).filter(lambda k: "=" not in k), st.text()),
)
def test_a_shell_state_round_trips_and_is_no_event_nor_a_request(
    request_id: int, cwd: str, env: dict[str, str]
) -> None:
    state = ShellState(request_id=request_id, cwd=cwd, env=env)
    frame = encode_control(state)
    assert decode_reply(frame) == state
    assert decode_shell_state(frame) == state
    with pytest.raises(EventDecodeError):
        decode_event(frame)
    with pytest.raises(ControlDecodeError):
        decode_control(frame)  # a server's frame is no client's request


def test_requests_and_replies_are_told_apart() -> None:
    request = encode_control(ShellStateRequest(5))
    assert decode_control(request) == ShellStateRequest(5)
    error = encode_control(ShellStateError(5, "busy"))
    assert decode_reply(error) == ShellStateError(5, "busy")
    for data in (request, encode_control(InterruptRequest(1)), b"{}", b"\xff"):
        with pytest.raises(ControlDecodeError):
            decode_reply(data)
    with pytest.raises(ControlDecodeError):
        decode_control(error)
