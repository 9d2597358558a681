"""The three runtime-image tags: version, lock and source (pure: reads the given files only).

- version tag ``oh_v{version}_{tag_safe_base_name(base_image)}``
- lock tag    ``oh_v{version}_{md5(base_image + lock file bytes)[:16]}``
- source tag  ``{lock tag}_{dir_hash(source dirs)[:16]}``

The same base image, lock files and source give the same tags on any machine, in
any process, whatever the files' mtimes, permissions or creation order.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "BASE_NAME_MAX_CHARS",
    "ImageTags",
    "SourceFile",
    "compute_tags",
    "default_version",
    "dir_hash",
    "lock_hash",
    "source_files",
    "tag_safe_base_name",
]

#: Docker tags are at most 128 characters; "oh_v{version}_" keeps well inside the rest.
BASE_NAME_MAX_CHARS = 96

_UNSAFE_TAG_CHARS = re.compile(r"[^a-z0-9_.-]")
_UNSAFE_VERSION_CHARS = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class ImageTags:
    """The three tags of one runtime image, most general first."""

    version_tag: str
    lock_tag: str
    source_tag: str


@dataclass(frozen=True)
class SourceFile:
    """One file of the source tree: where it goes (``relative``, POSIX) and where it is."""

    relative: str
    path: Path


def tag_safe_base_name(base_image: str) -> str:
    """Turn an image reference into the tail of a Docker tag.

    Lowercased; ``/`` → ``_s_``; ``:`` → ``_t_``; any other character outside
    ``[a-z0-9_.-]`` (the ``@`` of a digest, ``+``, spaces, non-ASCII) → ``_``;
    then cut to its last 96 characters (the end of a reference is its most
    specific part: the tag or digest).

    >>> tag_safe_base_name("nikolaik/python-nodejs:python3.12-nodejs22")
    'nikolaik_s_python-nodejs_t_python3.12-nodejs22'
    """
    name = base_image.lower().replace("/", "_s_").replace(":", "_t_")
    name = _UNSAFE_TAG_CHARS.sub("_", name)
    return name[-BASE_NAME_MAX_CHARS:]


def _is_ignored(name: str) -> bool:
    return name.startswith(".") or name == "__pycache__" or name.endswith(".pyc")


def source_files(dirs: Iterable[Path]) -> list[SourceFile]:
    """Every file of the source trees, sorted by relative path, ignored entries left out.

    A file's relative path starts with its source directory's own name
    (``events/models.py``), never with where that directory lives. Ignored:
    hidden entries (a name starting with ``.``, files and directories alike),
    ``__pycache__`` directories and ``*.pyc`` files. Symlinks to files count as the
    file they point to; symlinked directories are not descended into. Two source
    directories with the same name raise ValueError (their files would collide).
    """
    files: list[SourceFile] = []
    roots: dict[str, Path] = {}
    for directory in dirs:
        root = Path(directory)
        if not root.is_dir():
            raise ValueError(f"source directory {root} does not exist or is not a directory")
        if root.name in roots:
            raise ValueError(f"source directories {roots[root.name]} and {root} share a name")
        roots[root.name] = root
        for current, subdirs, names in os.walk(root):
            subdirs[:] = [d for d in subdirs if not _is_ignored(d)]
            here = Path(current)
            prefix = here.relative_to(root.parent).as_posix()
            files.extend(
                SourceFile(f"{prefix}/{name}", here / name)
                for name in names
                if not _is_ignored(name) and (here / name).is_file()
            )
    files.sort(key=lambda f: os.fsencode(f.relative))
    return files


def dir_hash(dirs: Sequence[Path]) -> str:
    """32-hex MD5 over the source trees in ``dirs`` (see :func:`source_files`).

    The exact bytes hashed, for each file in order of its relative path's bytes::

        b"F\\0" + relative_path + b"\\0" + decimal_size + b"\\0" + content

    ``relative_path`` is the file system encoding of the POSIX relative path (it
    can hold no NUL byte) and ``decimal_size`` is ``len(content)`` in ASCII
    decimal, so no path/content boundary can be confused with another. Only
    names and bytes are read: mtimes, permissions, owners and creation order do
    not enter; empty directories do not either.
    """
    digest = hashlib.md5(usedforsecurity=False)
    for file in source_files(dirs):
        content = file.path.read_bytes()
        digest.update(b"F\0" + os.fsencode(file.relative) + b"\0")
        digest.update(str(len(content)).encode("ascii") + b"\0")
        digest.update(content)
    return digest.hexdigest()


def lock_hash(base_image: str, lock_files: Sequence[Path]) -> str:
    """``md5(base_image.encode() + b"".join(f.read_bytes() for f in lock_files))``, 32 hex."""
    digest = hashlib.md5(base_image.encode(), usedforsecurity=False)
    for lock_file in lock_files:
        digest.update(Path(lock_file).read_bytes())
    return digest.hexdigest()


def default_version() -> str:
    """The installed openhands-rt version (the ``version`` part of every tag)."""
    return importlib.metadata.version("openhands-rt")


def compute_tags(
    base_image: str,
    *,
    version: str | None = None,
    lock_files: Sequence[Path],
    source_dirs: Sequence[Path],
) -> ImageTags:
    """The version, lock and source tags for ``base_image`` (the recipe in docs/api.md).

    ``version`` defaults to the installed openhands-rt version.

    A ``version`` holding characters Docker tags cannot carry (a local
    version's ``+``) has them replaced by ``_``; release versions are used as is.
    """
    if version is None:
        version = default_version()
    prefix = "oh_v" + _UNSAFE_VERSION_CHARS.sub("_", version) + "_"
    lock_tag = prefix + lock_hash(base_image, lock_files)[:16]
    return ImageTags(
        version_tag=prefix + tag_safe_base_name(base_image),
        lock_tag=lock_tag,
        source_tag=lock_tag + "_" + dir_hash(source_dirs)[:16],
    )
