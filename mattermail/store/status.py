"""Read-only looks at a store another process writes: counts for ``mattermailctl status`` and the
capture copy ``mattermailctl test-send`` waits for. Opens the database read-only, creates nothing.

``location``: the SQLite file, or a ``postgresql://`` URL (a session with read-only transactions)."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

from mattermail.store.connection import PgConnection, is_url
from mattermail.store.listing import UNFILED  # the one definition of "unfiled"

_COUNTS = {
    "messages": "SELECT COUNT(*) FROM messages",
    "filings": "SELECT COUNT(*) FROM filings",
    "unfiled": f"SELECT COUNT(*) FROM messages m WHERE {UNFILED}",
    "persons": "SELECT COUNT(*) FROM persons",
    "matters": "SELECT COUNT(*) FROM matters",
    "aliases": "SELECT COUNT(*) FROM aliases",
    "users": "SELECT COUNT(*) FROM users",
}


@contextmanager
def _readonly(location: Path | str) -> Iterator[Any]:
    """A read-only connection; OSError when the file is missing or unreadable, StoreError on a bad file
    (or a PostgreSQL server that cannot be reached)."""
    if is_url(location):
        pg = PgConnection(str(location), readonly=True)
        try:
            yield pg
        finally:
            pg.close()
        return
    path = Path(location)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no store file")
    if not os.access(path, os.R_OK):
        raise PermissionError(f"{path}: permission denied")
    db = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True, timeout=5)
    try:
        yield db
    finally:
        db.close()


def check_readable(path: Path | str) -> None:
    """Raise OSError or StoreError when the store at ``path`` cannot be read."""
    with _readonly(path) as db:
        db.execute("SELECT 1 FROM messages LIMIT 1").fetchall()


def counts(path: Path | str) -> dict[str, int]:
    """Messages, filings, unfiled messages, persons, matters, aliases, users and messages not indexed for
    search yet (``not_indexed``) in the store at ``path``."""
    with _readonly(path) as db:
        out = {k: db.execute(q).fetchone()[0] for k, q in _COUNTS.items()}
        # messages the router has not indexed for search yet (a store before migration 8 has no queue)
        queued = db.execute("SELECT to_regclass('fts_pending') IS NOT NULL" if is_url(path) else
                            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'fts_pending'").fetchone()
        queued = queued and queued[0]
        out["not_indexed"] = db.execute("SELECT COUNT(*) FROM fts_pending").fetchone()[0] if queued else 0
        return out


def find_capture_copy(path: Path | str, messages_dir: Path, message_id: str,
                      is_capture: Callable[[str], bool]) -> tuple[int, bytes | Path] | None:
    """(id, raw message) of the stored message with this Message-ID that came in as a capture copy: linked to
    an envelope, or delivered to an address ``is_capture`` recognises. The raw message: its bytes when it is
    kept in its row, else its file. None when there is none (yet)."""
    with _readonly(path) as db:
        for mid, sha, raw in db.execute("SELECT id, sha256, raw FROM messages WHERE message_id = ?",
                                        [message_id]).fetchall():
            captured = db.execute("SELECT 1 FROM captures WHERE message = ?", [mid]).fetchone() is not None
            if not captured:
                captured = any(is_capture(r) for (r,) in
                               db.execute("SELECT recipient FROM deliveries WHERE message = ?", [mid]))
            if captured:
                return mid, (bytes(raw) if raw is not None else messages_dir / sha[:2] / f"{sha}.eml")
    return None
