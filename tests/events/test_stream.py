"""EventStream: ids, timestamps, history, subscribers, follow, closing (in memory, real loop)."""

from __future__ import annotations

import asyncio
import datetime
import gc
import logging
import re
import threading
import time
import tracemalloc

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

import events.clock
from events import (
    CmdOutputObservation,
    CmdRunAction,
    Event,
    EventSource,
    EventStream,
    Subscription,
)
from events.clock import UtcClock
from events.stream import StreamClosedError

TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00")


def cmd(i: int) -> CmdRunAction:
    return CmdRunAction(command=f"echo {i}")


class Recorder:
    """An async callback that records ids and lets a test wait for a count."""

    def __init__(self) -> None:
        self.ids: list[int] = []
        self.events: list[Event] = []
        self._changed = asyncio.Event()

    async def __call__(self, event: Event) -> None:
        self.ids.append(event.id)
        self.events.append(event)
        self._changed.set()

    async def wait_for_count(self, count: int) -> None:
        async def reached() -> None:
            while len(self.ids) < count:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(reached(), 5)


def subscriber_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("event-subscriber:")]


def delivery_hosts() -> list[asyncio.Task[object]]:
    """The tasks running a stream's delivery task group."""
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("event-deliveries:")]


# --------------------------------------------------------------------------- append


def test_append_assigns_gapless_ids_from_zero_and_returns_the_stored_copy() -> None:
    stream = EventStream()
    original = cmd(0)
    stored = [stream.append(original if i == 0 else cmd(i)) for i in range(50)]
    assert [e.id for e in stored] == list(range(50))
    assert (original.id, original.timestamp, original.source) == (-1, None, None)
    assert stored[0] == stream.get(0)
    assert stored[0].command == "echo 0"
    assert len(stream) == 50


def test_append_sets_the_source_argument_and_keeps_cause() -> None:
    stream = EventStream()
    default = stream.append(cmd(0))
    env = stream.append(
        CmdOutputObservation(content="hi", command="echo hi", cause=0, source=EventSource.USER),
        source=EventSource.ENVIRONMENT,
    )
    by_value = stream.append(cmd(2), source="user")  # type: ignore[arg-type]
    assert default.source is EventSource.AGENT
    assert env.source is EventSource.ENVIRONMENT
    assert env.cause == 0
    assert by_value.source is EventSource.USER
    with pytest.raises(ValueError, match="robot"):
        stream.append(cmd(3), source="robot")  # type: ignore[arg-type]
    assert len(stream) == 3


def test_appending_an_event_that_has_an_id_raises_and_stores_nothing() -> None:
    stream = EventStream()
    stored = stream.append(cmd(0))
    with pytest.raises(ValueError, match="already has id 0"):
        stream.append(stored)
    with pytest.raises(ValueError, match="already has id 7"):
        stream.append(CmdRunAction(command="x", id=7))
    assert len(stream) == 1
    assert stream.append(cmd(1)).id == 1


def test_append_copy_keeps_everything_and_accepts_only_the_next_id() -> None:
    source = EventStream()
    first = source.append(cmd(0), source=EventSource.USER)
    second = source.append(
        CmdOutputObservation(content="ok", command="echo 0", cause=first.id),
        source=EventSource.ENVIRONMENT,
    )
    copy = EventStream()
    copy.set_secrets({"ok": "ok"})  # a copy is stored as it is: never masked again
    with pytest.raises(ValueError, match="the next id, 0, not 1"):
        copy.append_copy(second)
    with pytest.raises(ValueError, match="the next id, 0, not -1"):
        copy.append_copy(cmd(5))
    with pytest.raises(TypeError, match="expected an Event"):
        copy.append_copy({"id": 0})  # type: ignore[type-var]
    assert len(copy) == 0
    assert copy.append_copy(first) == first
    assert copy.append_copy(second) == second
    assert list(copy.iter_events()) == [first, second]
    assert copy.get(1).timestamp == second.timestamp
    assert copy.get(1).source is EventSource.ENVIRONMENT
    assert copy.get(1).cause == 0
    assert copy.get(1).content == "ok"  # type: ignore[attr-defined]
    # Appending goes on after the copies, with the stream's own ids and timestamps.
    assert copy.append(cmd(2)).id == 2
    copy.close()
    with pytest.raises(StreamClosedError):
        copy.append_copy(msgspec.structs.replace(first, id=3))


def test_append_rejects_what_is_not_an_event() -> None:
    stream = EventStream()
    with pytest.raises(TypeError, match="expected an Event"):
        stream.append({"action": "run"})  # type: ignore[type-var]
    assert len(stream) == 0


def test_timestamps_are_iso8601_utc_and_current() -> None:
    stream = EventStream()
    before = datetime.datetime.now(datetime.timezone.utc)
    stamps = [stream.append(cmd(i)).timestamp for i in range(2000)]
    after = datetime.datetime.now(datetime.timezone.utc)
    for stamp in stamps:
        assert stamp is not None
        assert TIMESTAMP.fullmatch(stamp), stamp
        parsed = datetime.datetime.fromisoformat(stamp)
        assert parsed.utcoffset() == datetime.timedelta(0)
        # time.time() and datetime.now() may round differently by a microsecond
        slack = datetime.timedelta(milliseconds=1)
        assert before - slack <= parsed <= after + slack


@given(st.integers(min_value=0, max_value=253402300799_999999))  # up to 9999-12-31
def test_clock_formats_any_instant_like_datetime(micros: int) -> None:
    clock = UtcClock()
    expected = datetime.datetime.fromtimestamp(micros // 1_000_000, datetime.timezone.utc).replace(
        microsecond=micros % 1_000_000
    )
    assert clock.at(micros) == expected.isoformat(timespec="microseconds")
    # And again through the cached millisecond prefix, also after moving back and forth.
    assert clock.at(micros) == expected.isoformat(timespec="microseconds")
    neighbour = max(0, micros - 1001)
    clock.at(neighbour)
    assert clock.at(micros) == expected.isoformat(timespec="microseconds")


@given(
    st.lists(
        st.integers(min_value=0, max_value=253402300799_999999_999), min_size=1, max_size=20
    ).map(sorted)
    | st.lists(st.integers(min_value=0, max_value=2_000_000_000), min_size=1, max_size=20)
)
def test_clock_now_reads_the_clock_in_ns_and_agrees_with_at(readings: list[int]) -> None:
    # now() is at() inlined and in nanoseconds: the same text for every reading,
    # across millisecond and second boundaries and when the clock steps back.
    clock, reference = UtcClock(), UtcClock()
    pending = iter(readings)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(events.clock, "_time_ns", lambda: next(pending))
        stamps = [clock.now() for _ in readings]
    assert stamps == [reference.at(ns // 1000) for ns in readings]


# --------------------------------------------------------------------------- history


def test_get_iter_events_and_len() -> None:
    stream = EventStream()
    for i in range(10):
        stream.append(cmd(i))
    assert stream.get(9) == stream.iter_events(9).__next__()
    assert isinstance(stream.get(9), CmdRunAction)
    assert stream.get(9).id == 9
    for missing in (-1, 10, 1000):
        with pytest.raises(KeyError):
            stream.get(missing)
    assert [e.id for e in stream.iter_events()] == list(range(10))
    assert [e.id for e in stream.iter_events(3)] == list(range(3, 10))
    assert [e.id for e in stream.iter_events(2, 4)] == [2, 3, 4]
    assert [e.id for e in stream.iter_events(8, 100)] == [8, 9]
    assert list(stream.iter_events(10)) == []
    assert list(stream.iter_events(5, 4)) == []
    with pytest.raises(ValueError, match="start_id"):
        stream.iter_events(-1)
    snapshot = stream.iter_events()
    stream.append(cmd(10))
    assert [e.id for e in snapshot] == list(range(10))
    assert len(stream) == 11


async def test_flush_of_an_in_memory_stream_returns() -> None:
    stream = EventStream()
    stream.append(cmd(0))
    await asyncio.wait_for(stream.flush(), 1)


# --------------------------------------------------------------------------- subscribers


async def test_subscribers_get_every_event_in_order_one_at_a_time() -> None:
    stream = EventStream()
    in_flight = 0
    max_in_flight = 0
    seen: list[int] = []
    done = asyncio.Event()

    async def slow(event: Event) -> None:
        nonlocal in_flight, max_in_flight
        in_flight += 1
        max_in_flight = max(max_in_flight, in_flight)
        for _ in range(event.id % 3):
            await asyncio.sleep(0)
        seen.append(event.id)
        in_flight -= 1
        if event.id == 299:
            done.set()

    fast = [Recorder() for _ in range(3)]
    async with stream:
        stream.subscribe(slow, subscriber_id="slow")
        for i, recorder in enumerate(fast):
            stream.subscribe(recorder, subscriber_id=f"fast-{i}")
        for i in range(300):
            stream.append(cmd(i))
            if i % 7 == 0:
                await asyncio.sleep(0)
        await asyncio.wait_for(done.wait(), 5)
        for recorder in fast:
            await recorder.wait_for_count(300)
    assert seen == list(range(300))
    assert max_in_flight == 1
    for recorder in fast:
        assert recorder.ids == list(range(300))
        assert recorder.events == list(stream.iter_events())


async def test_from_none_delivers_only_later_events() -> None:
    async with EventStream() as stream:
        stream.append(cmd(0))
        stream.append(cmd(1))
        recorder = Recorder()
        sub = stream.subscribe(recorder, subscriber_id="late")
        assert sub.next_id == 2
        stream.append(cmd(2))
        await recorder.wait_for_count(1)
        await asyncio.sleep(0)
        assert recorder.ids == [2]


@pytest.mark.parametrize("start", [0, 1, 250, 499, 500])
async def test_from_id_replays_history_then_live_with_no_gap_or_duplicate(start: int) -> None:
    """Subscribe in the middle of a producer that keeps appending between yields."""
    stream = EventStream()
    total = 1000
    recorder = Recorder()
    halfway = asyncio.Event()

    async def produce() -> None:
        for i in range(total):
            stream.append(cmd(i))
            if i == 499:
                halfway.set()
            if i % 10 == 9:
                await asyncio.sleep(0)

    async with stream:
        producer = asyncio.create_task(produce())
        await halfway.wait()
        assert 500 <= len(stream) < total
        stream.subscribe(recorder, subscriber_id="seam", from_id=start)
        await producer
        await recorder.wait_for_count(total - start)
    assert recorder.ids == list(range(start, total))


async def test_from_id_beyond_the_end_waits_for_that_event() -> None:
    async with EventStream() as stream:
        stream.append(cmd(0))
        recorder = Recorder()
        stream.subscribe(recorder, subscriber_id="future", from_id=3)
        for i in range(1, 6):
            stream.append(cmd(i))
        await recorder.wait_for_count(3)
    assert recorder.ids == [3, 4, 5]


async def test_subscribe_validates_its_arguments() -> None:
    async with EventStream() as stream:
        stream.subscribe(Recorder(), subscriber_id="ui")
        with pytest.raises(ValueError, match="'ui' is already in use"):
            stream.subscribe(Recorder(), subscriber_id="ui")
        with pytest.raises(ValueError, match="from_id"):
            stream.subscribe(Recorder(), subscriber_id="neg", from_id=-1)
        anonymous = {stream.subscribe(Recorder()).subscriber_id for _ in range(5)}
        assert len(anonymous) == 5
        assert "ui" not in anonymous


def test_subscribe_needs_a_running_loop() -> None:
    stream = EventStream()
    with pytest.raises(RuntimeError, match="running event loop"):
        stream.subscribe(Recorder(), subscriber_id="x")


async def test_a_raising_subscriber_is_logged_keeps_going_and_harms_no_one(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls: list[int] = []
    flaky_done = asyncio.Event()

    async def flaky(event: Event) -> None:
        calls.append(event.id)
        if event.id == 9:
            flaky_done.set()
        if event.id % 2 == 0:
            raise RuntimeError(f"boom {event.id}")

    healthy = Recorder()
    with caplog.at_level(logging.ERROR, logger="events.stream"):
        async with EventStream() as stream:
            stream.subscribe(flaky, subscriber_id="flaky")
            stream.subscribe(healthy, subscriber_id="healthy")
            for i in range(10):
                stream.append(cmd(i))
            await healthy.wait_for_count(10)
            await asyncio.wait_for(flaky_done.wait(), 5)
    assert calls == list(range(10))
    assert healthy.ids == list(range(10))
    failures = [r for r in caplog.records if "flaky" in r.getMessage()]
    assert len(failures) == 5
    assert all(r.exc_info is not None and "boom" in str(r.exc_info[1]) for r in failures)


async def test_a_stuck_subscriber_blocks_neither_append_nor_others_and_costs_no_memory() -> None:
    n = 20_000
    gate = asyncio.Event()

    async def stuck(event: Event) -> None:
        await gate.wait()

    def appended_bytes(stream: EventStream) -> int:
        events = [cmd(i) for i in range(n)]
        gc.collect()
        start = tracemalloc.get_traced_memory()[0]
        for event in events:
            stream.append(event)
        return tracemalloc.get_traced_memory()[0] - start

    tracemalloc.start()
    try:
        async with EventStream() as control:
            control.append(cmd(-1))
            control_bytes = appended_bytes(control)
        async with EventStream(drain_timeout=0.05) as stream:
            sub = stream.subscribe(stuck, subscriber_id="stuck")
            healthy = Recorder()
            stream.subscribe(healthy, subscriber_id="healthy")
            stream.append(cmd(-1))
            await healthy.wait_for_count(1)  # `stuck` now sits in its first callback
            stuck_bytes = appended_bytes(stream)
            await healthy.wait_for_count(n + 1)
            assert sub.next_id == 1  # still on event 0
            assert len(stream) == n + 1
    finally:
        tracemalloc.stop()
    # A queue per subscriber would hold n references (8 bytes each at the very least).
    assert stuck_bytes - control_bytes < n * 2, (stuck_bytes, control_bytes)


async def test_unsubscribe_stops_delivery_and_frees_the_id() -> None:
    async with EventStream() as stream:
        recorder = Recorder()
        sub = stream.subscribe(recorder, subscriber_id="ui")
        assert isinstance(sub, Subscription)
        assert (sub.active, sub.subscriber_id) == (True, "ui")
        stream.append(cmd(0))
        await recorder.wait_for_count(1)
        sub.unsubscribe()
        sub.unsubscribe()  # idempotent
        assert not sub.active
        stream.append(cmd(1))
        again = Recorder()
        stream.subscribe(again, subscriber_id="ui")
        stream.append(cmd(2))
        await again.wait_for_count(1)
        for _ in range(5):
            await asyncio.sleep(0)
        assert recorder.ids == [0]
        assert again.ids == [2]


async def test_unsubscribe_from_inside_the_callback() -> None:
    seen: list[int] = []
    subs: list[Subscription] = []

    async def once(event: Event) -> None:
        seen.append(event.id)
        subs[0].unsubscribe()
        await asyncio.sleep(0)  # not cancelled by its own unsubscribe
        seen.append(-event.id - 1)

    async with EventStream() as stream:
        for i in range(3):
            stream.append(cmd(i))
        subs.append(stream.subscribe(once, subscriber_id="once", from_id=0))
        for _ in range(10):
            await asyncio.sleep(0)
        assert not subscriber_tasks()
    assert seen == [0, -1]


async def test_follow_yields_history_then_live_and_ends_at_close() -> None:
    stream = EventStream()
    for i in range(3):
        stream.append(cmd(i))
    received: list[int] = []

    async def consume() -> None:
        received.extend([event.id async for event in stream.follow(from_id=1)])

    consumer = asyncio.create_task(consume())
    await asyncio.sleep(0)
    for i in range(3, 6):
        stream.append(cmd(i))
        await asyncio.sleep(0)
    stream.append(cmd(6))
    await stream.aclose()
    await asyncio.wait_for(consumer, 1)
    assert received == [1, 2, 3, 4, 5, 6]
    # A closed stream still replays its history.
    assert [e.id async for e in stream.follow()] == list(range(7))
    with pytest.raises(ValueError, match="from_id"):
        stream.follow(-1)


async def test_many_followers_and_subscribers_share_one_history() -> None:
    stream = EventStream()
    results: list[list[int]] = [[] for _ in range(5)]

    async def consume(index: int) -> None:
        async for event in stream.follow():
            results[index].append(event.id)

    consumers = [asyncio.create_task(consume(i)) for i in range(5)]
    for i in range(1000):
        stream.append(cmd(i))
        if i % 100 == 0:
            await asyncio.sleep(0)
    await stream.aclose()
    await asyncio.wait_for(asyncio.gather(*consumers), 5)
    assert all(result == list(range(1000)) for result in results)


# --------------------------------------------------------------------------- closing


async def test_aclose_drains_pending_deliveries_then_ends_the_tasks() -> None:
    delivered: list[int] = []

    async def slowish(event: Event) -> None:
        await asyncio.sleep(0.001)
        delivered.append(event.id)

    stream = EventStream()
    stream.subscribe(slowish, subscriber_id="slowish")
    for i in range(20):
        stream.append(cmd(i))
    assert delivery_hosts()  # started by the first subscribe()
    await asyncio.sleep(0)  # the group's host task starts the delivery task
    assert subscriber_tasks()
    await stream.aclose()
    assert delivered == list(range(20))
    assert not subscriber_tasks()
    assert not delivery_hosts()
    await stream.aclose()  # idempotent


async def test_aclose_cancels_a_subscriber_stuck_past_the_drain_timeout() -> None:
    cancelled = asyncio.Event()

    async def stuck(event: Event) -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    stream = EventStream(drain_timeout=0.05)
    stream.subscribe(stuck, subscriber_id="stuck")
    stream.append(cmd(0))
    await asyncio.sleep(0)
    started = time.monotonic()
    await stream.aclose()
    assert time.monotonic() - started < 2
    assert cancelled.is_set()
    assert not subscriber_tasks()


async def test_a_subscriber_may_close_the_stream_from_its_callback() -> None:
    seen: list[int] = []
    closed = asyncio.Event()

    async def closer(event: Event) -> None:
        seen.append(event.id)
        if event.id == 3:
            await stream.aclose()
            closed.set()

    stream = EventStream()
    other = Recorder()
    stream.subscribe(closer, subscriber_id="closer")
    stream.subscribe(other, subscriber_id="other")
    for i in range(10):
        stream.append(cmd(i))
    await asyncio.wait_for(closed.wait(), 2)
    await asyncio.wait_for(stream.aclose(), 2)
    assert seen == list(range(10))  # drained after its own callback returned
    assert other.ids == list(range(10))
    assert not subscriber_tasks()


async def test_closed_stream_refuses_appends_and_subscribers() -> None:
    async with EventStream() as stream:
        stream.append(cmd(0))
    assert stream.closed
    with pytest.raises(StreamClosedError):
        stream.append(cmd(1))
    with pytest.raises(RuntimeError):  # StreamClosedError is a RuntimeError
        stream.subscribe(Recorder(), subscriber_id="late")
    assert len(stream) == 1
    assert stream.get(0).id == 0


def test_sync_close_of_an_in_memory_stream() -> None:
    stream = EventStream()
    stream.append(cmd(0))
    stream.close()
    with pytest.raises(StreamClosedError):
        stream.append(cmd(1))


def test_drain_timeout_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="drain_timeout"):
        EventStream(drain_timeout=-1)


# --------------------------------------------------------------------------- threads


async def test_appends_from_other_threads_are_gapless_and_wake_subscribers() -> None:
    async with EventStream() as stream:
        recorder = Recorder()
        stream.subscribe(recorder, subscriber_id="ui")
        per_thread = 2000
        stored: list[list[Event]] = [[] for _ in range(4)]

        def produce(index: int) -> None:
            for i in range(per_thread):
                stored[index].append(stream.append(cmd(index * per_thread + i)))

        threads = [threading.Thread(target=produce, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()

        def join_all() -> None:
            for thread in threads:
                thread.join()

        await asyncio.to_thread(join_all)
        await recorder.wait_for_count(4 * per_thread)
    ids = sorted(e.id for chunk in stored for e in chunk)
    assert ids == list(range(4 * per_thread))
    assert recorder.ids == ids
    assert [e.id for e in stream.iter_events()] == ids
    # Each thread's own events got increasing ids.
    assert all([e.id for e in chunk] == sorted(e.id for e in chunk) for chunk in stored)
