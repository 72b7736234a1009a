"""HMAC secrets kept in files (capture references, SRS addresses), read once per change.

Shared by the milter and the router; the message of :class:`SecretError`
names the secret and its file.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

MIN_BYTES = 16

_loaded: dict[Path, tuple[tuple[int, ...], bytes]] = {}  # path -> (its stat, the secret read then)
_loaded_lock = threading.Lock()


class SecretError(Exception):
    """A secret file that cannot be used."""


def load(path: Path, what: str = "secret") -> bytes:
    """The secret in ``path`` (surrounding whitespace stripped); read again only when the file changes.

    A ``stat`` per call: any change to the file, its content or its permissions
    (ctime) makes the next call read it again, so an unreadable or removed
    secret fails as before. ``what`` names it in errors ("capture secret").
    """
    try:
        st = os.stat(path)
        stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        hit = _loaded.get(path)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        secret = path.read_bytes().strip()
    except OSError as e:
        raise SecretError(f"cannot read {what} {path}: {e.strerror}") from None
    if len(secret) < MIN_BYTES:
        raise SecretError(f"{what} {path} is shorter than {MIN_BYTES} bytes")
    with _loaded_lock:
        _loaded[path] = (stamp, secret)
    return secret
