"""A package's public names imported from their home modules on first use (PEP 562).

Shared by the server and the host, for packages whose import must stay cheap:
the host imports ``container_server`` for its ``Plugin`` base alone, the
server's start needs none of the tar machinery of ``container_server.transfer``,
and ``openhands_rt.docker`` loads the runtime only when it is asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    namespace: dict[str, Any], homes: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of the package whose ``globals()`` is
    ``namespace``: each name of ``homes`` is imported from its module when first asked
    for, then kept in the package like any name of its own."""
    package = namespace["__name__"]

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(home), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(namespace["__all__"]))

    return __getattr__, __dir__
