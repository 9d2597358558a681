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
    decode_control,
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
