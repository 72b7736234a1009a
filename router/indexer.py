"""The indexer: puts stored messages into the full-text search index after their delivery's commit.

A delivery commits its message with a queue entry (mattermail/store/indexer.py) and is answered ``250``
without touching the index; this thread, with a store connection of its own, indexes the queued messages
in short transactions (a batch each) and takes them off the queue in the same commit. So search is
eventually complete and the store is never inconsistent:

* Start-up: everything a previous run left queued (a crash between a ``250`` and the indexing) is indexed
  first, without waiting for ``router.index_delay``.
* Woken after each commit that stored mail; waits ``settle`` seconds (0.1) so that a burst's commits are
  indexed in one transaction (fewer, larger FTS5 segments, and the writer thread meets the indexer's write
  lock less often), but no longer than the burst: a commit after which no delivery waits for the writer
  wakes it ``now``, and once ``quiet`` seconds (0.02) pass without another commit the burst is over and it
  indexes (search finds the last of a burst 0.02 s later, not 0.1 s). A steady stream whose every small
  batch leaves the writer's queue empty is no burst's end: indexed once per ``settle``, not after each
  commit (an indexing transaction per delivery cost the router ~0.4 ms of CPU per message, half its work,
  in bench/inline_raw.py with one LMTP session). ``router.index_delay``, when set, is waited in full. Also
  looks every ``idle`` seconds, for mail another process queued.
* Failure (the database locked past its timeout, disk full): logged with the message ids, retried after
  ``retry`` seconds; the entries stay queued. Nothing is lost.

Its commits are not fsynced (``durable=False``): a power cut may undo the last ones, which then stay
queued and are indexed again — an index entry and its queue entry change in one commit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from mattermail.store import Store, StoreError, index_pending
from mattermail.store.indexer import pending_ids

__all__ = ["Indexer"]

log = logging.getLogger("mattermail.router.index")


def _ids(ids: list[int]) -> str:
    if not ids:
        return "none"
    return f"{ids[0]}" if len(ids) == 1 else f"{ids[0]}..{ids[-1]}" if ids == list(range(ids[0], ids[-1] + 1)) \
        else ",".join(map(str, ids[:10])) + (",..." if len(ids) > 10 else "")


class Indexer:
    """One daemon thread emptying the index queue; :meth:`wake` after a commit that stored mail."""

    BATCH = 500

    def __init__(self, store: Store, delay: Callable[[], float] = lambda: 0.0, retry: float = 30.0,
                 idle: float = 60.0, settle: float = 0.1, quiet: float = 0.02) -> None:
        # a connection of its own: the writer thread's batch transaction must not include these writes
        self._store_args = (store.location, store.messages_dir)
        self._delay = delay
        self.retry, self.idle = retry, idle
        self.settle, self.quiet = settle, quiet
        self.indexed = 0  # messages indexed by this thread (tests, logs)
        self.transactions = 0  # indexing transactions that indexed something (tests)
        self.started = threading.Event()  # set when the start-up catch-up is over
        self._wake = threading.Event()
        self._now = threading.Event()  # the deliveries paused: end the settle wait
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="router-index", daemon=True)
            self._thread.start()

    def wake(self, now: bool = False) -> None:
        """After a commit that stored mail; ``now``: no delivery is waiting for the writer (the burst is over),
        so index without the settle wait."""
        if now:
            self._now.set()
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the batch being indexed (a batch cut short stays queued for the next start)."""
        self._stop.set()
        self._now.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        try:
            store = Store(*self._store_args, durable=False)
        except (StoreError, OSError):
            log.exception("indexer: cannot open the store; messages stay unindexed until the next start")
            return
        try:
            woken = False  # the first round is the start-up catch-up: no delay
            while not self._stop.is_set():
                self._wake.clear()
                if woken and self._pause():
                    break
                wait = self.idle if self._catch_up(store) else self.retry
                if not self.started.is_set():
                    if self.indexed:
                        log.info("indexed %d message(s) for search that a previous run left unindexed", self.indexed)
                    self.started.set()
                woken = self._wake.wait(wait)
        finally:
            store.close()

    def _pause(self) -> bool:
        """Before indexing what a wake announced: ``router.index_delay`` when set, else up to ``settle``
        seconds, ended sooner by a wake ``now`` followed by ``quiet`` seconds without another commit (any
        commit in between waits for the next ``now``). True when stopping. A commit that wakes the thread
        after it stopped waiting is indexed too: :meth:`_catch_up` runs until the queue is empty."""
        delay = self._delay()
        if delay > 0:
            return self._stop.wait(max(delay, self.settle))
        deadline = time.monotonic() + self.settle
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0 or not self._now.wait(left):
                break  # settle is over
            self._now.clear()
            self._wake.clear()
            left = deadline - time.monotonic()
            if left <= 0 or not self._wake.wait(min(self.quiet, left)):
                break  # no commit for quiet seconds: the burst is over
        self._now.clear()
        return self._stop.is_set()

    def _catch_up(self, store: Store) -> bool:
        """Index until the queue is empty (or stopping); False after a failure (logged)."""
        while not self._stop.is_set():
            try:
                n = index_pending(store, self.BATCH)
            except (StoreError, OSError) as e:
                try:
                    ids = _ids(pending_ids(store, self.BATCH))
                except (StoreError, OSError):
                    ids = "unknown"
                log.error("indexing message(s) %s for search failed, retrying in %ds: %s", ids, self.retry, e)
                return False
            if not n:
                return True
            self.indexed += n
            self.transactions += 1
            log.debug("indexed %d message(s) for search", n)
        return True
