"""The records chain on a tmp store: written with every change, and store verify names what was tampered with.

Tampering is done the way an intruder with the files would: sqlite3 on the database (dropping the
append-only triggers first), or a byte flipped in a raw file.
"""

from __future__ import annotations

import hashlib
import sqlite3
import threading
from pathlib import Path

import psycopg
import pytest
import sqlite_utils

from mattermail.store import Store, StoreError, UserError, chain, insert_message, records, transaction
from mattermail.store import directory as d
from mattermail.store.schema import MIGRATIONS
from mattermail.store.verify import verify


def raw(n: int) -> bytes:
    return f"From: a{n}@client.example\r\nSubject: message {n}\r\nMessage-ID: <{n}@t>\r\n\r\nbody {n}\r\n".encode()


def store_one(s: Store, n: int, matter: str | None = "1234") -> int:
    data = raw(n)
    sha, _ = s.write_blob(data)
    with transaction(s):
        mid, _ = insert_message(s, data, sha)
        if matter:
            d.record_filing(s, d.Filing(mid, matter, None, "matter-address", f"{matter}@m.test", ""))
        else:
            d.log_event(s, "unfiled", {"recipient": "x@m.test", "reason": "no rule"}, mid, "Q1")
    return mid


@pytest.fixture
def store(store_location, tmp_path):
    s = Store(store_location, tmp_path / "messages")
    d.add_matter(s, "1234", "Smith v Jones")
    d.add_matter(s, "5678", "Estate of Brown")
    for n in range(1, 5):
        store_one(s, n)
    store_one(s, 5, matter=None)
    yield s
    s.close()


def tamper(s: Store, *sql: str) -> None:
    """Change the database behind the store's back, as someone with the file (or the database's owner) could."""
    if s.engine == "postgresql":
        with psycopg.connect(s.location, autocommit=True) as pg:
            pg.execute("ALTER TABLE chain DISABLE TRIGGER USER")
            for q in sql:
                pg.execute(q)
        return
    con = sqlite3.connect(s.path, isolation_level=None)
    try:
        con.execute("DROP TRIGGER IF EXISTS chain_no_update")
        con.execute("DROP TRIGGER IF EXISTS chain_no_delete")
        for q in sql:
            con.execute(q)
    finally:
        con.close()


def lines(rep) -> list[str]:
    return [p.line() for p in rep.problems]


def test_a_clean_store_verifies_and_every_change_is_an_entry(store):
    rep = verify(store)
    assert rep.ok, lines(rep)
    kinds = [e.kind for e in chain.entries(store.db)]
    # 4 stored+filed, then one stored+unfiled
    assert kinds == ["stored", "filed"] * 4 + ["stored", "unfiled"], kinds
    assert (rep.length, rep.messages, rep.filings, rep.files) == (10, 5, 4, 5), rep
    assert chain.head(store) == (10, rep.head)


def test_a_flipped_byte_in_a_raw_file_names_the_message_and_file(store):
    path = store.blob_path(hashlib.sha256(raw(3)).hexdigest())
    data = bytearray(path.read_bytes())
    data[10] ^= 0x01
    path.write_bytes(bytes(data))
    rep = verify(store)
    assert len(rep.problems) == 1, lines(rep)
    p = rep.problems[0]
    assert (p.message, p.file, p.event, p.seq) == (3, str(path), "stored", 5), p
    assert "raw file altered" in p.what, p


def test_a_removed_raw_file_is_named(store):
    path = store.blob_path(hashlib.sha256(raw(2)).hexdigest())
    path.unlink()
    rep = verify(store)
    assert [(p.message, p.what) for p in rep.problems] == [(2, "raw file missing")], lines(rep)


def test_a_deleted_filings_row_is_named(store):
    tamper(store, "DELETE FROM filings WHERE message = 2")
    rep = verify(store)
    assert len(rep.problems) == 1, lines(rep)
    p = rep.problems[0]
    assert (p.seq, p.message, p.event) == (4, 2, "filed"), p
    assert "filing (matter 1234, rule matter-address) missing from the filings table" in p.what, p


def test_a_deleted_chain_entry_is_named(store):
    tamper(store, "DELETE FROM chain WHERE seq = 6")
    rep = verify(store)
    first = rep.problems[0]
    assert first.seq == 7 and "entry 6 before it is missing" in first.what, lines(rep)
    # and what entry 6 recorded (message 3's filing) is now unaccounted for
    assert any(p.message == 3 and "in no chain entry" in p.what for p in rep.problems), lines(rep)


def test_two_swapped_entries_are_both_named(store):
    cols = "prev_hash, hash, kind, actor, message, sha256, detail, time"
    tamper(store,
           "CREATE TEMP TABLE t AS SELECT * FROM chain WHERE seq IN (3, 5)",
           f"UPDATE chain SET ({cols}) = (SELECT {cols} FROM t WHERE t.seq = 5) WHERE seq = 3",
           f"UPDATE chain SET ({cols}) = (SELECT {cols} FROM t WHERE t.seq = 3) WHERE seq = 5")
    rep = verify(store)
    named = sorted({p.seq for p in rep.problems if "hash does not match" in p.what})
    assert named == [3, 5], lines(rep)
    assert rep.problems[0].seq == 3, lines(rep)


def test_an_altered_entry_and_a_planted_message_are_named(store):
    tamper(store, "UPDATE chain SET actor = 'someone' WHERE seq = 2",
           "INSERT INTO messages (sha256, size, message_id, subject, header_from, date, received) "
           "VALUES ('ab', 1, '', 'planted', '', '', 0)")
    rep = verify(store)
    assert rep.problems[0].seq == 2 and "hash does not match" in rep.problems[0].what, lines(rep)
    assert any(p.seq is None and p.message == 6 and "in no chain entry" in p.what for p in rep.problems), lines(rep)


def test_the_chain_table_refuses_update_and_delete(store):
    with pytest.raises(StoreError, match="append-only"):
        store.db.execute("DELETE FROM chain WHERE seq = 1")
    with pytest.raises(StoreError, match="append-only"):
        store.db.execute("UPDATE chain SET actor = 'x' WHERE seq = 1")


def test_a_change_rolled_back_leaves_no_entry(store):
    before = chain.head(store)
    data = raw(99)
    sha, _ = store.write_blob(data)
    with pytest.raises(RuntimeError):
        with transaction(store):
            insert_message(store, data, sha)
            raise RuntimeError("crash before commit")
    assert chain.head(store) == before
    assert verify(store).ok


def test_refile_delete_and_hold_are_entries_and_a_hold_refuses(store):
    store.actor = "alice"
    records.refile_message(store, 1, "5678", None, "wrong matter")
    records.hold_matter(store, "5678", "litigation")
    with pytest.raises(UserError, match="matter 5678, which is under legal hold .*litigation"):
        records.delete_message(store, 1, "cleanup")
    with pytest.raises(UserError, match="under legal hold"):
        records.refile_message(store, 1, "1234", None, "back")
    entry, path, err = records.delete_message(store, 2, "duplicate")
    assert err is None and not path.exists() and entry.sha256 == hashlib.sha256(raw(2)).hexdigest()
    records.release_matter(store, "5678", "settled")
    records.refile_message(store, 1, "1234", None, "back")
    h = [(e.kind, e.actor) for e in chain.history(store, 1)]
    assert h == [("stored", "router"), ("filed", "router"), ("refiled", "alice"), ("refiled", "alice")], h
    assert [e.kind for e in chain.entries(store.db)][-5:] == ["refiled", "hold", "deleted", "release", "refiled"]
    rep = verify(store)
    assert rep.ok and rep.messages == 4, lines(rep)


def test_a_hold_row_removed_outside_is_named(store):
    records.hold_matter(store, "1234", "litigation")
    tamper(store, "DELETE FROM holds")
    rep = verify(store)
    assert [p.what for p in rep.problems] == ["the legal hold on matter 1234 is gone without a release entry"]


def test_concurrent_writers_do_not_fork_the_chain(store_location, tmp_path):
    Store(store_location, tmp_path / "m").close()
    errors: list[BaseException] = []

    def writer(k: int) -> None:
        s = Store(store_location, tmp_path / "m")
        try:
            for n in range(25):
                store_one(s, k * 1000 + n, matter=None)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
        finally:
            s.close()

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    s = Store(store_location, tmp_path / "m")
    rep = verify(s)
    s.close()
    assert rep.ok and rep.length == 150 and rep.messages == 75, (rep.length, rep.messages, lines(rep))


def test_an_existing_store_gets_its_chain_at_upgrade(tmp_path):
    """A store at schema 5 with messages and filings: the migration chains them (actor 'migration')."""
    db = sqlite_utils.Database(sqlite3.connect(tmp_path / "s.sqlite", isolation_level=None))
    for fn in MIGRATIONS[:5]:
        fn(db)
    db.execute("PRAGMA user_version = 5")
    msgs = Path(tmp_path / "m")
    for n in (1, 2):
        data = raw(n)
        sha = hashlib.sha256(data).hexdigest()
        (msgs / sha[:2]).mkdir(parents=True, exist_ok=True)
        (msgs / sha[:2] / f"{sha}.eml").write_bytes(data)
        db.execute("INSERT INTO messages (sha256, size, received) VALUES (?, ?, ?)", [sha, len(data), 100.0 + n])
    db.execute("INSERT INTO matters (id, title, status, created) VALUES ('1234', 't', 'open', 0)")
    db.execute("INSERT INTO filings (message, matter, rule, recipient, detail, created) "
               "VALUES (2, '1234', 'matter-address', '1234@m.test', '', 103)")
    db.conn.close()
    s = Store(tmp_path / "s.sqlite", msgs)
    got = [(e.kind, e.actor, e.message) for e in chain.entries(s.db)]
    assert got == [("stored", "migration", 1), ("stored", "migration", 2), ("filed", "migration", 2)], got
    rep = verify(s)
    assert rep.ok, lines(rep)
    store_one(s, 3)
    assert verify(s).ok and chain.head(s)[0] == 5


def test_a_rewritten_chain_passes_alone_but_not_against_a_recorded_head(store):
    recorded = chain.head(store)
    # rewrite from entry 2 on, recomputing every hash: the chain is self-consistent again
    rows = list(chain.entries(store.db))
    prev = rows[0].hash
    sql = []
    for e in rows[1:]:
        actor = "forger" if e.seq == 2 else e.actor
        h = chain.entry_hash(prev, e.seq, e.kind, actor, e.message, e.sha256, e.detail, e.time)
        sql.append(f"UPDATE chain SET actor = '{actor}', prev_hash = '{prev}', hash = '{h}' WHERE seq = {e.seq}")
        prev = h
    tamper(store, *sql)
    assert verify(store).ok, "a fully rewritten chain is consistent by itself"
    rep = verify(store, expect=[recorded])
    assert [(p.seq, p.what) for p in rep.problems] == [
        (10, "its hash is not the head recorded for length 10 (the chain was rewritten from here or before)")], lines(rep)
    rep = verify(store, expect=[(11, recorded[1])])
    assert [p.seq for p in rep.problems] == [11] and "no entry 11" in rep.problems[0].what, lines(rep)
    assert verify(store, expect=[chain.head(store)]).ok


def test_a_message_whose_entry_cannot_be_written_is_not_stored(store, monkeypatch):
    """Outside a caller's transaction too: the row and its entry commit together or not at all."""
    def broken(*a, **k):
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(chain, "append_db", broken)
    data = raw(42)
    sha, _ = store.write_blob(data)
    with pytest.raises(sqlite3.OperationalError):
        insert_message(store, data, sha)
    with pytest.raises(sqlite3.OperationalError):
        d.record_filing(store, d.Filing(1, "5678", None, "matter-address", "5678@m.test", ""))
    monkeypatch.undo()
    assert store.count("messages") == 5 and store.count("filings") == 4
    assert verify(store).ok


def store_inline(s: Store, n: int) -> tuple[int, str]:
    """A message kept in its row (messages.raw, store.inline_max), filed to matter 1234: (id, sha256)."""
    data = raw(n)
    sha = hashlib.sha256(data).hexdigest()
    with transaction(s):
        mid, _ = insert_message(s, data, sha, inline=True)
        d.record_filing(s, d.Filing(mid, "1234", None, "matter-address", "1234@m.test", ""))
    return mid, sha


def test_a_message_kept_in_its_row_is_re_hashed_and_an_altered_one_named(store):
    mid, sha = store_inline(store, 6)
    assert not store.blob_path(sha).exists()
    rep = verify(store)
    assert rep.ok and rep.files == 6, lines(rep)  # five files and the one in its row
    literal = f"X'{raw(7).hex()}'" if store.engine == "sqlite" else f"decode('{raw(7).hex()}', 'hex')"
    tamper(store, f"UPDATE messages SET raw = {literal} WHERE id = {mid}")
    rep = verify(store)
    assert len(rep.problems) == 1, lines(rep)
    p = rep.problems[0]
    assert (p.message, p.event) == (mid, "stored") and p.file.startswith("messages.raw"), p
    assert f"raw message altered (its SHA-256 is now {hashlib.sha256(raw(7)).hexdigest()}" in p.what, p


def test_deleting_a_message_kept_in_its_row_leaves_no_copy_of_it_in_the_database_file(store):
    """secure_delete for the deletion: the row's pages are overwritten, not just freed."""
    if store.engine != "sqlite":
        pytest.skip("SQLite only: PostgreSQL keeps a deleted row until VACUUM, as the file system keeps a file's blocks")
    marker = b"unmistakable-marker-" + b"q" * 3000  # (past one page: in an overflow page too)
    data = raw(8).replace(b"body 8", marker)
    sha = hashlib.sha256(data).hexdigest()
    with transaction(store):
        mid, _ = insert_message(store, data, sha, inline=True)
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert marker in store.path.read_bytes()
    records.delete_message(store, mid, "sent to the wrong client")
    store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    assert b"unmistakable-marker" not in store.path.read_bytes()
    assert verify(store).ok


def test_verify_reads_one_snapshot_while_others_write_and_delete(store, tmp_path):
    """Between the snapshot and the re-hashing, another process stores a message and deletes one: no problem."""
    other = Store(store.location, store.messages_dir)
    other.actor = "bob"

    def meanwhile(items):
        store_one(other, 77)
        records.delete_message(other, 3, "deleted while verify runs")
        assert not store.blob_path(hashlib.sha256(raw(3)).hexdigest()).exists()
        return items

    rep = verify(store, wrap=meanwhile)
    other.close()
    assert rep.ok and rep.messages == 5 and rep.length == 10, (rep.messages, rep.length, lines(rep))
    after = verify(store)
    assert after.ok and after.messages == 5 and after.length == 13, (after.messages, after.length, lines(after))


def test_sqlite_reads_the_chain_head_once_per_transaction_and_again_after_a_rollback(tmp_path):
    """SQLite: a write transaction keeps the head it appended last (one SELECT for many appends); a savepoint
    rolled back after its append forgets it, and the next transaction reads what another writer appended."""
    a, b = Store(tmp_path / "s.sqlite", tmp_path / "m"), Store(tmp_path / "s.sqlite", tmp_path / "m")
    heads: list[str] = []
    a.db.conn.set_trace_callback(lambda sql: heads.append(sql) if sql.startswith("SELECT seq, hash FROM chain")
                                 else None)
    with transaction(a):
        for n in range(3):
            chain.append(a, "hold", None, "", {"matter": f"m{n}"})
    assert len(heads) == 1
    with transaction(a):
        with pytest.raises(RuntimeError):
            with transaction(a):  # a message of a batch that fails after its entry
                chain.append(a, "hold", None, "", {"matter": "undone"})
                raise RuntimeError("filing failed")
        chain.append(a, "release", None, "", {"matter": "m0"})
    assert len(heads) == 3  # the new transaction's first append, and the one after the rollback
    chain.append(b, "release", None, "", {"matter": "m1"})  # another writer in between
    chain.append(a, "release", None, "", {"matter": "m2"})
    assert [(e.seq, e.kind, e.detail) for e in chain.entries(a.db)][3:] == [
        (4, "release", '{"matter":"m0"}'), (5, "release", '{"matter":"m1"}'), (6, "release", '{"matter":"m2"}')]
    assert verify(a).ok
    a.close()
    b.close()
