"""Placeholder: EventStream is being written (issue 2)."""

from __future__ import annotations

__all__ = ["EventStream", "Subscription"]


class EventStream:
    pass


class Subscription:
    pass
