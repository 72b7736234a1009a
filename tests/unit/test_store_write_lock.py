"""Waiting for SQLite's write lock, and the milter's envelope records committed together (milter/envelopes.py).

Real SQLite files; another connection holds the write lock the way the router's batches do (BEGIN IMMEDIATE
... COMMIT)."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest

from mattermail.config import from_dict
from mattermail.milter.runtime import Runtime
from mattermail.store import EnvelopeRecord, Store, StoreError, describe_error, get_envelope, transaction


def _holder(path) -> sqlite3.Connection:
    """A second process's writer, as the router: its own connection, the write lock taken."""
    c = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    c.execute("BEGIN IMMEDIATE")
    return c


def _envelope(ref: str) -> EnvelopeRecord:
    return EnvelopeRecord(ref, "4QX1", "alice@lawfirm.test", ("bob@example.test",), "alice@lawfirm.test",
                          "127.0.0.1", 1.5)


def test_a_writer_gets_the_lock_within_a_millisecond_or_two_of_its_release(tmp_path):
    """SQLite's own busy handler sleeps 1, 2, 5, 10, 15 ... ms between tries (at 1, 3, 8, 18, 33 ms): a lock
    held 20 ms was taken ~13 ms after its release. begin() tries every 0.1-1 ms."""
    s = Store(tmp_path / "store.sqlite", tmp_path / "m")
    lags = []
    for _ in range(5):
        holder = _holder(s.path)
        released = [0.0]

        def release(holder=holder, released=released):
            time.sleep(0.02)
            released[0] = time.monotonic()
            holder.execute("COMMIT")

        t = threading.Thread(target=release)
        t.start()
        with transaction(s):
            got = time.monotonic()
            s.db.execute("INSERT INTO events (time, kind, detail) VALUES (0, 'test', '{}')")
        t.join()
        holder.close()
        assert released[0] > 0 and got >= released[0]
        lags.append(got - released[0])
    assert sorted(lags)[2] < 0.004, lags  # the median lag; with SQLite's handler ~13 ms
    # the connection's own busy timeout is back for every other statement
    assert s.db.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
    s.close()


def test_a_writer_that_never_gets_the_lock_fails_as_busy_after_its_timeout(tmp_path):
    s = Store(tmp_path / "store.sqlite", tmp_path / "m")
    s.db.busy_timeout = 0.2
    holder = _holder(s.path)
    t0 = time.monotonic()
    with pytest.raises(StoreError) as e:
        with transaction(s):
            pass
    assert 0.2 <= time.monotonic() - t0 < 2
    assert describe_error(e.value) == ("busy", "database is locked")
    assert not s.db.in_transaction
    holder.close()
    s.close()


def _runtime(tmp_path) -> Runtime:
    return Runtime(from_dict({"store": {"path": str(tmp_path / "store.sqlite"), "messages_dir": str(tmp_path / "m")}}))


def test_envelopes_of_sessions_waiting_together_go_in_one_commit(tmp_path):
    """Eight sessions record while the router holds the lock: each returns once its record is committed, and
    the records waiting together share commits (the first takes the lock; the others go in the next one)."""
    rt = _runtime(tmp_path)
    rt.record_envelope(_envelope("first"))  # the writer's connection open
    assert rt.envelopes.commits == 1
    holder = _holder(tmp_path / "store.sqlite")
    errors: list[BaseException] = []

    def session(n: int) -> None:
        try:
            rt.record_envelope(_envelope(f"ref{n}"))
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=session, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.1)  # the sessions are waiting (asserted below: none is committed yet)
    assert all(t.is_alive() for t in threads)
    holder.execute("COMMIT")
    for t in threads:
        t.join(10)
    assert not errors, errors
    s = Store(tmp_path / "store.sqlite", tmp_path / "m")
    assert all(get_envelope(s, f"ref{n}") == _envelope(f"ref{n}") for n in range(8))
    assert rt.envelopes.commits <= 3, rt.envelopes.commits  # 1 + the leader's own + everybody else's
    s.close()
    holder.close()


def test_a_failed_group_commit_fails_every_session_in_it_and_the_next_record_reopens(tmp_path):
    """Nothing is taken for committed that was not: each session of a failed group raises (its message is
    deferred), the failure is logged once, and the next record commits on a new connection."""
    rt = _runtime(tmp_path)
    rt.record_envelope(_envelope("dup"))
    with pytest.raises(StoreError):
        rt.record_envelope(_envelope("dup"))  # the primary key: this group's commit fails
    rt.record_envelope(_envelope("after"))
    s = Store(tmp_path / "store.sqlite", tmp_path / "m")
    assert get_envelope(s, "after") is not None
    s.close()
