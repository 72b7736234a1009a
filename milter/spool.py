"""The message as Postfix will write it (header block, then body), spooled.

Small messages stay in memory, as a list of the chunks Postfix sent, joined
once when the message is complete; above a threshold the spool moves to an
unlinked temp file, and :meth:`MessageSpool.view` maps it (``mmap``) instead
of reading it, so a 25 MB message costs the milter page cache, not heap.
"""

from __future__ import annotations

import mmap
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

THRESHOLD = 1024 * 1024


class MessageSpool:
    __slots__ = ("_threshold", "_chunks", "_joined", "_file", "size")

    def __init__(self, threshold: int = THRESHOLD) -> None:
        self._threshold = threshold
        self._chunks: list[bytes] = []
        self._joined: bytes | None = None  # the in-memory chunks, joined once
        self._file = None  # the temp file, once the spool is over the threshold
        self.size = 0

    def write(self, data: bytes) -> None:
        if self._file is not None:
            self._file.write(data)
        else:
            if self._joined is not None:
                self._chunks, self._joined = [self._joined], None
            self._chunks.append(data)
            if self.size + len(data) > self._threshold:
                self._roll()
        self.size += len(data)

    def _roll(self) -> None:
        f = tempfile.TemporaryFile(prefix="mattermail-")
        f.writelines(self._chunks)
        self._chunks = []
        self._file = f

    def _memory(self) -> bytes:
        if self._joined is None:
            self._joined = b"".join(self._chunks)
            self._chunks = []
        return self._joined

    @contextmanager
    def view(self) -> Iterator[bytes | mmap.mmap]:
        """The whole message as a bytes-like object with ``find`` and slicing."""
        if self._file is None or self.size == 0:
            yield self._memory() if self._file is None else b""
            return
        self._file.flush()
        m = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            yield m
        finally:
            try:
                m.close()
            except BufferError:
                # A caller still holds a view of it; the mapping is released with that view.
                pass

    def read_range(self, start: int, end: int, chunk: int = 64 * 1024) -> Iterator[bytes | memoryview]:
        """Bytes [start, end) in chunks: slices of the in-memory message (no copy), or
        read with pread from the temp file (nothing is mapped or kept)."""
        if self._file is None:
            mv = memoryview(self._memory())
            for i in range(start, end, chunk):
                yield mv[i:min(i + chunk, end)]
            return
        self._file.flush()
        fd = self._file.fileno()
        for i in range(start, end, chunk):
            yield os.pread(fd, min(chunk, end - i), i)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self._chunks, self._joined = [], None
