"""The records chain: an append-only, hash-linked log of every stored message and every filing change.

Each entry's ``hash`` is the SHA-256 of the canonical JSON array
``[prev_hash, seq, kind, actor, message, sha256, detail, time]`` (``detail``: the event's canonical JSON
text — sorted keys, no blanks, ASCII; ``time``: ``repr`` of the float), so changing, removing or reordering
any entry breaks every hash after it. The first entry's ``prev_hash`` is :data:`GENESIS`.

Kinds: ``stored`` (a new messages row: its SHA-256), ``filed`` (a filings row: matter, person, rule,
recipient, detail), ``unfiled`` / ``personal`` (the router kept a message filed nowhere / as a personal
copy, per recipient), ``refiled`` (filings replaced: ``from`` and ``to``), ``deleted`` (message and its
filings removed; the entry keeps its SHA-256), ``hold`` / ``release`` (a matter's legal hold).

Entries are written in the transaction of the change they record (:func:`append`); one writer at a time
reads the head and appends ``seq + 1`` (SQLite: inside ``BEGIN IMMEDIATE``; PostgreSQL: after taking the
transaction-level advisory lock :data:`PG_CHAIN_LOCK` (once per transaction), held to the commit, so the
next writer reads the head this one committed). A transaction keeps the head it appended last,
``db.chain_head``, and reads it from the table only once (forgotten when a savepoint is rolled back). ``seq`` is the primary key: two writers can never both append the same number. Triggers refuse UPDATE and DELETE on the table; someone
with the file can drop them, which is what :func:`mattermail.store.verify.verify` finds.

This module only needs a connection (``db``, connection.py), so the migration that builds the chain of an
existing store (schema.py) uses it too.
"""

from __future__ import annotations

import hashlib
import json
import time as _time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mattermail.store.engine import Store

GENESIS = "0" * 64
# pg_advisory_xact_lock key serialising appends on PostgreSQL (any constant no other lock in the database uses)
PG_CHAIN_LOCK = 0x6D6D_6368  # "mmch"
KINDS = ("stored", "filed", "unfiled", "personal", "refiled", "deleted", "hold", "release")


@dataclass(frozen=True)
class ChainEntry:
    seq: int
    prev_hash: str
    hash: str
    kind: str
    actor: str
    message: int | None
    sha256: str
    detail: str  # canonical JSON text
    time: float

    @property
    def details(self) -> dict[str, Any]:
        try:
            value = json.loads(self.detail)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}

    def expected_hash(self) -> str:
        return entry_hash(self.prev_hash, self.seq, self.kind, self.actor, self.message, self.sha256, self.detail,
                          self.time)


def canonical(detail: Mapping[str, Any] | None) -> str:
    return json.dumps(dict(detail or {}), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def entry_hash(prev: str, seq: int, kind: str, actor: str, message: int | None, sha256: str, detail: str,
               when: float) -> str:
    body = json.dumps([prev, seq, kind, actor, message, sha256, detail, repr(float(when))],
                      separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(body.encode("ascii")).hexdigest()


def create_table(db: Any) -> None:
    """The chain table, its index and the triggers that refuse changes (SQLite migration, schema.py;
    PostgreSQL's are in schema_pg.py)."""
    db.execute("CREATE TABLE chain (seq INTEGER PRIMARY KEY, prev_hash TEXT NOT NULL, hash TEXT NOT NULL, "
               "kind TEXT NOT NULL, actor TEXT NOT NULL, message INTEGER, sha256 TEXT NOT NULL DEFAULT '', "
               "detail TEXT NOT NULL, time REAL NOT NULL)")
    db.execute("CREATE INDEX chain_message ON chain (message)")
    db.execute("CREATE TRIGGER chain_no_update BEFORE UPDATE ON chain BEGIN "
               "SELECT RAISE(ABORT, 'the records chain is append-only'); END")
    db.execute("CREATE TRIGGER chain_no_delete BEFORE DELETE ON chain BEGIN "
               "SELECT RAISE(ABORT, 'the records chain is append-only'); END")


def head_of(db: Any) -> tuple[int, str]:
    """(length = last seq, last hash); (0, GENESIS) for an empty chain."""
    row = db.execute("SELECT seq, hash FROM chain ORDER BY seq DESC LIMIT 1").fetchone()
    return (row[0], row[1]) if row else (0, GENESIS)


def append_db(db: Any, kind: str, actor: str, message: int | None = None, sha256: str = "",
              detail: Mapping[str, Any] | None = None, when: float | None = None) -> ChainEntry:
    """Append one entry on ``db``; the caller holds the write lock (a transaction)."""
    if kind not in KINDS:
        raise ValueError(f"chain kind: {kind!r}")
    pg = db.engine == "postgresql"
    if pg and not db.chain_locked:
        db.defer("SELECT pg_advisory_xact_lock(?)", [PG_CHAIN_LOCK])  # granted before the head is read
        db.chain_locked, db.chain_head = db.in_transaction, None  # held to the commit (or the savepoint's rollback)
    # the head this transaction left (it holds the lock: nobody else appended since), else read
    seq, prev = (db.chain_head if pg or db.in_transaction else None) or head_of(db)
    seq += 1
    text = canonical(detail)
    t = _time.time() if when is None else float(when)
    h = entry_hash(prev, seq, kind, actor, message, sha256, text, t)
    db.defer("INSERT INTO chain (seq, prev_hash, hash, kind, actor, message, sha256, detail, time) "
             "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", [seq, prev, h, kind, actor, message, sha256, text, t], merge=True)
    if db.chain_locked if pg else db.in_transaction:
        db.chain_head = (seq, h)
    return ChainEntry(seq, prev, h, kind, actor, message, sha256, text, t)


def append(store: Store, kind: str, message: int | None = None, sha256: str = "",
           detail: Mapping[str, Any] | None = None, actor: str | None = None) -> ChainEntry:
    """Append an entry in the caller's transaction (or one of its own); ``actor`` defaults to ``store.actor``."""
    who = actor if actor is not None else store.actor
    if store.in_transaction:
        return append_db(store.db, kind, who, message, sha256, detail)
    from mattermail.store.engine import transaction

    with transaction(store):
        return append_db(store.db, kind, who, message, sha256, detail)


def atomic(store: Store) -> Any:
    """The caller's transaction when one is open, else one of its own: a change and its entry commit together."""
    import contextlib

    from mattermail.store.engine import transaction

    return contextlib.nullcontext() if store.in_transaction else transaction(store)


_COLS = "seq, prev_hash, hash, kind, actor, message, sha256, detail, time"


def _entry(row: tuple) -> ChainEntry:
    return ChainEntry(row[0], row[1], row[2], row[3], row[4], row[5], row[6] or "", row[7], row[8])


def entries(db: Any) -> Any:
    """Every entry, in seq order (an iterator over one query)."""
    return (_entry(r) for r in db.execute(f"SELECT {_COLS} FROM chain ORDER BY seq"))


def history(store: Store, message: int) -> tuple[ChainEntry, ...]:
    """The chain entries about one message, oldest first (``messages show``)."""
    return tuple(_entry(r) for r in store.db.execute(f"SELECT {_COLS} FROM chain WHERE message = ? ORDER BY seq",
                                                     [message]))


def recent(store: Store, message: int | None = None, kind: str | None = None,
           limit: int | None = None) -> list[ChainEntry]:
    """The last ``limit`` entries (all when None/0), optionally of one message or kind, oldest first."""
    where, params = [], []
    if message is not None:
        where.append("message = ?")
        params.append(message)
    if kind is not None:
        where.append("kind = ?")
        params.append(kind)
    sql = f"SELECT {_COLS} FROM chain" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY seq DESC"
    if limit:
        sql += " LIMIT ?"
        params.append(limit)
    return [_entry(r) for r in reversed(store.db.execute(sql, params).fetchall())]


def head(store: Store) -> tuple[int, str]:
    """(length, digest) of the chain now: what an admin records outside the server."""
    return head_of(store.db)


def filing_detail(matter: str | None, person: int | None, rule: str, recipient: str, detail: str) -> dict[str, Any]:
    return {"matter": matter, "person": person, "rule": rule, "recipient": recipient, "detail": detail}


def genesis(db: Any) -> int:
    """Chain every message and filing already stored (actor ``migration``), oldest first; returns how many."""
    rows: list[tuple[float, int, str, int | None, str, Mapping[str, Any] | None]] = []
    for mid, sha, received in db.execute("SELECT id, sha256, received FROM messages ORDER BY id"):
        rows.append((received or 0.0, 0, "stored", mid, sha, None))
    for mid, matter, person, rule, rcpt, det, created, sha in db.execute(
            "SELECT f.message, f.matter, f.person, f.rule, f.recipient, f.detail, f.created, m.sha256 "
            "FROM filings f JOIN messages m ON m.id = f.message ORDER BY f.id"):
        rows.append((created or 0.0, 1, "filed", mid, sha,
                     filing_detail(matter, person, rule or "", rcpt or "", det or "")))
    # a message before its filings; within that, the order they were stored
    rows.sort(key=lambda r: (r[3], r[1], r[0]))
    for when, _, kind, mid, sha, detail in rows:
        append_db(db, kind, "migration", mid, sha, detail, when)
    return len(rows)
