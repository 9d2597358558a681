"""Snapshots without an engine: ids, where they live, the wait for the sandbox to be idle,
the shell's state file, the command line."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from events import (
    CmdOutputChunk,
    CmdOutputObservation,
    CmdRunAction,
    ErrorObservation,
    EventSource,
    EventStream,
    FileReadAction,
    RuntimeStatus,
    RuntimeStatusObservation,
)
from openhands_rt import SandboxError
from openhands_rt.cli import build_parser
from openhands_rt.docker.snapshot import (
    ShellSnapshot,
    decode_shell,
    encode_shell,
    unanswered,
    until_idle,
)
from openhands_rt.snapshots import (
    new_snapshot_id,
    snapshot_dir,
    snapshot_image,
    snapshots_root,
)

AGENT, ENV = EventSource.AGENT, EventSource.ENVIRONMENT


def test_snapshot_ids_are_image_tags_and_distinct() -> None:
    ids = {new_snapshot_id() for _ in range(100)}
    assert len(ids) == 100
    for snapshot_id in ids:
        assert snapshot_image(snapshot_id) == f"openhands-rt/snapshot:{snapshot_id}"


@pytest.mark.parametrize("bad", ["", "snap-", "snap-XYZ", "../snap-00", "snap-00/..", "other"])
def test_a_name_that_is_no_snapshot_id_is_refused(bad: str) -> None:
    with pytest.raises(SandboxError, match="not a snapshot id"):
        snapshot_image(bad)
    with pytest.raises(SandboxError, match="not a snapshot id"):
        snapshot_dir(bad)


def test_snapshots_live_under_the_data_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("OPENHANDS_RT_DATA_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert snapshots_root() == tmp_path / "xdg" / "openhands-rt" / "snapshots"
    monkeypatch.setenv("OPENHANDS_RT_DATA_DIR", str(tmp_path / "own"))
    assert snapshot_dir("snap-0a") == tmp_path / "own" / "snapshots" / "snap-0a"


def test_unanswered_runnable_actions() -> None:
    events = [
        CmdRunAction("sleep 1", id=0, source=AGENT),
        CmdOutputChunk(0, 0, "x", id=1, source=ENV),
        FileReadAction("/a", id=2, source=AGENT),
        ErrorObservation("no such file", id=3, cause=2, source=ENV),
        # The environment's own actions (an interrupt) are not the runtime's to answer.
        CmdRunAction("C-c", is_input=True, id=4, source=ENV),
        RuntimeStatusObservation(RuntimeStatus.READY, id=5, source=ENV),
    ]
    assert unanswered(events) == {0}
    answer = CmdOutputObservation("x", "sleep 1", id=6, cause=0, source=ENV)
    assert unanswered([answer], unanswered(events)) == set()


@given(st.lists(st.booleans(), max_size=12))
def test_unanswered_is_the_actions_without_an_observation(answered: list[bool]) -> None:
    events: list[CmdRunAction | CmdOutputObservation] = []
    for number, is_answered in enumerate(answered):
        events.append(CmdRunAction(f"echo {number}", id=len(events), source=AGENT))
        if is_answered:
            action_id = events[-1].id
            events.append(CmdOutputObservation("", "", id=len(events), cause=action_id))
    expected = {e.id for e in events if isinstance(e, CmdRunAction)} - {
        e.cause for e in events if isinstance(e, CmdOutputObservation)
    }
    assert unanswered(events) == expected


async def test_until_idle_waits_for_the_last_answer() -> None:
    async with EventStream() as stream:
        assert await until_idle(stream) == -1
        first = stream.append(CmdRunAction("a"), source=AGENT)
        second = stream.append(CmdRunAction("b"), source=AGENT)
        waiting = asyncio.ensure_future(until_idle(stream))
        await asyncio.sleep(0)
        stream.append(CmdOutputObservation("", "a", cause=first.id), source=ENV)
        await asyncio.sleep(0)
        assert not waiting.done()
        last = stream.append(CmdOutputObservation("", "b", cause=second.id), source=ENV)
        assert await waiting == last.id
        assert await until_idle(stream) == last.id


@given(
    st.text(min_size=1),
    st.dictionaries(st.text(min_size=1).filter(lambda k: "=" not in k), st.text()),
)
def test_the_shell_state_file_round_trips(cwd: str, env: dict[str, str]) -> None:
    state = ShellSnapshot(cwd=cwd, env=env)
    assert decode_shell(encode_shell(state)) == state


def test_a_damaged_shell_state_file_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="shell state"):
        decode_shell(b'{"cwd": 3}')


def test_gc_takes_snapshots_and_labels() -> None:
    args = build_parser().parse_args(["gc", "--snapshots", "--label", "a=b"])
    assert (args.snapshots, args.label) == (True, ["a=b"])
    assert build_parser().parse_args(["gc"]).snapshots is False
    assert build_parser().parse_args(["snapshots"]).label is None
