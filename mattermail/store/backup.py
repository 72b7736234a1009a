"""Online backup and restore of a store: the database as of one commit, and the raw files it names.

A backup directory holds the database — ``store.sqlite`` (SQLite's online backup API) or ``store.dump``
(PostgreSQL: ``pg_dump --format=custom`` of an exported snapshot) — taken while the router writes,
``messages/<sha256[:2]>/<sha256>.eml`` for every message in that copy (each re-hashed as it is copied), and
``manifest.json``: the engine, the chain's length and head at the snapshot, the counts, and the SHA-256 of
the database file and of every raw file. The message list, the counts and the head are read in the same
snapshot the database copy is made of (PostgreSQL: the dump imports the snapshot this connection exported),
so they always agree.

Restore goes onto an *empty* store of the same engine (no message, no chain entry): the raw files first,
then the database (so it never names a file that is not there); the target's own users, persons and matters
are replaced by the backup's. PostgreSQL: ``pg_restore --clean --if-exists --single-transaction`` into the
configured database (its empty tables are dropped and the backup's made, all or nothing). The caller runs
:func:`mattermail.store.verify.verify` after.

PostgreSQL's client tools (``pg_dump``, ``pg_restore``; Debian's ``postgresql-client``) are found on the PATH,
else in the newest ``/usr/lib/postgresql/*/bin``. The password never goes on their command line (``PGPASSWORD``
in their environment), and never into a message.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from mattermail.atomicfile import sync_dir, write_atomic
from mattermail.store import chain
from mattermail.store.engine import Store, UserError
from mattermail.store.messages import inline_raw, raw_where

MANIFEST = "manifest.json"
DB_NAME = "store.sqlite"
PG_DUMP_NAME = "store.dump"
FORMAT = 1
PG_LIB = Path("/usr/lib/postgresql")  # Debian: one <major>/bin per installed version

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


def pg_tool(name: str) -> str:
    """The PostgreSQL client program ``name`` (pg_dump, pg_restore): on the PATH, else the newest Debian one."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(PG_LIB.glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0)
    if versions:
        return str(versions[-1])
    raise UserError(f"{name} not found (on the PATH or under {PG_LIB}/*/bin): a PostgreSQL store is backed up and "
                    f"restored with PostgreSQL's client tools; install Debian's postgresql-client package")


def _pg_run(store: Store, argv: list[str]) -> None:
    """Run a PostgreSQL client program against the store's database (``--dbname`` without the password, which
    goes in ``PGPASSWORD``); a failure is a UserError with its message, the password scrubbed."""
    from urllib.parse import unquote, urlsplit, urlunsplit

    from mattermail.store.connection import redact

    url = str(store.location)
    parts = urlsplit(url)
    env = dict(os.environ, PGCONNECT_TIMEOUT="10", PGAPPNAME="mattermail-backup")
    if parts.password is not None:
        netloc = parts.netloc.rpartition("@")
        user = netloc[0].partition(":")[0]
        url = urlunsplit((parts.scheme, f"{user}@{netloc[2]}", parts.path, parts.query, parts.fragment))
        env["PGPASSWORD"] = unquote(parts.password)
    try:
        done = subprocess.run([*argv, "--dbname", url], env=env, capture_output=True, text=True, timeout=24 * 3600)
    except OSError as e:
        raise UserError(f"{argv[0]} cannot be run: {e}") from None
    if done.returncode != 0:
        text = " ".join((done.stderr or done.stdout or "").split())[-1000:]
        if parts.password:
            text = text.replace(parts.password, "***").replace(unquote(parts.password), "***")
        raise UserError(f"{Path(argv[0]).name} failed (exit {done.returncode}) on {redact(str(store.location))}: "
                        f"{text}")


def _sqlite_copy(store: Store, dest: Path) -> tuple[str, list[tuple[int, str]], int, str, int, int]:
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
    return DB_NAME, rows, length, head, filings, schema


def _pg_copy(store: Store, dest: Path) -> tuple[str, list[tuple[int, str]], int, str, int, int]:
    """pg_dump of the snapshot this connection exports, and what that snapshot holds (read in it)."""
    tool = pg_tool("pg_dump")
    db = store.db
    db.begin_snapshot()
    try:
        snapshot = db.execute("SELECT pg_export_snapshot()").fetchone()[0]
        rows = [tuple(r) for r in db.execute("SELECT id, sha256 FROM messages ORDER BY id").fetchall()]
        length, head = chain.head_of(db)
        filings = db.execute("SELECT COUNT(*) FROM filings").fetchone()[0]
        schema = store.schema_version()
        # the snapshot stays exported while this transaction is open: until pg_dump has finished
        _pg_run(store, [tool, "--format=custom", "--no-owner", "--no-privileges", f"--snapshot={snapshot}",
                        f"--file={dest / PG_DUMP_NAME}"])
    finally:
        if db.in_transaction:
            db.execute("COMMIT")
    return PG_DUMP_NAME, rows, length, head, filings, schema


def backup(store: Store, dest: Path, wrap: Wrap | None = None, previous: Path | None = None) -> BackupResult:
    """Write a consistent backup of ``store`` into ``dest`` (new or empty), while mail flows.

    ``previous``: an earlier backup; raw files it holds (checked against its manifest's hashes) are hard-linked
    from it instead of copied (copied when the link fails: another file system). ``linked`` counts them."""
    dest = Path(dest)
    before: dict[str, Path] = {}
    if previous is not None:
        for name, info in read_manifest(Path(previous))["files"].items():
            before[info["sha256"]] = Path(previous) / name
    if store.engine != "sqlite":
        pg_tool("pg_dump")  # before anything is made: a missing tool leaves no half backup
    _empty_dir(dest)
    copy = _sqlite_copy if store.engine == "sqlite" else _pg_copy
    db_file, rows, length, head, filings, schema = copy(store, dest)
    files: dict[str, int] = {}
    total = linked = 0
    for mid, sha in (wrap(rows) if wrap else rows):
        src: Path | str = store.blob_path(sha)
        out = dest / "messages" / sha[:2] / f"{sha}.eml"
        out.parent.mkdir(parents=True, exist_ok=True)
        if _link(before.get(sha), out):
            if _sha_file(out) == sha:
                linked += 1
            else:  # the earlier backup's copy is damaged: take the store's
                out.unlink()
        if not out.exists():
            inline = inline_raw(store, sha)  # a small message is kept in its row: written out as a file here too
            try:
                if inline is not None:
                    src = raw_where(store, sha, inline=True)
                    out.write_bytes(inline)
                else:
                    shutil.copyfile(src, out)
            except FileNotFoundError:
                raise UserError(f"message {mid}: its raw file {src} is missing (deleted since the snapshot, or lost: "
                                f"run `mattermailctl store verify`); the backup in {dest} is incomplete") from None
        got = _sha_file(out)
        if got != sha:
            raise UserError(f"message {mid}: its raw message ({src}) does not hash to its SHA-256 (it is {got}): "
                            f"run `mattermailctl store verify`; the backup in {dest} is incomplete")
        files[sha] = out.stat().st_size
        total += files[sha]
    manifest = {"format": FORMAT, "created": time.time(), "schema_version": schema, "engine": store.engine,
                "chain": {"length": length, "head": head}, "messages": len(rows), "filings": filings,
                "database": {"file": db_file, "sha256": _sha_file(dest / db_file)},
                "files": {f"messages/{s[:2]}/{s}.eml": {"sha256": s, "size": n} for s, n in sorted(files.items())}}
    write_atomic(dest / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True) + "\n", mode=0o600)
    return BackupResult(dest, length, head, len(rows), filings, len(files), total, linked)


def _inline_in_copy(db_file: Path) -> set[str]:
    """The SHA-256 of each message a SQLite backup's database copy keeps in its row (``messages.raw``)."""
    conn = sqlite3.connect(f"file:{db_file}?mode=ro", uri=True)
    try:
        cols = {r[1] for r in conn.execute("PRAGMA table_info(messages)")}
        if "raw" not in cols:  # a backup made before migration 14
            return set()
        return {sha for (sha,) in conn.execute("SELECT sha256 FROM messages WHERE raw IS NOT NULL")}
    finally:
        conn.close()


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
    """Restore the backup in ``src`` onto ``store`` (refused unless it is empty and of the backup's engine);
    returns the manifest."""
    src = Path(src)
    manifest = check_backup(src, wrap)
    engine = manifest.get("engine", "sqlite")  # backups made before PostgreSQL had none
    if engine != store.engine:
        how = ("restore it into a SQLite store, then copy that with `mattermailctl store migrate --to URL`"
               if engine == "sqlite" else "restore it into a PostgreSQL store ([store] url)")
        raise UserError(f"DIR: {src} is a backup of a {engine} store and this store is on {store.engine}: {how}")
    if engine != "sqlite":
        tool = pg_tool("pg_restore")
    if not is_empty(store):
        raise UserError(f"the store {store.path} is not empty ({store.count('messages')} messages, chain length "
                        f"{chain.head_of(store.db)[0]}): restore goes onto an empty store only")
    dirs: set[Path] = set()
    inline = _inline_in_copy(src / manifest["database"]["file"]) if engine == "sqlite" else set()
    for name, info in sorted(manifest["files"].items()):
        sha = info["sha256"]
        if sha in inline:  # kept in its row in the database copy: no file of its own in the store
            continue
        dest = store.blob_path(sha)
        dest.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(dest, (src / name).read_bytes(), mode=0o600, sync_directory=False)
        dirs.add(dest.parent)
    for d in dirs:
        sync_dir(d)
    if engine == "sqlite":
        source = sqlite3.connect(f"file:{src / manifest['database']['file']}?mode=ro", uri=True)
        try:
            source.backup(store.db.conn)
        finally:
            source.close()
        store.db.execute("PRAGMA journal_mode=WAL")
    else:
        # the empty tables are dropped and the backup's made, in one transaction (all or nothing)
        _pg_run(store, [tool, "--clean", "--if-exists", "--no-owner", "--no-privileges", "--single-transaction",
                        "--exit-on-error", str(src / manifest["database"]["file"])])
        from mattermail.store.connection import PgConnection

        store.db.close()  # a fresh session: nothing prepared against the tables that were replaced
        store.db = PgConnection(str(store.location))
    store.migrate()  # a backup of an older schema
    return manifest
