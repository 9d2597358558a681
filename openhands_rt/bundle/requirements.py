"""Which installed distributions the server needs: its requirements, transitively.

:func:`closure` is pure: it walks ``Requires-Dist`` through a ``lookup``
function (name → :class:`Distribution`), evaluating each line's marker for the
bundled interpreter and for the extras asked of that distribution.
:func:`installed` is that lookup over the running environment
(``importlib.metadata``), and :func:`distribution_files` lists what to copy.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from openhands_rt.bundle.errors import BundleError
from openhands_rt.bundle.markers import evaluate, normalize, parse_requirement

__all__ = ["Distribution", "closure", "distribution_files", "installed"]


@dataclass(frozen=True)
class Distribution:
    """What the closure needs of an installed distribution."""

    name: str
    version: str
    requires: tuple[str, ...] = ()


def closure(
    roots: Iterable[str],
    lookup: Callable[[str], Distribution | None],
    environment: Mapping[str, str],
) -> list[Distribution]:
    """Every distribution ``roots`` need, sorted by name; each once.

    A requirement whose marker is false for ``environment`` is skipped; one
    that applies but is not installed raises :class:`BundleError` (the server
    would fail to import it in the sandbox, later and less clearly).
    """
    found: dict[str, Distribution] = {}
    done: set[tuple[str, str]] = set()
    pending: list[tuple[str, str, str]] = []  # (requirement line, required by, extra)
    pending += [(root, "the server", "") for root in roots]
    while pending:
        line, parent, parent_extra = pending.pop()
        requirement = parse_requirement(line)
        if not evaluate(requirement.marker, {**environment, "extra": parent_extra}):
            continue
        distribution = found.get(requirement.name) or lookup(requirement.name)
        if distribution is None:
            raise BundleError(
                f"{requirement.name} (needed by {parent}) is not installed in this environment"
            )
        found[requirement.name] = distribution
        for extra in ("", *sorted(requirement.extras)):
            if (requirement.name, extra) in done:
                continue
            done.add((requirement.name, extra))
            pending += [(child, distribution.name, extra) for child in distribution.requires]
    return sorted(found.values(), key=lambda d: normalize(d.name))


def installed(name: str) -> Distribution | None:
    """The distribution ``name`` as installed in the running environment, or None."""
    try:
        distribution = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return None
    return Distribution(
        name=distribution.metadata["Name"],
        version=distribution.version,
        requires=tuple(distribution.requires or ()),
    )


def distribution_files(name: str) -> list[tuple[str, Path]]:
    """``(relative path, file)`` of each file of ``name`` inside its site-packages.

    From the distribution's ``RECORD``; files outside its site-packages (console
    scripts in ``bin/``, data files) and cached bytecode are left out: the bundle
    compiles its own.
    """
    try:
        distribution = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError as exc:
        raise BundleError(f"{name} is not installed in this environment") from exc
    root = Path(str(distribution.locate_file(""))).resolve()
    files: list[tuple[str, Path]] = []
    for record in distribution.files or ():
        if "__pycache__" in record.parts or record.suffix == ".pyc":
            continue
        path = Path(str(distribution.locate_file(record))).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            continue
        files.append((path.relative_to(root).as_posix(), path))
    if not files:
        raise BundleError(f"{name} lists no files (no RECORD): cannot copy it into the bundle")
    return files
