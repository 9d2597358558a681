"""Streamed tar upload and download, and directory listings.

Pure of aiohttp: uploads arrive as an async iterator of byte chunks, downloads
leave as one. Nothing holds a whole file (or archive) in memory: a worker
thread runs :mod:`tarfile` in stream mode and exchanges bounded chunks with
the event loop.

Modules, one concept each:

* :mod:`~container_server.transfer.limits` — the member/expansion limits,
  :class:`TransferError` and the checks of a member's name;
* :mod:`~container_server.transfer.inflate` — the upload's bytes as a blocking
  file object, gzip/bzip2/xz inflated under the compression-bomb guard;
* :mod:`~container_server.transfer.tar_in` — :func:`extract_tar_stream`, the
  safe extraction of an upload;
* :mod:`~container_server.transfer.tar_out` — :func:`tar_stream`, a download
  produced as fast as it is consumed;
* :mod:`~container_server.transfer.listing` — :func:`list_dir` and
  :class:`DirEntry`.

Errors: :class:`TransferError` (a :class:`~container_server.errors.ServerError`
and a ``ValueError``) for an upload that is refused.

The names are imported on first use (PEP 562): the server's start (and its
first action) needs none of :mod:`tarfile`, bz2 or lzma.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from events.lazy import lazy_exports

if TYPE_CHECKING:
    from container_server.transfer.limits import (
        DEFAULT_MAX_EXPANSION_RATIO,
        DEFAULT_MAX_MEMBERS,
        EXPANSION_SLACK_BYTES,
        TransferError,
    )
    from container_server.transfer.listing import DirEntry, list_dir
    from container_server.transfer.tar_in import extract_tar_stream
    from container_server.transfer.tar_out import tar_stream

__all__ = [
    "DEFAULT_MAX_EXPANSION_RATIO",
    "DEFAULT_MAX_MEMBERS",
    "EXPANSION_SLACK_BYTES",
    "DirEntry",
    "TransferError",
    "extract_tar_stream",
    "list_dir",
    "tar_stream",
]

_HOMES = {
    "DEFAULT_MAX_EXPANSION_RATIO": "container_server.transfer.limits",
    "DEFAULT_MAX_MEMBERS": "container_server.transfer.limits",
    "EXPANSION_SLACK_BYTES": "container_server.transfer.limits",
    "TransferError": "container_server.transfer.limits",
    "DirEntry": "container_server.transfer.listing",
    "list_dir": "container_server.transfer.listing",
    "extract_tar_stream": "container_server.transfer.tar_in",
    "tar_stream": "container_server.transfer.tar_out",
}


__getattr__, __dir__ = lazy_exports(globals(), _HOMES)
