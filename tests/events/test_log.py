"""The durable log: format, header rules, recovery from torn and corrupt tails, locking."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import struct
import tempfile
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events import (
    CmdOutputMetadata,
    CmdOutputObservation,
    CmdRunAction,
    ErrorObservation,
    Event,
    EventSource,
    EventStream,
    SnapshotObservation,
    decode_event,
    encode_event,
)
from events.log import (
    HEADER,
    HEADER_SIZE,
    MAGIC,
    EventLog,
    LogClosedError,
    LogLockedError,
    NotALogError,
    frame_record,
    read_log,
    scan_log,
)


def sample(i: int) -> Event:
    if i % 2:
        return CmdOutputObservation(
            content=f"line {i}\n" * (i % 5),
            command=f"echo {i}",
            metadata=CmdOutputMetadata(exit_code=0),
            cause=i - 1,
        )
    return CmdRunAction(command=f"echo {i}")


async def write_log(path: Path, count: int) -> list[Event]:
    async with EventStream(log_path=path) as stream:
        stored = [stream.append(sample(i)) for i in range(count)]
        await stream.flush()
    return stored


# A log header as a test writes it: ours plus a fixed 16-byte log id.
LOG_HEAD = HEADER + bytes(range(16))


def record_bounds(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of every record, read independently of events.log."""
    bounds = []
    pos = HEADER_SIZE
    while pos < len(data):
        (length,) = struct.unpack_from("<I", data, pos)
        bounds.append((pos, pos + 8 + length))
        pos += 8 + length
    return bounds


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def corrupt_copies(path: Path) -> list[Path]:
    return sorted(path.parent.glob(path.name + ".corrupt-*"))


# --------------------------------------------------------------------------- format


async def test_a_new_log_is_a_header_then_one_framed_record_per_event(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    stored = await write_log(path, 3)
    data = path.read_bytes()
    assert data.startswith(HEADER)
    assert MAGIC + (1).to_bytes(4, "little") == HEADER
    expected = data[:HEADER_SIZE] + b"".join(frame_record(encode_event(e)) for e in stored)
    assert data == expected
    # The payload is the event's plain JSON, id included.
    start, end = record_bounds(data)[0]
    assert json.loads(data[start + 8 : end])["id"] == 0


async def test_reopening_rehydrates_history_and_ids_continue(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    stored = await write_log(path, 5)
    async with EventStream(log_path=path) as stream:
        assert len(stream) == 5
        assert list(stream.iter_events()) == stored
        assert stream.log_path == str(path)
        assert stream.append(sample(5)).id == 5
    async with EventStream(log_path=path) as again:
        assert [e.id for e in again.iter_events()] == list(range(6))


async def test_a_snapshot_event_is_kept_like_any_event(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    async with EventStream(log_path=path) as stream:
        stream.append(CmdRunAction(command="echo 1"))
        stored = stream.append(
            SnapshotObservation("snap-0f", content="after event 0"),
            source=EventSource.ENVIRONMENT,
        )
    assert read_log(path)[1] == stored
    async with EventStream(log_path=path) as again:
        snapshot = again.get(1)
        assert isinstance(snapshot, SnapshotObservation)
        assert (snapshot.snapshot_id, snapshot.cause, snapshot.source) == (
            "snap-0f",
            None,
            EventSource.ENVIRONMENT,
        )


async def test_copied_events_are_stored_as_they_are_and_reopen_so(tmp_path: Path) -> None:
    original = await write_log(tmp_path / "original.log", 4)
    path = tmp_path / "copy.log"
    async with EventStream(log_path=path) as stream:
        for event in original[:3]:
            stream.append_copy(event)
        with pytest.raises(ValueError, match="the next id, 3, not 0"):
            stream.append_copy(original[0])
        later = stream.append(sample(3))
    assert read_log(path) == [*original[:3], later]
    async with EventStream(log_path=path) as again:
        assert list(again.iter_events()) == [*original[:3], later]
        # Its own identity, not the original's.
        assert again.stream_id != scan_log((tmp_path / "original.log").read_bytes()).log_id
        assert again.append_copy(msgspec.structs.replace(original[3], id=4)).id == 4


async def test_an_empty_file_becomes_a_new_log(tmp_path: Path) -> None:
    path = tmp_path / "empty.log"
    path.touch()
    async with EventStream(log_path=path) as stream:
        assert len(stream) == 0
    data = path.read_bytes()
    assert data.startswith(HEADER)
    assert len(data) == HEADER_SIZE


@pytest.mark.parametrize("kept", range(1, HEADER_SIZE))
async def test_a_torn_header_is_a_log_whose_creation_was_interrupted(
    tmp_path: Path, kept: int, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "torn.log"
    path.write_bytes(LOG_HEAD[:kept])
    with caplog.at_level(logging.WARNING, logger="events.log"):
        async with EventStream(log_path=path) as stream:
            assert len(stream) == 0
            stream.append(sample(0))
    assert "creation was interrupted" in caplog.text
    assert [e.id for e in read_log(path)] == [0]


NOT_LOGS = {
    "random bytes": b"\x00" + os.urandom(300),
    "json": json.dumps([{"action": "run", "args": {"command": "ls"}}]).encode(),
    "jsonl": b'{"type":"cmd_run","command":"ls","id":0}\n',
    "text": b"hello\nworld\n",
    "short text": b"ab",
    "one foreign byte": b"\x00",
    "png": b"\x89PNG\r\n\x1a\n" + b"\x00" * 20,
    "magic, then another version": MAGIC + (2).to_bytes(4, "little") + b"data",
    "magic, version 0": MAGIC + (0).to_bytes(4, "little"),
}


@pytest.mark.parametrize("name", sorted(NOT_LOGS))
def test_a_file_that_is_not_a_log_is_refused_untouched(tmp_path: Path, name: str) -> None:
    path = tmp_path / "not-a-log"
    path.write_bytes(NOT_LOGS[name])
    before = sha256(path)
    with pytest.raises(ValueError, match="event log") as info:
        EventStream(log_path=path)
    assert isinstance(info.value, NotALogError)
    assert sha256(path) == before
    assert not corrupt_copies(path)
    # The file was not left locked either.
    path.write_bytes(b"")
    EventStream(log_path=path).close()


@given(st.binary(max_size=64))
def test_scan_log_either_refuses_or_returns_a_valid_prefix(junk: bytes) -> None:
    for data in (junk, HEADER + junk, HEADER + frame_record(encode_event(sample(0))) + junk):
        try:
            scan = scan_log(data)
        except NotALogError:
            assert not data.startswith(HEADER)
            continue
        assert scan.end <= len(data)
        assert [e.id for e in scan.events] == list(range(len(scan.events)))
        assert (scan.problem is None) == (scan.end == len(data) or scan.header_torn)


# --------------------------------------------------------------------------- recovery


async def test_truncation_at_every_offset_inside_the_last_record(tmp_path: Path) -> None:
    original = tmp_path / "original.log"
    stored = await write_log(original, 5)
    data = original.read_bytes()
    last_start, last_end = record_bounds(data)[-1]
    path = tmp_path / "events.log"
    for cut in range(last_start + 1, last_end):
        path.write_bytes(data[:cut])
        stream = EventStream(log_path=path)
        assert list(stream.iter_events()) == stored[:4], cut
        assert os.path.getsize(path) == last_start
        assert stream.append(sample(4)).id == 4
        await stream.aclose()
        assert [e.id for e in read_log(path)] == list(range(5))
    assert not corrupt_copies(path)  # a torn tail is a crash, not corruption: nothing kept


@settings(max_examples=60)
@given(data=st.data())
def test_truncation_anywhere_recovers_exactly_the_complete_prefix(data: st.DataObject) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory, "events.log")
        count = data.draw(st.integers(min_value=0, max_value=8), label="events")
        stored = asyncio.run(write_log(path, count))
        image = path.read_bytes()
        cut = data.draw(st.integers(min_value=0, max_value=len(image)), label="cut")
        path.write_bytes(image[:cut])
        complete = [end for _, end in record_bounds(image) if end <= cut]
        stream = EventStream(log_path=path)
        try:
            assert list(stream.iter_events()) == stored[: len(complete)]
            assert os.path.getsize(path) == (complete[-1] if complete else HEADER_SIZE)
            assert stream.append(sample(len(complete))).id == len(complete)
        finally:
            stream.close()
        assert len(read_log(path)) == len(complete) + 1


@pytest.mark.parametrize("where", ["length", "crc", "payload", "payload end"])
async def test_a_corrupt_middle_record_stops_recovery_and_keeps_the_rest_aside(
    tmp_path: Path, where: str, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "events.log"
    stored = await write_log(path, 5)
    image = bytearray(path.read_bytes())
    start, end = record_bounds(bytes(image))[2]
    offset = {"length": start, "crc": start + 5, "payload": start + 12, "payload end": end - 1}
    image[offset[where]] ^= 0x40
    path.write_bytes(image)
    with caplog.at_level(logging.WARNING, logger="events.log"):
        stream = EventStream(log_path=path)
    assert list(stream.iter_events()) == stored[:2]
    assert os.path.getsize(path) == start
    if where == "length":
        # A length that now runs past the end of the file reads as a torn tail.
        assert "runs past the end" in caplog.text or "checksum" in caplog.text
    else:
        assert "checksum mismatch" in caplog.text
    copies = corrupt_copies(path)
    if "checksum" in caplog.text:
        assert len(copies) == 1
        assert copies[0].read_bytes() == bytes(image[start:])
    assert stream.append(sample(2)).id == 2
    await stream.aclose()


async def test_a_record_with_an_unexpected_id_is_corruption(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    first = CmdRunAction(command="a", id=0)
    skipped = CmdRunAction(command="b", id=2)
    path.write_bytes(
        LOG_HEAD + frame_record(encode_event(first)) + frame_record(encode_event(skipped))
    )
    async with EventStream(log_path=path) as stream:
        assert [e.id for e in stream.iter_events()] == [0]
        assert stream.append(sample(1)).id == 1
    assert len(corrupt_copies(path)) == 1


async def test_an_undecodable_record_with_a_valid_checksum_is_corruption(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "events.log"
    first = frame_record(encode_event(CmdRunAction(command="a", id=0)))
    path.write_bytes(LOG_HEAD + first + frame_record(b'{"x":1}'))
    with caplog.at_level(logging.WARNING, logger="events.log"):
        stream = EventStream(log_path=path)
    assert len(stream) == 1
    assert "undecodable record" in caplog.text
    assert len(corrupt_copies(path)) == 1
    await stream.aclose()


async def test_a_zero_filled_tail_is_dropped_as_torn(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    await write_log(path, 3)
    with path.open("ab") as file:
        file.write(b"\x00" * 4096)
    async with EventStream(log_path=path) as stream:
        assert len(stream) == 3
    assert not corrupt_copies(path)


async def test_read_log_skips_a_torn_tail_without_repairing_it(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    stored = await write_log(path, 3)
    torn = path.read_bytes()[:-3]
    path.write_bytes(torn)
    assert read_log(path) == stored[:2]
    assert path.read_bytes() == torn


# --------------------------------------------------------------------------- writing


async def test_flush_means_every_appended_event_is_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    async with EventStream(log_path=path) as stream:
        for round_ in range(5):
            for i in range(200):
                stream.append(sample(round_ * 200 + i))
            await stream.flush()
            # Read through another file description: what flush() promised is there.
            assert len(read_log(path)) == (round_ + 1) * 200
        await stream.flush()  # nothing pending: returns at once


async def test_concurrent_flushes_all_return(tmp_path: Path) -> None:
    async with EventStream(log_path=tmp_path / "events.log") as stream:

        async def append_and_flush(i: int) -> int:
            stored = stream.append(sample(i))
            await stream.flush()
            return stored.id

        ids = await asyncio.wait_for(asyncio.gather(*(append_and_flush(i) for i in range(100))), 5)
        assert sorted(ids) == list(range(100))
    assert len(read_log(tmp_path / "events.log")) == 100


async def test_closing_flushes(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    stream = EventStream(log_path=path)
    for i in range(1000):
        stream.append(sample(i))
    await stream.aclose()
    assert len(read_log(path)) == 1000


def test_a_durable_stream_works_without_an_event_loop(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    stream = EventStream(log_path=path)
    stream.append(sample(0))
    stream.append(sample(1))
    stream.close()
    stream.close()  # idempotent
    assert [e.id for e in read_log(path)] == [0, 1]


async def test_sync_close_of_a_durable_stream_inside_a_loop_is_refused(tmp_path: Path) -> None:
    stream = EventStream(log_path=tmp_path / "events.log")
    with pytest.raises(RuntimeError, match="aclose"):
        stream.close()
    await stream.aclose()


async def test_an_event_that_cannot_be_encoded_is_refused_and_uses_no_id(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    async with EventStream(log_path=path) as stream:
        stream.append(sample(0))
        with pytest.raises(TypeError):
            stream.append(CmdRunAction(command="x", extra={"handle": object()}))
        with pytest.raises(UnicodeEncodeError):
            stream.append(CmdRunAction(command="\ud800"))
        assert len(stream) == 1
        assert stream.append(sample(1)).id == 1
    assert [e.id for e in read_log(path)] == [0, 1]


async def test_a_log_is_locked_while_open(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    stream = EventStream(log_path=path)
    with pytest.raises(LogLockedError, match="already open"):
        EventStream(log_path=path)
    before = sha256(path)
    stream.append(sample(0))
    await stream.aclose()
    assert sha256(path) != before
    reopened = EventStream(log_path=path)
    assert len(reopened) == 1
    await reopened.aclose()


async def test_event_log_checks_ids_and_refuses_appends_after_close(tmp_path: Path) -> None:
    log = EventLog(tmp_path / "events.log")
    assert log.next_id == 0
    assert log.recovered == []
    with pytest.raises(ValueError, match="expected event id 0"):
        log.append(CmdRunAction(command="x", id=3))
    log.append(CmdRunAction(command="x", id=0))
    await log.flush()
    await log.aclose()
    assert log.closed
    with pytest.raises(LogClosedError):
        log.append(CmdRunAction(command="y", id=1))
    await log.aclose()  # idempotent
    assert [e.id for e in read_log(tmp_path / "events.log")] == [0]


# --------------------------------------------------------------------------- golden binary log

DATA = Path(__file__).parents[1] / "data"
GOLDEN_BINARY_LOG = DATA / "golden_log_v1.ohrtlog"
GOLDEN_BINARY_LOG_SHA256 = "4ace8c1a77b50cd09ad7f9f0e8edc4382e080539557d93fa76cb8758452cb635"


def test_golden_binary_log_is_unchanged() -> None:
    """Written once by the format-1 writer; never rewritten (a later version must read it)."""
    assert hashlib.sha256(GOLDEN_BINARY_LOG.read_bytes()).hexdigest() == GOLDEN_BINARY_LOG_SHA256


def test_golden_binary_log_still_reads_to_the_golden_events() -> None:
    """Every later version must open a log today's format wrote: the same 20 events."""
    expected = [
        decode_event(line) for line in (DATA / "golden_events_v1.jsonl").read_bytes().splitlines()
    ]
    events = read_log(GOLDEN_BINARY_LOG)
    assert events == expected[:20]
    assert [event.id for event in events] == list(range(20))


async def test_golden_binary_log_reopens_and_continues(tmp_path: Path) -> None:
    copy = tmp_path / "golden.log"
    copy.write_bytes(GOLDEN_BINARY_LOG.read_bytes())
    log_id = GOLDEN_BINARY_LOG.read_bytes()[len(MAGIC) + 4 : len(MAGIC) + 20].hex()
    async with EventStream(log_path=copy) as stream:
        assert len(stream) == 20
        assert stream.stream_id == log_id
        stored = stream.append(ErrorObservation("after"), source=EventSource.ENVIRONMENT)
        assert stored.id == 20
    assert [event.id for event in read_log(copy)] == list(range(21))
