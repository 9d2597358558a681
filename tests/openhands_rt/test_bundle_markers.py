"""PEP 508 markers and requirement lines, checked against ``packaging`` (a test-only dependency)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from packaging.markers import Marker

from openhands_rt.bundle.markers import (
    MarkerError,
    Requirement,
    current_environment,
    evaluate,
    parse_requirement,
)

ENVIRONMENT = {
    **current_environment(),
    "python_version": "3.11",
    "python_full_version": "3.11.7",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "os_name": "posix",
    "platform_machine": "x86_64",
}


@pytest.mark.parametrize(
    ("marker", "extra", "expected"),
    [
        ("", "", True),
        ('python_version < "3.13"', "", True),
        ('python_version < "3.11"', "", False),
        ('python_version >= "3.8"', "", True),
        ('python_full_version == "3.11.7"', "", True),
        ('python_version == "3.11.0"', "", True),  # release numbers, zero-padded
        ('python_version ~= "3.9"', "", True),
        ('python_full_version ~= "3.11.0"', "", True),
        ('python_full_version ~= "3.10.0"', "", False),
        ('sys_platform == "win32"', "", False),
        ('sys_platform != "win32" and implementation_name == "cpython"', "", True),
        ('platform_python_implementation != "PyPy"', "", True),
        ('extra == "speedups"', "", False),
        ('extra == "speedups"', "speedups", True),
        ('extra == "Speed_Ups"', "speed-ups", True),
        ('(sys_platform == "win32" or os_name == "posix") and extra == "x"', "x", True),
        ('sys_platform == "win32" or os_name == "posix" and extra == "x"', "", False),
        ('"linux" in sys_platform', "", True),
        ('"win" not in sys_platform', "", True),
        ("os.name == 'posix'", "", True),
    ],
)
def test_markers_evaluate_as_pep_508_says(marker: str, extra: str, expected: bool) -> None:
    assert evaluate(marker, {**ENVIRONMENT, "extra": extra}) is expected
    if marker:
        assert Marker(marker).evaluate({**ENVIRONMENT, "extra": extra}) is expected


@pytest.mark.parametrize(
    "marker",
    [
        "python_version <",
        'python_version < "3" and',
        '(os_name == "posix"',
        "nonsense == 'x'",
        "os_name ! 'x'",
    ],
)
def test_a_broken_marker_is_a_clean_error(marker: str) -> None:
    with pytest.raises(MarkerError):
        evaluate(marker, ENVIRONMENT)


VARIABLES = [
    "python_version",
    "python_full_version",
    "sys_platform",
    "os_name",
    "implementation_name",
]
VALUES = ["3.8", "3.11", "3.11.7", "3.13", "linux", "win32", "posix", "cpython", "nt"]
VERSION_OPS = ["<", "<=", ">", ">=", "==", "!="]


@st.composite
def comparisons(draw: st.DrawFn) -> str:
    variable = draw(st.sampled_from(VARIABLES))
    versions = variable.startswith("python")
    value = draw(st.sampled_from(VALUES[:4] if versions else VALUES[4:]))
    op = draw(st.sampled_from(VERSION_OPS if versions else ["==", "!=", "in", "not in"]))
    if draw(st.booleans()) and op not in ("in", "not in"):
        return f'"{value}" {op} {variable}'
    return f'{variable} {op} "{value}"'


markers = st.recursive(
    comparisons(),
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(["and", "or"]), inner).map(" ".join),
        inner.map(lambda m: f"({m})"),
    ),
    max_leaves=6,
)


@given(markers)
def test_any_marker_agrees_with_packaging(marker: str) -> None:
    assert evaluate(marker, ENVIRONMENT) is Marker(marker).evaluate(ENVIRONMENT)


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("aiohttp>=3.10", Requirement("aiohttp", frozenset(), "")),
        (
            "Typing_Extensions >=4 ; python_version < '3.13'",
            Requirement("typing-extensions", frozenset(), "python_version < '3.13'"),
        ),
        (
            "aiohttp[speedups]>=3; extra == 'x'",
            Requirement("aiohttp", frozenset({"speedups"}), "extra == 'x'"),
        ),
        (
            "pkg[A_b, c] @ https://example.org/p.whl",
            Requirement("pkg", frozenset({"a-b", "c"}), ""),
        ),
        ("zope.interface", Requirement("zope-interface", frozenset(), "")),
    ],
)
def test_requirement_lines_parse(line: str, expected: Requirement) -> None:
    assert parse_requirement(line) == expected


def test_a_line_that_is_no_requirement_is_a_clean_error() -> None:
    with pytest.raises(MarkerError):
        parse_requirement(">=3.0")
