"""``openhands-rt replay PATH``: execute, verify or serve a recorded session.

::

    openhands-rt replay PATH [--verify] [--base-image IMG | --local] [--workspace DIR]
                             [--until EVENT_ID] [--output-log FILE] [--plugins NAME...]
    openhands-rt replay PATH --serve

``PATH`` is an openhands-rt event log or an OpenHands trajectory (told apart
automatically; anything else: one error line, exit code 2). Execute and verify
run the recorded actions in a fresh sandbox with a progress bar; verify stops at
the first divergence and prints it (exit code 1). ``--local`` runs the server
on this host with no isolation: a recorded command that names ``/workspace``
acts on this host's ``/workspace`` (only paths of file actions are mapped to the
local workspace; see :mod:`openhands_rt.replay`).

``--serve`` starts no sandbox: it reads actions from standard input, one JSON
object per line, and writes the recorded observation of each to standard
output, one JSON object per line, in the same format as the action: an
openhands-rt event (``encode_event``) or an OpenHands event dict (an object
with an ``"action"`` key); its ``cause`` is the action's ``id`` when the
action has one, else the id the action got in the served session. A line
that is not an action is answered with an ``ErrorObservation``
(``error_id`` ``"bad_request"``). An action that is not
the next recorded one is answered with an ``ErrorObservation``
(``error_id`` ``"replay_mismatch"``) naming the recorded event, the error is
printed on standard error and the command exits with code 1; at end of input
it exits with 0. Human-readable text goes to standard error in this mode.

Exit codes: 0 success / every observation matched, 1 divergence (or a serve
mismatch), 2 unusable input or options.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import IO, Any, Final

import anyio.to_thread
import msgspec
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from events import Action, ErrorObservation, Event, EventStream, decode_event, encode_event
from events.codec import EventDecodeError
from events.compat import from_openhands_dict, to_openhands_dict
from events.wire import ErrorId
from openhands_rt.cli_common import CliError, plugin_requirements
from openhands_rt.config import SandboxConfig, cli_base_image
from openhands_rt.replay import (
    MAX_IN_FLIGHT,
    REPLAY_MISMATCH_ERROR_ID,
    Divergence,
    RecordedRuntime,
    Recording,
    ReplayError,
    ReplayInputError,
    ReplayMismatchError,
    StepReport,
    describe_action,
    load_recording,
    replay_recording,
)
from openhands_rt.runtime import EventStreamRuntime

__all__ = ["BAD_REQUEST_ERROR_ID", "replay_command", "serve_lines"]

BAD_REQUEST_ERROR_ID: Final = ErrorId.BAD_REQUEST
EXIT_OK: Final = 0
EXIT_DIVERGED: Final = 1
EXIT_USAGE: Final = 2


class _UsageError(ReplayError):
    """Unusable input or options: one error line, exit code 2 (never leaves this module)."""


async def replay_command(args: argparse.Namespace, console: Console) -> int:
    """Run ``openhands-rt replay`` with parsed ``args``; returns the exit code.

    ``args``: ``path``, ``verify``, ``serve``, ``base_image``, ``local``,
    ``workspace``, ``until``, ``output_log`` (``image`` too, when present).
    Sandbox failures propagate as :class:`~openhands_rt.errors.SandboxError`.
    """
    try:
        until = _check_options(args)
        recording = await anyio.to_thread.run_sync(load_recording, args.path)
    except (_UsageError, ReplayInputError) as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        return EXIT_USAGE
    if args.serve:
        return await _serve(recording)
    return await _replay(recording, args, until, console)


def _check_options(args: argparse.Namespace) -> int | None:
    until: int | None = None
    if args.until is not None:
        try:
            until = int(args.until)
        except (TypeError, ValueError):
            raise _UsageError(
                f"--until takes an event id (an integer), got {args.until!r}"
            ) from None
    if args.serve and (args.verify or args.output_log or until is not None or args.local):
        raise _UsageError(
            "--serve runs no sandbox: it takes none of --verify, --local, --until, --output-log"
        )
    try:
        plugin_requirements(getattr(args, "plugins", None))
    except CliError as exc:
        raise _UsageError(str(exc)) from None
    max_in_flight = getattr(args, "max_in_flight", None)
    if max_in_flight is not None and max_in_flight < 1:
        raise _UsageError(f"--max-in-flight takes a number >= 1, got {max_in_flight}")
    if args.local and getattr(args, "image", None):
        raise _UsageError("--local runs no container: --image does not apply")
    if args.output_log and _holds_data(args.output_log):
        raise _UsageError(f"{args.output_log} exists and is not empty: give a new path")
    return until


def _holds_data(path: str) -> bool:
    try:
        return os.path.getsize(path) > 0
    except OSError:
        return False


def _config(args: argparse.Namespace) -> SandboxConfig:
    mode = getattr(args, "runtime_mode", None)
    return SandboxConfig(
        base_container_image=args.base_image or cli_base_image(),
        runtime_container_image=getattr(args, "image", None) or None,
        workspace_dir=args.workspace,
        # The plugins the session was recorded with (e.g. jupyter for its IPython cells).
        plugins=plugin_requirements(getattr(args, "plugins", None)),
        **({"runtime_mode": mode} if mode else {}),
    )


# --------------------------------------------------------------------------- execute / verify


async def _replay(
    recording: Recording, args: argparse.Namespace, until: int | None, console: Console
) -> int:
    total = sum(1 for s in recording.steps if until is None or s.action.id <= until)
    if until is not None and all(e.id != until for e in recording.events):
        console.print(f"[yellow]note:[/yellow] no recorded event has id {until}")
    config = _config(args)
    mode = "verifying" if args.verify else "replaying"
    where = "locally" if args.local else f"in a sandbox from {config.base_container_image}"
    console.print(
        f"{mode} {total} actions of {escape(args.path)} ({recording.format}) {escape(where)}"
    )
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console, transient=True) as progress:
        task = progress.add_task("starting the sandbox", total=total)

        def on_ready(runtime: EventStreamRuntime) -> None:
            progress.update(task, description=mode)

        def on_step(report: StepReport) -> None:
            progress.update(
                task,
                completed=report.index + 1,
                description=f"{mode}: {escape(describe_action(report.step.action)[:50])}",
            )

        result = await replay_recording(
            recording,
            verify=args.verify,
            local=args.local,
            config=config,
            until=until,
            output_log=args.output_log,
            on_step=on_step,
            on_ready=on_ready,
            max_in_flight=getattr(args, "max_in_flight", None) or MAX_IN_FLIGHT,
        )
    if result.divergence is not None:
        _print_divergence(console, result.divergence)
        console.print(
            f"[red]diverged[/red] after {result.matched} matching observations "
            f"({result.executed} of {result.total} actions run)"
        )
        return EXIT_DIVERGED
    summary = f"{result.executed} actions run, {result.carried} other events carried"
    if args.verify:
        summary = f"[green]all {result.matched} observations match[/green]; {summary}"
        if result.unverified:
            summary += f"; {result.unverified} actions had no recorded observation"
    console.print(summary)
    if args.output_log:
        console.print(f"new event log: {escape(args.output_log)}")
    return EXIT_OK


def _print_divergence(console: Console, divergence: Divergence) -> None:
    head, _, diff = divergence.describe().partition("\n")
    action_line, _, diff = diff.partition("\n")
    console.print(Text(head, style="bold red"))
    console.print(Text(action_line))
    text = Text()
    for line in diff.splitlines():
        style = ""
        if line.startswith(("---", "+++")):
            style = "bold"
        elif line.startswith("-"):
            style = "red"
        elif line.startswith("+"):
            style = "green"
        elif line.startswith("@@"):
            style = "cyan"
        text.append(line + "\n", style=style)
    console.print(text, end="")


# --------------------------------------------------------------------------- serve


async def _serve(recording: Recording) -> int:
    err = Console(stderr=True, highlight=False)
    err.print(
        f"serving {len(recording.steps)} recorded actions: one JSON action per line on "
        "standard input"
    )
    stdout = sys.stdout.buffer

    def write(line: bytes) -> None:
        stdout.write(line + b"\n")
        stdout.flush()

    code, served = await serve_lines(recording, sys.stdin.buffer, write, on_error=err.print)
    err.print(f"served {served} of {len(recording.steps)} recorded actions")
    return code


async def serve_lines(
    recording: Recording,
    source: IO[bytes],
    write: Callable[[bytes], None],
    *,
    on_error: Callable[[str], None] | None = None,
) -> tuple[int, int]:
    """Answer JSON actions read from ``source`` with the recording (see the module docstring).

    Returns the exit code and how many actions were served.
    """
    stream = EventStream()
    async with stream, RecordedRuntime(stream, recording) as runtime:
        while True:
            line = await anyio.to_thread.run_sync(source.readline)
            if not line:
                return EXIT_OK, runtime.position
            if not line.strip():
                continue
            action, openhands_form, problem = _parse_action(line)
            if action is None:
                answer: Event = ErrorObservation(problem, error_id=BAD_REQUEST_ERROR_ID)
                write(_render(answer, openhands_form))
                continue
            try:
                answer = await runtime.run(_without_metadata(action))
            except ReplayMismatchError as exc:
                mismatch = ErrorObservation(str(exc), error_id=REPLAY_MISMATCH_ERROR_ID)
                write(_render(_answering(mismatch, action), openhands_form))
                if on_error is not None:
                    on_error(f"error: {escape(str(exc))}")
                return EXIT_DIVERGED, runtime.position
            write(_render(_answering(answer, action), openhands_form))


def _answering(answer: Event, action: Action) -> Event:
    # The client's id for its action, when it gave one: answers correlate without counting.
    cause = action.id if action.id >= 0 else answer.cause
    replaced: Event = msgspec.structs.replace(answer, cause=cause)
    return replaced


def _parse_action(line: bytes) -> tuple[Action | None, bool, str]:
    try:
        data: Any = json.loads(line)
    except ValueError as exc:
        return None, False, f"not JSON: {exc}"
    openhands_form = isinstance(data, dict) and ("action" in data or "observation" in data)
    try:
        event = from_openhands_dict(data) if openhands_form else decode_event(line)
    except (ValueError, EventDecodeError) as exc:
        return None, openhands_form, f"not an event: {exc}"
    if not isinstance(event, Action):
        return None, openhands_form, f"not a sandbox action: {type(event).__name__}"
    return event, openhands_form, ""


def _without_metadata(action: Action) -> Action:
    fresh: Action = msgspec.structs.replace(action, id=-1, timestamp=None, source=None, cause=None)
    return fresh


def _render(event: Event, openhands_form: bool) -> bytes:
    if openhands_form:
        return json.dumps(to_openhands_dict(event)).encode()
    return encode_event(event)
