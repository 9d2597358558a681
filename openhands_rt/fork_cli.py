"""``openhands-rt fork LOG --at N``: a new session in the state a recorded one had after event N.

::

    openhands-rt fork LOG --at N [--shell] [--out NEWLOG] [--base-image IMG | --local]
                      [--image IMG] [--no-build | --build] [--workspace DIR] [--plugins NAME...]

``LOG`` is an openhands-rt event log (a live session's too: it is read as it is
on disk). The fork is made (:func:`openhands_rt.fork`): the events 0..N copied,
the recorded actions re-executed in verify mode in a fresh sandbox; what it did
is printed, and the first divergence, if any, with its diff. Then ``--shell``
opens the interactive shell of ``openhands-rt shell`` on the fork; else the
command ends, keeping the fork's event log at ``--out`` (a new path), from
where ``openhands-rt replay``, another fork or an agent can go on.

Exit codes: 0 the fork matched its source, 1 it diverged (it was still made,
and ``--out`` kept), 2 unusable input or options; with ``--shell``, the shell's.
"""

from __future__ import annotations

import argparse
import os
from typing import Final

from rich.console import Console
from rich.markup import escape
from rich.text import Text

from openhands_rt.config import SandboxConfig
from openhands_rt.forking import ForkError, ForkReport, fork

__all__ = ["fork_command"]

EXIT_OK: Final = 0
EXIT_DIVERGED: Final = 1
EXIT_USAGE: Final = 2


async def fork_command(args: argparse.Namespace, config: SandboxConfig, console: Console) -> int:
    """Run ``openhands-rt fork`` with parsed ``args`` and the sandbox ``config``.

    ``args``: ``log``, ``at``, ``shell``, ``out``, ``local``. Returns the exit
    code; sandbox failures propagate as :class:`~openhands_rt.errors.SandboxError`.
    """
    if args.out and _holds_data(args.out):
        console.print(
            f"[red]error:[/red] {escape(args.out)} exists and is not empty: give a new path"
        )
        return EXIT_USAGE
    reports: list[ForkReport] = []
    where = "locally" if args.local else f"in a sandbox from {_image(config)}"
    console.print(f"forking {escape(args.log)} at event {args.at} {escape(where)}")
    try:
        async with fork(
            args.log,
            args.at,
            config=config,
            log_path=args.out,
            local=args.local,
            on_report=reports.append,
        ) as rt:
            (report,) = reports
            _print_report(console, report)
            if args.shell:
                from openhands_rt.shell import interactive_shell

                console.print(f"shell on the fork (session {rt.session_id}); Ctrl-D leaves")
                code = await interactive_shell(rt, console)
            else:
                code = EXIT_DIVERGED if report.divergence is not None else EXIT_OK
    except ForkError as exc:
        console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
        return EXIT_USAGE
    if args.out:
        console.print(f"the fork's event log: {escape(args.out)}")
    elif not args.shell:
        console.print("the fork was not kept (give --out NEWLOG to keep its event log)")
    return code


def _image(config: SandboxConfig) -> str:
    return config.runtime_container_image or config.base_container_image


def _holds_data(path: str) -> bool:
    try:
        return os.path.getsize(path) > 0
    except OSError:
        return False


def _print_report(console: Console, report: ForkReport) -> None:
    console.print(
        f"{report.copied} events copied; "
        + (f"from snapshot {report.snapshot_id}, " if report.snapshot_id else "fresh sandbox, ")
        + f"{report.executed} actions re-executed: {report.matched} matched"
        + (f", {report.unverified} with nothing to compare" if report.unverified else "")
        + (f", [red]{report.diverged} diverged[/red]" if report.diverged else "")
    )
    if report.pending:
        console.print(f"{report.pending} unanswered action(s) at the fork point run in the fork")
    if report.divergence is not None:
        head, _, rest = report.divergence.describe().partition("\n")
        console.print(Text(head, style="bold red"))
        console.print(Text(rest))
