"""One way to replace a file so a crash leaves either the old or the new content, never a mix.

Temp file in the same directory (``O_EXCL``, never following a symlink), exact mode (and group),
write, fsync, rename over the target, fsync the directory so the rename itself is durable. Used
for the store's raw messages, DKIM keys, Dovecot's passwd-file, Postfix's sender login map and
``mattermailctl postfix configure``'s tables.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import secrets
from pathlib import Path


def sync_dir(directory: Path) -> None:
    """fsync a directory: makes the renames done in it durable."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_libc: ctypes.CDLL | None = None


def sync_filesystem(path: Path) -> None:
    """syncfs(2) the file system holding ``path``: every file written on it so far, and every rename,
    is on disk when this returns (one flush for a batch of files instead of an fsync per file and per
    directory). Raises OSError when the kernel reports a write-back error (Linux >= 5.8) or has no syncfs."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if _libc.syncfs(fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"syncfs {path}: {os.strerror(err)}")
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes | str, mode: int = 0o644, gid: int | None = None,
                 sync_directory: bool = True, sync_file: bool = True) -> Path:
    """Replace ``path`` with ``data`` durably; returns ``path``.

    ``mode`` is set exactly (whatever the umask); ``gid`` changes the group (None keeps it).
    ``sync_directory=False`` leaves the directory fsync to the caller (:func:`sync_dir`), for
    callers that write many files into a few directories before one commit; ``sync_file=False``
    (with ``sync_directory=False``) leaves both to one :func:`sync_filesystem` of the caller's.
    """
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    tmp = path.with_name(f".tmp-{path.name}.{secrets.token_hex(6)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask may have narrowed it; make it exact
            if gid is not None:
                os.fchown(fd, -1, gid)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if sync_file:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if sync_directory:
        sync_dir(path.parent)
    return path
