"""A Swarm sandbox's specification: its service's name and body (no engine calls).

The Swarm twin of :mod:`openhands_rt.docker.spec`: the server's command line,
labels, limits and capabilities are the local container's
(:func:`openhands_rt.docker.spec.container_config`), translated into a
``ServiceSpec`` (docs/scale-out.md, section 1.1):

- one replica, ``RestartPolicy: none`` (the runtime decides what a dead
  sandbox becomes, never Swarm);
- ``EndpointSpec``: ``dnsrr`` with the server's port published in host mode on
  a port the node's engine picks (no routing mesh: this kernel has no IPVS);
- the key, the server's TLS identity and (from a snapshot) the shell's state
  are Docker secrets mounted at the run directory's usual paths, inside a
  root-only tmpfs, so the server's flags are the local ones plus ``--tls-file``;
- reservations equal to the limits, so that Swarm places by resources.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

from openhands_rt.config import SandboxConfig, channel_of
from openhands_rt.docker import spec as docker_spec
from openhands_rt.docker.rundir import (
    HOST_DIR_IN_CONTAINER,
    KEY_FILE,
    RUN_DIR_IN_CONTAINER,
    SHELL_STATE_FILE,
)
from openhands_rt.errors import SandboxError

__all__ = [
    "LABEL_SERVICE",
    "OCI_RUNTIME_NODE_LABEL",
    "SECRET_FILES",
    "SERVICE_PREFIX",
    "TLS_FILE",
    "check_config",
    "secret_name",
    "server_name",
    "service_name",
    "service_spec",
]

SERVICE_PREFIX = "openhands-runtime-"
TLS_FILE = "tls.pem"
#: Where each secret of a sandbox is mounted (under the root-only run directory).
SECRET_FILES = {
    "key": f"{HOST_DIR_IN_CONTAINER}/{KEY_FILE}",
    "tls": f"{HOST_DIR_IN_CONTAINER}/{TLS_FILE}",
    "shell": f"{HOST_DIR_IN_CONTAINER}/{SHELL_STATE_FILE}",
}
#: On a secret: the service it belongs to (gc removes secrets whose service is gone).
LABEL_SERVICE = "org.openhands-rt.service"
#: A node label saying its engine's default OCI runtime (a service cannot pick one).
OCI_RUNTIME_NODE_LABEL = "org.openhands-rt.oci-runtime"
_SLUG_MAX = 36
_ROOT_TMPFS_BYTES = 65536


def service_name(session_id: str) -> str:
    """``openhands-runtime-<slug>-<h8>``: a valid service name (at most 63 characters,
    no dots), the same for the same session id on every host, different for two
    ids whose slugs agree."""
    slug = re.sub(r"[^A-Za-z0-9]+", "-", session_id).strip("-")[:_SLUG_MAX].strip("-")
    digest = hashlib.sha256(session_id.encode()).hexdigest()[:8]
    return f"{SERVICE_PREFIX}{slug}-{digest}" if slug else f"{SERVICE_PREFIX}{digest}"


def server_name(service: str) -> str:
    """The DNS name in the server's certificate (never resolved: the client pins it)."""
    return f"{service}.sandbox.openhands-rt.invalid"


def secret_name(token: str, kind: str) -> str:
    """``openhands-rt-<token>-<kind>`` (secret names allow at most 64 characters)."""
    return f"openhands-rt-{token}-{kind}"


def check_config(config: SandboxConfig) -> None:
    """Refuse what a sandbox on another host cannot have (:class:`SandboxError`)."""
    reasons = []
    if config.workspace_dir is not None:
        reasons.append(
            "workspace_dir (a directory of this host does not exist on the node; "
            "the workspace is the container's own /workspace)"
        )
    if config.network not in ("bridge", "default"):
        reasons.append(f"network={config.network!r} (the channel must reach the node over TCP)")
    if channel_of(config) != "tcp":
        reasons.append("channel='unix' (the channel crosses hosts: it is TCP, with TLS)")
    if config.auto_restart:
        reasons.append(
            "auto_restart (Swarm cannot start the same container again; a new task "
            "would be a fresh file system)"
        )
    if config.read_only_root:
        reasons.append("read_only_root (not built for Swarm yet)")
    if config.runtime_mode != "build":
        reasons.append("runtime_mode='mount' (not built for Swarm yet: use a runtime image)")
    if reasons:
        raise SandboxError("SwarmRuntime cannot run a sandbox with " + "; ".join(reasons))


def service_spec(
    config: SandboxConfig,
    *,
    session_id: str,
    name: str,
    image: str,
    secrets: Mapping[str, tuple[str, str]],
    labels: Mapping[str, str],
    placement: Sequence[str] = (),
) -> dict[str, Any]:
    """The body of ``POST /services/create`` for this session's sandbox.

    ``secrets``: kind (a key of :data:`SECRET_FILES`) → (secret id, secret name);
    ``labels``: the service's and its container's (owner, session, keep-alive,
    the config's); ``placement``: constraints as Swarm takes them
    (``node.labels.pool==eval``).
    """
    check_config(config)
    local = docker_spec.container_config(
        dataclasses.replace(config, workspace_dir=None),
        session_id=session_id,
        image=image,
        run_dir="/nonexistent",  # no host directory: its files come as secrets
        workspace=None,
        owner_uid=None,
    )
    host = local["HostConfig"]
    command = [*local["Entrypoint"], *local["Cmd"]]
    command += ["--tls-file", SECRET_FILES["tls"]]
    container: dict[str, Any] = {
        "Image": image,
        "Command": command[:1],
        "Args": command[1:],
        "Env": local["Env"],
        "Labels": dict(labels),
        "User": local["User"],
        "Dir": local["WorkingDir"],
        "Hostname": local["Hostname"],
        "Init": True,
        "Mounts": [
            {
                "Type": "tmpfs",
                "Target": RUN_DIR_IN_CONTAINER,
                "TmpfsOptions": {"SizeBytes": _ROOT_TMPFS_BYTES, "Mode": 0o700},
            }
        ],
        "Secrets": [
            {
                "SecretID": secret_id,
                "SecretName": secret,
                "File": {"Name": SECRET_FILES[kind], "UID": "0", "GID": "0", "Mode": 0o400},
            }
            for kind, (secret_id, secret) in sorted(secrets.items())
        ],
        "StopGracePeriod": 2_000_000_000,
    }
    if "CapDrop" in host:
        container["CapabilityDrop"] = host["CapDrop"]
        container["CapabilityAdd"] = host["CapAdd"]
    limits: dict[str, int] = {}
    if "NanoCpus" in host:
        limits["NanoCPUs"] = host["NanoCpus"]
    if "Memory" in host:
        limits["MemoryBytes"] = host["Memory"]
    reservations = dict(limits)
    if "PidsLimit" in host:
        limits["Pids"] = host["PidsLimit"]
    constraints = list(placement)
    if config.oci_runtime:
        constraints.append(f"node.labels.{OCI_RUNTIME_NODE_LABEL}=={config.oci_runtime}")
    return {
        "Name": name,
        "Labels": dict(labels),
        "TaskTemplate": {
            "ContainerSpec": container,
            "Resources": {"Limits": limits, "Reservations": reservations},
            "RestartPolicy": {"Condition": "none", "MaxAttempts": 0},
            "Placement": {"Constraints": constraints},
        },
        "Mode": {"Replicated": {"Replicas": 1}},
        "EndpointSpec": {
            "Mode": "dnsrr",
            "Ports": [
                {
                    "Protocol": "tcp",
                    "TargetPort": docker_spec.SERVER_PORT,
                    "PublishMode": "host",
                }
            ],
        },
    }
