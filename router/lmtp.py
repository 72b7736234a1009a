"""The LMTP front of the router: aiosmtpd's LMTP server, DATA streamed to the store, replies per recipient.

LMTP answers once per recipient after DATA. DATA is kept in a buffer as it arrives and, once it outgrows it
(256 KB), written to a spool file in the store (:class:`MatterLMTP`, :class:`~mattermail.store.BlobWriter`:
the header block and at most the buffer stay in memory; a smaller message's file is written by the writer
thread, which also makes a spool file durable under its hash), queued for the writer thread, filed with its
batch (router/batch.py) and answered ``250`` only after its file and rows are committed; any failure
answers ``451 4.3.0`` so Postfix keeps the message queued and retries (nothing lost, nothing filed twice).
Notices for unfiled mail are queued in the same commit and sent by the forwarder (router/forwarder.py),
never by the writer thread; new messages are queued for the search index in the same commit and indexed by
the indexer (router/indexer.py) after the ``250``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import aiosmtpd.smtp
from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import Envelope, Session

from mattermail.config import Config
from mattermail.daemon import parse_listen
from mattermail.router.batch import CaptureSettings, Item, Outcome, file_batch
from mattermail.router.forwarder import Forwarder
from mattermail.router.indexer import Indexer
from mattermail.router.message import MessageData, head_length, parse_headers, queue_id_from
from mattermail.router.rules import RouterRules
from mattermail.srs import SRSCodec
from mattermail.store import BlobWriter, Spooled, Store, StoreError, describe_error

log = logging.getLogger("mattermail.router.lmtp")

# <local@domain>: dot-atoms of RFC 5322 atext (domain: letters, digits, hyphens), then the end or [ \t]
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_ADDR = re.compile(rf"<(({_ATOM}(?:\.{_ATOM})*)@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*)>(?=[ \t]|\Z)")

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO}
_sanitized_log = aiosmtpd.smtp.sanitized_log


def _sanitized_log_if_enabled(func: Callable[..., None], msg: str, *args: object, **kwargs: object) -> None:
    """aiosmtpd's ``sanitized_log`` (two calls per command: the line at DEBUG and at INFO), but nothing at all
    when its logger would drop the line anyway (mattermail/logs.py keeps ``mail.log`` at WARNING): no
    sanitized copy of the arguments, no logging call."""
    logger, level = getattr(func, "__self__", None), _LEVELS.get(getattr(func, "__name__", ""))
    if level is not None and isinstance(logger, logging.Logger) and not logger.isEnabledFor(level):
        return
    _sanitized_log(func, msg, *args, **kwargs)


aiosmtpd.smtp.sanitized_log = _sanitized_log_if_enabled  # (a module global, looked up at each call)

MAX_MESSAGE_SIZE = 64 * 1024 * 1024
MAX_HEAD = 4 * 1024 * 1024  # header bytes kept in memory (and read by the rules); the rest is only on disk
_CHUNK = 64 * 1024  # DATA is read in chunks of at most this
_WRITE_FAILED = "451 4.3.0 Error: writing the message failed, try again later"  # after DATA, one per recipient
_TEMPORARY = "451 4.3.0 Error: temporary failure, try again later"  # an unexpected error in a command


def _take_head(head: bytearray, block: bytes) -> bool:
    """Append to ``head`` the part of ``block`` (complete, unstuffed lines that follow it) that belongs to
    the header block: up to and including the empty line, or up to the line that reaches ``MAX_HEAD``.
    Whether the header block goes on after ``block``."""
    start = len(head)
    if start == 0 and block.startswith(b"\r\n"):  # no header at all: the empty line alone
        head += b"\r\n"
        return False
    head += block
    i = head.find(b"\r\n\r\n", max(0, start - 2))
    if i >= 0:
        del head[i + 4:]
        return False
    if len(head) >= MAX_HEAD:
        k = head.find(b"\r\n", MAX_HEAD - 2)  # the end of the line that reaches MAX_HEAD
        if k >= 0:
            del head[k + 2:]
        return False
    return True


def _has_long_line(block: bytes, line_limit: int) -> bool:
    """Whether a line of ``block`` with its CRLF is longer than ``line_limit``, i.e.
    ``max(map(len, block.split(b"\\r\\n"))) + 2 > line_limit``, found a window at a time: the last CRLF
    within ``line_limit - 1`` bytes of a line's start ends every line before it in time; none there, and the
    line is too long. A 100 KB body takes ~100 rfind calls instead of a list of 1,300 lines."""
    too_long = line_limit - 1  # bytes without CRLF that make a line too long
    p, n = 0, len(block)
    while n - p >= too_long:
        j = block.rfind(b"\r\n", p, p + too_long + 1)  # a CRLF that starts at most too_long - 1 bytes after p
        if j < 0:
            return True
        p = j + 2
    return False


def queue_id_of(raw: bytes) -> str:
    """Postfix's queue id from the topmost Received header of ``raw`` ("with LMTP id X" / "with ESMTP id X")."""
    return queue_id_from(parse_headers(raw[:head_length(raw)]))


@dataclass
class Received:
    """DATA as :class:`MatterLMTP` received it: in a spool file, with its header block."""

    spooled: Spooled
    head: bytes


class MatterLMTP(LMTP):
    """aiosmtpd's LMTP, with one reply per recipient also when DATA itself is refused.

    aiosmtpd answers an over-long line or too much data with a single reply,
    as SMTP does; an LMTP client (RFC 2033) then waits for the replies of the
    other recipients until it times out.
    """

    _DATA_REFUSALS = ("500 Line too long", "552 Error: Too much mail data", _WRITE_FAILED)

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's MAIL FROM / RCPT TO address parse, with a fast path for the usual ``<local@domain>``
        (dot-atoms of plain characters, then nothing, or blanks and parameters) that gives what its
        email-header parser gives for it (a test compares them); anything else goes to that parser (which,
        besides, builds a class on each call: ~10% of the router's LMTP time at 4 KB)."""
        m = _PLAIN_ADDR.match(arg)
        rest = arg[m.end():].lstrip() if m is not None else ""
        if m is None or rest.startswith("("):  # (a comment: the parser's to drop)
            return super()._getaddr(arg)
        if self.local_part_limit and len(m.group(2)) > self.local_part_limit:
            return None, None
        return m.group(1), rest

    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA (same checks, limits and replies), but the data goes to a :class:`BlobWriter` as it
        arrives instead of a list joined at the end: memory holds the header block and at most the writer's
        buffer, not the message. The handler gets ``envelope.received`` (a :class:`Received`); ``content``
        stays None."""
        if await self.check_helo_needed() or await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        spool: BlobWriter = self.event_handler.spool()  # (no file yet: made once the data outgrows its buffer)
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        try:
            await self._data(spool)
        except Exception:
            self._failed_in_data = True  # for handle_exception: close, do not answer
            raise

    async def _data(self, spool: BlobWriter) -> None:
        """DATA after its 354: the data read into ``spool``, then the replies (smtp_DATA)."""
        assert self.envelope is not None
        try:
            refusal, head = await self._receive(spool)
        except BaseException:
            spool.discard()
            raise
        if refusal is not None:
            spool.discard()
            await self.push(refusal)
            self._set_post_data_state()
            return
        try:
            self.envelope.received = Received(spool.finish(), bytes(head))  # type: ignore[attr-defined]
        except OSError as e:
            log.error("writing the spool file failed: %s", e)
            reply = "\r\n".join(f"451 4.3.0 <{r}> temporary failure storing message, try again later"
                                 for r in self.envelope.rcpt_tos)
            self._set_post_data_state()
            await self.push(reply)
            return
        status = await self._call_handler_hook("DATA")
        self._set_post_data_state()
        await self.push(status)

    async def _receive(self, spool: BlobWriter) -> tuple[str | None, bytearray]:
        """Read DATA up to the lone dot into ``spool``: (None, or the refusal to answer once the data is
        drained, as aiosmtpd's own smtp_DATA or ``451`` when writing the spool file failed; the header
        block, at most ``MAX_HEAD`` bytes of it).

        Reads in chunks, not lines: each chunk's complete lines are checked (length), dot-unstuffed and
        written in one go; a line cut by the chunk's end waits for the next. Bytes after the lone dot (a
        pipelined command) go back to the front of the stream reader's buffer."""
        limit, line_limit = self.data_size_limit, self.line_length_limit
        reader = self._reader
        num_bytes, refusal = 0, None
        head = bytearray()
        in_head = True
        pending = b""  # the bytes after the last CRLF seen: an incomplete line
        at_line_start = True  # whether pending starts a line (False after an over-long line was dropped)
        while True:
            try:
                chunk = await reader.read(_CHUNK)
            except asyncio.CancelledError:
                log.info("connection lost during DATA")
                self._writer.close()
                raise
            if not chunk:  # the client closed the connection mid-DATA
                raise asyncio.IncompleteReadError(pending, None)
            data = pending + chunk if pending else chunk
            if at_line_start and data.startswith(b".\r\n"):
                end = 0
            else:
                end = data.find(b"\r\n.\r\n")
                end = end + 2 if end >= 0 else -1
            if end >= 0:
                block, rest = data[:end], data[end + 3:]
                if rest:  # pipelined commands after the lone dot: back to the reader
                    reader._buffer[:0] = rest  # type: ignore[attr-defined]
                pending = b""
            else:
                cut = data.rfind(b"\r\n")
                cut = cut + 2 if cut >= 0 else 0  # 0: no line ends in this data yet
                block, pending = data[:cut], data[cut:]
            if block:
                num_bytes += len(block)
                if refusal is None and limit and num_bytes > limit:
                    refusal = "552 Error: Too much mail data"
                if refusal is None and _has_long_line(block, line_limit):
                    refusal = "500 Line too long (see RFC5321 4.5.3.1.6)"
                if refusal is None:
                    if at_line_start and block.startswith(b"."):
                        block = block[1:]
                    block = block.replace(b"\r\n.", b"\r\n")
                    try:
                        spool.write(block)
                    except OSError as e:  # (disk full): deferred once the data is drained, nothing kept
                        log.error("writing the spool file failed: %s", e)
                        refusal = _WRITE_FAILED
                    if in_head:
                        in_head = _take_head(head, block)
                at_line_start = True
            if end >= 0:
                return refusal, head
            if len(pending) > line_limit:  # a line longer than any allowed: refuse, keep only its tail
                refusal = refusal or "500 Line too long (see RFC5321 4.5.3.1.6)"
                num_bytes += len(pending) - 4
                pending, at_line_start = pending[-4:], False

    _held: bytearray | None = None  # replies not sent yet: another command was already received
    _failed_in_data = False  # an unexpected error was raised after DATA's 354

    async def handle_exception(self, error: Exception) -> str:
        """An unexpected error in a command (aiosmtpd would answer ``500``, and Postfix bounce the message):
        logged, and never a 5xx. After DATA's 354 the connection is closed instead of answered (the data
        may be half read, and LMTP owes a reply per recipient): Postfix keeps the message queued for a lost
        connection and retries. Otherwise one ``451`` for the command, and the session goes on."""
        in_data, self._failed_in_data = self._failed_in_data, False
        if in_data:
            log.exception("delivery failed during DATA: closing the connection, the message stays queued")
            if self.transport is not None:
                self.transport.close()
        else:
            log.exception("LMTP command failed: answering 451")
        return _TEMPORARY

    async def push(self, status: str) -> None:
        if self.transport is None or self.transport.is_closing():  # (closed by handle_exception)
            return
        rcpts = self.envelope.rcpt_tos if self.envelope is not None else []
        if status.startswith(self._DATA_REFUSALS) and len(rcpts) > 1:
            for _ in rcpts:
                await self._send(status)
            return
        await self._send(status)

    async def _send(self, status: str) -> None:
        """aiosmtpd's push (the reply, encoded as it does), but a reply is held while a whole command line
        already waits in the input (a pipelined group: RSET, MAIL, RCPT..., DATA) and goes out with the next
        one, as RFC 2920 (3.2) advises: one write and one wake-up of the client per group instead of one per
        command. Every command is answered, so the held replies leave at the latest with the group's last
        (DATA's 354; QUIT's 221); a command line not yet complete holds nothing."""
        line = status.encode("utf-8" if self.enable_SMTPUTF8 else "ascii") + b"\r\n"
        if b"\n" in self._reader._buffer:  # type: ignore[attr-defined]
            if self._held is None:
                self._held = bytearray()
            self._held += line
            return
        if self._held:
            line, self._held = bytes(self._held) + line, None
        self._writer.write(line)
        await self._writer.drain()


@dataclass
class _Delivery:
    """One DATA waiting for its batch: what to file and where its replies go."""
    item: Item
    future: asyncio.Future


def _deferred(rcpts: list[str]) -> str:
    return "\r\n".join("451 4.3.0 <%s> temporary failure storing message, try again later" % r for r in rcpts)


def replies(outcome: Outcome) -> str:
    """One reply per recipient: ``250`` when the message is committed (logged per recipient), else ``451``."""
    it, result = outcome.item, outcome.result
    if result is None:
        return _deferred(it.rcpts)
    out = []
    for r, o in zip(it.rcpts, result.outcomes):
        if result.dropped:  # personal mail: counted in the log, never stored
            it.log.info("to=<%s>, from=<%s>, size=%d, status=dropped%s %s", r, it.sender, it.data.size,
                        o.capture_note, o.summary)
            out.append(f"250 2.0.0 <{r}> personal mail, not stored")
            continue
        it.log.info("to=<%s>, from=<%s>, size=%d, sha256=%s, status=stored%s%s%s%s",
                    r, it.sender, it.data.size, result.sha256[:16], "" if result.new else " (duplicate content)",
                    o.capture_note, f" {o.summary}" if o.summary else "",
                    f" system=({o.result.system_reason})" if o.result.system else "")
        out.append(f"250 2.0.0 <{r}> stored as {result.sha256[:16]}")
    return "\r\n".join(out)


class DeliveryHandler:
    """Queues each DATA for the writer thread and turns its batch outcome into the LMTP replies.

    Group commit: one writer thread owns the store while delivering; it takes the first queued DATA and
    every other already waiting (up to ``MAX_BATCH``) and files them with :func:`file_batch` (one
    COMMIT). No 250 before its message's file and rows are durable. The forwarder thread sends the
    notices that batches queued (started by :meth:`start`, which also drains a crashed run's records).
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
        # For the statistics line at exit (statistics()): batches written, DATAs in them, and the seconds
        # the writer thread spent on them (filing, the syncfs, the commit).
        self.batches = 0
        self.batched = 0
        self.writer_busy = 0.0
        self.forwarder = Forwarder(store, lambda: self.config)
        self.indexer = Indexer(store, lambda: self.config.router.index_delay)
        self._queue: asyncio.Queue[_Delivery] | None = None
        self._writer: ThreadPoolExecutor | None = None
        self._batcher: asyncio.Task | None = None

    def start(self) -> None:
        """Start the forwarder and the indexer (they first finish what a previous run left: the outbox,
        the messages not indexed for search yet)."""
        self.forwarder.start()
        self.indexer.start()

    def spool(self) -> BlobWriter:
        return self.store.spool()

    def item(self, envelope: Envelope) -> Item:
        """The envelope of a DATA, as an :class:`Item` (headers parsed here, once)."""
        rcpts = list(envelope.rcpt_tos)
        # Postfix rewrote foreign senders for SRS on the way in; record the real one.
        sender = self.srs.unwrap(envelope.mail_from or "") if self.srs else (envelope.mail_from or "")
        sender = "" if sender.strip() == "<>" else sender  # the null sender, as aiosmtpd gives it
        received: Received | None = getattr(envelope, "received", None)
        if received is not None:
            spooled = received.spooled
            if spooled.path is None:  # smaller than the spool buffer: in memory, stored by the writer thread
                assert spooled.data is not None
                data = MessageData(parse_headers(received.head), spooled.size, len(received.head), raw=spooled.data)
            else:
                data = MessageData.from_file(spooled.path, received.head, spooled.size)
            return Item(data, sender, rcpts, queue_id_from(data.headers), spooled)
        data = MessageData.from_bytes(envelope.original_content or b"")
        return Item(data, sender, rcpts, queue_id_from(data.headers))

    async def handle_EHLO(self, server: LMTP, session: Session, envelope: Envelope, hostname: str,
                          responses: list[str]) -> list[str]:
        """LHLO's reply (aiosmtpd's, from its EHLO) with PIPELINING, which RFC 2033 asks of every LMTP server:
        Postfix's LMTP client then sends MAIL, RCPT and DATA in one write and reads their replies together,
        one round trip per message instead of three before the data (fewer wake-ups of both processes).
        aiosmtpd reads commands from a stream, so pipelined ones are simply taken in turn."""
        session.host_name = hostname  # (what aiosmtpd does when there is no hook)
        return [responses[0], "250-PIPELINING", *responses[1:]]

    async def handle_DATA(self, server: LMTP, session: Session, envelope: Envelope) -> str:
        job = _Delivery(self.item(envelope), asyncio.get_running_loop().create_future())
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="router-store")
            self._batcher = asyncio.get_running_loop().create_task(self._run_batches())
        self._queue.put_nowait(job)
        # One reply per recipient, as LMTP requires; aiosmtpd pushes the lines as given.
        return await job.future

    def _file(self, batch: list[_Delivery]) -> list[Outcome]:
        """In the writer thread: the batch filed, one commit.

        A PostgreSQL connection lost since the last batch (the server restarted) is replaced first; while
        the server stays unreachable the batch is deferred (451) with one log line, and Postfix retries."""
        try:
            if self.store.reconnect():
                log.warning("store %s: the database connection was lost; reconnected", self.store.path)
        except StoreError as e:
            kind, text = describe_error(e)
            log.error("store %s unavailable (%s: %s): deferring %d message(s)", self.store.path, kind, text,
                      len(batch))
            for j in batch:
                j.item.discard()
            return [Outcome(j.item) for j in batch]
        capture = CaptureSettings(self.capture_address, self.capture_secret)
        outcomes = file_batch(self.store, self.config, self.rules, capture, [j.item for j in batch])
        if any(o.result is not None for o in outcomes):
            self.commits += 1
        return outcomes

    async def _run_batches(self) -> None:
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.MAX_BATCH and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            started = time.monotonic()
            try:
                outcomes = await loop.run_in_executor(self._writer, self._file, batch)
            except BaseException as e:  # not expected (file_batch answers everything), or shutting down
                if not isinstance(e, asyncio.CancelledError):
                    log.exception("delivery batch failed, deferring %d message(s)", len(batch))
                outcomes = [Outcome(j.item) for j in batch]
                for j in batch:
                    j.item.discard()
                for j, o in zip(batch, outcomes):
                    if not j.future.done():
                        j.future.set_result(replies(o))
                if isinstance(e, asyncio.CancelledError):
                    raise
                continue
            self.batches += 1
            self.batched += len(batch)
            self.writer_busy += time.monotonic() - started
            if any(o.result is not None and o.result.outbox for o in outcomes):
                self.forwarder.wake()
            if any(o.result is not None and o.result.new for o in outcomes):
                # after the commit; the replies below do not wait for it. No delivery queued: the burst may
                # be over, the indexer indexes once no other commit follows for its quiet time (else it lets
                # a few more commits gather first)
                self.indexer.wake(now=self._queue.empty())
            for j, o in zip(batch, outcomes):
                if not j.future.done():  # the client may have gone (its task cancelled)
                    j.future.set_result(replies(o))

    def statistics(self, seconds: float) -> str:
        """One line for the log at exit: how the deliveries were batched, and how busy the one writer thread
        was over ``seconds`` (the process's uptime): a writer near 100% is the router's bound; small batches
        with a writer mostly idle mean the senders' concurrency and latency are."""
        per = self.batched / self.batches if self.batches else 0.0
        busy = 100 * self.writer_busy / seconds if seconds > 0 else 0.0
        return (f"statistics: {self.batched} deliveries in {self.batches} batches ({per:.2f} per batch), "
                f"writer busy {self.writer_busy:.1f}s of {seconds:.1f}s ({busy:.0f}%)")

    async def aclose(self) -> None:
        """Stop taking batches and wait for the one being written (call before closing the store)."""
        if self._batcher is not None:
            self._batcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._batcher
        if self._writer is not None:
            self._writer.shutdown(wait=True)
        await asyncio.get_running_loop().run_in_executor(None, self.forwarder.stop)
        await asyncio.get_running_loop().run_in_executor(None, self.indexer.stop)


async def serve(listen: tuple[str, ...], store: Store, handler: DeliveryHandler | None = None) -> list[asyncio.base_events.Server]:
    loop = asyncio.get_running_loop()
    handler = handler or DeliveryHandler(store)
    handler.start()

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
