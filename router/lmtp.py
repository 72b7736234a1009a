"""The LMTP front of the router: aiosmtpd's LMTP server adapted to the store.

LMTP answers once per recipient after DATA. Each answer is ``250`` only after
the message file is durable and the message, its filings and events are
committed (router/filing.py); any failure answers ``451 4.3.0`` so Postfix
keeps the message queued and retries (nothing lost, nothing filed twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import Envelope, Session

from mattermail.config import Config
from mattermail.daemon import parse_listen
from mattermail.logs import QueueIdAdapter
from mattermail.router.capture_link import inspect_captures
from mattermail.router.filing import FileResult, after_commit, file_stored
from mattermail.router.rules import RouterRules
from mattermail.srs import SRSCodec
from mattermail.store import Store, transaction

log = logging.getLogger("mattermail.router.lmtp")

MAX_MESSAGE_SIZE = 64 * 1024 * 1024


def queue_id_of(raw: bytes) -> str:
    """Postfix's queue id from its topmost Received header ("with LMTP id X" / "with ESMTP id X")."""
    head = raw[:8192].split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    text = head.decode("ascii", "replace").replace("\r\n", "\n").replace("\n\t", " ").replace("\n ", " ")
    for line in text.split("\n"):
        if line.lower().startswith("received:"):
            words = line.split()
            for i, w in enumerate(words[:-1]):
                # "with ESMTP id X", or "(Postfix, from userid 0) id X" for mail from sendmail/pickup
                if w == "id" and i > 1 and (words[i - 2].lower() == "with" or words[i - 1].endswith(")")):
                    return words[i + 1].rstrip(";")
            return ""
    return ""


class MatterLMTP(LMTP):
    """aiosmtpd's LMTP, with one reply per recipient also when DATA itself is refused.

    aiosmtpd answers an over-long line or too much data with a single reply,
    as SMTP does; an LMTP client (RFC 2033) then waits for the replies of the
    other recipients until it times out.
    """

    _DATA_REFUSALS = ("500 Line too long", "552 Error: Too much mail data")

    async def push(self, status: str) -> None:
        rcpts = self.envelope.rcpt_tos if self.envelope is not None else []
        if status.startswith(self._DATA_REFUSALS) and len(rcpts) > 1:
            for _ in rcpts:
                await super().push(status)
            return
        await super().push(status)


@dataclass
class _Delivery:
    """One DATA waiting for its batch: what to file and where its replies go."""
    raw: bytes
    sender: str
    rcpts: list[str]
    qlog: QueueIdAdapter
    future: asyncio.Future


def _deferred(rcpts: list[str]) -> str:
    return "\r\n".join("451 4.3.0 <%s> temporary failure storing message, try again later" % r for r in rcpts)


class DeliveryHandler:
    """Files each message (router/filing.py) and answers per recipient: 250 after the commit, else 451.

    Group commit: one writer thread owns the store while delivering. DATAs wait on a queue; the writer
    takes the first and every other already waiting (up to ``MAX_BATCH``), writes and fsyncs each file,
    fsyncs each directory once, then files every message in its own savepoint of ONE transaction and
    commits once. A message whose filing fails is rolled back to its savepoint and deferred (451); if
    the commit fails, the whole batch is. No 250 before its message's file and rows are durable.
    """

    MAX_BATCH = 32

    def __init__(self, store: Store, capture_address: str = "", capture_secret: bytes | None = None,
                 srs: SRSCodec | None = None, config: Config | None = None) -> None:
        self.store = store
        self.srs = srs
        self.capture_address = capture_address
        self.capture_secret = capture_secret
        self.config = config or Config()
        self.rules = RouterRules.from_config(self.config)
        self.commits = 0  # batches committed (one COMMIT each)
        self._queue: asyncio.Queue[_Delivery] | None = None
        self._writer: ThreadPoolExecutor | None = None
        self._batcher: asyncio.Task | None = None

    async def handle_DATA(self, server: LMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        rcpts = list(envelope.rcpt_tos)
        # Postfix rewrote foreign senders for SRS on the way in; record the real one.
        sender = self.srs.unwrap(envelope.mail_from or "") if self.srs else (envelope.mail_from or "")
        sender = "" if sender.strip() == "<>" else sender  # the null sender, as aiosmtpd gives it
        qlog = QueueIdAdapter(log, {"queue_id": queue_id_of(raw)})
        loop = asyncio.get_running_loop()
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="router-store")
            self._batcher = loop.create_task(self._run_batches())
        job = _Delivery(raw, sender, rcpts, qlog, loop.create_future())
        self._queue.put_nowait(job)
        # One reply per recipient, as LMTP requires; aiosmtpd pushes the lines as given.
        return await job.future

    async def _run_batches(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            try:
                replies = await loop.run_in_executor(self._writer, self._deliver_batch, batch)
            except BaseException as e:  # not expected (_deliver_batch answers everything), or shutting down
                replies = [_deferred(j.rcpts) for j in batch]
                if not isinstance(e, asyncio.CancelledError):
                    log.exception("delivery batch failed, deferring %d message(s)", len(batch))
                for j, r in zip(batch, replies):
                    if not j.future.done():
                        j.future.set_result(r)
                if isinstance(e, asyncio.CancelledError):
                    raise
                continue
            for j, r in zip(batch, replies):
                if not j.future.done():  # the client may have gone (its task cancelled)
                    j.future.set_result(r)

    async def aclose(self) -> None:
        """Stop taking batches and wait for the one being written (call before closing the store)."""
        if self._batcher is not None:
            self._batcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._batcher
        if self._writer is not None:
            self._writer.shutdown(wait=True)

    def _deliver_batch(self, batch: list[_Delivery]) -> list[str]:
        """In the writer thread: file ``batch``, one commit; one reply string per delivery."""
        store = self.store
        replies: list[str | None] = [None] * len(batch)
        written: list[tuple[int, str]] = []  # (index, sha256)
        dirs: dict[Path, None] = {}
        for i, j in enumerate(batch):
            try:
                sha, path = store.write_blob(j.raw, sync_dir=False)  # file fsynced
            except Exception:
                j.qlog.exception("storing or filing failed, deferring %d recipient(s)", len(j.rcpts))
                replies[i] = _deferred(j.rcpts)
                continue
            dirs[path.parent] = None
            written.append((i, sha))
        filed: list[tuple[int, FileResult]] = []
        try:
            if written:
                store.sync_dirs(dirs)  # the renames durable before the commit
                with transaction(store):  # one commit for the batch
                    for i, sha in written:
                        j = batch[i]
                        try:
                            captures = inspect_captures(j.rcpts, self.capture_address, self.capture_secret, store,
                                                        j.qlog)
                            # in its own savepoint (a nested transaction)
                            result = file_stored(j.raw, sha, j.sender, j.rcpts, store, self.config,
                                                 j.qlog.extra["queue_id"], captures, rules=self.rules)
                        except Exception:
                            if not store.in_transaction:  # the database rolled the whole batch back
                                raise
                            j.qlog.exception("storing or filing failed, deferring %d recipient(s)", len(j.rcpts))
                            replies[i] = _deferred(j.rcpts)
                            continue
                        filed.append((i, result))
                self.commits += 1
        except Exception:
            for i, _ in written:
                if replies[i] is None:
                    batch[i].qlog.exception("storing or filing failed, deferring %d recipient(s)",
                                            len(batch[i].rcpts))
                    replies[i] = _deferred(batch[i].rcpts)
            return [r or "" for r in replies]
        for i, result in filed:  # committed: forward what is unfiled, then answer
            j = batch[i]
            try:
                after_commit(j.raw, result, j.sender, store, self.config, j.qlog.extra["queue_id"])
            except Exception:
                j.qlog.exception("storing or filing failed, deferring %d recipient(s)", len(j.rcpts))
                replies[i] = _deferred(j.rcpts)
                continue
            replies[i] = self._replies(j, result)
        return [r or "" for r in replies]

    @staticmethod
    def _replies(j: _Delivery, result: FileResult) -> str:
        replies = []
        for r, o in zip(j.rcpts, result.outcomes):
            j.qlog.info("to=<%s>, from=<%s>, size=%d, sha256=%s, status=stored%s%s%s%s",
                        r, j.sender, len(j.raw), result.sha256[:16], "" if result.new else " (duplicate content)",
                        o.capture_note, f" {o.summary}" if o.summary else "",
                        f" system=({o.result.system_reason})" if o.result.system else "")
            if o.forward_error:
                replies.append(f"451 4.3.0 <{r}> stored, but forwarding to the failed-mail address failed; "
                               "try again later")
            else:
                replies.append(f"250 2.0.0 <{r}> stored as {result.sha256[:16]}")
        return "\r\n".join(replies)


async def serve(listen: tuple[str, ...], store: Store, handler: DeliveryHandler | None = None) -> list[asyncio.base_events.Server]:
    loop = asyncio.get_running_loop()
    handler = handler or DeliveryHandler(store)

    def factory() -> LMTP:
        return MatterLMTP(handler, data_size_limit=MAX_MESSAGE_SIZE, enable_SMTPUTF8=True, decode_data=False,
                    hostname="mattermail-router", ident="mattermail-router LMTP")

    servers = []
    for spec in listen:
        kind, where = parse_listen(spec)
        if kind == "unix":
            path = Path(str(where))
            path.unlink(missing_ok=True)
            path.parent.mkdir(parents=True, exist_ok=True)
            srv = await loop.create_unix_server(factory, path=str(path))
            os.chmod(path, 0o660)
        else:
            host, port = where  # type: ignore[misc]
            srv = await loop.create_server(factory, host=host, port=port, reuse_address=True)
        log.info("listening on %s", spec)
        servers.append(srv)
    return servers
