"""Test images that mount mode must serve as they are, made here (no registry).

- :func:`make_busybox_image`: Debian's static busybox and its applet links,
  nothing else (no bash, no python, no libc, no /etc/passwd, no /tmp, no /workspace);
- :func:`make_debian_without_python`: the bootstrapped base image with every
  python3 package purged (in a container without network: purging downloads nothing);
- :func:`make_bullseye_image`: Debian 11 by debootstrap (glibc 2.31, older than the
  host's), through :func:`openhands_rt.image.bootstrap_base_image`.

The fixtures (session-scoped: the bullseye one takes a minute or two) put the
run's labels on each image and remove it at the end; conftest.py imports them.
"""

from __future__ import annotations

import asyncio
import io
import os
import subprocess
import tarfile
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path

import aiodocker
import pytest
from aiodocker.exceptions import DockerError

from openhands_rt.docker_client import import_image, open_docker
from openhands_rt.image import bootstrap_base_image

__all__ = [
    "BUSYBOX",
    "bullseye_image",
    "busybox_image",
    "busybox_tar",
    "debian_without_python_image",
    "make_bullseye_image",
    "make_busybox_image",
    "make_debian_without_python",
    "remove_image",
]

BUSYBOX = Path("/bin/busybox")
TEST_IMAGES = "openhands-rt-test"

# Run as root in the base image; fails (and says what is left) unless python3 is gone.
_PURGE_PYTHON = """\
set -e
apt-get purge -y --auto-remove 'python3*' 'libpython3*'
left="$(dpkg-query -W -f '${Package}\\n' | grep -i python || true)"
files="$(ls -d /usr/bin/python* /usr/lib/python3* /usr/lib/*/libpython3* 2>/dev/null || true)"
if [ -n "$left$files" ] || command -v python3; then
    echo "python is left: $left $files" >&2
    exit 1
fi
"""


def busybox_tar() -> bytes:
    """A root filesystem as a tar: /bin/busybox and a symbolic link per applet."""
    if not os.access(BUSYBOX, os.X_OK):
        pytest.fail("busybox-static is not installed (apt-get install busybox-static)")
    applets = subprocess.run(
        [str(BUSYBOX), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        directory = tarfile.TarInfo("bin")
        directory.type, directory.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(directory)
        tar.add(BUSYBOX, "bin/busybox")
        for applet in applets:
            if applet != "busybox":
                link = tarfile.TarInfo(f"bin/{applet}")
                link.type, link.linkname = tarfile.SYMTYPE, "busybox"
                tar.addfile(link)
    return buffer.getvalue()


def _label_change(labels: Mapping[str, str]) -> str:
    return "LABEL " + " ".join(f'{key}="{value}"' for key, value in labels.items())


async def make_busybox_image(
    docker: aiodocker.Docker,
    *,
    tag: str,
    labels: Mapping[str, str],
    changes: Sequence[str] = (),
) -> str:
    """Import :func:`busybox_tar` as ``openhands-rt-test/busybox:<tag>``; its name.

    ``changes``: more Dockerfile instructions for the import (``VOLUME /data``)."""
    data = busybox_tar()

    async def chunks() -> AsyncIterator[bytes]:
        yield data

    repository = f"{TEST_IMAGES}/busybox"
    await import_image(
        docker,
        chunks(),
        repository=repository,
        tag=tag,
        changes=[_label_change(labels), "ENV PATH=/bin", *changes],
    )
    return f"{repository}:{tag}"


async def make_debian_without_python(
    docker: aiodocker.Docker, base_image: str, *, tag: str, labels: Mapping[str, str]
) -> str:
    """``base_image`` with every python3 package purged, committed as
    ``openhands-rt-test/debian-no-python:<tag>``; its name."""
    container = await docker.containers.create(
        {
            "Image": base_image,
            "Entrypoint": ["/bin/sh", "-c", _PURGE_PYTHON],
            "Cmd": [],
            "User": "0:0",
            "Labels": dict(labels),
            "HostConfig": {"NetworkMode": "none"},
        }
    )
    try:
        await container.start()
        status = (await container.wait())["StatusCode"]
        if status != 0:
            logs = "".join(await container.log(stdout=True, stderr=True))
            pytest.fail(f"purging python3 from {base_image} failed ({status}):\n{logs}")
        repository = f"{TEST_IMAGES}/debian-no-python"
        await container.commit(
            repository=repository,
            tag=tag,
            message="apt-get purge python3*",
            changes=["ENTRYPOINT []", 'CMD ["/bin/bash"]'],
        )
    finally:
        await container.delete(force=True)
    return f"{repository}:{tag}"


async def make_bullseye_image(*, tag: str, labels: Mapping[str, str]) -> str:
    """Debian bullseye by debootstrap as ``openhands-rt-test/bullseye:<tag>``; its name."""
    return await bootstrap_base_image(
        f"{TEST_IMAGES}/bullseye:{tag}", suite="bullseye", labels=labels
    )


async def remove_image(name: str) -> None:
    async with open_docker() as docker:
        try:
            await docker.images.delete(name, force=True)
        except DockerError as exc:
            if exc.status != 404:
                raise


async def _in_docker_busybox(tag: str, labels: Mapping[str, str]) -> str:
    async with open_docker() as docker:
        return await make_busybox_image(docker, tag=tag, labels=labels)


async def _in_docker_no_python(base_image: str, tag: str, labels: Mapping[str, str]) -> str:
    async with open_docker() as docker:
        return await make_debian_without_python(docker, base_image, tag=tag, labels=labels)


@pytest.fixture(scope="session")
def busybox_image(test_run_id: str, test_labels: dict[str, str]) -> Iterator[str]:
    """A busybox-only image (:func:`make_busybox_image`); removed at the end."""
    name = asyncio.run(_in_docker_busybox(test_run_id, test_labels))
    yield name
    asyncio.run(remove_image(name))


@pytest.fixture(scope="session")
def debian_without_python_image(
    base_image: str, test_run_id: str, test_labels: dict[str, str]
) -> Iterator[str]:
    """The base image without python3 (:func:`make_debian_without_python`); removed at the end."""
    name = asyncio.run(_in_docker_no_python(base_image, test_run_id, test_labels))
    yield name
    asyncio.run(remove_image(name))


@pytest.fixture(scope="session")
def bullseye_image(test_run_id: str, test_labels: dict[str, str]) -> Iterator[str]:
    """Debian bullseye (:func:`make_bullseye_image`, a minute or two); removed at the end."""
    name = asyncio.run(make_bullseye_image(tag=test_run_id, labels=test_labels))
    yield name
    asyncio.run(remove_image(name))
