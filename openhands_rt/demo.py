"""The README's main job: a short scripted agent session in a real sandbox.

A scripted "agent" appends actions to a durable event stream; a subscriber
prints every event as it happens (chunks included); the runtime executes the
actions in the sandbox. At the end the log is reopened from disk and checked.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from events import (
    Action,
    CmdOutputChunk,
    CmdOutputObservation,
    CmdRunAction,
    ErrorObservation,
    Event,
    EventStream,
    FileEditAction,
    FileEditObservation,
    FileReadAction,
    FileReadObservation,
    FileWriteAction,
    FileWriteObservation,
    Observation,
    RuntimeStatusObservation,
)
from openhands_rt.config import SandboxConfig
from openhands_rt.runtime import EventStreamRuntime

__all__ = ["SCRIPT", "run_demo"]

SCRIPT_PATH = "/workspace/fib.py"

SCRIPT: list[Action] = [
    CmdRunAction("uname -sr; whoami; pwd; python3 --version"),
    FileWriteAction(
        SCRIPT_PATH,
        "import sys\n\n\ndef fib(n):\n    a, b = 0, 1\n    for _ in range(n):\n"
        "        a, b = b, a + b\n    return a\n\n\nprint([fib(i) for i in range(10)])\n",
    ),
    CmdRunAction("python3 fib.py"),
    FileEditAction(SCRIPT_PATH, "str_replace", old_str="range(10)", new_str="range(15)"),
    CmdRunAction("python3 fib.py"),
    CmdRunAction('for i in 1 2 3; do echo "tick $i"; sleep 0.3; done'),
    FileReadAction(SCRIPT_PATH, start=3, end=8),
    CmdRunAction("false"),
]


def _describe(event: Event) -> str:
    head = f"[dim]#{event.id:<3}[/dim] [cyan]{event.source or '-':<11}[/cyan]"
    match event:
        case CmdRunAction():
            return f"{head} [bold]$ {escape(event.command)}[/bold]"
        case FileWriteAction():
            return f"{head} [bold]write[/bold] {escape(event.path)} ({len(event.content)} chars)"
        case FileEditAction():
            return f"{head} [bold]edit[/bold] {event.command} {escape(event.path)}"
        case FileReadAction():
            return f"{head} [bold]read[/bold] {escape(event.path)} lines {event.start}..{event.end}"
        case CmdOutputChunk():
            return f"{head} [yellow]chunk[/yellow] of #{event.cause}: {escape(event.data.rstrip())}"
        case CmdOutputObservation():
            body = escape(event.content.rstrip())
            return f"{head} [green]exit {event.exit_code}[/green] for #{event.cause}\n{body}"
        case FileEditObservation() | FileReadObservation():
            kind = type(event).__name__
            return (
                f"{head} [green]{kind}[/green] for #{event.cause}\n{escape(event.content.rstrip())}"
            )
        case FileWriteObservation():
            return f"{head} [green]written[/green] {escape(event.path)}"
        case ErrorObservation():
            return f"{head} [red]error[/red] for #{event.cause}: {escape(event.content)}"
        case RuntimeStatusObservation():
            return f"{head} [magenta]runtime {event.status}[/magenta] {escape(event.message)}"
        case _:
            return f"{head} {type(event).__name__}"


async def run_demo(
    args: argparse.Namespace,
    console: Console,
    make_runtime: Callable[[argparse.Namespace, EventStream, SandboxConfig], EventStreamRuntime],
    sandbox_config: Callable[..., SandboxConfig],
) -> int:
    with tempfile.TemporaryDirectory(prefix="openhands-rt-demo-") as tmp:
        log_path = Path(args.log) if args.log else Path(tmp) / "session.log"
        workspace = args.workspace or str(Path(tmp) / "workspace")
        Path(workspace).mkdir(parents=True, exist_ok=True)
        args.workspace = workspace
        config = sandbox_config(args)
        kind = (
            "local server (no container)"
            if args.local
            else f"Docker ({config.base_container_image})"
        )
        console.rule(f"openhands-rt demo — sandbox: {kind}")
        failures = 0
        t0 = time.perf_counter()
        async with EventStream(log_path=log_path) as stream:

            async def show(event: Event) -> None:
                console.print(_describe(event))

            stream.subscribe(show, subscriber_id="demo-printer", from_id=0)
            async with make_runtime(args, stream, config) as rt:
                started = time.perf_counter()
                for action in SCRIPT:
                    script_action = action
                    if args.local and isinstance(
                        action, FileWriteAction | FileEditAction | FileReadAction
                    ):
                        # No /workspace mount locally: the workspace is the server's own cwd.
                        import msgspec

                        script_action = msgspec.structs.replace(
                            action, path=action.path.replace("/workspace", workspace, 1)
                        )
                    obs: Observation = await rt.run(script_action)
                    if isinstance(obs, ErrorObservation):
                        failures += 1
                elapsed = time.perf_counter() - started
            await stream.flush()
            total = len(stream)
        console.rule("replaying the durable log from disk")
        async with EventStream(log_path=log_path) as reopened:
            ids = [e.id for e in reopened.iter_events()]
            observations = [
                e for e in reopened.iter_events() if isinstance(e, CmdOutputObservation)
            ]
        assert ids == list(range(total)), "the log lost or reordered events"
        console.print(
            f"{total} events recorded in {log_path.name}, reopened intact (ids 0..{total - 1}); "
            f"{len(observations)} command outputs; exit codes "
            f"{[o.exit_code for o in observations]}"
        )
        console.print(
            f"sandbox start + {len(SCRIPT)} actions: {time.perf_counter() - t0:.2f} s "
            f"(actions alone: {elapsed * 1000:.0f} ms)"
        )
        return 1 if failures else 0
