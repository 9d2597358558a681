"""Bounded command output: keep the head and the tail, mark what was cut.

An observation carries at most ``max_chars`` characters of output: the first
and the last ``max_chars // 2`` with OpenHands' marker in between (the whole
stream still went out as chunks). :class:`OutputBuffer` accumulates a running
command's output in bounded memory, however much the command prints, and
settles ``\\r``/``\\b`` overwrites line by line as the lines complete.

Pure: no I/O.
"""

from __future__ import annotations

from collections import deque
from typing import Final

from container_server.ansi import render_overwrites

__all__ = ["TRUNCATION_MARKER", "OutputBuffer", "truncate_middle"]

# OpenHands' text (CmdOutputObservation / truncate_content), so agents read it the same way.
TRUNCATION_MARKER: Final = "\n[... Observation truncated due to length ...]\n"


def truncate_middle(text: str, max_chars: int) -> str:
    """``text`` if it fits, else its first and last ``max_chars // 2`` around the marker."""
    if max_chars < 0 or len(text) <= max_chars:
        return text
    half = max_chars // 2
    return text[:half] + TRUNCATION_MARKER + text[len(text) - half :]


class OutputBuffer:
    """Output of one command since the last observation, bounded to ~``4 * keep_chars``.

    Up to ``2 * keep_chars`` characters are kept exactly; past that the first
    ``keep_chars`` (head) and the last ``keep_chars`` or more (tail) are kept
    and the middle is dropped, which :meth:`render` marks.
    """

    __slots__ = ("_dropped", "_head", "_head_len", "_keep", "_line", "_tail", "_tail_len")

    def __init__(self, keep_chars: int) -> None:
        self._keep = max(1, keep_chars)
        self._head: list[str] = []
        self._head_len = 0
        self._tail: deque[str] = deque()
        self._tail_len = 0
        self._dropped = 0
        # The unfinished last line: "\r" in it can still overwrite its start.
        self._line = ""

    def __bool__(self) -> bool:
        return bool(self._line or self._head_len or self._tail_len)

    def append(self, text: str) -> None:
        if not text:
            return
        if self._line:
            text = self._line + text
            self._line = ""
        newline = text.rfind("\n")
        if newline < 0:
            if len(text) <= self._keep:
                self._line = text
                return
            cr = text.rfind("\r")
            if cr >= 0:
                # A long line that a carriage return rewinds (a progress bar): keep it open,
                # its overwritten past collapsed, so later text still overwrites its start.
                settled, rest = render_overwrites(text[:cr]), text[cr + 1 :]
                if len(settled) <= self._keep and len(rest) <= self._keep:
                    self._line = settled + "\r" + rest
                    return
            # A line longer than we keep anyway: settle it now.
            complete = text
        else:
            complete, self._line = text[: newline + 1], text[newline + 1 :]
        if "\r" in complete or "\b" in complete:
            complete = render_overwrites(complete)
        self._commit(complete)

    def _commit(self, text: str) -> None:
        room = self._keep - self._head_len
        if room > 0:
            part = text[:room]
            self._head.append(part)
            self._head_len += len(part)
            text = text[room:]
            if not text:
                return
        self._tail.append(text)
        self._tail_len += len(text)
        # Drop whole pieces from the tail's front while the rest still covers keep_chars.
        while self._tail_len - len(self._tail[0]) >= self._keep:
            dropped = self._tail.popleft()
            self._tail_len -= len(dropped)
            self._dropped += len(dropped)

    def render(self, max_chars: int) -> str:
        """The output settled, right-stripped and truncated to ``max_chars`` (plus marker)."""
        head = "".join(self._head)
        tail = "".join(self._tail) + render_overwrites(self._line)
        if not self._dropped:
            return truncate_middle((head + tail).rstrip(), max_chars)
        half = max(0, max_chars) // 2
        tail = tail.rstrip()
        return head[:half] + TRUNCATION_MARKER + tail[len(tail) - half :]

    def clear(self) -> None:
        self._head.clear()
        self._head_len = 0
        self._tail.clear()
        self._tail_len = 0
        self._dropped = 0
        self._line = ""
