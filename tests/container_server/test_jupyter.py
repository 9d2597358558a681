"""The jupyter plugin with real IPython kernels (ipykernel processes)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import signal
import struct
import sys
import tempfile
import time
import zlib
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
import pytest_asyncio

from container_server.jupyter import JupyterPlugin, KernelStartError
from container_server.plugins import PluginHost
from events import (
    CmdOutputChunk,
    ErrorObservation,
    IPythonRunCellAction,
    IPythonRunCellObservation,
    Observation,
)

# One kernel for the module: starting one costs ~0.5 s. Tests that need their own
# (closing, start failures) make it; tests on the shared one define the state they use.
pytestmark = pytest.mark.asyncio(loop_scope="module")

TRAILER = "[Jupyter current working directory: {cwd}]\n[Jupyter Python interpreter: {python}]"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("jupyter-work")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def plugin(workdir: Path) -> AsyncIterator[JupyterPlugin]:
    plugin = JupyterPlugin(interrupt_grace=1.0, chunk_interval=0.05)
    await plugin.initialize(None, working_dir=str(workdir))
    try:
        yield plugin
    finally:
        await plugin.aclose()


async def run(
    plugin: JupyterPlugin,
    code: str,
    cwd: Path | str,
    *,
    timeout: float | None = None,
    chunks: list[CmdOutputChunk] | None = None,
    action_id: int = 7,
) -> IPythonRunCellObservation:
    action = msgspec.structs.replace(IPythonRunCellAction(code, timeout=timeout), id=action_id)
    obs = await plugin.run(
        action, cwd=str(cwd), on_chunk=chunks.append if chunks is not None else None
    )
    assert isinstance(obs, IPythonRunCellObservation), obs
    assert obs.code == code
    return obs


def body(obs: Observation, cwd: Path | str) -> str:
    """The content without the trailer lines (which are checked to be there)."""
    assert isinstance(obs, IPythonRunCellObservation)
    trailer = "\n" + TRAILER.format(cwd=cwd, python=sys.executable)
    assert obs.content.endswith(trailer), obs.content
    return obs.content[: -len(trailer)]


def tiny_png(width: int = 3, height: int = 2) -> bytes:
    """A valid RGB PNG built by hand (no image library)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data))
            + kind
            + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
        )

    rows = b"".join(b"\x00" + bytes([200, 30, 30]) * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


async def test_print_one(plugin: JupyterPlugin, workdir: Path) -> None:
    obs = await run(plugin, "print(1)", workdir)
    assert obs.content == "1\n" + TRAILER.format(cwd=workdir, python=sys.executable)
    assert obs.image_urls == []


async def test_state_persists_between_cells(plugin: JupyterPlugin, workdir: Path) -> None:
    assert body(await run(plugin, "x = 41", workdir), workdir) == (
        "[Code executed successfully with no output]"
    )
    assert body(await run(plugin, "x + 1", workdir), workdir) == "42"


async def test_traceback_without_escape_codes(plugin: JupyterPlugin, workdir: Path) -> None:
    obs = await run(plugin, "1/0", workdir)
    assert "\x1b" not in obs.content
    text = body(obs, workdir)
    assert "Cell In[1], line 1" in text
    assert text.endswith("ZeroDivisionError: division by zero")


async def test_coloured_traceback_is_stripped(plugin: JupyterPlugin, workdir: Path) -> None:
    # Whatever colour scheme a cell switches to, the agent gets plain text.
    await run(plugin, "get_ipython().colors = 'linux'", workdir)
    try:
        obs = await run(plugin, "def f():\n    return {}['k']\nf()", workdir)
    finally:
        await run(plugin, "get_ipython().colors = 'nocolor'", workdir)
    assert "\x1b" not in obs.content
    assert "KeyError: 'k'" in obs.content
    assert "----> 3 f()" in obs.content


async def test_stdout_and_stderr_both_included(plugin: JupyterPlugin, workdir: Path) -> None:
    obs = await run(
        plugin, "import sys\nprint('to out')\nprint('to err', file=sys.stderr)", workdir
    )
    assert sorted(body(obs, workdir).splitlines()) == ["to err", "to out"]


async def test_result_after_printed_output(plugin: JupyterPlugin, workdir: Path) -> None:
    obs = await run(plugin, "print('a', end='')\n'b'", workdir)
    assert body(obs, workdir) == "a\n'b'"


async def test_cwd_follows_the_shell(plugin: JupyterPlugin, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    code = "import os; print(os.getcwd())"
    assert body(await run(plugin, code, a), a) == str(a)
    assert body(await run(plugin, code, b), b) == str(b)
    # Relative paths resolve against it too.
    (b / "data.txt").write_text("hello from b")
    assert body(await run(plugin, "print(open('data.txt').read())", b), b) == "hello from b"
    # So do imports, as in Jupyter ('' on sys.path).
    (b / "helper_in_b.py").write_text("ANSWER = 'imported from b'\n")
    assert body(await run(plugin, "from helper_in_b import ANSWER; ANSWER", b), b) == (
        "'imported from b'"
    )


async def test_timeout_interrupts_and_keeps_state(plugin: JupyterPlugin, workdir: Path) -> None:
    await run(plugin, "kept = 'still here'", workdir)
    started = time.monotonic()
    obs = await run(
        plugin, "print('before', flush=True)\nimport time; time.sleep(30)", workdir, timeout=2
    )
    elapsed = time.monotonic() - started
    assert 1.9 <= elapsed < 4, elapsed
    text = body(obs, workdir)
    assert text.startswith("before\n")
    assert "KeyboardInterrupt" in text
    assert text.endswith("[Execution timed out (2 seconds).]")
    assert body(await run(plugin, "print(kept)", workdir), workdir) == "still here"


async def test_png_arrives_as_data_url(plugin: JupyterPlugin, workdir: Path) -> None:
    png = tiny_png()
    code = (
        "import struct, zlib\n"
        "from IPython.display import Image, display\n"
        f"png = {png!r}\n"
        "display(Image(data=png))\n"
    )
    obs = await run(plugin, code, workdir)
    assert len(obs.image_urls) == 1
    url = obs.image_urls[0]
    assert url.startswith("data:image/png;base64,")
    assert base64.b64decode(url.removeprefix("data:image/png;base64,"), validate=True) == png
    assert body(obs, workdir) == "<IPython.core.display.Image object>"


async def test_raw_png_display_without_text(plugin: JupyterPlugin, workdir: Path) -> None:
    png = tiny_png(1, 1)
    encoded = base64.b64encode(png).decode()
    obs = await run(plugin, f"display({{'image/png': {encoded!r}}}, raw=True)", workdir)
    assert obs.image_urls == [f"data:image/png;base64,{encoded}"]
    assert body(obs, workdir) == "<image/png image>"


async def test_output_streams_as_chunks(plugin: JupyterPlugin, workdir: Path) -> None:
    chunks: list[CmdOutputChunk] = []
    code = (
        "import time\nfor i in range(3):\n    print(f'line {i}', flush=True)\n    time.sleep(0.2)"
    )
    obs = await run(plugin, code, workdir, chunks=chunks, action_id=41)
    assert body(obs, workdir) == "line 0\nline 1\nline 2"
    assert len(chunks) >= 2
    assert [c.seq for c in chunks] == list(range(len(chunks)))
    assert {c.cause for c in chunks} == {41}
    assert "".join(c.data for c in chunks) == "line 0\nline 1\nline 2\n"


async def test_fast_cell_sends_no_chunks(plugin: JupyterPlugin, workdir: Path) -> None:
    chunks: list[CmdOutputChunk] = []
    await run(plugin, "print('quick')", workdir, chunks=chunks)
    assert chunks == []


async def test_huge_output_is_truncated(plugin: JupyterPlugin, workdir: Path) -> None:
    obs = await run(plugin, "for i in range(20000): print(f'row {i}')", workdir)
    text = body(obs, workdir)
    assert "[... Observation truncated due to length ...]" in text
    assert text.startswith("row 0\n")
    assert text.endswith("row 19999")
    assert len(text) < 31_000


async def test_cells_run_one_at_a_time(plugin: JupyterPlugin, workdir: Path) -> None:
    first = run(plugin, "import time; time.sleep(0.3); order = ['first']", workdir)
    second = run(plugin, "order.append('second'); print(order)", workdir)
    _, obs = await asyncio.gather(first, second)
    assert body(obs, workdir) == "['first', 'second']"


async def test_kernel_death_restarts_the_kernel(plugin: JupyterPlugin, workdir: Path) -> None:
    await run(plugin, "doomed = 1", workdir)
    old_pid = plugin.kernel_pid
    obs = await run(plugin, "import os; os._exit(1)", workdir)
    # What a dying kernel sent last (even its "busy" status) may never leave it: zmq
    # sends from a background thread. So the note may not know whether the cell started.
    note = body(obs, workdir)
    assert note.startswith("[The IPython kernel exited with code 1 ")
    assert note.endswith(
        " and was restarted: variables, imports and definitions from earlier cells are lost.]"
    )
    assert "between cells" not in note
    assert plugin.kernel_pid not in (None, old_pid)
    assert not Path(f"/proc/{old_pid}").exists()
    assert body(await run(plugin, "print(2 + 2)", workdir), workdir) == "4"
    assert "NameError" in body(await run(plugin, "doomed", workdir), workdir)


async def test_kernel_killed_between_cells(plugin: JupyterPlugin, workdir: Path) -> None:
    pid = plugin.kernel_pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    # Let the plugin see the exit first (it learns of it from the process's wait()).
    kernel = plugin._kernel
    assert kernel is not None
    await asyncio.wait_for(kernel.wait_ended(), 5)
    assert kernel.returncode == -signal.SIGKILL
    assert kernel.failure is None
    obs = await run(plugin, "print('alive')", workdir)
    lines = body(obs, workdir).split("\n")
    assert lines[-1] == "alive"
    assert lines[0] == (
        "[The IPython kernel was killed by signal 9 between cells and was restarted: "
        "variables, imports and definitions from earlier cells are lost.]"
    )
    assert len(lines) == 2
    assert plugin.kernel_pid != pid


async def test_kernel_ignoring_interrupt_is_replaced(plugin: JupyterPlugin, workdir: Path) -> None:
    pid = plugin.kernel_pid
    code = "import signal, time\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\ntime.sleep(60)"
    started = time.monotonic()
    obs = await run(plugin, code, workdir, timeout=0.5)
    # Far below the cell's 60 s sleep: the answer did not wait for it (a kernel restart
    # takes ~0.5 s idle and several seconds on a loaded machine, hence no tighter bound).
    assert time.monotonic() - started < 30
    text = body(obs, workdir)
    assert "[Execution timed out (0.5 seconds).]" in text
    assert "[The kernel did not stop within 1 seconds of the interrupt" in text
    assert plugin.kernel_pid != pid
    assert body(await run(plugin, "print('fresh')", workdir), workdir) == "fresh"


def zmq_threads() -> int:
    """Threads of this process that libzmq started (named ZMQbg/...)."""
    count = 0
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(FileNotFoundError):
            count += Path(f"/proc/self/task/{task}/comm").read_text().startswith("ZMQbg")
    return count


def kernel_dirs() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("oh-jupyter-*"))


async def test_through_plugin_host_and_closed_without_leftovers(tmp_path: Path) -> None:
    fds_before = set(os.listdir("/proc/self/fd"))
    zmq_threads_before = zmq_threads()
    dirs_before = kernel_dirs()
    own = JupyterPlugin()
    host = PluginHost([own])
    [status] = await host.initialize(None, working_dir=str(tmp_path))
    assert status.ready, status.error
    pid = own.kernel_pid
    assert pid is not None
    assert Path(f"/proc/{pid}").exists()
    assert len(kernel_dirs() - dirs_before) == 1
    obs = await host.run(IPythonRunCellAction("print('via host')"), cwd=str(tmp_path))
    assert body(obs, tmp_path) == "via host"
    await host.aclose()
    assert own.kernel_pid is None
    assert not Path(f"/proc/{pid}").exists()
    assert set(os.listdir("/proc/self/fd")) <= fds_before
    # zmq's I/O and reaper threads are gone with its context.
    assert zmq_threads() <= zmq_threads_before
    assert kernel_dirs() <= dirs_before
    obs = await own.run(IPythonRunCellAction("print(1)"), cwd=str(tmp_path))
    assert isinstance(obs, ErrorObservation)
    assert obs.error_id == "plugin_unavailable"


async def test_interpreter_that_cannot_start_a_kernel(tmp_path: Path) -> None:
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'No module named ipykernel' >&2\nexit 3\n")
    fake.chmod(0o755)
    dirs_before = kernel_dirs()
    own = JupyterPlugin(python=str(fake))
    try:
        with pytest.raises(
            KernelStartError, match=r"exited with code 3 .*No module named ipykernel"
        ):
            await own.initialize(None, working_dir=str(tmp_path))
    finally:
        await own.aclose()
    assert kernel_dirs() <= dirs_before


async def test_missing_interpreter(tmp_path: Path) -> None:
    own = JupyterPlugin(python=str(tmp_path / "no-such-python"))
    try:
        with pytest.raises(KernelStartError, match="cannot run"):
            await own.initialize(None, working_dir=str(tmp_path))
    finally:
        await own.aclose()


async def test_cancelled_cell_is_interrupted(plugin: JupyterPlugin, workdir: Path) -> None:
    await run(plugin, "progress = []", workdir)
    code = "import time\nfor i in range(100):\n    progress.append(i)\n    time.sleep(0.05)"
    task = asyncio.ensure_future(run(plugin, code, workdir))
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    started = time.monotonic()
    obs = await run(plugin, "print(len(progress))", workdir)
    # Interrupted part way: not left to run its 5 s (the next cell would wait for it).
    assert 0 < int(body(obs, workdir)) < 50
    # Well under the cell's remaining ~4.5 s: the next cell did not queue behind it.
    assert time.monotonic() - started < 4
