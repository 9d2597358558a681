"""The build context: a tar of the Dockerfile, the wheelhouse and the source (deterministic).

Entries are sorted, owned by root, dated 1970 and given fixed modes (0644 files,
0755 directories), so the same inputs give the same layer whatever the files'
mtimes or permissions on the host (the source tag ignores those too).

The source lands under ``code/<source id>/`` with a ``code/current`` symlink to
it. When the image's Python is the host's (same implementation and minor
version, hence the same byte code format), each module is compiled here into
a hash-checked ``.pyc`` (PEP 552: valid whatever the file dates), which saves
the image a ``compileall`` step.
"""

from __future__ import annotations

import importlib.util
import io
import py_compile
import sys
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from openhands_rt.errors import SandboxBuildError
from openhands_rt.image.dockerfile import CODE_ROOT, CONTEXT_CODE, CONTEXT_WHEELS
from openhands_rt.image.tags import SourceFile, source_files

__all__ = ["build_context", "can_compile_for"]


def can_compile_for(implementation: str, version: Sequence[int]) -> bool:
    """True when byte code compiled by this interpreter loads in the image's."""
    return (
        implementation == sys.implementation.name == "cpython"
        and tuple(version[:2]) == (sys.version_info[:2])
    )


def _info(
    name: str, *, kind: bytes = tarfile.REGTYPE, size: int = 0, link: str = ""
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = 0o755 if kind in (tarfile.DIRTYPE, tarfile.SYMTYPE) else 0o644
    info.size = size
    info.linkname = link
    info.mtime = 0
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def _compiled(file: SourceFile, in_image: str, scratch: Path) -> bytes:
    target = scratch / "module.pyc"
    try:
        py_compile.compile(
            str(file.path),
            cfile=str(target),
            dfile=in_image,
            doraise=True,
            invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH,
        )
    except py_compile.PyCompileError as exc:
        raise SandboxBuildError(f"cannot compile {file.relative}: {exc.msg}") from exc
    return target.read_bytes()


def build_context(
    dockerfile: str,
    *,
    source_dirs: Sequence[Path] = (),
    source_id: str = "",
    wheel_files: Sequence[Path] = (),
    precompile: bool = False,
) -> bytes:
    """The context tar's bytes (blocking: reads every file; call it in a worker thread).

    ``precompile`` adds byte code for this interpreter next to every ``.py`` file
    (see :func:`can_compile_for`); a module that does not compile raises
    :class:`SandboxBuildError` naming it.
    """
    entries: list[tuple[str, Path | bytes]] = [("Dockerfile", dockerfile.encode())]
    entries += [(f"{CONTEXT_WHEELS}/{wheel.name}", wheel) for wheel in sorted(wheel_files)]
    code = f"{CONTEXT_CODE}/{source_id}" if source_id else CONTEXT_CODE
    files = source_files(source_dirs)
    entries += [(f"{code}/{f.relative}", f.path) for f in files]
    if precompile:
        with tempfile.TemporaryDirectory() as scratch:
            for file in files:
                if not file.relative.endswith(".py"):
                    continue
                relative = PurePosixPath(file.relative)
                cached = PurePosixPath(importlib.util.cache_from_source(file.relative))
                in_image = f"{CODE_ROOT}/{source_id}/{relative}"
                entries.append((f"{code}/{cached}", _compiled(file, in_image, Path(scratch))))
    buffer = io.BytesIO()
    written_dirs: set[str] = set()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in sorted(entries, key=lambda entry: entry[0]):
            for parent in reversed(PurePosixPath(name).parents[:-1]):
                if str(parent) not in written_dirs:
                    written_dirs.add(str(parent))
                    tar.addfile(_info(str(parent), kind=tarfile.DIRTYPE))
            data = content if isinstance(content, bytes) else content.read_bytes()
            tar.addfile(_info(name, size=len(data)), io.BytesIO(data))
        if source_id:
            tar.addfile(_info(f"{CONTEXT_CODE}/current", kind=tarfile.SYMTYPE, link=source_id))
    return buffer.getvalue()
