"""Talking to a Swarm manager: streamed requests, events, images and secrets.

aiodocker has no Swarm secrets, service logs or image distribution of its own
that fit here, so these go through its raw request (``Docker._query``) with
the response always released (a stream left before its end would keep its
connection), and the engine's refusals translated as everywhere else
(:func:`openhands_rt.docker.engine.translated`).
"""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiodocker
import aiohttp
import anyio

from openhands_rt.docker.engine import EngineError, NotFound, translated
from openhands_rt.docker.lifecycle import demultiplex_lines
from openhands_rt.docker_client import split_image_ref

__all__ = [
    "NO_AUTH",
    "RegistryAuth",
    "auth_header",
    "copy_image",
    "create_secret",
    "distribute_image",
    "engine_events",
    "engine_request",
    "push_image",
    "read_json_stream",
    "remove_service",
    "service_log_tail",
]

_NO_TIMEOUT = aiohttp.ClientTimeout()
_LOG_TAIL_SECONDS = 10.0  # a service's logs come from its node through the manager
_CHUNK = 1 << 20
#: A registry without auth still wants the header on push: base64 of ``{}``.
NO_AUTH = base64.b64encode(b"{}").decode()
# (manager id, registry, image id) -> the digest reference pushed; one push at a time each.
_pushed: dict[tuple[str, str, str], str] = {}


@dataclass(frozen=True)
class RegistryAuth:
    """Credentials for the registry (basic auth): used to push from the manager or a
    node, and handed to Swarm with each service so that its node can pull.

    A registry the sandboxes can reach must not serve pulls without them: a
    snapshot's image holds its sandbox's workspace.
    """

    username: str
    password: str = field(repr=False)


def auth_header(auth: RegistryAuth | None, registry: str) -> str:
    """The ``X-Registry-Auth`` header's value (base64url of the credentials' JSON)."""
    if auth is None:
        return NO_AUTH
    body = {"username": auth.username, "password": auth.password, "serveraddress": registry}
    return base64.urlsafe_b64encode(json.dumps(body).encode()).decode()


_push_locks: dict[tuple[str, str, str], anyio.Lock] = {}


@asynccontextmanager
async def engine_request(
    docker: aiodocker.Docker, path: str, method: str = "GET", **kwargs: Any
) -> AsyncIterator[aiohttp.ClientResponse]:
    """A raw request whose response is released on the way out (no timeout: streams)."""
    with translated():
        async with docker._query(path, method, timeout=_NO_TIMEOUT, **kwargs) as response:
            try:
                yield response
            finally:
                response.release()


async def service_log_tail(docker: aiodocker.Docker, service_id: str, lines: int) -> list[str]:
    """The service's last ``lines`` log lines (stdout and stderr, through the manager);
    [] when they cannot be read (or not within 10 s)."""
    params = {"stdout": "1", "stderr": "1", "tail": str(lines)}
    data = b""
    try:
        with anyio.move_on_after(_LOG_TAIL_SECONDS):
            async with engine_request(
                docker, f"services/{service_id}/logs", params=params
            ) as response:
                data = await response.read()
    except (EngineError, OSError, aiohttp.ClientError):
        return []
    return [line.decode(errors="replace") for line in demultiplex_lines(data)][-lines:]


@asynccontextmanager
async def engine_events(
    docker: aiodocker.Docker, filters: Mapping[str, Sequence[str]]
) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
    """The engine's events (``GET /events``), subscribed when this is entered."""
    async with engine_request(
        docker, "events", params={"filters": json.dumps(filters)}
    ) as response:

        async def items() -> AsyncIterator[dict[str, Any]]:
            async for raw in response.content:
                if raw.strip():
                    yield json.loads(raw)

        yield items()


async def wait_for_line(
    manager: aiodocker.Docker, service_id: str | None, prefix: bytes, heard: anyio.Event
) -> None:
    """Set ``heard`` once a line of the service's standard output starts with ``prefix``
    (its log followed through the manager: the tasks made later are in it too)."""
    params = {"follow": "1", "stdout": "1", "stderr": "0"}
    async with engine_request(manager, f"services/{service_id}/logs", params=params) as response:
        buffer = b""
        async for data in response.content.iter_any():
            buffer += data
            if any(line.startswith(prefix) for line in demultiplex_lines(buffer)):
                heard.set()
                return


async def read_json_stream(response: aiohttp.ClientResponse) -> list[dict[str, Any]]:
    """Every item of a JSON progress stream; an error item raises :class:`EngineError`."""
    items = []
    async for raw in response.content:
        if not raw.strip():
            continue
        item = json.loads(raw)
        if "error" in item or "errorDetail" in item:
            detail = item.get("errorDetail") or {}
            raise EngineError(str(detail.get("message") or item.get("error")))
        items.append(item)
    return items


async def create_secret(
    manager: aiodocker.Docker, name: str, data: bytes, labels: Mapping[str, str]
) -> str:
    """Make the secret ``name`` holding ``data``; its id. Shielded: a create cancelled in
    flight may be carried out anyway, and its id must reach the caller's clean-up."""
    body = {"Name": name, "Labels": dict(labels), "Data": base64.b64encode(data).decode()}
    with anyio.CancelScope(shield=True), translated():
        made = await manager._query_json("secrets/create", "POST", data=json.dumps(body))
    return str(made["ID"])


async def remove_service(
    manager: aiodocker.Docker, service_id: str | None, secret_ids: Sequence[str]
) -> None:
    """Remove a service, then its secrets (refused only while a service refers to
    them: after it, always accepted); what is gone already is no error."""
    paths = [f"services/{service_id}"] if service_id is not None else []
    for path in [*paths, *(f"secrets/{secret_id}" for secret_id in secret_ids)]:
        try:
            with translated():
                await manager._query_json(path, "DELETE")
        except NotFound:
            pass


async def copy_image(source: aiodocker.Docker, target: aiodocker.Docker, image: str) -> None:
    """Copy ``image`` from one engine to another (save → load, streamed)."""
    async with (
        engine_request(source, f"images/{image}/get") as saved,
        engine_request(
            target,
            "images/load",
            "POST",
            params={"quiet": "1"},
            headers={"Content-Type": "application/x-tar"},
            data=saved.content.iter_chunked(_CHUNK),
        ) as loaded,
    ):
        await read_json_stream(loaded)


async def _engine_id(docker: aiodocker.Docker) -> str:
    with translated():
        info = await docker.system.info()
    return str(info["ID"])


async def _has_image(docker: aiodocker.Docker, ref: str) -> dict[str, Any] | None:
    try:
        with translated():
            return dict(await docker.images.inspect(ref))
    except NotFound:
        return None


async def _registry_has(manager: aiodocker.Docker, ref: str, auth: str) -> bool:
    """Whether the registry holds ``ref`` (asked through the manager's engine)."""
    try:
        async with engine_request(
            manager, f"distribution/{ref}/json", headers={"X-Registry-Auth": auth}
        ) as response:
            await response.read()
    except EngineError:
        return False
    return True


async def distribute_image(
    local: aiodocker.Docker,
    manager: aiodocker.Docker,
    image: str,
    registry: str | None,
    auth: RegistryAuth | None = None,
) -> str:
    """The reference a service uses for ``image`` (on the ``local`` engine).

    ``registry=None``: the image is on every node already; its name as it is.
    Otherwise it is copied to the manager's engine when that is another engine
    (save → load), tagged ``REGISTRY/<repository>:<tag>`` there, pushed, and
    named by digest (``REGISTRY/<repository>@sha256:…``): every node pulls
    exactly this image. A push already made by this process, which the registry
    still holds, is not made again.
    """
    if registry is None:
        return image
    found = await _has_image(local, image)
    if found is None:
        raise NotFound(f"no such image on this host's engine: {image}")
    image_id = str(found["Id"])
    manager_id = await _engine_id(manager)
    key = (manager_id, registry, image_id)
    lock = _push_locks.setdefault(key, anyio.Lock())
    async with lock:
        done = _pushed.get(key)
        header = auth_header(auth, registry)
        if done is not None and await _registry_has(manager, done, header):
            return done
        if await _has_image(manager, image_id) is None:
            if manager_id == await _engine_id(local):
                raise NotFound(f"the image {image} vanished from the engine")
            await copy_image(local, manager, image_id)
        if image.startswith("sha256:") or "@" in image:
            repository, tag = "openhands-rt/image", image_id.removeprefix("sha256:")[:12]
        else:
            repository, tag = split_image_ref(image)
        target = f"{registry}/{repository}"
        with translated():
            await manager.images.tag(image_id, target, tag=tag)
        _pushed[key] = await push_image(manager, target, tag, auth_header=header)
        return _pushed[key]


async def push_image(
    engine: aiodocker.Docker, repository: str, tag: str, *, auth_header: str
) -> str:
    """Push ``repository:tag`` (``REGISTRY/…``) from ``engine``; ``repository@digest``.

    Raises :class:`EngineError` when the push fails or reports no digest.
    """
    async with engine_request(
        engine,
        f"images/{repository}/push",
        "POST",
        params={"tag": tag},
        headers={"X-Registry-Auth": auth_header},
    ) as response:
        items = await read_json_stream(response)
    digests = [i["aux"]["Digest"] for i in items if "Digest" in (i.get("aux") or {})]
    if not digests:
        raise EngineError(f"pushing {repository}:{tag} reported no digest")
    return f"{repository}@{digests[-1]}"
