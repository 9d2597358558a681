"""DockerRuntime against a real engine: lifecycle, isolation, limits, concurrency.

The isolation suite runs under runc and under gVisor (``runsc``) when the
engine has it registered (``.ci/run`` registers it, so in CI both run). The
tests that build their runtime with ``make_runtime`` run on Swarm too
(tests/swarm/test_docker_suite.py); what they check of the container itself is
checked for ``DockerRuntime`` only.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket
import stat
import sys
import tempfile
import time
from pathlib import Path

import aiodocker
import anyio
import pytest
from support import (
    ConfigFactory,
    RuntimeFactory,
    SandboxGone,
    container_exists,
    session_id,
    sh,
)

from events import (
    CmdOutputObservation,
    CmdRunAction,
    ErrorObservation,
    EventStream,
    FileReadAction,
    FileReadObservation,
    FileWriteAction,
    Observation,
    RuntimeStatusObservation,
)
from openhands_rt import DockerRuntime, SandboxConfig, SandboxError, SandboxStartError
from openhands_rt.docker_client import open_docker
from openhands_rt.docker_runtime import CONTAINER_PREFIX, SERVER_PORT
from openhands_rt.runtime import EventStreamRuntime
from openhands_rt.sandboxes import (
    HOST_DIR_PREFIX,
    LABEL_KEEP_ALIVE,
    LABEL_OWNER,
    LABEL_SESSION,
    list_sandboxes,
    reap_orphans,
)

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]


# ---------------------------------------------------------------- basics and lifecycle


async def test_echo_and_container_shape(
    stream: EventStream,
    make_runtime: RuntimeFactory,
    make_config: ConfigFactory,
    sandbox_gone: SandboxGone,
) -> None:
    sid = session_id()
    async with make_runtime(stream, make_config(), session_id=sid) as rt:
        obs = await sh(rt, "echo hi")
        assert obs.content.strip() == "hi"
        assert obs.exit_code == 0
        assert obs.metadata.working_dir == "/workspace"
        if isinstance(rt, DockerRuntime):
            await check_container_shape(sid)
    assert await sandbox_gone(rt)
    statuses = [e.status for e in stream.iter_events() if isinstance(e, RuntimeStatusObservation)]
    assert statuses[-1] == "closed"
    assert "ready" in statuses


async def check_container_shape(sid: str) -> None:
    """Labels, init, no-new-privileges, a port published on the loopback only."""
    async with open_docker() as docker:
        info = await (await docker.containers.get(CONTAINER_PREFIX + sid)).show()
    labels = info["Config"]["Labels"]
    assert labels[LABEL_SESSION] == sid
    assert labels[LABEL_KEEP_ALIVE] == "false"
    assert str(os.getpid()) in labels[LABEL_OWNER]
    assert info["HostConfig"]["Init"] is True
    assert "no-new-privileges" in info["HostConfig"]["SecurityOpt"]
    bindings = info["HostConfig"]["PortBindings"]["30150/tcp"]
    assert [b["HostIp"] for b in bindings] == ["127.0.0.1"]
    published = info["NetworkSettings"]["Ports"]["30150/tcp"]
    assert all(p["HostIp"] == "127.0.0.1" for p in published)


async def test_config_env_and_limits_reach_the_container(
    stream: EventStream, make_runtime: RuntimeFactory, make_config: ConfigFactory
) -> None:
    config = make_config(env={"GREETING": "hello sandbox"}, cpus=0.5, memory_mb=512, pids_limit=200)
    async with make_runtime(stream, config, session_id=session_id()) as rt:
        assert (await sh(rt, "echo $GREETING")).content.strip() == "hello sandbox"
        assert (await sh(rt, "echo ${SESSION_API_KEY:-unset}")).content.strip() == "unset"
        if not isinstance(rt, DockerRuntime):
            return
        async with open_docker() as docker:
            info = await (await docker.containers.get(rt.container_name)).show()
        host = info["HostConfig"]
        assert host["NanoCpus"] == 500_000_000
        assert host["Memory"] == 512 * 1024 * 1024
        assert host["PidsLimit"] == 200


async def test_keep_alive_then_attach_keeps_state(
    stream: EventStream,
    make_runtime: RuntimeFactory,
    make_config: ConfigFactory,
    sandbox_gone: SandboxGone,
) -> None:
    sid = session_id()
    async with make_runtime(stream, make_config(keep_runtime_alive=True), session_id=sid) as rt:
        await sh(rt, "export KEPT=yes; cd /tmp; echo state > /tmp/state.txt")
    assert not await sandbox_gone(rt)
    async with (
        EventStream() as stream2,
        make_runtime(stream2, make_config(), session_id=sid) as rt2,
    ):
        assert rt2.attached
        obs = await sh(rt2, "echo $KEPT; pwd; cat state.txt")
        assert obs.content.split() == ["yes", "/tmp", "state"]
    assert await sandbox_gone(rt2)


async def test_missing_image_fails_fast_naming_it(
    stream: EventStream, make_runtime: RuntimeFactory, make_config: ConfigFactory
) -> None:
    config = make_config(runtime_container_image="openhands-rt-test/does-not-exist:nope")
    started = time.monotonic()
    with pytest.raises(SandboxError, match="does-not-exist"):
        async with make_runtime(stream, config, session_id=session_id()):
            pass
    assert time.monotonic() - started < 5


def failing_start(
    make_config: ConfigFactory, runtime_mode: str, base_image: str, **overrides: object
) -> SandboxConfig:
    """A config whose container is made and exits before its server listens.

    Build mode: the bare base image has no server venv. Mount mode runs on any
    image, so the server is made to fail itself: an unknown log level.
    """
    if runtime_mode == "mount":
        return make_config(env={"OPENHANDS_RT_LOG_LEVEL": "NO-SUCH-LEVEL"}, **overrides)
    return make_config(runtime_container_image=base_image, **overrides)


async def test_start_failure_reports_logs_and_removes_container(
    stream: EventStream,
    make_runtime: RuntimeFactory,
    make_config: ConfigFactory,
    sandbox_gone: SandboxGone,
    base_image: str,
    runtime_mode: str,
) -> None:
    sid = session_id()
    config = failing_start(make_config, runtime_mode, base_image)
    rt = make_runtime(stream, config, session_id=sid)
    with pytest.raises(SandboxStartError) as info:
        async with rt:
            pass
    if runtime_mode == "mount":
        # The server's own error, from the container's log.
        assert "NO-SUCH-LEVEL" in "\n".join(info.value.log_tail), info.value.log_tail
    else:
        assert "openhands_rt/venv/bin/python" in str(info.value) or info.value.log_tail
    assert await sandbox_gone(rt)
    if isinstance(rt, DockerRuntime):
        assert run_dirs_of(sid) == []


def run_dirs_of(sid: str) -> list[str]:
    """The host run directories (and /etc directories) of session ``sid`` that exist."""
    return sorted(str(p) for p in Path(tempfile.gettempdir()).glob(f"{HOST_DIR_PREFIX}{sid}-*"))


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        # The container is made and never becomes ready.
        ({}, SandboxStartError),
        ({"read_only_root": True, "run_as_root": True}, SandboxStartError),
        # Refused before the container is made: the base image has no sandbox user (build
        # mode, where the image must have it); no such image (mount mode).
        ({"read_only_root": True}, SandboxError),
    ],
)
async def test_a_failed_start_removes_what_it_made_even_if_kept_alive(
    stream: EventStream,
    make_config: ConfigFactory,
    base_image: str,
    runtime_mode: str,
    overrides: dict[str, object],
    error: type[SandboxError],
) -> None:
    # keep_runtime_alive keeps a sandbox that became ready, never one that did not.
    sid = session_id()
    if error is SandboxStartError:
        config = failing_start(
            make_config, runtime_mode, base_image, keep_runtime_alive=True, **overrides
        )
    elif runtime_mode == "mount":
        missing = "openhands-rt-test/no-such-image:x"
        config = make_config(runtime_container_image=missing, keep_runtime_alive=True)
    else:
        config = make_config(
            runtime_container_image=base_image, keep_runtime_alive=True, **overrides
        )
    with pytest.raises(error):
        async with DockerRuntime(stream, config, session_id=sid):
            pass
    assert not await container_exists(CONTAINER_PREFIX + sid)
    assert run_dirs_of(sid) == []


async def test_a_cancelled_start_removes_what_it_made(
    stream: EventStream,
    make_runtime: RuntimeFactory,
    make_config: ConfigFactory,
    sandbox_gone: SandboxGone,
) -> None:
    sid = session_id()
    rt = make_runtime(stream, make_config(keep_runtime_alive=True), session_id=sid)
    connecting = asyncio.create_task(rt.connect())
    # Cancelled while it waits for the server, once its container (its service, on
    # Swarm) exists (seen from outside, as an engine client: there is no event for it
    # to wait on).
    with anyio.fail_after(60):
        while await sandbox_gone(rt):  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    connecting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await connecting
    assert await sandbox_gone(rt)
    if isinstance(rt, DockerRuntime):
        assert run_dirs_of(sid) == []
    await rt.aclose()


async def test_connect_and_close_in_different_tasks(
    stream: EventStream,
    make_runtime: RuntimeFactory,
    make_config: ConfigFactory,
    sandbox_gone: SandboxGone,
) -> None:
    # As pytest-asyncio fixtures and web frameworks do: the runtime's task group is
    # not tied to the task that connected it.
    rt = make_runtime(stream, make_config(), session_id=session_id())
    await asyncio.create_task(rt.connect())
    assert (await sh(rt, "echo one")).content.strip() == "one"
    await asyncio.create_task(rt.aclose())
    assert await sandbox_gone(rt)
    if isinstance(rt, DockerRuntime):
        assert run_dirs_of(rt.session_id) == []


async def test_container_killed_mid_action(stream: EventStream, make_config: ConfigFactory) -> None:
    rt = DockerRuntime(stream, make_config(), session_id=session_id())
    async with rt:
        pending = asyncio.create_task(rt.run(CmdRunAction("sleep 60", blocking=True)))
        await asyncio.sleep(0.5)
        async with open_docker() as docker:
            killed_at = time.monotonic()
            await (await docker.containers.get(rt.container_name)).kill()
        obs = await asyncio.wait_for(pending, 10)
        answered_in = time.monotonic() - killed_at
        assert isinstance(obs, ErrorObservation)
        assert answered_in < 1.0, f"the dead sandbox was noticed after {answered_in:.2f} s"
        errors = [
            e
            for e in stream.iter_events()
            if isinstance(e, RuntimeStatusObservation) and e.status == "error"
        ]
        assert errors
        assert "exited" in errors[-1].message
        # The runtime can start a fresh sandbox afterwards.
        await rt.connect()
        assert (await sh(rt, "echo back")).content.strip() == "back"
    assert not await container_exists(rt.container_name)


async def test_six_sandboxes_start_concurrently(
    make_runtime: RuntimeFactory, make_config: ConfigFactory
) -> None:
    # One stream per runtime: a runtime runs every action on its stream.
    streams = [EventStream() for _ in range(6)]
    async with contextlib.AsyncExitStack() as stack:
        for s in streams:
            await stack.enter_async_context(s)
        runtimes = [make_runtime(s, make_config(), session_id=session_id()) for s in streams]
        durations: list[float] = []

        async def start(rt: EventStreamRuntime) -> None:
            t0 = time.monotonic()
            await rt.connect()
            durations.append(time.monotonic() - t0)

        wall0 = time.monotonic()
        try:
            await asyncio.gather(*(start(rt) for rt in runtimes))
            wall = time.monotonic() - wall0
            hostnames = {(await sh(rt, "hostname")).content.strip() for rt in runtimes}
            assert len(hostnames) == 6
        finally:
            await asyncio.gather(*(rt.aclose() for rt in runtimes))
    # Serialized starts would take the sum of the individual start times.
    assert wall < 0.8 * sum(durations), (wall, durations)


async def start_orphan(
    docker: aiodocker.Docker, base_image: str, labels: dict[str, str]
) -> tuple[str, str]:
    """A container of ours whose owner is gone, with a run directory; its name and directory."""
    dead = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await dead.wait()
    orphan_owner = f"{socket.gethostname()}/none/{dead.pid}/0"
    name = f"{CONTAINER_PREFIX}{session_id()}"
    # A run directory like the one a DockerRuntime makes: gc removes it with the container.
    run_dir = tempfile.mkdtemp(prefix=f"{HOST_DIR_PREFIX}{name}-")
    container = await docker.containers.create(
        {
            "Image": base_image,
            "Cmd": ["sleep", "300"],
            "HostConfig": {"Binds": [f"{run_dir}:/run/ours"]},
            "Labels": {
                **labels,
                LABEL_SESSION: name.removeprefix(CONTAINER_PREFIX),
                LABEL_OWNER: orphan_owner,
                LABEL_KEEP_ALIVE: "false",
            },
        },
        name=name,
    )
    await container.start()
    return name, run_dir


async def test_ps_and_gc_reap_orphans(base_image: str, test_labels: dict[str, str]) -> None:
    # Scoped by labels, as this test must be: other orphans on the engine (a user's, another
    # test run's, here "theirs") are not this test's to remove.
    scope = "org.openhands-rt.test-scope"
    mine = {**test_labels, scope: session_id()}
    theirs = {**test_labels, scope: session_id()}
    async with open_docker() as docker:
        name, run_dir = await start_orphan(docker, base_image, mine)
        other, other_dir = await start_orphan(docker, base_image, theirs)
        listed = {s.name: s for s in await list_sandboxes(docker, labels=mine)}
        assert set(listed) == {name}
        assert listed[name].orphan
        assert listed[name].host_dirs == (run_dir,)
        assert other in {s.name for s in await list_sandboxes(docker)}
        removed = await reap_orphans(docker, labels=mine)
        assert removed == [name]
        assert name not in {s.name for s in await list_sandboxes(docker)}
        assert not os.path.exists(run_dir)
        assert other in {s.name for s in await list_sandboxes(docker, labels=theirs)}
        assert os.path.isdir(other_dir)
        assert await reap_orphans(docker, labels=theirs) == [other]
        assert not os.path.exists(other_dir)


# ---------------------------------------------------------------- isolation (runc and runsc)


async def test_isolation_basics(
    stream: EventStream, make_config: ConfigFactory, oci_runtime: str, tmp_path: Path
) -> None:
    secret = tmp_path / "host-only-secret.txt"
    secret.write_text("host secret")
    workspace = tmp_path / "ws"
    workspace.mkdir()
    os.chown(workspace, 4321, 4321)
    config = make_config(oci_runtime=oci_runtime, workspace_dir=str(workspace))
    async with DockerRuntime(stream, config, session_id=session_id()) as rt:
        assert (await sh(rt, "hostname")).content.strip() != socket.gethostname()
        assert (await sh(rt, "id -u")).content.strip() == "4321"
        assert (await sh(rt, "whoami")).content.strip() == "openhands"
        seen = await sh(rt, f"cat {secret} 2>&1; ls {tmp_path} 2>&1")
        assert "host secret" not in seen.content
        await sh(rt, "echo from-sandbox > /workspace/made-inside.txt")
        made = workspace / "made-inside.txt"
        assert made.read_text() == "from-sandbox\n"
        assert made.stat().st_uid == 4321
        write = await rt.run(FileWriteAction("/workspace/written.txt", "via action\n"))
        assert not isinstance(write, ErrorObservation), write
        assert (workspace / "written.txt").stat().st_uid == 4321
        read = await rt.run(FileReadAction("/workspace/written.txt"))
        assert isinstance(read, FileReadObservation)
        assert "via action" in read.content


async def test_root_owned_workspace_gets_write_access_not_root(
    stream: EventStream, make_config: ConfigFactory, tmp_path: Path
) -> None:
    workspace = tmp_path / "rootws"
    workspace.mkdir()
    assert workspace.stat().st_uid == 0
    async with DockerRuntime(
        stream, make_config(workspace_dir=str(workspace)), session_id=session_id()
    ) as rt:
        assert (await sh(rt, "id -u")).content.strip() != "0"
        assert (await sh(rt, "touch /workspace/ok && echo yes")).content.strip() == "yes"
    notes = [e.message for e in stream.iter_events() if isinstance(e, RuntimeStatusObservation)]
    assert any("owned by root" in n for n in notes), notes


async def test_fork_bomb_is_contained(
    stream: EventStream, make_runtime: RuntimeFactory, make_config: ConfigFactory, oci_runtime: str
) -> None:
    config = make_config(oci_runtime=oci_runtime, pids_limit=128)
    async with make_runtime(stream, config, session_id=session_id()) as rt:
        # Every process forks for 4 s, then exits: a real exponential fork bomb that
        # cleans up after itself, so the test needs no fork to stop it.
        bomb = (
            'python3 -c "import os, time\n'
            "end = time.time() + 4\n"
            "while time.time() < end:\n"
            "    try:\n        os.fork()\n"
            "    except OSError:\n        time.sleep(0.05)\n"
            'os._exit(0)" 2>/dev/null; sleep 2; echo contained'
        )
        obs = await sh(rt, bomb, blocking=True, timeout=60)
        assert "contained" in obs.content
        obs = await sh(rt, "echo still usable")
        assert obs.content.strip() == "still usable"


async def test_memory_bomb_is_killed_and_the_server_survives(
    stream: EventStream, make_runtime: RuntimeFactory, make_config: ConfigFactory, oci_runtime: str
) -> None:
    config = make_config(oci_runtime=oci_runtime, memory_mb=256)
    async with make_runtime(stream, config, session_id=session_id()) as rt:
        # Output to a file: under gVisor a MemoryError traceback written to the PTY
        # stalls the process (a gVisor quirk, see the CHANGELOG); the limit holds either way.
        obs = await sh(
            rt,
            "python3 -c \"b = bytearray(2 * 1024**3); print('allocated', len(b))\" "
            "> /tmp/bomb.log 2>&1; echo exit=$?; cat /tmp/bomb.log",
            blocking=True,
            timeout=60,
        )
        assert "allocated" not in obs.content
        assert "exit=0" not in obs.content
        assert "exit=" in obs.content
        assert (await sh(rt, "echo server alive")).content.strip() == "server alive"


async def test_network_none_has_loopback_only(
    stream: EventStream, make_config: ConfigFactory, oci_runtime: str
) -> None:
    config = make_config(oci_runtime=oci_runtime, network="none")
    async with DockerRuntime(stream, config, session_id=session_id()) as rt:
        obs = await sh(rt, "tail -n +3 /proc/net/dev | cut -d: -f1")
        assert obs.content.split() == ["lo"]
        async with open_docker() as docker:
            info = await (await docker.containers.get(rt.container_name)).show()
        assert info["HostConfig"]["NetworkMode"] == "none"
        assert not info["NetworkSettings"].get("Ports")


async def test_unix_channel_publishes_no_port_and_keeps_the_network(
    stream: EventStream, make_config: ConfigFactory, oci_runtime: str
) -> None:
    """channel="unix" on the default network: the host talks to the server over the socket
    in the run directory (root's, peer-checked), no port is published, and the agent
    still has its network interface."""
    config = make_config(oci_runtime=oci_runtime, channel="unix")
    async with DockerRuntime(stream, config, session_id=session_id()) as rt:
        obs = await sh(rt, "tail -n +3 /proc/net/dev | cut -d: -f1")
        assert "eth0" in obs.content.split(), obs.content
        assert rt.endpoint is not None
        assert rt.endpoint.unix_socket is not None
        assert rt.endpoint.peer_uid == 0
        socket_stat = os.stat(rt.endpoint.unix_socket)
        assert stat.S_ISSOCK(socket_stat.st_mode)
        assert stat.S_IMODE(socket_stat.st_mode) == 0o600
        async with open_docker() as docker:
            info = await (await docker.containers.get(rt.container_name)).show()
        assert info["HostConfig"]["NetworkMode"] == "bridge"
        assert not info["HostConfig"].get("PortBindings")
        assert not any(info["NetworkSettings"].get("Ports", {}).values())
        assert "--unix-socket" in info["Config"]["Cmd"]
        # Nothing listens on the server's port inside either.
        probe = await sh(
            rt,
            "python3 -c 'import socket; s = socket.socket(); "
            f'print(s.connect_ex(("127.0.0.1", {SERVER_PORT})))\'',
        )
        assert probe.content.strip() == str(errno.ECONNREFUSED), probe.content


async def test_every_action_kind_runs_under_each_runtime(
    stream: EventStream, make_runtime: RuntimeFactory, make_config: ConfigFactory, oci_runtime: str
) -> None:
    async with make_runtime(
        stream, make_config(oci_runtime=oci_runtime), session_id=session_id()
    ) as rt:
        results: list[Observation] = [
            await rt.run(FileWriteAction("/workspace/a.txt", "alpha\n")),
            await rt.run(FileReadAction("/workspace/a.txt")),
            await rt.run(CmdRunAction("cat /workspace/a.txt; python3 -c 'print(6*7)'")),
        ]
        assert not any(isinstance(r, ErrorObservation) for r in results), results
        last = results[-1]
        assert isinstance(last, CmdOutputObservation)
        assert last.content.split() == ["alpha", "42"]


def test_docker_client_is_reachable() -> None:
    async def ping() -> str:
        async with aiodocker.Docker() as docker:
            return str((await docker.version())["ApiVersion"])

    assert asyncio.run(ping())
