"""One error root: every exception class of the events package derives from EventsError."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import events
from events import EventsError


def exception_classes() -> dict[str, type[BaseException]]:
    found: dict[str, type[BaseException]] = {}
    modules = [events] + [
        importlib.import_module(info.name)
        for info in pkgutil.walk_packages(events.__path__, prefix="events.")
    ]
    for module in modules:
        for name, value in vars(module).items():
            if (
                inspect.isclass(value)
                and issubclass(value, BaseException)
                and value.__module__ == module.__name__
            ):
                found[f"{module.__name__}.{name}"] = value
    return found


def test_every_exception_class_of_the_package_derives_from_events_error() -> None:
    classes = exception_classes()
    # The walk finds the package's errors at all (a walk that finds nothing proves nothing).
    assert {
        "events.errors.EventsError",
        "events.codec.EventDecodeError",
        "events.log.LogError",
        "events.log.NotALogError",
        "events.log.LogWriteError",
        "events.stream.StreamClosedError",
        "events.stream.DeliveryError",
    } <= set(classes)
    outside = sorted(name for name, cls in classes.items() if not issubclass(cls, EventsError))
    assert outside == []


def test_errors_keep_their_builtin_bases() -> None:
    from events.codec import EventDecodeError
    from events.log import LogError, LogLockedError, NotALogError
    from events.stream import DeliveryError, StreamClosedError

    assert issubclass(EventDecodeError, ValueError)
    assert issubclass(NotALogError, ValueError)
    assert issubclass(StreamClosedError, RuntimeError)
    assert issubclass(DeliveryError, StreamClosedError)
    assert issubclass(LogLockedError, LogError)
    assert events.__all__.count("EventsError") == 1
