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

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import aiodocker
import anyio

from openhands_rt.docker_client import use_docker
from openhands_rt.errors import SandboxBuildError
from openhands_rt.image.build_progress import (
    BuildFrom,
    BuildProgressTracker,
)
from openhands_rt.image.local_wheels import LocalWheel, resolve_local_requirements
from openhands_rt.image.logfile import open_build_log
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
from openhands_rt.image.variants import (
    LABEL_PREFIX,
    LAYOUT_REVISION,
    BuildInputs,
    BuildProgressCallback,
    BuildReporter,
    VariantBuilder,
    usable_image,
)

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


def _resolve_inputs(
    base_image: str,
    version: str | None,
    lock_files: Sequence[Path] | None,
    source_dirs: Sequence[Path] | None,
    plugins: Sequence[str | PluginLike],
    local: Mapping[str, LocalWheel],
) -> BuildInputs:
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
    return BuildInputs(
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
) -> BuildInputs:
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
        progress = BuildReporter(log, on_progress)
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
    progress: BuildReporter,
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
        builder = VariantBuilder(client, base_image, inputs, refs, labels, progress)
        build_from: BuildFrom
        if force_rebuild:
            build_from = "scratch"
        else:
            existing = await usable_image(client, refs["source"])
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
            lock_image = await usable_image(client, refs["lock"])
            if lock_image is not None:
                build_from = "lock"
            elif await usable_image(client, refs["version"]) is not None:
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
