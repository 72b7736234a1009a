"""Filing: a message, its recipients and the rules, turned into store rows (or, for explain, into a trace).

Used by the LMTP handler, ``mattermailctl import`` and ``mattermailctl route explain``:

* :func:`route` — what the rules make of a message, without writing anything.
* :func:`file_message` — store the message once (file fsynced first), then in
  **one transaction** its messages row (direction, body text, system flag),
  deliveries, capture links, filings and one event per recipient; committed
  before the caller answers ``250``. A redelivery files nothing twice (unique
  index on filings). Unfiled mail is kept (event ``unfiled`` with the reason)
  and, in the same transaction, queued in the outbox (mattermail/store/outbox.py)
  for ``router.failed_mail_address`` — never for system (loop) mail, at most
  once per recipient; the router's forwarder (router/forwarder.py) sends it.
* The router's batches (router/batch.py) call :func:`plan_filing` for each message before their write
  transaction, then :func:`write_filing` in it, and :func:`after_commit` after it.

Recipients: the LMTP envelope when there is one; otherwise (imports) the
configured ``router.catchall_headers`` in order, trusting the topmost
``router.trusted_hops`` instances (:func:`~mattermail.router.resolve.resolve`).
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from email.message import Message

from mattermail.config import Config
from mattermail.logs import QueueIdAdapter
from mattermail.msgid import msgid, msgids, subject_key
from mattermail.router.capture_link import CaptureInfo, inspect_captures
from mattermail.store import directory
from mattermail.store.directory import Filing, log_event, record_filing, transaction
from mattermail.router.message import MessageData
from mattermail.router.resolve import addresses_in, loop_reason, resolve
from mattermail.router.rules import FilingDecision, RouterRules, RoutingResult, RuleContext, apply_rules, merge
from mattermail.store import (EnvelopeRecord, Store, find_message, forget_envelope, header_text, insert_message,
                              normalise_address, queue_forward, queued_recipients, record_capture, record_deliveries,
                              record_thread_keys)
from mattermail.router.text import MAX_SCAN, text_of

__all__ = ["FileResult", "RecipientOutcome", "after_commit", "capture_state", "file_message",
           "file_stored", "FilingPlan", "load_capture_secret", "plan_filing", "route", "system_reason",
           "write_filing"]

log = logging.getLogger("mattermail.router.filing")
_quiet = logging.getLogger("mattermail.router.filing.explain")  # route() reports in its trace, not the log
_quiet.addHandler(logging.NullHandler())
_quiet.propagate = False


@dataclass
class RecipientOutcome:
    recipient: str
    kind: str  # "filed", "unfiled", "personal", "duplicate" (a second capture copy) or "dropped" (not stored)
    result: RoutingResult
    new_filings: int = 0
    capture_note: str = ""
    forward_error: str | None = None
    unverified: bool = False  # a copy to the capture address that did not verify

    @property
    def summary(self) -> str:
        """``filed=matter:1234,person:5``, ``unfiled="reason"``, ``personal`` or ``""``, for log lines."""
        if self.kind == "filed":
            parts = [*(f"matter:{f.matter}" for f in self.result.filings if f.matter),
                     *(f"person:{f.person_id}" for f in self.result.filings if f.person_id is not None)]
            return "filed=" + ",".join(dict.fromkeys(parts))
        if self.kind == "unfiled":
            return f'unfiled="{self.result.unfiled_reason}"'
        if self.kind == "dropped":
            return "dropped=personal (inbound capture copy no rule files; capture.inbound = known)"
        return "personal" if self.kind == "personal" else ""


@dataclass
class FileResult:
    message_id: int
    sha256: str
    new: bool
    direction: str
    system: bool
    outcomes: list[RecipientOutcome] = field(default_factory=list)
    outbox: list[int] = field(default_factory=list)  # notices queued for the failed-mail address
    dropped: bool = False  # an inbound capture copy nobody files: no row, its file goes after the commit


def load_capture_secret(cfg: Config) -> bytes | None:
    """The capture HMAC secret, or None when capture is off or the file is unreadable."""
    if not cfg.capture.address:
        return None
    from mattermail.capture import CaptureError, load_secret

    try:
        return load_secret(cfg.capture.secret_file)
    except (CaptureError, OSError):
        return None


def system_reason(raw: bytes | Message, envelope_from: str | None = None) -> tuple[str, str] | None:
    """Loop mail (bounce, auto-reply): from the headers, or a null envelope sender ("" ; None = no envelope)."""
    found = loop_reason(raw)
    if found is None and envelope_from is not None and envelope_from.strip("<> ") == "":
        found = ("bounce", "null envelope sender")
    return found


def _headers(raw: bytes) -> Message:
    return MessageData.from_bytes(raw).headers


_decoded = header_text  # the messages row's reading of a header (RFC 2047 decoded, blanks squeezed)


def _correspondents(msg: Message, envelope: EnvelopeRecord | None) -> tuple[tuple[str, str], ...]:
    """(address, where) from From/To/Cc and every recorded envelope recipient; Bcc'd ones are marked."""
    out: dict[str, str] = {}
    for name in ("From", "To", "Cc"):
        for value in msg.get_all(name, []):
            for addr in addresses_in(str(value)):
                out.setdefault(addr.lower(), name)
    for rcpt in envelope.recipients if envelope else ():
        out.setdefault(normalise_address(rcpt), "envelope, Bcc")
    return tuple(out.items())


def references(msg: Message) -> tuple[tuple[str, str], ...]:
    """(id, header) of the messages this one answers, most recent first: In-Reply-To, then References from
    its last id to its first; each id once."""
    out: dict[str, str] = {}
    for ref in (i for v in msg.get_all("In-Reply-To", [])[:1] for i in msgids(v)):
        out.setdefault(ref, "In-Reply-To")
    for ref in reversed([i for v in msg.get_all("References", [])[:1] for i in msgids(v)]):
        out.setdefault(ref, "References")
    return tuple(out.items())


def thread_keys(msg: Message, capture_info: dict[str, CaptureInfo] | None = None) -> list[tuple[str, str]]:
    """(kind, key) rows of store/threads.py for a message: its Message-ID, the Message-ID the milter saw
    (verified capture copies), its subject key."""
    keys = [("msgid", msgid(msg.get("Message-ID", "")) or "")]
    keys += [("msgid", i.envelope.message_id) for i in (capture_info or {}).values()
             if i.verified and i.envelope is not None and i.envelope.message_id]
    keys.append(("subject", subject_key(_decoded(msg.get("Subject", "")))))
    return [(k, v) for k, v in keys if v]


def _context(msg: Message, recipient: str | None, envelope_from: str | None, capture: CaptureInfo | None,
             loop: tuple[str, str] | None, sha256: str = "") -> RuleContext:
    subject = _decoded(msg.get("Subject", ""))
    return RuleContext(
        recipient=recipient, subject=subject,
        from_addresses=tuple(a for v in msg.get_all("From", []) for a in addresses_in(str(v))),
        envelope_from=envelope_from, capture=capture is not None,
        correspondents=_correspondents(msg, capture.envelope) if capture is not None else (), loop=loop,
        references=references(msg), subject_key=subject_key(subject), sha256=sha256,
        inbound_capture=capture is not None and capture.envelope is not None and capture.envelope.direction == "inbound")


def _addresses(msg: Message, recipients: list[str], cfg: Config) -> list[tuple[str, str]]:
    if recipients:
        return [(r.strip().strip("<>"), "envelope") for r in recipients]
    found = resolve(msg, cfg.general.catchall_domains, (), cfg.router.catchall_headers, cfg.router.trusted_hops)
    return [(r.address, r.source) for r in found]


def route(raw: bytes, recipient: str | None, store: Store, cfg: Config, envelope: EnvelopeRecord | None = None, *,
          envelope_from: str | None = None, capture_secret: bytes | None = None,
          rules: RouterRules | None = None) -> RoutingResult:
    """Resolve the recipients of ``raw`` (``recipient`` if given, else its headers) and apply the rules to each;
    nothing is written. ``envelope``: the recorded envelope of a capture copy (else looked up by its reference,
    trusted only when ``capture_secret`` verifies it). The merged result's trace starts with the resolution."""
    rules = rules or RouterRules.from_config(cfg)
    msg = _headers(raw)
    loop = system_reason(msg, envelope_from)
    addresses = _addresses(msg, [recipient] if recipient else [], cfg)
    secret = capture_secret if capture_secret is not None else load_capture_secret(cfg)
    caps = inspect_captures([a for a, _ in addresses], cfg.capture.address, secret, store, _quiet)
    sha = hashlib.sha256(raw).hexdigest()
    results = []
    for addr, source in addresses or [(None, "")]:
        cap = caps.get(addr) if addr else None
        if cap is not None and envelope is not None:
            cap = CaptureInfo(cap.ref, True, envelope, cap.duplicate, cap.note)
        r = apply_rules(_context(msg, addr, envelope_from, _trusted(cap), loop, sha), directory.Lookups(store), rules)
        r.resolved = [f"{addr} ({source})"] if addr else []
        if cap is not None:
            what = "capture copy" if cap.verified else "UNVERIFIED capture copy (filed as inbound mail)"
            inbound = cap.verified and cap.envelope is not None and cap.envelope.direction == "inbound"
            r.trace.insert(0, f"{addr}: {what}{' of inbound mail' if inbound else ''}:{cap.note or ' envelope given'}")
            if inbound and not r.filings and cfg.capture.inbound == "known":
                r.trace.append(f"{addr}: result: dropped, not stored (capture.inbound = known)")
        results.append(r)
    merged = merge(results)
    if not addresses:
        merged.trace.insert(0, f"resolution: no catch-all address in {', '.join(cfg.router.catchall_headers)}")
    return merged


def capture_state(capture_info: dict[str, CaptureInfo]) -> str:
    """"verified" when a capture recipient's reference verified and its envelope was found (the only mail
    recorded as outbound), "unverified" for any other copy to the capture address, "" for other mail."""
    if not capture_info:
        return ""
    return "verified" if any(i.verified for i in capture_info.values()) else "unverified"


def _trusted(cap: CaptureInfo | None) -> CaptureInfo | None:
    return cap if cap is not None and cap.verified else None


def file_message(raw: bytes, envelope_from: str | None, recipients: list[str], store: Store, cfg: Config,
                 queue_id: str = "", capture_info: dict[str, CaptureInfo] | None = None, *,
                 rules: RouterRules | None = None, forward: bool = True, source: str = "lmtp") -> FileResult:
    """Store ``raw`` once and file it for each recipient, in one transaction; then send what it queued for
    the failed-mail address (a failure leaves the notice in the outbox, retried by the router's forwarder).

    ``envelope_from`` None and no ``recipients`` = no envelope (imports): the recipients come from the
    headers. ``capture_info`` (from :func:`inspect_captures`; computed here when None) maps capture
    recipients to their envelopes. ``forward=False`` never forwards (bulk imports). Raises on any store
    failure, with nothing committed; ``forward_error`` set on an outcome: its notice is still queued.
    A message of at most ``store.inline_max`` bytes goes into its row, a larger one into its file first."""
    inline = len(raw) <= cfg.store.inline_max
    if inline:
        sha = hashlib.sha256(raw).hexdigest()
    else:
        sha, _ = store.write_blob(raw)  # durable before the commit
    result = file_stored(MessageData.from_bytes(raw), sha, envelope_from, recipients, store, cfg, queue_id,
                         capture_info, rules=rules, source=source, forward=forward, inline=inline)
    after_commit(result, store, cfg, queue_id, send=forward)
    return result


@dataclass
class FilingPlan:
    """What :func:`plan_filing` decided for a stored message, for :func:`write_filing` to write: computed
    from reads only, so the router plans a batch before it takes the store's write lock (SQLite has one
    writer at a time: the milter's envelope records wait for the router's transaction)."""

    data: MessageData
    sha: str
    envelope_from: str | None
    recipients: list[str]
    queue_id: str
    capture_info: dict[str, CaptureInfo]
    outcomes: list[RecipientOutcome]
    loop: tuple[str, str] | None
    direction: str
    capture: str
    drop: bool  # an inbound capture copy nobody files, not stored before: no rows
    text: str
    forward_to: str  # the failed-mail address for the notice of unfiled recipients ("" none)
    source: str
    inline: bool = False  # the raw message goes into its row (data.raw), not a file written before


def plan_filing(data: MessageData | bytes, sha: str, envelope_from: str | None, recipients: list[str],
                store: Store, cfg: Config, queue_id: str = "", capture_info: dict[str, CaptureInfo] | None = None,
                *, rules: RouterRules | None = None, source: str = "lmtp", forward: bool = True,
                lookups: directory.Lookups | None = None, inline: bool = False) -> FilingPlan:
    """The reading half of :func:`file_stored`: the recipients, their captures and the rules' decisions; no
    write. Logs a capture copy that does not verify. ``inline``: the raw message goes into its row."""
    if isinstance(data, bytes):
        data = MessageData.from_bytes(data)
    qlog = QueueIdAdapter(log, {"queue_id": queue_id})
    rules = rules or RouterRules.from_config(cfg)
    msg = data.headers
    loop = system_reason(msg, envelope_from)
    addresses = _addresses(msg, recipients, cfg)
    if capture_info is None:
        capture_info = inspect_captures([a for a, _ in addresses], cfg.capture.address,
                                        load_capture_secret(cfg), store, qlog)
    capture_info = {k.strip().strip("<>"): v for k, v in capture_info.items()}
    lookups = lookups or directory.Lookups(store)
    outcomes: list[RecipientOutcome] = []
    for addr, _source in addresses or [("", "")]:
        cap = capture_info.get(addr)
        if cap is not None and cap.duplicate:
            outcomes.append(RecipientOutcome(addr, "duplicate", RoutingResult(), capture_note=cap.note))
            continue
        # an unverified copy is filed as what it is: mail from outside to one of our addresses
        res = apply_rules(_context(msg, addr or None, envelope_from, _trusted(cap), loop, sha), lookups, rules)
        kind = "filed" if res.filings else "unfiled" if res.unfiled_reason else "personal"
        outcomes.append(RecipientOutcome(addr, kind, res, capture_note=cap.note if cap else "",
                                         unverified=cap is not None and not cap.verified))
    capture = capture_state(capture_info)
    direction = "outbound" if any(i.verified and i.envelope is not None and i.envelope.direction == "outbound"
                                  for i in capture_info.values()) else "inbound"
    if capture == "unverified":
        qlog.warning("capture copy to %s does not verify (%s): stored as inbound mail, marked unverified",
                     ", ".join(f"<{a}>" for a in capture_info), ";".join(i.note.strip() for i in capture_info.values()))
    # (a stored message is found by insert_message: no look-up here but for the rare drop)
    drop = _drop(outcomes, capture_info, cfg) and find_message(store, sha) is None
    # the body text is unused when the message is stored already (a redelivery)
    text = "" if drop else text_of(msg, data.body_prefix(MAX_SCAN))
    return FilingPlan(data, sha, envelope_from, recipients, queue_id, capture_info, outcomes, loop, direction,
                      capture, drop, text, cfg.router.failed_mail_address if forward and loop is None else "", source,
                      inline)


def write_filing(plan: FilingPlan, store: Store) -> FileResult:
    """The writing half of :func:`file_stored`: the plan's rows in one transaction (a savepoint inside the
    caller's), and the outbox record of its unfiled recipients."""
    msg, sha, queue_id, outcomes = plan.data.headers, plan.sha, plan.queue_id, plan.outcomes
    if plan.drop:
        with transaction(store):
            for info in plan.capture_info.values():
                if info.ref is not None:
                    forget_envelope(store, info.ref)
        for o in outcomes:
            o.kind = "dropped"
        return FileResult(0, sha, False, plan.direction, plan.loop is not None, outcomes, dropped=True)
    outbox: list[int] = []
    with transaction(store):
        mid, new = insert_message(store, plan.data.raw, sha, plan.direction, plan.text, plan.loop is not None,
                                  headers=msg, capture=plan.capture, size=plan.data.size, inline=plan.inline)
        record_deliveries(store, mid, plan.envelope_from or "", plan.recipients, queue_id)
        record_thread_keys(store, mid, thread_keys(msg, plan.capture_info), fresh=new)
        for info in plan.capture_info.values():
            if info.ref is not None:
                record_capture(store, mid, info.ref, info.verified)
        seen: set[tuple] = set()  # a new message's filings are new, each key once (no answer to wait for)
        for o in outcomes:
            o.new_filings = 0
            for f in o.result.filings:
                row = Filing(mid, f.matter, f.person_id, f.rule, f.recipient, f.detail)
                if new and directory.filing_key(row) in seen:
                    continue
                seen.add(directory.filing_key(row))
                o.new_filings += record_filing(store, row, sha, fresh=new)
            log_event(store, o.kind, _event(o, plan.source), mid, queue_id, sha)
        if plan.forward_to:
            outbox = _queue_unfiled(store, mid, msg, outcomes, plan.forward_to, plan.envelope_from, queue_id)
    return FileResult(mid, sha, new, plan.direction, plan.loop is not None, outcomes, outbox)


def file_stored(data: MessageData | bytes, sha: str, envelope_from: str | None, recipients: list[str],
                store: Store, cfg: Config, queue_id: str = "", capture_info: dict[str, CaptureInfo] | None = None,
                *, rules: RouterRules | None = None, source: str = "lmtp", forward: bool = True,
                lookups: directory.Lookups | None = None, inline: bool = False) -> FileResult:
    """The filing part of :func:`file_message`, for a message already written (``sha``, its durable file),
    or, with ``inline``, one whose raw bytes (``data.raw``) go into its row:
    the rows in one transaction — a savepoint when the caller has one open, which then commits before
    answering — and, with ``forward``, the outbox record of its unfiled recipients. Call
    :func:`after_commit` once committed. ``data``'s parsed header block serves the rules, the messages row
    and the body text (of which at most ``MAX_SCAN`` bytes are read). ``lookups``: the directory's answers
    (shared by the messages of a batch). :func:`plan_filing` then :func:`write_filing`; the router's batches
    call them apart, planning the whole batch before the write transaction."""
    return write_filing(plan_filing(data, sha, envelope_from, recipients, store, cfg, queue_id, capture_info,
                                    rules=rules, source=source, forward=forward, lookups=lookups, inline=inline),
                        store)


def _drop(outcomes: list[RecipientOutcome], capture_info: dict[str, CaptureInfo], cfg: Config) -> bool:
    """An inbound capture copy no rule files, with ``capture.inbound = "known"``: not to be stored."""
    return (cfg.capture.inbound == "known" and bool(outcomes)
            and any(i.verified and i.envelope is not None and i.envelope.direction == "inbound"
                    for i in capture_info.values())
            and all(o.kind in ("personal", "duplicate") for o in outcomes))


def _queue_unfiled(store: Store, mid: int, msg: Message, outcomes: list[RecipientOutcome], to: str,
                   envelope_from: str | None, queue_id: str) -> list[int]:
    """The outbox record for the unfiled recipients not forwarded or queued before (a redelivery adds none)."""
    done = directory.forwarded_recipients(store, mid) | queued_recipients(store, mid)
    todo = [o for o in outcomes if o.kind == "unfiled" and (o.recipient or "(no recipient)") not in done]
    if not todo:
        return []
    reasons = [(o.recipient or "(no recipient)", o.result.unfiled_reason or "") for o in todo]
    return [queue_forward(store, mid, queue_id, to, reasons, envelope_from or _decoded(msg.get("From", "")),
                          _decoded(msg.get("Subject", "")))]


def after_commit(result: FileResult, store: Store, cfg: Config, queue_id: str = "", *, send: bool = False) -> None:
    """After :func:`file_stored`'s rows are committed: log the rules' warnings; with ``send``, send the
    notices it queued now (the router leaves them to its forwarder thread). A failed send stays queued and
    sets ``forward_error`` on the unfiled outcomes."""
    qlog = QueueIdAdapter(log, {"queue_id": queue_id})
    if result.dropped and find_message(store, result.sha256) is None:
        try:  # personal mail is never kept: the file written before the filing goes too
            store.blob_path(result.sha256).unlink(missing_ok=True)
        except OSError as e:
            qlog.error("dropped capture copy: cannot remove %s: %s", store.blob_path(result.sha256), e)
    for o in result.outcomes:
        for w in o.result.warnings:
            qlog.warning("to=<%s>: %s", o.recipient, w)
    if send and result.outbox:
        from mattermail.router.forwarder import send_pending

        errors = send_pending(store, cfg, ids=result.outbox)
        if errors:
            for o in result.outcomes:
                if o.kind == "unfiled":
                    o.forward_error = errors[0]


def _event(o: RecipientOutcome, source: str) -> dict:
    detail: dict = {"recipient": o.recipient, "source": source, "new_filings": o.new_filings,
                    "filings": [_decision(f) for f in o.result.filings]}
    if o.unverified:
        detail["capture"] = "unverified"
    if o.result.unfiled_reason:
        detail["reason"] = o.result.unfiled_reason
    if o.result.system:
        detail["system"] = o.result.system_reason
    if o.result.warnings:
        detail["warnings"] = o.result.warnings
    return detail


def _decision(f: FilingDecision) -> dict:
    return {"matter": f.matter, "person": f.person_id, "rule": f.rule, "detail": f.detail}
