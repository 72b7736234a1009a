"""The schema: numbered migrations, each applied once in its own transaction (:func:`migrate`).

Two lists with the same numbers: :data:`MIGRATIONS` here (SQLite, through sqlite_utils; the version is
``PRAGMA user_version``) and :data:`~mattermail.store.schema_pg.PG_MIGRATIONS` (PostgreSQL, plain DDL; the
version is the ``schema_version`` table). A new migration is added to both, with the same number and
the same tables and columns (tests/unit/test_store_engines.py checks the lists have the same length).

The dialects live here and in the other modules of this package only; nothing outside mattermail.store
sees a table, a PRAGMA, FTS5 or tsvector syntax.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import sqlite_utils

if TYPE_CHECKING:
    from mattermail.store.connection import Connection

# Numbered migrations, each applied once in its own transaction.
MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = []


def version(db: Connection) -> int:
    """The schema version of the database behind ``db`` (0: empty)."""
    if db.engine == "sqlite":
        return db.execute("PRAGMA user_version").fetchone()[0]
    from mattermail.store import schema_pg

    return schema_pg.version(db)


def migrate(db: Connection) -> None:
    """Apply every migration the database lacks, each in its own transaction; safe against another process
    migrating the same database at the same time (it re-checks the version under the write lock)."""
    if db.engine != "sqlite":
        from mattermail.store import schema_pg

        schema_pg.migrate(db)
        return
    for number, fn in enumerate(MIGRATIONS, start=1):
        if version(db) >= number:
            continue
        db.begin()
        try:
            if version(db) < number:  # another process may have won the race
                fn(sqlite_utils.Database(db.conn))
                db.execute(f"PRAGMA user_version = {number}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise


def migration(fn: Callable[[sqlite_utils.Database], None]) -> Callable[[sqlite_utils.Database], None]:
    MIGRATIONS.append(fn)
    return fn


@migration
def _m001_initial(db: sqlite_utils.Database) -> None:
    db["users"].create(
        {"login": str, "password_hash": str, "created": float},
        pk="login",
    )
    db["user_addresses"].create(
        {"login": str, "address": str},
        pk=("login", "address"),
        foreign_keys=[("login", "users", "login")],
    )
    db["user_addresses"].create_index(["address"])
    db["messages"].create(
        {
            "id": int,
            "sha256": str,
            "size": int,
            "message_id": str,
            "subject": str,
            "header_from": str,
            "date": str,
            "received": float,
        },
        pk="id",
    )
    db["messages"].create_index(["sha256"], unique=True)
    db["messages"].create_index(["message_id"])
    db["deliveries"].create(
        {
            "id": int,
            "message": int,
            "recipient": str,
            "envelope_from": str,
            "queue_id": str,
            "delivered": float,
        },
        pk="id",
        foreign_keys=[("message", "messages", "id")],
    )
    # Postfix retrying a delivery must not record it twice.
    db["deliveries"].create_index(["message", "recipient", "queue_id"], unique=True)


@migration
def _m002_disclaimers_and_envelopes(db: sqlite_utils.Database) -> None:
    # scope: "default" (key ""), "domain" (key = domain) or "sender" (key = address).
    db["disclaimers"].create(
        {"scope": str, "key": str, "text": str, "html": str, "updated": float},
        pk=("scope", "key"),
        not_null={"text"},
    )
    # The complete envelope of an outbound message, written by the milter before
    # it adds the capture recipient; the capture address carries ``ref`` (signed).
    db["envelopes"].create(
        {"ref": str, "queue_id": str, "mail_from": str, "recipients": str, "login": str,
         "client": str, "created": float},
        pk="ref",
    )
    db["envelopes"].create_index(["queue_id"])


@migration
def _m003_captures(db: sqlite_utils.Database) -> None:
    # A capture copy, linked to the envelope the milter recorded; verified = the HMAC checked out.
    db["captures"].create(
        {"message": int, "ref": str, "verified": int, "recorded": float},
        pk=("message", "ref"),
        foreign_keys=[("message", "messages", "id")],
    )


@migration
def _m004_directory_and_filings(db: sqlite_utils.Database) -> None:
    """Persons and their addresses, matters, aliases, filings, the event log and full-text search."""
    db["persons"].create({"id": int, "name": str, "created": float}, pk="id")
    db["person_addresses"].create(
        {"person": int, "address": str, "position": int},
        pk=("person", "address"),
        foreign_keys=[("person", "persons", "id")],
    )
    db["person_addresses"].create_index(["address"])
    db["matters"].create({"id": str, "title": str, "status": str, "created": float}, pk="id",
                         not_null={"title", "status"}, defaults={"status": "open"})
    db["matter_persons"].create(
        {"matter": str, "person": int}, pk=("matter", "person"),
        foreign_keys=[("matter", "matters", "id"), ("person", "persons", "id")],
    )
    db["aliases"].create(
        {"address": str, "person": int, "matter": str, "created": float}, pk="address",
        foreign_keys=[("person", "persons", "id"), ("matter", "matters", "id")],
    )
    for col, typ, default in (("direction", str, "inbound"), ("body_text", str, ""), ("system", int, 0)):
        db["messages"].add_column(col, typ, not_null_default=default)
    db["filings"].create(
        {"id": int, "message": int, "matter": str, "person": int, "rule": str, "recipient": str,
         "detail": str, "created": float},
        pk="id",
        foreign_keys=[("message", "messages", "id")],
    )
    # A redelivery after a crash files nothing twice.
    db.execute("CREATE UNIQUE INDEX filings_once ON filings "
               "(message, COALESCE(matter, ''), COALESCE(person, 0), recipient)")
    db["filings"].create_index(["matter"])
    db["filings"].create_index(["person"])
    db["events"].create(
        {"id": int, "time": float, "kind": str, "message": int, "queue_id": str, "detail": str}, pk="id")
    db["events"].create_index(["message"])
    # Full-text search over subject and body text (external-content FTS5, kept in step by triggers;
    # written out rather than enable_fts(), whose executescript would commit mid-migration).
    db.execute("CREATE VIRTUAL TABLE messages_fts USING fts5(subject, body_text, content='messages', "
               "content_rowid='id', tokenize='porter')")
    db.execute("CREATE TRIGGER messages_ai AFTER INSERT ON messages BEGIN "
               "INSERT INTO messages_fts (rowid, subject, body_text) VALUES (new.id, new.subject, new.body_text); END")
    db.execute("CREATE TRIGGER messages_ad AFTER DELETE ON messages BEGIN "
               "INSERT INTO messages_fts (messages_fts, rowid, subject, body_text) "
               "VALUES ('delete', old.id, old.subject, old.body_text); END")
    db.execute("CREATE TRIGGER messages_au AFTER UPDATE ON messages BEGIN "
               "INSERT INTO messages_fts (messages_fts, rowid, subject, body_text) "
               "VALUES ('delete', old.id, old.subject, old.body_text); "
               "INSERT INTO messages_fts (rowid, subject, body_text) VALUES (new.id, new.subject, new.body_text); END")


@migration
def _m005_capture_verification(db: sqlite_utils.Database) -> None:
    """messages.capture: "verified" (a capture copy whose reference verified and whose envelope the milter
    recorded: the only mail recorded as outbound), "unverified" (it came to the capture address some other
    way: kept, filed as inbound) or "" (not a capture copy). Existing rows: outbound ones without a verified
    capture were planted from outside (or came through a path that skipped the milter) and become inbound."""
    db["messages"].add_column("capture", str, not_null_default="")
    db.execute("UPDATE messages SET capture = 'verified' WHERE EXISTS (SELECT 1 FROM captures c "
               "JOIN envelopes e ON e.ref = c.ref WHERE c.message = messages.id AND c.verified = 1)")
    db.execute("UPDATE messages SET capture = 'unverified', direction = 'inbound' "
               "WHERE capture = '' AND (direction = 'outbound' OR EXISTS (SELECT 1 FROM captures c "
               "WHERE c.message = messages.id))")


@migration
def _m006_outbox(db: sqlite_utils.Database) -> None:
    """The "to forward" records of unfiled mail (store/outbox.py): written in the filing transaction, drained
    by the router's forwarder after the commit. AUTOINCREMENT: an id is never reused, the notice's Message-ID
    derives from it."""
    db.execute("CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, message INTEGER NOT NULL "
               "REFERENCES messages(id), queue_id TEXT NOT NULL DEFAULT '', recipient TEXT NOT NULL, "
               "reasons TEXT NOT NULL, envelope_from TEXT NOT NULL DEFAULT '', subject TEXT NOT NULL DEFAULT '', "
               "created REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, next_try REAL NOT NULL DEFAULT 0, "
               "last_error TEXT NOT NULL DEFAULT '', sent REAL)")
    db.execute("CREATE INDEX outbox_pending ON outbox (next_try) WHERE sent IS NULL")
    db.execute("CREATE INDEX outbox_message ON outbox (message)")


@migration
def _m007_records_chain(db: sqlite_utils.Database) -> None:
    """The records chain (store/chain.py) and legal holds; the chain of what is already stored, built once."""
    from mattermail.store import chain
    from mattermail.store.connection import SqliteConnection

    chain.create_table(SqliteConnection(db.conn))
    db.execute("CREATE TABLE holds (matter TEXT PRIMARY KEY REFERENCES matters(id), reason TEXT NOT NULL, "
               "actor TEXT NOT NULL, since REAL NOT NULL)")
    chain.genesis(SqliteConnection(db.conn))


@migration
def _m008_background_indexing(db: sqlite_utils.Database) -> None:
    """Full-text indexing leaves the delivery transaction (store/indexer.py): a new message is queued in
    ``fts_pending`` by a trigger (same transaction as its row, so a rollback takes both) and indexed later by
    :func:`~mattermail.store.indexer.index_pending`. A message is in ``messages_fts`` exactly when it is not
    in ``fts_pending``; the delete and update triggers touch the index only for indexed rows (an FTS5
    'delete' of a row that was never indexed would corrupt the index). Existing rows are indexed already."""
    db.execute("CREATE TABLE fts_pending (message INTEGER PRIMARY KEY)")
    db.execute("DROP TRIGGER messages_ai")
    db.execute("DROP TRIGGER messages_ad")
    db.execute("DROP TRIGGER messages_au")
    db.execute("CREATE TRIGGER messages_ai AFTER INSERT ON messages BEGIN "
               "INSERT OR IGNORE INTO fts_pending (message) VALUES (new.id); END")
    db.execute("CREATE TRIGGER messages_ad AFTER DELETE ON messages BEGIN "
               "INSERT INTO messages_fts (messages_fts, rowid, subject, body_text) "
               "SELECT 'delete', old.id, old.subject, old.body_text "
               "WHERE NOT EXISTS (SELECT 1 FROM fts_pending WHERE message = old.id); "
               "DELETE FROM fts_pending WHERE message = old.id; END")
    db.execute("CREATE TRIGGER messages_au AFTER UPDATE OF subject, body_text ON messages "
               "WHEN NOT EXISTS (SELECT 1 FROM fts_pending WHERE message = old.id) BEGIN "
               "INSERT INTO messages_fts (messages_fts, rowid, subject, body_text) "
               "VALUES ('delete', old.id, old.subject, old.body_text); "
               "INSERT INTO messages_fts (rowid, subject, body_text) VALUES (new.id, new.subject, new.body_text); END")


@migration
def _m009_thread_keys(db: sqlite_utils.Database) -> None:
    """Thread filing (store/threads.py): ``thread_keys`` holds each stored message's normalised Message-ID
    (kind "msgid") and subject key (kind "subject"); ``envelopes.message_id`` the Message-ID the milter saw
    and ``envelopes.direction`` which way the captured message went (two-way capture). The primary key serves the lookup by key; the second index the deletes by message.
    Existing messages get their keys from the ``message_id`` and ``subject`` columns they already have.
    Portable SQL only (the PostgreSQL backend ports this as it is)."""
    db.execute("CREATE TABLE thread_keys (message INTEGER NOT NULL REFERENCES messages(id), kind TEXT NOT NULL, "
               "key TEXT NOT NULL, PRIMARY KEY (kind, key, message))")
    db.execute("CREATE INDEX thread_keys_message ON thread_keys (message)")
    db.execute("ALTER TABLE envelopes ADD COLUMN message_id TEXT NOT NULL DEFAULT ''")
    # which way the captured message went: "outbound" (a user's submission) or "inbound" (mail to a user)
    db.execute("ALTER TABLE envelopes ADD COLUMN direction TEXT NOT NULL DEFAULT 'outbound'")
    thread_keys_of_stored_messages(db)


def thread_keys_of_stored_messages(db: Any) -> None:
    """Migration 9 on either engine: the thread keys of the messages stored before it."""
    from mattermail.msgid import msgid, subject_key

    last = 0
    while rows := db.execute("SELECT id, message_id, subject FROM messages WHERE id > ? ORDER BY id LIMIT 1000",
                             [last]).fetchall():
        for mid, header_id, subject in rows:
            for kind, key in (("msgid", msgid(header_id or "")), ("subject", subject_key(subject or ""))):
                if key:
                    db.execute("INSERT INTO thread_keys (message, kind, key) VALUES (?, ?, ?)", [mid, kind, key])
        last = rows[-1][0]


CAPTURE_STATES = ("", "verified", "unverified")


