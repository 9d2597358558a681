"""The Swarm sandbox's service body, names and task reading (pure; no engine)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openhands_rt import SandboxConfig
from openhands_rt.errors import SandboxError
from openhands_rt.swarm import spec
from openhands_rt.swarm.tasks import find_task, node_address, published_port, task_reason

# swarmkit's rule for service names (manager/controlapi/common.go), and its length cap.
_SERVICE_NAME = re.compile(r"^[a-zA-Z0-9](?:[-_]*[A-Za-z0-9]+)*$")
SECRETS = {"key": ("k1", "openhands-rt-ab-key"), "tls": ("t1", "openhands-rt-ab-tls")}


def body(config: SandboxConfig | None = None, **kwargs: Any) -> dict[str, Any]:
    return spec.service_spec(
        config or SandboxConfig(runtime_container_image="img:1"),
        session_id="s1",
        name=spec.service_name("s1"),
        image="reg:5000/img@sha256:" + "0" * 64,
        secrets=kwargs.pop("secrets", SECRETS),
        labels={"org.openhands-rt.session": "s1"},
        **kwargs,
    )


@given(st.text(min_size=1, max_size=200))
def test_a_service_name_is_valid_for_any_session_id(session_id: str) -> None:
    name = spec.service_name(session_id)
    assert _SERVICE_NAME.match(name), name
    assert len(name) <= 63
    assert spec.service_name(session_id) == name  # found again by session id


def test_ids_with_the_same_slug_get_different_names() -> None:
    assert spec.service_name("a.b") != spec.service_name("a_b")
    assert spec.service_name("a.b").startswith("openhands-runtime-a-b-")
    assert spec.service_name("!!!").startswith("openhands-runtime-")


def test_a_secret_name_fits_swarms_limit() -> None:
    assert len(spec.secret_name("0" * 12, "shell")) <= 64


@pytest.mark.parametrize(
    ("overrides", "word"),
    [
        ({"workspace_dir": "/tmp/w"}, "workspace_dir"),
        ({"network": "none"}, "network"),
        ({"channel": "unix"}, "channel"),
        ({"auto_restart": True}, "auto_restart"),
        ({"read_only_root": True}, "read_only_root"),
        ({"runtime_mode": "mount"}, "mount"),
    ],
)
def test_what_a_node_cannot_have_is_refused(overrides: dict[str, Any], word: str) -> None:
    with pytest.raises(SandboxError, match=word):
        spec.check_config(SandboxConfig(**overrides))


def test_the_service_is_one_replica_swarm_never_restarts() -> None:
    b = body()
    assert b["Mode"] == {"Replicated": {"Replicas": 1}}
    assert b["TaskTemplate"]["RestartPolicy"]["Condition"] == "none"
    # No routing mesh (no IPVS here): dnsrr, the port published on the node itself.
    assert b["EndpointSpec"] == {
        "Mode": "dnsrr",
        "Ports": [{"Protocol": "tcp", "TargetPort": 30150, "PublishMode": "host"}],
    }
    assert "Networks" not in b["TaskTemplate"]


def test_the_keys_are_root_only_secrets_in_the_root_only_run_directory() -> None:
    container = body()["TaskTemplate"]["ContainerSpec"]
    assert container["Mounts"] == [
        {
            "Type": "tmpfs",
            "Target": "/run/openhands-rt",
            "TmpfsOptions": {"SizeBytes": 65536, "Mode": 0o700},
        }
    ]
    files = {s["SecretName"]: s["File"] for s in container["Secrets"]}
    assert files == {
        "openhands-rt-ab-key": {
            "Name": "/run/openhands-rt/host/key",
            "UID": "0",
            "GID": "0",
            "Mode": 0o400,
        },
        "openhands-rt-ab-tls": {
            "Name": "/run/openhands-rt/host/tls.pem",
            "UID": "0",
            "GID": "0",
            "Mode": 0o400,
        },
    }
    argv = [*container["Command"], *container["Args"]]
    assert argv[argv.index("--api-key-file") + 1] == "/run/openhands-rt/host/key"
    assert argv[argv.index("--tls-file") + 1] == "/run/openhands-rt/host/tls.pem"
    assert argv[argv.index("--host") + 1] == "0.0.0.0"
    assert "--unix-socket" not in argv
    assert not any("SESSION_API_KEY" in e for e in container["Env"])


def test_the_container_is_the_local_one_field_for_field() -> None:
    container = body()["TaskTemplate"]["ContainerSpec"]
    assert container["User"] == "0:0"
    assert container["Init"] is True
    assert container["Dir"] == "/workspace"
    assert container["CapabilityDrop"] == ["ALL"]
    assert sorted(container["CapabilityAdd"]) == sorted(
        ["CHOWN", "SETUID", "SETGID", "SETPCAP", "DAC_OVERRIDE"]
    )
    assert "--username" in container["Args"]
    root = body(SandboxConfig(run_as_root=True))["TaskTemplate"]["ContainerSpec"]
    assert "CapabilityDrop" not in root
    assert "--username" not in root["Args"]


def test_limits_are_reserved_so_that_swarm_places_by_resources() -> None:
    config = SandboxConfig(cpus=1.5, memory_mb=1024, pids_limit=300)
    resources = body(config)["TaskTemplate"]["Resources"]
    assert resources["Reservations"] == {"NanoCPUs": 1_500_000_000, "MemoryBytes": 1 << 30}
    assert resources["Limits"] == {"NanoCPUs": 1_500_000_000, "MemoryBytes": 1 << 30, "Pids": 300}
    assert body()["TaskTemplate"]["Resources"] == {"Limits": {}, "Reservations": {}}


def test_placement_and_the_oci_runtime_are_constraints() -> None:
    b = body(SandboxConfig(oci_runtime="runsc"), placement=["node.labels.pool==eval"])
    assert b["TaskTemplate"]["Placement"]["Constraints"] == [
        "node.labels.pool==eval",
        "node.labels.org.openhands-rt.oci-runtime==runsc",
    ]
    args = b["TaskTemplate"]["ContainerSpec"]["Args"]
    assert "Runtime" not in b["TaskTemplate"]["ContainerSpec"]
    assert args  # runsc's in-sandbox limits come with the flags, as on Docker


def _task(index: int, desired: str, state: str, **status: Any) -> dict[str, Any]:
    return {
        "ID": f"t{index}",
        "Version": {"Index": index},
        "DesiredState": desired,
        "Status": {"State": state, **status},
    }


def test_the_current_task_is_the_newest_swarm_wants_running() -> None:
    lost = _task(5, "shutdown", "running")  # its node went down: last report was running
    assert find_task([lost]) == lost
    assert find_task([_task(9, "running", "pending"), lost])["ID"] == "t9"
    assert find_task([]) is None


def test_the_published_port_and_the_reason() -> None:
    running = _task(1, "running", "running", PortStatus={"Ports": [{"PublishedPort": 30001}]})
    assert published_port(running) == 30001
    assert published_port(_task(1, "running", "starting")) is None
    failed = _task(
        2, "shutdown", "failed", Err="task: non-zero exit (137)", ContainerStatus={"ExitCode": 137}
    )
    assert task_reason(failed) == "task failed, task: non-zero exit (137), exit code 137"
    pending = _task(3, "running", "pending", Err="no suitable node (insufficient resources)")
    assert "insufficient resources" in task_reason(pending)


def test_a_nodes_address_label_wins_then_its_address_then_its_managers() -> None:
    node: dict[str, Any] = {
        "ID": "n1",
        "Spec": {"Labels": {}},
        "Status": {"Addr": "0.0.0.0"},
        "ManagerStatus": {"Addr": "10.0.0.5:2377"},
    }
    assert node_address(node) == "10.0.0.5"
    node["Status"]["Addr"] = "10.0.0.6"
    assert node_address(node) == "10.0.0.6"
    node["Spec"]["Labels"]["org.openhands-rt.address"] = "203.0.113.7"
    assert node_address(node) == "203.0.113.7"
    with pytest.raises(ValueError, match="no address"):
        node_address({"ID": "n2", "Status": {"Addr": ""}})
