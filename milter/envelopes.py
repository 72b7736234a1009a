"""The milter's envelope records: on a store connection of their own, the records of concurrent sessions in
one commit.

A captured message's envelope must be in the store before the milter lets Postfix accept the message (the
router links the capture copy to it). libmilter runs each SMTP session in a thread of its own, and on SQLite
the whole store has one writer at a time, shared with the router's delivery batches and its indexer: a
session that finds the write lock taken waits for it. So:

* records that arrive while a commit is under way wait for the next one and go in it together (a group
  commit: one wait for the lock and one commit for all of them, not one each in turn);
* the writes never hold the lock of the milter's look-ups (users, disclaimers, on the runtime's connection),
  so a session's sender check is not queued behind another session's envelope record.

A failed commit fails every record in it: each session raises the :class:`~mattermail.store.StoreError` and
defers its message (451); the connection is closed and the next record reopens it (a PostgreSQL connection
found lost is replaced at once and the commit tried once more, as the look-ups do).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from mattermail import store as storemod

__all__ = ["EnvelopeWriter"]

log = logging.getLogger("mattermail.milter")


@dataclass
class _Waiting:
    record: storemod.EnvelopeRecord
    done: bool = False
    error: BaseException | None = None


class EnvelopeWriter:
    """:meth:`record` writes one envelope, in a commit shared with the records of other sessions waiting then."""

    def __init__(self, open_store: Callable[[], storemod.Store], where: str) -> None:
        self._open = open_store
        self._where = where
        self._store: storemod.Store | None = None
        self._cond = threading.Condition()
        self._waiting: list[_Waiting] = []
        self._writing = False  # a session is committing a group (the leader)
        self.commits = 0  # groups committed (tests)

    def record(self, record: storemod.EnvelopeRecord) -> None:
        """Return once ``record`` is committed; raise StoreError if its commit failed."""
        me = _Waiting(record)
        with self._cond:
            self._waiting.append(me)
            while self._writing and not me.done:
                self._cond.wait()
            if not me.done:  # nobody is writing: this session commits every record waiting now
                self._writing = True
                group, self._waiting = self._waiting, []
        if me.done:
            if me.error is not None:
                raise me.error
            return
        error: BaseException | None = None
        try:
            self._commit([w.record for w in group])
        except BaseException as e:
            error = e
        with self._cond:
            for w in group:
                w.done, w.error = True, error
            self._writing = False
            self._cond.notify_all()  # the group's sessions, and the next leader among the ones waiting
        if error is not None:
            raise error

    def _commit(self, records: list[storemod.EnvelopeRecord]) -> None:
        for again in (False, True):
            try:
                if self._store is not None and self._store.replaced():
                    log.warning("store %s was replaced on disk: reopening it", self._where)
                    self._close()
                if self._store is None:
                    self._store = self._open()
                storemod.record_envelopes(self._store, records)
                self.commits += 1
                return
            except storemod.StoreError as e:
                lost = self._store is not None and self._store.db.lost
                kind, text = storemod.describe_error(e)
                log.error("store %s: envelope record failed (%s: %s); closing it, the next record reopens it",
                          self._where, kind, text)
                self._close()
                if again or not lost:
                    raise

    def _close(self) -> None:
        store, self._store = self._store, None
        if store is not None:
            try:
                store.close()
            except storemod.StoreError:
                pass
