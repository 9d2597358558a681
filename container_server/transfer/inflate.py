"""The upload's byte stream as a blocking file object, inflated with a bomb guard.

gzip, bzip2 and xz input is recognised by its magic number (as :mod:`tarfile`
sniffs it) and inflated here, never more than asked for: tarfile's own stream
mode inflates a whole input block at once, and a few KiB of bzip2 can hold
gigabytes. Concatenated streams of one kind (``cat a.gz b.gz``) are read as
one; whatever follows a compressed stream otherwise is not part of it.
"""

from __future__ import annotations

import bz2
import lzma
import zlib
from collections.abc import AsyncIterator
from typing import Final

import anyio.from_thread

from container_server.transfer.limits import COPY_BYTES, EXPANSION_SLACK_BYTES, TransferError

__all__ = ["Inflater", "PullReader", "compression_of"]


class Inflater:
    """One gzip, bzip2 or xz stream, inflated at most ``max_length`` bytes per call.

    zlib hands back the input it did not use (``unconsumed_tail``); bz2 and lzma keep it
    and say ``needs_input``. Output stopped at ``max_length`` may have more behind it, so a
    call that filled it is followed by one without new input.
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._zlib = zlib.decompressobj(wbits=31) if kind == "gzip" else None
        self._other: bz2.BZ2Decompressor | lzma.LZMADecompressor | None = (
            bz2.BZ2Decompressor()
            if kind == "bzip2"
            else lzma.LZMADecompressor()
            if kind == "xz"
            else None
        )
        self._filled = False

    @property
    def eof(self) -> bool:
        if self._zlib is not None:
            return self._zlib.eof
        assert self._other is not None
        return self._other.eof

    @property
    def unused_data(self) -> bytes:
        if self._zlib is not None:
            return self._zlib.unused_data
        assert self._other is not None
        return self._other.unused_data

    @property
    def needs_input(self) -> bool:
        if self._filled:
            return False
        if self._zlib is not None:
            return not self._zlib.unconsumed_tail
        assert self._other is not None
        return self._other.needs_input

    def inflate(self, data: bytes, max_length: int) -> bytes:
        try:
            if self._zlib is not None:
                out = self._zlib.decompress(self._zlib.unconsumed_tail + data, max_length)
            else:
                assert self._other is not None
                out = self._other.decompress(data, max_length)
        except (zlib.error, lzma.LZMAError, OSError, EOFError) as exc:
            raise TransferError(f"not a valid {self.kind} stream: {exc}") from None
        self._filled = len(out) >= max_length
        return out


def compression_of(head: bytes) -> str | None:
    """The compression of a stream starting with ``head`` (>= 10 bytes), as tarfile sniffs it."""
    if head.startswith(b"\x1f\x8b\x08"):
        return "gzip"
    if head[:3] == b"BZh" and head[4:10] == b"1AY&SY":
        return "bzip2"
    if head.startswith((b"\x5d\x00\x00\x80", b"\xfd7zXZ")):
        return "xz"
    return None


_SNIFF_BYTES: Final = 10


class PullReader:
    """A blocking file object (for a worker thread) over an async iterator of chunks.

    gzip, bzip2 and xz input (recognised by its magic number, as tarfile does) is inflated
    here, never more than asked for: tarfile's own stream mode inflates a whole input
    block at once, and a few KiB of bzip2 can hold gigabytes. Output past
    ``EXPANSION_SLACK_BYTES`` that exceeds ``max_ratio`` times the input read so far is
    refused as a compression bomb. ``read(n)`` returns exactly ``n`` bytes until the end.
    """

    def __init__(self, chunks: AsyncIterator[bytes], *, max_ratio: float) -> None:
        self._chunks = chunks
        self._max_ratio = max_ratio
        self._raw = bytearray()  # input not inflated yet
        self._out = bytearray()  # output not read yet
        self._raw_eof = False
        self._done = False
        self._sniffed = False
        self._inflater: Inflater | None = None
        self._compressed = 0  # input bytes received
        self._position = 0  # output bytes read

    async def _next_chunk(self) -> bytes:
        try:
            return await self._chunks.__anext__()
        except StopAsyncIteration:
            return b""

    def _pull(self) -> bool:
        """Append the next input chunk to ``_raw``; False at the end of the input."""
        if self._raw_eof:
            return False
        chunk = anyio.from_thread.run(self._next_chunk)
        if not chunk:
            self._raw_eof = True
            return False
        self._raw += chunk
        self._compressed += len(chunk)
        return True

    def _start(self, *, first: bool) -> None:
        """Look at what comes next: plain tar, a compressed stream, or (after one) the end."""
        while len(self._raw) < _SNIFF_BYTES and self._pull():
            pass
        kind = compression_of(bytes(self._raw[:_SNIFF_BYTES]))
        if first:
            self._inflater = None if kind is None else Inflater(kind)
        elif kind is not None and self._inflater is not None and kind == self._inflater.kind:
            self._inflater = Inflater(kind)  # concatenated streams, as `cat a.gz b.gz` makes
        else:
            self._done = True  # what follows a compressed stream is not part of it
        self._sniffed = True

    def _fill(self, want: int) -> None:
        """Add up to ``want`` bytes to ``_out``, or set ``_done``."""
        if not self._sniffed:
            self._start(first=True)
            if self._done:
                return
        inflater = self._inflater
        if inflater is None:  # plain tar
            if self._raw or self._pull():
                self._out += self._raw
                self._raw.clear()
            else:
                self._done = True
            return
        if inflater.eof:
            self._raw[:0] = inflater.unused_data
            self._start(first=False)
            return
        data = b""
        if inflater.needs_input:
            if not self._raw and not self._pull():
                raise TransferError(f"the {inflater.kind} stream ends early (a truncated upload?)")
            data = bytes(self._raw)
            self._raw.clear()
        self._out += inflater.inflate(data, want)

    def read(self, size: int = -1) -> bytes:
        while not self._done and (size < 0 or len(self._out) < size):
            self._fill(COPY_BYTES if size < 0 else max(size - len(self._out), 1))
        if size < 0 or size >= len(self._out):
            data = bytes(self._out)
            self._out.clear()
        else:
            data = bytes(self._out[:size])
            del self._out[:size]
        self._position += len(data)
        if (
            self._position > EXPANSION_SLACK_BYTES
            and self._position > self._max_ratio * self._compressed
        ):
            raise TransferError(
                f"refused: {self._compressed} bytes of upload expanded to {self._position} "
                f"bytes so far, over {self._max_ratio:g} times (a compression bomb?); "
                "send it uncompressed"
            )
        return data

    def write(self, b: bytes, /) -> int:
        raise OSError("read-only stream")

    def tell(self) -> int:
        return self._position

    def seek(self, pos: int, /) -> int:
        raise OSError("stream is not seekable")

    def close(self) -> None:
        self._raw.clear()
        self._out.clear()
