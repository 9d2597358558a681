"""Snapshots against a real engine: capture, a sandbox started from one, removal, gc.

Each test runs in both runtime modes (``make_config``); the restore test also
under gVisor (``runsc``) where the engine has it. Snapshot directories go to
the test's own data directory (``OPENHANDS_RT_DATA_DIR``).
"""

from __future__ import annotations

import os
from pathlib import Path

import aiodocker
import pytest
from support import OCI_RUNTIMES, ConfigFactory, cli, session_id, sh

from events import EventSource, EventStream, SnapshotObservation
from openhands_rt import DockerRuntime, SandboxError, fork
from openhands_rt.forking import ForkReport
from openhands_rt.snapshots import (
    SNAPSHOT_REPOSITORY,
    list_snapshots,
    remove_snapshot,
    snapshot_dir,
    snapshot_info,
)

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]


@pytest.fixture(autouse=True)
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Snapshot directories of this test, apart from the user's."""
    root = tmp_path / "data"
    monkeypatch.setenv("OPENHANDS_RT_DATA_DIR", str(root))
    return root


async def image_exists(docker: aiodocker.Docker, image: str) -> bool:
    try:
        await docker.images.inspect(image)
    except aiodocker.DockerError as exc:
        if exc.status == 404:
            return False
        raise
    return True


SETUP = (
    "mkdir -p /workspace/src && cd /workspace/src"
    " && printf 'inside\\n' > in.txt && chmod 640 in.txt"
    " && head -c 3000000 /dev/urandom > blob.bin"
    " && printf 'home\\n' > ~/notes.txt && printf 'tmp\\n' > /tmp/y"
    " && export SNAP_VAR='two words' && cd /workspace/src"
)
CHECK = (
    "find /workspace/src -type f -printf '%f %m %u %s\\n' | sort;"
    " cat /workspace/src/in.txt ~/notes.txt /etc/snapfoo;"
    " sha256sum /workspace/src/blob.bin | cut -c1-16"
)


@pytest.mark.parametrize("oci_runtime", OCI_RUNTIMES)
async def test_a_sandbox_started_from_a_snapshot_has_its_files(
    make_config: ConfigFactory, tmp_path: Path, docker: aiodocker.Docker, oci_runtime: str
) -> None:
    source_ws, restored_ws = tmp_path / "ws1", tmp_path / "ws2"
    config = make_config(workspace_dir=str(source_ws), oci_runtime=oci_runtime)
    async with (
        EventStream() as stream,
        DockerRuntime(stream, config, session_id=session_id()) as rt,
    ):
        await sh(rt, SETUP)
        # /etc is root's: written as root through the engine, as a package install would.
        exec_ = await rt.container.exec(["sh", "-c", "echo etc > /etc/snapfoo"], user="0")
        async with exec_.start(detach=False) as out:
            while await out.read_out() is not None:
                pass
        before = await sh(rt, CHECK)
        snap = await rt.snapshot()
        assert isinstance(snap, SnapshotObservation)
        assert (snap.source, snap.cause, snap.id) == (
            EventSource.ENVIRONMENT,
            None,
            len(stream) - 1,
        )
        assert stream.get(snap.id) == snap
        # The source goes on, untouched.
        again = await sh(rt, CHECK + "; pwd; echo $SNAP_VAR")
        assert again.content.startswith(before.content.rstrip())
        assert again.content.rstrip().endswith("/workspace/src\ntwo words")
        await sh(rt, "echo later > /workspace/src/in.txt")  # not in the snapshot
    info = await snapshot_info(snap.snapshot_id, docker=docker)
    assert info.event_id == snap.id - 1
    assert info.runtime_mode == config.runtime_mode

    restored_config = make_config(workspace_dir=str(restored_ws), oci_runtime=oci_runtime)
    async with (
        EventStream() as stream2,
        DockerRuntime(
            stream2, restored_config, session_id=session_id(), snapshot=snap.snapshot_id
        ) as rt2,
    ):
        after = await sh(rt2, CHECK)
        assert after.content == before.content
        assert "in.txt 640 openhands 7" in after.content
        tmp = await sh(rt2, "cat /tmp/y")
        if oci_runtime == "runsc":
            # gVisor mounts a tmpfs of its own at /tmp (when the image's /tmp is empty):
            # in the sandbox's memory, out of any commit's reach.
            assert tmp.exit_code == 1
        else:
            assert tmp.content.strip() == "tmp"
    assert (restored_ws / "src" / "in.txt").read_text() == "inside\n"
    assert (source_ws / "src" / "in.txt").read_text() == "later\n"
    await remove_snapshot(snap.snapshot_id)
    assert not await image_exists(docker, info.image)
    assert not snapshot_dir(snap.snapshot_id).exists()


async def test_a_sandbox_started_from_a_snapshot_has_its_shells_cwd_and_env(
    make_config: ConfigFactory, tmp_path: Path
) -> None:
    config = make_config(workspace_dir=str(tmp_path / "ws"))
    async with (
        EventStream() as stream,
        DockerRuntime(stream, config, session_id=session_id()) as rt,
    ):
        await sh(rt, "mkdir -p /workspace/a/b && cd /workspace/a/b && export SNAP_VAR='two words'")
        await sh(rt, "export SNAP_EMPTY= SNAP_LINES=$'x\\ny'; unset HOSTTYPE")
        snap = await rt.snapshot()
        assert "without the shell's state" not in snap.content
        await sh(rt, "cd /; export SNAP_VAR=changed")  # after the snapshot: not in it
    restored = make_config(workspace_dir=str(tmp_path / "ws2"))
    async with (
        EventStream() as stream2,
        DockerRuntime(stream2, restored, session_id=session_id(), snapshot=snap.snapshot_id) as rt2,
    ):
        state = await sh(
            rt2,
            'pwd; echo "$SNAP_VAR"; bash -c \'echo "$SNAP_VAR"\';'
            ' echo "${SNAP_EMPTY-unset}|$SNAP_LINES"',
        )
        assert state.content.split("\n")[:5] == [
            "/workspace/a/b",
            "two words",
            "two words",
            "|x",
            "y",
        ]
    await remove_snapshot(snap.snapshot_id)


async def test_a_read_only_root_sandbox_is_not_snapshotted(
    make_config: ConfigFactory, docker: aiodocker.Docker
) -> None:
    config = make_config(read_only_root=True)
    sid = session_id()
    async with EventStream() as stream, DockerRuntime(stream, config, session_id=sid) as rt:
        with pytest.raises(SandboxError, match="read_only_root"):
            await rt.snapshot()
        assert (await sh(rt, "echo still here")).content.strip() == "still here"
    assert await list_snapshots(docker=docker, session_id=sid) == []


async def test_a_missing_snapshot_is_a_clear_error(make_config: ConfigFactory) -> None:
    async with EventStream() as stream:
        rt = DockerRuntime(stream, make_config(), session_id=session_id(), snapshot="snap-00")
        with pytest.raises(SandboxError, match="snapshot snap-00 does not exist"):
            await rt.connect()
        await rt.aclose()


async def test_a_snapshot_of_a_sandbox_without_a_workspace_dir_and_a_background_process(
    make_config: ConfigFactory, docker: aiodocker.Docker, tmp_path: Path
) -> None:
    config = make_config()
    async with (
        EventStream() as stream,
        DockerRuntime(stream, config, session_id=session_id()) as rt,
    ):
        await sh(rt, "sleep 600 & echo $! > /tmp/bg.pid; echo kept > /workspace/w.txt")
        snap = await rt.snapshot()
        # The background process was frozen, not killed: it runs on.
        alive = await sh(rt, "kill -0 $(cat /tmp/bg.pid) && echo alive")
        assert alive.content.strip() == "alive"
    # The workspace was the container's own; the new sandbox's is a host directory.
    restored = make_config(workspace_dir=str(tmp_path / "ws"))
    async with (
        EventStream() as stream2,
        DockerRuntime(stream2, restored, session_id=session_id(), snapshot=snap.snapshot_id) as rt2,
    ):
        out = await sh(rt2, "cat /workspace/w.txt; kill -0 $(cat /tmp/bg.pid) || echo gone")
        # Files come back; processes do not.
        assert out.content.split("\n")[0] == "kept"
        assert "gone" in out.content
    assert (tmp_path / "ws" / "w.txt").read_text() == "kept\n"
    listed = [
        s.snapshot_id for s in await list_snapshots(docker=docker, session_id=snap_session(snap))
    ]
    assert snap.snapshot_id in listed
    await remove_snapshot(snap.snapshot_id)
    with pytest.raises(SandboxError, match="does not exist"):
        await snapshot_info(snap.snapshot_id, docker=docker)


def snap_session(snap: SnapshotObservation) -> str:
    # "snapshot <id> of sandbox <session> after event <n>"
    return snap.content.split(" of sandbox ")[1].split()[0]


async def test_gc_snapshots_removes_every_snapshot_and_plain_gc_none(
    make_config: ConfigFactory,
    docker: aiodocker.Docker,
    data_dir: Path,
    test_labels: dict[str, str],
) -> None:
    # Only this run's: the engine is shared with other test runs.
    (label,) = (f"--label={key}={value}" for key, value in test_labels.items())
    config = make_config()
    sid = session_id()
    async with EventStream() as stream, DockerRuntime(stream, config, session_id=sid) as rt:
        first = await rt.snapshot()
        second = await rt.snapshot()
    debris = data_dir / "snapshots" / "snap-0123"
    debris.mkdir()
    os.utime(debris, (0, 0))  # old: not a snapshot being made
    ids = {first.snapshot_id, second.snapshot_id}
    assert ids <= {s.snapshot_id for s in await list_snapshots(docker=docker, session_id=sid)}
    # A snapshot outlives its sandbox: gc without --snapshots leaves it.
    assert (await cli("gc", label))[0] == 0
    assert ids <= {s.snapshot_id for s in await list_snapshots(docker=docker, session_id=sid)}
    code, out, _ = await cli("snapshots", label)
    assert code == 0
    assert first.snapshot_id in out
    assert sid in out
    code, out, _ = await cli("gc", "--snapshots", label)
    assert code == 0, out
    assert f"removed snapshot {first.snapshot_id}" in out
    assert not ids & {s.snapshot_id for s in await list_snapshots(docker=docker)}
    for snapshot_id in ids:
        assert not await image_exists(docker, f"{SNAPSHOT_REPOSITORY}:{snapshot_id}")
    assert not any((data_dir / "snapshots").iterdir())


async def test_remove_snapshot_refuses_one_a_sandbox_uses(
    make_config: ConfigFactory, docker: aiodocker.Docker
) -> None:
    config = make_config()
    async with (
        EventStream() as stream,
        DockerRuntime(stream, config, session_id=session_id()) as rt,
    ):
        snap = await rt.snapshot()
    async with (
        EventStream() as stream2,
        DockerRuntime(stream2, config, session_id=session_id(), snapshot=snap.snapshot_id),
    ):
        with pytest.raises(SandboxError, match="in use"):
            await remove_snapshot(snap.snapshot_id)
    await remove_snapshot(snap.snapshot_id)
    assert not await image_exists(docker, f"{SNAPSHOT_REPOSITORY}:{snap.snapshot_id}")


async def test_a_fork_past_a_snapshot_starts_from_it(
    make_config: ConfigFactory, tmp_path: Path, docker: aiodocker.Docker
) -> None:
    config = make_config()
    log = tmp_path / "source.log"
    async with (
        EventStream(log_path=log) as stream,
        DockerRuntime(stream, config, session_id=session_id()) as rt,
    ):
        # Random: re-executing it would give another value (and a divergence).
        await sh(rt, "head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n' > ~/rand.txt")
        snap = await rt.snapshot()
        await sh(rt, "echo after >> /workspace/after.txt")
        source = await sh(rt, "cat ~/rand.txt /workspace/after.txt")
        at = len(stream) - 1
    reports: list[ForkReport] = []
    async with fork(
        log, at_event=at, config=config, session_id=session_id(), on_report=reports.append
    ) as forked:
        out = await sh(forked, "cat ~/rand.txt /workspace/after.txt")
        assert out.content == source.content
    (report,) = reports
    assert report.snapshot_id == snap.snapshot_id
    # Only what followed the snapshot ran again: the echo and the cat.
    assert (report.executed, report.diverged) == (2, 0)
    # Before the snapshot's event, the fork starts fresh and re-executes (and differs).
    reports.clear()
    async with fork(log, at_event=snap.id - 1, config=config, on_report=reports.append) as early:
        assert (await sh(early, "test -e /workspace/after.txt || echo absent")).content.strip() == (
            "absent"
        )
    assert reports[0].snapshot_id is None
    await remove_snapshot(snap.snapshot_id, docker=docker)
