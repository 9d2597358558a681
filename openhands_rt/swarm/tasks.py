"""Reading Swarm's answers about a sandbox: its task, its port, its node's address.

Pure functions of the manager's JSON (``GET /tasks``, ``GET /nodes/{id}``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from openhands_rt.errors import SandboxStartError

__all__ = [
    "ADDRESS_NODE_LABEL",
    "TERMINAL_STATES",
    "ContainerNotStarted",
    "find_task",
    "never_started",
    "node_address",
    "published_port",
    "start_failure",
    "task_reason",
]

#: Task states after which a task never runs again (swarmkit's ``api.TaskState``).
TERMINAL_STATES = frozenset({"complete", "shutdown", "failed", "rejected", "remove", "orphaned"})
#: A node label naming the address clients reach its published ports on (NAT, a
#: separate client network): preferred over the address Swarm reports.
ADDRESS_NODE_LABEL = "org.openhands-rt.address"
_UNSPECIFIED = ("", "0.0.0.0", "::")


def find_task(tasks: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The service's current task: the newest one Swarm wants running, else the newest.

    A one-replica service has one task wanted running at a time; one whose node
    was lost is wanted ``shutdown`` at once (its last reported state may still
    say ``running``), so it is no longer current.
    """
    ordered = sorted(tasks, key=lambda t: (t.get("Version") or {}).get("Index", 0))
    wanted = [t for t in ordered if t.get("DesiredState") == "running"]
    candidates = wanted or ordered
    return dict(candidates[-1]) if candidates else None


def published_port(task: Mapping[str, Any]) -> int | None:
    """The host-mode port the task's node published for the server (None: not yet)."""
    ports = ((task.get("Status") or {}).get("PortStatus") or {}).get("Ports") or []
    for port in ports:
        if port.get("PublishedPort"):
            return int(port["PublishedPort"])
    return None


def node_address(node: Mapping[str, Any]) -> str:
    """Where a node's published ports are reached: its address label, else the address
    Swarm reports, else (a manager may report 0.0.0.0) its manager address's host."""
    labels = (node.get("Spec") or {}).get("Labels") or {}
    if labels.get(ADDRESS_NODE_LABEL):
        return str(labels[ADDRESS_NODE_LABEL])
    address = str((node.get("Status") or {}).get("Addr") or "")
    if address not in _UNSPECIFIED:
        return address
    manager = str((node.get("ManagerStatus") or {}).get("Addr") or "")
    host = manager.rpartition(":")[0].strip("[]")
    if host in _UNSPECIFIED:
        raise ValueError(f"node {node.get('ID')} reports no address")
    return host


def task_reason(task: Mapping[str, Any]) -> str:
    """What a task's state says, for an error: its state, error and exit code."""
    status = task.get("Status") or {}
    parts = [f"task {status.get('State', 'unknown')}"]
    if status.get("Err"):
        parts.append(str(status["Err"]))
    elif status.get("Message") and status.get("State") not in ("running", "complete"):
        parts.append(str(status["Message"]))
    code = (status.get("ContainerStatus") or {}).get("ExitCode")
    if code not in (None, 0) or status.get("State") in ("failed", "complete"):
        parts.append(f"exit code {code}")
    return ", ".join(parts)


class ContainerNotStarted(SandboxStartError):
    """The node's engine failed to start the task's container (nothing of ours ran).

    Seen on these engines under load: "unable to remount dir as readonly: mount
    tmpfs …/mounts/secrets … device or resource busy" (exit code 128). A new
    service is placed afresh and usually starts: the start is tried again.
    """


def never_started(task: Mapping[str, Any]) -> bool:
    """Whether ``task`` failed before its container ran (rejected, or exit code 128
    — the engine's own failure to start it)."""
    status = task.get("Status") or {}
    code = (status.get("ContainerStatus") or {}).get("ExitCode")
    return status.get("State") == "rejected" or (
        status.get("State") == "failed" and code in (None, 128)
    )


def start_failure(
    task: Mapping[str, Any], *, name: str, heard: bool, log_tail: list[str]
) -> SandboxStartError:
    """The error of sandbox ``name`` whose ``task`` ended before it was ready
    (``heard``: its server printed its line; ``log_tail``: the service's last lines)."""
    kind = ContainerNotStarted if not heard and never_started(task) else SandboxStartError
    return kind(f"sandbox {name} failed to start: {task_reason(task)}", log_tail=log_tail)
