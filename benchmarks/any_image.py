"""Any image, no build: mount mode (``runtime_mode="mount"``) against build mode (issue 17).

- bundle: the one-time creation of the runtime bundle (``make_bundle``) into a fresh
  temporary root, with the server alone and with the Jupyter plugin's requirements;
  its size; then finding it again (what each process pays before its first mount-mode
  sandbox). Each temporary root is removed afterwards;
- cold start: the image is ready (mount: the base image as it is; build: the base's
  runtime image, built first into this run's repository and timed on its own line,
  given as ``runtime_container_image``); from the start of
  ``DockerRuntime.__aenter__`` to the first ``echo hi`` observation. The two modes
  alternate sample by sample (and which goes first alternates too), so that load on
  the shared machine hits both alike;
- ``echo hi``: ``run()`` round trips through one warm sandbox of each mode, alternating;
- never-seen images: N distinct images, each made here for one sandbox (a commit of a
  never-started container of the base, or a ``docker import`` of the base's exported
  root file system, with a label of its own: a new image id), so that nothing was
  built or cached for it. Mount mode: ``__aenter__`` to first observation, no build.
  Build mode: the same call with ``base_container_image`` set to the new image, so the
  time includes the runtime image's build from scratch (the host's wheelhouse is warm,
  the engine's layer cache cannot help: the base is new; checked on each image). Each
  image is made just before its sandbox and removed right after (neither is timed);
- an evaluation's shape: those N images one after another (start, first observation,
  close), all of one mode, then all of the other; the total of each mode. Build-mode
  totals include the N builds.

Everything made carries this run's label (images made from a labelled base inherit it:
the runtime images built on the throwaway bases, their build's intermediate images
and containers) and is removed at the end, also after a failure or Ctrl-C, with the
temporary bundle roots, the exported root file system and this run's build logs.

Run: uv run python benchmarks/any_image.py [--images 20] [--starts 7] [--n 500]
     [--make commit|import] [--no-jupyter-bundle]
Needs a running Docker engine and the base image (openhands-rt base-image bootstrap).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
import anyio

sys.path.insert(0, str(Path(__file__).parent))

from _util import percentiles_ms, remove_labelled_images

from events import CmdOutputObservation, CmdRunAction, EventStream
from openhands_rt import DockerRuntime, JupyterRequirement, SandboxConfig
from openhands_rt.bundle import make_bundle
from openhands_rt.bundle.make import plugin_bundle_requirements
from openhands_rt.docker_client import import_image, open_docker
from openhands_rt.image import DEFAULT_BASE_IMAGE, build_runtime_image
from openhands_rt.image.cache import cache_dir
from openhands_rt.sandboxes import list_sandboxes

RUN_LABEL = "org.openhands-rt.bench-run"
IMAGE_LABEL = "org.openhands-rt.bench-image"
RUN_ID = uuid.uuid4().hex[:12]
SESSION_PREFIX = f"bench-{RUN_ID}-"
# Throwaway bases and the runtime images built on them: benchmark-only repositories.
IMAGE_REPOSITORY = "openhands-rt-bench/any-image"
RUNTIME_REPOSITORY = "openhands-rt-bench/any-image-runtime"
BUILD_FROM_LABEL = "org.openhands-rt.build-from"
MODES = ("mount", "build")
ECHO_WARMUP = 100
MB = 1e6


def p50_p90(samples_s: Sequence[float]) -> str:
    ordered = sorted(samples_s)
    p90 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.9))]
    return (
        f"p50 {statistics.median(ordered) * 1000:8.1f} ms   p90 {p90 * 1000:8.1f} ms   "
        f"(n={len(ordered)})"
    )


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load {one:.2f}/{five:.2f}"


def ratio(mount: Sequence[float], build: Sequence[float]) -> str:
    value = statistics.median(mount) / statistics.median(build)
    return f"mount/build p50 = {value:.3f} ({value - 1:+.1%}; target within 10 %)"


class Sessions:
    """Labelled configs and unique session ids for this run."""

    def __init__(self) -> None:
        self._count = 0

    def session_id(self) -> str:
        self._count += 1
        return f"{SESSION_PREFIX}{self._count}"

    @staticmethod
    def config(**overrides: Any) -> SandboxConfig:
        kwargs: dict[str, Any] = {
            "labels": {RUN_LABEL: RUN_ID},
            "runtime_image_repository": RUNTIME_REPOSITORY,
            "timeout": 60.0,
            "no_change_timeout": 30.0,
        }
        kwargs.update(overrides)
        return SandboxConfig(**kwargs)


async def echo(runtime: DockerRuntime) -> None:
    obs = await runtime.run(CmdRunAction("echo hi"))
    if not isinstance(obs, CmdOutputObservation) or obs.content.strip() != "hi":
        raise RuntimeError(f"unexpected answer to echo hi: {obs!r}")


async def first_observation(sessions: Sessions, config: SandboxConfig) -> tuple[float, float]:
    """Seconds from ``__aenter__``'s start to the first ``echo hi`` observation, and to closed."""
    async with EventStream() as stream:
        t0 = time.perf_counter()
        async with DockerRuntime(stream, config, session_id=sessions.session_id()) as runtime:
            await echo(runtime)
            first = time.perf_counter() - t0
        return first, time.perf_counter() - t0


# ---------------------------------------------------------------------------- bundle


def tree_size(path: Path) -> tuple[int, int]:
    """Bytes (apparent) and number of files under ``path``."""
    total = files = 0
    for current, _, names in os.walk(path):
        for name in names:
            total += (Path(current) / name).lstat().st_size
            files += 1
    return total, files


async def bundle_creation(roots: list[Path], *, jupyter: bool) -> None:
    variants: list[tuple[str, list[str]]] = [("server", [])]
    if jupyter:
        variants.append(("server + jupyter", plugin_bundle_requirements([JupyterRequirement()])))
    for name, requirements in variants:
        root = Path(tempfile.mkdtemp(prefix="oh-bundle-bench-"))
        roots.append(root)
        make = functools.partial(make_bundle, root=root, requirements=requirements)
        t0 = time.perf_counter()
        bundle = await anyio.to_thread.run_sync(make)
        made = time.perf_counter() - t0
        t0 = time.perf_counter()
        found = await anyio.to_thread.run_sync(make)
        again = time.perf_counter() - t0
        if found.path != bundle.path:
            raise RuntimeError(f"the bundle was made twice: {bundle.path}, {found.path}")
        size, files = await anyio.to_thread.run_sync(tree_size, bundle.path)
        print(
            f"bundle ({name:<16}) made in {made:6.2f} s (target <= 30 s), "
            f"{size / MB:6.1f} MB in {files} files; found again in {again * 1000:.0f} ms  "
            f"[{load()}]"
        )
        await anyio.to_thread.run_sync(shutil.rmtree, root)
        roots.remove(root)


# ---------------------------------------------------------------------------- ready images


async def cold_starts(
    sessions: Sessions, configs: dict[str, SandboxConfig], starts: int
) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {mode: [] for mode in MODES}
    for i in range(starts):
        for mode in MODES if i % 2 == 0 else MODES[::-1]:
            first, _ = await first_observation(sessions, configs[mode])
            samples[mode].append(first)
    return samples


async def echo_latency(
    sessions: Sessions, configs: dict[str, SandboxConfig], n: int
) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {mode: [] for mode in MODES}
    async with AsyncExitStack() as stack:
        runtimes: dict[str, DockerRuntime] = {}
        for mode in MODES:
            stream = await stack.enter_async_context(EventStream())
            runtime = DockerRuntime(stream, configs[mode], session_id=sessions.session_id())
            runtimes[mode] = await stack.enter_async_context(runtime)
        for _ in range(ECHO_WARMUP):
            for runtime in runtimes.values():
                await echo(runtime)
        for i in range(n):
            for mode in MODES if i % 2 == 0 else MODES[::-1]:
                t0 = time.perf_counter()
                await echo(runtimes[mode])
                samples[mode].append(time.perf_counter() - t0)
    return samples


# ---------------------------------------------------------------------------- new images


async def export_rootfs(docker: aiodocker.Docker, base_image: str, target: Path) -> None:
    """The base image's root file system as a tar file (what ``docker export`` writes)."""
    container = await docker.containers.create(
        {"Image": base_image, "Cmd": ["true"], "Labels": {RUN_LABEL: RUN_ID}}
    )
    try:
        # aiodocker does not wrap GET /containers/{id}/export.
        async with (
            docker._query(
                f"containers/{container.id}/export", timeout=aiohttp.ClientTimeout()
            ) as response,
            await anyio.open_file(target, "wb") as out,
        ):
            async for chunk in response.content.iter_chunked(1 << 20):
                await out.write(chunk)
    finally:
        await container.delete(force=True)


async def file_chunks(path: Path) -> AsyncIterator[bytes]:
    async with await anyio.open_file(path, "rb") as f:
        while chunk := await f.read(1 << 20):
            yield chunk


class ImageMaker:
    """Makes images never seen before from the base: each has a label of its own."""

    def __init__(
        self, docker: aiodocker.Docker, base_image: str, how: str, rootfs: Path | None
    ) -> None:
        self.docker = docker
        self._base = base_image
        self._how = how
        self._rootfs = rootfs
        self._env: list[str] = []

    async def prepare(self) -> None:
        if self._how == "import":
            assert self._rootfs is not None
            info = await self.docker.images.inspect(self._base)
            # An import keeps no image config: carry the base's environment over.
            self._env = list((info.get("Config") or {}).get("Env") or [])
            await export_rootfs(self.docker, self._base, self._rootfs)

    async def make(self, tag: str) -> str:
        labels = f'LABEL {RUN_LABEL}="{RUN_ID}" {IMAGE_LABEL}="{tag}"'
        if self._how == "import":
            assert self._rootfs is not None
            await import_image(
                self.docker,
                file_chunks(self._rootfs),
                repository=IMAGE_REPOSITORY,
                tag=tag,
                changes=[labels, *(f"ENV {item}" for item in self._env)],
            )
        else:
            container = await self.docker.containers.create(
                {"Image": self._base, "Cmd": ["true"], "Labels": {RUN_LABEL: RUN_ID}}
            )
            try:
                await container.commit(repository=IMAGE_REPOSITORY, tag=tag, changes=[labels])
            finally:
                await container.delete(force=True)
        return f"{IMAGE_REPOSITORY}:{tag}"


async def never_seen(
    sessions: Sessions, maker: ImageMaker, images: int
) -> dict[str, list[tuple[float, float]]]:
    """Per mode: (first observation, closed) seconds for each of ``images`` new images."""
    samples: dict[str, list[tuple[float, float]]] = {mode: [] for mode in MODES}
    # Each mode's images in a row, as an evaluation runs them: a build leaves the engine
    # and the disk busy for a while, which interleaving would charge to mount mode.
    for mode in MODES:
        for i in range(images):
            tag = f"{RUN_ID}-{mode}-{i}"
            image = await maker.make(tag)
            try:
                config = sessions.config(runtime_mode=mode, base_container_image=image)
                samples[mode].append(await first_observation(sessions, config))
                if mode == "build":
                    await check_built_from_scratch(maker.docker, tag)
            finally:
                await remove_labelled_images(f"{IMAGE_LABEL}={tag}")
    return samples


async def check_built_from_scratch(docker: aiodocker.Docker, tag: str) -> None:
    """The build-mode sandbox on image ``tag`` ran a runtime image built from scratch."""
    # Images built FROM the throwaway base inherit its labels.
    filters = {"label": [f"{IMAGE_LABEL}={tag}", f"{BUILD_FROM_LABEL}=scratch"]}
    if not await docker.images.list(filters=filters):
        raise RuntimeError(f"no runtime image was built from scratch on {tag}")


# ---------------------------------------------------------------------------- cleanup


async def bench_all(
    args: argparse.Namespace, roots: list[Path], logs: list[Path], rootfs: Path
) -> None:
    print(
        f"any image, no build: base {args.base_image}, {os.cpu_count()} cores, "
        f"images made by {args.make}  [{load()}]"
    )
    await bundle_creation(roots, jupyter=args.jupyter_bundle)

    sessions = Sessions()
    t0 = time.perf_counter()
    # Into this run's repository, labelled: removed at the end like everything else.
    built = await build_runtime_image(
        args.base_image,
        repository=RUNTIME_REPOSITORY,
        labels={RUN_LABEL: RUN_ID},
        on_progress=lambda event: logs.append(Path(event.log_file)) if event.log_file else None,
    )
    print(
        f"runtime image of the base      {built.build_from!r} build in "
        f"{time.perf_counter() - t0:.2f} s (engine layer cache allowed), "
        "for the build-mode cold starts"
    )
    configs = {
        "mount": sessions.config(runtime_mode="mount", base_container_image=args.base_image),
        "build": sessions.config(runtime_container_image=built.image),
    }
    for mode in MODES:
        first, _ = await first_observation(sessions, configs[mode])
        note = " (finds the bundle)" if mode == "mount" else ""
        print(f"first sandbox of the process ({mode}){note}: {first * 1000:.0f} ms")

    cold = await cold_starts(sessions, configs, args.starts)
    for mode in MODES:
        print(f"cold start ({mode}, image ready)   {p50_p90(cold[mode])}")
    print(f"cold start                        {ratio(cold['mount'], cold['build'])}  [{load()}]")

    echoes = await echo_latency(sessions, configs, args.n)
    for mode in MODES:
        print(f"echo hi ({mode})                  {percentiles_ms(echoes[mode])}")
    print(
        f"echo hi                           {ratio(echoes['mount'], echoes['build'])}  [{load()}]"
    )

    async with open_docker() as docker:
        maker = ImageMaker(docker, args.base_image, args.make, rootfs)
        await maker.prepare()
        samples = await never_seen(sessions, maker, args.images)
    for mode in MODES:
        firsts = [first for first, _ in samples[mode]]
        what = "no build" if mode == "mount" else "build from scratch + start"
        target = "  (target p50 <= 1 s)" if mode == "mount" else ""
        print(f"never-seen image ({mode}: {what}) to first observation{target}")
        print(f"    {p50_p90(firsts)}   max {max(firsts):.2f} s")
    totals = {mode: sum(closed for _, closed in samples[mode]) for mode in MODES}
    print(
        f"{args.images} distinct images one after another (start, first observation, close; "
        "each mode's in a row)  "
        f"[{load()}]"
    )
    for mode in MODES:
        note = "  (includes the builds)" if mode == "build" else ""
        print(
            f"    {mode:<5} total {totals[mode]:8.2f} s   "
            f"({totals[mode] / args.images:.2f} s per image){note}"
        )
    print(f"    mount/build = {totals['mount'] / totals['build']:.3f}")


async def main(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    roots: list[Path] = []
    logs: list[Path] = []
    work = Path(tempfile.mkdtemp(prefix="oh-any-image-bench-"))
    try:
        await bench_all(args, roots, logs, work / "rootfs.tar")
    finally:
        with anyio.CancelScope(shield=True):
            for root in [*roots, work]:
                await anyio.to_thread.run_sync(
                    functools.partial(shutil.rmtree, root, ignore_errors=True)
                )
            # The build logs of this run's builds (the throwaway bases' names hold RUN_ID).
            logs += cache_dir("build-logs").glob(f"*{RUN_ID}*.log")
            for log in logs:
                log.unlink(missing_ok=True)
            stuck = await remove_labelled_images(f"{RUN_LABEL}={RUN_ID}")
            async with open_docker() as docker:
                sandboxes = await list_sandboxes(docker)
                left = await docker.images.list(
                    all=True, filters={"label": [f"{RUN_LABEL}={RUN_ID}"]}
                )
            ours = [s.name for s in sandboxes if s.session_id.startswith(SESSION_PREFIX)]
            print(
                f"left behind                 {len(ours)} containers, {len(left)} images of ours "
                f"({stuck} could not be removed); whole run {time.perf_counter() - t0:.0f} s  "
                f"[{load()}]"
            )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-image", default=DEFAULT_BASE_IMAGE)
    parser.add_argument(
        "--images", type=int, default=20, help="never-seen images per mode (build mode builds each)"
    )
    parser.add_argument("--starts", type=int, default=7, help="cold starts per mode")
    parser.add_argument("--n", type=int, default=500, help="echo hi round trips per mode")
    parser.add_argument(
        "--make",
        choices=("commit", "import"),
        default="commit",
        help="how each never-seen image is made from the base",
    )
    parser.add_argument("--no-jupyter-bundle", dest="jupyter_bundle", action="store_false")
    asyncio.run(main(parser.parse_args()))
