"""One malloc setting both sides of the channel want: socket reads served from the heap.

asyncio reads a socket into a fresh 256 KiB buffer and shrinks it to what
arrived. Above glibc malloc's mmap threshold (128 KiB until the process frees
a larger mmap'ed block, which raises it) each such read costs an mmap, an
mremap and a munmap: ~40 us per frame, measured with ``strace -c``. One 1 MiB
block allocated and freed raises the threshold the way a busier process would
have raised it already; elsewhere it is harmless. The server and the host's
channel client each call :func:`settle_allocator` before their first read.
"""

from __future__ import annotations

import functools

__all__ = ["settle_allocator"]


@functools.cache
def settle_allocator() -> None:
    """Raise glibc's mmap threshold above asyncio's read size (once per process)."""
    block = bytearray(1 << 20)
    del block
