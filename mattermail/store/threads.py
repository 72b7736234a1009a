"""Thread keys: the Message-IDs (and subject keys) of stored messages, and which matters they are filed to.

Table ``thread_keys`` (migration 9): one row per (message, kind, key). Kinds:

* ``msgid`` — the message's own ``Message-ID`` header, normalised
  (mattermail/msgid.py); for a capture copy also the id the milter saw at
  submission (``envelopes.message_id``), when it differs.
* ``subject`` — its subject key (reply/forward prefixes stripped), for the
  subject-only fallback rule (``router.thread_subject``).

Written in the filing transaction (router/filing.py), so a message filed
earlier in the same batch or import is found by the next one. Portable SQL
only (plain SELECT/INSERT with ``?`` placeholders): the PostgreSQL backend
runs the same statements.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from mattermail.store.engine import Store

__all__ = ["KINDS", "ThreadHit", "record_thread_keys", "thread_filings"]

KINDS = ("msgid", "subject")


@dataclass(frozen=True)
class ThreadHit:
    """A stored message with the key asked for, and one matter it is filed to."""

    matter: str
    message: int
    sha256: str


def record_thread_keys(store: Store, message: int, keys: Iterable[tuple[str, str]], fresh: bool = False) -> int:
    """Record (kind, key) pairs for ``message`` (each once; a redelivery adds none); inside the caller's
    transaction. Returns how many rows were added. ``fresh``: the caller inserted the message in this
    transaction, so every key is new: one multi-row INSERT sent later (``db.defer``, on PostgreSQL with the
    next statement)."""
    added = 0
    for kind, key in dict.fromkeys(keys):
        if kind not in KINDS:
            raise ValueError(f"thread key kind: {kind!r}")
        if not key:
            continue
        sql = ("INSERT INTO thread_keys (message, kind, key) SELECT ?, ?, ? WHERE NOT EXISTS "  # inserted unless there
               "(SELECT 1 FROM thread_keys WHERE kind = ? AND key = ? AND message = ?)")
        values = [message, kind, key, kind, key, message]
        if fresh:
            store.db.defer("INSERT INTO thread_keys (message, kind, key) VALUES (?, ?, ?)", [message, kind, key],
                           merge=True)
            added += 1
        else:
            added += store.db.execute(sql, values).rowcount
    return added


def thread_filings(store: Store, kind: str, key: str, limit: int = 50) -> list[ThreadHit]:
    """The matters the stored messages with this key are filed to: the most recently stored message first,
    each message's matters in the order they were filed."""
    rows = store.db.execute(
        "SELECT f.matter, f.message, m.sha256 FROM thread_keys k JOIN filings f ON f.message = k.message "
        "JOIN messages m ON m.id = k.message WHERE k.kind = ? AND k.key = ? AND f.matter IS NOT NULL "
        "ORDER BY k.message DESC, f.id LIMIT ?", [kind, key, limit]).fetchall()
    return [ThreadHit(r[0], int(r[1]), r[2]) for r in rows]
