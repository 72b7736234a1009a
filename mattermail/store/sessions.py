"""Web sign-in sessions of mattermail-web: the cookie holds a random value, the store its SHA-256.

Each session has its own CSRF token (every form posts it back). Signing out or expiry removes the row.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from mattermail.store.engine import Store


@dataclass(frozen=True)
class WebSession:
    login: str
    csrf: str
    expires: float


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()


def create_session(store: Store, login: str, hours: int) -> tuple[str, WebSession]:
    """A new session for ``login``: returns the cookie value (not stored) and the session."""
    value = secrets.token_urlsafe(32)
    now = time.time()
    s = WebSession(login, secrets.token_urlsafe(24), now + hours * 3600)
    store.db.execute("DELETE FROM web_sessions WHERE expires < ?", [now])
    store.db.execute("INSERT INTO web_sessions (session_hash, login, csrf, created, expires) VALUES (?, ?, ?, ?, ?)",
                     [_hash(value), s.login, s.csrf, now, s.expires])
    return value, s


def session_for(store: Store, value: str) -> WebSession | None:
    """The live session of this cookie value whose user still exists; None otherwise."""
    row = store.db.execute("SELECT s.login, s.csrf, s.expires FROM web_sessions s JOIN users u ON u.login = s.login "
                           "WHERE s.session_hash = ? AND s.expires > ? AND s.created >= u.created", [_hash(value), time.time()]).fetchone()
    return WebSession(*row) if row else None


def end_session(store: Store, value: str) -> None:
    store.db.execute("DELETE FROM web_sessions WHERE session_hash = ?", [_hash(value)])
