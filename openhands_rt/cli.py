"""``openhands-rt``: the command line.

Every command prints one clear line and exits non-zero on error (no traceback;
``--debug`` shows it).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, NoReturn

import anyio
import anyio.abc
from rich.console import Console
from rich.markup import escape

from events import (
    CmdOutputChunk,
    CmdOutputObservation,
    CmdRunAction,
    Event,
    EventStream,
    Observation,
    RuntimeStatus,
    RuntimeStatusObservation,
)
from openhands_rt.cli_common import CliError, plugin_requirements
from openhands_rt.cli_signals import until_stopped
from openhands_rt.config import SandboxConfig, cli_base_image
from openhands_rt.errors import SandboxError
from openhands_rt.runtime import EventStreamRuntime

if TYPE_CHECKING:
    pass

__all__ = ["main"]

_BASE_IMAGE = cli_base_image()

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

#: ``run``: the command did not finish within ``--timeout`` (as ``timeout(1)``).
EXIT_TIMEOUT = 124


def make_runtime(
    args: argparse.Namespace, stream: EventStream, config: SandboxConfig
) -> EventStreamRuntime:
    if getattr(args, "local", False):
        from openhands_rt.local import LocalRuntime

        return LocalRuntime(stream, config)
    from openhands_rt.docker_runtime import DockerRuntime

    return DockerRuntime(stream, config)


def sandbox_config(args: argparse.Namespace, **overrides: object) -> SandboxConfig:
    kwargs: dict[str, object] = {
        "base_container_image": args.base_image,
        "workspace_dir": args.workspace,
        "plugins": plugin_requirements(getattr(args, "plugins", None)),
    }
    if getattr(args, "image", None):
        kwargs["runtime_container_image"] = args.image
    if getattr(args, "runtime_mode", None):
        kwargs["runtime_mode"] = args.runtime_mode
    kwargs.update(overrides)
    return SandboxConfig(**kwargs)  # type: ignore[arg-type]


# ---------------------------------------------------------------------- run


async def cmd_run(args: argparse.Namespace) -> int:
    from openhands_rt.stdin_relay import (
        closed_stdin_line,
        command_line,
        relay_stdin,
        relayed_stdin_line,
        spool_directory,
    )

    if not args.command:
        raise CliError("nothing to run: give a command after --")
    line = command_line(args.command)
    stream = EventStream()
    config = sandbox_config(args, timeout=args.timeout, no_change_timeout=args.timeout)
    out = sys.stdout
    notes = StatusNotes(err_console)

    async def show(event: Event) -> None:
        if isinstance(event, CmdOutputChunk):
            out.write(event.data)
            out.flush()
        else:
            notes.show(event)

    from openhands_rt.progress_view import BuildStatusView

    async with stream:
        stream.subscribe(show, subscriber_id="cli-run")
        # The status view subscribes before the runtime starts: the build happens on entry.
        async with BuildStatusView(stream, err_console), make_runtime(args, stream, config) as rt:
            if args.interactive:
                spool = spool_directory()
                action = CmdRunAction(
                    relayed_stdin_line(line, spool), blocking=True, timeout=args.timeout
                )
                obs = await _run_with_stdin(
                    rt, action, relay_stdin(rt.run, sys.stdin.fileno(), spool)
                )
            else:
                action = CmdRunAction(closed_stdin_line(line), blocking=True, timeout=args.timeout)
                obs = await rt.run(action)
            await asyncio.sleep(0)  # let the last chunk reach the printer
            streamed = any(
                isinstance(e, CmdOutputChunk) and e.cause == obs.cause for e in stream.iter_events()
            )
    if not isinstance(obs, CmdOutputObservation):
        raise CliError(getattr(obs, "content", repr(obs)))
    if not streamed:
        out.write(obs.content)
        if obs.content and not obs.content.endswith("\n"):
            out.write("\n")
    out.flush()
    if obs.exit_code < 0:
        err_console.print(
            f"[red]error:[/red] the command did not finish within {args.timeout:g} s "
            "(--timeout); it was stopped with its sandbox",
            soft_wrap=True,
        )
        return EXIT_TIMEOUT
    return obs.exit_code


async def _run_with_stdin(
    rt: EventStreamRuntime, action: CmdRunAction, relay: Coroutine[Any, Any, None]
) -> Observation:
    """Run ``action`` while ``relay`` passes standard input; a failed relay fails the run."""
    answer: list[Observation] = []
    failure: list[Exception] = []

    async def command(task_group: anyio.abc.TaskGroup) -> None:
        try:
            answer.append(await rt.run(action))
        except Exception as exc:
            failure.append(exc)
        # Once the command is done the rest of the input is not read.
        task_group.cancel_scope.cancel()

    async def relaying(task_group: anyio.abc.TaskGroup) -> None:
        try:
            await relay
        except Exception as exc:
            failure.append(exc)
            task_group.cancel_scope.cancel()  # and the command is interrupted

    try:
        async with anyio.create_task_group() as task_group:
            task_group.start_soon(command, task_group)
            task_group.start_soon(relaying, task_group)
    finally:
        relay.close()  # never started (cancelled first): not "never awaited"
    if failure:
        raise failure[0]
    return answer[0]


class StatusNotes:
    """Prints what the sandbox reports once it is ready (startup notes, errors) on stderr.

    Before ``ready`` the runtime reports its own progress (building, creating
    the container): not news to the user. Everything after it comes from the
    sandbox: the server's startup notes (e.g. a root-owned workspace given to
    the sandbox user), a plugin that failed, the container dying.
    """

    def __init__(self, console: Console) -> None:
        self.console = console
        self.ready = False

    def show(self, event: Event) -> None:
        if not isinstance(event, RuntimeStatusObservation):
            return
        if event.status is RuntimeStatus.READY:
            self.ready = True
        elif self.ready and event.message and event.status is RuntimeStatus.STARTING:
            self.console.print(f"[yellow]note:[/yellow] {escape(event.message)}", soft_wrap=True)
        elif self.ready and event.message and event.status is RuntimeStatus.ERROR:
            self.console.print(f"[red]warning:[/red] {escape(event.message)}", soft_wrap=True)


# ---------------------------------------------------------------------- shell


async def cmd_shell(args: argparse.Namespace) -> int:
    from openhands_rt.shell import interactive_shell

    stream = EventStream()
    config = sandbox_config(args)
    notes = StatusNotes(err_console)

    async def show(event: Event) -> None:
        notes.show(event)

    async with stream:
        stream.subscribe(show, subscriber_id="cli-notes")
        async with make_runtime(args, stream, config) as rt:
            return await interactive_shell(rt, console)


# ---------------------------------------------------------------------- demo


async def cmd_demo(args: argparse.Namespace) -> int:
    from openhands_rt.demo import run_demo

    return await run_demo(args, console, make_runtime, sandbox_config)


# ---------------------------------------------------------------------- images


async def cmd_build(args: argparse.Namespace) -> int:
    from openhands_rt.image import build_runtime_image
    from openhands_rt.progress_view import BuildProgressView

    plugins = plugin_requirements(args.plugins)
    with BuildProgressView(console) as view:
        result = await build_runtime_image(
            args.base_image, force_rebuild=args.force, plugins=plugins, on_progress=view.update
        )
    console.print(f"[bold]{result.image}[/bold]  (build step: {result.build_from})")
    for kind in ("version_tag", "lock_tag", "source_tag"):
        console.print(f"  {kind:<12} {getattr(result.tags, kind)}")
    return 0


async def cmd_bootstrap(args: argparse.Namespace) -> int:
    from openhands_rt.image import bootstrap_base_image

    def on_progress(line: str) -> None:
        if args.verbose:
            console.print(line)

    name = await bootstrap_base_image(name=args.name, suite=args.suite, on_progress=on_progress)
    console.print(f"base image ready: [bold]{name}[/bold]")
    return 0


# ---------------------------------------------------------------------- ps / gc


async def cmd_ps(args: argparse.Namespace) -> int:
    import aiodocker
    from rich.table import Table

    from openhands_rt.sandboxes import list_sandboxes

    if args.swarm:
        from openhands_rt.swarm.sandboxes import list_swarm_sandboxes

        async with aiodocker.Docker(url=args.swarm) as manager:
            sandboxes = await list_swarm_sandboxes(manager, labels=_labels(args.label))
    else:
        async with aiodocker.Docker() as docker:
            sandboxes = await list_sandboxes(docker, labels=_labels(args.label))
    table = Table("name", "session", "state", "status", "keep-alive", "owner", "image")
    for s in sandboxes:
        owner = {True: "alive", False: "gone", None: "other host"}[s.owner_alive]
        table.add_row(s.name, s.session_id, s.state, s.status, str(s.keep_alive), owner, s.image)
    console.print(table)
    return 0


async def cmd_gc(args: argparse.Namespace) -> int:
    import aiodocker

    from openhands_rt.sandboxes import reap_orphans

    if args.swarm:
        from openhands_rt.swarm.sandboxes import reap_swarm_orphans

        async with aiodocker.Docker(url=args.swarm) as manager:
            removed = await reap_swarm_orphans(
                manager, include_kept=args.all, labels=_labels(args.label)
            )
        for name in removed:
            console.print(f"removed {name}")
        console.print(f"{len(removed)} orphaned swarm sandbox(es) removed")
        return 0
    async with aiodocker.Docker() as docker:
        removed = await reap_orphans(docker, include_kept=args.all, labels=_labels(args.label))
        for name in removed:
            console.print(f"removed {name}")
        console.print(f"{len(removed)} orphaned sandbox(es) removed")
        if args.bundles:
            from openhands_rt.docker.mount import prune_bundles

            bundles = await prune_bundles(docker)
            for path in bundles:
                console.print(f"removed {path}")
            console.print(f"{len(bundles)} runtime bundle(s) no container mounts removed")
        if args.snapshots:
            from openhands_rt.snapshots import remove_snapshots

            snapshots = await remove_snapshots(docker, labels=_labels(args.label))
            for snapshot_id in snapshots:
                console.print(f"removed snapshot {snapshot_id}")
            console.print(f"{len(snapshots)} snapshot(s) removed")
    return 0


async def cmd_snapshots(args: argparse.Namespace) -> int:
    import aiodocker
    from rich.table import Table

    from openhands_rt.snapshots import list_snapshots

    async with aiodocker.Docker() as docker:
        snapshots = await list_snapshots(docker=docker, labels=_labels(args.label))
    table = Table("snapshot", "session", "after event", "mode", "created", "directory")
    for s in snapshots:
        table.add_row(
            s.snapshot_id, s.session_id, str(s.event_id), s.runtime_mode, s.created, s.directory
        )
    console.print(table)
    return 0


def _labels(pairs: list[str] | None) -> dict[str, str]:
    labels: dict[str, str] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not key or not sep:
            raise CliError(f"--label wants KEY=VALUE, not {pair!r}")
        labels[key] = value
    return labels


# ---------------------------------------------------------------------- parser


def _sandbox_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base-image", default=_BASE_IMAGE, help="base image to build on")
    p.add_argument("--image", default=None, help="use this runtime image as is (no build)")
    _mode_options(p)
    p.add_argument("--workspace", default=None, help="host directory mounted at /workspace")
    p.add_argument("--local", action="store_true", help="no container: run the server locally")
    _plugins_option(p)


def _mode_options(p: argparse.ArgumentParser) -> None:
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--no-build",
        dest="runtime_mode",
        action="store_const",
        const="mount",
        default=None,
        help="no build: any Linux image (--image, else --base-image) as it is, with the "
        "runtime bundle mounted read-only",
    )
    mode.add_argument(
        "--build",
        dest="runtime_mode",
        action="store_const",
        const="build",
        help="build (or find) the runtime image for the base image",
    )


def _plugins_option(p: argparse.ArgumentParser) -> None:
    from openhands_rt.plugins import offered_plugins

    p.add_argument(
        "--plugins", nargs="*", default=[], help=f"plugins: {', '.join(offered_plugins())}"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="openhands-rt", description="Event-sourced sandbox runtime for AI coding agents."
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command_name", required=True, metavar="COMMAND")

    p = sub.add_parser("demo", help="run a short scripted agent session in a real sandbox")
    _sandbox_options(p)
    p.add_argument("--log", default=None, help="durable event log path (default: a temp file)")
    p.set_defaults(handler=cmd_demo)

    p = sub.add_parser("run", help="run one command in a fresh sandbox, streaming its output")
    _sandbox_options(p)
    p.add_argument(
        "--timeout",
        type=float,
        default=600.0,
        help="hard timeout, seconds: the command is stopped and the exit code is 124",
    )
    p.add_argument(
        "-i",
        "--interactive",
        action="store_true",
        help="pass standard input to the command (default: closed, as with docker run)",
    )
    p.add_argument(
        "command",
        nargs=argparse.REMAINDER,
        help="-- ARG... (several: one argv, quoted for the shell) or -- 'SHELL LINE'",
    )
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("shell", help="an interactive line shell into a sandbox")
    _sandbox_options(p)
    p.set_defaults(handler=cmd_shell)

    p = sub.add_parser("build", help="build (or find) the runtime image for a base image")
    p.add_argument("--base-image", default=_BASE_IMAGE)
    p.add_argument("--force", action="store_true", help="rebuild from scratch")
    _plugins_option(p)
    p.set_defaults(handler=cmd_build)

    p = sub.add_parser("base-image", help="base images made without a registry")
    bsub = p.add_subparsers(dest="base_command", required=True, metavar="SUBCOMMAND")
    b = bsub.add_parser("bootstrap", help="debootstrap a minimal Debian with python3 and import it")
    b.add_argument("--name", default=_BASE_IMAGE)
    b.add_argument("--suite", default="bookworm")
    b.add_argument("--verbose", action="store_true")
    b.set_defaults(handler=cmd_bootstrap)

    label_help = "only sandboxes with this container label (repeatable: all of them)"
    swarm_help = "a Swarm manager's engine URL: the swarm's sandbox services instead"
    p = sub.add_parser("ps", help="list openhands-rt sandboxes")
    p.add_argument("--label", action="append", metavar="KEY=VALUE", help=label_help)
    p.add_argument("--swarm", metavar="MANAGER_URL", help=swarm_help)
    p.set_defaults(handler=cmd_ps)

    p = sub.add_parser("gc", help="remove sandboxes whose owner process is gone")
    p.add_argument("--all", action="store_true", help="also kept-alive sandboxes of dead owners")
    p.add_argument(
        "--bundles",
        action="store_true",
        help="also the runtime bundles (--no-build) that no container mounts",
    )
    p.add_argument(
        "--snapshots",
        action="store_true",
        help="also every snapshot (with --label: those with the labels), whatever its "
        "session: a snapshot outlives its sandbox, so only this removes it",
    )
    p.add_argument("--label", action="append", metavar="KEY=VALUE", help=label_help)
    p.add_argument(
        "--swarm",
        metavar="MANAGER_URL",
        help="a Swarm manager's engine URL: the sandbox services (and their secrets and "
        "run directories) whose owner on this host is gone",
    )
    p.set_defaults(handler=cmd_gc)

    p = sub.add_parser("snapshots", help="list the snapshots of sandboxes")
    p.add_argument(
        "--label", action="append", metavar="KEY=VALUE", help="only snapshots with this label"
    )
    p.set_defaults(handler=cmd_snapshots)

    p = sub.add_parser(
        "replay",
        help="execute, verify (--verify) or serve (--serve) a recorded event log or trajectory",
    )
    p.add_argument("path", help="an openhands-rt event log or an OpenHands trajectory (JSON list)")
    p.add_argument(
        "--verify",
        action="store_true",
        help="compare each observation with the recorded one; exit 1 at the first divergence",
    )
    p.add_argument(
        "--serve",
        action="store_true",
        help="no sandbox: answer JSON actions on stdin with the recorded observations",
    )
    where = p.add_mutually_exclusive_group()
    where.add_argument("--base-image", default=None, help=f"base image ({_BASE_IMAGE})")
    where.add_argument("--local", action="store_true", help="no container (no isolation)")
    p.add_argument("--image", default=None, help="use this runtime image as is (no build)")
    _mode_options(p)
    p.add_argument("--workspace", default=None, help="host directory mounted at /workspace")
    p.add_argument(
        "--until", type=int, default=None, metavar="EVENT_ID", help="stop after this event id"
    )
    p.add_argument("--output-log", default=None, help="write the replay to this new durable log")
    p.add_argument(
        "--max-in-flight",
        type=int,
        default=None,
        metavar="N",
        help="shell commands sent before the first is answered (default 8; 1: none sent "
        "behind a command before its answer, so nothing runs past a divergence)",
    )
    _plugins_option(p)
    p.set_defaults(handler=cmd_replay)

    p = sub.add_parser("fork", help="a new session in the state a recorded one had after event N")
    p.add_argument("log", help="an openhands-rt event log (a live session's too)")
    p.add_argument("--at", type=int, required=True, metavar="N", help="the event id to fork at")
    p.add_argument("--shell", action="store_true", help="then an interactive shell on the fork")
    p.add_argument("--out", default=None, metavar="NEWLOG", help="keep the fork's event log here")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--base-image", default=_BASE_IMAGE, help=f"base image ({_BASE_IMAGE})")
    where.add_argument("--local", action="store_true", help="no container (no isolation)")
    p.add_argument("--image", default=None, help="use this runtime image as is (no build)")
    _mode_options(p)
    p.add_argument("--workspace", default=None, help="host directory mounted at /workspace")
    _plugins_option(p)
    p.set_defaults(handler=cmd_fork)
    return parser


async def cmd_fork(args: argparse.Namespace) -> int:
    from openhands_rt.fork_cli import fork_command

    return await fork_command(args, sandbox_config(args), console)


async def cmd_replay(args: argparse.Namespace) -> int:
    from openhands_rt.replay_cli import replay_command

    return await replay_command(args, console)


def _fail(message: str, code: int = 1) -> NoReturn:
    err_console.print(f"[red]error:[/red] {message}")
    raise SystemExit(code)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command_name == "run" and args.command[:1] == ["--"]:
        args.command = args.command[1:]
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    handler: Callable[[argparse.Namespace], Coroutine[Any, Any, int]] = args.handler
    try:
        return asyncio.run(until_stopped(handler(args)))
    except KeyboardInterrupt:  # a second Ctrl-C while the first one's cleanup runs
        return 128 + signal.SIGINT
    except (CliError, SandboxError, ValueError, OSError) as exc:
        if args.debug:
            raise
        message = str(exc).strip() or type(exc).__name__
        first, _, rest = message.partition("\n")
        _fail(first if not rest else f"{first}\n{rest}")
    except Exception as exc:  # aiodocker and friends: still one clear line
        if args.debug:
            raise
        _fail(f"{type(exc).__name__}: {exc}")


if __name__ == "__main__":
    raise SystemExit(main())
