"""LastLinesBuffer keeps blocks of lines; it must keep exactly what dropping line by line keeps.

The reference below is the plain model: settle the text, keep every line in a
list, drop the first line while more than ``max_lines`` are kept or (with more
than one line) more than ``max_kept_chars`` characters.
"""

from __future__ import annotations

from collections import deque

from hypothesis import example, given
from hypothesis import strategies as st

from container_server.truncate import LastLinesBuffer, truncate_middle, truncated_lines_prefix
from events.ansi import render_overwrites


class LineByLine:
    """The reference: one list entry per line, each line cut to ``2 * keep`` characters."""

    def __init__(self, keep: int, max_lines: int, max_kept_chars: int) -> None:
        self.keep, self.max_lines, self.max_kept_chars = keep, max_lines, max_kept_chars
        self.clear()

    def clear(self) -> None:
        self.lines: deque[str] = deque()
        self.dropped = 0
        self.open = ""  # the unfinished line

    def append(self, text: str) -> None:
        if not text:
            return
        text = self.open + text
        newline = text.rfind("\n")
        if newline < 0 and len(text) <= self.keep:
            self.open = text
            return
        if newline < 0:
            cr = text.rfind("\r")
            if cr >= 0:
                settled, rest = render_overwrites(text[:cr]), text[cr + 1 :]
                if len(settled) <= self.keep and len(rest) <= self.keep:
                    self.open = settled + "\r" + rest
                    return
            complete, self.open = text, ""
        else:
            complete, self.open = text[: newline + 1], text[newline + 1 :]
        pieces = render_overwrites(complete).split("\n")
        for i, piece in enumerate(pieces):
            line = piece if i == len(pieces) - 1 else piece + "\n"
            if not line:
                continue
            if self.lines and not self.lines[-1].endswith("\n"):
                line = self.lines.pop() + line
            self.lines.append(truncate_middle(line, 2 * self.keep))
        while len(self.lines) > self.max_lines or (
            sum(map(len, self.lines)) > self.max_kept_chars and len(self.lines) > 1
        ):
            self.lines.popleft()
            self.dropped += 1

    def take(self, max_chars: int) -> tuple[str, str]:
        open_line = render_overwrites(self.open)
        lines = list(self.lines)
        if open_line:
            if lines and not lines[-1].endswith("\n"):
                lines[-1] += open_line
            else:
                lines.append(open_line)
        skip = max(0, len(lines) - self.max_lines)
        text = "".join(lines[skip:]).rstrip()
        note = truncated_lines_prefix(len(lines) - skip) if self.dropped + skip else ""
        self.clear()
        return truncate_middle(text, max_chars), note


@example(
    pieces=[("ab\n" * 5, False), ("x" * 50, False), ("\n", True)],
    keep=4,
    max_lines=3,
    max_kept_chars=20,
)
@given(
    st.lists(
        st.tuples(
            st.one_of(
                st.text(alphabet="abc\n\r\b", max_size=80),
                # Runs: lines around the 2 * keep characters a line is cut at.
                st.lists(st.integers(0, 70), max_size=6).map(
                    lambda runs: "".join("x" * run + "\n" for run in runs)
                ),
            ),
            st.booleans(),
        ),
        max_size=30,
    ),
    st.integers(1, 30),
    st.integers(1, 40),
    st.integers(1, 200),
)
def test_blocks_keep_what_dropping_line_by_line_keeps(
    pieces: list[tuple[str, bool]], keep: int, max_lines: int, max_kept_chars: int
) -> None:
    buffer = LastLinesBuffer(keep, max_lines=max_lines, max_kept_chars=max_kept_chars)
    reference = LineByLine(keep, max_lines, max_kept_chars)
    for piece, take_now in pieces:
        buffer.append(piece)
        reference.append(piece)
        if take_now:
            assert buffer.take(2 * keep) == reference.take(2 * keep)
    assert buffer.lines_dropped == reference.dropped
    assert buffer.take(10_000) == reference.take(10_000)


def test_a_flood_of_lines_keeps_few_blocks() -> None:
    buffer = LastLinesBuffer(30_000, max_lines=100)
    for start in range(0, 100_000, 50):
        buffer.append("".join(f"line {i}\n" for i in range(start, start + 50)))
    assert buffer.lines_dropped == 100_000 - 100
    content, note = buffer.take(30_000)
    assert note == truncated_lines_prefix(100)
    assert content == "".join(f"line {i}\n" for i in range(99_900, 100_000)).rstrip()
