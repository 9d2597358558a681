"""Who owns the delivery tasks and how their deaths are heard (events.delivery, real loop)."""

from __future__ import annotations

import asyncio
import builtins
import logging

import pytest

from events import CmdRunAction, Event, EventStream
from events.stream import DeliveryError, StreamClosedError


def cmd(i: int) -> CmdRunAction:
    return CmdRunAction(command=f"echo {i}")


def stream_tasks() -> list[asyncio.Task[object]]:
    """The delivery tasks of every stream and the tasks running their groups."""
    return [
        t
        for t in asyncio.all_tasks()
        if t.get_name().startswith(("event-subscriber:", "event-deliveries:"))
    ]


class Recorder:
    def __init__(self) -> None:
        self.ids: list[int] = []
        self.seen = asyncio.Event()

    async def __call__(self, event: Event) -> None:
        self.ids.append(event.id)
        self.seen.set()

    async def wait_for(self, count: int) -> None:
        async def reached() -> None:
            while len(self.ids) < count:
                self.seen.clear()
                await self.seen.wait()

        await asyncio.wait_for(reached(), 5)


class FailsOnce(list[Event]):
    """The stream's history, whose first read of event 2 fails: a bug in delivery."""

    failed = False

    def __getitem__(self, index: int) -> Event:  # type: ignore[override]
        if index == 2 and not self.failed:
            self.failed = True
            raise RuntimeError("a bug in delivery")
        return super().__getitem__(index)


class Fatal(BaseException):
    """Not an Exception: what a callback should never raise."""


async def test_no_task_before_the_first_subscribe_and_none_after_close() -> None:
    before = set(asyncio.all_tasks())
    stream = EventStream()
    stream.append(cmd(0))
    assert set(asyncio.all_tasks()) == before  # neither the constructor nor append starts one
    recorder = Recorder()
    stream.subscribe(recorder, subscriber_id="ui", from_id=0)
    hosts = [t for t in stream_tasks() if t.get_name().startswith("event-deliveries:")]
    assert [t.get_name() for t in hosts] == [f"event-deliveries:{stream.stream_id}"]
    await recorder.wait_for(1)
    await stream.aclose()
    assert not stream_tasks()
    assert all(t.done() and not t.cancelled() for t in hosts)  # ended, not torn down


async def test_subscribers_share_one_group_and_one_host_task() -> None:
    stream = EventStream()
    recorders = [Recorder() for _ in range(3)]
    for index, recorder in enumerate(recorders):
        stream.subscribe(recorder, subscriber_id=f"r{index}")
    stream.append(cmd(0))
    for recorder in recorders:
        await recorder.wait_for(1)
    names = sorted(t.get_name() for t in stream_tasks())
    assert names == [
        f"event-deliveries:{stream.stream_id}",
        "event-subscriber:r0",
        "event-subscriber:r1",
        "event-subscriber:r2",
    ]
    # A subscriber added once the group runs joins it at once.
    late = Recorder()
    stream.subscribe(late, subscriber_id="late", from_id=0)
    assert "event-subscriber:late" in {t.get_name() for t in stream_tasks()}
    await late.wait_for(1)
    await stream.aclose()
    assert not stream_tasks()


async def test_sync_close_ends_the_group_once_subscribers_caught_up() -> None:
    stream = EventStream()
    recorder = Recorder()
    stream.subscribe(recorder, subscriber_id="ui")
    await asyncio.sleep(0)
    for i in range(5):
        stream.append(cmd(i))
    stream.close()  # an in-memory stream may be closed synchronously inside a loop
    await recorder.wait_for(5)
    for _ in range(5):
        await asyncio.sleep(0)
    assert not stream_tasks()
    assert recorder.ids == list(range(5))
    await stream.aclose()  # idempotent, nothing left to wait for


async def test_unsubscribed_before_the_group_started_is_never_run() -> None:
    stream = EventStream()
    stream.append(cmd(0))
    recorder = Recorder()
    subscription = stream.subscribe(recorder, subscriber_id="gone", from_id=0)
    subscription.unsubscribe()
    for _ in range(5):
        await asyncio.sleep(0)
    assert recorder.ids == []
    assert not [t for t in stream_tasks() if t.get_name() == "event-subscriber:gone"]
    await stream.aclose()


@pytest.mark.parametrize("raised", [asyncio.CancelledError, Fatal])
async def test_a_callback_raising_a_base_exception_ends_its_subscription_loudly(
    raised: type[BaseException], caplog: pytest.LogCaptureFixture
) -> None:
    """Not silently (a CancelledError of its own used to end the task without a word)."""
    calls: list[int] = []

    async def dies(event: Event) -> None:
        calls.append(event.id)
        if event.id == 1:
            raise raised()

    stream = EventStream()
    other = Recorder()
    with caplog.at_level(logging.ERROR, logger="events.delivery"):
        doomed = stream.subscribe(dies, subscriber_id="dies")
        stream.subscribe(other, subscriber_id="other")
        for i in range(4):
            stream.append(cmd(i))
        await other.wait_for(4)
        for _ in range(5):
            await asyncio.sleep(0)
    assert calls == [0, 1]
    assert not doomed.active
    assert "subscriber 'dies' raised" in caplog.text
    assert "on event 1" in caplog.text
    assert "delivery to it stopped" in caplog.text
    # The others and the stream go on; the id is free again.
    stream.append(cmd(4))
    await other.wait_for(5)
    assert other.ids == list(range(5))
    again = Recorder()
    stream.subscribe(again, subscriber_id="dies", from_id=4)
    await again.wait_for(1)
    await stream.aclose()
    assert not stream_tasks()


async def test_a_cancelled_stuck_subscriber_is_not_reported_as_its_own_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def stuck(event: Event) -> None:
        await asyncio.Event().wait()

    stream = EventStream(drain_timeout=0.01)
    stream.subscribe(stuck, subscriber_id="stuck")
    stream.append(cmd(0))
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="events.delivery"):
        await stream.aclose()  # the drain timeout cancels it: that is ours, not its failure
    assert "cancelling 1 event subscribers" in caplog.text
    assert "delivery to it stopped" not in caplog.text
    assert not stream_tasks()


async def test_a_delivery_task_that_dies_outside_its_callback_takes_the_stream_down(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stream = EventStream()
    stream._events = FailsOnce(stream._events)
    other = Recorder()
    parked = asyncio.Event()

    async def waits(event: Event) -> None:
        parked.set()
        await asyncio.Event().wait()  # cancelled when the group goes down

    with caplog.at_level(logging.ERROR, logger="events.delivery"):
        broken_sub = stream.subscribe(Recorder(), subscriber_id="broken")
        other_sub = stream.subscribe(other, subscriber_id="other")
        waiting_sub = stream.subscribe(waits, subscriber_id="waits")
        stream.append(cmd(0))
        await asyncio.wait_for(parked.wait(), 5)
        stream.append(cmd(1))
        stream.append(cmd(2))
        for _ in range(20):
            await asyncio.sleep(0)
            if not stream_tasks():
                break
    # Loud at once: logged with the traceback, before anybody closes anything.
    assert "event delivery failed outside any callback" in caplog.text
    assert "a bug in delivery" in caplog.text
    # The whole group went down: no delivery task is left, no subscription is active.
    assert not stream_tasks()
    assert [s.active for s in (broken_sub, other_sub, waiting_sub)] == [False] * 3
    # The stream is down, and says why, to whoever uses it next.
    assert stream.closed
    with pytest.raises(DeliveryError) as appended:
        stream.append(cmd(3))
    assert isinstance(appended.value, StreamClosedError)
    cause = appended.value.__cause__
    assert isinstance(cause, builtins.BaseExceptionGroup)  # what the task group raised
    assert [str(e) for e in cause.exceptions] == ["a bug in delivery"]
    with pytest.raises(DeliveryError):
        stream.subscribe(Recorder(), subscriber_id="new")
    with pytest.raises(DeliveryError):
        await stream.aclose()
    assert len(stream) == 3  # the history itself is intact
    assert [e.id async for e in stream.follow()] == [0, 1, 2]
