"""Mount mode: the image as it is, with the runtime bundle the server starts from.

``SandboxConfig(runtime_mode="mount")`` builds nothing: the container is made
from ``runtime_container_image`` (else ``base_container_image``) exactly as it
is, and the server, its interpreter and a static bash come from the runtime
bundle (:mod:`openhands_rt.bundle`) bind-mounted read-only
(:func:`openhands_rt.docker.spec.container_config`). The bundle is made once
per host, interpreter, source version and set of plugin requirements, and
shared by every sandbox; this process remembers the ones it has found.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import aiodocker
import anyio

from openhands_rt.bundle import Bundle, BundleError, make_bundle
from openhands_rt.bundle.layout import MANIFEST
from openhands_rt.bundle.make import plugin_bundle_requirements
from openhands_rt.bundle.prune import remove_bundles, stale_bundles
from openhands_rt.config import SandboxConfig
from openhands_rt.docker.engine import translated
from openhands_rt.docker.lifecycle import require_image
from openhands_rt.errors import SandboxError
from openhands_rt.image.cache import cache_dir

__all__ = ["check_image", "mounted_image", "prune_bundles", "runtime_bundle"]

_found: dict[tuple[tuple[str, tuple[str, ...]], ...], Bundle] = {}
_found_lock = threading.Lock()


def mounted_image(config: SandboxConfig) -> str:
    """The image a mount-mode sandbox is made from, as it is."""
    return config.runtime_container_image or config.base_container_image


async def check_image(docker: aiodocker.Docker, image: str) -> None:
    """Raise :class:`SandboxError` unless ``image`` exists in the engine (nothing is pulled)."""
    await require_image(
        docker,
        image,
        what="image",
        how="make one with `openhands-rt base-image bootstrap`, or bring it with "
        "`docker load`/`docker import`",
    )


def _plugin_key(config: SandboxConfig) -> tuple[tuple[str, tuple[str, ...]], ...]:
    return tuple(sorted((p.name, tuple(p.requirements)) for p in config.plugins))


def _find_or_make(config: SandboxConfig) -> Bundle:
    key = _plugin_key(config)
    with _found_lock:
        bundle = _found.get(key)
    if bundle is not None and (bundle.path / MANIFEST).is_file():
        return bundle
    try:
        bundle = make_bundle(requirements=plugin_bundle_requirements(list(config.plugins)))
    except (BundleError, OSError) as exc:
        raise SandboxError(f"cannot make the runtime bundle: {exc}") from exc
    with _found_lock:
        _found[key] = bundle
    return bundle


async def runtime_bundle(config: SandboxConfig, *, report: Callable[[str], None]) -> Bundle:
    """The bundle for ``config``'s plugins: found, or made (seconds, once per source version).

    ``report``: a readable progress message when this process has not used it yet.
    """
    with _found_lock:
        known = _plugin_key(config) in _found
    if not known:
        report("preparing the runtime bundle (made once per host and source version)")
    return await anyio.to_thread.run_sync(_find_or_make, config)


async def prune_bundles(docker: aiodocker.Docker, *, root: Path | None = None) -> list[Path]:
    """Remove the bundles under ``root`` (default: the cache's) that no container mounts,
    running or stopped, except those this process uses; the ones removed.

    A bundle removed here is made again (seconds) by the next sandbox that needs it.
    """
    root = root or cache_dir("bundles")
    with translated():
        containers = await docker.containers.list(all=True)
    in_use = [
        str(mount.get("Source", ""))
        for container in containers
        for mount in (container["Mounts"] or [])
    ]
    with _found_lock:
        keep = [bundle.path for bundle in _found.values()]

    def prune() -> list[Path]:
        return remove_bundles(root, stale_bundles(root, keep=keep, in_use=in_use))

    return await anyio.to_thread.run_sync(prune)
