"""The test cluster of issue 19: how long it takes to make, and to notice a lost node.

Makes the three-node Docker Swarm of tests/swarm (Docker-in-Docker nodes on a
bridge of their own, a docker-registry process on its gateway; see
tests/swarm/cluster.py) with the base image loaded into node 1, and prints:

- each setup step (node image build — 0 when it exists —, network and registry,
  nodes started, image loaded, swarm formed) and the total;
- the base image pushed to the registry from node 1, and pulled by node 2;
- ``--kills`` times: node 3 killed (its container: engine and all) to the
  manager's ``down``, and started again to ``ready``.

Everything is torn down at the end (also on Ctrl-C), and checked: the script
fails when anything of the cluster is left.

Run: uv run python benchmarks/swarm_cluster.py [--kills 3]
Needs a running Docker engine, the base image (openhands-rt base-image bootstrap)
and Debian's docker-registry (scripts/ensure-docker.sh installs it).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "swarm"))

from cluster import RUN_LABEL, leftovers, open_swarm_cluster

from openhands_rt.image import DEFAULT_BASE_IMAGE, bootstrap_base_image


def _summary(samples: list[float]) -> str:
    if not samples:
        return "-"
    return (
        f"median {statistics.median(samples):.1f} s, min {min(samples):.1f} s, "
        f"max {max(samples):.1f} s (n={len(samples)})"
    )


async def main(kills: int) -> None:
    base = await bootstrap_base_image(DEFAULT_BASE_IMAGE)
    run_id = "b" + uuid.uuid4().hex[:11]
    label = f"{RUN_LABEL}={run_id}"
    down: list[float] = []
    back: list[float] = []
    async with open_swarm_cluster(
        run_id=run_id, labels={RUN_LABEL: run_id}, base_image=base, images=[base]
    ) as cluster:
        made: dict[str, Any] = {
            "tmp": cluster.tmp,
            "registry_pid": cluster.registry_pid,
            "registry": cluster.registry,
            "network_id": cluster.network_id,
        }
        for what, seconds in cluster.timings.items():
            print(f"{what:28} {seconds:6.1f} s")
        started = time.monotonic()
        ref = await cluster.push(base, "openhands-rt/base", "bookworm")
        print(f"{'push to the registry':28} {time.monotonic() - started:6.1f} s")
        started = time.monotonic()
        await cluster.pull(2, ref)
        print(f"{'pull by node 2':28} {time.monotonic() - started:6.1f} s")
        for _ in range(kills):
            killed = time.monotonic()
            await cluster.kill(3)
            await cluster.wait_node_state(3, "down")
            down.append(time.monotonic() - killed)
            restarted = time.monotonic()
            await cluster.start(3)
            back.append(time.monotonic() - restarted)
        print(f"{'killed node marked down':28} {_summary(down)}")
        print(f"{'restarted node ready':28} {_summary(back)}")
    left = await leftovers(run_id, label, **made)
    if left:
        raise SystemExit(f"the cluster left {left}")
    print("teardown: nothing left")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=3, help="node kills to time (default 3)")
    args = parser.parse_args()
    asyncio.run(main(args.kills))
