"""Which interpreter a runtime bundle carries, and what it says about itself.

The bundle runs the server's packages as installed in this environment, so
its interpreter must be of the running interpreter's version (major.minor:
the same bytecode and extension-module ABI). Where the system has one of that
version at ``/usr/bin/python3.X`` it is preferred: distributions build it
with profile-guided and link-time optimization and with most extension
modules compiled in, which starts the server measurably faster than an
interpreter built without them (pyenv's default build: 18 % more CPU for the
server's imports here). A runtime image's interpreter is the base image's own
system one, so this also keeps mount mode's start on a par with build mode's.
``OPENHANDS_RT_BUNDLE_PYTHON`` names another one.

What a bundle needs of it (its version, standard library and the
site-packages directory its ``site`` module would add for a prefix) is asked
of the interpreter itself, run once with ``-I -S``.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from openhands_rt.bundle.errors import BundleError

__all__ = ["PYTHON_VARIABLE", "Interpreter", "find_interpreter", "query_interpreter"]

PYTHON_VARIABLE = "OPENHANDS_RT_BUNDLE_PYTHON"
# A prefix no real path has: the site directories are reported relative to it.
_PROBE_PREFIX = "/openhands-rt-probe-prefix"
_QUERY = (
    "import json, site, sys, sysconfig; print(json.dumps({"
    "'version': sys.version, 'short': '%d.%d' % sys.version_info[:2], "
    "'stdlib': sysconfig.get_path('stdlib'), "
    f"'site': site.getsitepackages([{_PROBE_PREFIX!r}])}}))"
)


@dataclass(frozen=True)
class Interpreter:
    """An interpreter to bundle: its binary (real path) and what it reported."""

    path: Path
    version: str  # sys.version
    short: str  # "3.11"
    stdlib: Path
    #: Where its ``site`` looks for packages under a prefix, relative to the prefix.
    site: str


def _site_under_lib(candidates: list[str]) -> str | None:
    for candidate in candidates:
        relative = PurePosixPath(candidate).relative_to(_PROBE_PREFIX)
        if relative.parts[:1] == ("lib",):
            return relative.as_posix()
    return None


@functools.cache
def query_interpreter(path: Path) -> Interpreter:
    """Ask the interpreter at ``path`` what a bundle needs to know (:class:`BundleError`
    when it cannot be run or answers nonsense). Asked once per process: every
    :func:`~openhands_rt.bundle.make_bundle` call, finding its bundle made, needs it."""
    real = path.resolve()
    try:
        done = subprocess.run(
            [str(real), "-I", "-S", "-c", _QUERY],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        answer = json.loads(done.stdout)
        site = _site_under_lib([str(s) for s in answer["site"]])
        if site is None:
            raise ValueError(f"no site-packages directory under lib/: {answer['site']}")
        return Interpreter(
            path=real,
            version=str(answer["version"]),
            short=str(answer["short"]),
            stdlib=Path(answer["stdlib"]),
            site=site,
        )
    except (OSError, subprocess.SubprocessError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"cannot use {path} as the bundle's interpreter: {exc}") from exc


def find_interpreter(explicit: Path | None = None) -> Interpreter:
    """The interpreter to bundle (see the module docstring).

    ``explicit``, else ``$OPENHANDS_RT_BUNDLE_PYTHON``, must be of the running
    version; otherwise the system's ``/usr/bin/python3.X`` when it is, else
    the running interpreter.
    """
    short = f"{sys.version_info.major}.{sys.version_info.minor}"
    named = explicit or (
        Path(os.environ[PYTHON_VARIABLE]) if os.environ.get(PYTHON_VARIABLE) else None
    )
    if named is not None:
        chosen = query_interpreter(named)
        if chosen.short != short:
            raise BundleError(
                f"{named} is Python {chosen.short}; the bundle needs {short}, the version "
                "whose packages it carries"
            )
        return chosen
    system = Path(f"/usr/bin/python{short}")
    if os.access(system, os.X_OK):
        try:
            found = query_interpreter(system)
        except BundleError:
            pass  # unusable (a broken install): the running interpreter will do
        else:
            if found.short == short:
                return found
    return query_interpreter(Path(sys.executable))
