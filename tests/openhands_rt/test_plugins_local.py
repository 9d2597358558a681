"""Plugins through LocalRuntime: the Jupyter kernel and a third-party plugin package.

The third-party plugins come from ``tests/plugins/shout`` (the ``oh-shout-plugin``
distribution in the dev dependency group), found only through its entry points:
``shout`` works, ``broken`` raises while initializing, ``hangs`` never finishes.
"""

from __future__ import annotations

import base64
import getpass
import json
import ssl
import struct
import sys
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from container_server.plugin_registry import PluginLoadError, load_plugins
from container_server.plugins import Plugin
from events import (
    CmdOutputObservation,
    CmdRunAction,
    ErrorObservation,
    EventStream,
    IPythonRunCellAction,
    IPythonRunCellObservation,
    Observation,
    RuntimeStatusObservation,
)
from openhands_rt import (
    ALL_PLUGINS,
    JupyterRequirement,
    LocalRuntime,
    PluginRequirement,
    SandboxConfig,
)
from openhands_rt.plugins import UnknownPluginError

# One kernel for the module (a sandbox with a kernel takes ~1 s to start), used by the
# tests marked so; they set up the state they use.
on_the_module_kernel = pytest.mark.asyncio(loop_scope="module")

SHOUT = PluginRequirement("shout")
TRAILER = "[Jupyter current working directory: {cwd}]\n[Jupyter Python interpreter: {python}]"


def tiny_png() -> bytes:
    """A valid 2x1 RGB PNG, made by hand (no image library)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", 2, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00" + bytes([255, 0, 0, 0, 0, 255]))
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")
    )


class QuickPluginDeadlineRuntime(LocalRuntime):
    """LocalRuntime whose server gives each plugin 1 s to initialize (default 60 s)."""

    def _server_command(self, working_dir: str) -> list[str]:
        return [*super()._server_command(working_dir), "--plugin-init-timeout", "1"]


async def cell(rt: LocalRuntime, code: str, timeout: float | None = None) -> str:
    """Run a cell; its content without the trailer (which is checked)."""
    obs = await rt.run(IPythonRunCellAction(code, timeout=timeout))
    assert isinstance(obs, IPythonRunCellObservation), obs
    assert obs.code == code
    cwd = (await rt.run(CmdRunAction("pwd"))).content.strip()
    trailer = "\n" + TRAILER.format(cwd=cwd, python=sys.executable)
    assert obs.content.endswith(trailer), obs.content
    return obs.content[: -len(trailer)]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def jupyter(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalRuntime]:
    home = tmp_path_factory.mktemp("jupyter-home")
    config = SandboxConfig(
        workspace_dir=str(home / "workspace"),
        plugins=[JupyterRequirement()],
        env={"HOME": str(home)},
        no_change_timeout=2.0,
        timeout=30.0,
    )
    async with EventStream() as stream, LocalRuntime(stream, config, session_id="jpy") as rt:
        yield rt


# --- the registry -------------------------------------------------------------------


def test_all_plugins_has_builtins_and_entry_point_plugins() -> None:
    from oh_shout_plugin import ShoutPlugin

    names = list(ALL_PLUGINS)
    assert {"jupyter", "shout", "broken", "hangs"} <= set(names)
    assert names == sorted(names)
    assert ALL_PLUGINS["shout"] is ShoutPlugin
    assert issubclass(ALL_PLUGINS["jupyter"], Plugin)
    assert ALL_PLUGINS["jupyter"].name == "jupyter"
    assert "no-such-plugin" not in ALL_PLUGINS


async def test_unknown_plugin_error_names_the_known_ones() -> None:
    async with EventStream() as stream:
        rt = LocalRuntime(stream, SandboxConfig(plugins=[SHOUT, PluginRequirement("shuot")]))
        with pytest.raises(UnknownPluginError) as info:
            await rt.connect()
        assert rt.process is None
    message = str(info.value)
    assert "'shuot'" in message
    known = message.split("known plugins: ", 1)[1]
    # The test suite's own plugins (this one included) are never offered to a user.
    assert known.split(" (")[0].split(", ") == ["agent_skills", "jupyter"]
    assert "openhands_rt.plugins" in message


def test_the_sandbox_side_offers_no_test_plugin_either() -> None:
    with pytest.raises(PluginLoadError) as info:
        load_plugins(["shuot"])
    known = str(info.value).split("known plugins: ", 1)[1]
    assert known.split(", ") == ["agent_skills", "jupyter"]
    # ... while a test plugin named explicitly still loads (the suite's plugin tests).
    assert load_plugins(["shout"]).names == ["shout"]


# --- a third-party plugin --------------------------------------------------------------


async def test_third_party_plugin_serves_cells(tmp_path: Path) -> None:
    workspace = tmp_path / "workspace"
    config = SandboxConfig(
        workspace_dir=str(workspace), plugins=[SHOUT], env={"HOME": str(tmp_path)}
    )
    async with EventStream() as stream, LocalRuntime(stream, config) as rt:
        # Initialized before the server listens: the trace is there at once.
        trace = json.loads((tmp_path / ".shout-ready").read_text())
        # The server defers the CA load of aiohttp's client context to before its
        # plugins start (container_server.tls): the plugin sees the system's CAs.
        system_cas = ssl.create_default_context().cert_store_stats()["x509_ca"]
        assert system_cas > 0
        assert trace == {
            "username": None,
            "user": getpass.getuser(),
            "working_dir": str(workspace),
            "default_tls_cas": system_cas,
        }
        obs = await rt.run(IPythonRunCellAction("print('quiet please')"))
        assert isinstance(obs, IPythonRunCellObservation)
        assert obs.content == "PRINT('QUIET PLEASE')"
        assert obs.cause is not None
        action = stream.get(obs.cause)
        assert isinstance(action, IPythonRunCellAction)
        assert action.code == "print('quiet please')"
        # Commands are still the shell's.
        echoed = await rt.run(CmdRunAction("echo still lower case"))
        assert echoed.content.strip() == "still lower case"
        errors = [
            e
            for e in stream.iter_events()
            if isinstance(e, RuntimeStatusObservation) and e.status == "error"
        ]
        assert errors == []


async def test_failing_and_hanging_plugins_are_reported_and_the_rest_serves(
    tmp_path: Path,
) -> None:
    config = SandboxConfig(
        workspace_dir=str(tmp_path),
        plugins=[PluginRequirement("broken"), PluginRequirement("hangs")],
        no_change_timeout=2.0,
    )
    async with EventStream() as stream:
        started = time.monotonic()
        async with QuickPluginDeadlineRuntime(stream, config) as rt:
            # The hanging plugin costs its deadline, not the runtime's startup timeout.
            assert time.monotonic() - started < 10
            obs = await rt.run(CmdRunAction("echo served"))
            assert isinstance(obs, CmdOutputObservation)
            assert obs.content.strip() == "served"
            assert obs.exit_code == 0
            no_kernel = await rt.run(IPythonRunCellAction("print(1)"))
            errors = [
                e.message
                for e in stream.iter_events()
                if isinstance(e, RuntimeStatusObservation) and e.status == "error"
            ]
    assert sorted(errors) == [
        "plugin 'broken' failed to initialize: RuntimeError: the broken plugin always breaks",
        "plugin 'hangs' did not initialize within 1.0 s",
    ]
    assert isinstance(no_kernel, ErrorObservation)
    assert no_kernel.error_id == "plugin_unavailable"
    assert "the broken plugin always breaks" in no_kernel.content
    assert "'hangs' did not initialize" in no_kernel.content


# --- Jupyter ------------------------------------------------------------------------


@on_the_module_kernel
async def test_jupyter_print(jupyter: LocalRuntime) -> None:
    await jupyter.run(CmdRunAction(f"cd '{jupyter.working_dir}'"))
    obs = await jupyter.run(IPythonRunCellAction("print(1)"))
    assert isinstance(obs, IPythonRunCellObservation)
    assert jupyter.working_dir is not None
    assert obs.content == "1\n" + TRAILER.format(cwd=jupyter.working_dir, python=sys.executable)
    assert obs.image_urls == []


@on_the_module_kernel
async def test_jupyter_state_persists(jupyter: LocalRuntime) -> None:
    assert await cell(jupyter, "x = 41") == "[Code executed successfully with no output]"
    assert await cell(jupyter, "x + 1") == "42"


@on_the_module_kernel
async def test_jupyter_traceback_is_plain_text(jupyter: LocalRuntime) -> None:
    text = await cell(jupyter, "1/0")
    assert "\x1b" not in text
    assert "Cell In[1], line 1" in text
    assert text.endswith("ZeroDivisionError: division by zero")


@on_the_module_kernel
async def test_jupyter_cwd_follows_the_shell(jupyter: LocalRuntime) -> None:
    assert jupyter.working_dir is not None
    sub = Path(jupyter.working_dir) / "sub dir"
    sub.mkdir()
    (sub / "note.txt").write_text("found me")
    cd = await jupyter.run(CmdRunAction(f"cd '{sub}'"))
    assert isinstance(cd, CmdOutputObservation)
    assert cd.exit_code == 0
    assert await cell(jupyter, "import os; print(os.getcwd())") == str(sub)
    assert await cell(jupyter, "print(open('note.txt').read())") == "found me"
    await jupyter.run(CmdRunAction("cd .."))
    assert await cell(jupyter, "print(os.getcwd())") == jupyter.working_dir


@on_the_module_kernel
async def test_jupyter_timeout_interrupts_and_keeps_state(jupyter: LocalRuntime) -> None:
    await cell(jupyter, "x = 41")
    started = time.monotonic()
    text = await cell(jupyter, "import time\ntime.sleep(30)", timeout=2)
    elapsed = time.monotonic() - started
    assert 1.9 <= elapsed < 6, elapsed
    assert "KeyboardInterrupt" in text
    assert text.endswith("[Execution timed out (2 seconds).]")
    assert await cell(jupyter, "x + 1") == "42"


@on_the_module_kernel
async def test_jupyter_png_arrives_as_data_url(jupyter: LocalRuntime) -> None:
    png = tiny_png()
    code = f"from IPython.display import Image, display\ndisplay(Image(data={png!r}))"
    obs: Observation = await jupyter.run(IPythonRunCellAction(code))
    assert isinstance(obs, IPythonRunCellObservation)
    assert len(obs.image_urls) == 1
    prefix = "data:image/png;base64,"
    assert obs.image_urls[0].startswith(prefix)
    assert base64.b64decode(obs.image_urls[0][len(prefix) :], validate=True) == png
    assert obs.content.startswith("<IPython.core.display.Image object>\n")


async def test_agent_skills_needs_the_jupyter_plugin() -> None:
    from container_server.agent_skills import AgentSkillsPlugin
    from container_server.plugins import PluginHost

    alone = PluginHost([AgentSkillsPlugin()])
    (status,) = await alone.initialize(None, working_dir=".")
    assert not status.ready
    assert "add the jupyter plugin" in status.error
