"""The limits an upload is held to, and the checks of a member's name.

An upload is refused, with :class:`TransferError`, when it has more than
``max_members`` members (each is an inode, and the reply lists them all), or
when, once past ``EXPANSION_SLACK_BYTES`` of output, it expands more than
``max_expansion_ratio`` times its compressed size (a compression bomb). A
member's name is refused when it is absolute, holds a NUL byte or has a ``..``
component; nothing is ever written outside the destination.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from container_server.errors import ServerError

if TYPE_CHECKING:
    import tarfile

__all__ = [
    "COPY_BYTES",
    "DEFAULT_MAX_EXPANSION_RATIO",
    "DEFAULT_MAX_MEMBERS",
    "EXPANSION_SLACK_BYTES",
    "TransferError",
    "member_kind",
    "member_path",
    "within",
]

#: Bytes copied per read or write, between the stream and the disk.
COPY_BYTES: Final = 256 * 1024
#: Members an upload may have (each is an inode; the reply lists them all).
DEFAULT_MAX_MEMBERS: Final = 100_000
#: Decompressed bytes per compressed byte an upload may reach. Source trees compress
#: 3-20 times; a gzip bomb reaches ~1000, bzip2 and xz bombs far more.
DEFAULT_MAX_EXPANSION_RATIO: Final = 200.0
#: Output below this size is never refused for its ratio (small archives of zeros are fine).
EXPANSION_SLACK_BYTES: Final = 64 * 1024 * 1024


class TransferError(ServerError, ValueError):
    """An upload was refused: not a tar stream, or a member that is not safe to extract."""


def within(root: str, path: str) -> bool:
    """Whether ``path`` (normalised, absolute) is ``root`` or below it."""
    return root == "/" or path == root or path.startswith(root + "/")


def member_path(name: str) -> str:
    """The member's path relative to the destination ("" for the destination itself)."""
    if "\x00" in name:
        raise TransferError(f"refused member {name!r}: NUL byte in its name")
    if name.startswith("/"):
        raise TransferError(f"refused member {name!r}: absolute path")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise TransferError(f"refused member {name!r}: '..' in its path")
    return "/".join(parts)


def member_kind(member: tarfile.TarInfo) -> str:
    """The kind of a member that is refused for its type, in words."""
    if member.ischr():
        return "character device"
    if member.isblk():
        return "block device"
    if member.isfifo():
        return "FIFO"
    if member.issparse():
        return "sparse file"
    return f"type {member.type!r}"
