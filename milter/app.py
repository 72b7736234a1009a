"""The pymilter adapter: gathers what Postfix tells us, acts only at end of message.

Callbacks before end-of-message only record state (and are declared
``@Milter.noreply`` so Postfix does not wait for them); callbacks we do not
need are left to pymilter's defaults, which negotiate them away. Any exception
is logged with its traceback and answered ``451 4.3.0``: the client (or
Postfix's queue) retries, and nothing passes unfiltered.

``envrcpt`` is answered: a client's ``RCPT TO`` naming the capture address
is refused there (``550 5.7.1``); only our own ``addrcpt`` adds it.

The callbacks Postfix makes several times per message (one per recipient,
header field and body chunk) are taken at pymilter's byte-level entry points
(``envrcpt_bytes``, ``header_bytes``, ``body``) without the decorator layers:
each is a Python call under the GIL per milter command, and they are most of
the commands. Header values are kept as bytes until the body starts (or the
message ends) and decoded then, all in one pass.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from functools import wraps
from typing import Any, Callable

import Milter

from mattermail.dns import Pending
from mattermail.logs import QueueIdAdapter
from mattermail.milter import inbound, outbound, prefetch, twoway
from mattermail.milter import sender as senderpolicy
from mattermail.milter.direction import Direction, direction
from mattermail.milter.longlines import LineScan
from mattermail.milter.runtime import Runtime
from mattermail.milter.spool import MessageSpool
from mattermail import store as storemod

log = logging.getLogger("mattermail.milter")

TEMPFAIL_TEXT = "Temporary local problem checking this message, please try again later"
STORE_TEMPFAIL_TEXT = "Mail store temporarily unavailable, please try again later"
REPLACE_CHUNK = 65535  # libmilter's largest body chunk
NR_BITS = (Milter.P_NR_CONN | Milter.P_NR_HELO | Milter.P_NR_MAIL | Milter.P_NR_DATA
           | Milter.P_NR_UNKN | Milter.P_NR_EOH | Milter.P_NR_BODY | Milter.P_NR_HDR)


@dataclass
class Message:
    """What we learn about one message, reset at MAIL FROM."""

    mail_from: str = ""
    recipients: list[str] = field(default_factory=list)
    auth_authen: str | None = None
    queue_id: str = ""
    failed: bool = False
    way: Direction = Direction.INBOUND
    # inbound: DNS questions sent ahead (milter.prefetch), read by the checks at end of message
    prefetched: list[Pending] = field(default_factory=list)
    # The header fields in order; values arrive as bytes (header_bytes) and are decoded together, once,
    # when the body starts or at end of message (decode_headers); str from header().
    headers: list[tuple[str, Any]] = field(default_factory=list)
    headers_decoded: bool = False
    spool: MessageSpool = field(default_factory=MessageSpool)
    body_offset: int = -1  # where the body starts in the spool, once the header block is written
    lines: LineScan = field(default_factory=LineScan)  # outbound: the body's lines over 998 octets
    raw: bytes | None = field(default=None, repr=False)  # inbound: the whole message, once read (read_all)

    def decode_headers(self) -> None:
        """Header values as str (``surrogateescape``: a raw byte survives, as pymilter's decoding)."""
        if not self.headers_decoded:
            self.headers = [(n, v.decode("utf-8", "surrogateescape") if v.__class__ is bytes else v)
                            for n, v in self.headers]
            self.headers_decoded = True

    def start_body(self) -> None:
        if self.body_offset < 0:
            self.decode_headers()
            self.spool.write(outbound.header_block(self.headers))
            self.body_offset = self.spool.size

    def read_all(self) -> bytes:
        """The whole message as bytes (the inbound checks verify from bytes; ARC seals them), read once."""
        if self.raw is None:
            self.start_body()
            with self.spool.view() as view:
                self.raw = bytes(view)
        return self.raw


def _guard(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Log any exception with the queue id; passive callbacks defer the verdict to eom."""

    @wraps(fn)
    def wrapper(self: "MatterMilter", *args: Any) -> Any:
        try:
            return fn(self, *args)
        except Exception:
            self.qlog().exception("%s failed", fn.__name__)
            if self.msg is not None:
                self.msg.failed = True
            if fn.__name__ in ("eom",):
                return self.tempfail()
            return Milter.CONTINUE

    return wrapper


_NOREPLY, _CONTINUE = Milter.NOREPLY, Milter.CONTINUE


# per level: a record's fields that do not change, and when logging started (see _record)
_RECORDS: dict[int, tuple[dict[str, Any], float]] = {}


def _record(level: int, text: str) -> logging.LogRecord:
    """What ``log.makeRecord`` makes, from a copy of the fields of a first record made by it: the
    constant ones (names, level, no args, no exc_info) copied at once, the rest set per line."""
    known = _RECORDS.get(level)
    if known is None:
        first = log.makeRecord(log.name, level, "(unknown file)", 0, "", None, None)
        known = _RECORDS[level] = (vars(first).copy(), first.created - first.relativeCreated / 1000)
    fields, started = known
    rec = logging.LogRecord.__new__(logging.LogRecord)
    d = rec.__dict__
    d.update(fields)
    now = time.time()
    d["msg"], d["created"], d["msecs"] = text, now, int((now - int(now)) * 1000) + 0.0
    d["relativeCreated"] = (now - started) * 1000
    d["thread"], d["threadName"], d["process"] = threading.get_ident(), threading.current_thread().name, os.getpid()
    return rec


def _log_line(level: int, queue_id: str, text: str) -> None:
    """The line ``QueueIdAdapter`` would write (``QUEUEID: text``), through the same handlers,
    without logging's caller lookup (a walk up the stack, per message), %-formatting or the
    set-up of a record's constant fields."""
    if log.isEnabledFor(level):
        log.handle(_record(level, f"{queue_id or 'NOQUEUE'}: {text}"))


def _chunks(pieces: Any, size: int) -> Any:
    """Re-cut a stream of bytes-like pieces into bytes of exactly ``size`` (the last one shorter)."""
    pending: list[memoryview] = []
    n = 0
    for piece in pieces:
        mv = memoryview(piece)
        while len(mv):
            take = min(size - n, len(mv))
            pending.append(mv[:take])
            n += take
            mv = mv[take:]
            if n == size:
                yield b"".join(pending)
                pending, n = [], 0
    if n:
        yield b"".join(pending)


class MatterMilter(Milter.Base):
    runtime: Runtime  # set by main() before the first connection

    def __init__(self) -> None:
        self.client_ip: str | None = None
        self.helo = ""
        self.msg: Message | None = None

    def negotiate(self, opts: list[int]) -> int:
        """Skip unneeded callbacks always; skip replies to passive ones only on a unix socket.

        Over TCP, Postfix's back-to-back no-reply commands meet Nagle's
        algorithm and our delayed ACK: a ~40 ms stall per message (measured
        with bench/outbound). Answering every command keeps the exchange
        ping-pong, which costs well under a millisecond on loopback.
        """
        rc = super().negotiate(opts)
        if rc == Milter.CONTINUE and not self.runtime.noreply:
            opts[1] = self._protocol = self._protocol & ~NR_BITS
        return rc

    def qlog(self) -> QueueIdAdapter:
        qid = self.msg.queue_id if self.msg else ""
        if self.msg is not None and not qid:
            qid = self.getsymval("i") or ""
            self.msg.queue_id = qid
        return QueueIdAdapter(log, {"queue_id": qid})

    def tempfail(self) -> int:
        self.setreply("451", "4.3.0", TEMPFAIL_TEXT)
        return Milter.TEMPFAIL

    # connect, hello and MAIL FROM come once per connection or message: written out as @Milter.noreply
    # and _guard would make them (a failure logged and kept for eom, CONTINUE or NOREPLY as
    # negotiated), without their two wrapper calls each.
    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        try:
            if family in (socket.AF_INET, socket.AF_INET6) and hostaddr:
                self.client_ip = hostaddr if isinstance(hostaddr, str) else hostaddr[0]
        except Exception:
            self._passive_failed("connect")
        return _NOREPLY if self._protocol & Milter.P_NR_CONN else _CONTINUE

    connect.milter_protocol = Milter.P_NR_CONN  # as @Milter.noreply would set

    def hello(self, name: str) -> int:
        self.helo = name
        return _NOREPLY if self._protocol & Milter.P_NR_HELO else _CONTINUE

    hello.milter_protocol = Milter.P_NR_HELO

    def envfrom(self, mail_from: str, *params: str) -> int:
        return self.envfrom_bytes(mail_from.encode("utf-8", "surrogateescape"))

    envfrom.milter_protocol = Milter.P_NR_MAIL

    def envfrom_bytes(self, mail_from: bytes, *params: bytes) -> int:
        """What libmilter calls (pymilter's own decodes every parameter, which we never read, then calls
        envfrom): only the address is decoded."""
        try:
            self._discard()
            self.msg = msg = Message(mail_from=mail_from.decode("utf-8", "surrogateescape").strip("<>"),
                                     auth_authen=self.getsymval("{auth_authen}"))
            msg.way = direction(msg.auth_authen, self.client_ip, self.runtime.trusted)
            if msg.way is Direction.INBOUND:  # SPF's question asked now, checked at end of message
                msg.prefetched = self.runtime.resolver.prefetch(prefetch.spf_lookups(msg.mail_from, self.helo))
        except Exception:
            self._passive_failed("envfrom")
        return _NOREPLY if self._protocol & Milter.P_NR_MAIL else _CONTINUE

    def envrcpt(self, rcpt: str, *params: str) -> int:
        """Answered (not no-reply): a client naming the capture address is refused here, at RCPT."""
        return self.envrcpt_bytes(rcpt.encode("utf-8", "surrogateescape"), *(p.encode() for p in params))

    @Milter.noreply
    @_guard
    def header(self, name: str, value: str) -> int:
        if self.msg is not None:
            self.msg.headers.append((name, value))
        return Milter.CONTINUE

    # -- the frequent callbacks, as libmilter calls them (see the module docstring) --------
    def _passive_failed(self, name: str) -> None:
        self.qlog().exception("%s failed", name)
        if self.msg is not None:
            self.msg.failed = True

    def envrcpt_bytes(self, rcpt: bytes, *params: bytes) -> int:
        try:
            if self.runtime.refuses_recipient(rcpt):
                return self._refuse_capture_rcpt(rcpt.decode("utf-8", "surrogateescape").strip("<>"))
            msg = self.msg
            if msg is not None:
                msg.recipients.append(rcpt.decode("utf-8", "surrogateescape").strip("<>"))
        except Exception:
            self._passive_failed("envrcpt")
        return _CONTINUE

    def _refuse_capture_rcpt(self, rcpt: str) -> int:
        """Only the milter's own capture step (addrcpt at end of message, which is no RCPT) may add
        the capture address; from a client it would plant a record that looks like the firm's own mail."""
        shown = senderpolicy.printable(rcpt)
        msg = self.msg
        _log_line(logging.WARNING, self.qlog().extra["queue_id"],
                  f"reject: RCPT to=<{shown}>: the capture address named by a client; "
                  f"client={self.client_ip or 'local'}"
                  + (f" sasl_username={msg.auth_authen}" if msg and msg.auth_authen else ""))
        self.setreply("550", "5.7.1", f"<{shown}>: the capture address accepts only copies made by this server")
        return Milter.REJECT

    def header_bytes(self, name: str, value: bytes) -> int:
        msg = self.msg
        if msg is not None:
            try:
                msg.headers.append((name, value))  # decoded with the others (Message.decode_headers)
            except Exception:
                self._passive_failed("header")
        return _NOREPLY if self._protocol & Milter.P_NR_HDR else _CONTINUE

    def body(self, chunk: bytes) -> int:
        msg = self.msg
        if msg is not None:
            try:
                if msg.body_offset < 0:
                    msg.start_body()
                    if msg.way is Direction.INBOUND:  # the keys' and DMARC's questions, now the header is in
                        msg.prefetched += self.runtime.resolver.prefetch(prefetch.header_lookups(msg.headers))
                msg.spool.write(chunk)
                if msg.way is Direction.OUTBOUND:
                    msg.lines.feed(chunk)
            except Exception:
                self._passive_failed("body")
        return _NOREPLY if self._protocol & Milter.P_NR_BODY else _CONTINUE

    body.milter_protocol = Milter.P_NR_BODY  # as @Milter.noreply would set: negotiate the reply away

    @_guard
    def eom(self) -> int:
        msg = self.msg
        if msg is None:  # pragma: no cover - Postfix always sends MAIL FROM first
            return self.tempfail()
        qlog = self.qlog()
        if msg.failed:
            qlog.warning("verdict=tempfail reason=earlier callback failed")
            return self.tempfail()
        msg.decode_headers()
        summary = (f"{msg.way.value} from=<{msg.mail_from}> nrcpt={len(msg.recipients)} "
                   f"client={self.client_ip or 'local'}"
                   + (f" sasl_username={msg.auth_authen}" if msg.auth_authen else ""))
        if msg.way is Direction.INBOUND:
            return self._inbound(msg, qlog, summary)
        return self._outbound(msg, qlog, summary)

    def _inbound(self, msg: Message, qlog: QueueIdAdapter, summary: str) -> int:
        """Apply :func:`inbound.evaluate`'s verdict: reply; or the two-way capture copy
        (:mod:`~mattermail.milter.twoway`), forged A-R deleted, ours added (with an ARC set when a
        virtual alias forwards the message off-site, :mod:`~mattermail.milter.arcseal`), held if
        quarantined."""
        rt = self.runtime
        try:
            spf = inbound.check_spf(rt.resolver, self.client_ip or "", msg.mail_from, self.helo,
                                    rt.config.inbound.spf_timeout)
            verdict = inbound.evaluate(inbound.InboundMessage(
                client_ip=self.client_ip or "", helo=self.helo, mail_from=msg.mail_from, headers=msg.headers,
                raw=msg.read_all, trusted_forwarder=self._from_trusted_forwarder()), spf, rt.inbound, rt.resolver)
        finally:  # questions sent ahead that no check asked (a wrong guess) are closed now
            rt.resolver.release(msg.prefetched)
            msg.prefetched = []
        decision = verdict.decision
        if verdict.refused:
            _log_line(logging.INFO, msg.queue_id, f"{summary} {verdict.log_fields}")
            self.setreply(decision.smtp_code, decision.xcode, decision.text)
            return Milter.REJECT if decision.action == "reject" else Milter.TEMPFAIL
        copy = (twoway.inbound_copy(rt, msg.queue_id, msg.mail_from, msg.recipients, msg.headers,
                                    self.client_ip or "local") if decision.action != "quarantine" else twoway.Copy())
        if copy.tempfail:
            qlog.error("%s %s verdict=tempfail reason=%s", summary, verdict.results, copy.tempfail)
            self.setreply("451", "4.3.0", "Message could not be filed (capture unavailable), please try again later")
            return Milter.TEMPFAIL
        if copy.recipient:
            self.addrcpt(f"<{copy.recipient}>", "NOTIFY=NEVER")
        for idx in verdict.strip:  # highest first, so positions do not shift
            self.chgheader("Authentication-Results", idx, "")
        arc = rt.arc.seal(msg.recipients, msg.headers, verdict.strip, verdict.authentication_results, msg.read_all(),
                          msg.body_offset, qlog)
        self.addheader("Authentication-Results", " " + arc.ar_value, 0)
        for name, arc_value in arc.headers:  # ARC-Seal ends up on top
            self.addheader(name, " " + arc_value, 0)
        if decision.action == "quarantine":
            self.quarantine(decision.reason or "DMARC quarantine")
        note = " ".join(n for n in (copy.note, arc.note) if n)
        _log_line(logging.INFO, msg.queue_id, f"{summary} {verdict.log_line(note)}")
        return Milter.ACCEPT

    def _from_trusted_forwarder(self) -> bool:
        return bool(self.client_ip) and direction(None, self.client_ip, self.runtime.trusted_forwarders) is Direction.OUTBOUND

    def _outbound(self, msg: Message, qlog: QueueIdAdapter, summary: str) -> int:
        msg.start_body()
        with msg.spool.view() as raw:
            return self._apply(msg, raw, qlog, summary)

    def _apply(self, msg: Message, raw, qlog: QueueIdAdapter, summary: str) -> int:
        sub = outbound.Submission(queue_id=msg.queue_id, login=msg.auth_authen, client=self.client_ip or "local",
                                  mail_from=msg.mail_from, recipients=list(msg.recipients),
                                  headers=list(msg.headers), raw=raw, body_offset=msg.body_offset,
                                  read=msg.spool.read_range, long_lines=msg.lines.finish())
        try:
            out = outbound.process(sub, self.runtime)
        except storemod.StoreError as e:  # never a 5xx, never a pass: the client retries
            kind, text = storemod.describe_error(e)
            qlog.error("%s verdict=tempfail reason=store %s unreadable (%s: %s)", summary,
                       self.runtime.config.store.where, kind, text)
            self.setreply("451", "4.3.0", STORE_TEMPFAIL_TEXT)
            return Milter.TEMPFAIL
        notes = " ".join(out.notes)
        if out.reject:
            qlog.info("%s %s verdict=reject", summary, notes)
            self.setreply(out.reject.code, out.reject.xcode, out.reject.text)
            return Milter.REJECT
        if out.tempfail:
            qlog.error("%s %s verdict=tempfail reason=%s", summary, notes, out.tempfail)
            self.setreply("451", "4.3.0", "Message could not be filed (capture unavailable), please try again later")
            return Milter.TEMPFAIL
        if out.add_recipient:
            self.addrcpt(f"<{out.add_recipient}>", "NOTIFY=NEVER")
        for name, nth, value in out.header_changes:
            if nth == 0:
                self.addheader(name, outbound.milter_value(value))
            else:
                self.chgheader(name, nth, outbound.milter_value(value))
        if out.new_body is not None:  # in full-size chunks: each is a milter command Postfix answers
            for chunk in _chunks(outbound.stream(sub, out.new_body), REPLACE_CHUNK):
                self.replacebody(chunk)
        for name, value in out.signatures:
            self.addheader(name, value, 0)
        _log_line(logging.INFO, msg.queue_id, f"{summary} {notes} size={msg.spool.size} verdict=accept")
        return Milter.ACCEPT

    def _discard(self) -> None:
        if self.msg is not None:
            self.msg.spool.close()
            if self.msg.prefetched:
                self.runtime.resolver.release(self.msg.prefetched)
            self.msg = None

    def abort(self) -> int:
        self._discard()
        return Milter.CONTINUE

    def close(self) -> int:
        self._discard()
        return Milter.CONTINUE


# Header values arrive with their leading whitespace (see outbound.header_block).
Milter.enable_protocols(MatterMilter, Milter.P_HDR_LEADSPC)
