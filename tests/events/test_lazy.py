"""events.lazy: a package's names imported from their homes on first use."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from events.lazy import lazy_exports


def test_a_name_is_imported_when_first_asked_for_then_kept() -> None:
    sys.modules.pop("json.tool", None)
    namespace: dict[str, Any] = {"__name__": "pkg", "__all__": ["main"]}
    getattr_, dir_ = lazy_exports(namespace, {"main": "json.tool"})
    assert "json.tool" not in sys.modules
    assert dir_() == ["__all__", "__name__", "main"]
    main = getattr_("main")
    assert main is sys.modules["json.tool"].main
    assert namespace["main"] is main
    with pytest.raises(AttributeError, match="module 'pkg' has no attribute 'other'"):
        getattr_("other")
