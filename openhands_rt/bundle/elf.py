"""The shared libraries ELF files need, as the host's dynamic loader resolves them.

:func:`parse_ldd` is pure (``ldd``'s text in, one :class:`Needed` per library
out); :func:`resolve` runs ``ldd`` on a batch of files. The host loader's
answer is the one that counts: the bundle runs its binaries through a copy of
that same loader, with the bundle's ``lib/`` as the only library path.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from openhands_rt.bundle.errors import BundleError

__all__ = ["Needed", "parse_ldd", "resolve"]

#: The kernel maps this one into every process; there is no file to copy.
_VIRTUAL = ("linux-vdso.so", "linux-gate.so")
_ARROW = re.compile(r"^\s*(?P<name>\S+)\s+=>\s+(?P<path>.*?)\s*(?:\(0x[0-9a-fA-F]+\))?\s*$")
_PLAIN = re.compile(r"^\s*(?P<path>/\S+)\s+\(0x[0-9a-fA-F]+\)\s*$")
_STATIC = ("not a dynamic executable", "statically linked")


@dataclass(frozen=True)
class Needed:
    """One library a file needs: its name (soname) and where the host has it (None: not found).

    ``loader`` marks the dynamic loader itself (``ld-linux-x86-64.so.2``).
    """

    name: str
    path: str | None
    loader: bool = False


def parse_ldd(text: str, files: Sequence[str]) -> dict[str, list[Needed]]:
    """``ldd FILE...``'s output → file → the libraries it needs (static files: none).

    With one file ``ldd`` prints its libraries only; with several, a ``FILE:``
    line before each file's. Lines are ``name => /path (0x…)``, ``name => not
    found``, ``/lib64/ld-linux-x86-64.so.2 (0x…)`` (the loader) or
    ``linux-vdso.so.1 (0x…)`` (skipped).
    """
    result: dict[str, list[Needed]] = {file: [] for file in files}
    current = files[0] if len(files) == 1 else None
    for line in text.splitlines():
        if not line.strip():
            continue
        if len(files) > 1 and not line[0].isspace() and line.rstrip().endswith(":"):
            current = line.rstrip()[:-1]
            if current not in result:
                raise BundleError(f"ldd named a file it was not given: {current!r}")
            continue
        if current is None:
            raise BundleError(f"cannot read ldd's output: {line!r} before any file")
        stripped = line.strip()
        if any(marker in stripped for marker in _STATIC):
            continue
        if stripped.startswith(_VIRTUAL):
            continue
        arrow = _ARROW.match(line)
        if arrow is not None:
            name, path = arrow["name"], arrow["path"]
            if path == "not found":
                result[current].append(Needed(name, None))
            elif path:
                loader = name.startswith(("ld-linux", "/"))
                result[current].append(Needed(Path(name).name, path, loader=loader))
            else:
                # "name => (0x…)": the kernel's virtual library under another name.
                continue
            continue
        plain = _PLAIN.match(line)
        if plain is not None:
            result[current].append(Needed(Path(plain["path"]).name, plain["path"], loader=True))
            continue
        raise BundleError(f"cannot read ldd's output: {line!r}")
    return result


def resolve(files: Sequence[Path]) -> dict[str, list[Needed]]:
    """Run ``ldd`` on ``files`` (absolute paths) → :func:`parse_ldd`'s answer.

    ``ldd`` exits 1 when one of the files is not dynamic, and prints why for
    that file; its output is what decides.
    """
    names = [str(file) for file in files]
    if not names:
        return {}
    try:
        done = subprocess.run(
            ["ldd", *names], capture_output=True, text=True, check=False, timeout=120
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BundleError(f"cannot run ldd (part of the host's libc): {exc}") from exc
    if done.returncode not in (0, 1) or (done.returncode == 1 and not done.stdout):
        raise BundleError(f"ldd failed ({done.returncode}): {done.stderr.strip()}")
    # ldd reports "not a dynamic executable" on stderr; the files are named on stdout.
    return parse_ldd(done.stdout, names)
