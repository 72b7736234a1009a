"""Stored messages and their deliveries: rows written inside the caller's transaction."""

from __future__ import annotations

import time
from collections.abc import Iterable
from email import policy
from email.header import decode_header, make_header
from email.message import Message
from email.parser import BytesHeaderParser

from mattermail.store import chain
from mattermail.store.engine import Store, normalise_address
from mattermail.store.msgtime import sort_time
from mattermail.store.schema import CAPTURE_STATES

# -- filing: the message row inside the caller's transaction (router/filing.py) -------------


def header_text(value: object) -> str:
    """A header value as people read and search it: RFC 2047 words decoded (a value without "=?" has
    none and is taken as it is), runs of blanks one space; an undecodable value is kept as written."""
    text = str(value or "")
    if "=?" in text:
        try:
            text = str(make_header(decode_header(text)))
        except Exception:
            pass
    return " ".join(text.split())


def find_message(store: Store, sha256: str) -> int | None:
    """The id of the stored message with this SHA-256, or None."""
    row = store.db.execute("SELECT id FROM messages WHERE sha256 = ?", [sha256]).fetchone()
    return row[0] if row else None


def insert_message(store: Store, raw: bytes | None, sha256: str, direction: str = "inbound", body_text: str = "",
                   system: bool = False, headers: Message | None = None, capture: str = "",
                   size: int | None = None, inline: bool = False) -> tuple[int, bool]:
    """(id, new) of the messages row for ``raw``, inserted when new; call inside a transaction,
    after :meth:`Store.write_blob` made the file durable — or, with ``inline``, with ``raw`` itself in the
    row (``messages.raw``) and no file at all: the commit makes it durable (see :func:`read_raw`).
    ``headers``: ``raw``'s header-only parse (compat32), when the caller has it already; with ``headers`` and ``size`` given, ``raw`` may be None
    (the router streams messages to their file and never holds them). ``capture``: one of
    :data:`CAPTURE_STATES`; only a "verified" capture copy may be "outbound". A new row appends its
    ``stored`` chain entry.

    No look-up first: the insert itself says whether the row is new (``ON CONFLICT DO NOTHING RETURNING id``),
    one statement fewer; on PostgreSQL, where several routers may store the same message at once, also no
    duplicate-key error for the second router."""
    if capture not in CAPTURE_STATES:
        raise ValueError(f"capture: {capture!r}")
    if direction == "outbound" and capture != "verified":
        raise ValueError("only a verified capture copy is recorded as outbound")
    if headers is None or size is None:
        if raw is None:
            raise ValueError("insert_message: raw, or headers and size")
        size = len(raw)
    hdr = headers if headers is not None else BytesHeaderParser(policy=policy.compat32).parsebytes(raw)

    def h(name: str) -> str:
        return header_text(hdr.get(name, ""))[:998]

    date, received = h("Date"), time.time()
    if inline and raw is None:
        raise ValueError("insert_message: inline needs raw")
    sql = ("INSERT INTO messages (sha256, size, message_id, subject, header_from, date, received, direction,"
           " body_text, system, capture, sort_time, raw) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)")
    values = [sha256, size, h("Message-ID"), h("Subject"), h("From"), date, received, direction, body_text,
              int(system), capture, sort_time(date, received), raw if inline else None]
    with chain.atomic(store):
        rows = store.db.execute(sql + " ON CONFLICT (sha256) DO NOTHING RETURNING id", values).fetchall()
        if not rows:  # stored already (by another router, or before)
            existing = find_message(store, sha256)
            if existing is None:  # cannot be: DO NOTHING reports a conflict with a committed row only
                raise RuntimeError(f"message {sha256}: neither inserted nor found")
            return existing, False
        mid = int(rows[0][0])
        chain.append(store, "stored", mid, sha256)
    return mid, True


# -- raw messages: in the row (``messages.raw``, small ones) or in their file (Store.blob_path) -----------


def inline_raw(store: Store, sha256: str) -> bytes | None:
    """The raw message kept in its row, or None when it is in its file (or not stored)."""
    row = store.db.execute("SELECT raw FROM messages WHERE sha256 = ? AND raw IS NOT NULL", [sha256]).fetchone()
    return bytes(row[0]) if row is not None else None


def read_raw(store: Store, sha256: str) -> bytes:
    """The raw message with this SHA-256, from its row or else its file; OSError (FileNotFoundError when
    neither has it) as reading the file raises."""
    raw = inline_raw(store, sha256)
    return raw if raw is not None else store.blob_path(sha256).read_bytes()


def raw_where(store: Store, sha256: str, inline: bool | None = None) -> str:
    """Where a message's raw bytes are, for messages to people: its file, or its row in the database.
    ``inline``: whether it is in its row, when the caller knows."""
    if inline is None:
        inline = store.db.execute("SELECT 1 FROM messages WHERE sha256 = ? AND raw IS NOT NULL",
                                  [sha256]).fetchone() is not None
    return f"messages.raw ({sha256[:16]}) in {store.path}" if inline else str(store.blob_path(sha256))


def record_deliveries(store: Store, message: int, envelope_from: str, recipients: Iterable[str],
                      queue_id: str = "") -> None:
    """One deliveries row per recipient (a retried delivery is recorded once); inside a transaction."""
    now = time.time()
    for rcpt in recipients:
        store.db.defer(
            "INSERT INTO deliveries (message, recipient, envelope_from, queue_id, delivered)"
            " VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING", [message, normalise_address(rcpt), envelope_from, queue_id, now])
