"""SandboxPool against a real engine: hand-over, freshness, waiting, failures, no leaks."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import textwrap
import uuid
from pathlib import Path

import anyio
import pytest
from support import ConfigFactory, session_id, sh

from events import (
    CmdOutputObservation,
    CmdRunAction,
    EventStream,
    RuntimeStatus,
    RuntimeStatusObservation,
)
from openhands_rt import SandboxPool, SandboxStartError, SessionInUseError
from openhands_rt.docker_client import open_docker
from openhands_rt.docker_runtime import CONTAINER_PREFIX
from openhands_rt.sandboxes import LABEL_POOL, list_sandboxes, reap_orphans

pytestmark = [pytest.mark.docker, pytest.mark.timeout(600)]

FILL = 180.0  # seconds a pool may take to fill on a loaded 2-core machine


def statuses(stream: EventStream) -> list[RuntimeStatus]:
    return [e.status for e in stream.iter_events() if isinstance(e, RuntimeStatusObservation)]


async def pool_containers(pool_id: str) -> list[str]:
    async with open_docker() as docker:
        return [s.name for s in await list_sandboxes(docker, labels={LABEL_POOL: pool_id})]


async def test_acquire_hands_over_fresh_isolated_sandboxes(
    make_config: ConfigFactory, oci_runtime: str, tmp_path: Path
) -> None:
    config = make_config(oci_runtime=oci_runtime, workspace_dir=str(tmp_path / "pool"))
    async with SandboxPool(config, size=2) as pool:
        with anyio.fail_after(FILL):
            await pool.wait_ready()
        assert pool.ready == 2
        first, second = EventStream(), EventStream()
        name_a, name_b = session_id(), session_id()
        async with (
            first,
            second,
            pool.acquire(first, session_id=name_a) as a,
            pool.acquire(second, session_id=name_b) as b,
        ):
            # Handed over: its ready status is on the caller's stream, nothing before it.
            assert statuses(first) == [RuntimeStatus.READY]
            assert a.stream is first
            assert a.session_id == name_a
            assert a.container_name == CONTAINER_PREFIX + name_a
            async with open_docker() as docker:
                info = await docker.containers.get(a.container_name)
                assert info["Config"]["Labels"][LABEL_POOL] == pool.pool_id
                listed = {s.name: s for s in await list_sandboxes(docker)}
            assert listed[a.container_name].session_id == name_a
            # The pool's default channel: the run directory's socket, no published port.
            assert not info["HostConfig"].get("PortBindings")
            assert a.endpoint is not None
            assert a.endpoint.unix_socket is not None
            # Each its own sandbox, its own workspace (a fresh subdirectory).
            await sh(a, "echo mine > /workspace/a.txt && echo t > /tmp/a && export ONLY_A=1")
            # (test -e, not ls: this gVisor answers coreutils' statx with EINVAL.)
            probe = "for f in /workspace/a.txt /tmp/a; do test -e $f && echo has $f; done; "
            seen = await sh(b, probe + "echo ${ONLY_A:-unset}")
            assert seen.content.split() == ["unset"]
            mine = await sh(a, probe + "echo ${ONLY_A:-unset}")
            assert mine.content.split() == ["has", "/workspace/a.txt", "has", "/tmp/a", "1"]
            made = [p for p in (tmp_path / "pool").iterdir() if (p / "a.txt").exists()]
            assert len(made) == 1
            assert made[0].name.startswith(f"pool-{pool.pool_id}-")
            # The same session id cannot be handed out twice.
            with pytest.raises(SessionInUseError):
                async with pool.acquire(EventStream(), session_id=name_a):
                    pass
        # Leaving acquire() removed each sandbox and its workspace.
        assert statuses(first)[-1] is RuntimeStatus.CLOSED
        assert not made[0].exists()
        assert not any(
            n in (CONTAINER_PREFIX + name_a, CONTAINER_PREFIX + name_b)
            for n in await pool_containers(pool.pool_id)
        )
        # The pool refills; the next sandbox is a new one.
        with anyio.fail_after(FILL):
            await pool.wait_ready()
        async with EventStream() as third, pool.acquire(third) as c:
            fresh = await sh(c, probe + "echo ${ONLY_A:-unset}")
            assert fresh.content.split() == ["unset"]
    assert await pool_containers(pool.pool_id) == []


async def test_an_empty_pool_makes_acquire_wait_for_the_next_start(
    make_config: ConfigFactory,
) -> None:
    async with SandboxPool(make_config(), size=1) as pool:

        async def use(results: list[str]) -> None:
            async with EventStream() as stream, pool.acquire(stream) as rt:
                obs = await sh(rt, "hostname")
                results.append(obs.content.strip())

        results: list[str] = []
        async with anyio.create_task_group() as group:
            for _ in range(3):
                group.start_soon(use, results)
        assert len(results) == 3
        assert len(set(results)) == 3, "a sandbox was handed out twice"
        assert pool.waits >= 2
    assert await pool_containers(pool.pool_id) == []


async def test_a_waiting_sandbox_that_dies_is_replaced(make_config: ConfigFactory) -> None:
    async with SandboxPool(make_config(), size=2) as pool:
        with anyio.fail_after(FILL):
            await pool.wait_ready()
        victim = (await pool_containers(pool.pool_id))[0]
        async with open_docker() as docker:
            await docker.containers.container(victim).kill()
        with anyio.fail_after(FILL):
            while victim in await pool_containers(pool.pool_id):  # noqa: ASYNC110
                await anyio.sleep(0.1)
            await pool.wait_ready()
        async with (
            EventStream() as s1,
            EventStream() as s2,
            pool.acquire(s1) as a,
            pool.acquire(s2) as b,
        ):
            assert (await sh(a, "echo a")).content.strip() == "a"
            assert (await sh(b, "echo b")).content.strip() == "b"
            assert victim not in (a.container_name, b.container_name)


async def test_failed_starts_are_retried_with_backoff_until_they_succeed(
    make_config: ConfigFactory, runtime_mode: str, runtime_image: str, base_image: str
) -> None:
    # The image is missing at first: starts fail, are reported and retried; once it
    # exists, the caller who waited all along gets a sandbox.
    missing = f"openhands-rt-test/missing:{uuid.uuid4().hex[:8]}"
    image_field = "base_container_image" if runtime_mode == "mount" else "runtime_container_image"
    existing = base_image if runtime_mode == "mount" else runtime_image
    config = make_config(**{image_field: missing})
    async with open_docker() as docker, SandboxPool(config, size=1, max_failures=100) as pool:
        try:
            async with anyio.create_task_group() as group:

                async def tag_when_failed_twice() -> None:
                    while pool.failures < 2:  # noqa: ASYNC110 (the pool has no failure event)
                        await anyio.sleep(0.1)
                    repo, tag = missing.split(":")
                    await docker.images.tag(existing, repo=repo, tag=tag)

                group.start_soon(tag_when_failed_twice)
                async with EventStream() as stream, pool.acquire(stream) as rt:
                    obs = await sh(rt, "echo recovered")
                    assert obs.content.strip() == "recovered"
            assert pool.failures >= 2
            assert pool.last_error is not None
            assert missing in str(pool.last_error)
        finally:
            await docker.images.delete(missing)


async def test_acquire_fails_after_max_failures_and_says_why(make_config: ConfigFactory) -> None:
    config = make_config(runtime_container_image="openhands-rt-test/never:there")
    async with SandboxPool(config, size=1, max_failures=2) as pool, EventStream() as stream:
        with pytest.raises(SandboxStartError, match="2 failures in a row") as caught:
            async with pool.acquire(stream):
                pass
        assert "never:there" in str(caught.value)
        assert pool.failures >= 2


async def test_closing_the_pool_removes_waiting_handed_out_and_starting_sandboxes(
    make_config: ConfigFactory,
) -> None:
    pool = SandboxPool(make_config(), size=2)
    await pool.start()
    with anyio.fail_after(FILL):
        await pool.wait_ready(1)
    stream = EventStream()
    held = pool.acquire(stream)
    rt = await held.__aenter__()
    name = rt.container_name
    assert await pool_containers(pool.pool_id)  # waiting, handed out, maybe starting
    await pool.aclose()
    assert await pool_containers(pool.pool_id) == []
    assert statuses(stream)[-1] is RuntimeStatus.CLOSED
    assert name not in await pool_containers(pool.pool_id)
    await held.__aexit__(None, None, None)  # leaving afterwards is harmless
    await stream.aclose()
    with pytest.raises(Exception, match="closed"):
        async with pool.acquire(EventStream()):
            pass


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from events import EventStream
    from openhands_rt import SandboxConfig, SandboxPool

    image, label_key, label_value, session, workspace = sys.argv[1:6]

    async def main() -> None:
        config = SandboxConfig(
            runtime_container_image=image, labels={label_key: label_value}, workspace_dir=workspace
        )
        async with SandboxPool(config, size=2) as pool:
            await pool.wait_ready()
            async with pool.acquire(EventStream(), session_id=session):
                await pool.wait_ready()  # refilled: no start under way when we are killed
                print("POOL", pool.pool_id, flush=True)
                await asyncio.sleep(3600)

    asyncio.run(main())
    """
)


async def test_a_sigkilled_owner_leaves_only_what_gc_removes(
    runtime_image: str, test_labels: dict[str, str], tmp_path: Path
) -> None:
    ((label_key, label_value),) = test_labels.items()
    handed_out = session_id()
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        runtime_image,
        label_key,
        label_value,
        handed_out,
        str(tmp_path / "pool"),
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None
    try:
        line = (await asyncio.wait_for(child.stdout.readline(), FILL)).decode().split()
        assert line[:1] == ["POOL"], line
        pool_id = line[1]
        child.send_signal(signal.SIGKILL)
        await child.wait()
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    async with open_docker() as docker:
        left = await list_sandboxes(docker, labels={LABEL_POOL: pool_id})
        # One handed out, two waiting.
        assert len(left) == 3
        assert CONTAINER_PREFIX + handed_out in {s.name for s in left}
        assert all(s.orphan for s in left)
        host_dirs = [d for s in left for d in s.host_dirs]
        # Each one's run directory, and the workspace subdirectory the pool made for it.
        workspaces = sorted((tmp_path / "pool").iterdir())
        assert len(workspaces) == 3
        assert {str(w) for w in workspaces} <= set(host_dirs)
        removed = await reap_orphans(docker, labels=test_labels)
    assert {s.name for s in left} <= set(removed)
    assert await pool_containers(pool_id) == []
    assert not any(os.path.exists(d) for d in host_dirs)
    assert list((tmp_path / "pool").iterdir()) == []


async def test_pools_for_two_configs_take_turns(make_config: ConfigFactory) -> None:
    # A big pool started first must not fill up before a small one gets its sandbox:
    # each pool queues at most max_starting (the CPU count) starts at the shared gate.
    big_config = make_config(env={"POOL": "big"})
    small_config = make_config(env={"POOL": "small"})
    big_size = 2 * (os.cpu_count() or 1) + 2
    async with (
        SandboxPool(big_config, size=big_size) as big,
        SandboxPool(small_config, size=1) as small,
        EventStream() as stream,
    ):
        async with small.acquire(stream) as rt:
            assert big.ready < big_size
            obs = await rt.run(CmdRunAction("echo $POOL"))
            assert isinstance(obs, CmdOutputObservation)
            assert obs.content.strip() == "small"
        with anyio.fail_after(FILL * 2):
            await big.wait_ready()
