"""The sandbox container's specification, run directory and log framing, without Docker."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

from events.wire import CHANNEL_PATH
from openhands_rt import SandboxConfig, SandboxError
from openhands_rt.bundle import BUNDLE_MOUNT, Bundle, Manifest
from openhands_rt.docker import lifecycle, rundir, spec
from openhands_rt.sandboxes import HOST_DIR_PREFIX, LABEL_KEEP_ALIVE, LABEL_SESSION

PASSWD = "root:x:0:0:root:/root:/bin/bash\nopenhands:x:1000:1000::/home/openhands:/bin/bash\n"
GROUP = "root:x:0:\nopenhands:x:1000:\n"


def body(config: SandboxConfig, **overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "session_id": "s1",
        "image": "img:1",
        "run_dir": "/tmp/run-s1",
        "workspace": None,
        "owner_uid": None,
    }
    kwargs.update(overrides)
    return spec.container_config(config, **kwargs)


def command(created: dict[str, Any]) -> list[str]:
    return [*created["Entrypoint"], *created["Cmd"]]


def test_the_default_sandbox_drops_privileges_and_publishes_on_loopback() -> None:
    created = body(SandboxConfig())
    host = created["HostConfig"]
    assert command(created)[:4] == spec.SERVER_COMMAND
    assert host["Init"] is True
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["CapDrop"] == ["ALL"]
    assert host["CapAdd"] == spec.SWITCH_CAPABILITIES
    assert host["Binds"] == [f"/tmp/run-s1:{rundir.HOST_DIR_IN_CONTAINER}:rw"]
    assert host["Tmpfs"][rundir.RUN_DIR_IN_CONTAINER].startswith("rw,noexec,nosuid,nodev,mode=0700")
    assert host["PortBindings"] == {
        f"{spec.SERVER_PORT}/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]
    }
    assert created["ExposedPorts"] == {f"{spec.SERVER_PORT}/tcp": {}}
    assert "ReadonlyRootfs" not in host
    assert created["User"] == "0:0"
    assert created["Labels"][LABEL_SESSION] == "s1"
    assert created["Labels"][LABEL_KEEP_ALIVE] == "false"
    cmd = command(created)
    assert cmd[cmd.index("--username") + 1] == spec.SANDBOX_USER
    assert cmd[cmd.index("--api-key-file") + 1] == (
        f"{rundir.HOST_DIR_IN_CONTAINER}/{rundir.KEY_FILE}"
    )
    assert "--user-id" not in cmd


def test_no_network_means_a_unix_socket_and_no_port() -> None:
    created = body(SandboxConfig(network="none"))
    cmd = command(created)
    assert cmd[cmd.index("--unix-socket") + 1] == (
        f"{rundir.HOST_DIR_IN_CONTAINER}/{rundir.SOCKET_FILE}"
    )
    assert "--port" not in cmd
    assert "PortBindings" not in created["HostConfig"]
    assert "ExposedPorts" not in created


def test_the_unix_channel_keeps_the_network_and_publishes_no_port() -> None:
    created = body(SandboxConfig(channel="unix"))
    cmd = command(created)
    assert cmd[cmd.index("--unix-socket") + 1] == (
        f"{rundir.HOST_DIR_IN_CONTAINER}/{rundir.SOCKET_FILE}"
    )
    assert "--port" not in cmd
    assert created["HostConfig"]["NetworkMode"] == "bridge"
    assert "PortBindings" not in created["HostConfig"]
    assert "ExposedPorts" not in created


def test_root_keeps_its_capabilities_and_is_not_renumbered() -> None:
    created = body(SandboxConfig(run_as_root=True), owner_uid=1234)
    assert "CapDrop" not in created["HostConfig"]
    assert "--username" not in command(created)
    assert "--user-id" not in command(created)


def test_a_workspace_owner_renumbers_the_sandbox_user() -> None:
    created = body(SandboxConfig(), workspace="/srv/ws", owner_uid=1234)
    cmd = command(created)
    assert cmd[cmd.index("--user-id") + 1] == "1234"
    assert created["HostConfig"]["Binds"][0] == "/srv/ws:/workspace:rw"
    # A root-owned workspace needs no re-numbering.
    assert "--user-id" not in command(body(SandboxConfig(), workspace="/srv/ws", owner_uid=0))


def test_limits_under_runc_are_the_hosts() -> None:
    host = body(SandboxConfig(memory_mb=512, pids_limit=100, cpus=1.5))["HostConfig"]
    assert host["Memory"] == host["MemorySwap"] == 512 * 1024 * 1024
    assert host["PidsLimit"] == 100
    assert host["NanoCpus"] == 1_500_000_000


def test_limits_under_runsc_leave_room_for_the_sentry_and_are_enforced_inside() -> None:
    created = body(SandboxConfig(memory_mb=512, pids_limit=100, oci_runtime="runsc"))
    host, cmd = created["HostConfig"], command(created)
    assert host["Runtime"] == "runsc"
    assert host["Memory"] == (512 + spec.RUNSC_MEMORY_HEADROOM_MB) * 1024 * 1024
    assert cmd[cmd.index("--max-process-memory-mb") + 1] == "512"
    assert cmd[cmd.index("--max-processes") + 1] == "100"
    assert "PidsLimit" not in host


def test_a_read_only_root_gets_its_writable_places_mounted() -> None:
    config = SandboxConfig(read_only_root=True, keep_runtime_alive=True)
    places = spec.writable_places(config, image="img", passwd=PASSWD, group=GROUP, owner_uid=None)
    created = body(config, writable=places)
    host = created["HostConfig"]
    assert host["ReadonlyRootfs"] is True
    assert set(host["Tmpfs"]) == {
        rundir.RUN_DIR_IN_CONTAINER,
        "/tmp",
        "/home/openhands",
        "/workspace",
    }
    assert "uid=1000,gid=1000" in host["Tmpfs"]["/home/openhands"]
    assert f"size={spec.TMPFS_TMP_MB}m" in host["Tmpfs"]["/tmp"]
    assert places.etc_files == {}
    assert created["Labels"][LABEL_KEEP_ALIVE] == "true"


def test_a_mounted_workspace_is_no_tmpfs_and_a_new_owner_rewrites_etc() -> None:
    config = SandboxConfig(read_only_root=True, workspace_dir="/srv/ws")
    places = spec.writable_places(config, image="img", passwd=PASSWD, group=GROUP, owner_uid=4321)
    assert "/workspace" not in places.tmpfs
    assert "uid=4321,gid=4321" in places.tmpfs["/home/openhands"]
    assert "openhands:x:4321:4321:" in places.etc_files["passwd"]
    assert "openhands:x:4321:" in places.etc_files["group"]
    places.bind_etc("/tmp/etc-s1")
    assert places.binds == ["/tmp/etc-s1/passwd:/etc/passwd:ro", "/tmp/etc-s1/group:/etc/group:ro"]


@pytest.mark.parametrize(
    ("memory_mb", "expected_tmp_mb"), [(None, spec.TMPFS_TMP_MB), (1024, 256), (40, 16)]
)
def test_tmpfs_is_at_most_a_quarter_of_memory(memory_mb: int | None, expected_tmp_mb: int) -> None:
    assert spec.tmpfs_size_mb(SandboxConfig(memory_mb=memory_mb), spec.TMPFS_TMP_MB) == (
        expected_tmp_mb
    )


def test_an_image_without_the_user_is_refused() -> None:
    with pytest.raises(SandboxError, match="no user 'openhands'"):
        spec.writable_places(
            SandboxConfig(read_only_root=True),
            image="img",
            passwd="root:x:0:0:root:/root:/bin/sh\n",
            group="",
            owner_uid=None,
        )


BUNDLE = Bundle(
    Path("/cache/bundles/k1"),
    Manifest(
        key="k1",
        python="bin/python3",
        loader="lib/ld-linux-x86-64.so.2",
        bash="bin/bash",
        python_version="3.11",
        site="lib/python3.11/site-packages",
    ),
)


def test_mount_mode_starts_the_server_from_the_bundle_mounted_read_only() -> None:
    config = SandboxConfig(runtime_mode="mount", network="none")
    created = body(config, bundle=BUNDLE, workspace="/srv/ws", owner_uid=4321)
    cmd = command(created)
    server = BUNDLE.server_command()
    assert cmd[: len(server)] == server
    assert cmd[0] == f"{BUNDLE_MOUNT}/lib/ld-linux-x86-64.so.2"
    # The server's own flags follow the launcher, as in build mode.
    rest = cmd[len(server) :]
    assert rest[:2] == ["--working-dir", "/workspace"]
    assert rest[rest.index("--user-id") + 1] == "4321"
    assert f"/cache/bundles/k1:{BUNDLE_MOUNT}:ro" in created["HostConfig"]["Binds"]
    assert created["User"] == "0:0"
    assert created["HostConfig"]["CapDrop"] == ["ALL"]
    # Build mode mounts nothing of ours.
    assert not any(BUNDLE_MOUNT in b for b in body(SandboxConfig())["HostConfig"]["Binds"])


@pytest.mark.parametrize(("passwd", "group"), [("", ""), ("root:x:0:0:root:/root:/bin/sh\n", "")])
def test_mount_mode_makes_the_missing_user_with_the_workspace_owners_uid(
    passwd: str, group: str
) -> None:
    config = SandboxConfig(runtime_mode="mount", read_only_root=True, workspace_dir="/srv/ws")
    shell = BUNDLE.shell()
    places = spec.writable_places(
        config, image="busybox", passwd=passwd, group=group, owner_uid=4321, shell=shell
    )
    assert places.etc_files["passwd"].splitlines() == [
        "root:x:0:0:root:/root:/bin/sh",
        f"openhands:x:4321:4321::/home/openhands:{shell}",
    ]
    assert places.etc_files["group"].splitlines() == ["root:x:0:", "openhands:x:4321:"]
    assert "uid=4321,gid=4321" in places.tmpfs["/home/openhands"]
    assert "/workspace" not in places.tmpfs


def test_mount_mode_without_a_workspace_owner_takes_the_first_free_uid() -> None:
    config = SandboxConfig(runtime_mode="mount", read_only_root=True)
    passwd = "root:x:0:0:root:/root:/bin/sh\nappuser:x:1000:1000::/app:/bin/sh\n"
    places = spec.writable_places(
        config, image="img", passwd=passwd, group="", owner_uid=None, shell="/b/bash"
    )
    assert "openhands:x:1001:1001::/home/openhands:/b/bash" in places.etc_files["passwd"]
    assert "uid=1001,gid=1001" in places.tmpfs["/workspace"]


def test_mount_mode_as_root_on_an_image_without_passwd_names_root() -> None:
    config = SandboxConfig(runtime_mode="mount", read_only_root=True, run_as_root=True)
    places = spec.writable_places(
        config, image="img", passwd="", group="", owner_uid=None, shell="/b/bash"
    )
    assert places.etc_files == {"passwd": "root:x:0:0:root:/root:/b/bash\n", "group": "root:x:0:\n"}
    assert "uid=0,gid=0" in places.tmpfs["/root"]


def test_an_image_with_the_user_keeps_its_files_in_mount_mode() -> None:
    config = SandboxConfig(runtime_mode="mount", read_only_root=True)
    places = spec.writable_places(
        config, image="img", passwd=PASSWD, group=GROUP, owner_uid=None, shell="/b/bash"
    )
    assert places.etc_files == {}


def inspected(**host_config: Any) -> dict[str, Any]:
    return {"HostConfig": host_config, "NetworkSettings": {"Ports": {}}}


def test_the_endpoint_is_the_published_loopback_port() -> None:
    info = inspected(NetworkMode="bridge")
    info["NetworkSettings"]["Ports"] = {
        f"{spec.SERVER_PORT}/tcp": [
            {"HostIp": "0.0.0.0", "HostPort": "1"},
            {"HostIp": "127.0.0.1", "HostPort": "49153"},
        ]
    }
    endpoint = spec.find_endpoint(SandboxConfig(), info, api_key="k", name="c")
    assert endpoint.url == f"ws://127.0.0.1:49153{CHANNEL_PATH}"
    assert endpoint.unix_socket is None
    with pytest.raises(SandboxError, match="publishes no port"):
        spec.find_endpoint(SandboxConfig(), inspected(NetworkMode="bridge"), api_key="k", name="c")


def test_the_endpoint_without_network_is_the_socket_in_the_run_directory() -> None:
    info = inspected(NetworkMode="none", Binds=[f"/tmp/run-x:{rundir.HOST_DIR_IN_CONTAINER}:rw"])
    endpoint = spec.find_endpoint(SandboxConfig(), info, api_key="k", name="c")
    assert endpoint.unix_socket == f"/tmp/run-x/{rundir.SOCKET_FILE}"
    assert endpoint.peer_uid == 0
    with pytest.raises(SandboxError, match="no run directory mounted"):
        spec.find_endpoint(SandboxConfig(), inspected(NetworkMode="none"), api_key="k", name="c")


def test_the_endpoint_of_a_container_serving_on_a_socket_is_the_socket() -> None:
    # Whatever the config asks now (an attached sandbox may have been made otherwise).
    info = inspected(NetworkMode="bridge", Binds=[f"/tmp/run-y:{rundir.HOST_DIR_IN_CONTAINER}:rw"])
    info["Config"] = {"Cmd": ["-I", "-m", "container_server", "--unix-socket", "/s"]}
    endpoint = spec.find_endpoint(SandboxConfig(), info, api_key="k", name="c")
    assert endpoint.unix_socket == f"/tmp/run-y/{rundir.SOCKET_FILE}"
    assert endpoint.peer_uid == 0


def test_the_run_directory_is_private_and_holds_the_key() -> None:
    directory = rundir.make_run_dir("s-key", "secret")
    try:
        assert Path(directory).name.startswith(f"{HOST_DIR_PREFIX}s-key-")
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
        key = os.path.join(directory, rundir.KEY_FILE)
        assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
        assert rundir.read_key(directory) == "secret"
        info = {"HostConfig": {"Binds": [f"{directory}:{rundir.HOST_DIR_IN_CONTAINER}:rw"]}}
        assert rundir.run_dir_of(info) == directory
    finally:
        rundir.remove_dirs(directory, None)
    assert not os.path.exists(directory)
    assert rundir.read_key(directory) == ""
    assert rundir.read_key(None) == ""
    assert rundir.run_dir_of({"HostConfig": {"Binds": ["/a:/workspace:rw"]}}) is None


def frame(stream: int, data: bytes) -> bytes:
    return bytes([stream, 0, 0, 0]) + len(data).to_bytes(4, "big") + data


def test_log_frames_are_read_whole_only() -> None:
    buffer = frame(1, b"starting\nlisten") + frame(1, b"ing on x\n") + frame(2, b"err\n")
    assert lifecycle.demultiplex_lines(buffer) == [b"starting", b"listening on x", b"err"]
    assert lifecycle.demultiplex_lines(buffer + frame(1, b"more\n")[:10]) == [
        b"starting",
        b"listening on x",
        b"err",
    ]
    assert lifecycle.demultiplex_lines(b"") == []
