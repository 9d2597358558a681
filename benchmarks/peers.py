"""Side by side with the peers (issue 20): one workload, our server and theirs, in one run.

The workload, each item a round trip that waits for its answer:

- ``echo hi`` in the system's bash session;
- a 1 KB file read (a file made in the system's workspace beforehand);
- a 1 KB file write (new content each time, checked on disk after the sample);
- ``seq 100``: a command printing 100 lines.

Every answer is checked (outside the timed region); a sample that fails (an error,
a wrong answer) is not kept and is counted, and more than ``--max-failures`` of
one system stop the run.
The systems take turns sample by sample: each iteration runs every item on every
system, the order of the systems rotating from one iteration to the next, so that
load on a shared machine hits them alike. Each prints p50/p99 per item, and each
peer's p50 as a multiple of ours (``4.0x``: the peer takes four times as long).

How each system is driven, all of them on the loopback, outside Docker:

- **ours**: ``LocalRuntime.run(action)``, what our users call: the action goes on
  the ``EventStream``, through the WebSocket channel to the server (a subprocess),
  to bash or the file handler, and back as an observation on the stream.
- **SWE-ReX**: its server (``python -m swerex.server``: FastAPI under uvicorn,
  bash through pexpect) as a subprocess on a free port with an auth token, one
  bash session created first. This process sends it the JSON bodies and headers
  its ``RemoteRuntime`` sends (``run_in_session``, ``read_file``, ``write_file``;
  ``X-API-Key``, ``X-Request-ID``) through aiohttp, on one kept-alive
  connection. Its own client is not used: it lives in another virtual
  environment (a second process would be needed to drive it, and the turns
  could no longer be taken sample by sample), and it opens a new TCP connection
  per request. Leaving those out measures its server at its best, so the figures
  are a floor for what its users see; ``--fresh-connections`` opens a new
  connection per request, as ``RemoteRuntime`` does.
- **OpenHands** (where a Python 3.12 is found, which openhands-ai needs):
  ``openhands.runtime.action_execution_server`` (openhands-ai 0.62.0, the last
  0.x release; 1.x no longer has it) as a subprocess with its session key, no
  browser, no plugins, driven the same way over HTTP: ``POST /execute_action``
  with the action in the shape its ``ActionExecutionClient`` sends
  (``{"action": {"action": "run", "args": {...}}}``). Otherwise a line says why
  the column is skipped.

The peers' shells get an empty home of their own, so that they read no rc file
of this machine (ours runs ``bash --norc``), as in a fresh container.

The peers are installed from PyPI into virtual environments this script makes
once and keeps under ``~/.cache/openhands-rt/peers/<name>-<version>`` (with uv
when it is on the PATH, else ``python -m venv`` and pip); a cache entry is used
only when its installation finished. Every process the script starts runs in a
process group of its own and is stopped at the end (SIGTERM, then SIGKILL), with
its temporary directories (and OpenHands' tmux server, which leaves the group,
through a socket directory of the run's own), also after a failure, Ctrl-C or
SIGTERM.

Run: uv run python benchmarks/peers.py [--n 100] [--no-openhands] [--fresh-connections]
     [--python312 PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime
import json
import os
import platform
import pwd
import secrets
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

sys.path.insert(0, str(Path(__file__).parent))

import aiohttp

from events import (
    CmdOutputObservation,
    CmdRunAction,
    EventStream,
    FileReadAction,
    FileReadObservation,
    FileWriteAction,
    FileWriteObservation,
    Observation,
)
from openhands_rt import LocalRuntime, SandboxConfig

SWEREX_VERSION = "1.4.0"
OPENHANDS_VERSION = "0.62.0"
CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "openhands-rt" / "peers"
ITEMS = ("echo hi", "1 KB file read", "1 KB file write", "100-line output")
ONE_KB = "r" * 1023 + "\n"
START_TIMEOUT_S = 300.0
INSTALL_TIMEOUT_S = 1800.0
STOP_GRACE_S = 5.0


# --- pure helpers -------------------------------------------------------------------


def p50_p99_ms(samples_s: Sequence[float]) -> tuple[float, float]:
    """The median and the 99th percentile (nearest rank, as benchmarks/_util.py) in ms."""
    if not samples_s:
        raise ValueError("no samples")
    ordered = sorted(samples_s)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.median(ordered) * 1000, p99 * 1000


def rotated(names: Sequence[str], turn: int) -> list[str]:
    """``names`` starting at ``turn`` modulo its length: who goes first takes turns."""
    if not names:
        return []
    k = turn % len(names)
    return [*names[k:], *names[:k]]


def write_content(i: int) -> str:
    """The 1 KB written by sample ``i``: different each time, 1024 characters."""
    return f"{i:08d}" + "w" * 1015 + "\n"


def format_table(
    samples: dict[str, dict[str, list[float]]], systems: Sequence[str], baseline: str
) -> list[str]:
    """One line per item: p50/p99 of each system, and each peer's p50 over ``baseline``'s."""
    peers = [s for s in systems if s != baseline]
    header = f"{'':<17}" + "".join(f"{s + ' p50 / p99 ms':>26}" for s in systems)
    header += "".join(f"{s + ' / ' + baseline:>20}" for s in peers)
    lines = [header]
    for item, per_system in samples.items():
        line = f"{item:<17}"
        p50s = {}
        for system in systems:
            p50, p99 = p50_p99_ms(per_system[system])
            p50s[system] = p50
            line += f"{p50:>14.3f} / {p99:>9.3f}"
        for peer in peers:
            line += f"{p50s[peer] / p50s[baseline]:>19.1f}x"
        lines.append(line)
    return lines


# --- processes and virtual environments ------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def check_call(*argv: str | Path) -> None:
    """Run ``argv`` to the end (its own process group, killed if we are cancelled)."""
    proc = await asyncio.create_subprocess_exec(
        *map(str, argv),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        async with asyncio.timeout(INSTALL_TIMEOUT_S):
            output, _ = await proc.communicate()
    finally:
        await stop_group(proc)
    if proc.returncode != 0:
        tail = output.decode(errors="replace")[-3000:]
        raise RuntimeError(f"{' '.join(map(str, argv))} exited {proc.returncode}:\n{tail}")


async def stop_group(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM to ``proc``'s process group, SIGKILL after a grace period; reaped."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            async with asyncio.timeout(STOP_GRACE_S):
                await proc.wait()
        except TimeoutError:
            continue
        # The leader is gone; anything left in its group (a shell it spawned) goes too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        return


async def peer_venv(name: str, requirement: str, python: str) -> Path:
    """The cached virtual environment with ``requirement`` installed; made when missing.

    ``.complete`` is written last: an entry without it (an install cut short) is
    made again from scratch."""
    venv = CACHE / name
    if (venv / ".complete").exists():
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    print(f"installing {requirement} into {venv} (once) ...", flush=True)
    t0 = time.perf_counter()
    uv = shutil.which("uv")
    try:
        if uv:
            await check_call(uv, "venv", "-q", "--python", python, venv)
            await check_call(
                uv, "pip", "install", "-q", "--python", venv / "bin/python", requirement
            )
        else:
            await check_call(python, "-m", "venv", venv)
            await check_call(venv / "bin/python", "-m", "pip", "install", "-q", requirement)
    except BaseException:
        shutil.rmtree(venv, ignore_errors=True)
        raise
    (venv / ".complete").write_text(requirement + "\n")
    print(f"  installed in {time.perf_counter() - t0:.0f} s", flush=True)
    return venv


async def python_version(python: str | Path) -> tuple[int, int, int] | None:
    """``python``'s version, or None when it does not run (a pyenv shim with no version)."""
    try:
        proc = await asyncio.create_subprocess_exec(
            str(python),
            "-c",
            "import sys; print(*sys.version_info[:3])",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
    except OSError:
        return None
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        return None
    major, minor, micro = map(int, out.split())
    return major, minor, micro


async def find_python312(given: str | None) -> tuple[str | None, str]:
    """A Python 3.12 interpreter, and where it was found (or why there is none)."""
    candidates: list[tuple[str, str]] = []
    if given:
        candidates.append((given, "--python312"))
    if found := shutil.which("python3.12"):
        candidates.append((found, "PATH"))
    if uv := shutil.which("uv"):
        proc = await asyncio.create_subprocess_exec(
            uv, "python", "find", "3.12", stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        out, _ = await proc.communicate()
        if proc.returncode == 0 and out.strip():
            candidates.append((out.decode().strip(), "uv python find"))
    if pyenv := shutil.which("pyenv"):
        proc = await asyncio.create_subprocess_exec(
            pyenv, "root", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
        out, _ = await proc.communicate()
        root = Path(out.decode().strip() or "/nonexistent")
        candidates += [
            (str(p), "pyenv")
            for p in sorted(root.glob("versions/3.12*/bin/python3.12"), reverse=True)
        ]
    for path, where in candidates:
        version = await python_version(path)
        if version is not None and version[:2] == (3, 12):
            return path, f"Python {'.'.join(map(str, version))} (found by {where})"
    return None, "no Python 3.12 here (PATH, uv python find, pyenv), which openhands-ai needs"


async def installed_version(venv: Path, distribution: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        str(venv / "bin/python"),
        "-c",
        f"import importlib.metadata as m; print(m.version({distribution!r}))",
        stdout=asyncio.subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    return out.decode().strip()


@contextlib.asynccontextmanager
async def server_process(
    argv: Sequence[str | Path], ready: str, *, cwd: Path, env: dict[str, str] | None = None
) -> AsyncIterator[asyncio.subprocess.Process]:
    """A server subprocess, yielded once it has printed a line containing ``ready``.

    Its output is drained for as long as it runs (the last lines are kept for an
    error message); it is stopped with its process group on the way out."""
    env = {**(os.environ if env is None else env), "PYTHONUNBUFFERED": "1"}
    proc = await asyncio.create_subprocess_exec(
        *map(str, argv),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=cwd,
        env=env,
        start_new_session=True,
    )
    tail: collections.deque[str] = collections.deque(maxlen=40)
    is_ready = asyncio.Event()
    assert proc.stdout is not None
    stdout = proc.stdout

    async def drain() -> None:
        async for raw in stdout:
            line = raw.decode(errors="replace").rstrip()
            tail.append(line)
            if ready in line:
                is_ready.set()

    drainer = asyncio.create_task(drain())
    waiter = asyncio.create_task(is_ready.wait())
    try:
        await asyncio.wait(
            [drainer, waiter], timeout=START_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
        )
        if not is_ready.is_set():
            why = "exited" if drainer.done() else f"did not say {ready!r} in {START_TIMEOUT_S} s"
            raise RuntimeError(f"{' '.join(map(str, argv[:3]))} {why}:\n" + "\n".join(tail))
        yield proc
    finally:
        await stop_group(proc)
        for task in (drainer, waiter):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


# --- the systems ------------------------------------------------------------------------


class System(Protocol):
    name: str

    async def run_command(self, command: str) -> str: ...
    async def read(self, path: Path) -> str: ...
    async def write(self, path: Path, content: str) -> None: ...


@dataclass
class Ours:
    runtime: LocalRuntime
    name: str = "ours"

    async def _run(self, action: Any) -> Observation:
        return await self.runtime.run(action)

    async def run_command(self, command: str) -> str:
        obs = await self._run(CmdRunAction(command))
        if not isinstance(obs, CmdOutputObservation) or obs.exit_code != 0:
            raise RuntimeError(f"ours: {command!r} gave {obs!r}")
        return obs.content

    async def read(self, path: Path) -> str:
        obs = await self._run(FileReadAction(str(path)))
        if not isinstance(obs, FileReadObservation):
            raise RuntimeError(f"ours: read {path} gave {obs!r}")
        return obs.content

    async def write(self, path: Path, content: str) -> None:
        obs = await self._run(FileWriteAction(str(path), content))
        if not isinstance(obs, FileWriteObservation):
            raise RuntimeError(f"ours: write {path} gave {obs!r}")


@dataclass
class HttpPeer:
    """A peer's server driven with aiohttp; ``post`` returns the decoded JSON answer."""

    name: str
    http: aiohttp.ClientSession
    base: str
    headers: dict[str, str]
    request_ids: bool = False

    async def post(self, endpoint: str, body: dict[str, Any]) -> Any:
        headers = self.headers
        if self.request_ids:
            headers = {**headers, "X-Request-ID": str(uuid.uuid4())}
        async with self.http.post(f"{self.base}/{endpoint}", json=body, headers=headers) as resp:
            text = await resp.text()
            if resp.status != 200:
                raise RuntimeError(f"{self.name}: {endpoint} -> {resp.status}: {text[:500]}")
            return json.loads(text)


@dataclass
class SweRex:
    peer: HttpPeer
    name: str = "SWE-ReX"

    async def run_command(self, command: str) -> str:
        # BashAction's fields, as RemoteRuntime sends them (model_dump()).
        answer = await self.peer.post(
            "run_in_session",
            {
                "command": command,
                "session": "default",
                "timeout": None,
                "is_interactive_command": False,
                "is_interactive_quit": False,
                "check": "raise",
                "error_msg": "",
                "expect": [],
                "action_type": "bash",
            },
        )
        if answer.get("exit_code") != 0:
            raise RuntimeError(f"SWE-ReX: {command!r} gave {answer!r}")
        return str(answer["output"])

    async def read(self, path: Path) -> str:
        answer = await self.peer.post(
            "read_file", {"path": str(path), "encoding": None, "errors": None}
        )
        return str(answer["content"])

    async def write(self, path: Path, content: str) -> None:
        await self.peer.post("write_file", {"content": content, "path": str(path)})


@dataclass
class OpenHands:
    peer: HttpPeer
    name: str = "OpenHands"

    async def _execute(self, action: str, args: dict[str, Any]) -> dict[str, Any]:
        answer: dict[str, Any] = await self.peer.post(
            "execute_action", {"action": {"action": action, "args": args}}
        )
        return answer

    async def run_command(self, command: str) -> str:
        answer = await self._execute(
            "run", {"command": command, "is_input": False, "thought": "", "blocking": False}
        )
        exit_code = answer.get("extras", {}).get("metadata", {}).get("exit_code")
        if answer.get("observation") != "run" or exit_code != 0:
            raise RuntimeError(f"OpenHands: {command!r} gave {answer!r}")
        return str(answer["content"])

    async def read(self, path: Path) -> str:
        answer = await self._execute("read", {"path": str(path), "start": 0, "end": -1})
        if answer.get("observation") != "read":
            raise RuntimeError(f"OpenHands: read {path} gave {answer!r}")
        return str(answer["content"])

    async def write(self, path: Path, content: str) -> None:
        answer = await self._execute(
            "write", {"path": str(path), "content": content, "start": 0, "end": -1}
        )
        if answer.get("observation") != "write":
            raise RuntimeError(f"OpenHands: write {path} gave {answer!r}")


# --- the run --------------------------------------------------------------------------


def check(system: str, item: str, result: str, expected: str, written: Path | None) -> None:
    """Raise when ``system`` answered ``item`` wrongly (a file write is read back from disk)."""
    if item == "1 KB file write":
        assert written is not None
        # OpenHands' write ends every line of the content with a newline, so a content
        # that ends with one gets a second: trailing newlines are not compared.
        result, expected = written.read_text().rstrip("\n"), expected.rstrip("\n")
    if item in ("echo hi", "100-line output"):
        result = result.strip().replace("\r\n", "\n")
    if result != expected:
        raise RuntimeError(f"{system}: {item}: expected {expected[:80]!r}, got {result[:200]!r}")


async def sample(
    system: System, item: str, i: int, workspace: Path
) -> tuple[float, str, str, Path | None]:
    """One timed round trip: seconds, the result, what was expected, the file written."""
    written = None
    op: Awaitable[Any]
    if item == "echo hi":
        op, expected = system.run_command("echo hi"), "hi"
    elif item == "1 KB file read":
        op, expected = system.read(workspace / "1k.txt"), ONE_KB
    elif item == "1 KB file write":
        written = workspace / "written.txt"
        expected = write_content(i)
        op = system.write(written, expected)
    else:
        op, expected = system.run_command("seq 100"), "\n".join(map(str, range(1, 101)))
    t0 = time.perf_counter()
    result = await op
    elapsed = time.perf_counter() - t0
    return elapsed, "" if result is None else result, expected, written


async def measure(
    systems: dict[str, tuple[System, Path]], n: int, warmup: int, max_failures: int
) -> tuple[dict[str, dict[str, list[float]]], dict[str, list[str]]]:
    """The samples per item and system, and each system's failed samples.

    A failed sample (an error, a wrong answer) is not kept, and is counted; past
    ``max_failures`` for one system the run stops."""
    names = list(systems)
    samples: dict[str, dict[str, list[float]]] = {item: {s: [] for s in names} for item in ITEMS}
    failures: dict[str, list[str]] = {name: [] for name in names}
    for i in range(warmup + n):
        for item in ITEMS:
            for name in rotated(names, i):
                system, workspace = systems[name]
                try:
                    elapsed, result, expected, written = await sample(system, item, i, workspace)
                    check(name, item, result, expected, written)
                except (RuntimeError, KeyError, aiohttp.ClientError) as exc:
                    failures[name].append(f"{item}: {exc}")
                    if len(failures[name]) > max_failures:
                        raise RuntimeError(f"{name}: {len(failures[name])} samples failed") from exc
                    continue
                if i >= warmup:
                    samples[item][name].append(elapsed)
        if (i + 1) % 25 == 0:
            print(f"  {i + 1}/{warmup + n} iterations", flush=True)
    return samples, failures


@contextlib.asynccontextmanager
async def open_swerex(
    stack: contextlib.AsyncExitStack, args: argparse.Namespace, workspace: Path, home: Path
) -> AsyncIterator[SweRex]:
    venv = await peer_venv(f"swerex-{args.swerex_version}", f"swe-rex=={args.swerex_version}",
                           sys.executable)  # fmt: skip
    py = ".".join(map(str, await python_version(venv / "bin/python") or ("?",)))
    print(f"SWE-ReX   swe-rex {await installed_version(venv, 'swe-rex')}, Python {py} ({venv})")
    port, token = free_port(), secrets.token_urlsafe(24)
    argv: list[str | Path] = [venv / "bin/python", "-m", "swerex.server", "--host", "127.0.0.1"]
    argv += ["--port", str(port), "--auth-token", token]
    env = {**os.environ, "HOME": str(home)}
    await stack.enter_async_context(
        server_process(argv, "Uvicorn running on", cwd=workspace, env=env)
    )
    http = await stack.enter_async_context(
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=args.fresh_connections))
    )
    peer = HttpPeer("SWE-ReX", http, f"http://127.0.0.1:{port}", {"X-API-Key": token}, True)
    session = {"session": "default", "session_type": "bash", "startup_source": []}
    await peer.post("create_session", {**session, "startup_timeout": START_TIMEOUT_S})
    yield SweRex(peer)


@contextlib.asynccontextmanager
async def open_openhands(
    stack: contextlib.AsyncExitStack,
    args: argparse.Namespace,
    workspace: Path,
    home: Path,
    python: str,
    where: str,
) -> AsyncIterator[OpenHands]:
    name = f"openhands-ai-{args.openhands_version}"
    venv = await peer_venv(name, f"openhands-ai=={args.openhands_version}", python)
    version = await installed_version(venv, "openhands-ai")
    print(f"OpenHands openhands-ai {version}, {where} ({venv})")
    port, key = free_port(), secrets.token_urlsafe(24)
    argv: list[str | Path] = [
        venv / "bin/python",
        "-m",
        "openhands.runtime.action_execution_server",
    ]
    argv.append(str(port))
    # As the user we are (its start creates a user otherwise), no browser, no plugins.
    user = pwd.getpwuid(os.getuid()).pw_name
    argv += ["--working-dir", workspace, "--username", user, "--user-id", str(os.getuid())]
    argv += ["--no-enable-browser"]
    # Its bash runs in tmux, whose server leaves the process group: a socket directory
    # of our own, so that the server is found (and killed) and no one else's is used.
    tmux_dir = home / "tmux"
    tmux_dir.mkdir()
    env = {**os.environ, "SESSION_API_KEY": key, "HOME": str(home), "USER": user}
    env |= {"TMUX_TMPDIR": str(tmux_dir), "VIRTUAL_ENV": str(venv)}
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
    stack.push_async_callback(kill_tmux_server, env)
    # Its file viewer writes its address to this fixed path.
    url_file = Path("/tmp/oh-server-url")
    if not url_file.exists():
        stack.callback(url_file.unlink, missing_ok=True)
    await stack.enter_async_context(
        server_process(argv, "ActionExecutor initialized", cwd=workspace, env=env)
    )
    http = await stack.enter_async_context(
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=args.fresh_connections))
    )
    base = f"http://127.0.0.1:{port}"
    peer = HttpPeer("OpenHands", http, base, {"X-Session-API-Key": key})
    # Its logging set-up swallows uvicorn's "running" line, and the socket is bound
    # after the executor's start-up: the first "ok" from /alive is the only sign that
    # it serves (its own client polls /alive too).
    async with asyncio.timeout(START_TIMEOUT_S):
        while True:
            with contextlib.suppress(aiohttp.ClientConnectionError):
                async with http.get(f"{base}/alive", headers=peer.headers) as resp:
                    if resp.status == 200 and (await resp.json()).get("status") == "ok":
                        break
            await asyncio.sleep(0.05)
    yield OpenHands(peer)


async def kill_tmux_server(env: dict[str, str]) -> None:
    """Stop the tmux server of ``env``'s TMUX_TMPDIR, if one runs."""
    proc = await asyncio.create_subprocess_exec(
        "tmux", "kill-server", env=env, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    await proc.wait()


async def main(args: argparse.Namespace) -> None:
    # SIGTERM unwinds like Ctrl-C: every process and directory of the run goes.
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    load = os.getloadavg()
    print(f"date      {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC")
    print(f"machine   {os.cpu_count()} cores, Linux {platform.release()}, load {load[0]:.2f}")
    print(f"ours      openhands-rt (this checkout), Python {platform.python_version()}")
    python312, where = (None, "--no-openhands")
    if not args.no_openhands:
        python312, where = await find_python312(args.python312)
    async with contextlib.AsyncExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="oh-rt-peers-")))
        systems: dict[str, tuple[System, Path]] = {}
        for name in ("ours", "SWE-ReX", "OpenHands"):
            workspace = root / name
            workspace.mkdir()
            # A home of its own: the peers' interactive shells read no rc file of this
            # machine (ours runs bash --norc), as in a fresh container.
            home = root / f"{name}-home"
            home.mkdir()
            (workspace / "1k.txt").write_text(ONE_KB)
            system: System
            if name == "ours":
                stream = await stack.enter_async_context(EventStream())
                config = SandboxConfig(workspace_dir=str(workspace), timeout=300)
                system = Ours(await stack.enter_async_context(LocalRuntime(stream, config)))
            elif name == "SWE-ReX":
                system = await stack.enter_async_context(open_swerex(stack, args, workspace, home))
            elif python312 is None:
                print(f"OpenHands column skipped: {where}")
                continue
            else:
                system = await stack.enter_async_context(
                    open_openhands(stack, args, workspace, home, python312, where)
                )
            systems[name] = (system, workspace)
        http_mode = "a new connection per request" if args.fresh_connections else "kept alive"
        print(f"peers driven over HTTP with aiohttp, connections {http_mode}")
        print(f"{args.n} samples per item and system ({args.warmup} warm-up iterations first)")
        samples, failures = await measure(systems, args.n, args.warmup, args.max_failures)
    print()
    for line in format_table(samples, list(systems), "ours"):
        print(line)
    for name, failed in failures.items():
        kept = min(len(v[name]) for v in samples.values())
        first = f" (the first: {failed[0][:200]})" if failed else ""
        print(f"{name}: {len(failed)} failed samples, at least {kept} kept per item{first}")
    load = os.getloadavg()
    print(f"load after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--swerex-version", default=SWEREX_VERSION)
    parser.add_argument("--openhands-version", default=OPENHANDS_VERSION)
    parser.add_argument("--python312", help="the Python 3.12 for openhands-ai")
    parser.add_argument("--no-openhands", action="store_true")
    parser.add_argument("--fresh-connections", action="store_true")
    parser.add_argument("--max-failures", type=int, default=10, help="per system")
    try:
        asyncio.run(main(parser.parse_args()))
    except KeyboardInterrupt:
        print("interrupted; everything the run started is stopped and removed")
        sys.exit(130)
    except asyncio.CancelledError:  # SIGTERM
        print("terminated; everything the run started is stopped and removed")
        sys.exit(143)
