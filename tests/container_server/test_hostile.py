"""Hostile input on the action channel: over 10,000 malformed, mutated and oversized frames.

A real aiohttp server with a real bash is driven by real ``websockets`` clients (and, for
protocol violations the library refuses to produce, by a raw socket). Hypothesis runs in a
worker thread and hands each batch of frames to the event loop that owns the server and a few
long-lived connections, so thousands of frames cost seconds, not one handshake each.

What must hold for every frame:

- a data frame gets exactly one clean reply: a frame-level ``ErrorObservation``
  (``bad_frame`` / ``not_an_action`` / ``missing_action_id``, in the order the frames were
  sent, with a short message) or, for a frame that decodes to a runnable action with an id,
  that action's observation (``cause`` = the id);
- a fatal frame (oversized, invalid UTF-8 text, a protocol violation, a close) ends only its
  own connection, with the close code the RFC asks for (1009 for oversized);
- after every batch the same connection still runs ``echo ok``; at the end new connections
  are accepted, ``/alive`` says "ok" from the same process, nothing was logged at ERROR and the
  API key appears in no frame and no log record.

Frames that decode to a runnable action are only sent when running them is harmless (a few
fixed commands, relative file paths inside the working directory): the server executes valid
actions by design, and hypothesis must not be able to turn a byte flip into ``rm -rf``.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
import os
import re
import struct
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from container_server.app import API_KEY_HEADER, ServerSettings, create_app
from events import (
    Action,
    CmdOutputChunk,
    CmdOutputObservation,
    CmdRunAction,
    ErrorObservation,
    Event,
    EventDecodeError,
    FileEditAction,
    FileReadAction,
    FileReadObservation,
    FileWriteAction,
    IPythonRunCellAction,
    Observation,
    OpenHandsEvent,
    RuntimeStatus,
    RuntimeStatusObservation,
    decode_event,
    encode_event,
)

KEY = "hostile-ws-key-3f9a7c1e5d"
MAX_FRAME = 64 * 1024
FRAME_ERRORS = frozenset({"bad_frame", "not_an_action", "missing_action_id"})
#: A frame-level error message quotes at most this much of the offending input.
MAX_ERROR_CHARS = 1024
SAFE_COMMANDS = ("echo ok", "true", "pwd")
_SAFE_PATH = re.compile(
    r"[A-Za-z0-9_-]{1,16}(\.[A-Za-z0-9]{1,4})?(/[A-Za-z0-9_-]{1,16}(\.[a-z]{1,4})?)?"
)
#: Liveness probes use ids far from anything hypothesis is likely to draw.
PROBE_IDS_START = 10**15 + 7
CONNECTIONS = 3
RECV_TIMEOUT = 30.0


# ------------------------------------------------------------------------------ frames


@dataclass(frozen=True)
class Frame:
    """One message a hostile client sends on a connection that must survive it."""

    payload: bytes | str
    text: bool = False  # sent as a text frame (bytes are sent as they are)
    pieces: int = 1  # > 1: a fragmented message
    ping: bool = False  # a ping control frame instead of a message
    label: str = "raw"


@dataclass(frozen=True)
class Fatal:
    """A message that must end its connection with ``code`` (sent on a fresh connection)."""

    kind: str  # "oversized", "bad_utf8" or "close"
    payload: bytes = b""
    text: bool = False
    pieces: int = 1
    code: int = 1000
    reason: str = ""


@dataclass(frozen=True)
class Expect:
    """What the server must answer to one data frame."""

    error_id: str | None = None  # a frame-level error, or
    action: Action | None = None  # a runnable action, answered by its observation
    unsafe: bool = False  # a real action we do not let the fuzz run


def is_safe(action: Action) -> bool:
    """Whether running ``action`` cannot touch anything outside the working directory."""
    match action:
        case CmdRunAction():
            return (
                action.command in SAFE_COMMANDS
                and not action.is_input
                and action.cwd is None
                and (action.timeout is None or action.timeout >= 1.0)
            )
        case FileReadAction() | FileWriteAction() | FileEditAction():
            return _SAFE_PATH.fullmatch(action.path) is not None
        case IPythonRunCellAction():
            return True  # no plugin is loaded: answered with plugin_unavailable
        case _:
            return False


def expect(payload: bytes | str) -> Expect:
    """The server's contract for one data frame, computed with the shared codec."""
    try:
        event = decode_event(payload)
    except EventDecodeError:
        return Expect(error_id="bad_frame")
    if not isinstance(event, Action):
        return Expect(error_id="not_an_action")
    if event.id < 0:
        return Expect(error_id="missing_action_id")
    return Expect(action=event, unsafe=not is_safe(event))


def pieces_of(payload: bytes | str, count: int) -> list[bytes] | list[str]:
    step = max(1, -(-len(payload) // count))
    if isinstance(payload, str):
        return [payload[i : i + step] for i in range(0, len(payload), step)] or [""]
    return [payload[i : i + step] for i in range(0, len(payload), step)] or [b""]


# ------------------------------------------------------------------------------ strategies

small_text = st.text(max_size=24)
ids = st.one_of(
    st.integers(-5, 60),
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([-(2**63), 2**63 - 1, -1, 0]),
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
extras = st.none() | st.dictionaries(st.text(max_size=6), json_values, max_size=2)
safe_paths = st.lists(
    st.sampled_from(["a.txt", "notes.txt", "sub", "x.py", "data", "b"]), min_size=1, max_size=2
).map("/".join)
timeouts = st.none() | st.floats(1.0, 30.0)
line_ranges = st.none() | st.lists(st.integers(-(2**40), 2**40), min_size=2, max_size=2)

actions: st.SearchStrategy[Event] = st.one_of(
    st.builds(
        CmdRunAction,
        command=st.sampled_from(SAFE_COMMANDS),
        blocking=st.booleans(),
        timeout=timeouts,
        thought=small_text,
        hidden=st.booleans(),
        extra=extras,
        id=ids,
    ),
    st.builds(IPythonRunCellAction, code=small_text, timeout=timeouts, id=ids),
    st.builds(
        FileReadAction,
        path=safe_paths,
        start=st.integers(-10, 2**40),
        end=st.integers(-(2**40), 2**40),
        view_range=line_ranges,
        extra=extras,
        id=ids,
    ),
    st.builds(
        FileWriteAction,
        path=safe_paths,
        content=small_text,
        start=st.integers(-(2**40), 2**40),
        end=st.integers(-(2**40), 2**40),
        id=ids,
    ),
    st.builds(
        FileEditAction, path=safe_paths, command=st.just("view"), view_range=line_ranges, id=ids
    ),
    st.builds(
        FileEditAction, path=safe_paths, command=st.just("create"), file_text=small_text, id=ids
    ),
    st.builds(
        FileEditAction,
        path=safe_paths,
        command=st.just("str_replace"),
        old_str=small_text,
        new_str=st.none() | small_text,
        id=ids,
    ),
    st.builds(
        FileEditAction,
        path=safe_paths,
        command=st.just("insert"),
        insert_line=st.integers(-(2**40), 2**40),
        new_str=small_text,
        id=ids,
    ),
    st.builds(FileEditAction, path=safe_paths, command=st.just("undo_edit"), id=ids),
)
observations: st.SearchStrategy[Event] = st.one_of(
    st.builds(
        ErrorObservation, content=small_text, error_id=small_text, id=ids, cause=st.none() | ids
    ),
    st.builds(CmdOutputObservation, content=small_text, command=small_text, id=ids),
    st.builds(RuntimeStatusObservation, status=st.sampled_from(list(RuntimeStatus)), id=ids),
    st.builds(CmdOutputChunk, cause=ids, seq=st.integers(0, 9), data=small_text, id=ids),
    st.builds(FileReadObservation, content=small_text, path=small_text, id=ids),
    st.builds(
        OpenHandsEvent,
        kind=small_text,
        data=st.dictionaries(st.text(max_size=6), json_values, max_size=3),
        is_action=st.booleans(),
        id=ids,
    ),
)
any_event = st.one_of(actions, observations)

#: Number literals msgspec must refuse or clamp cleanly, written as they go on the wire.
RAW_NUMBERS = (
    "1e400",
    "-1e400",
    "1e-400",
    str(2**63),
    str(2**64),
    str(-(2**63) - 1),
    "9" * 400,
    "-0",
    "0.0",
    "1E+308",
    "-1.7976931348623157e308",
    "12345678901234567890.5",
    "1.5",
    "-1",
    "0x10",
    "NaN",
    "Infinity",
    "01",
)
_RAW = "@@raw-literal@@"


def _dumps_with_raw(obj: object, raw: str) -> bytes:
    return json.dumps(obj).replace(json.dumps(_RAW), raw).encode()


def _text_or_binary(data: bytes, as_text: bool, label: str, pieces: int = 1) -> Frame:
    if as_text:
        try:
            return Frame(data.decode(), text=True, pieces=pieces, label=label)
        except UnicodeDecodeError:
            pass  # invalid UTF-8 in a text frame is fatal: that is the Fatal strategy's job
    return Frame(data, pieces=pieces, label=label)


@st.composite
def byte_mutants(draw: st.DrawFn) -> Frame:
    """A valid encoding with 1-3 byte-level mutations (truncate, replace, insert, delete, swap)."""
    data = bytearray(encode_event(draw(any_event)))
    count = draw(st.integers(1, 3))
    for _ in range(count):
        op = draw(st.sampled_from(("truncate", "replace", "insert", "delete", "swap")))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "truncate":
            del data[at:]
        elif op == "replace" and data:
            data[at] = draw(st.integers(0, 255))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=6))
        elif op == "delete":
            del data[at : at + draw(st.integers(1, 8))]
        elif op == "swap" and len(data) > 1:
            other = draw(st.integers(0, len(data) - 1))
            data[at], data[other] = data[other], data[at]
    return _text_or_binary(bytes(data), draw(st.booleans()), f"bytes:{count}-mutations")


@st.composite
def json_mutants(draw: st.DrawFn) -> Frame:
    """A valid event as JSON, then changed at the JSON level."""
    obj: dict[str, Any] = json.loads(encode_event(draw(any_event)))
    op = draw(
        st.sampled_from(
            (
                "wrong_type",
                "drop_field",
                "unknown_field",
                "huge_number",
                "odd_id",
                "unknown_tag",
                "long_tag",
                "deep",
                "wrong_shape",
                "duplicate_key",
                "framing",
            )
        )
    )
    keys = sorted(obj)
    data: bytes
    if op == "wrong_type":
        obj[draw(st.sampled_from(keys))] = draw(json_values)
        data = json.dumps(obj).encode()
    elif op == "drop_field":
        del obj[draw(st.sampled_from(keys))]
        data = json.dumps(obj).encode()
    elif op == "unknown_field":
        obj[draw(st.text(max_size=10))] = draw(json_values)
        data = json.dumps(obj).encode()
    elif op == "huge_number":
        obj[draw(st.sampled_from([*keys, "id", "timeout", "start", "end"]))] = _RAW
        data = _dumps_with_raw(obj, draw(st.sampled_from(RAW_NUMBERS)))
    elif op == "odd_id":
        obj["id"] = _RAW
        data = _dumps_with_raw(
            obj,
            draw(st.sampled_from(RAW_NUMBERS))
            if draw(st.booleans())
            else json.dumps(draw(json_values)),
        )
    elif op == "unknown_tag":
        obj["type"] = draw(st.text(max_size=30) | json_values)
        data = json.dumps(obj).encode()
    elif op == "long_tag":
        obj["type"] = "t" * draw(st.integers(100, MAX_FRAME - 2048))
        data = json.dumps(obj).encode()
    elif op == "deep":
        depth = draw(st.integers(1, 10_000))
        opener, leaf, closer = draw(st.sampled_from((("[", "0", "]"), ('{"a":', "0", "}"))))
        nested = opener * depth + leaf + closer * depth
        where = draw(st.sampled_from(("extra", "data", "whole", *keys)))
        if where == "whole":
            data = nested.encode()
        else:
            obj[where] = _RAW
            data = _dumps_with_raw(obj, nested)
    elif op == "wrong_shape":
        shape = draw(st.sampled_from(("list", "scalar", "string")))
        value: object = (
            [obj]
            if shape == "list"
            else draw(json_scalars)
            if shape == "scalar"
            else json.dumps(obj)
        )
        data = json.dumps(value).encode()
    elif op == "duplicate_key":
        dup = draw(
            st.sampled_from(
                ('"type":"cmd_run",', '"type":"error",', '"id":-7,', '"id":3,', '"command":1,')
            )
        )
        text = json.dumps(obj)
        data = (
            (text[0] + dup + text[1:]).encode()
            if draw(st.booleans())
            else (text[:-1] + "," + dup[:-1] + "}").encode()
        )
    else:  # framing: a BOM, whitespace, NUL, trailing garbage or a second document
        body = json.dumps(obj).encode()
        before = draw(st.sampled_from((b"", b"\xef\xbb\xbf", b" \n\t", b"\x00")))
        after = draw(st.sampled_from((b"", b" ", b"x", b"{}", b"\n\n", b"\x00", b"]")))
        data = before + body + after
    return _text_or_binary(data, draw(st.booleans()), f"json:{op}")


@st.composite
def boundary_frames(draw: st.DrawFn) -> Frame:
    """A frame exactly at, or just under, the size limit (each must still be accepted)."""
    size = MAX_FRAME - draw(st.integers(0, 3))
    kind = draw(st.sampled_from(("filler", "no_id", "write")))
    if kind == "filler":
        data = b"a" * size
    else:
        base: Event = (
            CmdRunAction("echo ok", thought="")
            if kind == "no_id"
            else FileWriteAction(draw(safe_paths), "", id=draw(st.integers(0, 2**31)))
        )
        empty = encode_event(base)
        padded = json.loads(empty)
        padded["thought" if kind == "no_id" else "content"] = "p" * (
            size - len(empty) - len(',"thought":""')
        )
        data = json.dumps(padded, separators=(",", ":")).encode()
        data = data + b" " * (size - len(data))  # JSON allows trailing whitespace
        assert len(data) == size, (len(data), size)
    pieces = draw(st.sampled_from((1, 1, 2, 7)))
    return _text_or_binary(data, draw(st.booleans()), f"boundary:{kind}", pieces=pieces)


@st.composite
def fragmented(draw: st.DrawFn) -> Frame:
    inner = draw(st.one_of(byte_mutants(), json_mutants(), valid_frames))
    return Frame(inner.payload, text=inner.text, pieces=draw(st.integers(2, 6)), label="fragmented")


raw_binary = st.binary(max_size=64).map(lambda b: Frame(b, label="random_bytes"))
raw_text = st.text(max_size=64).map(lambda s: Frame(s, text=True, label="random_text"))
valid_frames = st.tuples(any_event, st.booleans()).map(
    lambda pair: _text_or_binary(encode_event(pair[0]), pair[1], "valid")
)
pings = st.binary(max_size=125).map(lambda b: Frame(b, ping=True, label="ping"))

frames = st.one_of(
    raw_binary,
    raw_text,
    valid_frames,
    byte_mutants(),
    byte_mutants(),
    json_mutants(),
    json_mutants(),
    fragmented(),
    pings,
    boundary_frames(),
)


@st.composite
def fatal_frames(draw: st.DrawFn) -> Fatal:
    kind = draw(st.sampled_from(("oversized", "bad_utf8", "close")))
    if kind == "oversized":
        size = MAX_FRAME + draw(st.integers(1, 4096) | st.just(MAX_FRAME))
        return Fatal(
            "oversized",
            payload=b"a" * size,
            text=draw(st.booleans()),
            pieces=draw(st.sampled_from((1, 2, 9))),
            code=1009,
        )
    if kind == "bad_utf8":
        valid = encode_event(draw(any_event))
        at = draw(st.integers(0, len(valid)))
        bad = draw(
            st.sampled_from(
                (b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\xc0\xaf")
            )
        )
        return Fatal("bad_utf8", payload=valid[:at] + bad + valid[at:], text=True, code=1007)
    code = draw(st.sampled_from((1000, 1001, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 4000, 4999)))
    return Fatal("close", code=code, reason=draw(st.text(max_size=20)))


# ------------------------------------------------------------------------------ the fuzzer


@dataclass
class Conn:
    ws: ClientConnection
    client_id: str
    sent_ids: set[int] = field(default_factory=set)


@dataclass
class Tally:
    frames: int = 0  # data and control frames the fuzz sent (liveness probes not included)
    fatal: int = 0
    probes: int = 0
    connections: int = 0
    unsafe_skipped: int = 0
    replies: Counter[str] = field(default_factory=Counter)
    labels: Counter[str] = field(default_factory=Counter)
    crashes: list[str] = field(default_factory=list)


class Fuzzer:
    """Sends batches of frames over a few long-lived connections and checks every reply."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.tally = Tally()
        self.conns: list[Conn] = []
        self._probe_ids = itertools.count(PROBE_IDS_START)
        self._client_ids = itertools.count()
        self._ping_ids = itertools.count()
        self.examples = 0

    async def connect(self, prefix: str = "fuzz") -> Conn:
        client_id = f"{prefix}-{next(self._client_ids)}"
        ws = await connect(
            f"ws://127.0.0.1:{self.port}/ws?client_id={client_id}",
            additional_headers={API_KEY_HEADER: KEY},
            max_size=None,
            ping_interval=None,
        )
        self.tally.connections += 1
        return Conn(ws, client_id)

    async def open(self) -> None:
        self.conns = [await self.connect() for _ in range(CONNECTIONS)]

    async def aclose(self) -> None:
        for conn in self.conns:
            await conn.ws.close()

    async def run_example(self, batch: list[Frame], fatal: Fatal | None) -> None:
        groups = [batch[i::CONNECTIONS] for i in range(CONNECTIONS)]
        await asyncio.gather(*(self._run_on(i, group) for i, group in enumerate(groups)))
        if fatal is not None:
            await self._run_fatal(fatal)
        self.examples += 1
        if self.examples % 40 == 0:
            # Reconnects are part of life: retire one connection, open another.
            slot = self.examples // 40 % CONNECTIONS
            await self.conns[slot].ws.close()
            self.conns[slot] = await self.connect()

    async def _send(self, ws: ClientConnection, frame: Frame) -> None:
        if frame.pieces > 1:
            await ws.send(pieces_of(frame.payload, frame.pieces), text=frame.text)
        elif isinstance(frame.payload, str):
            await ws.send(frame.payload)
        else:
            await ws.send(frame.payload, text=frame.text)

    async def _run_on(self, slot: int, batch: list[Frame]) -> None:
        conn = self.conns[slot]
        try:
            await self._exchange(conn, batch)
        except ConnectionClosed as exc:
            # Nothing in a batch is fatal: a closed connection here is a server failure.
            self.tally.crashes.append(f"{conn.client_id} closed mid-batch: {exc!r}")
            self.conns[slot] = await self.connect()
        except BaseException:
            # Replies still in flight would confuse the next example (hypothesis shrinks by
            # re-running): start that slot afresh, then report the failure.
            await conn.ws.close()
            self.conns[slot] = await self.connect()
            raise

    async def _exchange(self, conn: Conn, batch: list[Frame]) -> None:
        expected_errors: list[str] = []
        awaiting: set[int] = set()
        pongs: list[Awaitable[float]] = []
        for frame in batch:
            if frame.ping:
                assert isinstance(frame.payload, bytes)
                # websockets refuses two pings with the same data in flight: make it unique.
                data = frame.payload[:117] + next(self._ping_ids).to_bytes(8, "big")
                pongs.append(await conn.ws.ping(data))
                self.tally.frames += 1
                self.tally.labels[frame.label] += 1
                continue
            exp = expect(frame.payload)
            if exp.unsafe:
                self.tally.unsafe_skipped += 1
                continue
            await self._send(conn.ws, frame)
            self.tally.frames += 1
            self.tally.labels[frame.label] += 1
            if exp.error_id is not None:
                expected_errors.append(exp.error_id)
            else:
                assert exp.action is not None
                conn.sent_ids.add(exp.action.id)
                awaiting.add(exp.action.id)
        probe_id = next(self._probe_ids)
        await conn.ws.send(encode_event(CmdRunAction("echo ok", id=probe_id)))
        errors, probe = await self._collect(conn, len(expected_errors), awaiting, probe_id)
        for pong in pongs:
            await asyncio.wait_for(pong, RECV_TIMEOUT)
        assert errors == expected_errors
        assert isinstance(probe, CmdOutputObservation), probe
        assert (probe.content.strip(), probe.exit_code) == ("ok", 0), probe
        self.tally.probes += 1

    async def _collect(
        self, conn: Conn, error_count: int, awaiting: set[int], probe_id: int
    ) -> tuple[list[str], Observation | None]:
        errors: list[str] = []
        probe: Observation | None = None
        while len(errors) < error_count or awaiting or probe is None:
            raw = await asyncio.wait_for(conn.ws.recv(), RECV_TIMEOUT)
            data = raw.encode() if isinstance(raw, str) else raw
            assert KEY.encode() not in data
            assert len(data) <= MAX_FRAME, len(data)
            event = decode_event(data)
            if isinstance(event, CmdOutputChunk):
                assert event.cause in conn.sent_ids or event.cause == probe_id, event
                continue
            assert isinstance(event, Observation), event
            if isinstance(event, ErrorObservation) and event.error_id in FRAME_ERRORS:
                assert len(event.content) <= MAX_ERROR_CHARS, len(event.content)
                errors.append(event.error_id)
                self.tally.replies[event.error_id] += 1
                continue
            if event.cause == probe_id:
                probe = event
                continue
            # The answer to a real action the fuzz sent (possibly from the result cache).
            assert event.cause in conn.sent_ids, event
            if isinstance(event, ErrorObservation):
                assert event.error_id, event
                assert event.error_id != "internal_error", event
                self.tally.replies[f"answer:error:{event.error_id}"] += 1
            else:
                self.tally.replies[f"answer:{type(event).__name__}"] += 1
            awaiting.discard(event.cause)
        return errors, probe

    @staticmethod
    async def _send_then_recv(
        ws: ClientConnection, message: bytes | list[bytes] | list[str], *, text: bool
    ) -> None:
        await ws.send(message, text=text)
        await asyncio.wait_for(ws.recv(), RECV_TIMEOUT)

    async def _run_fatal(self, fatal: Fatal) -> None:
        conn = await self.connect("fatal")
        ws = conn.ws
        if fatal.kind == "close":
            await asyncio.wait_for(ws.close(fatal.code, fatal.reason), RECV_TIMEOUT)
            assert ws.close_code is not None
            assert ws.close_code not in (1006, 1011), ws.close_code
        else:
            message = pieces_of(fatal.payload, fatal.pieces) if fatal.pieces > 1 else fatal.payload
            with pytest.raises(ConnectionClosed):
                await self._send_then_recv(ws, message, text=fatal.text)
            assert ws.close_code == fatal.code, (fatal.kind, ws.close_code)
        self.tally.fatal += 1
        self.tally.frames += 1
        self.tally.labels[f"fatal:{fatal.kind}"] += 1


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[TestServer]:
    work = tmp_path / "work"
    work.mkdir()
    settings_ = ServerSettings(
        working_dir=str(work), api_key=KEY, no_change_timeout=1.0, max_frame_bytes=MAX_FRAME
    )
    srv = TestServer(create_app(settings_), host="127.0.0.1")
    await srv.start_server()
    try:
        yield srv
    finally:
        await srv.close()


def capture_server_logs(caplog: pytest.LogCaptureFixture) -> None:
    """Everything at DEBUG, except the test's own websockets client (it logs its headers)."""
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.WARNING, logger="websockets")


def check_logs(records: list[logging.LogRecord]) -> None:
    """No server record carries the key; nothing was logged at ERROR (an unexpected exception)."""
    for record in records:
        if record.name.startswith("websockets."):
            continue  # the test's client, not the server
        text = record.getMessage()
        if record.exc_info:
            text += logging.Formatter().formatException(record.exc_info)
        assert KEY not in text, record
        assert record.levelno < logging.ERROR, f"{record.name}: {text}"


async def check_server_alive(srv: TestServer) -> None:
    """The same process still serves: /alive is "ok", /server_info reports our pid."""
    async with aiohttp.ClientSession() as http:
        async with http.get(srv.make_url("/alive")) as r:
            assert (r.status, await r.text()) == (200, "ok")
        async with http.get(srv.make_url("/server_info"), headers={API_KEY_HEADER: KEY}) as r:
            assert r.status == 200
            assert (await r.json())["pid"] == os.getpid()


def on_loop(loop: asyncio.AbstractEventLoop, work: Coroutine[Any, Any, None]) -> None:
    """Run ``work`` on ``loop`` from another thread (hypothesis runs in a worker thread)."""
    asyncio.run_coroutine_threadsafe(work, loop).result(timeout=120)


# ------------------------------------------------------------------------------ the tests

EXAMPLES = 420
BATCH = (24, 30)


async def test_ten_thousand_hostile_frames(
    server: TestServer, caplog: pytest.LogCaptureFixture
) -> None:
    capture_server_logs(caplog)
    app = server.app
    fuzzer = Fuzzer(server.port)
    await fuzzer.open()
    loop = asyncio.get_running_loop()

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        batch=st.lists(frames, min_size=BATCH[0], max_size=BATCH[1]),
        fatal=st.none() | fatal_frames(),
    )
    def example(batch: list[Frame], fatal: Fatal | None) -> None:
        on_loop(loop, fuzzer.run_example(batch, fatal))

    started = time.monotonic()
    await asyncio.to_thread(example)
    elapsed = time.monotonic() - started
    await fuzzer.aclose()

    tally = fuzzer.tally
    print(
        f"\nhostile frames: {tally.frames} sent ({tally.fatal} fatal) in {elapsed:.1f} s over "
        f"{tally.connections} connections; {tally.probes} liveness probes; "
        f"{tally.unsafe_skipped} unsafe actions not sent; replies {dict(tally.replies)}; "
        f"kinds {dict(tally.labels)}; crashes {len(tally.crashes)}"
    )
    assert tally.crashes == []
    assert tally.frames >= 10_000
    assert tally.probes >= EXAMPLES * CONNECTIONS
    # Every kind of reply was exercised, not just one.
    assert set(tally.replies) >= {"bad_frame", "not_an_action", "missing_action_id"}
    assert tally.fatal > 0
    assert any(k.startswith("answer:") for k in tally.replies)

    # A fresh connection still works, from the same process and app.
    async with await connect(
        f"ws://127.0.0.1:{server.port}/ws?client_id=after",
        additional_headers={API_KEY_HEADER: KEY},
    ) as ws:
        await ws.send(encode_event(CmdRunAction("echo ok", id=1)))
        answer = decode_event(await asyncio.wait_for(ws.recv(), RECV_TIMEOUT))
        assert isinstance(answer, CmdOutputObservation)
        assert answer.content.strip() == "ok"
    assert server.app is app
    await check_server_alive(server)
    check_logs(caplog.records)


# ------------------------------------------------------------------------------ raw protocol


def ws_frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    length: int | None = None,
) -> bytes:
    """One WebSocket frame, built by hand so that it can break every rule of RFC 6455."""
    n = len(payload) if length is None else length
    mask_bit = 0x80 if masked else 0
    head = bytes([(0x80 if fin else 0) | (rsv << 4) | opcode])
    if n < 126:
        head += bytes([mask_bit | n])
    elif n < 1 << 16:
        head += bytes([mask_bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", n)
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


#: Each case breaks one rule; the server must close with one of the given codes.
VIOLATIONS: dict[str, tuple[bytes, frozenset[int]]] = {
    "rsv1 without an extension": (ws_frame(1, b"{}", rsv=4), frozenset({1002})),
    "rsv2 and rsv3": (ws_frame(2, b"{}", rsv=3), frozenset({1002})),
    "reserved data opcode": (ws_frame(3, b"x"), frozenset({1002})),
    "reserved control opcode": (ws_frame(0xB, b"x"), frozenset({1002})),
    "ping over 125 bytes": (ws_frame(9, b"x" * 126), frozenset({1002})),
    "fragmented ping": (ws_frame(9, b"x", fin=False), frozenset({1002})),
    "continuation first": (ws_frame(0, b"x"), frozenset({1002})),
    "new message inside a fragmented one": (
        ws_frame(1, b"{", fin=False) + ws_frame(1, b"}"),
        frozenset({1002}),
    ),
    "close with a 1-byte payload": (ws_frame(8, b"\x03"), frozenset({1002})),
    "close code 999": (ws_frame(8, close_payload(999)), frozenset({1002})),
    "close code 1005": (ws_frame(8, close_payload(1005)), frozenset({1002})),
    # RFC 6455 forbids 1006 and 5000+ on the wire; aiohttp lets them pass as a normal close.
    "close code 1006": (ws_frame(8, close_payload(1006)), frozenset({1000, 1002})),
    "close code 5000": (ws_frame(8, close_payload(5000)), frozenset({1000, 1002})),
    "close reason not UTF-8": (ws_frame(8, close_payload(1000, b"\xff")), frozenset({1002, 1007})),
    "text not UTF-8": (ws_frame(1, b"\xff\xfe"), frozenset({1007})),
    "fragmented text not UTF-8": (
        ws_frame(1, b'{"a":"\xc3', fin=False) + ws_frame(0, b'\xff"}'),
        frozenset({1007}),
    ),
    "length 2**63-1": (ws_frame(2, b"", length=2**63 - 1), frozenset({1009})),
    "length 2**64-1": (bytes([0x82, 0xFF]) + b"\xff" * 8 + os.urandom(4), frozenset({1009})),
    "declared length over the limit": (ws_frame(2, b"", length=MAX_FRAME + 1), frozenset({1009})),
    "random garbage": (bytes([0xF3]) + os.urandom(63), frozenset({1002})),
    "plain close": (ws_frame(8, close_payload(1000, b"bye")), frozenset({1000})),
    "empty close": (ws_frame(8, b""), frozenset({1000})),
    "private close code": (ws_frame(8, close_payload(4000)), frozenset({1000, 4000})),
}


async def raw_ws(port: int, client_id: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    nonce = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET /ws?client_id={client_id} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {nonce}\r\nSec-WebSocket-Version: 13\r\n"
            f"{API_KEY_HEADER}: {KEY}\r\n\r\n"
        ).encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), RECV_TIMEOUT)
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


async def read_frames(reader: asyncio.StreamReader) -> tuple[list[tuple[int, bytes]], int | None]:
    """Server frames until its close frame: (data frames, close code); code None on EOF."""
    seen: list[tuple[int, bytes]] = []
    try:
        while True:
            head = await asyncio.wait_for(reader.readexactly(2), RECV_TIMEOUT)
            n = head[1] & 0x7F
            if n == 126:
                n = struct.unpack("!H", await reader.readexactly(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", await reader.readexactly(8))[0]
            payload = await reader.readexactly(n)
            opcode = head[0] & 0x0F
            if opcode == 8:
                return seen, struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
            seen.append((opcode, payload))
    except asyncio.IncompleteReadError:
        return seen, None


@pytest.mark.parametrize("case", sorted(VIOLATIONS))
async def test_protocol_violation_closes_only_that_connection(
    server: TestServer, caplog: pytest.LogCaptureFixture, case: str
) -> None:
    capture_server_logs(caplog)
    data, codes = VIOLATIONS[case]
    async with await connect(
        f"ws://127.0.0.1:{server.port}/ws?client_id=bystander",
        additional_headers={API_KEY_HEADER: KEY},
    ) as bystander:
        reader, writer = await raw_ws(server.port, "violator")
        writer.write(data)
        seen, code = await read_frames(reader)
        writer.close()
        assert seen == []
        assert code in codes, (case, code)
        # Another connection, open all along, is unaffected.
        await bystander.send(encode_event(CmdRunAction("echo ok", id=1)))
        answer = decode_event(await asyncio.wait_for(bystander.recv(), RECV_TIMEOUT))
        assert isinstance(answer, CmdOutputObservation)
        assert answer.content.strip() == "ok"
    await check_server_alive(server)
    check_logs(caplog.records)


async def test_half_sent_frame_then_eof(
    server: TestServer, caplog: pytest.LogCaptureFixture
) -> None:
    capture_server_logs(caplog)
    reader, writer = await raw_ws(server.port, "quitter")
    writer.write(ws_frame(2, b"x" * 100)[:20])
    writer.write_eof()
    seen, code = await read_frames(reader)
    writer.close()
    assert seen == []
    assert code in (None, 1000, 1006)
    await check_server_alive(server)
    check_logs(caplog.records)


async def test_control_frames_between_fragments_are_answered(server: TestServer) -> None:
    reader, writer = await raw_ws(server.port, "interleaved")
    writer.write(
        ws_frame(1, b'{"type":"cmd_run",', fin=False)
        + ws_frame(9, b"are you there")
        + ws_frame(0, b'"id":-1,"command":"true"}')
        + ws_frame(10, b"unsolicited pong")
    )
    head = await asyncio.wait_for(reader.readexactly(2), RECV_TIMEOUT)
    assert head[0] & 0x0F == 10  # the pong comes at once, mid-message
    assert await reader.readexactly(head[1] & 0x7F) == b"are you there"
    head = await asyncio.wait_for(reader.readexactly(2), RECV_TIMEOUT)
    assert head[0] & 0x0F in (1, 2)
    size = head[1] & 0x7F
    if size == 126:
        size = struct.unpack("!H", await reader.readexactly(2))[0]
    reply = decode_event(await reader.readexactly(size))
    assert isinstance(reply, ErrorObservation)
    assert reply.error_id == "missing_action_id"
    writer.write(ws_frame(8, close_payload(1000)))
    _, code = await read_frames(reader)
    writer.close()
    assert code == 1000
