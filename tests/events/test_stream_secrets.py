"""Secret masking: every string value of every event, before storage, delivery and disk."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from events import (
    CmdOutputMetadata,
    CmdOutputObservation,
    CmdRunAction,
    Event,
    EventStream,
    FileEditAction,
    IPythonRunCellObservation,
    OpenHandsEvent,
    RuntimeStatus,
    RuntimeStatusObservation,
    decode_event,
    encode_event,
)
from events.secrets import SECRET_PLACEHOLDER, SecretMasker

SECRET = "hunter2-s3cr3t"
HIDDEN = SECRET_PLACEHOLDER


def test_masks_plain_string_fields() -> None:
    stream = EventStream()
    stream.set_secrets({"TOKEN": SECRET})
    stored = stream.append(CmdRunAction(command=f"curl -H 'x: {SECRET}' {SECRET}", thought=SECRET))
    assert stored.command == f"curl -H 'x: {HIDDEN}' {HIDDEN}"
    assert stored.thought == HIDDEN
    assert stream.get(0) == stored


def test_masks_nested_metadata_lists_extra_and_foreign_data() -> None:
    stream = EventStream()
    stream.set_secrets({"TOKEN": SECRET})
    observation = stream.append(
        CmdOutputObservation(
            content=f"export TOKEN={SECRET}",
            command="env",
            metadata=CmdOutputMetadata(
                exit_code=0, working_dir=f"/home/{SECRET}", prefix=SECRET, suffix="ok"
            ),
            extra={"tool": {"args": [f"a{SECRET}b", 3, None, {"deep": SECRET}]}, SECRET: 1},
        )
    )
    assert isinstance(observation, CmdOutputObservation)
    assert observation.content == f"export TOKEN={HIDDEN}"
    assert observation.metadata == CmdOutputMetadata(
        exit_code=0, working_dir=f"/home/{HIDDEN}", prefix=HIDDEN, suffix="ok"
    )
    # Values are masked at any depth; keys are left alone (masking could merge two keys).
    assert observation.extra == {
        "tool": {"args": [f"a{HIDDEN}b", 3, None, {"deep": HIDDEN}]},
        SECRET: 1,
    }
    images = stream.append(
        IPythonRunCellObservation(content="", code="x", image_urls=["ok", f"data:{SECRET}"])
    )
    assert images.image_urls == ["ok", f"data:{HIDDEN}"]
    foreign = stream.append(OpenHandsEvent(kind="message", data={"content": f"pw {SECRET}"}))
    assert foreign.data == {"content": f"pw {HIDDEN}"}


def test_unchanged_fields_are_not_copied() -> None:
    masker = SecretMasker({"A": SECRET})
    metadata = CmdOutputMetadata(prefix="clean")
    event = CmdOutputObservation(content="clean", command="x", metadata=metadata, extra={"a": []})
    assert masker.mask_event(event) is event
    assert masker.changes(event) == {}


def test_secret_equal_to_a_field_name_or_tag_keeps_the_encoding_valid() -> None:
    stream = EventStream()
    stream.set_secrets({"A": "command", "B": "cmd_run", "C": "type", "D": '"'})
    stored = stream.append(CmdRunAction(command='run command "cmd_run" of type x'))
    encoded = encode_event(stored)
    decoded = decode_event(encoded)
    assert decoded == stored
    # '"', 'cmd_run', '"' touch: one merged span, one placeholder.
    assert stored.command == f"run {HIDDEN} {HIDDEN} of {HIDDEN} x"


def test_enum_fields_and_numbers_are_not_masked() -> None:
    stream = EventStream()
    stream.set_secrets({"A": "ready", "B": "42"})
    status = stream.append(
        RuntimeStatusObservation(status=RuntimeStatus.READY, message="ready now")
    )
    assert status.status == "ready"
    assert status.message == f"{HIDDEN} now"
    out = stream.append(
        CmdOutputObservation(content="pid 42", command="x", metadata=CmdOutputMetadata(pid=42))
    )
    assert out.metadata.pid == 42
    assert out.content == f"pid {HIDDEN}"


def test_overlapping_and_nested_secrets_leave_no_remainder() -> None:
    masker = SecretMasker({"short": "abc", "long": "abcdef", "overlap": "efgh"})
    assert masker.mask_text("xxabcdefghyy") == f"xx{HIDDEN}yy"
    assert masker.mask_text("abc abcdef efgh") == f"{HIDDEN} {HIDDEN} {HIDDEN}"
    assert masker.mask_text("aaaa") == "aaaa"


def _reference_mask(text: str, secrets: list[str]) -> str:
    covered = [False] * len(text)
    for secret in secrets:
        if not secret:
            continue
        for start in range(len(text) - len(secret) + 1):
            if text.startswith(secret, start):
                for i in range(start, start + len(secret)):
                    covered[i] = True
    out: list[str] = []
    for i, char in enumerate(text):
        if not covered[i]:
            out.append(char)
        elif i == 0 or not covered[i - 1]:
            out.append(HIDDEN)
    return "".join(out)


@given(
    st.lists(st.text(alphabet="abc", max_size=4), max_size=4),
    st.text(alphabet="abcx", max_size=40),
)
def test_mask_text_hides_exactly_every_covered_character(secrets: list[str], text: str) -> None:
    masker = SecretMasker({str(i): s for i, s in enumerate(secrets)})
    assert masker.mask_text(text) == _reference_mask(text, secrets)


def test_empty_secrets_are_ignored_and_set_secrets_replaces() -> None:
    stream = EventStream()
    stream.set_secrets({"EMPTY": ""})
    assert stream.append(CmdRunAction(command="a b")).command == "a b"
    stream.set_secrets({"A": "one"})
    stream.set_secrets({"B": "two"})
    stored = stream.append(CmdRunAction(command="one two"))
    assert stored.command == f"one {HIDDEN}"
    stream.set_secrets({})
    assert stream.append(CmdRunAction(command="two")).command == "two"


def test_masking_that_breaks_validation_raises_and_stores_nothing() -> None:
    stream = EventStream()
    stream.set_secrets({"A": "view"})
    with pytest.raises(ValueError, match="hiding secrets made the event invalid"):
        stream.append(FileEditAction(path="/a", command="view"))
    assert len(stream) == 0
    assert stream.append(CmdRunAction(command="x")).id == 0


async def test_subscribers_and_the_log_never_see_the_secret(tmp_path: Path) -> None:
    log = tmp_path / "events.log"
    received: list[Event] = []
    got_all = asyncio.Event()

    async def record(event: Event) -> None:
        received.append(event)
        if len(received) == 2:
            got_all.set()

    async with EventStream(log_path=log) as stream:
        stream.set_secrets({"TOKEN": SECRET})
        stream.subscribe(record, subscriber_id="ui")
        stream.append(CmdRunAction(command=f"echo {SECRET}"))
        stream.append(
            CmdOutputObservation(
                content=SECRET, command="echo", metadata=CmdOutputMetadata(suffix=SECRET)
            )
        )
        await asyncio.wait_for(got_all.wait(), 5)
        await stream.flush()
    data = log.read_bytes()
    assert SECRET.encode() not in data
    assert data.count(HIDDEN.encode()) == 3
    assert all(SECRET not in encode_event(e).decode() for e in received)
    reopened = EventStream(log_path=log)
    assert [e.id for e in reopened.iter_events()] == [0, 1]
    assert reopened.get(1) == CmdOutputObservation(
        content=HIDDEN,
        command="echo",
        metadata=CmdOutputMetadata(suffix=HIDDEN),
        id=1,
        timestamp=received[1].timestamp,
        source=received[1].source,
    )
    await reopened.aclose()
