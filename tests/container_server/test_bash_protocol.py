"""The pure core of the bash session: prompt parsing, command encoding, text cleaning.

Synchronous tests, no event loop and no bash.
"""

from __future__ import annotations

import re

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from container_server.bash_protocol import (
    CONTINUATION_PREFIX,
    NO_RUNNING_COMMAND_INPUT,
    NO_RUNNING_COMMAND_LOGS,
    OutputText,
    ParserEvent,
    PromptInfo,
    PromptParser,
    PromptSeen,
    completed_suffix,
    encode_command,
    encode_input,
    format_seconds,
    hard_timeout_suffix,
    not_executed_suffix,
    setup_script,
    soft_timeout_suffix,
    special_key,
)
from container_server.truncate import (
    MAX_OUTPUT_LINES,
    TRUNCATION_MARKER,
    LastLinesBuffer,
    OutputBuffer,
    truncate_middle,
    truncated_lines_prefix,
)
from events.ansi import TerminalTextCleaner, render_overwrites, strip_ansi

NONCE = "0123456789abcdef0123456789abcdef"


def prompt(
    *,
    exit_code: int = 0,
    pid: int = -1,
    seq: int = 1,
    user: str = "openhands",
    host: str = "sandbox",
    python: str = "/usr/bin/python",
    cwd: str = "/workspace",
    nonce: str = NONCE,
) -> bytes:
    """The bytes bash prints for our PS1 (see setup_script)."""
    fields = [str(exit_code), str(pid), str(seq), user, host, python, cwd]
    return (
        b"\x1eOHRT"
        + nonce.encode()
        + b"\x1f"
        + "\x1f".join(fields).encode()
        + b"\x1e"
        + nonce.encode()
        + b"\x1e"
    )


def parse(chunks: list[bytes]) -> tuple[str, list[PromptInfo]]:
    parser = PromptParser(NONCE)
    events: list[ParserEvent] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    events.extend(parser.flush())
    return _summarise(events)


def _summarise(events: list[ParserEvent]) -> tuple[str, list[PromptInfo]]:
    # Texts between two prompts are joined; a prompt is marked in the text as "<P>".
    text: list[str] = []
    prompts: list[PromptInfo] = []
    for event in events:
        if isinstance(event, OutputText):
            text.append(event.text)
        else:
            assert isinstance(event, PromptSeen)
            prompts.append(event.info)
            text.append("<P>")
    return "".join(text), prompts


# --------------------------------------------------------------------------- the prompt


def test_output_then_prompt() -> None:
    text, prompts = parse([b"hi\n" + prompt(exit_code=3, pid=42, seq=7)])
    assert text == "hi\n<P>"
    assert prompts == [
        PromptInfo(
            exit_code=3,
            pid=42,
            seq=7,
            username="openhands",
            hostname="sandbox",
            working_dir="/workspace",
            py_interpreter_path="/usr/bin/python",
        )
    ]


def test_output_without_trailing_newline_is_kept_whole() -> None:
    text, prompts = parse([b"abc" + prompt()])
    assert text == "abc<P>"
    assert len(prompts) == 1


def test_prompt_fields_with_odd_values() -> None:
    cwd = "/tmp/dir with spaces/\u00e9t\u00e9/a\x1fb"
    text, prompts = parse([prompt(python="", cwd=cwd, pid=-1, exit_code=130)])
    assert text == "<P>"
    (info,) = prompts
    assert info.working_dir == cwd  # the cwd is last: even a separator inside parses
    assert info.py_interpreter_path is None
    assert info.exit_code == 130
    assert info.pid == -1


def test_marker_with_another_nonce_is_output() -> None:
    forged = prompt(nonce="f" * 32)
    text, prompts = parse([b"x" + forged + b"y"])
    assert prompts == []
    assert text == "x" + strip_ansi(forged.decode()) + "y"


def test_ps1_text_as_printed_by_set_is_not_a_prompt() -> None:
    # `set` prints the PS1 assignment with the nonce variable unexpanded.
    script = setup_script(NONCE)
    ps1_line = next(line for line in script.splitlines() if line.startswith("__oh_ps1="))
    text, prompts = parse([ps1_line.encode() + b"\n"])
    assert prompts == []
    assert text == ps1_line + "\n"


def test_unterminated_prompt_is_output_after_the_limit() -> None:
    begin = b"\x1eOHRT" + NONCE.encode() + b"\x1f"
    parser = PromptParser(NONCE)
    events = parser.feed(begin + b"0\x1f" + b"a" * 70_000)
    text, prompts = _summarise(events)
    assert prompts == []
    assert text.endswith("a" * 1000)
    # The parser is back to normal afterwards.
    text, prompts = _summarise(parser.feed(b"z" + prompt()))
    assert text == "z<P>"


def test_flush_releases_a_partial_marker() -> None:
    parser = PromptParser(NONCE)
    assert _summarise(parser.feed(b"out\x1eOH")) == ("out", [])
    assert _summarise(parser.flush()) == ("OH", [])  # RS is a control byte: removed


def test_two_prompts_in_one_read() -> None:
    text, prompts = parse([b"a\n" + prompt(seq=1) + b"late\n" + prompt(seq=2)])
    assert text == "a\n<P>late\n<P>"
    assert [p.seq for p in prompts] == [1, 2]


def test_invalid_utf8_is_replaced() -> None:
    text, _ = parse([b"\xff\xfe ok\n" + prompt()])
    assert text == "\ufffd\ufffd ok\n<P>"


def test_utf8_split_between_reads() -> None:
    data = "h\u00e9llo \u2603\n".encode()
    text, _ = parse([data[:2], data[2:8], data[8:] + prompt()])
    assert text == "h\u00e9llo \u2603\n<P>"


def test_utf8_cut_by_the_prompt_is_replaced_not_carried() -> None:
    text, _ = parse([b"x\xe2\x98" + prompt() + b"\x83"])
    assert text == "x\ufffd<P>\ufffd"


_output_bytes = st.lists(
    st.one_of(
        st.binary(max_size=20),
        st.sampled_from(
            [
                b"\r\n",
                b"\r",
                b"\n",
                b"\x1b[31m",
                b"\x1b[0m",
                b"\x1b]0;title\x07",
                b"\x1b]8;;http://x\x1b\\",
                b"\x1b(B",
                b"\x1e",
                b"\x1eOH",
                b"\x1eOHRT" + NONCE[:5].encode(),
                "\u00e9\u2603".encode(),
                b"\xe2\x98",
                b"\xff",
            ]
        ),
    ),
    max_size=30,
).map(b"".join)


@st.composite
def streams(draw: st.DrawFn) -> tuple[bytes, list[int]]:
    parts = draw(st.lists(_output_bytes, min_size=1, max_size=4))
    stream = b""
    for index, part in enumerate(parts):
        stream += part
        if index < len(parts) - 1 or draw(st.booleans()):
            stream += prompt(seq=index, exit_code=index, cwd=f"/d{index}")
    cuts = sorted(draw(st.lists(st.integers(0, len(stream)), max_size=12)))
    return stream, cuts


@given(streams())
def test_any_split_of_the_stream_parses_the_same(case: tuple[bytes, list[int]]) -> None:
    stream, cuts = case
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    assert parse(chunks) == parse([stream])


@given(streams())
def test_prompts_are_found_whatever_the_output(case: tuple[bytes, list[int]]) -> None:
    stream, _ = case
    _, prompts = parse([stream])
    assert [p.working_dir for p in prompts] == [f"/d{i}" for i in range(len(prompts))]
    assert len(prompts) == stream.count(b"\x1e" + NONCE.encode() + b"\x1e")


@given(st.binary(max_size=200))
def test_output_is_cleaned_like_strip_ansi(data: bytes) -> None:
    text, prompts = parse([data])
    if prompts:
        return  # random bytes that hold our marker: not the point here
    assert text == strip_ansi(data.decode("utf-8", "replace"))


# --------------------------------------------------------------------------- encoding


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", "'": "'"}
_PIECE_RE = re.compile(r"\$'((?:[^'\\]|\\.)*)'", re.DOTALL)


def _unescape(match: re.Match[str]) -> str:
    escape = match.group(1)
    return chr(int(escape[1:], 16)) if escape.startswith("x") else _ESCAPES[escape]


def _unquote_word(line: str) -> str:
    """Decode what encode_command produced, as bash does ($'...' pieces and \\<LF>)."""
    match = re.fullmatch(r"\\builtin eval -- (.*)\n", line, re.DOTALL)
    assert match is not None, line
    word = match.group(1).replace("\\\n", "")
    pieces = _PIECE_RE.findall(word)
    assert "".join(f"$'{p}'" for p in pieces) == word  # nothing outside the quotes
    return "".join(
        re.sub(r"\\(x[0-9a-f]{2}|.)", _unescape, piece, flags=re.DOTALL) for piece in pieces
    )


@given(st.text(max_size=3000))
def test_encoded_command_round_trips(command: str) -> None:
    encoded = encode_command(command)
    line = encoded.decode("utf-8")
    assert _unquote_word(line) == command.replace("\x00", "")


@given(st.text(max_size=5000))
def test_encoded_command_is_safe_for_the_tty(command: str) -> None:
    encoded = encode_command(command)
    lines = encoded.split(b"\n")
    assert lines[-1] == b""  # ends with exactly one Enter
    for line in lines[:-1]:
        assert len(line) < 4000  # the tty drops input past 4095 bytes per line
        # No byte the line discipline would act on (^C, ^D, ^U, ^W, ^V, DEL, CR...).
        assert not re.search(rb"[\x00-\x1f\x7f]", line)


def test_encoded_command_with_cwd() -> None:
    line = encode_command("ls", cwd="/tmp/it's").decode()
    assert line == (
        "__oh_back=$PWD; __oh_backold=$OLDPWD; \\builtin cd -- $'/tmp/it\\'s' && "
        "\\builtin eval -- $'ls'\n"
    )


def test_special_keys() -> None:
    assert special_key("C-c") == b"\x03"
    assert special_key(" C-d ") == b"\x04"
    assert special_key("C-z") == b"\x1a"
    assert special_key("C-Z") == b"\x1a"
    assert special_key("C-cc") is None
    assert special_key("echo C-c") is None
    assert special_key("") is None


def test_encode_input() -> None:
    assert encode_input("John") == b"John\n"
    assert encode_input("\u00e9") == "\u00e9\n".encode()


def test_setup_script_checks_the_nonce() -> None:
    with pytest.raises(ValueError, match="nonce"):
        setup_script("not hex; rm -rf /")
    script = setup_script(NONCE)
    assert NONCE in script
    ps1_assignment = next(line for line in script.splitlines() if line.startswith("__oh_ps1="))
    assert NONCE not in ps1_assignment


# --------------------------------------------------------------------------- texts

ADVICE = (
    "You may wait longer to see additional output by sending empty command '', send other "
    'commands to interact with the current process, send keys ("C-c", "C-z", "C-d") to '
    "interrupt/kill the previous command before sending your new command, or use the timeout "
    "parameter in execute_bash for future commands."
)


def test_texts_are_openhands_texts() -> None:
    assert completed_suffix(0) == "\n[The command completed with exit code 0.]"
    assert completed_suffix(130, "C-c") == (
        "\n[The command completed with exit code 130. CTRL+C was sent.]"
    )
    assert (
        soft_timeout_suffix(10.0) == f"\n[The command has no new output after 10 seconds. {ADVICE}]"
    )
    assert hard_timeout_suffix(1.5) == f"\n[The command timed out after 1.5 seconds. {ADVICE}]"
    # OpenHands prints its (float) hard timeout as a float, whole numbers included.
    assert hard_timeout_suffix(1) == f"\n[The command timed out after 1.0 seconds. {ADVICE}]"
    assert hard_timeout_suffix(120.0) == f"\n[The command timed out after 120.0 seconds. {ADVICE}]"
    assert not_executed_suffix("ls") == (
        '\n[Your command "ls" is NOT executed. The previous command is still running - You '
        "CANNOT send new commands until the previous command is completed. By setting "
        f"`is_input` to `true`, you can interact with the current process: {ADVICE}]"
    )
    assert CONTINUATION_PREFIX == "[Below is the output of the previous command.]\n"
    assert NO_RUNNING_COMMAND_LOGS == "ERROR: No previous running command to retrieve logs from."
    assert NO_RUNNING_COMMAND_INPUT == "ERROR: No previous running command to interact with."


@pytest.mark.parametrize(
    ("seconds", "text"), [(10.0, "10"), (1, "1"), (0.5, "0.5"), (1.25, "1.25"), (120.0, "120")]
)
def test_format_seconds(seconds: float, text: str) -> None:
    assert format_seconds(seconds) == text


# --------------------------------------------------------------------------- terminal text


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("\x1b[31mred\x1b[0m", "red"),
        ("\x1b[1;32mbold green\x1b[m plain", "bold green plain"),
        ("\x1b]0;window title\x07text", "text"),
        ("\x1b]8;;https://example.com\x1b\\link\x1b]8;;\x1b\\", "link"),
        ("\x1b(Bcharset", "charset"),
        ("\x1b[2K\x1b[1Aup", "up"),
        ("a\r\nb\r\n", "a\nb\n"),
        ("bell\x07 and nul\x00", "bell and nul"),
        ("tab\tkept", "tab\tkept"),
        ("\x9b31mC1 CSI", "C1 CSI"),
    ],
)
def test_strip_ansi(raw: str, clean: str) -> None:
    assert strip_ansi(raw) == clean


_terminal_text = st.lists(
    st.one_of(
        st.text(max_size=10),
        st.sampled_from(
            ["\x1b[31m", "\x1b[0m", "\x1b]0;t\x07", "\x1b]8;;u\x1b\\", "\r", "\n", "\r\n", "\x1b"]
        ),
    ),
    max_size=20,
).map("".join)


@given(_terminal_text, st.lists(st.integers(0, 200), max_size=8))
def test_cleaner_is_independent_of_splits(text: str, cuts: list[int]) -> None:
    cuts = sorted(c for c in cuts if c <= len(text))
    cleaner = TerminalTextCleaner()
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    streamed = "".join(cleaner.feed(p) for p in pieces) + cleaner.flush()
    assert streamed == strip_ansi(text)
    assert "\x1b" not in streamed
    assert "\r\n" not in streamed


@given(st.text(st.characters(max_codepoint=0xFF, exclude_characters="\x1b\x9b\r")))
def test_cleaner_removes_exactly_the_control_characters(text: str) -> None:
    # ASCII text takes a byte-table path, other text the regex: both keep the same.
    kept = "".join(c for c in text if c in "\b\t\n" or " " <= c <= "~" or c >= "\xa0")
    assert strip_ansi(text) == kept
    assert strip_ansi(text + "\xe9") == kept + "\xe9"


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("progress 10%\rprogress 100%", "progress 100%"),
        ("abcdef\rXY", "XYcdef"),
        ("10%\r50%\r100%\ndone\n", "100%\ndone\n"),
        ("ab\bc", "ac"),
        ("plain\ntext", "plain\ntext"),
        ("trailing\r", "trailing"),
    ],
)
def test_render_overwrites(raw: str, shown: str) -> None:
    assert render_overwrites(raw) == shown


# --------------------------------------------------------------------------- truncation


def test_truncate_middle() -> None:
    assert truncate_middle("short", 10) == "short"
    text = "a" * 10 + "b" * 10
    assert truncate_middle(text, 10) == "aaaaa" + TRUNCATION_MARKER + "bbbbb"
    assert TRUNCATION_MARKER == "\n[... Observation truncated due to length ...]\n"


def test_output_buffer_exact_below_the_limit() -> None:
    buffer = OutputBuffer(100)
    for piece in ["line 1\n", "line", " 2\n", "pro 1%\rpro 99%\n", "tail  \n\n"]:
        buffer.append(piece)
    assert buffer.render(1000) == "line 1\nline 2\npro 99%\ntail"


def test_output_buffer_keeps_head_and_tail_of_a_flood() -> None:
    buffer = OutputBuffer(300)
    lines = [f"{i}\n" for i in range(1, 50_001)]
    for start in range(0, len(lines), 7):
        buffer.append("".join(lines[start : start + 7]))
    rendered = buffer.render(300)
    head, marker, tail = rendered.partition(TRUNCATION_MARKER)
    assert marker
    assert head == "".join(lines)[:150]
    assert tail == "".join(lines).rstrip()[-150:]
    assert tail.endswith("49999\n50000")


@given(st.lists(st.text(alphabet="ab\n\r", max_size=50), max_size=40), st.integers(10, 200))
def test_output_buffer_matches_rendering_everything(pieces: list[str], limit: int) -> None:
    buffer = OutputBuffer(limit)
    for piece in pieces:
        buffer.append(piece)
    whole = render_overwrites("".join(pieces)).rstrip()
    rendered = buffer.render(limit)
    if len(whole) <= limit:
        assert rendered == whole
    else:
        assert TRUNCATION_MARKER in rendered
        assert len(rendered) <= limit + len(TRUNCATION_MARKER)


# --------------------------------------------------------------------------- last lines


def test_openhands_keeps_the_last_ten_thousand_lines() -> None:
    assert MAX_OUTPUT_LINES == 10_000
    assert truncated_lines_prefix(10_000) == (
        "[Previous command outputs are truncated. "
        "Showing the last 10000 lines of the output below.]\n"
    )


def test_last_lines_buffer_below_the_limit_is_exact_with_no_note() -> None:
    buffer = LastLinesBuffer(100, max_lines=10)
    for piece in ["line 1\n", "line", " 2\n", "pro 1%\rpro 99%\n", "tail  \n\n"]:
        buffer.append(piece)
    assert buffer.take(1000) == ("line 1\nline 2\npro 99%\ntail", "")
    assert not buffer
    assert buffer.take(1000) == ("", "")


def test_last_lines_buffer_keeps_the_end_of_a_flood_and_says_so() -> None:
    buffer = LastLinesBuffer(30_000)
    lines = [f"line {i}\n" for i in range(1, 25_001)]
    for start in range(0, len(lines), 7):
        buffer.append("".join(lines[start : start + 7]))
    assert buffer.lines_dropped == 15_000
    content, note = buffer.take(30_000)
    assert note == truncated_lines_prefix(10_000)
    kept = "".join(lines[15_000:]).rstrip()
    # Then the head/tail cut applies to those lines.
    assert content == truncate_middle(kept, 30_000)
    assert content.startswith("line 15001\n")
    assert content.endswith("line 25000")


@example(pieces=["aaaaa", "aaaaaa", "a"], max_lines=1, limit=10)  # a long line, then more of it
@given(
    st.lists(st.text(alphabet="ab\n\r", max_size=30), max_size=40),
    st.integers(1, 12),
    st.integers(10, 200),
)
def test_last_lines_buffer_matches_the_last_lines_of_everything(
    pieces: list[str], max_lines: int, limit: int
) -> None:
    buffer = LastLinesBuffer(limit, max_lines=max_lines)
    for piece in pieces:
        buffer.append(piece)
    # The reference: every line of the settled output (the last one may be open) ...
    whole = render_overwrites("".join(pieces))
    lines = whole.split("\n")
    if whole.endswith("\n"):
        lines.pop()
    # ... of which the last max_lines are kept, then cut in the middle.
    kept = lines[-max_lines:]
    expected_note = truncated_lines_prefix(len(kept)) if len(lines) > max_lines else ""
    assert buffer.take(limit) == (
        truncate_middle("\n".join(kept).rstrip(), limit),
        expected_note,
    )


def test_last_lines_buffer_memory_is_bounded() -> None:
    buffer = LastLinesBuffer(100, max_kept_chars=10_000)
    for _ in range(1000):
        buffer.append("x" * 99 + "\n")
    assert buffer.lines_dropped >= 900
    content, note = buffer.take(100)
    assert note
    assert len(content) <= 100 + len(TRUNCATION_MARKER)
    one_long_line = LastLinesBuffer(100)
    one_long_line.append("y" * 1_000_000 + "\n")
    assert one_long_line.take(100) == (truncate_middle("y" * 1_000_000, 100), "")
