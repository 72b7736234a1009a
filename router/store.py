"""The store: one SQLite file (WAL) plus raw messages as files named by SHA-256.

Every reader and writer goes through this module, so the database can be
replaced later without touching the router, the milter or the CLI.

Durability order for a delivery (see DESIGN.md "Store"): the raw message is
written to a temp file, fsynced, renamed to ``<sha256[:2]>/<sha256>.eml`` and
the directory fsynced; only then is the database row committed, and only
after the commit does the LMTP server answer ``250``. A message delivered
twice (Postfix retrying after a crash) is stored once.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesHeaderParser
from email import policy
from pathlib import Path

import sqlite_utils

# Numbered migrations, each applied once in its own transaction.
MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = []


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


CAPTURE_STATES = ("", "verified", "unverified")


def normalise_address(address: str) -> str:
    """Lower-case the domain (local parts are case-sensitive in theory, not in practice)."""
    return address.strip().strip("<>").lower()


class Store:
    def __init__(self, path: Path, messages_dir: Path, synchronous: str = "FULL") -> None:
        self.path = Path(path)
        self.messages_dir = Path(messages_dir)
        self._dirs: set[Path] = set()  # hash directories known to exist
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        self.db = sqlite_utils.Database(conn)
        self.db.execute("PRAGMA journal_mode=WAL")
        # FULL: every commit is fsynced (the router answers 250 only after it). The milter
        # opens the store with NORMAL (see milter/runtime.py).
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous: {synchronous!r}")
        self.db.execute(f"PRAGMA synchronous={synchronous}")
        self.db.execute("PRAGMA foreign_keys=ON")
        self.migrate()

    # -- schema ------------------------------------------------------------
    def schema_version(self) -> int:
        return self.db.execute("PRAGMA user_version").fetchone()[0]

    def migrate(self) -> None:
        for number, fn in enumerate(MIGRATIONS, start=1):
            if self.schema_version() >= number:
                continue
            self.db.execute("BEGIN IMMEDIATE")
            try:
                if self.schema_version() < number:  # another process may have won the race
                    fn(self.db)
                    self.db.execute(f"PRAGMA user_version = {number}")
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise

    def close(self) -> None:
        self.db.close()

    # -- raw messages --------------------------------------------------------
    def blob_path(self, sha256: str) -> Path:
        return self.messages_dir / sha256[:2] / f"{sha256}.eml"

    def write_blob(self, raw: bytes, sync_dir: bool = True) -> tuple[str, Path]:
        """Write ``raw`` durably under its SHA-256 (tmp, fsync, rename, fsync dir).

        ``sync_dir=False`` leaves the directory fsync to the caller (:meth:`sync_dirs` on the returned
        path's parent, before the commit): the router's batches fsync each directory once."""
        sha = hashlib.sha256(raw).hexdigest()
        dest = self.blob_path(sha)
        if dest.exists():
            return sha, dest
        if dest.parent not in self._dirs:  # mkdir of an existing directory still takes its parent's lock
            dest.parent.mkdir(parents=True, exist_ok=True)
            self._dirs.add(dest.parent)
        try:
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-", suffix=".eml")
        except FileNotFoundError:  # removed since
            self._dirs.discard(dest.parent)
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-", suffix=".eml")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(raw)
                f.flush()
                os.fsync(f.fileno())
            os.rename(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        if sync_dir:
            self.sync_dirs([dest.parent])
        return sha, dest

    @staticmethod
    def sync_dirs(dirs: Iterable[Path]) -> None:
        """fsync each directory (makes the renames of :meth:`write_blob` durable)."""
        for d in dirs:
            dfd = os.open(d, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def count(self, table: str) -> int:
        return self.db[table].count


# -- SMTP users ------------------------------------------------------------------


class UserError(Exception):
    """A user operation that cannot be done; the message names the field."""


@dataclass(frozen=True)
class User:
    login: str
    addresses: tuple[str, ...]


def list_users(store: Store) -> list[User]:
    rows = store.db.execute(
        "SELECT u.login, a.address FROM users u LEFT JOIN user_addresses a ON a.login = u.login ORDER BY u.login, a.address"
    ).fetchall()
    out: dict[str, list[str]] = {}
    for login, address in rows:
        out.setdefault(login, [])
        if address:
            out[login].append(address)
    return [User(login, tuple(addrs)) for login, addrs in out.items()]


def add_user(store: Store, login: str, password_hash: str, send_as: Iterable[str] = ()) -> User:
    login = normalise_address(login)
    addresses = sorted({login, *(normalise_address(a) for a in send_as)})
    store.db.execute("BEGIN IMMEDIATE")
    try:
        if store.db.execute("SELECT 1 FROM users WHERE login = ?", [login]).fetchone():
            raise UserError(f"user {login} already exists")
        store.db.execute("INSERT INTO users (login, password_hash, created) VALUES (?, ?, ?)", [login, password_hash, time.time()])
        for a in addresses:
            store.db.execute("INSERT INTO user_addresses (login, address) VALUES (?, ?)", [login, a])
        store.db.execute("COMMIT")
    except BaseException:
        store.db.execute("ROLLBACK")
        raise
    return User(login, tuple(addresses))


def set_password(store: Store, login: str, password_hash: str) -> None:
    login = normalise_address(login)
    cur = store.db.execute("UPDATE users SET password_hash = ? WHERE login = ?", [password_hash, login])
    if cur.rowcount == 0:
        raise UserError(f"no such user: {login}")


def remove_user(store: Store, login: str) -> None:
    login = normalise_address(login)
    store.db.execute("BEGIN IMMEDIATE")
    try:
        store.db.execute("DELETE FROM user_addresses WHERE login = ?", [login])
        cur = store.db.execute("DELETE FROM users WHERE login = ?", [login])
        if cur.rowcount == 0:
            raise UserError(f"no such user: {login}")
        store.db.execute("COMMIT")
    except BaseException:
        store.db.execute("ROLLBACK")
        raise


def login_addresses(store: Store) -> list[tuple[str, str]]:
    return [tuple(r) for r in store.db.execute("SELECT login, address FROM user_addresses ORDER BY address, login")]


def password_hashes(store: Store) -> list[tuple[str, str]]:
    return [tuple(r) for r in store.db.execute("SELECT login, password_hash FROM users ORDER BY login")]


# -- disclaimers -----------------------------------------------------------------

DISCLAIMER_SCOPES = ("default", "domain", "sender")


@dataclass(frozen=True)
class DisclaimerRow:
    scope: str
    key: str
    text: str
    html: str | None
    updated: float


def set_disclaimer(store: Store, scope: str, key: str, text: str, html: str | None) -> None:
    if scope not in DISCLAIMER_SCOPES:
        raise UserError(f"scope: must be one of {', '.join(DISCLAIMER_SCOPES)}")
    if not text.strip():
        raise UserError("text: the disclaimer text is empty")
    key = "" if scope == "default" else normalise_address(key)
    store.db.execute(
        "INSERT INTO disclaimers (scope, key, text, html, updated) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (scope, key) DO UPDATE SET text = excluded.text, html = excluded.html, updated = excluded.updated",
        [scope, key, text, html, time.time()],
    )


def remove_disclaimer(store: Store, scope: str, key: str) -> None:
    key = "" if scope == "default" else normalise_address(key)
    if store.db.execute("DELETE FROM disclaimers WHERE scope = ? AND key = ?", [scope, key]).rowcount == 0:
        raise UserError(f"no {scope} disclaimer{' for ' + key if key else ''}")


def list_disclaimers(store: Store) -> list[DisclaimerRow]:
    rows = store.db.execute(
        "SELECT scope, key, text, html, updated FROM disclaimers"
        " ORDER BY CASE scope WHEN 'default' THEN 0 WHEN 'domain' THEN 1 ELSE 2 END, key"
    ).fetchall()
    return [DisclaimerRow(*r) for r in rows]


def disclaimer_for(rows: Iterable[DisclaimerRow], sender: str) -> DisclaimerRow | None:
    """The most specific disclaimer for ``sender``: per sender, then per domain (or parent domain), then default."""
    sender = normalise_address(sender)
    domain = sender.rpartition("@")[2]
    by_key = {(r.scope, r.key): r for r in rows}
    if ("sender", sender) in by_key:
        return by_key[("sender", sender)]
    labels = domain.split(".")
    for i in range(len(labels) - 1):
        hit = by_key.get(("domain", ".".join(labels[i:])))
        if hit:
            return hit
    return by_key.get(("default", ""))


def data_version(store: Store) -> int:
    """Changes whenever another connection commits: a cheap "reload?" check for the milter."""
    return store.db.execute("PRAGMA data_version").fetchone()[0]


# -- envelopes of captured messages ---------------------------------------------------


@dataclass(frozen=True)
class EnvelopeRecord:
    ref: str
    queue_id: str
    mail_from: str
    recipients: tuple[str, ...]
    login: str
    client: str
    created: float


def record_envelope(store: Store, env: EnvelopeRecord) -> None:
    import json

    store.db.execute(
        "INSERT INTO envelopes (ref, queue_id, mail_from, recipients, login, client, created) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [env.ref, env.queue_id, env.mail_from, json.dumps(list(env.recipients)), env.login, env.client, env.created],
    )


def record_capture(store: Store, message: int, ref: str, verified: bool) -> None:
    store.db.execute("INSERT OR IGNORE INTO captures (message, ref, verified, recorded) VALUES (?, ?, ?, ?)",
                     [message, ref, int(verified), time.time()])


def get_envelope(store: Store, ref: str) -> EnvelopeRecord | None:
    import json

    row = store.db.execute(
        "SELECT ref, queue_id, mail_from, recipients, login, client, created FROM envelopes WHERE ref = ?", [ref]
    ).fetchone()
    if row is None:
        return None
    return EnvelopeRecord(row[0], row[1], row[2], tuple(json.loads(row[3])), row[4], row[5], row[6])


# -- filing: the message row inside the caller's transaction (router/filing.py) -------------


def find_message(store: Store, sha256: str) -> int | None:
    """The id of the stored message with this SHA-256, or None."""
    row = store.db.execute("SELECT id FROM messages WHERE sha256 = ?", [sha256]).fetchone()
    return row[0] if row else None


def insert_message(store: Store, raw: bytes, sha256: str, direction: str = "inbound", body_text: str = "",
                   system: bool = False, headers: Message | None = None, capture: str = "") -> tuple[int, bool]:
    """(id, new) of the messages row for ``raw``, inserted when new; call inside a transaction,
    after :meth:`Store.write_blob` made the file durable. ``headers``: ``raw``'s header-only parse
    (compat32), when the caller has it already. ``capture``: one of :data:`CAPTURE_STATES`; only a
    "verified" capture copy may be "outbound"."""
    if capture not in CAPTURE_STATES:
        raise ValueError(f"capture: {capture!r}")
    if direction == "outbound" and capture != "verified":
        raise ValueError("only a verified capture copy is recorded as outbound")
    existing = find_message(store, sha256)
    if existing is not None:
        return existing, False
    from email.header import decode_header, make_header

    hdr = headers if headers is not None else BytesHeaderParser(policy=policy.compat32).parsebytes(raw)

    def h(name: str) -> str:
        value = str(hdr.get(name, "") or "")
        try:  # RFC 2047 words decoded, so subjects read and search as written
            value = str(make_header(decode_header(value)))
        except Exception:
            pass
        return " ".join(value.split())[:998]

    cur = store.db.execute(
        "INSERT INTO messages (sha256, size, message_id, subject, header_from, date, received, direction, body_text,"
        " system, capture) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [sha256, len(raw), h("Message-ID"), h("Subject"), h("From"), h("Date"), time.time(), direction, body_text,
         int(system), capture])
    return int(cur.lastrowid), True


def record_deliveries(store: Store, message: int, envelope_from: str, recipients: Iterable[str],
                      queue_id: str = "") -> None:
    """One deliveries row per recipient (a retried delivery is recorded once); inside a transaction."""
    now = time.time()
    for rcpt in recipients:
        store.db.execute(
            "INSERT OR IGNORE INTO deliveries (message, recipient, envelope_from, queue_id, delivered)"
            " VALUES (?, ?, ?, ?, ?)", [message, normalise_address(rcpt), envelope_from, queue_id, now])


# -- start-up recovery ------------------------------------------------------------------


def recover_stale_tmp(messages_dir: Path | str) -> int:
    """Remove the temp files of blob writes that never finished; returns how many. Call at start-up.

    :meth:`Store.write_blob` writes ``<sha256[:2]>/.tmp-*.eml`` and renames it into place; a process killed
    in between (SIGKILL, power loss) leaves a half-written ``.tmp-*`` file that nothing ever renames or
    removes (the redelivery writes a temp file of its own). Such a delivery was never answered ``250``, so
    Postfix still has the message and the file is safe to delete. A blob write in progress in another
    process (``mattermailctl import``) whose temp file this removes fails cleanly (its rename raises and
    nothing is committed); re-running the import stores it.
    """
    root = Path(messages_dir)
    if not root.is_dir():
        return 0
    removed = 0
    for sub in root.iterdir():
        if not sub.is_dir() or sub.is_symlink():
            continue
        for tmp in sub.glob(".tmp-*"):
            try:
                tmp.unlink()
            except FileNotFoundError:
                continue
            removed += 1
    return removed
