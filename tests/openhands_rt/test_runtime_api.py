"""LocalRuntime behaves as asyncio users expect (issue 14): session ownership, cancellation."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from events import CmdOutputObservation, CmdRunAction, EventStream
from openhands_rt import LocalRuntime, SandboxConfig, SandboxError, SessionInUseError


def config(workspace: Path) -> SandboxConfig:
    return SandboxConfig(workspace_dir=str(workspace), no_change_timeout=5.0, timeout=60.0)


async def test_a_live_session_id_is_refused_in_this_process(tmp_path: Path) -> None:
    async with (
        EventStream() as stream1,
        EventStream() as stream2,
        LocalRuntime(stream1, config(tmp_path), session_id="owned") as rt1,
    ):
        for stream in (stream2, stream1):
            second = LocalRuntime(stream, config(tmp_path), session_id="owned")
            with pytest.raises(SessionInUseError, match="'owned' is in use") as caught:
                await asyncio.wait_for(second.connect(), 10)
            assert isinstance(caught.value, SandboxError)
            assert second.process is None  # refused before starting anything
            await second.aclose()
        obs = await asyncio.wait_for(rt1.run(CmdRunAction("echo mine")), 20)
        assert isinstance(obs, CmdOutputObservation)
        assert obs.content.strip() == "mine"
        # One observation per action: nobody else answered on stream1.
        answers = [e for e in stream1.iter_events() if e.cause == obs.cause]
        assert answers == [obs]
    # Closed: the id is free again.
    async with (
        EventStream() as stream3,
        LocalRuntime(stream3, config(tmp_path), session_id="owned"),
    ):
        pass
