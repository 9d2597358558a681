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


def _has_long_line(text: str, limit: int) -> bool:
    """Whether a line of ``text`` has ``limit`` characters or more (its newline not counted)."""
    if len(text) < limit:
        return False
    # Such a line covers a whole aligned stretch of limit // 2 characters with no newline:
    # a few finds rule it out (a batch of PTY reads is ~64 KiB, ``limit`` 60,000).
    step = max(1, limit // 2)
    if all(
        text.find("\n", start, start + step) >= 0 for start in range(0, len(text) - step + 1, step)
    ):
        return False
    return max(map(len, text.split("\n"))) >= limit


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

    Lines are kept in blocks, as they were appended (a PTY read holds ~50 lines
    of typical output), so that appending costs a few calls per block, not per
    line: whole blocks are dropped as soon as the blocks after them are enough,
    and the lines to drop from the first block are found only when they are
    read (:meth:`_settle`). The result is the same as dropping line by line:
    the lines kept are always the longest run of last lines within both limits.
    """

    __slots__ = (
        "_block_lines",
        "_blocks",
        "_chars",
        "_lines",
        "_lines_dropped",
        "_max_kept_chars",
        "_max_lines",
        "_open",
    )

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
        # Blocks of complete lines (each ends with "\n"), oldest first, and their line counts.
        self._blocks: deque[str] = deque()
        self._block_lines: deque[int] = deque()
        # A settled line with no newline yet (longer than we keep): the last line.
        self._open = ""
        self._lines = 0  # lines in the blocks and the open line
        self._chars = 0  # characters in the blocks and the open line
        self._lines_dropped = 0

    def __bool__(self) -> bool:
        return bool(self._line or self._blocks or self._open)

    @property
    def lines_dropped(self) -> int:
        """Lines printed since the last :meth:`clear` that are no longer kept."""
        self._settle()
        return self._lines_dropped

    def _commit(self, text: str) -> None:
        limit = 2 * self._keep
        if self._open:
            # The open line goes on with the text's first line.
            newline = text.find("\n") + 1
            head, text = (text, "") if not newline else (text[:newline], text[newline:])
            line = truncate_middle(self._open + head, limit)
            self._lines -= 1
            self._chars -= len(self._open)
            self._open = ""
            if line.endswith("\n"):
                self._add_block(line, 1)
            else:
                self._set_open(line)
        if text:
            newline = text.rfind("\n") + 1
            complete, rest = text[:newline], text[newline:]
            if complete:
                if _has_long_line(complete, limit):
                    # A line too long to keep whole ("\n" included) is cut around the marker,
                    # whose newlines are not line ends: such a line is a block of its own.
                    for piece in complete.split("\n")[:-1]:
                        self._add_block(truncate_middle(piece + "\n", limit), 1)
                else:
                    self._add_block(complete, complete.count("\n"))
            if rest:
                self._set_open(truncate_middle(rest, limit))
        self._drop_blocks()

    def _set_open(self, line: str) -> None:
        self._open = line
        self._lines += 1
        self._chars += len(line)

    def _add_block(self, block: str, lines: int) -> None:
        self._blocks.append(block)
        self._block_lines.append(lines)
        self._lines += lines
        self._chars += len(block)

    def _drop_blocks(self) -> None:
        """Drop the first blocks while the lines after them already reach a limit."""
        blocks, block_lines = self._blocks, self._block_lines
        while blocks:
            rest_lines = self._lines - block_lines[0]
            rest_chars = self._chars - len(blocks[0])
            if rest_lines < self._max_lines and (
                rest_chars < self._max_kept_chars or not rest_lines
            ):
                return
            # The first block's last line and the rest are over a limit: none of it stays.
            self._lines = rest_lines
            self._chars = rest_chars
            self._lines_dropped += block_lines.popleft()
            blocks.popleft()

    def _settle(self) -> None:
        """Drop the first lines of the first block that are over a limit."""
        if not self._blocks:
            return
        first, first_lines = self._blocks[0], self._block_lines[0]
        # Fewer than first_lines (_drop_blocks), so the block is not a cut line of its own.
        over = max(0, self._lines - self._max_lines)
        if over:
            first = first.split("\n", over)[-1]
        # Past the characters' limit: one line at a time (lines then average 400+ characters).
        chars = self._chars - (len(self._blocks[0]) - len(first))
        while chars > self._max_kept_chars and self._lines - over > 1 and over < first_lines:
            cut = len(first) if first_lines - over == 1 else first.find("\n") + 1
            chars -= cut
            first = first[cut:]
            over += 1
        if over:
            self._lines -= over
            self._chars = chars
            self._lines_dropped += over
            if over < first_lines:
                self._blocks[0] = first
                self._block_lines[0] -= over
            else:
                self._blocks.popleft()
                self._block_lines.popleft()

    def _kept(self) -> tuple[str, int, int]:
        """(kept text right-stripped, lines in it, lines dropped in all)."""
        self._settle()
        open_line = render_overwrites(self._line)
        # The open line is a line of its own, unless the last kept line was settled without
        # its newline (a line longer than we keep): then it is that line's continuation.
        count = self._lines + (1 if open_line and not self._open else 0)
        skip = max(0, count - self._max_lines)
        blocks = list(self._blocks)
        if skip:
            # The unsettled open line pushes the first kept line out (skip is 1 then).
            blocks[0] = "" if self._block_lines[0] == 1 else blocks[0].split("\n", 1)[1]
        text = "".join(blocks) + self._open + open_line
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
        self._blocks.clear()
        self._block_lines.clear()
        self._open = ""
        self._lines = 0
        self._chars = 0
        self._lines_dropped = 0
