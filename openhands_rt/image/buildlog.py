"""Reading the engine's build output (JSON lines: stream / status / error / aux) (pure)."""

from __future__ import annotations

import collections
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["BuildOutput", "summarize_error"]

# The engine colours a step's stderr; SGR and other CSI sequences are noise in a log.
_CSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_FAILED_COMMAND = re.compile(
    r"^The command '(?P<command>.*)' returned a non-zero code: (?P<code>\d+)$", re.S
)


def summarize_error(message: str, *, max_command_chars: int = 100) -> str:
    """The engine's error, with a failed step's (often long) command shortened."""
    match = _FAILED_COMMAND.match(message)
    if match is None:
        return message
    command = " ".join(match.group("command").split())
    if len(command) > max_command_chars:
        command = command[: max_command_chars - 1] + "…"
    return f"a build step returned a non-zero code: {match.group('code')} ({command})"


class BuildOutput:
    """Turns build output items into text lines and remembers what matters.

    ``feed`` takes one decoded JSON item and returns the complete lines it
    finished (a ``stream`` item may carry half a line, or several). The last
    ``tail_lines`` lines, the first error and the built image id (``aux.ID``) are
    kept.
    """

    def __init__(self, *, tail_lines: int = 30) -> None:
        self.tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self.error: str | None = None
        self.image_id: str | None = None
        self._partial = ""

    def feed(self, item: Mapping[str, Any]) -> list[str]:
        lines: list[str] = []
        if "stream" in item:
            text = self._partial + str(item["stream"])
            *complete, self._partial = text.replace("\r\n", "\n").split("\n")
            lines += complete
        if "status" in item:
            status = str(item["status"])
            progress = item.get("progress")
            lines.append(f"{status} {progress}" if progress else status)
        if "error" in item or "errorDetail" in item:
            detail = item.get("errorDetail")
            message = detail.get("message") if isinstance(detail, Mapping) else None
            message = str(message or item.get("error") or "unknown build error")
            if self.error is None:
                self.error = message
            lines.append(f"ERROR: {message}")
        aux = item.get("aux")
        if isinstance(aux, Mapping) and isinstance(aux.get("ID"), str):
            self.image_id = aux["ID"]
        return self._keep(lines)

    def finish(self) -> list[str]:
        """The last, unterminated line, if any (call once at the end)."""
        partial, self._partial = self._partial, ""
        return self._keep([partial])

    def _keep(self, lines: list[str]) -> list[str]:
        kept = []
        for line in lines:
            # Progress bars redraw with \r: the last drawing is the one that counts.
            text = _CSI.sub("", line).rsplit("\r", 1)[-1].rstrip()
            if text:
                self.tail.append(text)
                kept.append(text)
        return kept
