"""A hypothesis state machine over EventStream: appends, subscribers, unsubscribes, reopens.

Invariants after every step: ids are gapless from 0, and every subscriber has
seen exactly the ids from its start on, in order (a stopped one: a contiguous
run from its start that no longer grows).
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from events import CmdRunAction, Event, EventSource, EventStream, Subscription

T = TypeVar("T")


class Recorder:
    def __init__(self) -> None:
        self.ids: list[int] = []
        self.changed = asyncio.Event()

    async def __call__(self, event: Event) -> None:
        self.ids.append(event.id)
        self.changed.set()

    async def wait_for_count(self, count: int) -> None:
        while len(self.ids) < count:
            self.changed.clear()
            await self.changed.wait()


@dataclass
class Tracked:
    recorder: Recorder
    start: int
    subscription: Subscription
    stopped_at: int | None = None  # len(recorder.ids) when it was unsubscribed or closed


class StreamMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.directory = tempfile.mkdtemp(prefix="stream-machine-")
        self.path = Path(self.directory, "events.log")
        self.loop = asyncio.new_event_loop()
        self.stream = EventStream()
        self.durable = False
        self.expected_len = 0
        self.tracked: list[Tracked] = []

    def run(self, coro: Coroutine[object, object, T]) -> T:
        return self.loop.run_until_complete(asyncio.wait_for(coro, 10))

    @initialize(durable=st.booleans())
    def open_stream(self, durable: bool) -> None:
        self.durable = durable
        if durable:
            self.stream = EventStream(log_path=self.path)

    def active(self) -> list[Tracked]:
        return [t for t in self.tracked if t.stopped_at is None]

    @rule(count=st.integers(min_value=1, max_value=20), source=st.sampled_from(EventSource))
    def append(self, count: int, source: EventSource) -> None:
        for _ in range(count):
            stored = self.stream.append(CmdRunAction(command=str(self.expected_len)), source)
            assert stored.id == self.expected_len
            assert stored.source is source
            self.expected_len += 1

    @rule(data=st.data())
    def subscribe(self, data: st.DataObject) -> None:
        from_id = data.draw(st.none() | st.integers(0, self.expected_len + 5), label="from_id")
        recorder = Recorder()
        name = f"s{len(self.tracked)}"

        async def subscribe() -> Subscription:
            return self.stream.subscribe(recorder, subscriber_id=name, from_id=from_id)

        subscription = self.run(subscribe())
        start = self.expected_len if from_id is None else from_id
        self.tracked.append(Tracked(recorder, start, subscription))

    @precondition(lambda self: bool(self.active()))
    @rule(data=st.data())
    def unsubscribe(self, data: st.DataObject) -> None:
        tracked = data.draw(st.sampled_from(self.active()), label="subscriber")
        tracked.subscription.unsubscribe()
        assert not tracked.subscription.active
        tracked.stopped_at = len(tracked.recorder.ids)

    @rule()
    def flush(self) -> None:
        self.run(self.stream.flush())

    @precondition(lambda self: self.durable)
    @rule()
    def reopen(self) -> None:
        self.run(self.stream.aclose())
        for tracked in self.active():
            # aclose() drained it: it saw everything appended before the close.
            assert tracked.recorder.ids == list(range(tracked.start, self.expected_len))
            tracked.stopped_at = len(tracked.recorder.ids)
        self.stream = EventStream(log_path=self.path)
        assert len(self.stream) == self.expected_len

    async def settle(self) -> None:
        for tracked in self.active():
            await tracked.recorder.wait_for_count(max(0, self.expected_len - tracked.start))
        for _ in range(3):  # a chance for a stray delivery to a stopped subscriber to show
            await asyncio.sleep(0)

    @invariant()
    def ids_are_gapless_and_every_subscriber_saw_exactly_its_range(self) -> None:
        self.run(self.settle())
        assert len(self.stream) == self.expected_len
        assert [e.id for e in self.stream.iter_events()] == list(range(self.expected_len))
        for tracked in self.tracked:
            ids = tracked.recorder.ids
            if tracked.stopped_at is None:
                assert ids == list(range(tracked.start, self.expected_len))
            else:
                assert len(ids) == tracked.stopped_at
                assert ids == list(range(tracked.start, tracked.start + len(ids)))

    def teardown(self) -> None:
        try:
            self.run(self.stream.aclose())
        finally:
            self.loop.close()
            shutil.rmtree(self.directory, ignore_errors=True)


StreamMachine.TestCase.settings = settings(max_examples=40, stateful_step_count=30, deadline=None)
TestStreamMachine = StreamMachine.TestCase
