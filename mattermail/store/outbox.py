"""The outbox: durable "to forward" records of unfiled mail, so forwarding never runs inside a delivery.

The router writes a record in the same transaction that files the message (:func:`queue_forward`), answers
``250`` after the commit, and its forwarder (router/forwarder.py) drains the records: it hands the notice to
Postfix, then :func:`mark_forwarded` records the ``forwarded`` event and marks the record sent in one
transaction. A failed attempt is recorded with its error and the time of the next try
(:func:`forward_failed`). Records are kept once sent (``sent`` set): the id is never reused.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

from mattermail.store.directory import log_event
from mattermail.store.engine import Store, transaction

__all__ = ["ForwardRecord", "forward_failed", "mark_forwarded", "next_forward_due", "pending_forwards",
           "queue_forward", "queued_recipients"]


@dataclass(frozen=True)
class ForwardRecord:
    """One notice to send: to ``to``, about message ``message`` (its file: ``sha256``)."""

    id: int
    message: int
    sha256: str
    queue_id: str
    to: str
    reasons: tuple[tuple[str, str], ...]  # (recipient, why unfiled)
    envelope_from: str
    subject: str
    attempts: int
    next_try: float
    last_error: str


def queue_forward(store: Store, message: int, queue_id: str, to: str, reasons: Sequence[tuple[str, str]],
                  envelope_from: str = "", subject: str = "") -> int:
    """Record a notice to send (inside the filing transaction); its id."""
    return store.db.insert(
        "INSERT INTO outbox (message, queue_id, recipient, reasons, envelope_from, subject, created) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        [message, queue_id, to, json.dumps([list(r) for r in reasons]), envelope_from, subject, time.time()])


def queued_recipients(store: Store, message: int) -> set[str]:
    """The unfiled recipients of ``message`` with a notice waiting (not yet sent)."""
    rows = store.db.execute("SELECT reasons FROM outbox WHERE message = ? AND sent IS NULL", [message]).fetchall()
    return {r for (reasons,) in rows for r, _ in json.loads(reasons)}


_SELECT = ("SELECT o.id, o.message, m.sha256, o.queue_id, o.recipient, o.reasons, o.envelope_from, o.subject, "
           "o.attempts, o.next_try, o.last_error FROM outbox o JOIN messages m ON m.id = o.message ")


def _record(row: tuple) -> ForwardRecord:
    return ForwardRecord(row[0], row[1], row[2], row[3], row[4], tuple((a, b) for a, b in json.loads(row[5])),
                         row[6], row[7], row[8], row[9], row[10])


def pending_forwards(store: Store, now: float | None = None, limit: int = 100,
                     ids: Sequence[int] | None = None) -> list[ForwardRecord]:
    """Unsent records due by ``now`` (default: all unsent ones), oldest first; ``ids``: only those."""
    sql, args = _SELECT + "WHERE o.sent IS NULL", []
    if now is not None:
        sql += " AND o.next_try <= ?"
        args.append(now)
    if ids is not None:
        sql += f" AND o.id IN ({','.join('?' * len(ids))})"
        args.extend(ids)
    rows = store.db.execute(sql + " ORDER BY o.id LIMIT ?", [*args, limit]).fetchall()
    return [_record(r) for r in rows]


def next_forward_due(store: Store) -> float | None:
    """When the next unsent record is due (None: the outbox is empty)."""
    return store.db.execute("SELECT MIN(next_try) FROM outbox WHERE sent IS NULL").fetchone()[0]


def mark_forwarded(store: Store, rec: ForwardRecord) -> None:
    """The notice was handed over: the ``forwarded`` event, and the record marked sent, in one transaction."""
    with transaction(store):
        log_event(store, "forwarded", {"to": rec.to, "recipients": [r for r, _ in rec.reasons], "outbox": rec.id},
                  rec.message, rec.queue_id)
        store.db.execute("UPDATE outbox SET sent = ?, attempts = attempts + 1, last_error = '' WHERE id = ?",
                         [time.time(), rec.id])


def forward_failed(store: Store, rec: ForwardRecord, error: str, next_try: float) -> None:
    """An attempt failed: count it, keep the error, retry at ``next_try``."""
    with transaction(store):
        store.db.execute("UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_try = ? WHERE id = ?",
                         [error[:1000], next_try, rec.id])
