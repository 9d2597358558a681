"""Small shared helpers over aiodocker: opening a client, image lookups, importing a rootfs.

Every aiodocker/aiohttp error is translated here into :class:`SandboxError`, so the
callers deal with one error tree.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterable, AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote, urlencode

import aiodocker
import aiohttp

from openhands_rt.docker.engine import EngineError, NotFound, translated
from openhands_rt.errors import SandboxError

__all__ = ["image_exists", "import_image", "open_docker", "split_image_ref", "use_docker"]

logger = logging.getLogger(__name__)


def split_image_ref(ref: str) -> tuple[str, str]:
    """``"repo/name:tag"`` → ``("repo/name", "tag")``; no tag → ``"latest"``.

    A registry port (``host:5000/name``) is not a tag. A digest reference cannot
    name an image to create, so it raises ValueError.
    """
    if "@" in ref:
        raise ValueError(f"{ref!r} is a digest reference; give a name:tag")
    colon = ref.rfind(":")
    if colon > ref.rfind("/"):
        return ref[:colon], ref[colon + 1 :]
    return ref, "latest"


@asynccontextmanager
async def open_docker(url: str | None = None) -> AsyncIterator[aiodocker.Docker]:
    """Open an aiodocker client (``DOCKER_HOST`` or the local socket) and check it answers.

    Raises :class:`SandboxError` when no engine is reachable.
    """
    try:
        docker = aiodocker.Docker(url=url)
    except (ValueError, AssertionError, OSError) as exc:
        raise SandboxError(f"no Docker engine found ({exc}); start one first") from exc
    try:
        try:
            with translated():
                await docker.version()
        except (EngineError, OSError) as exc:
            raise SandboxError(
                f"the Docker engine at {docker.docker_host} does not answer: {exc}"
            ) from exc
        yield docker
    finally:
        await docker.close()


@asynccontextmanager
async def use_docker(docker: aiodocker.Docker | None) -> AsyncIterator[aiodocker.Docker]:
    """Yield ``docker`` when given (the caller owns it), else a client opened for this block."""
    if docker is not None:
        yield docker
        return
    async with open_docker() as opened:
        yield opened


async def image_exists(docker: aiodocker.Docker, ref: str) -> dict[str, Any] | None:
    """The image's inspect data, or None when no image has that name/tag/id."""
    try:
        with translated():
            return await docker.images.inspect(ref)
    except NotFound:
        return None
    except EngineError as exc:
        raise SandboxError(f"cannot inspect image {ref}: {exc.message}") from exc


async def import_image(
    docker: aiodocker.Docker,
    rootfs_tar: AsyncIterable[bytes],
    *,
    repository: str,
    tag: str,
    changes: Sequence[str] = (),
    message: str = "",
) -> str:
    """Import a root filesystem tar stream as ``repository:tag``.

    The endpoint is ``POST /images/create?fromSrc=-`` (what ``docker import`` uses).

    ``changes`` are Dockerfile instructions applied to the image (``CMD [...]``,
    ``ENV K=V``, ``LABEL k=v``, ...). Returns the new image's id. aiodocker does not
    wrap this endpoint, and its query helper cannot repeat a parameter, which
    ``changes`` needs, so the query string is built here.
    """
    query: list[tuple[str, str]] = [("fromSrc", "-"), ("repo", repository), ("tag", tag)]
    query += [("changes", change) for change in changes]
    if message:
        query.append(("message", message))
    path = "images/create?" + urlencode(query, quote_via=quote)
    last_status = ""
    try:
        with translated():
            async with docker._query(
                path,
                "POST",
                data=rootfs_tar,
                headers={"Content-Type": "application/x-tar"},
                timeout=aiohttp.ClientTimeout(),
                chunked=True,
            ) as response:
                async for raw in response.content:
                    line = raw.strip()
                    if not line:
                        continue
                    item = json.loads(line)
                    if "error" in item or "errorDetail" in item:
                        detail = item.get("errorDetail") or {}
                        raise SandboxError(
                            f"importing {repository}:{tag} failed: "
                            f"{detail.get('message') or item.get('error')}"
                        )
                    last_status = str(item.get("status", last_status))
    except EngineError as exc:
        raise SandboxError(f"importing {repository}:{tag} failed: {exc.message}") from exc
    inspected = await image_exists(docker, f"{repository}:{tag}")
    if inspected is None:
        raise SandboxError(
            f"importing {repository}:{tag} reported {last_status!r} but no image exists"
        )
    image_id = str(inspected["Id"])
    logger.info("imported %s:%s as %s", repository, tag, image_id)
    return image_id
