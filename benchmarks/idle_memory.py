"""Idle sandbox memory: the server, its shell and the host-side helpers, one and N at once.

Each sandbox is started, answers one ``echo hi``, then is left idle for a few
seconds before its processes are read from ``/proc/PID/smaps_rollup``:

- RSS: every page the process maps (shared libraries counted in full, in each);
- PSS: shared pages divided among the processes that map them: what each extra
  sandbox really costs when the interpreter's and the libraries' pages are shared;
- USS: the pages only this process maps (private clean + dirty): what its exit frees.

Kinds: ``local`` (LocalRuntime: the server is a subprocess of this interpreter),
``runc`` and ``runsc`` (DockerRuntime, when the engine has them). For Docker the
container's processes are the descendants of its containerd shim (docker-init,
the server, bash under runc; gVisor's sandbox and gofer under runsc); the host
helpers are the shim itself and, with ``channel="tcp"``, the docker-proxy of the
published port. Docker sandboxes run with ``channel="tcp"`` (the default with a
network) and ``channel="unix"`` (``network="none"``: no published port).

The server's bytecode: a LocalRuntime server runs this interpreter on the
project's tree. Where the environment sets PYTHONDONTWRITEBYTECODE and the tree
has no ``__pycache__``, every start compiles every module from source, which
leaves the compiler's garbage in the heap; ``--local-bytecode cached`` (the
default) gives the server a private ``PYTHONPYCACHEPREFIX`` warmed by a first
start, as an installed package (or the runtime image, compiled at build) has.

Targets (issue 20): server + shell <= 15 MB, host-side helpers <= 5 MB per sandbox.

Run: uv run python benchmarks/idle_memory.py [--n 10] [--kinds local runc runsc]
     [--local-bytecode cached|inherit] [--settle 3]
Docker kinds need a running engine and the base image; every container made
carries a run label and is removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

from _util import remove_labelled_containers

from events import CmdOutputObservation, CmdRunAction, EventStream
from openhands_rt import DockerRuntime, LocalRuntime, SandboxConfig
from openhands_rt.docker_client import open_docker
from openhands_rt.image import DEFAULT_BASE_IMAGE, build_runtime_image
from openhands_rt.runtime import EventStreamRuntime

RUN_LABEL = "org.openhands-rt.bench-run"
RUN_ID = uuid.uuid4().hex[:12]
CGROUP_MEMORY = Path("/sys/fs/cgroup/memory")
TARGET_SANDBOX_MB = 15.0
TARGET_HOST_MB = 5.0
MB = 1024.0  # smaps figures are in kB


@dataclass
class Memory:
    """RSS, PSS and USS of some processes, in kB."""

    rss: int = 0
    pss: int = 0
    uss: int = 0
    count: int = 0

    def __add__(self, other: Memory) -> Memory:
        return Memory(
            self.rss + other.rss,
            self.pss + other.pss,
            self.uss + other.uss,
            self.count + other.count,
        )

    def per(self, n: int) -> str:
        return (
            f"RSS {self.rss / n / MB:6.1f}  PSS {self.pss / n / MB:6.1f}  "
            f"USS {self.uss / n / MB:6.1f} MB"
        )


def read_memory(pid: int) -> Memory:
    fields: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if len(parts) == 2 and parts[1] == "kB":
                    fields[key] = int(parts[0])
    except OSError:
        return Memory()
    return Memory(
        fields.get("Rss", 0),
        fields.get("Pss", 0),
        fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0),
        1,
    )


def process_table() -> dict[int, tuple[int, list[str]]]:
    """pid -> (parent pid, argv) of every process visible here."""
    table = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        table[int(entry.name)] = (ppid, argv)
    return table


def descendants(table: dict[int, tuple[int, list[str]]], root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def role(pid: int, argv: list[str]) -> str:
    """What a sandbox process is, by its command line (its name where it has none)."""
    name = os.path.basename(argv[0]) if argv and argv[0] else ""
    if not name:
        try:
            with open(f"/proc/{pid}/comm") as f:
                name = f.read().strip()
        except OSError:
            name = "?"
    if name == "docker-init":
        return "docker-init"
    if "container_server" in argv:
        return "server"
    if "bash" in name:
        return "shell"
    if "runsc" in name or name == "exe":
        return "gvisor " + name
    return name


@dataclass
class Reading:
    """One measurement of some sandboxes: memory by role, host helpers, cgroup usage."""

    sandboxes: int
    roles: dict[str, Memory] = field(default_factory=dict)
    helpers: dict[str, Memory] = field(default_factory=dict)
    cgroup_kb: list[int] = field(default_factory=list)

    def add(self, table: dict[str, Memory], name: str, memory: Memory) -> None:
        table[name] = table.get(name, Memory()) + memory

    def sandbox_total(self) -> Memory:
        return sum(self.roles.values(), Memory())

    def helper_total(self) -> Memory:
        return sum(self.helpers.values(), Memory())


def read_local(runtimes: Sequence[LocalRuntime]) -> Reading:
    table = process_table()
    reading = Reading(len(runtimes))
    for rt in runtimes:
        assert rt.process is not None
        pids = [rt.process.pid, *descendants(table, rt.process.pid)]
        for pid in pids:
            reading.add(reading.roles, role(pid, table.get(pid, (0, []))[1]), read_memory(pid))
    return reading


def _cgroup_usage_kb(container_id: str) -> int | None:
    for directory in (
        CGROUP_MEMORY / "docker" / container_id,
        CGROUP_MEMORY / "system.slice" / f"docker-{container_id}.scope",
    ):
        try:
            return int((directory / "memory.usage_in_bytes").read_text()) // 1024
        except OSError:
            continue
    return None


def read_docker(container_ids: Sequence[str], ips: Iterable[str]) -> Reading:
    ids = set(container_ids)
    ip_set = set(ips) - {""}
    table = process_table()
    reading = Reading(len(container_ids))
    for pid, (_, argv) in table.items():
        name = os.path.basename(argv[0])
        if name.startswith("containerd-shim") and "-id" in argv:
            if argv[argv.index("-id") + 1] not in ids:
                continue
            reading.add(reading.helpers, "containerd shim", read_memory(pid))
            for child in descendants(table, pid):
                reading.add(reading.roles, role(child, table[child][1]), read_memory(child))
        elif (
            name == "docker-proxy"
            and "-container-ip" in argv
            and argv[argv.index("-container-ip") + 1] in ip_set
        ):
            reading.add(reading.helpers, "docker-proxy", read_memory(pid))
    for cid in container_ids:
        usage = _cgroup_usage_kb(cid)
        if usage is not None:
            reading.cgroup_kb.append(usage)
    return reading


def report(kind: str, reading: Reading) -> list[str]:
    n = reading.sandboxes
    lines = [f"{kind:<22} {n} sandbox{'es' if n > 1 else ''} idle, per sandbox:"]
    for name, memory in sorted(reading.roles.items()):
        lines.append(f"  {name:<20} {memory.per(n)}   ({memory.count / n:.0f} processes)")
    total = reading.sandbox_total()
    lines.append(f"  {'= sandbox':<20} {total.per(n)}")
    for name, memory in sorted(reading.helpers.items()):
        lines.append(
            f"  {'host: ' + name:<20} {memory.per(n)}   ({memory.count / n:.0f} processes)"
        )
    if reading.helpers:
        lines.append(f"  {'= host helpers':<20} {reading.helper_total().per(n)}")
    if reading.cgroup_kb:
        lines.append(
            f"  {'cgroup usage':<20} {statistics.mean(reading.cgroup_kb) / MB:6.1f} MB "
            "(memory.usage_in_bytes, page cache included, mean)"
        )
    sandbox_pss = total.pss / n / MB
    lines.append(
        f"  target sandbox <= {TARGET_SANDBOX_MB:.0f} MB: PSS {sandbox_pss:.1f} MB = "
        f"{sandbox_pss / TARGET_SANDBOX_MB:.2f}x the target"
    )
    if reading.helpers:
        helper_pss = reading.helper_total().pss / n / MB
        lines.append(
            f"  target host <= {TARGET_HOST_MB:.0f} MB:    PSS {helper_pss:.1f} MB = "
            f"{helper_pss / TARGET_HOST_MB:.2f}x the target"
        )
    return lines


async def echo(runtime: EventStreamRuntime) -> None:
    obs = await runtime.run(CmdRunAction("echo hi"))
    if not isinstance(obs, CmdOutputObservation) or obs.content.strip() != "hi":
        raise RuntimeError(f"unexpected answer to echo hi: {obs!r}")


async def start_all(
    stack: AsyncExitStack, n: int, make: Any, *, connect: bool
) -> list[EventStreamRuntime]:
    """``n`` runtimes made by ``make(stream)``, started together, each answered one echo."""

    async def one() -> EventStreamRuntime:
        stream = await stack.enter_async_context(EventStream())
        runtime = make(stream)
        if connect:
            stack.push_async_callback(runtime.aclose)
            await runtime.connect()
        else:
            await stack.enter_async_context(runtime)
        await echo(runtime)
        return runtime

    return list(await asyncio.gather(*(one() for _ in range(n))))


async def local_kind(args: argparse.Namespace) -> None:
    env: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="idle-memory-") as work:
        if args.local_bytecode == "cached":
            env = {
                "PYTHONPYCACHEPREFIX": os.path.join(work, "pycache"),
                "PYTHONDONTWRITEBYTECODE": "",
            }
        label = f"local ({args.local_bytecode} bytecode)"

        def make(stream: EventStream) -> LocalRuntime:
            return LocalRuntime(stream, SandboxConfig(env=env, timeout=60, no_change_timeout=30))

        if args.local_bytecode == "cached":
            async with AsyncExitStack() as stack:  # the first start writes the cache
                await start_all(stack, 1, make, connect=False)
        for n in (1, args.n):
            async with AsyncExitStack() as stack:
                runtimes = await start_all(stack, n, make, connect=False)
                await asyncio.sleep(args.settle)
                reading = read_local([rt for rt in runtimes if isinstance(rt, LocalRuntime)])
                print("\n".join(report(label, reading)), flush=True)


async def docker_kind(args: argparse.Namespace, image: str, oci_runtime: str, channel: str) -> None:
    count = 0

    def make(stream: EventStream) -> DockerRuntime:
        nonlocal count
        count += 1
        config = SandboxConfig(
            runtime_container_image=image,
            oci_runtime=oci_runtime,
            channel=channel,
            network="none" if channel == "unix" else "bridge",
            labels={RUN_LABEL: RUN_ID},
            timeout=60,
            no_change_timeout=30,
        )
        return DockerRuntime(stream, config, session_id=f"idle-{RUN_ID}-{count}")

    label = f"{oci_runtime} ({channel})"
    for n in (1, args.n):
        async with AsyncExitStack() as stack:
            runtimes = await start_all(stack, n, make, connect=True)
            await asyncio.sleep(args.settle)
            ids, ips = [], []
            for rt in runtimes:
                assert isinstance(rt, DockerRuntime)
                assert rt.container is not None
                info = await rt.container.show()
                ids.append(info["Id"])
                ips += [
                    net.get("IPAddress", "")
                    for net in (info["NetworkSettings"].get("Networks") or {}).values()
                ]
            reading = await asyncio.to_thread(read_docker, ids, ips)
            print("\n".join(report(label, reading)), flush=True)


async def engine_runtimes() -> set[str] | None:
    try:
        async with open_docker() as docker:
            info = await docker.system.info()
    except Exception as exc:  # no engine: the Docker kinds are skipped
        print(f"docker                 not reachable ({type(exc).__name__}): skipped")
        return None
    return set((info.get("Runtimes") or {}).keys())


async def main(args: argparse.Namespace) -> None:
    t0 = time.perf_counter()
    print(
        f"idle memory, settle {args.settle:.0f} s after one echo; N = {args.n}; "
        f"{os.cpu_count()} CPUs; Python {sys.version.split()[0]}"
    )
    if "local" in args.kinds:
        await local_kind(args)
    docker_kinds = [k for k in args.kinds if k != "local"]
    if not docker_kinds:
        return
    available = await engine_runtimes()
    if available is None:
        return
    try:
        result = await build_runtime_image(args.base_image)
        print(f"runtime image          {result.image}")
        for kind in docker_kinds:
            if kind != "runc" and kind not in available:
                print(f"{kind:<22} not registered with this engine: skipped")
                continue
            for channel in args.channels:
                await docker_kind(args, result.image, kind, channel)
    finally:
        leftovers = await remove_labelled_containers(f"{RUN_LABEL}={RUN_ID}")
        async with open_docker() as docker:
            filters = {"label": [f"{RUN_LABEL}={RUN_ID}"]}
            left = await docker.containers.list(all=True, filters=filters)
        print(
            f"containers left        {len(left)} ({len(leftovers)} removed by the final sweep); "
            f"whole run {time.perf_counter() - t0:.0f} s"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10, help="sandboxes at once (the second pass)")
    parser.add_argument(
        "--kinds", nargs="*", default=["local", "runc", "runsc"], choices=["local", "runc", "runsc"]
    )
    parser.add_argument("--channels", nargs="*", default=["tcp", "unix"], choices=["tcp", "unix"])
    parser.add_argument("--local-bytecode", choices=["cached", "inherit"], default="cached")
    parser.add_argument("--settle", type=float, default=3.0, help="idle seconds before reading")
    parser.add_argument("--base-image", default=DEFAULT_BASE_IMAGE)
    asyncio.run(main(parser.parse_args()))
