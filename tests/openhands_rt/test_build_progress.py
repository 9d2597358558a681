"""Build progress from raw build output (pure): real recorded builds, then the rules one by one.

The recordings under ``tests/data/build_output/`` are the output lines of two
real scratch builds (``force_rebuild``, so nothing came from the engine's cache;
one with the Jupyter plugin, whose wheelhouse was made on the spot), with the
seconds since the build began. The builder's own calls are recorded among them
where it makes them: ``decide``, ``stage`` (``begin``), ``expect`` and ``finish``.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from openhands_rt.image.build_progress import (
    STAGES,
    BuildProgress,
    BuildProgressTracker,
    stages_of,
)

DATA = Path(__file__).parent.parent / "data" / "build_output"
RECORDINGS = ["scratch.jsonl", "scratch_jupyter.jsonl"]
# What raw tool output looks like; none of it may reach an event.
RAW = re.compile(
    r"Step \d|--->|Collecting |Processing |Downloading |Saved |Successfully |Running in "
    r"|Removing intermediate|Looking in|Installing collected|pip install|apt-get|useradd|WARNING"
)


def load(name: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (DATA / name).read_text().splitlines()]


def replay(records: list[dict[str, Any]]) -> list[BuildProgress]:
    tracker: BuildProgressTracker | None = None
    events: list[BuildProgress] = []
    for record in records:
        now = record["t"]
        if "decide" in record:
            tracker = BuildProgressTracker(record["decide"], record["image"], started=0.0)
            events.append(tracker.decide(now))
            continue
        assert tracker is not None
        if "stage" in record:
            events += tracker.begin(record["stage"], now)
        elif "expect" in record:
            tracker.expect(record["expect"]["stage"], record["expect"]["total"])
        elif "line" in record:
            events += tracker.feed(record["line"], now)
        elif "finish" in record:
            events.append(tracker.finish(now, log_file="/cache/build-logs/x.log"))
    return events


@pytest.mark.parametrize("name", RECORDINGS)
def test_a_recorded_scratch_build_gives_a_handful_of_readable_events(name: str) -> None:
    records = load(name)
    raw_lines = [r["line"] for r in records if "line" in r]
    assert len(raw_lines) > 50  # the recording is real build output, not a summary
    events = replay(records)

    assert 8 <= len(events) <= 25
    assert events[0].kind == "decision"
    assert events[0].message.startswith("build decision 4/4 (scratch): ")
    assert events[-1].kind == "finished"
    assert events[-1].message.endswith("; build log: /cache/build-logs/x.log")
    stages = [e.stage for e in events if e.kind == "stage"]
    assert stages == list(stages_of("scratch"))
    assert [e.stage_number for e in events if e.kind == "stage"] == list(range(1, 8))
    for event in events:
        assert not RAW.search(event.message), event.message
        assert not any(len(line) > 8 and line in event.message for line in raw_lines)
    elapsed = [e.elapsed for e in events]
    assert elapsed == sorted(elapsed)
    assert elapsed[-1] == records[-1]["t"]


def test_the_dependency_count_reaches_the_wheelhouse_size_then_says_installing() -> None:
    events = replay(load("scratch_jupyter.jsonl"))
    counts = [e for e in events if e.stage == "install dependencies"]
    assert counts[0].kind == "stage"
    assert (counts[0].done, counts[0].total, counts[0].unit) == (0, 40, "wheels")
    assert [(e.done, e.detail) for e in counts[1:]] == [(10, ""), (40, "installing")]
    assert counts[-1].message == (
        "scratch build [4/7] install dependencies (40/40 wheels, installing), 19.5 s"
    )
    wheels = [e for e in events if e.stage == "prepare wheels" and e.kind == "count"]
    assert [(e.done, e.total) for e in wheels] == [(1, None), (13, None)]


def tracker(build_from: Any = "scratch", **kwargs: Any) -> BuildProgressTracker:
    return BuildProgressTracker(build_from, "repo:tag", started=100.0, **kwargs)


def test_a_stage_never_goes_back_and_an_optional_one_is_placed_in_order() -> None:
    t = tracker()
    assert [e.stage for e in t.begin("inspect image", 100.0)] == ["inspect image"]
    (system,) = t.begin("install system packages", 101.0)
    assert (system.stage_number, system.stage_count) == (2, 8)
    assert t.feed("0 upgraded, 4 newly installed, 0 to remove and 0 not upgraded.", 102.0) == []
    counted = [e for i in range(4) for e in t.feed(f"Setting up p{i} (1.0) ...", 103.0 + i)]
    assert [(e.done, e.total, e.unit) for e in counted] == [
        (1, 4, "packages"),
        (2, 4, "packages"),
        (3, 4, "packages"),
        (4, 4, "packages"),
    ]
    t.begin("prepare wheels", 110.0)
    # The main build meets the system step again (from the engine's cache): no event.
    assert t.feed("Step 3/12 : RUN apt-get update -q && apt-get install python3", 111.0) == []
    assert t.feed("Step 4/12 : RUN set -eu;     if ! id -u openhands", 112.0)[0].stage == (
        "bootstrap python"
    )
    assert t.begin("inspect image", 113.0) == []
    assert t.stage == "bootstrap python"


def test_a_count_without_a_total_is_reported_ever_more_rarely() -> None:
    t = tracker()
    t.begin("prepare wheels", 100.0)
    times = [100.0 + 0.5 * i for i in range(1, 121)]  # a line every half second for 60 s
    reported = [e.elapsed for now in times for e in t.feed("Collecting x", now)]
    assert reported == [2.0, 6.0, 14.0, 30.0]


def test_counts_with_a_total_are_quarters_at_least_a_second_apart() -> None:
    t = tracker()
    t.expect("install dependencies", 8)
    t.begin("install dependencies", 100.0)
    slow = [e.done for i in range(8) for e in t.feed("Processing ./w.whl", 101.0 + 2 * i)]
    assert slow == [2, 4, 6, 8]
    t2 = tracker()
    t2.expect("install dependencies", 8)
    t2.begin("install dependencies", 100.0)
    fast = [e.done for i in range(8) for e in t2.feed("Processing ./w.whl", 101.0 + 0.1 * i)]
    assert fast == [2]


@pytest.mark.parametrize(
    ("build_from", "forced", "expected"),
    [
        (
            "none",
            False,
            "build decision 1/4 (none): the source-tagged image exists; using repo:tag",
        ),
        (
            "lock",
            False,
            "build decision 2/4 (lock): the lock-tagged image exists: copying the source only;"
            " building repo:tag",
        ),
        (
            "versioned",
            False,
            "build decision 3/4 (versioned): the version-tagged image exists: reinstalling the"
            " dependencies; building repo:tag",
        ),
        ("scratch", True, "build decision 4/4 (scratch): forced rebuild; building repo:tag"),
    ],
)
def test_the_decision_names_its_step(build_from: Any, forced: bool, expected: str) -> None:
    event = tracker(build_from, forced=forced).decide(100.0)
    assert event.message == expected
    assert str(event) == expected


def test_a_lock_build_copies_the_source_and_finishes() -> None:
    t = tracker("lock")
    lines = [
        "Step 1/3 : FROM repo:oh_v1_lock",
        "Step 2/3 : COPY code /openhands_rt/code",
        "Step 3/3 : LABEL org.openhands-rt.version=1",
    ]
    events = [e for i, line in enumerate(lines) for e in t.feed(line, 100.0 + i)]
    events += t.begin("tag", 104.0)
    assert [(e.stage, e.stage_number, e.stage_count) for e in events] == [
        ("copy source", 1, 3),
        ("finish image", 2, 3),
        ("tag", 3, 3),
    ]
    done = t.finish(104.5, log_file="/l.log")
    assert done.message == "built repo:tag from lock in 4.5 s; build log: /l.log"


def test_stages_are_in_build_order() -> None:
    for build_from in ("none", "lock", "versioned", "scratch"):
        plan = stages_of(build_from)
        assert list(plan) == sorted(plan, key=STAGES.index)
