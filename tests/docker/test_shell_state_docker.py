"""The shell's state read from one sandbox and restored in a second one, through the run
directory's state file: in build and mount mode, under runc and runsc."""

from __future__ import annotations

from pathlib import Path

import pytest
from support import ConfigFactory, session_id, sh

from events import EventStream
from events.control import ShellState
from openhands_rt import DockerRuntime
from openhands_rt.docker import rundir

pytestmark = [pytest.mark.docker, pytest.mark.timeout(600)]

VALUE = "two words\nand a line, 'quotes' and é"


async def test_a_second_sandbox_starts_in_the_first_ones_shell_state(
    make_config: ConfigFactory,
    oci_runtime: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # One workspace for both, as a snapshot carries the workspace over.
    workspace = tmp_path / "ws"
    workspace.mkdir()
    config = make_config(oci_runtime=oci_runtime, workspace_dir=str(workspace))
    async with (
        EventStream() as stream,
        DockerRuntime(stream, config, session_id=session_id()) as rt,
    ):
        await sh(rt, "mkdir -p /workspace/deep/dir && cd /workspace/deep/dir")
        await sh(rt, "export X=$'two words\\nand a line, \\'quotes\\' and \\u00e9' EMPTY=")
        await sh(rt, "unset PAGER")
        events_before = len(list(stream.iter_events()))
        state = await rt.shell_state()
        assert len(list(stream.iter_events())) == events_before  # not an event
    assert state.cwd == "/workspace/deep/dir"
    assert state.env["X"] == VALUE
    assert state.env["EMPTY"] == ""
    assert "PAGER" not in state.env

    written: list[str] = []
    make_run_dir = rundir.make_run_dir

    def make_run_dir_with_state(session: str, api_key: str) -> str:
        directory = make_run_dir(session, api_key)
        written.append(rundir.write_shell_state(directory, state))
        return directory

    monkeypatch.setattr(rundir, "make_run_dir", make_run_dir_with_state)
    async with (
        EventStream() as stream2,
        DockerRuntime(stream2, config, session_id=session_id()) as rt2,
    ):
        assert written
        assert (await sh(rt2, "pwd")).content == "/workspace/deep/dir"
        assert (await sh(rt2, 'echo "$X"')).content == VALUE
        assert (await sh(rt2, "bash -c 'echo \"$X\"'")).content == VALUE
        assert (await sh(rt2, 'echo "[${EMPTY-unset}] ${PAGER-unset}"')).content == "[] unset"
        again = await rt2.shell_state()
    assert again.cwd == state.cwd
    assert again.env["X"] == VALUE


async def test_a_state_whose_cwd_is_gone_starts_in_the_workspace(
    make_config: ConfigFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = ShellState(cwd="/nowhere/at/all", env={"PATH": "/usr/bin:/bin", "X": "1"})
    make_run_dir = rundir.make_run_dir

    def make_run_dir_with_state(session: str, api_key: str) -> str:
        directory = make_run_dir(session, api_key)
        rundir.write_shell_state(directory, state)
        return directory

    monkeypatch.setattr(rundir, "make_run_dir", make_run_dir_with_state)
    async with (
        EventStream() as stream,
        DockerRuntime(stream, make_config(), session_id=session_id()) as rt,
    ):
        assert (await sh(rt, "pwd; echo $X")).content == "/workspace\n1"
