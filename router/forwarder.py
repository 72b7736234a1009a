"""The forwarder: drains the outbox (mattermail/store/outbox.py) of notices for unfiled mail, off the
delivery path.

A delivery with unfiled recipients writes its "to forward" record in the filing transaction and is
answered ``250`` after the commit; this thread, with a store connection of its own, then sends each
record's notice through Postfix's sendmail (router/forward.py) and, only after sendmail succeeded,
records the ``forwarded`` event and marks the record sent (one transaction). So a stuck or failing
sendmail delays notices, never deliveries.

* Start-up: every unsent record is sent (the records of a crashed run included).
* Failure: logged with the message's queue id, retried after ``base_delay`` seconds, doubling up to
  ``max_delay``; the record stays until sendmail takes it. Nothing is lost.
* Crash between sendmail's success and the mark: the record is still unsent, so the next start sends
  it again — at most one duplicate notice per crash, with the same Message-ID (derived from the record
  id, :func:`~mattermail.router.forward.notice_message_id`), so the copy is recognisable (and Dovecot's
  or a client's duplicate suppression can drop it). A record is never sent before its delivery's commit.
"""

from __future__ import annotations

import contextlib

import logging
import threading
import time
from collections.abc import Callable, Sequence

from mattermail.config import Config
from mattermail.logs import QueueIdAdapter
from mattermail.router import forward as fwd
from mattermail.store import (ForwardRecord, Store, StoreError, forward_failed, inline_raw, mark_forwarded,
                              next_forward_due, pending_forwards)

__all__ = ["Forwarder", "send_pending", "send_record"]

log = logging.getLogger("mattermail.router.forward")


def send_record(store: Store, cfg: Config, rec: ForwardRecord, base_delay: float = 30.0,
                max_delay: float = 3600.0) -> str | None:
    """Send one record's notice, then mark it sent; on failure record the retry. The error, or None."""
    qlog = QueueIdAdapter(log, {"queue_id": rec.queue_id})
    try:
        inline = inline_raw(store, rec.sha256)  # (a small message is in its row, not a file)
        fwd.send_notice(inline if inline is not None else store.blob_path(rec.sha256), rec.reasons, rec.to, cfg, rec.queue_id, rec.subject,
                        rec.envelope_from, fwd.notice_message_id(rec.id, rec.sha256, cfg.general.hostname),
                        spool=store.spool_dir)
    except fwd.ForwardError as e:
        delay = min(max_delay, base_delay * 2 ** min(rec.attempts, 30))
        qlog.error("forwarding unfiled mail to <%s> failed (outbox %d, attempt %d), retry in %ds: %s",
                   rec.to, rec.id, rec.attempts + 1, delay, e)
        forward_failed(store, rec, str(e), time.time() + delay)
        return str(e)
    mark_forwarded(store, rec)
    qlog.info("unfiled mail forwarded to <%s> (%s)", rec.to, "; ".join(f"{r}: {why}" for r, why in rec.reasons))
    return None


def send_pending(store: Store, cfg: Config, ids: Sequence[int] | None = None, base_delay: float = 30.0,
                 max_delay: float = 3600.0) -> list[str]:
    """Send the due records (``ids``: only those, due or not); the errors of the ones that failed."""
    now = None if ids is not None else time.time()
    errors = []
    for rec in pending_forwards(store, now, ids=ids):
        err = send_record(store, cfg, rec, base_delay, max_delay)
        if err is not None:
            errors.append(err)
    return errors


class Forwarder:
    """One daemon thread draining the outbox; :meth:`wake` after a commit that queued a record."""

    def __init__(self, store: Store, config: Callable[[], Config], base_delay: float = 30.0,
                 max_delay: float = 3600.0, idle: float = 60.0) -> None:
        # a connection of its own: the writer thread's batch transaction must not include these writes
        self._store_args = (store.location, store.messages_dir)
        self._config = config
        self.base_delay, self.max_delay, self.idle = base_delay, max_delay, idle
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="router-forward", daemon=True)
            self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop after the notice being sent (if any; waited for ``timeout`` seconds, else left unmarked:
        sent again at the next start)."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        """Drain the outbox until stopped; a store that cannot be opened or read is retried, never fatal."""
        store: Store | None = None
        try:
            while not self._stop.is_set():
                self._wake.clear()
                try:
                    if store is None:
                        store = Store(*self._store_args)
                    while not self._stop.is_set() and self._drain(store):
                        pass
                    due = next_forward_due(store)
                except (StoreError, OSError) as e:
                    log.error("outbox: reading or updating the store failed (%s); retrying in %ds", e,
                              self.base_delay)
                    if store is not None:  # reopen next time: the file may have been replaced or repaired
                        with contextlib.suppress(Exception):
                            store.close()
                        store = None
                    due = time.time() + self.base_delay
                wait = self.idle if due is None else min(self.idle, max(0.0, due - time.time()))
                self._wake.wait(wait)
        finally:
            if store is not None:
                store.close()

    def _drain(self, store: Store) -> bool:
        """Send what is due now (a batch); whether there may be more."""
        records = pending_forwards(store, time.time(), limit=20)
        for rec in records:
            if self._stop.is_set():
                return False
            send_record(store, self._config(), rec, self.base_delay, self.max_delay)
        return len(records) == 20
