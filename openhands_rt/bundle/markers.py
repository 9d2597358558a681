"""PEP 508 environment markers and requirement strings (pure).

The bundle follows the server's requirements through each distribution's
``Requires-Dist`` lines, whose markers (``python_version < "3.13"``,
``extra == "speedups"``, ``sys_platform == "win32"``) decide which apply to the
interpreter being bundled. ``packaging`` does this too, but it is not one of our
runtime dependencies; this is the small subset PEP 508 defines, nothing more.

- :func:`evaluate` ``(marker, environment)``: the marker's truth;
- :func:`parse_requirement`: a requirement line's name, extras and marker;
- :func:`current_environment`: the marker variables of this interpreter.

Version comparisons (``<``, ``<=``, ``>``, ``>=``, ``~=``, and ``==``/``!=``
when both sides look like versions) compare release numbers (``3.11.7`` →
``(3, 11, 7)``, zero-padded); everything else compares strings, as PEP 508 says.
"""

from __future__ import annotations

import os
import platform
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from openhands_rt.bundle.errors import BundleError

__all__ = [
    "MarkerError",
    "Requirement",
    "current_environment",
    "evaluate",
    "parse_requirement",
]


class MarkerError(BundleError, ValueError):
    """A marker or requirement string that does not parse."""


_TOKEN = re.compile(
    r"""\s*(?:
        (?P<lparen>\() | (?P<rparen>\)) |
        (?P<op>===|==|!=|<=|>=|~=|<|>|not\s+in\b|in\b) |
        (?P<bool>and\b|or\b) |
        (?P<string>'[^']*'|"[^"]*") |
        (?P<name>[A-Za-z_][A-Za-z0-9_.]*)
    )""",
    re.VERBOSE,
)
_VERSION = re.compile(r"^\s*v?(\d+(?:\.\d+)*)")
_VERSION_VARIABLES = frozenset(
    {"python_version", "python_full_version", "implementation_version", "platform_release"}
)
_REQUIREMENT = re.compile(
    r"^\s*(?P<name>[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*"
    r"(?:\[(?P<extras>[^\]]*)\])?\s*(?P<rest>[^;]*)(?:;(?P<marker>.*))?$"
)


@dataclass(frozen=True)
class Requirement:
    """One requirement line: normalized name, normalized extras, its marker (or empty)."""

    name: str
    extras: frozenset[str]
    marker: str


def normalize(name: str) -> str:
    """PEP 503 normalized name (also used for extras, as PEP 685 says)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_requirement(line: str) -> Requirement:
    """``name [extras] (version specifier | @ url) ; marker`` → :class:`Requirement`."""
    match = _REQUIREMENT.match(line)
    if match is None:
        raise MarkerError(f"not a requirement: {line!r}")
    extras = frozenset(
        normalize(extra.strip()) for extra in (match["extras"] or "").split(",") if extra.strip()
    )
    return Requirement(normalize(match["name"]), extras, (match["marker"] or "").strip())


def current_environment() -> dict[str, str]:
    """The PEP 508 marker variables of the running interpreter (``extra`` left out)."""
    info = sys.implementation
    version = info.version
    implementation_version = f"{version.major}.{version.minor}.{version.micro}"
    if version.releaselevel != "final":
        implementation_version += version.releaselevel[0] + str(version.serial)
    return {
        "implementation_name": info.name,
        "implementation_version": implementation_version,
        "os_name": os.name,
        "platform_machine": platform.machine(),
        "platform_python_implementation": platform.python_implementation(),
        "platform_release": platform.release(),
        "platform_system": platform.system(),
        "platform_version": platform.version(),
        "python_full_version": platform.python_version(),
        "python_version": ".".join(platform.python_version_tuple()[:2]),
        "sys_platform": sys.platform,
    }


def _tokens(marker: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    position = 0
    text = marker.rstrip()
    while position < len(text):
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise MarkerError(f"cannot parse marker {marker!r} at {text[position:]!r}")
        kind = match.lastgroup
        assert kind is not None
        tokens.append((kind, " ".join(match[kind].split())))
        position = match.end()
    return tokens


def _release(text: str) -> tuple[int, ...] | None:
    match = _VERSION.match(text)
    if match is None:
        return None
    return tuple(int(part) for part in match[1].split("."))


def _padded(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    width = max(len(a), len(b))
    return a + (0,) * (width - len(a)), b + (0,) * (width - len(b))


def _compare(left: str, op: str, right: str, *, as_version: bool) -> bool:
    if op == "in":
        return left in right
    if op == "not in":
        return left not in right
    if op == "===":
        return left == right
    a, b = _release(left), _release(right)
    if as_version and a is not None and b is not None:
        if op == "~=":
            prefix = b[:-1] if len(b) > 1 else b
            x, y = _padded(a, b)
            return x >= y and _padded(a, prefix)[0][: len(prefix)] == prefix
        x, y = _padded(a, b)
        return {
            "==": x == y,
            "!=": x != y,
            "<": x < y,
            "<=": x <= y,
            ">": x > y,
            ">=": x >= y,
        }[op]
    if op == "==":
        return left == right
    if op == "!=":
        return left != right
    raise MarkerError(f"{op!r} compares versions, and {left!r} or {right!r} is none")


class _Parser:
    def __init__(self, tokens: list[tuple[str, str]], environment: Mapping[str, str]) -> None:
        self.tokens = tokens
        self.at = 0
        self.environment = environment

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def take(self, kind: str) -> str:
        token = self.peek()
        if token is None or token[0] != kind:
            raise MarkerError(f"expected {kind}, found {token[1] if token else 'the end'}")
        self.at += 1
        return token[1]

    def any_of(self, word: str, operand: Callable[[], bool]) -> bool:
        result = operand()
        while self.peek() == ("bool", word):
            self.at += 1
            other = operand()
            result = (result or other) if word == "or" else (result and other)
        return result

    def disjunction(self) -> bool:
        return self.any_of("or", self.conjunction)

    def conjunction(self) -> bool:
        return self.any_of("and", self.atom)

    def atom(self) -> bool:
        if self.peek() == ("lparen", "("):
            self.at += 1
            result = self.disjunction()
            self.take("rparen")
            return result
        left, left_variable = self.value()
        op = self.take("op")
        right, right_variable = self.value()
        if "extra" in (left_variable, right_variable):
            left, right = normalize(left), normalize(right)
        as_version = bool({left_variable, right_variable} & _VERSION_VARIABLES)
        return _compare(left, op, right, as_version=as_version or op not in ("==", "!="))

    def value(self) -> tuple[str, str | None]:
        token = self.peek()
        if token is not None and token[0] == "string":
            self.at += 1
            return token[1][1:-1], None
        name = self.take("name")
        variable = name.replace(".", "_")  # the old spellings (os.name, ...) still appear
        if variable not in self.environment:
            raise MarkerError(f"unknown marker variable {name!r}")
        return self.environment[variable], variable


def evaluate(marker: str, environment: Mapping[str, str]) -> bool:
    """The truth of ``marker`` (empty: true) for ``environment`` (name → value).

    ``environment`` holds the variables of :func:`current_environment`, and
    ``extra`` when the requirement is read for one of its distribution's extras
    (an empty string otherwise, so that ``extra == "x"`` is false).
    """
    if not marker.strip():
        return True
    parser = _Parser(_tokens(marker), {"extra": "", **environment})
    result = parser.disjunction()
    if parser.peek() is not None:
        raise MarkerError(f"cannot parse marker {marker!r}: {parser.peek()} left over")
    return result
