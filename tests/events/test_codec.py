"""Event codec: round trips, fuzzing ("any input → an Event or EventDecodeError"), golden log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from events import (
    CmdOutputChunk,
    CmdOutputMetadata,
    CmdOutputObservation,
    CmdRunAction,
    ErrorObservation,
    Event,
    EventDecodeError,
    EventSource,
    FileEditAction,
    FileEditObservation,
    FileReadAction,
    FileReadObservation,
    FileWriteAction,
    FileWriteObservation,
    IPythonRunCellAction,
    IPythonRunCellObservation,
    OpenHandsEvent,
    RuntimeStatus,
    RuntimeStatusObservation,
    SnapshotObservation,
    decode_event,
    encode_event,
)
from events.codec import EVENT_TYPES

GOLDEN_LOG = Path(__file__).parents[1] / "data" / "golden_events_v1.jsonl"

# --------------------------------------------------------------------------- strategies

int64 = st.integers(-(2**63), 2**63 - 1)
texts = st.text(max_size=40)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts
)
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=12,
)
json_objects = st.dictionaries(texts, json_values, max_size=5)
timeouts = st.none() | st.floats(0, 1e9, allow_nan=False) | st.integers(0, 10**6)
view_ranges = st.none() | st.lists(st.integers(-1, 10**6), min_size=2, max_size=2)

metadata_fields: dict[str, st.SearchStrategy[Any]] = {
    "id": st.integers(-1, 2**63 - 1),
    "timestamp": st.none() | texts,
    "source": st.none() | st.sampled_from(EventSource),
    "cause": st.none() | st.integers(0, 2**63 - 1),
    "extra": st.none() | json_objects,
}


def with_metadata(cls: type[Event], **fields: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    meta = dict(metadata_fields)
    if cls is CmdOutputChunk:
        del meta["cause"]  # a required field of the chunk, given in `fields`
    return st.builds(cls, **fields, **meta)


@st.composite
def file_edit_actions(draw: st.DrawFn) -> FileEditAction:
    command = draw(st.sampled_from(["view", "create", "str_replace", "insert", "undo_edit"]))
    maybe_text = st.none() | texts
    return FileEditAction(
        path=draw(texts),
        command=command,
        file_text=draw(texts if command == "create" else maybe_text),
        old_str=draw(texts if command == "str_replace" else maybe_text),
        new_str=draw(texts if command == "insert" else maybe_text),
        insert_line=draw(int64 if command == "insert" else st.none() | int64),
        view_range=draw(view_ranges),
        thought=draw(texts),
        **{name: draw(strategy) for name, strategy in metadata_fields.items()},
    )


cmd_output_metadata = st.builds(
    CmdOutputMetadata,
    exit_code=int64,
    pid=int64,
    username=st.none() | texts,
    hostname=st.none() | texts,
    working_dir=st.none() | texts,
    py_interpreter_path=st.none() | texts,
    prefix=texts,
    suffix=texts,
)

STRATEGIES: dict[type[Event], st.SearchStrategy[Any]] = {
    CmdRunAction: with_metadata(
        CmdRunAction,
        command=texts,
        is_input=st.booleans(),
        blocking=st.booleans(),
        timeout=timeouts,
        cwd=st.none() | texts,
        hidden=st.booleans(),
        thought=texts,
    ),
    IPythonRunCellAction: with_metadata(
        IPythonRunCellAction, code=texts, timeout=timeouts, thought=texts
    ),
    FileReadAction: with_metadata(
        FileReadAction, path=texts, start=int64, end=int64, view_range=view_ranges, thought=texts
    ),
    FileWriteAction: with_metadata(
        FileWriteAction, path=texts, content=texts, start=int64, end=int64, thought=texts
    ),
    FileEditAction: file_edit_actions(),
    CmdOutputObservation: with_metadata(
        CmdOutputObservation,
        content=texts,
        command=texts,
        metadata=cmd_output_metadata,
        hidden=st.booleans(),
    ),
    CmdOutputChunk: with_metadata(
        CmdOutputChunk, cause=st.integers(0, 2**63 - 1), seq=st.integers(0, 2**63 - 1), data=texts
    ),
    IPythonRunCellObservation: with_metadata(
        IPythonRunCellObservation, content=texts, code=texts, image_urls=st.lists(texts, max_size=3)
    ),
    FileReadObservation: with_metadata(FileReadObservation, content=texts, path=texts),
    FileWriteObservation: with_metadata(FileWriteObservation, path=texts, content=texts),
    FileEditObservation: with_metadata(
        FileEditObservation,
        content=texts,
        path=texts,
        prev_exist=st.booleans(),
        old_content=st.none() | texts,
        new_content=st.none() | texts,
        diff=texts,
    ),
    ErrorObservation: with_metadata(ErrorObservation, content=texts, error_id=texts),
    RuntimeStatusObservation: with_metadata(
        RuntimeStatusObservation, status=st.sampled_from(RuntimeStatus), message=texts
    ),
    SnapshotObservation: with_metadata(
        SnapshotObservation, snapshot_id=st.text(min_size=1, max_size=40), content=texts
    ),
    OpenHandsEvent: with_metadata(
        OpenHandsEvent,
        kind=st.text(min_size=1, max_size=20),
        data=json_objects,
        is_action=st.booleans(),
    ),
}
any_event = st.one_of(*STRATEGIES.values())


def test_strategies_cover_every_event_type() -> None:
    assert set(STRATEGIES) == set(EVENT_TYPES)


def assert_event_or_decode_error(data: Any) -> None:
    try:
        event = decode_event(data)
    except EventDecodeError:
        return
    assert isinstance(event, Event)


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("event_type", EVENT_TYPES, ids=lambda t: t.__name__)
@given(data=st.data())
def test_round_trip_every_event_type(event_type: type[Event], data: st.DataObject) -> None:
    event = data.draw(STRATEGIES[event_type])
    encoded = encode_event(event)
    decoded = decode_event(encoded)
    assert type(decoded) is event_type
    assert decoded == event
    # Not byte-equal in general: an int timeout (5) comes back as a float (5.0). Once
    # decoded, the encoding is stable.
    reencoded = encode_event(decoded)
    assert encode_event(decode_event(reencoded)) == reencoded


@given(any_event)
def test_decode_accepts_str_bytearray_and_memoryview(event: Event) -> None:
    encoded = encode_event(event)
    assert decode_event(encoded.decode("utf-8")) == event
    assert decode_event(bytearray(encoded)) == event
    assert decode_event(memoryview(encoded)) == event


def test_encoding_is_compact_json_with_the_tag_first() -> None:
    encoded = encode_event(CmdRunAction("ls", id=3))
    assert encoded == b'{"type":"cmd_run","command":"ls","id":3}'


# --------------------------------------------------------------------------- fuzzing


@given(st.binary(max_size=200))
def test_any_bytes_decode_to_an_event_or_a_decode_error(data: bytes) -> None:
    assert_event_or_decode_error(data)


@given(st.text(max_size=200))
def test_any_text_decodes_to_an_event_or_a_decode_error(data: str) -> None:
    assert_event_or_decode_error(data)


@given(any_event)
def test_every_truncation_is_a_decode_error(event: Event) -> None:
    encoded = encode_event(event)
    for end in range(len(encoded)):
        with pytest.raises(EventDecodeError):
            decode_event(encoded[:end])


@given(any_event, st.data())
def test_byte_flips_decode_to_an_event_or_a_decode_error(event: Event, data: st.DataObject) -> None:
    encoded = bytearray(encode_event(event))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(encoded) - 1))
        encoded[position] ^= data.draw(st.integers(1, 255))
    assert_event_or_decode_error(bytes(encoded))


WRONG_VALUES = [None, True, 0, -1, 1.5, "", "text", [], [1, "a"], {}, {"a": 1}, 10**30]


@given(any_event, st.data())
def test_wrong_field_types_decode_to_an_event_or_a_decode_error(
    event: Event, data: st.DataObject
) -> None:
    fields = json.loads(encode_event(event))
    key = data.draw(st.sampled_from(sorted(fields)))
    fields[key] = data.draw(st.sampled_from(WRONG_VALUES))
    assert_event_or_decode_error(json.dumps(fields).encode())


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("command", 5),
        ("command", None),
        ("timeout", "5"),
        ("timeout", -1),
        ("timeout", True),
        ("is_input", "yes"),
        ("source", "robot"),
        ("id", "3"),
        ("id", 1.5),
        ("extra", [1]),
    ],
)
def test_wrong_field_types_are_decode_errors(key: str, value: Any) -> None:
    fields = {"type": "cmd_run", "command": "ls", key: value}
    with pytest.raises(EventDecodeError):
        decode_event(json.dumps(fields).encode())


KNOWN_TAGS = frozenset(t.__struct_config__.tag for t in EVENT_TYPES)


@given(any_event, st.text(max_size=20).filter(lambda tag: tag not in KNOWN_TAGS))
def test_unknown_or_missing_tags_are_decode_errors(event: Event, tag: str) -> None:
    fields = json.loads(encode_event(event))
    fields["type"] = tag
    with pytest.raises(EventDecodeError):
        decode_event(json.dumps(fields).encode())
    del fields["type"]
    with pytest.raises(EventDecodeError):
        decode_event(json.dumps(fields).encode())


def test_known_tags_never_change() -> None:
    assert {
        "cmd_run",
        "ipython_run_cell",
        "file_read",
        "file_write",
        "file_edit",
        "cmd_output",
        "cmd_output_chunk",
        "ipython_run_cell_output",
        "file_read_output",
        "file_write_output",
        "file_edit_output",
        "error",
        "runtime_status",
        "snapshot",
        "openhands",
    } == KNOWN_TAGS


@pytest.mark.parametrize(
    "data",
    [
        b'{"type":"cmd_run","command":"x","id":' + b"9" * 30 + b"}",
        b'{"type":"cmd_run","command":"x","id":' + b"9" * 5000 + b"}",
        b'{"type":"cmd_run","command":"x","timeout":1e999}',
        b'{"type":"cmd_run","command":"x","timeout":' + b"9" * 400 + b"}",
        b'{"type":"cmd_output_chunk","cause":-' + b"9" * 40 + b',"seq":0,"data":""}',
        b'{"type":"openhands","kind":"x","data":{"n":' + b"1" * 5000 + b"}}",
    ],
    ids=["id-30-digits", "id-5000-digits", "timeout-1e999", "timeout-400-digits", "cause", "data"],
)
def test_huge_numbers_decode_to_an_event_or_a_decode_error(data: bytes) -> None:
    assert_event_or_decode_error(data)


def test_huge_timeouts_are_rejected() -> None:
    with pytest.raises(EventDecodeError):
        decode_event(b'{"type":"cmd_run","command":"x","timeout":1e999}')


@pytest.mark.parametrize("depth", [100, 10_000, 200_000])
def test_deep_nesting_is_a_decode_error_or_an_event(depth: int) -> None:
    nested = b"[" * depth + b"]" * depth
    assert_event_or_decode_error(nested)
    in_extra = b'{"type":"error","content":"x","extra":{"a":' + nested + b"}}"
    assert_event_or_decode_error(in_extra)
    if depth >= 10_000:
        with pytest.raises(EventDecodeError):
            decode_event(in_extra)
    unclosed = b'{"type":"error","content":"x","extra":{"a":' + b"[" * depth
    with pytest.raises(EventDecodeError):
        decode_event(unclosed)


@pytest.mark.parametrize(
    "data",
    [b"", b" ", b"null", b"[]", b"{}", b'"cmd_run"', b"\xff\xfe", b'{"type":"cmd_run"}'],
)
def test_malformed_inputs_are_decode_errors(data: bytes) -> None:
    with pytest.raises(EventDecodeError):
        decode_event(data)


def test_invalid_values_are_decode_errors_not_validation_leaks() -> None:
    for data in [
        b'{"type":"file_edit","path":"/f","command":"explode"}',
        b'{"type":"file_edit","path":"/f","command":"view","view_range":[1]}',
        b'{"type":"runtime_status","status":"bogus"}',
        b'{"type":"cmd_run","command":"x","timeout":NaN}',
    ]:
        with pytest.raises(EventDecodeError):
            decode_event(data)


@pytest.mark.parametrize("value", [None, 0, 1.5, [], [b"{}"], {}, object(), True])
def test_non_bytes_arguments_are_decode_errors(value: Any) -> None:
    with pytest.raises(EventDecodeError):
        decode_event(value)


def test_decode_error_is_a_value_error() -> None:
    assert issubclass(EventDecodeError, ValueError)


# --------------------------------------------------------------------------- golden log

TS = "2025-03-01T12:00:00.000000+00:00"
AGENT, USER, ENV = EventSource.AGENT, EventSource.USER, EventSource.ENVIRONMENT
APP = "/workspace/app.py"
NOTES = "/workspace/notes.txt"
SERVE = "python3 -m http.server 8000"
SERVING = "Serving HTTP on 0.0.0.0 port 8000 ..."
HELLO = "print('h\u00e9llo \u65e5\u672c')"

GOLDEN_EXPECTED: list[Event] = [
    CmdRunAction("ls -la /workspace", id=0, source=AGENT, timestamp=TS),
    CmdRunAction(
        SERVE,
        blocking=True,
        timeout=2.5,
        cwd="/workspace/sub dir",
        hidden=True,
        thought="serve it \u2615",
        id=1,
        source=AGENT,
        timestamp="2025-03-01T12:00:01+00:00",
        extra={"confirmation_state": "confirmed", "nested": {"list": [1, 2.5, None, True, "x"]}},
    ),
    CmdOutputChunk(1, 0, SERVING + "\n", id=2, source=ENV, timestamp=TS),
    CmdOutputObservation(
        SERVING,
        SERVE,
        metadata=CmdOutputMetadata(
            exit_code=-1,
            pid=4242,
            username="openhands",
            hostname="sandbox-1",
            working_dir="/workspace/sub dir",
            py_interpreter_path="/usr/bin/python3",
            suffix="\n[The command has no new output after 2.5 seconds.]",
        ),
        id=3,
        cause=1,
        source=ENV,
        timestamp=TS,
    ),
    IPythonRunCellAction(HELLO, timeout=30.0, id=4, source=AGENT, timestamp=TS),
    IPythonRunCellObservation(
        "h\u00e9llo \u65e5\u672c\n",
        HELLO,
        image_urls=["data:image/png;base64,iVBORw0KGgo="],
        id=5,
        cause=4,
        source=ENV,
        timestamp=TS,
    ),
    FileWriteAction(NOTES, "one\ntwo\n", id=6, source=USER, timestamp=TS),
    FileWriteObservation(NOTES, id=7, cause=6, source=ENV, timestamp=TS),
    FileReadAction(
        NOTES, start=1, end=2, view_range=[1, 2], thought="check", id=8, source=AGENT, timestamp=TS
    ),
    FileReadObservation("two\n", NOTES, id=9, cause=8, source=ENV, timestamp=TS),
    FileEditAction(APP, "create", file_text="print('hi')\n", id=10, source=AGENT, timestamp=TS),
    FileEditObservation(
        f"File created successfully at: {APP}",
        APP,
        new_content="print('hi')\n",
        diff=f"--- {APP}\n+++ {APP}\n@@ -0,0 +1 @@\n+print('hi')\n",
        id=11,
        cause=10,
        source=ENV,
        timestamp=TS,
    ),
    FileEditAction(
        APP, "str_replace", old_str="'hi'", new_str="'bye'", id=12, source=AGENT, timestamp=TS
    ),
    FileEditAction(
        APP, "insert", insert_line=0, new_str="# top\n", id=13, source=AGENT, timestamp=TS
    ),
    FileEditAction(APP, "view", view_range=[1, -1], id=14, source=AGENT, timestamp=TS),
    FileEditAction(APP, "undo_edit", id=15, source=AGENT, timestamp=TS),
    ErrorObservation(
        "No replacement was performed.",
        error_id="EDITOR$NO_MATCH",
        id=16,
        cause=12,
        source=ENV,
        timestamp=TS,
    ),
    RuntimeStatusObservation(RuntimeStatus.READY, "sandbox ready", id=17, source=ENV, timestamp=TS),
    OpenHandsEvent(
        kind="message",
        is_action=True,
        data={
            "id": 18,
            "source": "user",
            "message": "hi",
            "action": "message",
            "args": {"content": "hi", "image_urls": None, "wait_for_response": False},
        },
        id=18,
        source=USER,
        timestamp=TS,
    ),
    OpenHandsEvent(
        kind="agent_state_changed",
        data={
            "observation": "agent_state_changed",
            "content": "",
            "extras": {"agent_state": "running"},
        },
        id=19,
        source=ENV,
    ),
    ErrorObservation("bare"),
    SnapshotObservation(
        "snap-4f1c2e0a9b7d6358",
        content="snapshot of the sandbox after event 19",
        id=20,
        source=ENV,
        timestamp=TS,
    ),
]


def test_golden_log_still_decodes_to_the_same_events() -> None:
    lines = GOLDEN_LOG.read_bytes().splitlines()
    assert len(lines) == len(GOLDEN_EXPECTED)
    for number, (line, expected) in enumerate(zip(lines, GOLDEN_EXPECTED, strict=True), 1):
        decoded = decode_event(line)
        assert type(decoded) is type(expected), f"line {number}"
        assert decoded == expected, f"line {number}"


def test_golden_log_covers_every_event_type() -> None:
    decoded = [decode_event(line) for line in GOLDEN_LOG.read_bytes().splitlines()]
    assert {type(event) for event in decoded} == set(EVENT_TYPES)
    edit_commands = {e.command for e in decoded if isinstance(e, FileEditAction)}
    assert edit_commands == {"view", "create", "str_replace", "insert", "undo_edit"}


def test_golden_log_field_values_spot_check() -> None:
    decoded = [decode_event(line) for line in GOLDEN_LOG.read_bytes().splitlines()]
    output = decoded[3]
    assert isinstance(output, CmdOutputObservation)
    assert (output.exit_code, output.metadata.pid, output.cause) == (-1, 4242, 1)
    run = decoded[1]
    assert isinstance(run, CmdRunAction)
    assert run.timeout == 2.5
    assert run.extra == {
        "confirmation_state": "confirmed",
        "nested": {"list": [1, 2.5, None, True, "x"]},
    }
    status = decoded[17]
    assert isinstance(status, RuntimeStatusObservation)
    assert status.status is RuntimeStatus.READY
