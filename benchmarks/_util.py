"""Small helpers shared by the benchmark scripts."""

from __future__ import annotations

import statistics

from aiodocker.exceptions import DockerError

from openhands_rt.docker_client import open_docker


def percentiles_ms(samples_s: list[float]) -> str:
    ordered = sorted(samples_s)
    p50 = statistics.median(ordered) * 1000
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000
    return f"p50 {p50:8.3f} ms   p99 {p99:8.3f} ms   (n={len(ordered)})"


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def remove_labelled_containers(label: str) -> list[str]:
    """Force-remove every container carrying ``label`` (``key=value``); their short ids."""
    removed = []
    async with open_docker() as docker:
        for container in await docker.containers.list(all=True, filters={"label": [label]}):
            try:
                await container.delete(force=True, v=True)
            except DockerError as exc:
                if exc.status != 404:
                    raise
            removed.append(container.id[:12])
    return removed


async def remove_labelled_images(label: str) -> int:
    """Force-remove the containers, then the images, carrying ``label`` (``key=value``).

    Images go in rounds, so that a child made FROM another goes before it;
    returns how many could not be removed."""
    await remove_labelled_containers(label)
    async with open_docker() as docker:
        filters = {"label": [label]}
        pending = [i["Id"] for i in await docker.images.list(all=True, filters=filters)]
        while pending:
            left = []
            for image_id in pending:
                try:
                    await docker.images.delete(image_id, force=True)
                except DockerError as exc:
                    if exc.status != 404:
                        left.append(image_id)
            if len(left) == len(pending):
                return len(left)
            pending = left
    return 0
