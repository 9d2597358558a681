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
                await container.delete(force=True)
            except DockerError as exc:
                if exc.status != 404:
                    raise
            removed.append(container.id[:12])
    return removed
