"""From an IPython cell's iopub messages to the observation an agent reads.

:class:`CellOutput` takes the messages of one ``execute_request`` in the order
the kernel published them and keeps what the cell produced: ``stream`` text
(stdout and stderr as they arrived), the ``text/plain`` form of
``execute_result`` / ``display_data``, and tracebacks of ``error`` messages.
Escape sequences are removed (IPython colours tracebacks), ``\\r`` overwrites
are settled the way a terminal shows them, and the text is kept in bounded
memory (head and tail) however much a cell prints. Images (``image/png``,
``image/jpeg``) become ``data:`` URLs; their ``text/plain`` form (e.g.
``<IPython.core.display.Image object>``) stays in the text as the marker that
an image was shown there.

:func:`compose_content` assembles the observation text with OpenHands' texts:
``[Code executed successfully with no output]`` when a cell printed nothing,
``[Execution timed out (N seconds).]``, and the trailing
``[Jupyter current working directory: …]`` /
``[Jupyter Python interpreter: …]`` lines.

Pure: no I/O, no clock, no kernel. Message contents are JSON objects; anything
malformed is skipped rather than trusted.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Final

from container_server.truncate import OutputBuffer
from events.ansi import TerminalTextCleaner, strip_ansi

__all__ = [
    "IMAGE_MIME_TYPES",
    "NO_OUTPUT_TEXT",
    "CellOutput",
    "compose_content",
    "kernel_connection_failed_note",
    "kernel_died_note",
    "kernel_restart_failed_note",
    "timeout_note",
    "unresponsive_kernel_note",
]

# OpenHands' texts (execute_server.py / the runtime's run_ipython), so agents read them the same.
NO_OUTPUT_TEXT: Final = "[Code executed successfully with no output]"
_CWD_LINE: Final = "[Jupyter current working directory: {cwd}]"
_PYTHON_LINE: Final = "[Jupyter Python interpreter: {python}]"

# Order matters: the first type a message carries is the one kept.
IMAGE_MIME_TYPES: Final = ("image/png", "image/jpeg")

_STATE_LOST: Final = "variables, imports and definitions from earlier cells are lost"


def _seconds(value: float) -> str:
    return f"{value:g}"


def timeout_note(timeout: float) -> str:
    """OpenHands' timeout line; the kernel was interrupted and keeps its state."""
    return f"[Execution timed out ({_seconds(timeout)} seconds).]"


def _exit_description(returncode: int | None) -> str:
    if returncode is None:
        return "stopped answering"
    if returncode < 0:
        return f"was killed by signal {-returncode}"
    return f"exited with code {returncode}"


def kernel_died_note(returncode: int | None, *, cell_started: bool | None) -> str:
    """Says that the kernel died and was restarted.

    ``cell_started``: True if it died running this cell, False if it was found dead
    before this cell was sent, None if unknown.
    """
    when = {
        True: " while running this cell",
        False: " between cells",
        None: " (this cell may not have run, or not to its end)",
    }[cell_started]
    return (
        f"[The IPython kernel {_exit_description(returncode)}{when} and was restarted: "
        f"{_STATE_LOST}.]"
    )


def unresponsive_kernel_note(grace: float) -> str:
    """The interrupt did not stop the cell: the kernel was killed and restarted."""
    return (
        f"[The kernel did not stop within {_seconds(grace)} seconds of the interrupt, so it was "
        f"killed and restarted: {_STATE_LOST}.]"
    )


def kernel_connection_failed_note(reason: str) -> str:
    """The server lost its connection to the kernel (a channel reader died): it was replaced."""
    return (
        f"[The connection to the IPython kernel failed ({reason}), so it was killed and "
        f"restarted: {_STATE_LOST}.]"
    )


def kernel_restart_failed_note(reason: str) -> str:
    return f"[The IPython kernel could not be restarted: {reason}. The next cell will try again.]"


def _text(value: object) -> str:
    """A JSON text field: a string, or (as some kernels send) a list of lines."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "".join(item for item in value if isinstance(item, str))
    return ""


class CellOutput:
    """Accumulates one cell's output messages; :meth:`feed` returns the text each adds."""

    __slots__ = ("_at_line_start", "_buffer", "_cleaner", "_max_chars", "errored", "image_urls")

    def __init__(self, *, max_chars: int = 30_000) -> None:
        self._max_chars = max_chars
        self._buffer = OutputBuffer(max(1, max_chars // 2))
        self._cleaner = TerminalTextCleaner()
        self._at_line_start = True
        self.image_urls: list[str] = []
        self.errored = False

    def feed(self, msg_type: str, content: Mapping[str, object]) -> str:
        """Take one iopub message of the cell; return the text it added (may be empty)."""
        if msg_type == "stream":
            return self._add(self._cleaner.feed(_text(content.get("text"))))
        if msg_type in ("execute_result", "display_data"):
            data = content.get("data")
            if not isinstance(data, Mapping):
                return ""
            return self._add_rich(self._display_text(data))
        if msg_type == "error":
            self.errored = True
            return self._add_rich(self._traceback_text(content))
        # status, execute_input, clear_output, update_display_data, comm_*: not output text.
        return ""

    def _display_text(self, data: Mapping[str, object]) -> str:
        image_type = next((t for t in IMAGE_MIME_TYPES if t in data), None)
        if image_type is not None:
            encoded = _text(data[image_type])
            if encoded:
                # Base64 may arrive wrapped in lines; a data URL must not contain whitespace.
                self.image_urls.append(f"data:{image_type};base64,{''.join(encoded.split())}")
        plain = strip_ansi(_text(data.get("text/plain")))
        if not plain and image_type is not None:
            return f"<{image_type} image>"
        return plain

    @staticmethod
    def _traceback_text(content: Mapping[str, object]) -> str:
        lines = content.get("traceback")
        if isinstance(lines, list) and lines:
            text = "\n".join(line for line in lines if isinstance(line, str))
        else:
            text = f"{_text(content.get('ename'))}: {_text(content.get('evalue'))}"
        return strip_ansi(text)

    def _add_rich(self, text: str) -> str:
        """A result, display or traceback: on lines of its own, like a notebook shows it."""
        if not text:
            return ""
        pending = self._cleaner.flush()
        prefix = pending if not pending or pending.endswith("\n") else pending + "\n"
        if not prefix and not self._at_line_start:
            prefix = "\n"
        return self._add(prefix + text.rstrip("\n") + "\n")

    def _add(self, text: str) -> str:
        if text:
            self._buffer.append(text)
            self._at_line_start = text.endswith("\n")
        return text

    def render(self) -> str:
        """The cell's text so far: right-stripped, truncated in the middle; '' if none."""
        rest = self._cleaner.flush()
        if rest:
            self._add(rest)
        return self._buffer.render(self._max_chars)


def compose_content(
    body: str,
    *,
    cwd: str,
    python: str,
    completed: bool,
    notes_before: Iterable[str] = (),
    notes_after: Sequence[str] = (),
) -> str:
    """The observation text: notes, the cell's output, then the Jupyter trailer lines.

    ``completed`` is False when the cell did not run to its end (timeout, kernel
    death): then an empty body stays empty instead of claiming success.
    """
    parts = list(notes_before)
    if body:
        parts.append(body)
    elif completed:
        parts.append(NO_OUTPUT_TEXT)
    parts.extend(notes_after)
    parts.append(_CWD_LINE.format(cwd=cwd))
    parts.append(_PYTHON_LINE.format(python=python))
    return "\n".join(parts)
