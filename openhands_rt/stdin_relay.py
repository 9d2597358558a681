"""The command of ``openhands-rt run`` and the standard input it reads.

The command: several arguments are one argv, quoted for the shell
(:func:`shlex.join`); a single argument is a shell line, as with
``docker run IMAGE sh -c LINE``. Either way it runs in a subshell of the
sandbox's bash, so ``exit 3`` ends the command (not the session) and its status
is the command's.

Standard input, as with ``docker run``: closed unless ``-i``. Closed, the
command reads ``/dev/null`` (end of input at once). With ``-i`` the CLI relays
its own standard input while the command runs, streaming: each piece read is
written into a spool directory in the sandbox (``FileWriteAction``, which the
server runs while the command's ``CmdRunAction`` is still going) and a small
reader loop in the sandbox feeds the pieces, in order, to the command's
standard input; at end of input the CLI writes an end marker and the command
sees end of input. Why not type the input into the shell's terminal
(``CmdRunAction(is_input=True)`` then ``C-d``): the bash session strips each
line, an empty line means "wait for output", the terminal's line discipline
eats control characters and caps lines at 4095 bytes, and input actions queue
behind a running blocking command. The spool keeps every byte: UTF-8 text is
written as it is, a piece that is not UTF-8 is written in base64 and decoded
by the reader (``base64`` of coreutils or busybox).

A piece ``N`` is complete once its marker ``N.ready`` exists (written after
the piece itself); the end marker is written after the last marker. The
reader polls the spool every 20 ms while it is empty: the sandbox has no file
event tool it could rely on in every image.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import shlex
import stat
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

from events import Action, ErrorObservation, FileWriteAction, Observation
from openhands_rt.errors import SandboxError

__all__ = [
    "READ_SIZE",
    "SpoolWriter",
    "closed_stdin_line",
    "command_line",
    "relay_stdin",
    "relayed_stdin_line",
    "spool_directory",
]

#: Bytes read from the CLI's standard input at most at once (one spool piece).
READ_SIZE = 64 * 1024
_END = "end"


def command_line(argv: list[str]) -> str:
    """The shell line that runs ``argv``: one argument is a line, several an argv."""
    if len(argv) == 1:
        return argv[0]
    return shlex.join(argv)


def closed_stdin_line(line: str) -> str:
    """``line`` in a subshell whose standard input is ``/dev/null``."""
    # The newline ends a trailing comment or here-document of ``line``.
    return f"(\n{line}\n) </dev/null"


def spool_directory() -> str:
    """A new spool directory path in the sandbox (made by the first write)."""
    return f"/tmp/.openhands-rt-stdin-{uuid.uuid4().hex}"


def relayed_stdin_line(line: str, spool: str) -> str:
    """``line`` in a subshell reading the pieces written into ``spool``."""
    d = shlex.quote(spool)
    reader = (
        f"__oh_in={d}; __oh_i=0; "
        "while :; do "
        'if [ -e "$__oh_in/$__oh_i.ready" ]; then '
        'if [ -e "$__oh_in/$__oh_i.b64" ]; then base64 -d "$__oh_in/$__oh_i.b64"; '
        'else cat "$__oh_in/$__oh_i"; fi || break; '
        'rm -f "$__oh_in/$__oh_i" "$__oh_in/$__oh_i.b64" "$__oh_in/$__oh_i.ready"; '
        "__oh_i=$((__oh_i+1)); "
        f'elif [ -e "$__oh_in/{_END}" ]; then break; '
        "else sleep 0.02; fi; "
        "done; "
        'rm -rf "$__oh_in"'
    )
    return f"(\n{line}\n) < <({reader})"


@dataclass
class SpoolWriter:
    """Pure: the bytes read become the file writes of the spool (see the module docstring).

    ``feed`` returns the writes for what can be written now (a UTF-8 sequence
    cut at the end of a read waits for its next bytes); ``finish`` the writes
    of what is left and the end marker.
    """

    spool: str
    _index: int = 0
    _pending: bytes = field(default=b"", repr=False)

    def feed(self, data: bytes) -> list[FileWriteAction]:
        data = self._pending + data
        self._pending = b""
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            if exc.reason == "unexpected end of data" and len(data) - exc.start < 4:
                # A character cut by the read: written with the next piece.
                self._pending = data[exc.start :]
                return self._text_piece(data[: exc.start])
            return self._piece(f"{self._index}.b64", base64.b64encode(data).decode("ascii"))
        return self._piece(str(self._index), text)

    def _text_piece(self, data: bytes) -> list[FileWriteAction]:
        if not data:
            return []
        return self._piece(str(self._index), data.decode("utf-8"))

    def finish(self) -> list[FileWriteAction]:
        pending, self._pending = self._pending, b""
        writes: list[FileWriteAction] = []
        if pending:
            writes += self._piece(f"{self._index}.b64", base64.b64encode(pending).decode("ascii"))
        writes.append(FileWriteAction(f"{self.spool}/{_END}", ""))
        return writes

    def _piece(self, name: str, content: str) -> list[FileWriteAction]:
        index = self._index
        self._index += 1
        return [
            FileWriteAction(f"{self.spool}/{name}", content),
            FileWriteAction(f"{self.spool}/{index}.ready", ""),
        ]


async def relay_stdin(
    run: Callable[[Action], Awaitable[Observation]],
    fd: int,
    spool: str,
) -> None:
    """Write what is read from ``fd`` into ``spool`` until end of input, then the end marker.

    ``run`` is the runtime's ``run`` (awaited for each write, in order).
    """
    writer = SpoolWriter(spool)
    async for data in _read_chunks(fd):
        for action in writer.feed(data):
            await _write(run, action)
    for action in writer.finish():
        await _write(run, action)


async def _write(run: Callable[[Action], Awaitable[Observation]], action: Action) -> None:
    obs = await run(action)
    if isinstance(obs, ErrorObservation):
        raise SandboxError(f"could not pass standard input to the command: {obs.content}")


async def _read_chunks(fd: int) -> AsyncIterator[bytes]:
    """Pieces of ``fd`` as they come; a regular file is read in a worker thread."""
    if stat.S_ISREG(os.fstat(fd).st_mode):
        while data := await asyncio.to_thread(os.read, fd, READ_SIZE):
            yield data
        return
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue()

    def readable() -> None:
        try:
            data = os.read(fd, READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            loop.remove_reader(fd)
        queue.put_nowait(data)

    # A pipe, a terminal or a socket: readable() runs only when a read will not block.
    loop.add_reader(fd, readable)
    try:
        while data := await queue.get():
            yield data
    finally:
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(fd)
