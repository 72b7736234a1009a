"""Changes an admin makes to the record, each with its chain entry: refile, delete, legal hold.

A matter under legal hold keeps its messages: deleting one, or refiling it to another matter, is refused
with a :class:`~mattermail.store.engine.UserError` naming the hold. Every change and its chain entry
commit together; a deleted message's raw file is removed only after that commit (the chain keeps its
SHA-256).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from mattermail.store import chain
from mattermail.store.connection import SQLITE
from mattermail.store.engine import Store, UserError, transaction


@dataclass(frozen=True)
class Hold:
    matter: str
    reason: str
    actor: str
    since: float


def _reason(reason: str) -> str:
    reason = " ".join((reason or "").split())
    if not reason:
        raise UserError("--reason: give the reason (it is kept in the records chain)")
    return reason


def _message_sha(store: Store, message: int) -> str:
    row = store.db.execute("SELECT sha256 FROM messages WHERE id = ?", [message]).fetchone()
    if row is None:
        raise UserError(f"ID: no message {message}")
    return row[0]


def _filings(store: Store, message: int) -> list[dict]:
    return [chain.filing_detail(*r) for r in store.db.execute(
        "SELECT matter, person, rule, recipient, detail FROM filings WHERE message = ? ORDER BY id", [message])]


def get_hold(store: Store, matter: str) -> Hold | None:
    row = store.db.execute("SELECT matter, reason, actor, since FROM holds WHERE matter = ?", [matter]).fetchone()
    return Hold(*row) if row else None


def list_holds(store: Store) -> list[Hold]:
    return [Hold(*r) for r in store.db.execute("SELECT matter, reason, actor, since FROM holds ORDER BY matter")]


def _held(store: Store, matters: list[str], action: str, message: int) -> None:
    for m in dict.fromkeys(matters):
        h = get_hold(store, m)
        if h is not None:
            raise UserError(f"ID: message {message} is filed to matter {m}, which is under legal hold "
                            f"(\"{h.reason}\", set by {h.actor}); {action} is refused until "
                            f"`mattermailctl matter release {m}`")


def refile_message(store: Store, message: int, matter: str, person: int | None, reason: str) -> chain.ChainEntry:
    """Replace the message's filings with one filing to ``matter`` (and ``person``), rule ``refile``."""
    reason = _reason(reason)
    with transaction(store):
        sha = _message_sha(store, message)
        if store.db.execute("SELECT 1 FROM matters WHERE id = ?", [matter]).fetchone() is None:
            raise UserError(f"--matter: no matter {matter}")
        old = _filings(store, message)
        _held(store, [f["matter"] for f in old if f["matter"] and f["matter"] != matter], "refiling it away", message)
        new = chain.filing_detail(matter, person, "refile", "", reason)
        store.db.execute("DELETE FROM filings WHERE message = ?", [message])
        store.db.execute("INSERT INTO filings (message, matter, person, rule, recipient, detail, created) "
                         "VALUES (?, ?, ?, 'refile', '', ?, ?)", [message, matter, person, reason, time.time()])
        return chain.append(store, "refiled", message, sha, {"from": old, "to": [new], "reason": reason})


def delete_message(store: Store, message: int, reason: str) -> tuple[chain.ChainEntry, Path, str | None]:
    """Remove the message, its filings, deliveries and capture links; the chain entry keeps its SHA-256.

    Returns (entry, raw file, error removing the file or None): the file goes after the commit. A message kept
    in its row goes with the row; on SQLite the freed pages are overwritten with zeros (``secure_delete`` for
    this transaction), so its bytes do not linger in the database file."""
    reason = _reason(reason)
    sqlite = store.engine == SQLITE and not store.db.in_transaction
    if sqlite:
        store.db.execute("PRAGMA secure_delete = ON")
    try:
        with transaction(store):
            sha = _message_sha(store, message)
            old = _filings(store, message)
            _held(store, [f["matter"] for f in old if f["matter"]], "deleting it", message)
            for table in ("filings", "deliveries", "captures", "thread_keys"):
                store.db.execute(f"DELETE FROM {table} WHERE message = ?", [message])
            store.db.execute("DELETE FROM messages WHERE id = ?", [message])
            entry = chain.append(store, "deleted", message, sha, {"reason": reason, "filings": old})
    finally:
        if sqlite:
            store.db.execute("PRAGMA secure_delete = OFF")
    path = store.blob_path(sha)
    try:
        path.unlink()
        error = None
    except FileNotFoundError:
        error = None
    except OSError as e:
        error = f"{path}: {e.strerror or e}"
    return entry, path, error


def hold_matter(store: Store, matter: str, reason: str) -> Hold:
    reason = _reason(reason)
    with transaction(store):
        if store.db.execute("SELECT 1 FROM matters WHERE id = ?", [matter]).fetchone() is None:
            raise UserError(f"ID: no matter {matter}")
        h = get_hold(store, matter)
        if h is not None:
            raise UserError(f"ID: matter {matter} is already under legal hold (\"{h.reason}\", set by {h.actor})")
        now = time.time()
        store.db.execute("INSERT INTO holds (matter, reason, actor, since) VALUES (?, ?, ?, ?)",
                         [matter, reason, store.actor, now])
        chain.append(store, "hold", None, "", {"matter": matter, "reason": reason})
    return Hold(matter, reason, store.actor, now)


def release_matter(store: Store, matter: str, reason: str) -> Hold:
    """Lift the hold; returns the hold that was lifted."""
    reason = _reason(reason)
    with transaction(store):
        h = get_hold(store, matter)
        if h is None:
            raise UserError(f"ID: matter {matter} is not under legal hold")
        store.db.execute("DELETE FROM holds WHERE matter = ?", [matter])
        chain.append(store, "release", None, "", {"matter": matter, "reason": reason})
    return h
