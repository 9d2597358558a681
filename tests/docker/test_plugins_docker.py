"""Plugins through DockerRuntime: a real IPython kernel and a third-party plugin in the image.

The image is built with the ``jupyter`` plugin and the ``shout`` plugin of
``tests/plugins/shout`` (a project directory on this host: the builder makes a
wheel of it and puts it into the wheelhouse); each runtime then initializes
the plugins its config names.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import time
import uuid
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from support import RUNTIME_MODES

from events import (
    CmdOutputObservation,
    CmdRunAction,
    EventStream,
    IPythonRunCellAction,
    IPythonRunCellObservation,
    RuntimeStatusObservation,
)
from openhands_rt import DockerRuntime, JupyterRequirement, PluginRequirement, SandboxConfig
from openhands_rt.bundle import BUNDLE_MOUNT
from openhands_rt.docker_client import open_docker
from openhands_rt.docker_runtime import SANDBOX_USER, SERVER_PYTHON
from openhands_rt.image import LABEL_PREFIX, BuildResult, build_runtime_image
from openhands_rt.image.build import runtime_image_tags

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]

# One container with a kernel for the Jupyter tests, marked so; they set up the state they use.
on_the_module_kernel = pytest.mark.asyncio(loop_scope="module")

SHOUT_DIR = Path(__file__).resolve().parents[1] / "plugins" / "shout"
SHOUT = PluginRequirement("shout", (f"oh-shout-plugin @ {SHOUT_DIR.as_uri()}",))
TRAILER = "[Jupyter current working directory: {cwd}]\n[Jupyter Python interpreter: {python}]"


def tiny_png() -> bytes:
    """A valid 2x1 RGB PNG, made by hand (no image library)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", 2, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" + bytes([0, 255, 0, 0, 0, 255]))
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


@pytest.fixture(scope="module")
def plugin_build(base_image: str, test_repository: str, test_labels: dict[str, str]) -> BuildResult:
    return asyncio.run(
        build_runtime_image(
            base_image,
            repository=test_repository,
            labels=test_labels,
            plugins=[JupyterRequirement(), SHOUT],
        )
    )


ImageChoice = dict[str, str]


def image_choice(request: pytest.FixtureRequest) -> ImageChoice:
    """In build mode the image built with the plugins; in mount mode the base image as it
    is, the plugins' requirements bundled from this host's environment. (Resolved in a
    synchronous fixture: the image fixtures run their own event loop.)"""
    if request.param == "mount":
        return {
            "runtime_mode": "mount",
            "base_container_image": request.getfixturevalue("base_image"),
        }
    return {"runtime_container_image": request.getfixturevalue("plugin_build").image}


def config(
    image: ImageChoice, labels: dict[str, str], *plugins: PluginRequirement
) -> SandboxConfig:
    return SandboxConfig(
        **image,  # type: ignore[arg-type]
        labels=dict(labels),
        plugins=list(plugins),
        no_change_timeout=5.0,
        timeout=60.0,
    )


def kernel_python(rt: DockerRuntime) -> str:
    """The interpreter the Jupyter trailer names: the venv's, or the bundle's."""
    return f"{BUNDLE_MOUNT}/bin/python3" if rt.config.runtime_mode == "mount" else SERVER_PYTHON


@pytest.fixture(params=RUNTIME_MODES)
def image(request: pytest.FixtureRequest) -> ImageChoice:
    return image_choice(request)


@pytest.fixture(scope="module", params=RUNTIME_MODES)
def jupyter_image(request: pytest.FixtureRequest) -> ImageChoice:
    return image_choice(request)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def jupyter(
    jupyter_image: ImageChoice, test_labels: dict[str, str]
) -> AsyncIterator[DockerRuntime]:
    cfg = config(jupyter_image, test_labels, JupyterRequirement())
    session_id = "jpy" + uuid.uuid4().hex[:10]
    async with EventStream() as stream, DockerRuntime(stream, cfg, session_id=session_id) as rt:
        yield rt


async def cell(rt: DockerRuntime, code: str, timeout: float | None = None) -> str:
    """Run a cell; its content without the trailer (which is checked)."""
    obs = await rt.run(IPythonRunCellAction(code, timeout=timeout))
    assert isinstance(obs, IPythonRunCellObservation), obs
    pwd = await rt.run(CmdRunAction("pwd"))
    trailer = "\n" + TRAILER.format(cwd=pwd.content.strip(), python=kernel_python(rt))
    assert obs.content.endswith(trailer), obs.content
    return obs.content[: -len(trailer)]


async def test_plugins_enter_the_image_and_its_lock_tag(
    plugin_build: BuildResult, base_image: str
) -> None:
    plain = await runtime_image_tags(base_image)
    jupyter_only = await runtime_image_tags(base_image, plugins=[JupyterRequirement()])
    assert await runtime_image_tags(base_image, plugins=[JupyterRequirement(), SHOUT]) == (
        plugin_build.tags
    )
    lock_tags = {plain.lock_tag, jupyter_only.lock_tag, plugin_build.tags.lock_tag}
    assert len(lock_tags) == 3
    # The source is the same, so only the lock part differs.
    assert plugin_build.tags.source_tag.endswith(plain.source_tag[len(plain.lock_tag) :])
    async with open_docker() as docker:
        info = await docker.images.inspect(plugin_build.image)
    labels = info["Config"]["Labels"]
    assert labels[f"{LABEL_PREFIX}.plugins"] == "jupyter,shout"
    assert labels[f"{LABEL_PREFIX}.lock-tag"] == plugin_build.tags.lock_tag


async def test_third_party_plugin_in_the_container(
    image: ImageChoice, test_labels: dict[str, str]
) -> None:
    async with EventStream() as stream:
        cfg = config(image, test_labels, SHOUT)
        async with DockerRuntime(stream, cfg, session_id="shout" + uuid.uuid4().hex[:10]) as rt:
            obs = await rt.run(IPythonRunCellAction("import this"))
            assert isinstance(obs, IPythonRunCellObservation)
            assert obs.content == "IMPORT THIS"
            trace = await rt.run(CmdRunAction("cat ~/.shout-ready"))
            assert isinstance(trace, CmdOutputObservation)
            assert trace.exit_code == 0, trace.content
            # The CAs the image's own python loads by default (the bundle's OpenSSL reads
            # the same file); the server loaded them for its plugins (container_server.tls).
            counted = await rt.run(
                CmdRunAction(
                    'python3 -c "import ssl; '
                    "print(ssl.create_default_context().cert_store_stats()['x509_ca'])\""
                )
            )
            system_cas = int(counted.content.strip())
            assert system_cas > 0
            assert json.loads(trace.content) == {
                "username": SANDBOX_USER,
                "user": SANDBOX_USER,
                "working_dir": "/workspace",
                "default_tls_cas": system_cas,
            }
            if cfg.runtime_mode == "mount":  # bundled: its metadata is in the bundle
                metadata = f"{BUNDLE_MOUNT}/lib/python3*/*-packages/oh_shout_plugin-*/METADATA"
                version = await rt.run(CmdRunAction(f"sed -n 's/^Version: //p' {metadata}"))
            else:
                version = await rt.run(
                    CmdRunAction(
                        f'{SERVER_PYTHON} -c "import importlib.metadata as m; '
                        "print(m.version('oh-shout-plugin'))\""
                    )
                )
            assert version.content.strip() == "0.1.0"
        errors = [
            e
            for e in stream.iter_events()
            if isinstance(e, RuntimeStatusObservation) and e.status == "error"
        ]
        assert errors == []


@on_the_module_kernel
async def test_jupyter_print(jupyter: DockerRuntime) -> None:
    await jupyter.run(CmdRunAction("cd /workspace"))
    obs = await jupyter.run(IPythonRunCellAction("print(1)"))
    assert isinstance(obs, IPythonRunCellObservation)
    assert obs.content == "1\n" + TRAILER.format(cwd="/workspace", python=kernel_python(jupyter))
    assert obs.image_urls == []


@on_the_module_kernel
async def test_jupyter_state_and_traceback(jupyter: DockerRuntime) -> None:
    assert await cell(jupyter, "x = 41") == "[Code executed successfully with no output]"
    assert await cell(jupyter, "x + 1") == "42"
    text = await cell(jupyter, "1/0")
    assert "\x1b" not in text
    assert text.endswith("ZeroDivisionError: division by zero")


@on_the_module_kernel
async def test_jupyter_cwd_follows_the_shell(jupyter: DockerRuntime) -> None:
    made = await jupyter.run(CmdRunAction("mkdir -p /tmp/elsewhere && cd /tmp/elsewhere"))
    assert isinstance(made, CmdOutputObservation)
    assert made.exit_code == 0
    assert await cell(jupyter, "import os; print(os.getcwd())") == "/tmp/elsewhere"
    await jupyter.run(CmdRunAction("cd /workspace"))
    assert await cell(jupyter, "print(os.getcwd())") == "/workspace"


@on_the_module_kernel
async def test_jupyter_timeout_interrupts_and_keeps_state(jupyter: DockerRuntime) -> None:
    await cell(jupyter, "x = 41")
    started = time.monotonic()
    text = await cell(jupyter, "import time\ntime.sleep(30)", timeout=2)
    assert 1.9 <= time.monotonic() - started < 8
    assert "KeyboardInterrupt" in text
    assert text.endswith("[Execution timed out (2 seconds).]")
    assert await cell(jupyter, "x + 1") == "42"


@on_the_module_kernel
async def test_jupyter_png_arrives_as_data_url(jupyter: DockerRuntime) -> None:
    png = tiny_png()
    code = f"from IPython.display import Image, display\ndisplay(Image(data={png!r}))"
    obs = await jupyter.run(IPythonRunCellAction(code))
    assert isinstance(obs, IPythonRunCellObservation)
    prefix = "data:image/png;base64,"
    assert len(obs.image_urls) == 1
    assert obs.image_urls[0].startswith(prefix)
    assert base64.b64decode(obs.image_urls[0][len(prefix) :], validate=True) == png
