"""API tokens for mattermail-web: ``Authorization: Bearer TOKEN``.

A token is 32 random bytes (``mmt_`` + URL-safe base64); the store keeps only its SHA-256, so a copy of the
database does not hand out access. A token belongs to a user (a login) and has a scope: ``read`` (every GET)
or ``write`` (also refile). Revoked tokens stay listed (who had access, when last used).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from dataclasses import dataclass

from mattermail.store.engine import Store, UserError, normalise_address

SCOPES = ("read", "write")
PREFIX = "mmt_"
# last_used is written at most this often per token (a busy client does not write on every request)
LAST_USED_GRANULARITY = 60.0


@dataclass(frozen=True)
class Token:
    id: int
    login: str
    scope: str
    created: float
    last_used: float | None
    revoked: float | None

    def allows(self, scope: str) -> bool:
        return self.scope == "write" or scope == "read"


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8", "surrogateescape")).hexdigest()


_COLS = "id, login, scope, created, last_used, revoked"


def create_token(store: Store, login: str, scope: str = "read") -> tuple[Token, str]:
    """A new token for ``login`` (an existing user); returns it and the secret (shown once, never stored)."""
    login = normalise_address(login)
    if scope not in SCOPES:
        raise UserError(f"--scope: {scope!r} is not one of {', '.join(SCOPES)}")
    if store.db.execute("SELECT 1 FROM users WHERE login = ?", [login]).fetchone() is None:
        raise UserError(f"--user: no such user: {login} (add it with 'mattermailctl user add')")
    secret = PREFIX + secrets.token_urlsafe(32)
    now = time.time()
    tid = store.db.insert("INSERT INTO api_tokens (login, scope, token_hash, created) VALUES (?, ?, ?, ?)",
                          [login, scope, _hash(secret), now])
    return Token(tid, login, scope, now, None, None), secret


def list_tokens(store: Store, login: str | None = None) -> list[Token]:
    sql = f"SELECT {_COLS} FROM api_tokens"
    params: list[object] = []
    if login is not None:
        sql += " WHERE login = ?"
        params.append(normalise_address(login))
    return [Token(*r) for r in store.db.execute(sql + " ORDER BY id", params)]


def revoke_token(store: Store, token_id: int) -> Token:
    row = store.db.execute(f"SELECT {_COLS} FROM api_tokens WHERE id = ?", [token_id]).fetchone()
    if row is None:
        raise UserError(f"ID: no token {token_id}")
    if row[5] is None:
        store.db.execute("UPDATE api_tokens SET revoked = ? WHERE id = ?", [time.time(), token_id])
    return Token(*row[:5], row[5] or time.time())


def authenticate_token(store: Store, secret: str) -> Token | None:
    """The live token whose secret this is, its last use recorded; else None. A token made before its user was
    removed and added again is dead (it belonged to the old user)."""
    if not secret.startswith(PREFIX):
        return None
    row = store.db.execute(
        f"SELECT {', '.join('t.' + c.strip() for c in _COLS.split(','))} FROM api_tokens t "
        "JOIN users u ON u.login = t.login WHERE t.token_hash = ? AND t.revoked IS NULL AND t.created >= u.created", [_hash(secret)]).fetchone()
    if row is None:
        return None
    token = Token(*row)
    now = time.time()
    if token.last_used is None or now - token.last_used >= LAST_USED_GRANULARITY:
        store.db.execute("UPDATE api_tokens SET last_used = ? WHERE id = ?", [now, token.id])
    return token
