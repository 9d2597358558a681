"""Runtime image builds: scratch, lock rebuild, no-op decision, and the size added to the base.

Builds go to a benchmark-only repository with a version unique to the run and are
removed at the end; the real ``openhands-rt/runtime`` tags are not touched.

- scratch (cold): no engine build cache and an empty host cache (wheelhouse, pip,
  probe) — what a new machine pays;
- scratch (warm host cache): no engine build cache, the wheelhouse already there;
- lock rebuild: a one-line change to a copy of the server source;
- no-op decision: the source-tagged image exists.

Run: uv run python benchmarks/image_build.py [--base-image IMG] [--n 5]
Needs a running Docker engine and the base image (openhands-rt base-image bootstrap).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from _util import remove_labelled_images

from openhands_rt.docker_client import open_docker
from openhands_rt.image import DEFAULT_BASE_IMAGE, BuildResult, build_runtime_image
from openhands_rt.image.project import find_project

REPOSITORY = "openhands-rt-bench/runtime"
RUN_LABEL = "org.openhands-rt.bench-run"


def copy_source(destination: Path) -> list[Path]:
    dirs = []
    for source in find_project().source_dirs:
        shutil.copytree(source, destination / source.name)
        dirs.append(destination / source.name)
    return dirs


async def main(base_image: str, n: int) -> None:
    run_id = uuid.uuid4().hex[:12]
    labels = {RUN_LABEL: run_id}
    version = f"0.0.0.dev{int(run_id, 16) % 10**9}"
    work = Path(tempfile.mkdtemp(prefix="oh-image-bench-"))
    saved_cache = os.environ.get("OPENHANDS_RT_CACHE_DIR")
    try:
        dirs = copy_source(work / "src")

        async def build(*, force: bool = False, ver: str = version) -> BuildResult:
            return await build_runtime_image(
                base_image,
                force_rebuild=force,
                repository=REPOSITORY,
                version=ver,
                source_dirs=dirs,
                labels=labels,
            )

        os.environ["OPENHANDS_RT_CACHE_DIR"] = str(work / "cold-cache")
        t0 = time.perf_counter()
        cold = await build(force=True, ver=version + ".cold")
        scratch_cold = time.perf_counter() - t0
        if saved_cache is None:
            del os.environ["OPENHANDS_RT_CACHE_DIR"]
        else:
            os.environ["OPENHANDS_RT_CACHE_DIR"] = saved_cache
        assert cold.build_from == "scratch"

        await build(force=True)  # fills the normal host cache when it is empty
        t0 = time.perf_counter()
        scratch = await build(force=True)
        scratch_warm = time.perf_counter() - t0
        assert scratch.build_from == "scratch"

        lock_times = []
        target = dirs[1] / "__init__.py"
        original = target.read_bytes()
        for i in range(n):
            target.write_bytes(original + f"\n# bench change {i}\n".encode())
            t0 = time.perf_counter()
            result = await build()
            lock_times.append(time.perf_counter() - t0)
            assert result.build_from == "lock", result.build_from

        noop_times = []
        for _ in range(max(20, n)):
            t0 = time.perf_counter()
            result = await build()
            noop_times.append(time.perf_counter() - t0)
            assert result.build_from == "none"

        async with open_docker() as docker:
            runtime_size = (await docker.images.inspect(scratch.image))["Size"]
            base_size = (await docker.images.inspect(base_image))["Size"]

        print(f"image build benchmark (base {base_image})")
        print(f"  scratch, cold caches        {scratch_cold:7.2f} s   (target <= 90 s)")
        print(f"  scratch, warm host cache    {scratch_warm:7.2f} s")
        print(
            f"  lock rebuild (source edit)  {statistics.median(lock_times):7.2f} s median, "
            f"{min(lock_times):.2f}-{max(lock_times):.2f} s (n={n}, target <= 10 s)"
        )
        print(
            f"  no-op decision              {statistics.median(noop_times):7.3f} s median, "
            f"max {max(noop_times):.3f} s (n={len(noop_times)}, target <= 0.3 s)"
        )
        print(
            f"  image size                  {runtime_size / 1e6:7.1f} MB "
            f"= base {base_size / 1e6:.1f} MB + {(runtime_size - base_size) / 1e6:.1f} MB "
            "(target <= +150 MB)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
        await remove_images(f"{RUN_LABEL}={run_id}")


async def remove_images(label: str) -> None:
    stuck = await remove_labelled_images(label)
    if stuck:
        print(f"could not remove {stuck} benchmark images", file=sys.stderr)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base-image", default=DEFAULT_BASE_IMAGE)
    parser.add_argument("--n", type=int, default=5, help="lock rebuilds to time")
    args = parser.parse_args()
    asyncio.run(main(args.base_image, args.n))
