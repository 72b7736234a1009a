"""The message as Postfix will write it (header block, then body), spooled.

Small messages stay in memory; above a threshold the spool moves to an
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
    def __init__(self, threshold: int = THRESHOLD) -> None:
        self._file = tempfile.SpooledTemporaryFile(max_size=threshold, prefix="mattermail-")
        self.size = 0

    def write(self, data: bytes) -> None:
        self._file.write(data)
        self.size += len(data)

    @property
    def on_disk(self) -> bool:
        return bool(getattr(self._file, "_rolled", False))

    @contextmanager
    def view(self) -> Iterator[bytes | mmap.mmap]:
        """The whole message as a bytes-like object with ``find`` and slicing."""
        self._file.flush()
        if not self.on_disk or self.size == 0:
            self._file.seek(0)
            yield self._file.read()
            return
        m = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            yield m
        finally:
            try:
                m.close()
            except BufferError:
                # A caller still holds a view of it; the mapping is released with that view.
                pass

    def read_range(self, start: int, end: int, chunk: int = 64 * 1024) -> Iterator[bytes]:
        """Bytes [start, end) in chunks, read with pread: nothing is mapped or kept."""
        self._file.flush()
        if not self.on_disk:
            self._file.seek(start)
            for i in range(start, end, chunk):
                yield self._file.read(min(chunk, end - i))
            return
        fd = self._file.fileno()
        for i in range(start, end, chunk):
            yield os.pread(fd, min(chunk, end - i), i)

    def close(self) -> None:
        self._file.close()
