"""The pure formatter: iopub messages in, observation text and image URLs out."""

from __future__ import annotations

import base64

from hypothesis import given
from hypothesis import strategies as st

from container_server.jupyter_output import (
    NO_OUTPUT_TEXT,
    CellOutput,
    compose_content,
    kernel_died_note,
    timeout_note,
    unresponsive_kernel_note,
)
from container_server.truncate import TRUNCATION_MARKER
from events.ansi import render_overwrites


def stream(text: str, name: str = "stdout") -> tuple[str, dict[str, object]]:
    return "stream", {"name": name, "text": text}


def result(
    data: dict[str, object], msg_type: str = "execute_result"
) -> tuple[str, dict[str, object]]:
    return msg_type, {"data": data, "metadata": {}}


def feed_all(out: CellOutput, messages: list[tuple[str, dict[str, object]]]) -> list[str]:
    return [out.feed(msg_type, content) for msg_type, content in messages]


def test_stream_text_in_order_stdout_and_stderr() -> None:
    out = CellOutput()
    feed_all(out, [stream("a\n"), stream("b\n", "stderr"), stream("c")])
    assert out.render() == "a\nb\nc"
    assert not out.errored
    assert out.image_urls == []


def test_nothing_renders_empty() -> None:
    out = CellOutput()
    assert feed_all(out, [("status", {"execution_state": "busy"}), ("execute_input", {})]) == [
        "",
        "",
    ]
    assert out.render() == ""


def test_result_text_plain() -> None:
    out = CellOutput()
    added = feed_all(out, [result({"text/plain": "42"})])
    assert added == ["42\n"]
    assert out.render() == "42"


def test_rich_outputs_sit_on_their_own_lines() -> None:
    out = CellOutput()
    feed_all(
        out,
        [
            stream("no newline"),
            result({"text/plain": "1"}, "display_data"),
            result({"text/plain": "2"}, "display_data"),
            stream("after\n"),
        ],
    )
    assert out.render() == "no newline\n1\n2\nafter"


def test_png_becomes_data_url_and_text_plain_stays_as_marker() -> None:
    png = b"\x89PNG\r\n\x1a\nfake"
    encoded = base64.b64encode(png).decode()
    wrapped = encoded[:8] + "\n" + encoded[8:] + "\n"
    out = CellOutput()
    feed_all(
        out,
        [
            result(
                {"image/png": wrapped, "text/plain": "<IPython.core.display.Image object>"},
                "display_data",
            )
        ],
    )
    assert out.image_urls == [f"data:image/png;base64,{encoded}"]
    assert base64.b64decode(out.image_urls[0].split(",", 1)[1]) == png
    assert out.render() == "<IPython.core.display.Image object>"


def test_image_without_text_plain_gets_a_marker() -> None:
    out = CellOutput()
    feed_all(out, [result({"image/jpeg": "/9j/AA=="}, "display_data")])
    assert out.image_urls == ["data:image/jpeg;base64,/9j/AA=="]
    assert out.render() == "<image/jpeg image>"


def test_traceback_joined_and_stripped_of_escape_codes() -> None:
    out = CellOutput()
    traceback = [
        "\x1b[31m---------------------------------------------------------------------------\x1b[39m",
        "\x1b[31mZeroDivisionError\x1b[39m" + " " * 25 + "Traceback (most recent call last)",
        "\x1b[36mCell\x1b[39m\x1b[36m \x1b[39m\x1b[32mIn[1]\x1b[39m\x1b[32m, line 1\x1b[39m\n"
        "\x1b[32m----> \x1b[39m\x1b[32m1\x1b[39m \x1b[32m1\x1b[39m/\x1b[32m0\x1b[39m\n",
        "\x1b[31mZeroDivisionError\x1b[39m: division by zero",
    ]
    out.feed(
        "error",
        {"ename": "ZeroDivisionError", "evalue": "division by zero", "traceback": traceback},
    )
    text = out.render()
    assert "\x1b" not in text
    assert out.errored
    assert text.splitlines() == [
        "-" * 75,
        "ZeroDivisionError                         Traceback (most recent call last)",
        "Cell In[1], line 1",
        "----> 1 1/0",
        "",
        "ZeroDivisionError: division by zero",
    ]


def test_error_without_traceback_uses_name_and_value() -> None:
    out = CellOutput()
    out.feed("error", {"ename": "KeyboardInterrupt", "evalue": "", "traceback": []})
    assert out.render() == "KeyboardInterrupt:"


def test_malformed_contents_are_skipped() -> None:
    out = CellOutput()
    feed_all(
        out,
        [
            ("stream", {"text": 5}),
            ("execute_result", {"data": "not a mapping"}),
            ("display_data", {}),
            ("stream", {"text": ["list ", "of ", "lines\n"]}),
        ],
    )
    assert out.render() == "list of lines"


def test_carriage_return_progress_settles_to_last_state() -> None:
    out = CellOutput()
    feed_all(out, [stream(f"\rprogress {i}%") for i in range(0, 101, 10)] + [stream("\ndone\n")])
    assert out.render() == "progress 100%\ndone"


def test_escape_sequence_split_across_stream_messages() -> None:
    out = CellOutput()
    added = feed_all(out, [stream("red: \x1b[3"), stream("1mX\x1b[0m\n")])
    assert "".join(added) == "red: X\n"
    assert out.render() == "red: X"


def test_huge_output_is_truncated_in_the_middle_in_bounded_memory() -> None:
    out = CellOutput(max_chars=1000)
    for i in range(10_000):
        out.feed("stream", {"name": "stdout", "text": f"line {i:05d}\n"})
    text = out.render()
    assert TRUNCATION_MARKER in text
    assert text.startswith("line 00000\n")
    assert text.endswith("line 09999")
    assert len(text) <= 1000 + len(TRUNCATION_MARKER)


def test_compose_no_output_and_trailer_lines() -> None:
    content = compose_content("", cwd="/workspace", python="/usr/bin/python3", completed=True)
    assert content == (
        "[Code executed successfully with no output]\n"
        "[Jupyter current working directory: /workspace]\n"
        "[Jupyter Python interpreter: /usr/bin/python3]"
    )
    assert content.startswith(NO_OUTPUT_TEXT)


def test_compose_incomplete_cell_does_not_claim_success() -> None:
    content = compose_content(
        "", cwd="/w", python="/p", completed=False, notes_after=[timeout_note(2.0)]
    )
    assert content == (
        "[Execution timed out (2 seconds).]\n"
        "[Jupyter current working directory: /w]\n"
        "[Jupyter Python interpreter: /p]"
    )


def test_compose_notes_around_body() -> None:
    content = compose_content(
        "out",
        cwd="/w",
        python="/p",
        completed=True,
        notes_before=[kernel_died_note(-9, cell_started=False)],
        notes_after=[timeout_note(0.5), unresponsive_kernel_note(5)],
    )
    lines = content.split("\n")
    assert lines[0].startswith("[The IPython kernel was killed by signal 9 between cells")
    assert lines[1] == "out"
    assert lines[2] == "[Execution timed out (0.5 seconds).]"
    assert lines[3].startswith("[The kernel did not stop within 5 seconds of the interrupt")
    assert lines[-2:] == [
        "[Jupyter current working directory: /w]",
        "[Jupyter Python interpreter: /p]",
    ]


def test_kernel_died_note_wording() -> None:
    lost = "and was restarted: variables, imports and definitions from earlier cells are lost.]"
    assert kernel_died_note(1, cell_started=True) == (
        f"[The IPython kernel exited with code 1 while running this cell {lost}"
    )
    assert kernel_died_note(-9, cell_started=False) == (
        f"[The IPython kernel was killed by signal 9 between cells {lost}"
    )
    assert kernel_died_note(None, cell_started=None) == (
        "[The IPython kernel stopped answering (this cell may not have run, or not to its end) "
        + lost
    )


_TEXT = st.text(alphabet=st.sampled_from([*"ab 1\n\r\t\x1b[3m;", "\x07"]), max_size=40)


@given(st.lists(_TEXT, max_size=8))
def test_streamed_pieces_render_to_the_observation(pieces: list[str]) -> None:
    """What went out as chunks, settled and right-stripped, is the observation text."""
    out = CellOutput()
    added = [out.feed("stream", {"name": "stdout", "text": piece}) for piece in pieces]
    text = out.render()
    assert "\x1b" not in text
    assert "\x07" not in text
    streamed = "".join(added)
    # The cleaner may hold back a trailing "\r" (it could be half of "\r\n").
    if "".join(pieces).endswith("\r"):
        streamed += "\r"
    assert render_overwrites(streamed).rstrip() == text


@given(st.lists(st.text(alphabet=st.sampled_from(list("xyz \n")), max_size=30), max_size=10))
def test_plain_stream_text_is_kept_verbatim(pieces: list[str]) -> None:
    out = CellOutput()
    for piece in pieces:
        out.feed("stream", {"name": "stdout", "text": piece})
    assert out.render() == "".join(pieces).rstrip()
