"""``openhands-rt shell``: an interactive line shell over the action channel.

Each line typed at the prompt is a ``CmdRunAction``. The terminal stays in its
ordinary (canonical) mode, so the kernel echoes and edits the line; Ctrl-C and
Ctrl-D keep the meaning they have in a local shell:

- **Ctrl-C while a command runs** sends ``C-c`` to the sandbox's shell: its
  command is interrupted and the prompt comes back; the shell and its sandbox
  stay. The sandbox runs one bash action at a time, so a command is never
  awaited as one long action: each action (the command, then "more output?"
  polls) has a hard timeout of :data:`POLL_SECONDS`, after which the command
  keeps running and the next action is sent: ``C-c`` after Ctrl-C, a typed line
  as input to the command (``is_input=True``), ``C-d`` after Ctrl-D, else a poll.
  So Ctrl-C reaches the command within about :data:`POLL_SECONDS`.
- **Ctrl-C at the prompt** drops the line being typed (the kernel discards it)
  and shows a fresh prompt.
- **Ctrl-D at the prompt** (end of input) leaves the shell with exit code 0.

Output: the command's first action streams live (``CmdOutputChunk``); the
output of later polls is printed from their observations, because output made
between two polls reaches no chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import sys
from typing import Literal

import anyio
import anyio.abc
from rich.console import Console
from rich.markup import escape

from events import CmdOutputChunk, CmdOutputObservation, CmdRunAction, Event, Observation
from openhands_rt.cli_signals import intercept_sigint
from openhands_rt.runtime import EventStreamRuntime

__all__ = ["POLL_SECONDS", "interactive_shell"]

#: Hard timeout of each action while a command runs: how soon Ctrl-C reaches it (seconds).
POLL_SECONDS = 1.0
_READ_SIZE = 4096

_Kind = Literal["line", "eof", "interrupt"]


class _Keyboard:
    """Lines, end of input and Ctrl-C, in the order the user gave them."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.events: asyncio.Queue[tuple[_Kind, str]] = asyncio.Queue()
        self._partial = b""
        self._closed = False

    def start(self, task_group: anyio.abc.TaskGroup) -> None:
        """Start reading; a file is read by a task of ``task_group`` (cancel it to stop)."""
        if stat.S_ISREG(os.fstat(self.fd).st_mode):
            # A file cannot be waited on: read it in a worker thread.
            task_group.start_soon(self._read_file, name="shell-keyboard")
        else:
            asyncio.get_running_loop().add_reader(self.fd, self._readable)

    def stop(self) -> None:
        with contextlib.suppress(ValueError, OSError):
            asyncio.get_running_loop().remove_reader(self.fd)

    def interrupt(self) -> None:
        self._partial = b""  # the kernel discarded the line being typed, so do we
        self.events.put_nowait(("interrupt", ""))

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        self._feed(data)

    async def _read_file(self) -> None:
        while data := await asyncio.to_thread(os.read, self.fd, _READ_SIZE):
            self._feed(data)
        self._feed(b"")

    def _feed(self, data: bytes) -> None:
        if not data:
            # A terminal: Ctrl-D at the start of a line (it ends the shell); a pipe or a
            # file: the end. What was typed without a newline is a last line.
            if self._partial:
                self._line(self._partial)
                self._partial = b""
            if not os.isatty(self.fd):
                self.stop()
            self.events.put_nowait(("eof", ""))
            return
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            self._line(line)

    def _line(self, raw: bytes) -> None:
        self.events.put_nowait(("line", raw.decode("utf-8", "replace").rstrip("\r")))


class _Printer:
    """Writes output: the live chunks of one action, or observations' content."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.live: set[int] = set()  # actions whose chunks are printed
        self.streamed: set[int] = set()
        self._seen = -1
        self._progress = asyncio.Condition()

    async def on_event(self, event: Event) -> None:
        if isinstance(event, CmdOutputChunk) and event.cause in self.live:
            self.streamed.add(event.cause)
            sys.stdout.write(event.data)
            sys.stdout.flush()
        async with self._progress:
            self._seen = event.id
            self._progress.notify_all()

    async def caught_up(self, event_id: int) -> None:
        """Return once every event up to ``event_id`` went through :meth:`on_event`."""
        async with self._progress:
            await self._progress.wait_for(lambda: self._seen >= event_id)

    def observation(self, obs: Observation) -> None:
        if isinstance(obs, CmdOutputObservation):
            if obs.cause not in self.streamed and obs.content:
                text = obs.content
                sys.stdout.write(text if text.endswith("\n") else text + "\n")
                sys.stdout.flush()
            if obs.exit_code > 0 and obs.metadata.suffix.strip():
                self.console.print(f"[dim]{escape(obs.metadata.suffix.strip())}[/dim]")
        else:
            self.console.print(f"[red]{escape(getattr(obs, 'content', repr(obs)))}[/red]")


async def interactive_shell(rt: EventStreamRuntime, console: Console) -> int:
    """Read lines from standard input and run them in ``rt``'s sandbox; returns the exit code."""
    printer = _Printer(console)
    subscription = rt.stream.subscribe(printer.on_event, subscriber_id="shell-printer")
    keyboard = _Keyboard(sys.stdin.fileno())
    console.print("[dim]openhands-rt shell — Ctrl-D to leave, Ctrl-C interrupts the command[/dim]")
    failure: Exception | None = None
    code = 1
    try:
        async with anyio.create_task_group() as task_group:
            keyboard.start(task_group)
            # Caught here and raised below: out of the task group it would be a group.
            try:
                with intercept_sigint(keyboard.interrupt):
                    code = await _prompt_loop(rt, keyboard, printer)
            except Exception as exc:
                failure = exc
            task_group.cancel_scope.cancel()  # the keyboard's reader, if any
        if failure is not None:
            raise failure
        return code
    finally:
        keyboard.stop()
        subscription.unsubscribe()


def _prompt() -> None:
    sys.stdout.write("$ ")
    sys.stdout.flush()


async def _prompt_loop(rt: EventStreamRuntime, keyboard: _Keyboard, printer: _Printer) -> int:
    _prompt()
    while True:
        kind, text = await keyboard.events.get()
        if kind == "eof":
            sys.stdout.write("\n")
            return 0
        if kind == "line" and text.strip():
            await _run_command(rt, keyboard, printer, text)
        elif kind == "interrupt":
            sys.stdout.write("\n")
        _prompt()


async def _run_command(
    rt: EventStreamRuntime, keyboard: _Keyboard, printer: _Printer, line: str
) -> None:
    # run() appends before it first awaits: the action's id is the stream's length now.
    printer.live.add(len(rt.stream))
    obs = await rt.run(CmdRunAction(line, timeout=POLL_SECONDS))
    await printer.caught_up(obs.id)
    printer.observation(obs)
    while isinstance(obs, CmdOutputObservation) and obs.exit_code == -1:
        # Still running: what the user did meanwhile goes to it, in order.
        if keyboard.events.empty():
            action = CmdRunAction("", timeout=POLL_SECONDS)
        else:
            kind, text = keyboard.events.get_nowait()
            if kind == "interrupt":
                action = CmdRunAction("C-c", is_input=True, timeout=POLL_SECONDS)
            elif kind == "eof":
                action = CmdRunAction("C-d", is_input=True, timeout=POLL_SECONDS)
            else:
                action = CmdRunAction(text, is_input=True, timeout=POLL_SECONDS)
        obs = await rt.run(action)
        printer.observation(obs)
