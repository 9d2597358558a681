"""The pure parts of ``openhands-rt run``'s command and standard input relay."""

from __future__ import annotations

import base64
import shlex

from hypothesis import given
from hypothesis import strategies as st

from openhands_rt.stdin_relay import SpoolWriter, command_line


def test_one_argument_is_a_line_several_are_an_argv() -> None:
    assert command_line(["make && make test"]) == "make && make test"
    assert command_line(["printf", "%s|", "a b", "c"]) == "printf '%s|' 'a b' c"
    assert shlex.split(command_line(["echo", "it's", ""])) == ["echo", "it's", ""]


def replay(writes: list[tuple[str, str]], spool: str) -> bytes:
    """What the sandbox's reader passes on, given the writes in order."""
    files = dict(writes)
    assert writes[-1] == (f"{spool}/end", "")
    out = b""
    index = 0
    while f"{spool}/{index}.ready" in files:
        # A piece's marker is written after the piece.
        names = [name for name, _ in writes]
        marker = names.index(f"{spool}/{index}.ready")
        if f"{spool}/{index}.b64" in files:
            assert names.index(f"{spool}/{index}.b64") < marker
            out += base64.b64decode(files[f"{spool}/{index}.b64"])
        else:
            assert names.index(f"{spool}/{index}") < marker
            out += files[f"{spool}/{index}"].encode("utf-8")
        index += 1
    assert len(files) == 2 * index + 1
    return out


@given(st.lists(st.binary(max_size=40) | st.text(max_size=20).map(str.encode), max_size=8))
def test_any_reads_pass_on_the_same_bytes(reads: list[bytes]) -> None:
    spool = "/tmp/spool"
    writer = SpoolWriter(spool)
    writes = [(w.path, w.content) for data in reads for w in writer.feed(data)]
    writes += [(w.path, w.content) for w in writer.finish()]
    assert replay(writes, spool) == b"".join(reads)


def test_a_character_cut_by_a_read_stays_text() -> None:
    writer = SpoolWriter("/s")
    assert writer.feed(b"\xc3") == []  # the first byte of "é"
    second = writer.feed(b"\xa9b")
    assert [(w.path, w.content) for w in second] == [("/s/0", "éb"), ("/s/0.ready", "")]
    assert [w.path for w in writer.feed(b"\xff")] == ["/s/1.b64", "/s/1.ready"]
