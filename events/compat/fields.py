"""Typed reads from an OpenHands event dict, with errors that name the field.

OpenHands' dicts are untyped JSON: every read checks the type and a wrong one
raises ``ValueError`` naming the path (``OpenHands 'run' action.args.command
must be a string, got int 3``). Ids may be ints or strings of digits; a
``source`` that is not one of ours, or a missing one, reads as ``None``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from events.models import EventSource

__all__ = ["Fields", "read_id", "read_metadata", "read_timeout"]

_MAX_ID: Final = 2**63
_SOURCES: Final = frozenset(s.value for s in EventSource)


def read_id(value: Any) -> int | None:
    """An id as an int (``4`` or ``"4"``), or ``None`` for anything that is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int) and -_MAX_ID <= value < _MAX_ID:
        return value
    # The length bound keeps int() away from huge digit strings (and its 4300-digit limit).
    if isinstance(value, str) and 0 < len(value) <= 19 and value.isascii() and value.isdigit():
        number = int(value)
        return number if number < _MAX_ID else None
    return None


def read_metadata(d: Mapping[str, Any]) -> dict[str, Any]:
    """The four fields every event has, read from the top level of ``d``."""
    source = d.get("source")
    timestamp = d.get("timestamp")
    own_id = read_id(d.get("id"))
    return {
        "id": -1 if own_id is None else own_id,
        "timestamp": timestamp if isinstance(timestamp, str) else None,
        "source": EventSource(source) if isinstance(source, str) and source in _SOURCES else None,
        "cause": read_id(d.get("cause")),
    }


class Fields:
    """Typed reads from one object of an OpenHands event; errors name the field."""

    def __init__(self, where: str, owner: Mapping[str, Any], key: str | None) -> None:
        value: Any = owner if key is None else owner.get(key)
        self.where = where if key is None else f"{where}.{key}"
        if value is None:
            value = {}
        if not isinstance(value, Mapping):
            raise ValueError(f"{self.where} must be an object, got {type(value).__name__}")
        self.data: Mapping[str, Any] = value

    def _fail(self, key: str, expected: str) -> ValueError:
        value = self.data.get(key)
        return ValueError(
            f"{self.where}.{key} must be {expected}, got {type(value).__name__} {value!r:.80}"
        )

    def required_str(self, key: str) -> str:
        value = self.data.get(key)
        if not isinstance(value, str):
            raise self._fail(key, "a string")
        return value

    def str_(self, key: str, default: str = "") -> str:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self._fail(key, "a string")
        return value

    def optional_str(self, key: str) -> str | None:
        value = self.data.get(key)
        if value is not None and not isinstance(value, str):
            raise self._fail(key, "a string or null")
        return value

    def bool_(self, key: str, default: bool = False) -> bool:
        value = self.data.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self._fail(key, "a boolean")
        return value

    def int_(self, key: str, default: int) -> int:
        value = self.optional_int(key)
        return default if value is None else value

    def optional_int(self, key: str) -> int | None:
        value = self.data.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise self._fail(key, "an integer")
        return value

    def int_list(self, key: str) -> list[int] | None:
        value = self.data.get(key)
        if value is None:
            return None
        if not isinstance(value, list) or any(
            isinstance(v, bool) or not isinstance(v, int) for v in value
        ):
            raise self._fail(key, "a list of integers")
        return list(value)

    def str_list(self, key: str) -> list[str]:
        value = self.data.get(key)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self._fail(key, "a list of strings")
        return list(value)


def read_timeout(d: Mapping[str, Any], where: str) -> float | None:
    """The top-level ``timeout`` in seconds (``None`` when absent)."""
    value = d.get("timeout")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where}.timeout must be a number of seconds, got {value!r:.80}")
    try:
        return float(value)
    except OverflowError as exc:
        raise ValueError(f"{where}.timeout is out of range: {value!r:.80}") from exc
