"""The kernel's tasks: started by start(), ended by aclose(), a reader's death never silent.

Real ipykernel processes, and fake "interpreters" (shell scripts) for the starts that
fail. Each test runs in its own event loop, so the tasks it sees are its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import msgspec
import pytest
import pytest_asyncio
import zmq
import zmq.asyncio

from container_server.errors import ServerError
from container_server.jupyter import JupyterPlugin, KernelStartError
from container_server.jupyter_kernel import Kernel
from container_server.plugins import Plugin, PluginHost
from events import ErrorObservation, IPythonRunCellAction, IPythonRunCellObservation, Observation

LOST = "variables, imports and definitions from earlier cells are lost"


def other_tasks() -> set[asyncio.Task[object]]:
    current = asyncio.current_task()
    return {task for task in asyncio.all_tasks() if task is not current}


def kernel_task_names() -> list[str]:
    return sorted(task.get_name().split("-")[1] for task in other_tasks() if is_kernel_task(task))


def is_kernel_task(task: asyncio.Task[object]) -> bool:
    return task.get_name().startswith("jupyter-")


def kernel_dirs() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("oh-jupyter-*"))


def fake_python(tmp_path: Path, script: str) -> str:
    path = tmp_path / "python"
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(0o755)
    return str(path)


@pytest_asyncio.fixture
async def plugin(tmp_path: Path) -> AsyncIterator[JupyterPlugin]:
    plugin = JupyterPlugin(interrupt_grace=1.0)
    await plugin.initialize(None, working_dir=str(tmp_path))
    try:
        yield plugin
    finally:
        await plugin.aclose()


async def run(plugin: JupyterPlugin, code: str, cwd: Path) -> Observation:
    action = msgspec.structs.replace(IPythonRunCellAction(code), id=3)
    return await plugin.run(action, cwd=str(cwd))


def break_iopub_reader(kernel: Kernel, monkeypatch: pytest.MonkeyPatch) -> None:
    """The iopub reader's next read fails as a closed socket would."""

    async def broken(*args: object, **kwargs: object) -> dict[str, object]:
        raise zmq.ZMQError(zmq.ENOTSOCK, "the socket went away")

    monkeypatch.setattr(kernel.client.iopub_channel, "get_msg", broken)


def test_kernel_start_error_is_a_server_error() -> None:
    assert issubclass(KernelStartError, ServerError)
    assert issubclass(KernelStartError, RuntimeError)


async def test_kernel_owns_its_tasks_and_closing_leaves_none(tmp_path: Path) -> None:
    before = other_tasks()
    context = zmq.asyncio.Context()
    try:
        with anyio.fail_after(30):
            kernel = await Kernel.start(python=[sys.executable], cwd=str(tmp_path), context=context)
        # The host task and, in its task group, the two readers and the exit watcher.
        assert kernel_task_names() == ["exit", "iopub", "kernel", "shell"]
        ended_while_running = kernel.ended
        assert ended_while_running is False
        await kernel.aclose()
        await kernel.aclose()  # idempotent
    finally:
        context.destroy(linger=0)
    assert other_tasks() == before
    assert kernel.ended
    assert kernel.returncode is not None
    assert not Path(f"/proc/{kernel.pid}").exists()
    assert not Path(kernel.directory).exists()


async def test_constructor_starts_nothing(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec("true")
    await process.wait()
    before = other_tasks()
    context = zmq.asyncio.Context()
    try:
        from jupyter_client.asynchronous.client import AsyncKernelClient

        Kernel(process, AsyncKernelClient(context=context), str(tmp_path))
        assert other_tasks() == before
    finally:
        context.destroy(linger=0)


async def test_start_that_never_answers_is_cut_and_leaves_nothing(tmp_path: Path) -> None:
    python = fake_python(tmp_path, "exec sleep 60")
    before, dirs_before = other_tasks(), kernel_dirs()
    own = JupyterPlugin(python=python, start_timeout=1.0)
    try:
        with pytest.raises(KernelStartError, match="did not answer within 1 s"):
            await own.initialize(None, working_dir=str(tmp_path))
        # Cut in the handshake: the host task and its readers were running, and are gone.
        assert other_tasks() == before
        assert own.kernel_pid is None
    finally:
        await own.aclose()
    assert other_tasks() == before
    assert kernel_dirs() <= dirs_before


async def test_start_whose_process_exits_leaves_nothing(tmp_path: Path) -> None:
    python = fake_python(tmp_path, "echo 'kernel bootstrap failed' >&2\nexit 5")
    before, dirs_before = other_tasks(), kernel_dirs()
    own = JupyterPlugin(python=python)
    try:
        with pytest.raises(KernelStartError, match=r"exited with code 5 .*bootstrap failed"):
            await own.initialize(None, working_dir=str(tmp_path))
        assert other_tasks() == before
    finally:
        await own.aclose()
    assert kernel_dirs() <= dirs_before


async def test_cancelled_start_leaves_nothing(tmp_path: Path) -> None:
    python = fake_python(tmp_path, "exec sleep 60")
    before, dirs_before = other_tasks(), kernel_dirs()
    context = zmq.asyncio.Context()
    try:
        with anyio.move_on_after(0.5) as scope:
            await Kernel.start(python=[python], cwd=str(tmp_path), context=context)
        assert scope.cancelled_caught
    finally:
        context.destroy(linger=0)
    assert other_tasks() == before
    assert kernel_dirs() <= dirs_before
    # The fake kernel (a sleep) was killed, not left behind.
    sleepers = [
        pid
        for pid in os.listdir("/proc")
        if pid.isdigit() and Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"sleep\x0060")
    ]
    assert sleepers == []


async def test_reader_death_fails_the_cell_loudly_and_the_kernel_is_replaced(
    plugin: JupyterPlugin,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert isinstance(await run(plugin, "kept = 1", tmp_path), IPythonRunCellObservation)
    kernel = plugin._kernel
    assert kernel is not None
    old_pid = kernel.pid
    break_iopub_reader(kernel, monkeypatch)
    with caplog.at_level(logging.ERROR, logger="container_server.jupyter_kernel"):
        with anyio.fail_after(20):
            obs = await run(plugin, "print('never seen')", tmp_path)
    assert isinstance(obs, ErrorObservation), obs
    assert obs.error_id == "jupyter_kernel_unavailable"
    assert obs.content == (
        "[The connection to the IPython kernel failed (ZMQError: the socket went away), so it "
        f"was killed and restarted: {LOST}.]"
    )
    assert kernel.failure == "ZMQError: the socket went away"
    assert [r.getMessage() for r in caplog.records] == [
        f"IPython kernel {old_pid}: a channel reader died (ZMQError: the socket went away); "
        "killing the kernel"
    ]
    # The broken kernel is gone with every task it had; a new one serves the next cell.
    assert not Path(f"/proc/{old_pid}").exists()
    assert plugin.kernel_pid not in (None, old_pid)
    assert kernel_task_names() == ["exit", "iopub", "kernel", "shell"]
    obs = await run(plugin, "print('fresh')", tmp_path)
    assert isinstance(obs, IPythonRunCellObservation)
    assert obs.content.startswith("fresh\n")
    obs = await run(plugin, "kept", tmp_path)
    assert isinstance(obs, IPythonRunCellObservation)
    assert "NameError" in obs.content


async def test_reader_death_between_cells_is_noted_at_the_next_cell(
    plugin: JupyterPlugin, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    kernel = plugin._kernel
    assert kernel is not None
    break_iopub_reader(kernel, monkeypatch)
    kernel.client.kernel_info()  # its status messages wake the reader, which then fails
    with anyio.fail_after(10):
        await kernel.wait_ended()
    assert kernel.failure == "ZMQError: the socket went away"
    obs = await run(plugin, "print('after')", tmp_path)
    assert isinstance(obs, IPythonRunCellObservation)
    assert obs.content.split("\n")[:2] == [
        "[The connection to the IPython kernel failed (ZMQError: the socket went away), so it "
        f"was killed and restarted: {LOST}.]",
        "after",
    ]
    assert plugin.kernel_pid != kernel.pid


async def test_plugin_close_leaves_no_task(tmp_path: Path) -> None:
    before = other_tasks()
    own = JupyterPlugin()
    await own.initialize(None, working_dir=str(tmp_path))
    assert kernel_task_names() == ["exit", "iopub", "kernel", "shell"]
    await own.aclose()
    assert other_tasks() == before


class _Hangs(Plugin):
    name = "hangs"

    def __init__(self) -> None:
        self.cancelled = False

    async def initialize(self, username: str | None, *, working_dir: str = ".") -> None:
        try:
            await anyio.sleep_forever()
        except anyio.get_cancelled_exc_class():
            self.cancelled = True
            raise


class _Fails(Plugin):
    name = "fails"

    async def initialize(self, username: str | None, *, working_dir: str = ".") -> None:
        raise OSError("no disk")


class _Ready(Plugin):
    name = "ready"


async def test_plugin_host_cancels_an_initialization_past_its_deadline(tmp_path: Path) -> None:
    before = other_tasks()
    hangs = _Hangs()
    host = PluginHost([hangs, _Fails(), _Ready()], init_timeout=0.3)
    with anyio.fail_after(5):
        statuses = await host.initialize(None, working_dir=str(tmp_path))
    assert [(s.name, s.ready, s.error) for s in statuses] == [
        ("hangs", False, "plugin 'hangs' did not initialize within 0.3 s"),
        ("fails", False, "plugin 'fails' failed to initialize: OSError: no disk"),
        ("ready", True, ""),
    ]
    assert hangs.cancelled
    assert other_tasks() == before
    assert host.plugin_for(IPythonRunCellAction("1")) is None
    await host.aclose()
