"""Containment against the real engine, under runc and gVisor (``runsc``).

What docs/containment.md promises, checked from outside (``docker inspect``)
and from inside (the sandbox user's own view): no-new-privileges, every
capability dropped but the five the server needs until it drops them, Docker's default
seccomp profile, an init process, an optional read-only root with writable
/workspace, /tmp and home, and bombs (fork, memory, disk) that stay inside
their sandbox while the host and a neighbouring sandbox keep working. The
bombs test builds its runtimes with ``make_runtime``: it runs on Swarm too.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest
from aiodocker.exceptions import DockerError
from support import ConfigFactory, RuntimeFactory, session_id, sh

from events import (
    CmdOutputObservation,
    CmdRunAction,
    ErrorObservation,
    EventStream,
    FileReadAction,
    FileReadObservation,
    FileWriteAction,
)
from openhands_rt import DockerRuntime
from openhands_rt.docker_client import open_docker
from openhands_rt.docker_runtime import RUN_DIR_IN_CONTAINER, SWITCH_CAPABILITIES, TMPFS_TMP_MB

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]

# Bit numbers in /proc/<pid>/status Cap* masks (linux/capability.h).
CAPABILITY_BITS = {"CHOWN": 0, "DAC_OVERRIDE": 1, "SETGID": 6, "SETUID": 7, "SETPCAP": 8}
MIB = 1024 * 1024


async def exec_in(container_name: str, cmd: list[str], *, user: str = "root") -> tuple[int, str]:
    """``docker exec`` through aiodocker: (exit code, output)."""
    async with open_docker() as docker:
        container = await docker.containers.get(container_name)
        execution = await container.exec(cmd, user=user)
        chunks: list[bytes] = []
        async with execution.start(detach=False) as output:
            while (message := await output.read_out()) is not None:
                chunks.append(message.data)
        code = (await execution.inspect())["ExitCode"]
    return int(code), b"".join(chunks).decode(errors="replace")


async def inspect(container_name: str, *, size: bool = False) -> dict[str, object]:
    async with open_docker() as docker:
        container = await docker.containers.get(container_name)
        info: dict[str, object] = await container.show(size="1" if size else "0")
    return info


def status_fields(text: str) -> dict[str, str]:
    """/proc/<pid>/status as a dict."""
    fields = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


# ---------------------------------------------------------------- privileges


async def test_privileges_seccomp_and_init(
    stream: EventStream, make_config: ConfigFactory, oci_runtime: str
) -> None:
    config = make_config(oci_runtime=oci_runtime)
    async with DockerRuntime(stream, config, session_id=session_id()) as rt:
        info = await inspect(rt.container_name)
        host = info["HostConfig"]
        assert isinstance(host, dict)
        assert host["Privileged"] is False
        assert host["Init"] is True
        assert host["SecurityOpt"] == ["no-new-privileges"]  # and so no seccomp=unconfined
        assert host["CapDrop"] == ["ALL"]
        assert sorted(host["CapAdd"]) == sorted(SWITCH_CAPABILITIES)
        assert sorted(SWITCH_CAPABILITIES) == sorted(CAPABILITY_BITS)
        async with open_docker() as docker:
            engine = await docker.system.info()
        # The engine applies its default seccomp profile to containers without their own.
        assert any(
            "name=seccomp" in opt and "profile=default" in opt
            for opt in engine.get("SecurityOptions") or []
        ), engine.get("SecurityOptions")

        status = status_fields((await sh(rt, "cat /proc/self/status")).content)
        assert int(status["Uid"].split()[0]) != 0
        for mask in ("CapInh", "CapPrm", "CapEff", "CapAmb"):  # gVisor has no CapAmb line
            assert int(status.get(mask, "0"), 16) == 0, (mask, status[mask])
        # The server emptied the bounding set before it started the shell: nothing the
        # agent runs can ever hold a capability, whatever it executes ...
        assert int(status["CapBnd"], 16) == 0
        if oci_runtime == "runc":
            # ... gVisor's /proc shows neither field; its own kernel serves every syscall.
            assert status["NoNewPrivs"] == "1"
            assert status["Seccomp"] == "2"  # filter mode: Docker's default profile

        # PID 1 is Docker's init (tini); the server is its only child.
        init = await sh(rt, "tr '\\0' ' ' < /proc/1/cmdline")
        assert init.content.startswith("/sbin/docker-init -- "), init.content
        parent = await sh(rt, "grep PPid /proc/$PPID/status")
        assert parent.content.split() == ["PPid:", "1"]


async def test_setuid_binaries_do_not_escalate(
    stream: EventStream, make_config: ConfigFactory, oci_runtime: str
) -> None:
    config = make_config(oci_runtime=oci_runtime)
    async with DockerRuntime(stream, config, session_id=session_id()) as rt:
        # A setuid-root copy of `id`: it prints "euid=0(root)" if setuid takes effect.
        code, output = await exec_in(
            rt.container_name,
            ["sh", "-c", "cp /usr/bin/id /tmp/suid-id && chmod 4755 /tmp/suid-id"],
        )
        assert code == 0, output
        mode = await sh(
            rt,
            "python3 -c \"import os; s = os.stat('/tmp/suid-id'); "
            'print(s.st_uid, oct(s.st_mode))"',
        )
        assert mode.content.split() == ["0", "0o104755"]
        ran = await sh(rt, "/tmp/suid-id")
        assert ran.exit_code == 0
        assert "uid=1000(openhands)" in ran.content
        assert "euid=0" not in ran.content
        su = await sh(rt, "su -c id root < /dev/null 2>&1; echo exit=$?")
        assert "uid=0" not in su.content
        assert "exit=0" not in su.content
        assert "exit=" in su.content


# ---------------------------------------------------------------- read-only root


@pytest.mark.parametrize("mounted_workspace", [False, True], ids=["tmpfs-workspace", "bound"])
async def test_read_only_root(
    stream: EventStream,
    make_config: ConfigFactory,
    oci_runtime: str,
    tmp_path: Path,
    mounted_workspace: bool,
) -> None:
    workspace = tmp_path / "ws"
    overrides: dict[str, object] = {"oci_runtime": oci_runtime, "read_only_root": True}
    if mounted_workspace:
        # Owned by another uid: the sandbox user is re-numbered to it.
        workspace.mkdir()
        os.chown(workspace, 4321, 4321)
        overrides["workspace_dir"] = str(workspace)
    expected_uid = "4321" if mounted_workspace else "1000"
    async with DockerRuntime(stream, make_config(**overrides), session_id=session_id()) as rt:
        assert (await sh(rt, "id -u; whoami")).content.split() == [expected_uid, "openhands"]
        for path in ("/probe", "/usr/probe", "/etc/probe"):
            refused = await sh(rt, f"touch {path} 2>&1; echo exit=$?")
            assert "exit=1" in refused.content, refused.content
        # Root in the container (with DAC_OVERRIDE) is refused too: the filesystem is read-only.
        code, output = await exec_in(rt.container_name, ["touch", "/probe", "/usr/probe"])
        assert code != 0
        assert output.count("Read-only file system") == 2, output
        written = await sh(
            rt,
            "echo a > /tmp/a && echo b > /workspace/b && echo c > ~/c && "
            "cat /tmp/a /workspace/b ~/c",
        )
        assert written.content.split() == ["a", "b", "c"]
        write = await rt.run(FileWriteAction("/workspace/via-action.txt", "server works\n"))
        assert not isinstance(write, ErrorObservation), write
        read = await rt.run(FileReadAction("/workspace/via-action.txt"))
        assert isinstance(read, FileReadObservation)
        assert "server works" in read.content
        if mounted_workspace:
            assert (workspace / "b").read_text() == "b\n"
            assert (workspace / "via-action.txt").stat().st_uid == 4321
        info = await inspect(rt.container_name)
        host = info["HostConfig"]
        assert isinstance(host, dict)
        assert host["ReadonlyRootfs"] is True
        assert set(host["Tmpfs"]) == {"/tmp", "/home/openhands", RUN_DIR_IN_CONTAINER} | (
            set() if mounted_workspace else {"/workspace"}
        )


# ---------------------------------------------------------------- disk filler


async def test_storage_opt_size_depends_on_the_driver(
    runtime_image: str, test_labels: dict[str, str]
) -> None:
    # A size limit on the writable layer needs overlay2 over xfs with pquota (or
    # btrfs/zfs/devicemapper); docs/containment.md says what holds where.
    async with open_docker() as docker:
        engine = await docker.system.info()
        driver = engine["Driver"]
        backing = dict(engine.get("DriverStatus") or []).get("Backing Filesystem", "")
        config: dict[str, Any] = {
            "Image": runtime_image,
            "Entrypoint": ["sh", "-c", "dd if=/dev/zero of=/fill bs=1M count=100 2>&1"],
            "Labels": test_labels,
            "HostConfig": {"StorageOpt": {"size": "64m"}},
        }
        try:
            container = await docker.containers.create(config)
        except DockerError as exc:
            refused: str | None = exc.message
            output = ""
        else:
            refused = None
            try:
                await container.start()
                await container.wait()
                output = "".join(await container.log(stdout=True, stderr=True))
            finally:
                await container.delete(force=True)
    print(f"\nStorageOpt size on {driver} over {backing}: {refused or 'accepted'}")
    if driver == "overlay2" and backing != "xfs":
        assert refused is not None
        assert "xfs" in refused, refused
    if refused is None:
        assert "No space left on device" in output, output


async def test_disk_filler_hits_enospc_in_the_sized_tmpfs(
    stream: EventStream, make_config: ConfigFactory, oci_runtime: str
) -> None:
    # With read_only_root every writable place but a mounted workspace is a tmpfs,
    # each capped at a quarter of memory_mb: a filler meets ENOSPC, not the OOM killer.
    config = make_config(oci_runtime=oci_runtime, read_only_root=True, memory_mb=256)
    limit_mb = min(TMPFS_TMP_MB, 256 // 4)
    async with DockerRuntime(stream, config, session_id=session_id()) as rt:
        before = await inspect(rt.container_name, size=True)
        sizes = await sh(
            rt,
            'python3 -c "import os\n'
            "for p in ('/tmp', os.path.expanduser('~'), '/workspace'):\n"
            '    s = os.statvfs(p); print(s.f_blocks * s.f_frsize // 2**20)"',
        )
        assert sizes.content.split() == [str(limit_mb)] * 3
        t0 = time.monotonic()
        filled = await sh(
            rt,
            "dd if=/dev/zero of=/tmp/fill bs=1M count=1000 2>&1; echo exit=$?",
            blocking=True,
            timeout=60,
        )
        took = time.monotonic() - t0
        assert "No space left on device" in filled.content, filled.content
        assert "exit=0" not in filled.content
        size = await sh(rt, "python3 -c \"import os; print(os.path.getsize('/tmp/fill'))\"")
        assert int(size.content) <= limit_mb * MIB
        assert int(size.content) > (limit_mb - 2) * MIB
        # The sandbox keeps working, and the bytes went to memory, not the host's disk.
        assert (await sh(rt, "echo alive")).content.strip() == "alive"
        after = await inspect(rt.container_name, size=True)
        assert int(str(after.get("SizeRw") or 0)) - int(str(before.get("SizeRw") or 0)) < MIB
        freed = await sh(rt, "rm /tmp/fill && echo again > /tmp/again && cat /tmp/again")
        assert freed.content.strip() == "again"
    print(f"\ndisk filler ({oci_runtime}): ENOSPC at {limit_mb} MiB after {took:.2f} s")


# ---------------------------------------------------------------- bombs and neighbours

FORK_BOMB = (
    'python3 -c "import os, time\n'
    "end = time.time() + 4\n"
    "while time.time() < end:\n"
    "    try:\n        os.fork()\n"
    "    except OSError:\n        time.sleep(0.05)\n"
    'os._exit(0)" 2>/dev/null; sleep 2; echo contained'
)
MEMORY_BOMB = (
    "for i in $(seq 20); do python3 -c \"b = bytearray(2 * 1024**3); print('allocated')\" "
    "> /tmp/bomb.log 2>&1; echo exit=$?; done; cat /tmp/bomb.log"
)

BOMB_LIMITS: dict[str, dict[str, int]] = {"fork": {"pids_limit": 128}, "memory": {"memory_mb": 256}}


@pytest.mark.parametrize("bomb", ["fork", "memory"])
async def test_bombs_leave_the_host_and_a_neighbour_responsive(
    make_runtime: RuntimeFactory, make_config: ConfigFactory, oci_runtime: str, bomb: str
) -> None:
    # One stream each: every runtime on a stream runs every action appended to it.
    async with EventStream() as bombed_stream, EventStream() as neighbour_stream:
        bombed = make_runtime(
            bombed_stream,
            # One limit each: under gVisor a fork bomb that also meets memory_mb takes the
            # whole sandbox (the sentry) down with the OOM killer; see docs/containment.md.
            make_config(oci_runtime=oci_runtime, **BOMB_LIMITS[bomb]),
            session_id=session_id(),
        )
        neighbour = make_runtime(
            neighbour_stream, make_config(oci_runtime=oci_runtime), session_id=session_id()
        )
        async with bombed, neighbour:
            command = FORK_BOMB if bomb == "fork" else MEMORY_BOMB
            detonated = asyncio.create_task(
                bombed.run(CmdRunAction(command, blocking=True, timeout=90))
            )
            echo_latencies: list[float] = []
            fork_latencies: list[float] = []
            while not detonated.done():
                t0 = time.monotonic()
                obs = await sh(neighbour, "echo ping")
                echo_latencies.append(time.monotonic() - t0)
                assert obs.content.strip() == "ping"
                t0 = time.monotonic()
                child = await asyncio.create_subprocess_exec("true")
                assert await child.wait() == 0
                fork_latencies.append(time.monotonic() - t0)
                await asyncio.sleep(0.05)
            result = await detonated
            assert isinstance(result, CmdOutputObservation), result
            if bomb == "fork":
                assert "contained" in result.content
            else:
                assert "allocated" not in result.content
                assert "exit=0" not in result.content
            assert (await sh(bombed, "echo survived")).content.strip() == "survived"
    print(
        f"\n{bomb} bomb ({oci_runtime}): neighbour echo x{len(echo_latencies)} max "
        f"{max(echo_latencies) * 1000:.0f} ms, host fork+exec x{len(fork_latencies)} max "
        f"{max(fork_latencies) * 1000:.0f} ms"
    )
    assert len(echo_latencies) >= 3  # the bomb went on while the neighbour answered
    # Typically tens of ms; the bound leaves room for other load on the machine.
    assert max(echo_latencies) < 2.0, echo_latencies
    assert max(fork_latencies) < 2.0, fork_latencies
