"""The image of a test cluster's Docker-in-Docker node (issue 19).

The bootstrapped base image plus Debian's ``docker.io iptables iproute2`` from
the http mirror (apt works inside containers), and an entrypoint that makes a
node's dockerd able to run without ``--privileged`` (which fails on these
machines: the VM's bounding set lacks CAP_SYS_RESOURCE). Tagged by a hash of
its recipe and the base image's id, labelled, and kept between sessions like
the base image: a session builds it only when the recipe or the base changed
(and then removes the node images of older recipes).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import tarfile
import time
from typing import Any

import aiodocker
import aiohttp
from aiodocker.exceptions import DockerError

__all__ = [
    "NODE_IMAGE_LABEL",
    "NODE_REPOSITORY",
    "NODE_SOCKET_DIR",
    "ensure_node_image",
    "node_recipe",
]

logger = logging.getLogger(__name__)

NODE_REPOSITORY = "openhands-rt-test/swarm-node"
#: Every node image carries it (value: the recipe hash); older recipes are removed by it.
NODE_IMAGE_LABEL = "org.openhands-rt.test-swarm-node"
#: Where the node's engine socket lives inside the node; a host directory is bound there.
NODE_SOCKET_DIR = "/run/openhands-rt-node"
NODE_PACKAGES = ("docker.io", "iptables", "iproute2")

# Without --privileged the outer engine mounts /sys and the cgroup hierarchies
# read-only; the node's dockerd must create cgroups and write to /sys. A cgroup
# (v1) hierarchy's superblock is the host's, so changing its flags fails with
# EBUSY: remount the mount point only ("bind"). A killed
# node's container keeps its root file system, so the run-time state of the
# previous run is still there: dockerd's pid file would stop the new dockerd
# ("pid file found, ensure docker is not running"), and containerd's (under
# /var/run/docker) can name a pid that a process of the new run has, so dockerd
# waits for a containerd that is not there. Remove what a reboot would.
# Arguments (``--insecure-registry``...) come from the container's command.
ENTRYPOINT = f"""#!/bin/sh
set -eu
mount -o remount,rw /sys
awk '$2 ~ "^/sys/fs/cgroup" {{print $2}}' /proc/mounts | while read -r where; do
    mount -o remount,bind,rw "$where"
done
rm -rf /var/run/docker.pid /var/run/docker
mkdir -p {NODE_SOCKET_DIR}
exec dockerd --host unix://{NODE_SOCKET_DIR}/docker.sock --storage-driver overlay2 \\
    --no-new-privileges "$@"
"""

# policy-rc.d: docker.io's maintainer scripts must not start a dockerd during the build.
DOCKERFILE = f"""FROM {{base}}
RUN printf '#!/bin/sh\\nexit 101\\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d \\
    && apt-get update \\
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \\
       {" ".join(NODE_PACKAGES)} \\
    && rm -rf /var/lib/apt/lists/*
COPY entrypoint.sh /usr/local/sbin/openhands-rt-node
ENTRYPOINT ["/usr/local/sbin/openhands-rt-node"]
"""


def node_recipe(base_image_id: str) -> tuple[str, str]:
    """The node image's Dockerfile (on ``base_image_id``) and its content tag."""
    dockerfile = DOCKERFILE.format(base=base_image_id)
    digest = hashlib.sha256(f"{dockerfile}\0{ENTRYPOINT}".encode()).hexdigest()
    return dockerfile, digest[:16]


def _context(dockerfile: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, text, mode in (
            ("Dockerfile", dockerfile, 0o644),
            ("entrypoint.sh", ENTRYPOINT, 0o755),
        ):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = mode
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


async def _build(
    docker: aiodocker.Docker, dockerfile: str, ref: str, labels: dict[str, str]
) -> None:
    params = {
        "t": ref,
        "rm": "1",
        "forcerm": "1",
        "pull": "0",
        "labels": json.dumps(labels),
    }
    async with (
        docker._query(
            "build",
            "POST",
            params=params,
            data=_context(dockerfile),
            headers={"Content-Type": "application/x-tar"},
            timeout=aiohttp.ClientTimeout(),
        ) as response,
        response,
    ):  # aiodocker leaves the release to its caller
        await _read_build(response, ref)


async def _read_build(response: aiohttp.ClientResponse, ref: str) -> None:
    tail: list[str] = []
    async for raw in response.content:
        if not raw.strip():
            continue
        item: dict[str, Any] = json.loads(raw)
        if "error" in item or "errorDetail" in item:
            detail = item.get("errorDetail") or {}
            raise RuntimeError(
                f"building {ref} failed: {detail.get('message') or item.get('error')}\n"
                + "".join(tail[-20:])
            )
        if "stream" in item:
            tail.append(str(item["stream"]))
            del tail[:-40]


async def ensure_node_image(docker: aiodocker.Docker, base_image: str) -> tuple[str, float]:
    """The node image's reference, built when missing; and the seconds the build took
    (0.0 when it existed)."""
    base = await docker.images.inspect(base_image)
    dockerfile, tag = node_recipe(str(base["Id"]))
    ref = f"{NODE_REPOSITORY}:{tag}"
    try:
        await docker.images.inspect(ref)
        return ref, 0.0
    except DockerError as exc:
        if exc.status != 404:
            raise
    started = time.monotonic()
    logger.info("building the swarm node image %s", ref)
    await _build(docker, dockerfile, ref, {NODE_IMAGE_LABEL: tag})
    seconds = time.monotonic() - started
    for image in await docker.images.list(filters={"label": [NODE_IMAGE_LABEL]}):
        if (image.get("Labels") or {}).get(NODE_IMAGE_LABEL) != tag:
            try:
                await docker.images.delete(str(image["Id"]), force=True)
            except DockerError as exc:
                logger.warning("could not remove an old node image: %s", exc.message)
    return ref, seconds
