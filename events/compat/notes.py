"""The fidelity notes that make an OpenHands round trip lossless.

:func:`~events.compat.from_openhands_dict` renders the event it built and compares
that rendering with the original dict; what differs is written down in
``event.extra[FORMAT_KEY]`` (see the package docstring) and
:func:`~events.compat.to_openhands_dict` plays it back. This module is that
bookkeeping, on plain JSON values: :data:`OMIT` marks a key our rendering leaves
out; :func:`diff`/:func:`diff_order` take the notes; :func:`apply_notes`,
:func:`merge` and :func:`reorder_as_noted` play them back. Every note carries
a fingerprint of our rendering of its key when it was taken, so a note about a
field that has since changed is dropped rather than written over the new value.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Mapping
from typing import Any, Final

__all__ = [
    "FORMAT_KEY",
    "OMIT",
    "apply_notes",
    "diff",
    "diff_order",
    "merge",
    "opt",
    "reorder_as_noted",
    "strip_omitted",
]

FORMAT_KEY: Final = "_openhands_format"
"""The key of ``Event.extra`` holding the notes on how an OpenHands original was spelled."""


class _Omitted:
    """Marks a key we render only when its value is set: absent from the output."""

    def __repr__(self) -> str:
        return "<omitted>"


OMIT: Final = _Omitted()


def opt(value: Any) -> Any:
    """``value``, or :data:`OMIT` for ``None`` (a key OpenHands writes only when set)."""
    return OMIT if value is None else value


def _fingerprint(value: Any) -> str:
    if value is OMIT:
        return ""
    blob = json.dumps(strip_omitted(value), sort_keys=True, separators=(",", ":"))
    # json.dumps escapes every non-ASCII character (lone surrogates too): plain ASCII bytes.
    return hashlib.sha256(blob.encode("ascii")).hexdigest()[:16]


def _same(a: Any, b: Any) -> bool:
    """JSON equality that tells ``1`` from ``1.0`` and ``True`` from ``1``."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    result: bool = a == b
    return result


def diff(
    original: dict[str, Any],
    canonical: dict[str, Any],
    path: list[str],
    patch: dict[str, Any],
    changed: list[Any],
    absent: list[Any],
) -> None:
    """Note how ``original`` differs from our ``canonical`` rendering of it.

    Keys we do not render go to ``patch`` (the future ``extra``), values we
    spell differently to ``changed``, keys the original lacks to ``absent``.
    """
    for key, value in original.items():
        if key not in canonical:
            patch[key] = copy.deepcopy(value)
            continue
        ours = canonical[key]
        if isinstance(value, dict) and isinstance(ours, dict):
            sub: dict[str, Any] = {}
            diff(value, ours, [*path, key], sub, changed, absent)
            if sub:
                patch[key] = sub
        elif ours is OMIT or not _same(value, ours):
            changed.append([[*path, key], _fingerprint(ours), copy.deepcopy(value)])
    for key, ours in canonical.items():
        if key not in original and ours is not OMIT:
            absent.append([[*path, key], _fingerprint(ours)])


def diff_order(original: Any, ours: Any, path: list[str], order: list[Any]) -> None:
    """Note, in ``order``, every object of ``original`` whose key order differs from ours."""
    if not (isinstance(original, dict) and isinstance(ours, dict)):
        return
    if original.keys() != ours.keys():
        return
    if list(original) != list(ours):
        order.append([path, list(original)])
    for key, value in original.items():
        diff_order(value, ours[key], [*path, key], order)


def _entries(notes: Mapping[str, Any], name: str, width: int) -> list[list[Any]]:
    entries = notes.get(name, [])
    if not isinstance(entries, list) or not all(
        isinstance(e, list)
        and len(e) == width
        and isinstance(e[0], list)
        and all(isinstance(k, str) for k in e[0])
        and (name == "order" or isinstance(e[1], str))
        for e in entries
    ):
        raise ValueError(f"extra[{FORMAT_KEY!r}][{name!r}] is malformed")
    return entries


def _parent(root: dict[str, Any], path: list[str]) -> dict[str, Any] | None:
    node: Any = root
    for key in path[:-1]:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, dict) and path else None


def apply_notes(canonical: dict[str, Any], notes: Mapping[str, Any]) -> None:
    """Put back, in ``canonical``, the original spellings whose fingerprints still match."""
    # Decide every note against the untouched rendering, then apply: a note whose
    # fingerprint no longer matches describes a value that has since changed.
    updates: list[tuple[dict[str, Any], str, Any]] = []
    for path, fingerprint, value in _entries(notes, "changed", 3):
        parent = _parent(canonical, path)
        if parent is not None and _fingerprint(parent.get(path[-1], OMIT)) == fingerprint:
            updates.append((parent, path[-1], copy.deepcopy(value)))
    for path, fingerprint in _entries(notes, "absent", 2):
        parent = _parent(canonical, path)
        if parent is None or path[-1] not in parent:
            continue
        if _fingerprint(parent[path[-1]]) == fingerprint:
            updates.append((parent, path[-1], OMIT))
    for parent, key, value in updates:
        parent[key] = value


def merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """Write ``patch`` (the unmodelled keys of ``extra``) into ``target``, level by level."""
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(target.get(key), dict):
            merge(target[key], value)
        else:
            target[key] = value


def strip_omitted(value: Any) -> Any:
    """A copy of the JSON value ``value`` without its :data:`OMIT` entries."""
    if isinstance(value, dict):
        return {k: strip_omitted(v) for k, v in value.items() if v is not OMIT}
    if isinstance(value, list):
        return [strip_omitted(v) for v in value]
    return value


def _reorder(node: Any, path: list[str], keys: list[str]) -> Any:
    if not isinstance(node, dict):
        return node
    if path:
        head, rest = path[0], path[1:]
        if head in node:
            node[head] = _reorder(node[head], rest, keys)
        return node
    if set(node) != set(keys) or len(keys) != len(node):
        return node
    return {k: node[k] for k in keys}


def reorder_as_noted(out: dict[str, Any], notes: Mapping[str, Any]) -> dict[str, Any]:
    """``out`` with every object whose key order was noted put back in that order."""
    for path, keys in _entries(notes, "order", 2):
        out = _reorder(out, path, keys)
    return out
