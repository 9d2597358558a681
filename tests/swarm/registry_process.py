"""A registry for the test cluster: Debian's ``docker-registry`` (CNCF Distribution)
as a host process of ours, on the cluster bridge's gateway address only.

Its own configuration (no auth, http, deletes allowed) and storage live in the
cluster's temporary directory; the package's configuration and service are
never used (scripts/ensure-docker.sh keeps that service from running). The port
is found by binding ``(gateway, 0)`` and closing: another process could take
it before the registry does, so an "address already in use" exit is retried
with a new port. Ready when its log says it listens (read from its standard
error, which a reader task drains for as long as it runs), then ``GET /v2/``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import anyio

__all__ = [
    "REGISTRY_BINARY",
    "RegistryProcess",
    "basic_auth",
    "registry_missing",
    "start_registry",
]

logger = logging.getLogger(__name__)

REGISTRY_BINARY = "docker-registry"
_ATTEMPTS = 3


@dataclass
class RegistryProcess:
    """A running registry: ``address`` is ``HOST:PORT`` (what nodes and images name)."""

    address: str
    root: Path
    #: The basic-auth credentials every request needs (username, password).
    credentials: tuple[str, str]
    process: asyncio.subprocess.Process
    reader: asyncio.Task[None]
    log: deque[str] = field(default_factory=lambda: deque(maxlen=50))

    @property
    def pid(self) -> int:
        return self.process.pid

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s; the process is waited for (no zombie)."""
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                with anyio.fail_after(10):
                    await self.process.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    self.process.kill()
                await self.process.wait()
        await self.reader


def registry_missing() -> str | None:
    """Why no registry can be started here, or None."""
    if shutil.which(REGISTRY_BINARY) is None:
        return (
            f"{REGISTRY_BINARY} is not installed (Debian's docker-registry package; "
            "scripts/ensure-docker.sh installs it)"
        )
    return None


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


async def _drain(stream: asyncio.StreamReader, log: deque[str], listening: asyncio.Event) -> None:
    while line := await stream.readline():
        text = line.decode(errors="replace").rstrip()
        log.append(text)
        if "listening on" in text:
            listening.set()
    listening.set()  # EOF: the waiter looks at the return code


def basic_auth(username: str, password: str) -> dict[str, str]:
    """The ``Authorization`` header of HTTP basic auth."""
    token = base64.b64encode(f"{username}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def _htpasswd(path: Path, username: str, password: str) -> None:
    """An htpasswd file with one bcrypt entry (the only kind the registry takes)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt  # glibc's libxcrypt makes bcrypt; Python 3.11 and 3.12 have it

    hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH))
    path.write_text(f"{username}:{hashed}\n")
    path.chmod(0o600)


async def _start_once(host: str, root: Path) -> RegistryProcess | None:
    port = _free_port(host)
    storage = root / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    # Every request needs these: the sandboxes can reach the registry (it is on their
    # nodes' network), and a snapshot's image holds its sandbox's workspace.
    credentials = ("openhands-rt", secrets.token_urlsafe(18))
    _htpasswd(root / "htpasswd", *credentials)
    # JSON is YAML: no YAML writer needed.
    config = {
        "version": "0.1",
        "log": {"level": "info", "accesslog": {"disabled": True}},
        "storage": {"filesystem": {"rootdirectory": str(storage)}, "delete": {"enabled": True}},
        "http": {"addr": f"{host}:{port}"},
        "auth": {"htpasswd": {"realm": "openhands-rt-test", "path": str(root / "htpasswd")}},
    }
    config_path = root / "config.yml"
    config_path.write_text(json.dumps(config, indent=1))
    # REGISTRY_* variables override the file: none of the caller's may leak in.
    env = {k: v for k, v in os.environ.items() if not k.startswith("REGISTRY_")}
    process = await asyncio.create_subprocess_exec(
        REGISTRY_BINARY,
        "serve",
        str(config_path),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        start_new_session=True,
    )
    assert process.stderr is not None
    log: deque[str] = deque(maxlen=50)
    listening = asyncio.Event()
    reader = asyncio.create_task(_drain(process.stderr, log, listening))
    registry = RegistryProcess(f"{host}:{port}", root, credentials, process, reader, log)
    try:
        with anyio.fail_after(30):
            await listening.wait()
        if not any("listening on" in line for line in log):
            await registry.stop()
            if any("address already in use" in line for line in log):
                return None
            raise RuntimeError("docker-registry exited at start:\n" + "\n".join(log))
        async with aiohttp.ClientSession() as session:
            url = f"http://{registry.address}/v2/"
            async with session.get(url) as response:
                if response.status != 401:
                    raise RuntimeError(f"GET /v2/ without credentials answered {response.status}")
            async with session.get(url, headers=basic_auth(*credentials)) as response:
                if response.status != 200:
                    raise RuntimeError(f"GET /v2/ with credentials answered {response.status}")
    except BaseException:
        with anyio.CancelScope(shield=True):
            await registry.stop()
        raise
    logger.info("test registry pid %d on %s", registry.pid, registry.address)
    return registry


async def start_registry(host: str, root: Path) -> RegistryProcess:
    """Start a registry listening on ``host`` with its files under ``root``."""
    if (missing := registry_missing()) is not None:
        raise RuntimeError(missing)
    for _ in range(_ATTEMPTS):
        registry = await _start_once(host, root)
        if registry is not None:
            return registry
    raise RuntimeError(f"no free port for the test registry on {host} in {_ATTEMPTS} attempts")
