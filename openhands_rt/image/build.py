"""Build the runtime image for a base image, never more than needed.

Decision, most specific first (``build_from``):

1. ``none``      an image with the source tag exists: use it;
2. ``lock``      the lock-tagged image exists: build FROM it, only copying the
                 source; tag the source tag;
3. ``versioned`` the version-tagged image exists: build FROM it, reinstalling
                 the dependencies and copying the source; tag source + lock;
4. ``scratch``   build FROM the base image; tag source + lock + version.

An image counts as existing only when its ``org.openhands-rt.layout`` label is
this template's :data:`LAYOUT_REVISION` (the tags cannot see the template).
``force_rebuild`` goes straight to 4, without the engine's build cache. Builds go
through the engine's build endpoint with a tar context made here. The raw
output (the engine's, pip's, the package manager's) goes to a build log file
(:mod:`openhands_rt.image.logfile`); ``on_progress`` gets a handful of
:class:`~openhands_rt.image.build_progress.BuildProgress` events made from it
(decision, stages, counts, the end naming the log file). A failed build raises
:class:`SandboxBuildError` naming the log file and quoting its last 30 lines.
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
from openhands_rt.docker_client import image_exists, use_docker
from openhands_rt.errors import SandboxBuildError, SandboxError
from openhands_rt.image.build_progress import (
    BuildFrom,
    BuildProgress,
    BuildProgressTracker,
    Stage,
)
from openhands_rt.image.buildlog import BuildOutput, summarize_error
from openhands_rt.image.context import build_context, can_compile_for
from openhands_rt.image.dockerfile import (
    Variant,
    render_dockerfile,
    render_prelude,
    system_packages_step,
)
from openhands_rt.image.local_wheels import LocalWheel, resolve_local_requirements
from openhands_rt.image.logfile import BuildLog, open_build_log
from openhands_rt.image.probe import ImageProbe, PythonInfo, probe_image
from openhands_rt.image.progress import ProgressCallback
from openhands_rt.image.project import (
    PluginLike,
    find_project,
    image_requirements,
    locked_versions,
    plugin_lock_file,
    plugin_requirements,
    render_plugin_lock,
)
from openhands_rt.image.tags import ImageTags, compute_tags, default_version
from openhands_rt.image.wheelhouse import PIP_WHEEL, Wheelhouse, prepare_wheelhouse

__all__ = [
    "DEFAULT_REPOSITORY",
    "LABEL_PREFIX",
    "LAYOUT_REVISION",
    "BuildFrom",
    "BuildProgressCallback",
    "BuildResult",
    "build_runtime_image",
    "runtime_image_tags",
]

logger = logging.getLogger(__name__)

DEFAULT_REPOSITORY = "openhands-rt/runtime"
LABEL_PREFIX = "org.openhands-rt"
#: Revision of what the Dockerfile template puts where. The tags cannot see the
#: template, so an image of another revision is treated as absent (and its tags
#: are rebuilt) rather than built upon. Bump it with every such template change.
LAYOUT_REVISION = "2"
_LAYOUT_LABEL = f"{LABEL_PREFIX}.layout"

#: Called with each :class:`BuildProgress` of a build; a plain function or a coroutine
#: function (awaited before the build goes on).
BuildProgressCallback = Callable[[BuildProgress], "Awaitable[None] | None"]

_CHUNK = 256 * 1024


@dataclass(frozen=True)
class BuildResult:
    """What :func:`build_runtime_image` did.

    ``image`` is the full ``repository:source_tag`` name to run; ``new_tags`` the
    full names this call (re)pointed at the image (empty for ``none``).
    """

    image: str
    build_from: BuildFrom
    tags: ImageTags
    repository: str
    image_id: str
    new_tags: tuple[str, ...]
    seconds: float


@dataclass(frozen=True)
class _Inputs:
    tags: ImageTags
    version: str
    source_id: str  # the source tag's own part: names the source's directory in the image
    source_dirs: tuple[Path, ...]
    requirements: tuple[str, ...]
    pins: Mapping[str, str]
    plugin_names: tuple[str, ...]


def _resolve_inputs(
    base_image: str,
    version: str | None,
    lock_files: Sequence[Path] | None,
    source_dirs: Sequence[Path] | None,
    plugins: Sequence[str | PluginLike],
    local: Mapping[str, LocalWheel],
) -> _Inputs:
    project = find_project()
    pins = locked_versions(project.lock_file)
    by_plugin = plugin_requirements(plugins, project.pyproject)
    # A requirement on a host path is installed from its wheel and locked by its hash.
    to_install = {
        name: [local[r].install_requirement if r in local else r for r in reqs]
        for name, reqs in by_plugin.items()
    }
    to_lock = {
        name: [local[r].lock_entry if r in local else r for r in reqs]
        for name, reqs in by_plugin.items()
    }
    requirements = image_requirements(project.pyproject)
    requirements += sorted({req for reqs in to_install.values() for req in reqs})
    if lock_files is None:
        lock_files = [project.pyproject, project.lock_file]
        plugin_lock = render_plugin_lock(to_lock, pins)
        if plugin_lock:
            lock_files.append(plugin_lock_file(plugin_lock))
    dirs = tuple(project.source_dirs if source_dirs is None else source_dirs)
    version = version or default_version()
    tags = compute_tags(base_image, version=version, lock_files=lock_files, source_dirs=dirs)
    return _Inputs(
        tags=tags,
        version=version,
        source_id=tags.source_tag[len(tags.lock_tag) + 1 :],
        source_dirs=dirs,
        requirements=tuple(requirements),
        pins=pins,
        plugin_names=tuple(sorted(by_plugin)),
    )


async def _inputs_for(
    base_image: str,
    version: str | None,
    lock_files: Sequence[Path] | None,
    source_dirs: Sequence[Path] | None,
    plugins: Sequence[str | PluginLike],
    on_progress: ProgressCallback | None,
) -> _Inputs:
    own = [req for plugin in plugins if not isinstance(plugin, str) for req in plugin.requirements]
    local = await resolve_local_requirements(own, on_progress=on_progress)
    return await anyio.to_thread.run_sync(
        _resolve_inputs, base_image, version, lock_files, source_dirs, plugins, local
    )


async def runtime_image_tags(
    base_image: str,
    *,
    plugins: Sequence[str | PluginLike] = (),
    version: str | None = None,
    lock_files: Sequence[Path] | None = None,
    source_dirs: Sequence[Path] | None = None,
    on_progress: ProgressCallback | None = None,
) -> ImageTags:
    """The tags :func:`build_runtime_image` would give this image, without any engine.

    Plugins on host paths are resolved to their wheels (a project directory is
    built into one, see :mod:`openhands_rt.image.local_wheels`), since their
    bytes enter the lock tag.
    """
    inputs = await _inputs_for(base_image, version, lock_files, source_dirs, plugins, on_progress)
    return inputs.tags


async def build_runtime_image(
    base_image: str,
    *,
    force_rebuild: bool = False,
    repository: str = DEFAULT_REPOSITORY,
    plugins: Sequence[str | PluginLike] = (),
    on_progress: BuildProgressCallback | None = None,
    docker: aiodocker.Docker | None = None,
    version: str | None = None,
    lock_files: Sequence[Path] | None = None,
    source_dirs: Sequence[Path] | None = None,
    labels: Mapping[str, str] | None = None,
) -> BuildResult:
    """Make sure a runtime image for ``base_image`` exists; build what is missing.

    ``plugins`` (names or ``PluginRequirement``s) add their requirements to the
    image and to its lock tag; a requirement may point at a wheel or a project
    directory on this host (``"name @ file:///path"``, see
    :mod:`openhands_rt.image.local_wheels`). ``version``, ``lock_files`` and ``source_dirs``
    default to this package's version, ``pyproject.toml`` + ``uv.lock`` (+ the
    plugins' pinned requirements) and ``events/`` + ``container_server/``; tests
    override them, and ``repository``, to build side images. ``labels`` are added
    to every image and container the build makes. ``docker`` is used when given
    (the caller closes it), else a client is opened for the call.

    ``on_progress`` gets the build's :class:`BuildProgress` events: the decision
    first, then each stage and count, and a ``finished`` event naming the build
    log file (about 15 events for a scratch build; none carries raw output).

    Raises :class:`SandboxError` when the base image does not exist (checked
    before anything is built) or the engine is unreachable, and
    :class:`SandboxBuildError` when the image cannot be built; it names the build
    log file (``log_file``) and quotes its last lines (``log_tail``).
    """
    started = time.monotonic()
    async with open_build_log(base_image) as log:
        progress = _Progress(log, on_progress)
        try:
            return await _build_runtime_image(
                base_image,
                started=started,
                progress=progress,
                force_rebuild=force_rebuild,
                repository=repository,
                plugins=plugins,
                docker=docker,
                version=version,
                lock_files=lock_files,
                source_dirs=source_dirs,
                labels=labels or {},
            )
        except SandboxBuildError as exc:
            if not log.opened or exc.log_file is not None:
                raise
            raise SandboxBuildError(
                exc.message, log_tail=list(log.tail), log_file=str(log.path)
            ) from exc


async def _build_runtime_image(
    base_image: str,
    *,
    started: float,
    progress: _Progress,
    force_rebuild: bool,
    repository: str,
    plugins: Sequence[str | PluginLike],
    docker: aiodocker.Docker | None,
    version: str | None,
    lock_files: Sequence[Path] | None,
    source_dirs: Sequence[Path] | None,
    labels: Mapping[str, str],
) -> BuildResult:
    inputs = await _inputs_for(base_image, version, lock_files, source_dirs, plugins, progress.line)
    tags = inputs.tags
    refs = {
        "source": f"{repository}:{tags.source_tag}",
        "lock": f"{repository}:{tags.lock_tag}",
        "version": f"{repository}:{tags.version_tag}",
    }
    async with use_docker(docker) as client:
        builder = _Builder(client, base_image, inputs, refs, labels, progress)
        build_from: BuildFrom
        if force_rebuild:
            build_from = "scratch"
        else:
            existing = await _usable_image(client, refs["source"])
            if existing is not None:
                logger.info("runtime image %s exists; no build", refs["source"])
                tracker = BuildProgressTracker("none", refs["source"], started=started)
                await progress.decide(tracker)
                return BuildResult(
                    image=refs["source"],
                    build_from="none",
                    tags=tags,
                    repository=repository,
                    image_id=str(existing["Id"]),
                    new_tags=(),
                    seconds=time.monotonic() - started,
                )
            lock_image = await _usable_image(client, refs["lock"])
            if lock_image is not None:
                build_from = "lock"
            elif await _usable_image(client, refs["version"]) is not None:
                build_from = "versioned"
            else:
                build_from = "scratch"
        logger.info("building %s (%s)", refs["source"], build_from)
        tracker = BuildProgressTracker(
            build_from, refs["source"], started=started, forced=force_rebuild
        )
        await progress.decide(tracker)
        if build_from == "lock":
            assert lock_image is not None
            image_id, new_tags = await builder.lock(lock_image)
        elif build_from == "versioned":
            image_id, new_tags = await builder.versioned()
        else:
            image_id, new_tags = await builder.scratch(nocache=force_rebuild)
    finished = time.monotonic()
    seconds = finished - started
    logger.info("built %s (%s) in %.1f s", refs["source"], build_from, seconds)
    await progress.finish(finished)
    return BuildResult(
        image=refs["source"],
        build_from=build_from,
        tags=tags,
        repository=repository,
        image_id=image_id,
        new_tags=new_tags,
        seconds=seconds,
    )


class _Progress:
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


async def _usable_image(docker: aiodocker.Docker, ref: str) -> dict[str, Any] | None:
    """``ref``'s inspect data when it exists and has this template's layout."""
    info = await image_exists(docker, ref)
    if info is None:
        return None
    labels = (info.get("Config") or {}).get("Labels") or {}
    if labels.get(_LAYOUT_LABEL) != LAYOUT_REVISION:
        logger.info(
            "%s has layout %s, not %s: not reused",
            ref,
            labels.get(_LAYOUT_LABEL, "(none)"),
            LAYOUT_REVISION,
        )
        return None
    return info


class _Builder:
    """The three build variants for one call of :func:`build_runtime_image`."""

    def __init__(
        self,
        docker: aiodocker.Docker,
        base_image: str,
        inputs: _Inputs,
        refs: Mapping[str, str],
        labels: Mapping[str, str],
        progress: _Progress,
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
            _LAYOUT_LABEL: LAYOUT_REVISION,
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
