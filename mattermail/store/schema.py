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


@migration
def _m010_web_access(db: sqlite_utils.Database) -> None:
    """mattermail-web (issue 18): API tokens (stored as SHA-256 of the token, never the token), user roles
    (``admin`` sees every matter), ethical walls per matter (``deny``: this address may not see it;
    ``only``: when a matter has any, only those addresses may), the log of admin views of walled matters,
    and web sign-in sessions (SHA-256 of the cookie value). Plain portable SQL (no rowid, no AUTOINCREMENT):
    the PostgreSQL engine ports it as is, with ``id`` columns made identity columns."""
    db.execute("CREATE TABLE api_tokens (id INTEGER PRIMARY KEY, login TEXT NOT NULL, scope TEXT NOT NULL, "
               "token_hash TEXT NOT NULL UNIQUE, created REAL NOT NULL, last_used REAL, revoked REAL)")
    db.execute("CREATE INDEX api_tokens_login ON api_tokens (login)")
    db.execute("CREATE TABLE user_roles (login TEXT PRIMARY KEY, role TEXT NOT NULL, actor TEXT NOT NULL, "
               "since REAL NOT NULL)")
    db.execute("CREATE TABLE matter_access (matter TEXT NOT NULL REFERENCES matters(id), mode TEXT NOT NULL, "
               "address TEXT NOT NULL, actor TEXT NOT NULL, since REAL NOT NULL, PRIMARY KEY (matter, mode, address))")
    db.execute("CREATE INDEX matter_access_address ON matter_access (address)")
    db.execute("CREATE TABLE access_log (id INTEGER PRIMARY KEY, time REAL NOT NULL, login TEXT NOT NULL, "
               "matter TEXT NOT NULL, message INTEGER, what TEXT NOT NULL)")
    db.execute("CREATE INDEX access_log_matter ON access_log (matter, time)")
    db.execute("CREATE TABLE web_sessions (session_hash TEXT PRIMARY KEY, login TEXT NOT NULL, csrf TEXT NOT NULL, "
               "created REAL NOT NULL, expires REAL NOT NULL)")
    db.execute("CREATE INDEX web_sessions_expires ON web_sessions (expires)")


@migration
def _m011_webhooks(db: sqlite_utils.Database) -> None:
    """Webhooks (issue 18): subscriptions, and the outbox of their deliveries. A trigger on ``filings`` writes
    one outbox row per matching webhook in the filing's own transaction (the router's, or a refile's), so a
    filing is never committed without its events nor an event without its filing. The delivery id is
    ``mmwh-<outbox id>``: the same on every retry. PostgreSQL: the trigger becomes a plpgsql trigger function
    with the same INSERT ... SELECT."""
    db.execute("CREATE TABLE webhooks (id INTEGER PRIMARY KEY, url TEXT NOT NULL, secret_file TEXT NOT NULL, "
               "matter TEXT, login TEXT, created REAL NOT NULL, removed REAL)")
    db.execute("CREATE TABLE webhook_outbox (id INTEGER PRIMARY KEY, webhook INTEGER NOT NULL REFERENCES webhooks(id), "
               "message INTEGER NOT NULL, matter TEXT, person INTEGER, rule TEXT NOT NULL, created REAL NOT NULL, "
               "attempts INTEGER NOT NULL DEFAULT 0, next_try REAL NOT NULL DEFAULT 0, last_error TEXT NOT NULL "
               "DEFAULT '', delivered REAL, skipped TEXT)")
    db.execute("CREATE INDEX webhook_outbox_pending ON webhook_outbox (webhook, id) WHERE delivered IS NULL "
               "AND skipped IS NULL")
    db.execute("CREATE TRIGGER filings_webhooks AFTER INSERT ON filings BEGIN "
               "INSERT INTO webhook_outbox (webhook, message, matter, person, rule, created) "
               "SELECT w.id, new.message, new.matter, new.person, new.rule, new.created FROM webhooks w "
               "WHERE w.removed IS NULL AND (w.matter IS NULL OR w.matter = new.matter) ORDER BY w.id; END")



@migration
def _m012_sort_time(db: sqlite_utils.Database) -> None:
    """``messages.sort_time``: the message's time (msgtime.py: its Date header in UTC, else when it was stored)
    as sortable text, written with the row and indexed with the id, so listings filter, order and page in
    SQL with no function registered on the connection (and on PostgreSQL the same way). Existing rows are
    filled from their ``date`` and ``received`` columns."""
    db.execute("ALTER TABLE messages ADD COLUMN sort_time TEXT NOT NULL DEFAULT ''")
    sort_times_of_stored_messages(db)


def sort_times_of_stored_messages(db: Any) -> None:
    """Migration 12 on either engine: the sort time of the messages stored before it, then its index."""
    from mattermail.store.msgtime import sort_time

    last = 0
    while rows := db.execute("SELECT id, date, received FROM messages WHERE id > ? ORDER BY id LIMIT 1000",
                             [last]).fetchall():
        for mid, date, received in rows:
            db.execute("UPDATE messages SET sort_time = ? WHERE id = ?", [sort_time(date, received), mid])
        last = rows[-1][0]
    db.execute("CREATE INDEX messages_sort_time ON messages (sort_time, id)")


CAPTURE_STATES = ("", "verified", "unverified")


#: The tables the milter keeps in memory (milter/runtime.py): a change to any of them moves the lookup generation.
LOOKUP_TABLES = ("users", "user_addresses", "disclaimers")


@migration
def _m013_lookup_generation(db: sqlite_utils.Database) -> None:
    """``lookup_generation``: one number that triggers move with every change to the users, their addresses or
    the disclaimers, in the changing transaction. The milter keeps those in memory and re-reads them when it
    moves; SQLite's ``data_version`` moved with every commit of another connection (the milter's own envelope
    records, the router's filings), so they were re-read for nearly every submission."""
    db.execute("CREATE TABLE lookup_generation (id INTEGER PRIMARY KEY CHECK (id = 1), n INTEGER NOT NULL)")
    db.execute("INSERT INTO lookup_generation (id, n) VALUES (1, 0)")
    for table in LOOKUP_TABLES:
        for event in ("INSERT", "UPDATE", "DELETE"):
            db.execute(f"CREATE TRIGGER {table}_{event.lower()}_generation AFTER {event} ON {table} BEGIN "
                       "UPDATE lookup_generation SET n = n + 1; END")


@migration
def _m014_inline_raw(db: sqlite_utils.Database) -> None:
    """``messages.raw``: the raw message itself for one of at most ``store.inline_max`` bytes (the router's
    and import's choice as they store it), NULL for one kept in its file under ``messages_dir``. The last
    column of the row, so reading the others never reads it. Existing messages keep their files."""
    db.execute("ALTER TABLE messages ADD COLUMN raw BLOB")
