"""The command line's build progress display (rich), fed real recorded progress."""

from __future__ import annotations

import io
import re

from rich.console import Console
from test_build_progress import load, replay

from events import EventStream, RuntimeStatus, RuntimeStatusObservation
from openhands_rt.progress_view import BuildProgressView, BuildStatusView

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def test_the_build_view_draws_a_line_per_stage_and_names_the_log() -> None:
    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=False, color_system=None)
    events = replay(load("scratch_jupyter.jsonl"))
    with BuildProgressView(console) as view:
        for event in events:
            view.update(event)
    text = out.getvalue()
    lines = text.splitlines()
    assert lines[0] == events[0].message
    assert lines[-1] == events[-1].message
    stages = [re.match(r"^✓ \[\d/7\] ([a-z]+(?: [a-z]+)*)", line) for line in lines]
    assert [match.group(1) for match in stages if match is not None] == [
        "inspect image",
        "prepare wheels",
        "bootstrap python",
        "install dependencies",
        "copy source",
        "finish image",
        "tag",
    ]
    assert "40/40 wheels" in text
    assert "Processing" not in text
    assert "Step " not in text


async def test_the_status_view_follows_building_statuses_until_the_sandbox_starts() -> None:
    out = io.StringIO()
    console = Console(file=out, width=120, force_terminal=True, color_system=None)
    stream = EventStream()
    async with BuildStatusView(stream, console):
        for status, message in [
            (RuntimeStatus.STARTING, "starting sandbox s1"),
            (RuntimeStatus.BUILDING, "resolving the runtime image for base:1"),
            (RuntimeStatus.BUILDING, "scratch build [3/7] bootstrap python, 1.2 s"),
            (RuntimeStatus.STARTING, "creating the container"),
            (RuntimeStatus.BUILDING, "a status after the build: not shown"),
        ]:
            stream.append(RuntimeStatusObservation(status, message))
        await stream.aclose()  # delivers every event to the view
    text = ANSI.sub("", out.getvalue())
    assert "scratch build [3/7] bootstrap python, 1.2 s" in text
    assert "starting sandbox" not in text
    assert "creating the container" not in text
    assert "not shown" not in text
