"""Bounded command output: keep the head and the tail, mark what was cut.

An observation carries at most ``max_chars`` characters of output: the first
and the last ``max_chars // 2`` with OpenHands' marker in between (the whole
stream still went out as chunks). :class:`OutputBuffer` accumulates a running
command's output in bounded memory, however much the command prints, and
settles ``\\r``/``\\b`` overwrites line by line as the lines complete.

:class:`LastLinesBuffer` is what a shell command's observation is made of, as
in OpenHands: only the command's **last** :data:`MAX_OUTPUT_LINES` lines are
kept (the end of a long build log is what an agent needs), the observation
says so (:func:`truncated_lines_prefix`), and the head/tail cut then applies
to those lines.

Pure: no I/O.
"""

from __future__ import annotations

import itertools
from collections import deque
from typing import Final

from events.ansi import render_overwrites

__all__ = [
    "MAX_OUTPUT_LINES",
    "TRUNCATION_MARKER",
    "LastLinesBuffer",
    "OutputBuffer",
    "truncate_middle",
    "truncated_lines_prefix",
]

# OpenHands' text (CmdOutputObservation / truncate_content), so agents read it the same way.
TRUNCATION_MARKER: Final = "\n[... Observation truncated due to length ...]\n"
#: OpenHands' shell keeps this many lines of a command's output (its terminal's history).
MAX_OUTPUT_LINES: Final = 10_000
# Memory bound of LastLinesBuffer, in characters, whatever the lines hold.
_MAX_KEPT_CHARS: Final = 4 * 1024 * 1024


def truncated_lines_prefix(lines: int) -> str:
    """OpenHands' note (``metadata.prefix``) for an output cut to its last ``lines`` lines."""
    return (
        "[Previous command outputs are truncated. "
        f"Showing the last {lines} lines of the output below.]\n"
    )


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


class LastLinesBuffer(OutputBuffer):
    """A shell command's output since the last observation: its last ``max_lines`` lines.

    Lines are settled as in :class:`OutputBuffer`; older lines are dropped past
    ``max_lines`` (or past ``max_kept_chars`` characters in all, to bound memory)
    and counted in :attr:`lines_dropped`. A line longer than ``2 * keep_chars``
    keeps its head and tail around the marker (the observation could not show
    more of it anyway).
    """

    __slots__ = ("_chars", "_lines", "_lines_dropped", "_max_kept_chars", "_max_lines")

    def __init__(
        self,
        keep_chars: int,
        *,
        max_lines: int = MAX_OUTPUT_LINES,
        max_kept_chars: int = _MAX_KEPT_CHARS,
    ) -> None:
        super().__init__(keep_chars)
        self._max_lines = max(1, max_lines)
        self._max_kept_chars = max(1, max_kept_chars)
        self._lines: deque[str] = deque()
        self._chars = 0
        self._lines_dropped = 0

    def __bool__(self) -> bool:
        return bool(self._line or self._lines)

    @property
    def lines_dropped(self) -> int:
        """Lines printed since the last :meth:`clear` that are no longer kept."""
        return self._lines_dropped

    def _commit(self, text: str) -> None:
        pieces = text.split("\n")
        # Every piece but the last ended with a newline; the last may be a long open line.
        for i, piece in enumerate(pieces):
            line = piece if i == len(pieces) - 1 else piece + "\n"
            if not line:
                continue
            if self._lines and not self._lines[-1].endswith("\n"):
                previous = self._lines.pop()
                self._chars -= len(previous)
                line = previous + line
            line = truncate_middle(line, 2 * self._keep)
            self._lines.append(line)
            self._chars += len(line)
        while len(self._lines) > self._max_lines or (
            self._chars > self._max_kept_chars and len(self._lines) > 1
        ):
            self._chars -= len(self._lines.popleft())
            self._lines_dropped += 1

    def _kept(self) -> tuple[str, int, int]:
        """(kept text right-stripped, lines in it, lines dropped in all)."""
        open_line = render_overwrites(self._line)
        # The open line is a line of its own, unless the last kept line was settled without
        # its newline (a line longer than we keep): then it is that line's continuation.
        continues = bool(self._lines) and not self._lines[-1].endswith("\n")
        count = len(self._lines) + (1 if open_line and not continues else 0)
        skip = max(0, count - self._max_lines)
        text = "".join(itertools.islice(self._lines, skip, None)) + open_line
        return text.rstrip(), count - skip, self._lines_dropped + skip

    def render(self, max_chars: int) -> str:
        return truncate_middle(self._kept()[0], max_chars)

    def take(self, max_chars: int) -> tuple[str, str]:
        """``(content, prefix note)`` of what was printed since the last take; then cleared.

        The note is OpenHands' "Previous command outputs are truncated" text, with
        the number of lines kept, when lines were dropped; else empty.
        """
        text, shown, dropped = self._kept()
        note = truncated_lines_prefix(shown) if dropped else ""
        content = truncate_middle(text, max_chars)
        self.clear()
        return content, note

    def clear(self) -> None:
        super().clear()
        self._lines.clear()
        self._chars = 0
        self._lines_dropped = 0
