"""Swarm sandboxes across the cluster: listing them, reaping those of dead owners.

A sandbox service carries the owner labels of a local container
(:func:`openhands_rt.sandboxes.owner_labels`: host, boot id, pid, start time).
Only an owner on *this* host can be judged (:func:`~openhands_rt.sandboxes.owner_alive`
says ``None`` for another host's): ``gc`` on each client host reaps the
sandboxes its dead processes left — the service, its secrets and this host's
run directory — and never touches another host's. Secrets whose service is
gone (a start killed between the two creates) and whose owner is dead here go
too.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping
from typing import Any

import aiodocker
import anyio

from openhands_rt.docker.engine import EngineError, NotFound, translated
from openhands_rt.sandboxes import (
    LABEL_KEEP_ALIVE,
    LABEL_OWNER,
    LABEL_SESSION,
    LABEL_VERSION,
    SandboxInfo,
    owner_alive,
)
from openhands_rt.swarm.spec import LABEL_SERVICE, SERVICE_PREFIX

__all__ = ["LABEL_HOST_DIR", "list_swarm_sandboxes", "reap_swarm_orphans"]

logger = logging.getLogger(__name__)

#: On a service: this host's run directory holding its key and certificate.
LABEL_HOST_DIR = "org.openhands-rt.host-dir"


def _filters(labels: Mapping[str, str] | None, *, key: str) -> dict[str, str]:
    wanted = [key, *(f"{k}={v}" for k, v in (labels or {}).items())]
    return {"filters": json.dumps({"label": wanted})}


async def list_swarm_sandboxes(
    manager: aiodocker.Docker, *, labels: Mapping[str, str] | None = None
) -> list[SandboxInfo]:
    """Every sandbox service on the swarm (``labels``: only those carrying all of them)."""
    with translated():
        services = await manager._query_json("services", params=_filters(labels, key=LABEL_SESSION))
    found = []
    for service in services:
        spec = service.get("Spec") or {}
        name = str(spec.get("Name", ""))
        if not name.startswith(SERVICE_PREFIX):
            continue
        service_labels = spec.get("Labels") or {}
        owner = str(service_labels.get(LABEL_OWNER, ""))
        alive = owner_alive(owner)
        image = ((spec.get("TaskTemplate") or {}).get("ContainerSpec") or {}).get("Image", "")
        run_dir = service_labels.get(LABEL_HOST_DIR)
        found.append(
            SandboxInfo(
                name=name,
                id=str(service.get("ID", ""))[:12],
                session_id=str(service_labels.get(LABEL_SESSION, "")),
                state="service",
                status=f"updated {service.get('UpdatedAt', '')}",
                image=str(image),
                keep_alive=service_labels.get(LABEL_KEEP_ALIVE) == "true",
                owner=owner,
                owner_alive=alive,
                version=str(service_labels.get(LABEL_VERSION, "")),
                host_dirs=(str(run_dir),) if run_dir and alive is not None else (),
            )
        )
    return found


async def _delete(manager: aiodocker.Docker, path: str) -> bool:
    try:
        with translated():
            await manager._query_json(path, "DELETE")
    except NotFound:
        return False
    return True


async def reap_swarm_orphans(
    manager: aiodocker.Docker,
    *,
    include_kept: bool = False,
    labels: Mapping[str, str] | None = None,
) -> list[str]:
    """Remove the sandbox services whose owner on this host is gone; their names.

    Then the secrets of ours whose service no longer exists and whose owner on
    this host is gone.
    """
    removed = []
    for sandbox in await list_swarm_sandboxes(manager, labels=labels):
        if sandbox.owner_alive is not False or (sandbox.keep_alive and not include_kept):
            continue
        try:
            if not await _delete(manager, f"services/{sandbox.id}"):
                continue  # removed by someone else meanwhile
        except EngineError as exc:
            logger.warning("could not remove orphan %s: %s", sandbox.name, exc.message)
            continue
        logger.info("removed orphaned sandbox %s", sandbox.name)
        removed.append(sandbox.name)
        for directory in sandbox.host_dirs:
            if os.path.basename(directory).startswith("openhands-rt-"):
                await anyio.to_thread.run_sync(shutil.rmtree, directory, True)
    with translated():
        secrets: list[dict[str, Any]] = await manager._query_json(
            "secrets", params=_filters(labels, key=LABEL_SERVICE)
        )
        services = {
            s["Spec"]["Name"]
            for s in await manager._query_json("services", params=_filters(None, key=LABEL_SESSION))
        }
    for secret in secrets:
        secret_labels = (secret.get("Spec") or {}).get("Labels") or {}
        if secret_labels.get(LABEL_SERVICE) in services:
            continue
        if owner_alive(str(secret_labels.get(LABEL_OWNER, ""))) is not False:
            continue
        try:
            await _delete(manager, f"secrets/{secret['ID']}")
        except EngineError as exc:
            logger.warning("could not remove secret %s: %s", secret["ID"], exc.message)
    return removed
