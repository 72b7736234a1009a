"""One way to replace a file so a crash leaves either the old or the new content, never a mix.

Temp file in the same directory (``O_EXCL``, never following a symlink), exact mode (and group),
write, fsync, rename over the target, fsync the directory so the rename itself is durable. Used
for the store's raw messages, DKIM keys, Dovecot's passwd-file, Postfix's sender login map and
``mattermailctl postfix configure``'s tables.
"""

from __future__ import annotations

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


def write_atomic(path: Path, data: bytes | str, mode: int = 0o644, gid: int | None = None,
                 sync_directory: bool = True) -> Path:
    """Replace ``path`` with ``data`` durably; returns ``path``.

    ``mode`` is set exactly (whatever the umask); ``gid`` changes the group (None keeps it).
    ``sync_directory=False`` leaves the directory fsync to the caller (:func:`sync_dir`), for
    callers that write many files into a few directories before one commit.
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
