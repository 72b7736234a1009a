"""Online backup and restore of a store: the database by SQLite's online backup API, the raw files it names.

A backup directory holds ``store.sqlite`` (a consistent copy as of one commit, taken while the router
writes), ``messages/<sha256[:2]>/<sha256>.eml`` for every message in that copy (each re-hashed as it is
copied), and ``manifest.json``: the chain's length and head at the snapshot, the counts, and the SHA-256
of the database file and of every raw file.

Restore goes onto an *empty* store (no message, no chain entry): the raw files first, then the database
(so it never names a file that is not there); the target's own users, persons and matters are replaced
by the backup's. The caller runs :func:`mattermail.store.verify.verify` after.

SQLite only: a PostgreSQL store is backed up with PostgreSQL's own tools (:func:`_sqlite_only` says how).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from mattermail.atomicfile import sync_dir, write_atomic
from mattermail.store import chain
from mattermail.store.engine import Store, UserError

MANIFEST = "manifest.json"
DB_NAME = "store.sqlite"
FORMAT = 1

Wrap = Callable[[list[tuple[int, str]]], Iterable[tuple[int, str]]]


@dataclass(frozen=True)
class BackupResult:
    directory: Path
    length: int
    head: str
    messages: int
    filings: int
    files: int
    bytes: int
    linked: int = 0  # raw files hard-linked from the previous backup


def _sha_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _empty_dir(dest: Path) -> None:
    if dest.exists() and not dest.is_dir():
        raise UserError(f"DIR: {dest} is not a directory")
    if dest.is_dir() and any(dest.iterdir()):
        raise UserError(f"DIR: {dest} is not empty (a backup goes into a new or empty directory)")
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"DIR: cannot create {dest}: {e.strerror or e}") from None


def _sqlite_only(store: Store, what: str) -> None:
    if store.engine != "sqlite":
        raise UserError(f"{what} works on a SQLite store; this one is on PostgreSQL ({store.path}): use "
                        f"pg_dump (e.g. `pg_dump --format=custom --file=store.dump URL`) and pg_restore for the "
                        f"database, and copy the raw message files in {store.messages_dir} after the dump "
                        f"(files are never rewritten, so a copy taken after the dump holds every file it names)")


def backup(store: Store, dest: Path, wrap: Wrap | None = None, previous: Path | None = None) -> BackupResult:
    """Write a consistent backup of ``store`` into ``dest`` (new or empty), while mail flows.

    ``previous``: an earlier backup; raw files it holds (checked against its manifest's hashes) are hard-linked
    from it instead of copied (copied when the link fails: another file system). ``linked`` counts them."""
    _sqlite_only(store, "backup")
    dest = Path(dest)
    before: dict[str, Path] = {}
    if previous is not None:
        for name, info in read_manifest(Path(previous))["files"].items():
            before[info["sha256"]] = Path(previous) / name
    _empty_dir(dest)
    target = sqlite3.connect(dest / DB_NAME)
    try:
        store.db.conn.backup(target)  # all pages in one step: one snapshot
        target.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
        rows = target.execute("SELECT id, sha256 FROM messages ORDER BY id").fetchall()
        length, head = chain.head_of(target)
        filings = target.execute("SELECT COUNT(*) FROM filings").fetchone()[0]
        schema = target.execute("PRAGMA user_version").fetchone()[0]
    finally:
        target.close()
    files: dict[str, int] = {}
    total = linked = 0
    for mid, sha in (wrap(rows) if wrap else rows):
        src = store.blob_path(sha)
        out = dest / "messages" / sha[:2] / f"{sha}.eml"
        out.parent.mkdir(parents=True, exist_ok=True)
        if _link(before.get(sha), out):
            if _sha_file(out) == sha:
                linked += 1
            else:  # the earlier backup's copy is damaged: take the store's
                out.unlink()
        if not out.exists():
            try:
                shutil.copyfile(src, out)
            except FileNotFoundError:
                raise UserError(f"message {mid}: its raw file {src} is missing (deleted since the snapshot, or lost: "
                                f"run `mattermailctl store verify`); the backup in {dest} is incomplete") from None
        got = _sha_file(out)
        if got != sha:
            raise UserError(f"message {mid}: its raw file {src} does not hash to its SHA-256 (it is {got}): "
                            f"run `mattermailctl store verify`; the backup in {dest} is incomplete")
        files[sha] = out.stat().st_size
        total += files[sha]
    manifest = {"format": FORMAT, "created": time.time(), "schema_version": schema,
                "chain": {"length": length, "head": head}, "messages": len(rows), "filings": filings,
                "database": {"file": DB_NAME, "sha256": _sha_file(dest / DB_NAME)},
                "files": {f"messages/{s[:2]}/{s}.eml": {"sha256": s, "size": n} for s, n in sorted(files.items())}}
    write_atomic(dest / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n", mode=0o600)
    return BackupResult(dest, length, head, len(rows), filings, len(files), total, linked)


def _link(old: Path | None, out: Path) -> bool:
    if old is None:
        return False
    try:
        os.link(old, out)
    except OSError:  # gone, or another file system: copy instead
        return False
    return True


def read_manifest(src: Path) -> dict:
    try:
        manifest = json.loads((Path(src) / MANIFEST).read_text())
    except FileNotFoundError:
        raise UserError(f"DIR: {src} has no {MANIFEST} (not a mattermail backup)") from None
    except (OSError, ValueError) as e:
        raise UserError(f"DIR: {Path(src) / MANIFEST} cannot be read: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise UserError(f"DIR: {Path(src) / MANIFEST} is not a format-{FORMAT} mattermail backup manifest")
    return manifest


def check_backup(src: Path, wrap: Wrap | None = None) -> dict:
    """The manifest, after every file in it re-hashed; raises naming the first file that differs."""
    src = Path(src)
    manifest = read_manifest(src)
    db = manifest["database"]
    if _sha_file(src / db["file"]) != db["sha256"]:
        raise UserError(f"DIR: {src / db['file']} does not match its SHA-256 in the manifest (altered)")
    items = [(i, name) for i, name in enumerate(sorted(manifest["files"]))]
    for _, name in (wrap(items) if wrap else items):
        path = src / name
        if not path.is_file():
            raise UserError(f"DIR: {path} is missing (listed in the manifest)")
        if _sha_file(path) != manifest["files"][name]["sha256"]:
            raise UserError(f"DIR: {path} does not match its SHA-256 in the manifest (altered)")
    return manifest


def is_empty(store: Store) -> bool:
    return store.count("messages") == 0 and chain.head_of(store.db)[0] == 0


def restore(store: Store, src: Path, wrap: Wrap | None = None) -> dict:
    """Restore the backup in ``src`` onto ``store`` (refused unless it is empty); returns the manifest."""
    _sqlite_only(store, "restore")
    src = Path(src)
    manifest = check_backup(src, wrap)
    if not is_empty(store):
        raise UserError(f"the store {store.path} is not empty ({store.count('messages')} messages, chain length "
                        f"{chain.head_of(store.db)[0]}): restore goes onto an empty store only")
    dirs: set[Path] = set()
    for name, info in sorted(manifest["files"].items()):
        sha = info["sha256"]
        dest = store.blob_path(sha)
        dest.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(dest, (src / name).read_bytes(), mode=0o600, sync_directory=False)
        dirs.add(dest.parent)
    for d in dirs:
        sync_dir(d)
    source = sqlite3.connect(f"file:{src / manifest['database']['file']}?mode=ro", uri=True)
    try:
        source.backup(store.db.conn)
    finally:
        source.close()
    store.db.execute("PRAGMA journal_mode=WAL")
    store.migrate()  # a backup of an older schema
    return manifest
