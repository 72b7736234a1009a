"""Group commit: a batch of received messages filed with one COMMIT, one outcome per message.

:func:`file_batch` is the whole durability order of a delivery (see DESIGN.md "Store"). A message of at
most ``store.inline_max`` bytes has no file: its raw bytes go into its row and are durable with the commit.
A larger one's file is written and synced first (``router.sync``: one syncfs(2) of the store's file system
for the whole batch, or an fsync of each file and each hash directory). Then every message's filing is
planned (router/filing.py ``plan_filing``: reads and rules, before the write lock), each plan written in
its own savepoint of ONE transaction (``write_filing``: its rows and, for unfiled mail, its outbox record),
and the batch committed once (on SQLite the commit's WAL is fsynced just after the write lock is released,
before anything returns). A message whose filing fails is rolled back to its savepoint and comes back
without a result (the LMTP edge defers it); if the commit fails, every message does. A result means: its
raw bytes (row or file) and its rows are durable. Nothing here speaks a protocol.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mattermail.config import Config
from mattermail.logs import QueueIdAdapter
from mattermail.router.capture_link import inspect_captures
from mattermail.router.filing import FileResult, FilingPlan, after_commit, plan_filing, write_filing
from mattermail.router.message import MessageData
from mattermail.router.rules import RouterRules
from mattermail.store import Spooled, Store, directory, transaction

__all__ = ["CaptureSettings", "Item", "Outcome", "file_batch"]

log = logging.getLogger("mattermail.router.lmtp")


@dataclass(frozen=True)
class CaptureSettings:
    """The capture address and its HMAC secret (None: copies are stored unlinked)."""

    address: str = ""
    secret: bytes | None = None


@dataclass
class Item:
    """One received message to file: its data, envelope sender and recipients, Postfix's queue id.
    ``spooled``: what the LMTP server received, with its SHA-256: the temp file it streamed the message to
    (``data.path`` until it is made durable), or no file (``path`` None) for one it kept in ``data.raw``."""

    data: MessageData
    sender: str
    rcpts: list[str]
    queue_id: str = ""
    spooled: Spooled | None = None

    @property
    def log(self) -> QueueIdAdapter:
        return QueueIdAdapter(log, {"queue_id": self.queue_id})

    def discard(self) -> None:
        """Remove the spool file if it was never made durable (a batch that did not run)."""
        if self.spooled is not None and self.spooled.path is not None and self.data.path == self.spooled.path:
            Path(self.spooled.path).unlink(missing_ok=True)


@dataclass
class Outcome:
    """What became of one item: ``result`` once committed, None when it must be deferred."""

    item: Item
    result: FileResult | None = None
    sha256: str = ""


def file_batch(store: Store, cfg: Config, rules: RouterRules, capture: CaptureSettings,
               items: Sequence[Item]) -> list[Outcome]:
    """File ``items`` with one commit; one :class:`Outcome` per item, in order. Never raises for a
    store or filing failure (it is logged with the queue id and the item has no result)."""
    outcomes = [Outcome(it) for it in items]
    written: list[Outcome] = []
    dirs: dict[Path, None] = {}
    whole_fs = cfg.router.sync == "syncfs"  # one flush for the batch, else an fsync per file and directory
    inline: set[int] = set()  # ids of the outcomes whose raw message goes into its row: no file
    for o in outcomes:
        it = o.item
        try:
            if it.spooled is not None and it.spooled.path is not None:
                path = store.adopt(it.spooled, sync_file=not whole_fs)  # renamed into place
                it.data.path, o.sha256 = path, it.spooled.sha256
            elif it.data.raw is not None and len(it.data.raw) <= cfg.store.inline_max:
                o.sha256 = it.spooled.sha256 if it.spooled else hashlib.sha256(it.data.raw).hexdigest()
                inline.add(id(o))
                written.append(o)
                continue
            else:
                assert it.data.raw is not None
                o.sha256, path = store.write_blob(it.data.raw, sync_dir=False, sync_file=not whole_fs,
                                                  sha256=it.spooled.sha256 if it.spooled else None)
        except Exception:
            it.log.exception("storing or filing failed, deferring %d recipient(s)", len(it.rcpts))
            it.discard()
            continue
        dirs[path.parent] = None
        written.append(o)
    if not written:
        return outcomes
    # Each message's reads and rules first, outside the write transaction: SQLite has one writer at a time,
    # and the milter's envelope records (an SMTP session each) wait for it. Inside: only the rows.
    lookups = directory.Lookups(store, cached=True)  # the directory read once per batch
    plans: list[tuple[Outcome, FilingPlan]] = []
    for o in written:
        it = o.item
        try:
            caps = inspect_captures(it.rcpts, capture.address, capture.secret, store, it.log)
            plans.append((o, plan_filing(it.data, o.sha256, it.sender, it.rcpts, store, cfg, it.queue_id, caps,
                                         rules=rules, lookups=lookups, inline=id(o) in inline)))
        except Exception:
            it.log.exception("storing or filing failed, deferring %d recipient(s)", len(it.rcpts))
    if not plans:
        return outcomes
    deferred: set[int] = set()  # ids of the items already deferred (and logged) in their savepoint
    try:
        if dirs:  # the files and their renames durable before the commit (none: every message is inline)
            store.sync_blobs(dirs, whole_fs)
        # one commit for the batch; SQLite: its WAL fsynced after the write lock is released (engine._Tx)
        with transaction(store, sync_after_unlock=True):
            for o, plan in plans:
                try:
                    o.result = write_filing(plan, store)  # in its own savepoint (a nested transaction)
                except Exception:
                    if not store.in_transaction:  # the database rolled the whole batch back
                        raise
                    o.item.log.exception("storing or filing failed, deferring %d recipient(s)", len(o.item.rcpts))
                    deferred.add(id(o))
    except Exception:  # the commit (or the whole transaction) failed: nothing of the batch is stored
        for o, _ in plans:
            if id(o) not in deferred:
                o.item.log.exception("storing or filing failed, deferring %d recipient(s)", len(o.item.rcpts))
            o.result = None
        return outcomes
    for o in written:
        if o.result is not None:
            after_commit(o.result, store, cfg, o.item.queue_id)  # the rules' warnings; notices: the forwarder
    return outcomes
