"""``openhands-rt shell``: an interactive line shell over the action channel.

Each line is a ``CmdRunAction``; while a command is still running (soft
timeout) a line is sent to it as input (``is_input=True``), an empty line asks
for more output, and Ctrl-C sends ``C-c``. Output streams live as chunks.
"""

from __future__ import annotations

import asyncio
import sys

from rich.console import Console

from events import CmdOutputChunk, CmdOutputObservation, CmdRunAction, Event
from openhands_rt.runtime import EventStreamRuntime

__all__ = ["interactive_shell"]


async def _read_line(prompt: str) -> str | None:
    def read() -> str | None:
        try:
            return input(prompt)
        except EOFError:
            return None

    return await asyncio.to_thread(read)


async def interactive_shell(rt: EventStreamRuntime, console: Console) -> int:
    streamed: set[int] = set()

    async def show(event: Event) -> None:
        if isinstance(event, CmdOutputChunk):
            streamed.add(event.cause)
            sys.stdout.write(event.data)
            sys.stdout.flush()

    rt.stream.subscribe(show, subscriber_id="shell-printer")
    console.print("[dim]openhands-rt shell — Ctrl-D to leave, Ctrl-C interrupts the command[/dim]")
    running = False
    while True:
        try:
            line = await _read_line("… " if running else "$ ")
        except KeyboardInterrupt:
            line = "C-c" if running else ""
            if not running:
                sys.stdout.write("\n")
                continue
        if line is None:
            return 0
        if running and line in ("C-c", "C-d", "C-z"):
            action = CmdRunAction(line, is_input=True)
        elif running:
            action = CmdRunAction(line, is_input=bool(line))
        elif not line.strip():
            continue
        else:
            action = CmdRunAction(line)
        obs = await rt.run(action)
        await asyncio.sleep(0)
        if isinstance(obs, CmdOutputObservation):
            if obs.cause not in streamed and obs.content:
                sys.stdout.write(obs.content if obs.content.endswith("\n") else obs.content + "\n")
            running = obs.exit_code == -1
            if obs.metadata.suffix.strip():
                console.print(f"[dim]{obs.metadata.suffix.strip()}[/dim]")
        else:
            console.print(f"[red]{getattr(obs, 'content', obs)}[/red]")
