"""Full-text indexing off the delivery path: the queue of stored messages not yet in the search index.

A new message row is queued in the transaction that inserts it (a trigger, schema migration 8), so a
delivery commits without touching the index and a rollback takes the queue entry with the row. The
router's indexer thread (router/indexer.py) calls :func:`index_pending` after each commit and at start-up,
so a crash between a delivery's ``250`` and its indexing loses nothing: the queue entry is committed with
the message and the next start indexes it. A message is in the index exactly when it is not queued;
deleting a queued message removes its queue entry (and touches no index row).
"""

from __future__ import annotations

from mattermail.store import fulltext
from mattermail.store.engine import Store, transaction

__all__ = ["index_pending", "pending_count", "pending_ids"]


def pending_ids(store: Store, limit: int | None = None) -> list[int]:
    """Ids of the messages not indexed yet, oldest first (at most ``limit``)."""
    sql = "SELECT message FROM fts_pending ORDER BY message"
    params: list[int] = []
    if limit:
        sql += " LIMIT ?"
        params.append(limit)
    return [r[0] for r in store.db.execute(sql, params)]


def index_pending(store: Store, limit: int = 200) -> int:
    """Index up to ``limit`` queued messages in one short transaction and take them off the queue; how many
    were taken (0: nothing pending). Idempotent: an entry is indexed and dequeued in the same commit, so
    running it again, in this or another process, never indexes a message twice."""
    with transaction(store):
        ids = pending_ids(store, limit)
        if not ids:
            return 0
        # a queue entry without its message (cannot happen through the triggers) is simply dropped
        fulltext.index_messages(store, ids)
        marks = ",".join("?" * len(ids))
        store.db.execute(f"DELETE FROM fts_pending WHERE message IN ({marks})", ids)
    return len(ids)


def pending_count(store: Store) -> int:
    """How many stored messages are not in the search index yet."""
    return store.db.execute("SELECT COUNT(*) FROM fts_pending").fetchone()[0]
