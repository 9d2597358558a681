"""Masking secret values in events before the stream stores or delivers them.

The masker walks the event's structure (string fields, nested structs such as
:class:`~events.CmdOutputMetadata`, lists, tuples and dict values, ``extra``)
and never touches encoded bytes: a secret that happens to equal a field name
or a tag must not corrupt the encoding. Only string values are masked;
numbers, booleans, enum members and dict keys are left alone, and so are the
stream's own metadata fields (``id``, ``timestamp``, ``source``, ``cause``).

Every occurrence of every secret is covered, also overlapping ones: the
spans of all occurrences are merged and each merged span becomes one
``<secret_hidden>``, so neither "abc" + "abcdef" nor "abcd" + "cdef" leaks a
remainder.
"""

from __future__ import annotations

import enum
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, Final

import msgspec

from events.models import Event

__all__ = ["SECRET_PLACEHOLDER", "SecretMasker"]

SECRET_PLACEHOLDER: Final = "<secret_hidden>"

_METADATA_FIELDS: Final = frozenset({"id", "timestamp", "source", "cause"})
_NO_TEXT_TYPES: Final = (bool, int, float, bytes, bytearray, type(None))

_field_plans: dict[type[msgspec.Struct], tuple[str, ...]] = {}


def _may_hold_text(tp: Any, visiting: set[type[msgspec.Struct]]) -> bool:
    """Whether a value of annotation ``tp`` can contain a maskable string."""
    if tp is str or tp is Any or tp is object:
        return True
    if isinstance(tp, type):
        if issubclass(tp, enum.Enum) or issubclass(tp, _NO_TEXT_TYPES):
            return False  # enum members are fixed vocabulary; masking would break validation
        if issubclass(tp, msgspec.Struct):
            if tp in visiting:
                return True
            return bool(_plan(tp, visiting))
        return True
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        return any(_may_hold_text(arg, visiting) for arg in args)
    if origin is typing.Literal:
        return False
    if origin is dict or origin is Mapping:
        return len(args) < 2 or _may_hold_text(args[1], visiting)
    if origin in (list, tuple, set, frozenset):
        return not args or any(_may_hold_text(arg, visiting) for arg in args if arg is not ...)
    return True


def _plan(
    cls: type[msgspec.Struct], visiting: set[type[msgspec.Struct]] | None = None
) -> tuple[str, ...]:
    """The fields of ``cls`` worth walking, computed once per class."""
    plan = _field_plans.get(cls)
    if plan is not None:
        return plan
    visiting = set() if visiting is None else visiting
    visiting.add(cls)
    plan = tuple(
        info.name
        for info in msgspec.structs.fields(cls)
        if info.name not in _METADATA_FIELDS and _may_hold_text(info.type, visiting)
    )
    visiting.discard(cls)
    _field_plans[cls] = plan
    return plan


class SecretMasker:
    """Replaces secret values with :data:`SECRET_PLACEHOLDER`. Empty values are ignored."""

    def __init__(self, secrets: Mapping[str, str]) -> None:
        values = {value for value in secrets.values() if value}
        # Longest first, so the regex's first hit at a position is the longest secret there.
        self._values: tuple[str, ...] = tuple(sorted(values, key=len, reverse=True))
        self._pattern: re.Pattern[str] | None = (
            re.compile("|".join(re.escape(value) for value in self._values)) if values else None
        )

    def __bool__(self) -> bool:
        return self._pattern is not None

    def mask_text(self, text: str) -> str:
        """``text`` with every occurrence of every secret hidden (``text`` itself if none)."""
        if self._pattern is None:
            return text
        first = self._pattern.search(text)
        if first is None:
            return text
        spans: list[tuple[int, int]] = []
        for value in self._values:
            start = text.find(value, first.start())
            while start != -1:
                spans.append((start, start + len(value)))
                start = text.find(value, start + 1)
        spans.sort()
        pieces: list[str] = []
        done = 0  # text[:done] is already emitted
        span_start, span_end = spans[0]
        for start, end in spans[1:]:
            if start <= span_end:
                span_end = max(span_end, end)
                continue
            pieces += (text[done:span_start], SECRET_PLACEHOLDER)
            done, span_start, span_end = span_end, start, end
        pieces += (text[done:span_start], SECRET_PLACEHOLDER, text[span_end:])
        return "".join(pieces)

    def changes(self, event: Event) -> dict[str, Any]:
        """The masked values of the event's fields that hold a secret (empty: nothing to hide)."""
        return self._struct_changes(event)

    def mask_event(self, event: Event) -> Event:
        """A copy of ``event`` with its secrets hidden (``event`` itself if it holds none)."""
        changes = self._struct_changes(event)
        return msgspec.structs.replace(event, **changes) if changes else event

    def _struct_changes(self, struct: msgspec.Struct) -> dict[str, Any]:
        changes: dict[str, Any] = {}
        for name in _plan(type(struct)):
            value = getattr(struct, name)
            masked = self._mask_value(value)
            if masked is not value:
                changes[name] = masked
        return changes

    def _mask_value(self, value: Any) -> Any:
        if isinstance(value, str):
            return value if isinstance(value, enum.Enum) else self.mask_text(value)
        if isinstance(value, list | tuple):
            items = [self._mask_value(item) for item in value]
            if all(new is old for new, old in zip(items, value, strict=True)):
                return value
            return items if isinstance(value, list) else tuple(items)
        if isinstance(value, dict):
            masked_dict = {key: self._mask_value(item) for key, item in value.items()}
            if all(masked_dict[key] is item for key, item in value.items()):
                return value
            return masked_dict
        if isinstance(value, msgspec.Struct):
            changes = self._struct_changes(value)
            return msgspec.structs.replace(value, **changes) if changes else value
        return value
