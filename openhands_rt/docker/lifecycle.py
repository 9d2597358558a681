"""Engine operations on one sandbox container: its image, readiness, logs, exit, removal.

Readiness is the server's own "listening on" line in the container's log
stream (:func:`wait_listening`: an event, not a poll), under a deadline the
caller sets; a container that never became ready is reported with its last
log lines (:func:`log_tail`).

Every engine error here arrives as an :mod:`openhands_rt.docker.engine`
error; cleanup (:func:`remove`, the probe container of :func:`image_files`)
is shielded from cancellation, so a cancelled start leaves nothing behind.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import aiodocker
import anyio

from events.wire import READY_LINE_PREFIX
from openhands_rt.config import SandboxConfig
from openhands_rt.docker.engine import EngineError, NotFound, translated
from openhands_rt.docker.rundir import run_dir_of
from openhands_rt.errors import SandboxError, SandboxStartError

__all__ = [
    "demultiplex_lines",
    "exit_reason",
    "find_container",
    "image_files",
    "log_tail",
    "remove",
    "require_image",
    "resolve_image",
    "wait_listening",
]

logger = logging.getLogger(__name__)

_LOG_TAIL = 50


async def find_container(docker: aiodocker.Docker, name: str, *, run_dir: str | None = None) -> Any:
    """The container named ``name`` (an aiodocker ``DockerContainer``), or None.

    ``run_dir``: only the one that mounts this run directory (the one a start
    made, even when its create request was cancelled), and None when the engine
    cannot say.
    """
    try:
        with translated():
            container = await docker.containers.get(name)
            if run_dir is None:
                return container
            info = await container.show()
    except NotFound:
        return None
    except (EngineError, OSError):
        if run_dir is None:
            raise
        return None
    return container if run_dir_of(info) == run_dir else None


async def resolve_image(
    docker: aiodocker.Docker, config: SandboxConfig, *, report: Callable[[str], None]
) -> str:
    """The runtime image to start: ``config.runtime_container_image`` when set (it
    must exist locally), else the one built (or found built) for the base image.

    ``report``: a few readable progress messages while building.
    """
    if config.runtime_container_image:
        image = config.runtime_container_image
        await require_image(
            docker, image, what="runtime image", how="build it with `openhands-rt build`"
        )
        return image
    from openhands_rt.image import BuildProgress, build_runtime_image

    report(f"resolving the runtime image for {config.base_container_image}")

    def progress(event: BuildProgress) -> None:
        # A handful of readable events; the raw build output is in the build log.
        report(event.message)

    result = await build_runtime_image(
        config.base_container_image,
        plugins=list(config.plugins),
        repository=config.runtime_image_repository,
        on_progress=progress,
        docker=docker,
    )
    built: str = result.image
    return built


async def require_image(docker: aiodocker.Docker, image: str, *, what: str, how: str) -> None:
    """Raise :class:`SandboxError` unless ``image`` exists in the engine: nothing is pulled.

    ``what`` names the image in the message, ``how`` says how to get one."""
    try:
        with translated():
            await docker.images.inspect(image)
    except NotFound as exc:
        raise SandboxError(
            f"{what} {image!r} does not exist locally (nothing can be pulled here; {how})"
        ) from exc


async def remove(container: Any) -> None:
    """Force-remove ``container``; already gone or going is fine. Not cancellable."""
    with anyio.CancelScope(shield=True):
        try:
            with translated():
                await container.delete(force=True, v=True)
        except EngineError as exc:
            logger.debug("removing %s: %s", getattr(container, "id", container), exc)


async def image_files(
    docker: aiodocker.Docker, image: str, paths: Sequence[str], *, labels: Mapping[str, str]
) -> list[str]:
    """Text of files in ``image`` ("" for a missing one), read through a container
    that is never started. ``labels``: the probe's, so that gc reaps it if we die here."""
    with translated():
        probe = await docker.containers.create(
            {"Image": image, "Entrypoint": ["/nonexistent"], "Labels": dict(labels)}
        )
    try:
        texts = []
        for path in paths:
            try:
                with translated():
                    tar = await probe.get_archive(path)
            except NotFound:
                texts.append("")
                continue
            with tar:
                member = tar.extractfile(tar.getmembers()[0])
                data = member.read() if member is not None else b""
            texts.append(data.decode("utf-8", errors="surrogateescape"))
        return texts
    finally:
        await remove(probe)


async def wait_listening(
    docker: aiodocker.Docker, container: Any, *, name: str, since: float | None = None
) -> None:
    """Return once the server prints its "listening on" line (followed log stream).

    ``since``: a Unix time; only log lines written after it count (a container
    started again still holds its previous run's line). Raises
    :class:`SandboxStartError` when the container exits first, an
    :class:`EngineError` when the engine fails. No deadline: the caller sets
    one (``anyio.fail_after``).
    """
    params = {"stdout": "1", "stderr": "0", "follow": "1"}
    if since is not None:
        params["since"] = f"{since:.9f}"
    ready = READY_LINE_PREFIX.encode()
    with translated():
        # aiodocker's own log follower leaves its response open when the caller stops
        # early; this request is closed explicitly instead.
        async with docker._query(f"containers/{container.id}/logs", params=params) as response:
            try:
                buffer = b""
                async for data in response.content.iter_any():
                    buffer += data
                    if any(line.startswith(ready) for line in demultiplex_lines(buffer)):
                        return
            finally:
                response.close()
        info = await container.show()
    code = info["State"].get("ExitCode")
    raise SandboxStartError(f"sandbox {name} exited with code {code} before listening")


async def log_tail(container: Any) -> list[str]:
    """The container's last log lines (stdout and stderr); [] when they cannot be read."""
    try:
        with translated():
            lines = await container.log(stdout=True, stderr=True, tail=_LOG_TAIL)
    except (EngineError, OSError):
        return []
    return [line.rstrip("\n") for line in "".join(lines).splitlines()][-_LOG_TAIL:]


async def exit_reason(container: Any, result: Mapping[str, Any], *, name: str) -> str:
    """Why the container ended (``result``: Docker's wait answer), for the error event."""
    reason = f"sandbox container {name} died (exited with status {result.get('StatusCode')}"
    try:
        with translated():
            state = (await container.show())["State"]
    except (EngineError, OSError):
        state = {}
    if state.get("OOMKilled"):
        reason += ", killed by the out-of-memory killer"
    return reason + ")"


def demultiplex_lines(buffer: bytes) -> list[bytes]:
    """Lines of a Docker multiplexed log stream (8-byte frame headers), complete frames only."""
    payload = bytearray()
    offset = 0
    while offset + 8 <= len(buffer):
        size = int.from_bytes(buffer[offset + 4 : offset + 8], "big")
        if offset + 8 + size > len(buffer):
            break
        payload += buffer[offset + 8 : offset + 8 + size]
        offset += 8 + size
    return bytes(payload).splitlines()
