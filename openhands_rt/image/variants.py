"""The three ways of building a runtime image, and how one build reports progress.

:class:`VariantBuilder` builds ``scratch`` (FROM the base image: probe it,
install python3/bash with its package manager if missing, the wheelhouse, the
source), ``versioned`` (FROM the version-tagged image: dependencies and source)
and ``lock`` (FROM the lock-tagged image: the source only), each through the
engine's build endpoint with a tar context made here. :class:`BuildReporter`
writes a build's raw output to its log file and turns it into the handful of
progress events the caller sees. :mod:`openhands_rt.image.build` decides which
variant runs.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiodocker
import aiohttp
import anyio

from openhands_rt.docker.engine import EngineError, EngineUnreachable, translated
from openhands_rt.docker_client import image_exists
from openhands_rt.errors import SandboxBuildError, SandboxError
from openhands_rt.image.build_progress import BuildProgress, BuildProgressTracker, Stage
from openhands_rt.image.buildlog import BuildOutput, summarize_error
from openhands_rt.image.context import build_context, can_compile_for
from openhands_rt.image.dockerfile import (
    Variant,
    render_dockerfile,
    render_prelude,
    system_packages_step,
)
from openhands_rt.image.logfile import BuildLog
from openhands_rt.image.probe import ImageProbe, PythonInfo, probe_image
from openhands_rt.image.tags import ImageTags
from openhands_rt.image.wheelhouse import PIP_WHEEL, Wheelhouse, prepare_wheelhouse

__all__ = [
    "LABEL_PREFIX",
    "LAYOUT_LABEL",
    "LAYOUT_REVISION",
    "BuildInputs",
    "BuildProgressCallback",
    "BuildReporter",
    "VariantBuilder",
    "usable_image",
]

logger = logging.getLogger("openhands_rt.image.build")

LABEL_PREFIX = "org.openhands-rt"
#: Revision of what the Dockerfile template puts where. The tags cannot see the
#: template, so an image of another revision is treated as absent (and its tags
#: are rebuilt) rather than built upon. Bump it with every such template change.
LAYOUT_REVISION = "2"
LAYOUT_LABEL = f"{LABEL_PREFIX}.layout"

#: Called with each :class:`BuildProgress` of a build; a plain function or a coroutine
#: function (awaited before the build goes on).
BuildProgressCallback = Callable[[BuildProgress], "Awaitable[None] | None"]

_CHUNK = 256 * 1024


@dataclass(frozen=True)
class BuildInputs:
    """What one build is made of: tags, version, source, requirements, plugins."""

    tags: ImageTags
    version: str
    source_id: str  # the source tag's own part: names the source's directory in the image
    source_dirs: tuple[Path, ...]
    requirements: tuple[str, ...]
    pins: Mapping[str, str]
    plugin_names: tuple[str, ...]


class BuildReporter:
    """One build's reporting: raw lines to the log file, progress events to the caller."""

    def __init__(self, log: BuildLog, on_progress: BuildProgressCallback | None) -> None:
        self.log = log
        self._on_progress = on_progress
        self._tracker: BuildProgressTracker | None = None

    async def line(self, line: str) -> None:
        """A raw output line (a :data:`ProgressCallback` for the steps below)."""
        await self.log.write(line)
        if self._tracker is not None:
            for event in self._tracker.feed(line, time.monotonic()):
                await self._emit(event)

    async def decide(self, tracker: BuildProgressTracker) -> None:
        self._tracker = tracker
        event = tracker.decide(time.monotonic())
        if tracker.build_from == "none":
            # Nothing is built: no log file unless earlier steps already wrote one.
            if self.log.opened:
                event = dataclasses.replace(event, log_file=str(self.log.path))
            await self._notify(event)
        else:
            await self._emit(event)

    async def begin(self, stage: Stage) -> None:
        assert self._tracker is not None
        for event in self._tracker.begin(stage, time.monotonic()):
            await self._emit(event)

    def expect(self, stage: Stage, total: int) -> None:
        assert self._tracker is not None
        self._tracker.expect(stage, total)

    async def finish(self, now: float) -> None:
        assert self._tracker is not None
        event = self._tracker.finish(now, log_file=str(self.log.path))
        await self._emit(event)

    async def _emit(self, event: BuildProgress) -> None:
        # The events go into the log too: they mark where each stage's output begins.
        await self.log.write(f"== {event.message}")
        await self._notify(event)

    async def _notify(self, event: BuildProgress) -> None:
        logger.debug("build progress: %s", event.message)
        if self._on_progress is None:
            return
        result = self._on_progress(event)
        if inspect.isawaitable(result):
            await result


async def usable_image(docker: aiodocker.Docker, ref: str) -> dict[str, Any] | None:
    """``ref``'s inspect data when it exists and has this template's layout."""
    info = await image_exists(docker, ref)
    if info is None:
        return None
    labels = (info.get("Config") or {}).get("Labels") or {}
    if labels.get(LAYOUT_LABEL) != LAYOUT_REVISION:
        logger.info(
            "%s has layout %s, not %s: not reused",
            ref,
            labels.get(LAYOUT_LABEL, "(none)"),
            LAYOUT_REVISION,
        )
        return None
    return info


class VariantBuilder:
    """The three build variants for one call of :func:`build_runtime_image`."""

    def __init__(
        self,
        docker: aiodocker.Docker,
        base_image: str,
        inputs: BuildInputs,
        refs: Mapping[str, str],
        labels: Mapping[str, str],
        progress: BuildReporter,
    ) -> None:
        self._docker = docker
        self._base_image = base_image
        self._inputs = inputs
        self._refs = refs
        self._extra_labels = labels
        self._progress = progress

    async def scratch(self, *, nocache: bool) -> tuple[str, tuple[str, ...]]:
        base = await image_exists(self._docker, self._base_image)
        if base is None:
            raise SandboxError(
                f"base image {self._base_image} does not exist in the Docker engine; pull or "
                "load it first (or make one: openhands-rt base-image bootstrap)"
            )
        await self._progress.begin("inspect image")
        probe = await self._probe(self._base_image, str(base["Id"]))
        system_step = self._system_step(probe)
        python = probe.usable_python
        python_path = probe.python_path
        if system_step is not None:
            # Learn which Python the package manager brings before choosing wheels; the
            # full build below then finds this step in the engine's build cache.
            await self._progress.begin("install system packages")
            prelude_id = await self._build(
                render_prelude(self._base_image, system_step),
                tag=None,
                nocache=nocache,
                labels={f"{LABEL_PREFIX}.role": "prelude", **self._extra_labels},
            )
            installed = await self._probe(prelude_id, prelude_id)
            python = installed.usable_python
            python_path = installed.python_path
            if python is None:
                raise SandboxBuildError(
                    f"base image {self._base_image}: {probe.package_manager} installed "
                    f"{installed.python_problem()}; the server needs CPython >= 3.10"
                )
        assert python is not None
        assert python_path is not None
        wheelhouse = await self._wheelhouse(python)
        precompile = can_compile_for(python.implementation, python.version)
        dockerfile = render_dockerfile(
            "scratch",
            self._base_image,
            source_id=self._inputs.source_id,
            compile_in_image=not precompile,
            python=python_path,
            system_step=system_step,
            pip_wheel=PIP_WHEEL,
            labels=self._labels("scratch", python),
        )
        return await self._build_and_tag(
            dockerfile, wheelhouse, ("lock", "version"), nocache=nocache, precompile=precompile
        )

    async def versioned(self) -> tuple[str, tuple[str, ...]]:
        from_ref = self._refs["version"]
        info = await image_exists(self._docker, from_ref)
        if info is None:
            raise SandboxBuildError(f"{from_ref} vanished while building")
        await self._progress.begin("inspect image")
        probe = await self._probe(from_ref, str(info["Id"]))
        python = probe.usable_python
        if python is None:
            raise SandboxBuildError(
                f"{from_ref} has {probe.python_problem()}; rebuild it with --force"
            )
        wheelhouse = await self._wheelhouse(python)
        precompile = can_compile_for(python.implementation, python.version)
        dockerfile = render_dockerfile(
            "versioned",
            from_ref,
            source_id=self._inputs.source_id,
            compile_in_image=not precompile,
            pip_wheel=PIP_WHEEL,
            labels=self._labels("versioned", python),
        )
        return await self._build_and_tag(
            dockerfile, wheelhouse, ("lock",), nocache=False, precompile=precompile
        )

    async def lock(self, lock_image: Mapping[str, Any]) -> tuple[str, tuple[str, ...]]:
        # The Python the lock image was built for is on its label; no probe needed.
        labels = (lock_image.get("Config") or {}).get("Labels") or {}
        version = _parse_version(labels.get(f"{LABEL_PREFIX}.python", ""))
        precompile = version is not None and can_compile_for("cpython", version)
        dockerfile = render_dockerfile(
            "lock",
            self._refs["lock"],
            source_id=self._inputs.source_id,
            compile_in_image=not precompile,
            labels=self._labels("lock", None),
        )
        return await self._build_and_tag(dockerfile, None, (), nocache=False, precompile=precompile)

    def _system_step(self, probe: ImageProbe) -> str | None:
        missing = []
        if probe.usable_python is None:
            missing.append("python3")
        if probe.bash is None:
            missing.append("bash")
        if not missing:
            return None
        problems = [probe.python_problem()] if "python3" in missing else []
        problems += ["no bash"] if "bash" in missing else []
        if probe.package_manager is None:
            raise SandboxBuildError(
                f"base image {self._base_image} has {' and '.join(problems)}, and no package "
                "manager (apt-get, apk, dnf, microdnf, yum, zypper) to install "
                f"{' and '.join(missing)}; use an image with python3 >= 3.10 and bash"
            )
        return system_packages_step(probe.package_manager, missing)

    async def _probe(self, image: str, image_id: str) -> ImageProbe:
        return await probe_image(self._docker, image, image_id=image_id, labels=self._extra_labels)

    async def _wheelhouse(self, python: PythonInfo) -> Wheelhouse:
        await self._progress.begin("prepare wheels")
        wheelhouse = await prepare_wheelhouse(
            python,
            self._inputs.requirements,
            self._inputs.pins,
            on_progress=self._progress.line,
        )
        # pip in the image processes each pinned wheel once.
        self._progress.expect("install dependencies", len(wheelhouse.pins))
        return wheelhouse

    def _labels(self, variant: Variant, python: PythonInfo | None) -> dict[str, str]:
        tags = self._inputs.tags
        labels = {
            f"{LABEL_PREFIX}.version": self._inputs.version,
            f"{LABEL_PREFIX}.base-image": self._base_image,
            f"{LABEL_PREFIX}.lock-tag": tags.lock_tag,
            f"{LABEL_PREFIX}.source-tag": tags.source_tag,
            f"{LABEL_PREFIX}.build-from": variant,
            f"{LABEL_PREFIX}.plugins": ",".join(self._inputs.plugin_names),
            f"{LABEL_PREFIX}.role": "runtime",
            LAYOUT_LABEL: LAYOUT_REVISION,
        }
        if python is not None:
            labels[f"{LABEL_PREFIX}.python"] = python.version_text
        return {**labels, **self._extra_labels}

    async def _build_and_tag(
        self,
        dockerfile: str,
        wheelhouse: Wheelhouse | None,
        more_tags: Sequence[str],
        *,
        nocache: bool,
        precompile: bool,
    ) -> tuple[str, tuple[str, ...]]:
        """Build tagged with the source tag, then add the ``more_tags`` kinds."""
        image_id = await self._build(
            dockerfile,
            tag=self._refs["source"],
            nocache=nocache,
            wheel_files=wheelhouse.files() if wheelhouse is not None else (),
            source_dirs=self._inputs.source_dirs,
            precompile=precompile,
        )
        new_tags = [self._refs["source"]]
        await self._progress.begin("tag")
        for kind in more_tags:
            repository, _, tag = self._refs[kind].rpartition(":")
            try:
                with translated():
                    await self._docker.images.tag(image_id, repository, tag=tag)
            except EngineError as exc:
                raise SandboxBuildError(f"cannot tag {image_id} as {self._refs[kind]}") from exc
            new_tags.append(self._refs[kind])
        return image_id, tuple(new_tags)

    async def _build(
        self,
        dockerfile: str,
        *,
        tag: str | None,
        nocache: bool,
        labels: Mapping[str, str] | None = None,
        wheel_files: Sequence[Path] = (),
        source_dirs: Sequence[Path] = (),
        precompile: bool = False,
    ) -> str:
        context = await anyio.to_thread.run_sync(
            lambda: build_context(
                dockerfile,
                source_dirs=source_dirs,
                source_id=self._inputs.source_id if source_dirs else "",
                wheel_files=wheel_files,
                precompile=precompile,
            )
        )
        params: dict[str, str] = {"rm": "1", "forcerm": "1", "nocache": "1" if nocache else "0"}
        if labels:
            params["labels"] = json.dumps(labels)
        if tag is not None:
            params["t"] = tag
        output = BuildOutput()
        what = tag or f"system packages for {self._base_image}"
        try:
            with translated():
                async with self._docker._query(
                    "build",
                    "POST",
                    params=params,
                    data=_chunks(context),
                    headers={"Content-Type": "application/x-tar"},
                    timeout=aiohttp.ClientTimeout(),
                ) as response:
                    async for raw in response.content:
                        if not raw.strip():
                            continue
                        for line in output.feed(json.loads(raw)):
                            await self._line(line)
                for line in output.finish():
                    await self._line(line)
        except EngineUnreachable as exc:
            raise SandboxBuildError(
                f"building {what} failed: lost the engine ({exc.message})",
                log_tail=list(output.tail),
            ) from exc
        except EngineError as exc:
            raise SandboxBuildError(
                f"building {what} failed: {exc.message}", log_tail=list(output.tail)
            ) from exc
        if output.error is not None:
            raise SandboxBuildError(
                f"building {what} failed: {summarize_error(output.error)}",
                log_tail=list(output.tail),
            )
        if output.image_id is None:
            raise SandboxBuildError(
                f"building {what}: the engine reported no image id", log_tail=list(output.tail)
            )
        return output.image_id

    async def _line(self, line: str) -> None:
        if line.startswith("Step "):
            logger.info("build: %s", line)
        else:
            logger.debug("build: %s", line)
        await self._progress.line(line)


def _parse_version(text: str) -> tuple[int, ...] | None:
    try:
        return tuple(int(part) for part in text.split("."))
    except ValueError:
        return None


async def _chunks(data: bytes) -> AsyncIterator[bytes]:
    view = memoryview(data)
    for start in range(0, len(view), _CHUNK):
        yield bytes(view[start : start + _CHUNK])
