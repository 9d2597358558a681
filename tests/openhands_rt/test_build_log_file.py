"""The raw build log file under the cache directory."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from openhands_rt.image.logfile import KEEP_LOGS, log_file_name, open_build_log


def test_log_file_names_sort_by_time_and_are_safe() -> None:
    name = log_file_name(
        "nikolaik/python-nodejs:python3.12@sha256:ab", utc=time.gmtime(0), token="a1b2c3"
    )
    assert name == "19700101T000000Z-nikolaik_python-nodejs_python3.12_sha256_ab-a1b2c3.log"
    later = log_file_name("b", utc=time.gmtime(60), token="000000")
    assert sorted([later, name]) == [name, later]


async def test_the_log_is_made_on_the_first_line_under_the_cache_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENHANDS_RT_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    async with open_build_log("base:1") as log:
        assert log.path.parent == tmp_path / "openhands-rt" / "build-logs"
        assert not log.opened
        assert not log.path.exists()
        for i in range(40):
            await log.write(f"line {i}")
        assert log.opened
        assert list(log.tail) == [f"line {i}" for i in range(10, 40)]
    assert log.path.read_text() == "".join(f"line {i}\n" for i in range(40))
    await log.write("after close")  # ignored
    assert log.path.read_text().count("\n") == 40


async def test_nothing_written_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENHANDS_RT_CACHE_DIR", str(tmp_path))
    async with open_build_log("base:1") as log:
        pass
    assert not log.path.exists()
    assert not (tmp_path / "build-logs").exists()


async def test_only_the_newest_logs_are_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENHANDS_RT_CACHE_DIR", str(tmp_path))
    directory = tmp_path / "build-logs"
    directory.mkdir()
    old = [directory / f"1970010{i // 10}T0000{i % 10}0Z-x-000000.log" for i in range(KEEP_LOGS)]
    for path in old:
        path.write_text("old\n")
    async with open_build_log("base:1") as log:
        await log.write("new")
    kept = sorted(directory.glob("*.log"))
    assert len(kept) == KEEP_LOGS
    assert kept[-1] == log.path
    assert kept[:-1] == old[1:]
