"""The outbound pipeline, in DESIGN.md's fixed order:

sender check → capture → disclaimer → forged Authentication-Results removed → DKIM sign
(last, over exactly what leaves).

:func:`process` decides; it changes nothing itself. The milter adapter applies
the returned :class:`Outcome` (add recipient, change headers, replace body,
insert signatures) through the milter protocol, so every step is testable
without Postfix.
"""

from __future__ import annotations

import logging
import mmap
import re
import time
from dataclasses import dataclass, field
from collections.abc import Callable, Iterator
from typing import Any

from mattermail import capture
from mattermail.msgid import msgid
from mattermail.milter import sender as senderpolicy
from mattermail.milter.dkim_sign import SIGNED_HEADERS, BodyHasher, select_keys, sign
from mattermail.milter.disclaimer import Disclaimer, apply_edits, plan, segments
from mattermail.milter.authresults import strip_our_results
from mattermail.milter.longlines import LineScan, fold_header, fold_points, insert_folds
from mattermail.milter.runtime import Runtime
from mattermail.store import DisclaimerRow, EnvelopeRecord, StoreError

log = logging.getLogger("mattermail.milter.outbound")

Header = tuple[str, str]


@dataclass
class Submission:
    """One message as the milter gathered it.

    ``raw`` is the whole message as Postfix will write it (CRLF line ends),
    bytes or an ``mmap`` of the spool; the body starts at ``body_offset``.
    """

    queue_id: str
    login: str | None
    client: str
    mail_from: str
    recipients: list[str]
    headers: list[Header]
    raw: bytes | mmap.mmap
    body_offset: int
    # Streams bytes [start, end) of the message without mapping it (the spool's pread).
    read: Callable[[int, int], Iterator[bytes]] | None = None
    # Content spans of the body's lines over 998 octets, offsets from the body's start, when the
    # adapter scanned the body as it arrived (longlines.LineScan); None: process() scans it.
    long_lines: list[tuple[int, int]] | None = None

    def read_range(self, start: int, end: int) -> Iterator[bytes]:
        if self.read is not None:
            return self.read(start, end)
        return iter([bytes(self.raw[start:end])])

    @classmethod
    def of(cls, headers: list[Header], body: bytes, **envelope: Any) -> "Submission":
        head = header_block(headers)
        return cls(headers=headers, raw=head + body, body_offset=len(head), **envelope)  # type: ignore[arg-type]


@dataclass
class Outcome:
    reject: senderpolicy.Verdict | None = None
    tempfail: str | None = None
    add_recipient: str | None = None
    header_changes: list[tuple[str, int, str]] = field(default_factory=list)  # (name, nth, new value or "")
    # The new body as pieces to stream ((start, end) ranges of the spool, or new bytes), or None: unchanged.
    new_body: list[tuple[int, int] | bytes] | None = None
    signatures: list[Header] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _values(headers: list[Header], name: str) -> list[str]:
    return [v for n, v in headers if n.lower() == name]


def header_block(headers: list[Header]) -> bytes:
    """The header block as Postfix will write it (CRLF line ends), with the empty line after it.

    Values carry their own leading whitespace: the milter negotiates
    P_HDR_LEADSPC, so ``Subject:hi`` and ``Subject: hi`` stay distinct (DKIM's
    simple header canonicalization depends on it).
    """
    lines = [f"{n}:{v}".replace("\r\n", "\n").replace("\n", "\r\n") for n, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8", "surrogateescape")


def split_message(raw: bytes) -> tuple[list[Header], bytes]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    headers: list[Header] = []
    for line in head.decode("utf-8", "surrogateescape").split("\r\n"):
        if line[:1] in (" ", "\t") and headers:
            n, v = headers[-1]
            headers[-1] = (n, v + "\n" + line)
        elif ":" in line:
            n, _, v = line.partition(":")
            headers.append((n, v))
    return headers, body


def header_changes(old: list[Header], new: list[Header]) -> list[tuple[str, int, str]]:
    """Operations turning old into new: (name, nth occurrence from 1, value; "" deletes), nth 0 adds."""
    changes = []
    names = {n.lower(): n for n, _ in old + new}
    for key, name in names.items():
        a, b = _values(old, key), _values(new, key)
        for i in range(max(len(a), len(b))):
            va = a[i] if i < len(a) else None
            vb = b[i] if i < len(b) else ""
            if va is None:
                changes.append((name, 0, vb))
            elif va != vb:
                changes.append((name, i + 1, vb))
    return changes


def first_mailbox(sub: Submission) -> str:
    boxes = senderpolicy.mailboxes(_values(sub.headers, "from"))
    return boxes[0] if boxes else sub.mail_from


def process(sub: Submission, rt: Runtime) -> Outcome:
    out = Outcome()
    cfg = rt.config
    author = first_mailbox(sub)
    row: DisclaimerRow | None = None

    # 1. Sender ownership (its look-up brings the disclaimer's: one store check, not two).
    if sub.login:
        owned, row = rt.sender_lookups(sub.login, author)
        verdict = senderpolicy.check(sub.login, owned, sub.mail_from,
                                     _values(sub.headers, "from"), _values(sub.headers, "sender"),
                                     _values(sub.headers, "resent-from") + _values(sub.headers, "resent-sender"),
                                     display_names=cfg.milter.display_name_check == "refuse")
        if not verdict.ok:
            out.reject = verdict
            out.notes.append(f"reject={verdict.code} {verdict.text}")
            return out

    # 2. Capture.
    if cfg.capture.address:
        _capture(sub, rt, out)
        if out.tempfail:
            return out

    headers = sub.headers
    body: list[tuple[int, int] | bytes] = [(sub.body_offset, len(sub.raw))]

    # 3. Disclaimer: planned on the spool, applied as a stream of pieces (no second copy).
    if not sub.login:
        row = rt.disclaimer_for(author)
    if row is not None:
        result = plan(sub.raw, Disclaimer(row.text, row.html))
        if result.edits:
            in_head = [e for e in result.edits if e[0] < sub.body_offset]
            in_body = [e for e in result.edits if e[0] >= sub.body_offset]
            if in_head:  # the top-level part is the text body: its own headers may change
                new_head = apply_edits(bytes(sub.raw[:sub.body_offset]), in_head)
                new_headers, _ = split_message(new_head)
                out.header_changes = header_changes(headers, new_headers)
                headers = new_headers
            body = segments(in_body, sub.body_offset, len(sub.raw))
            out.new_body = body
            out.notes.append(f"disclaimer={row.scope}{':' + row.key if row.key else ''} parts={result.decorated_parts}")
        else:
            out.notes.append(f"disclaimer=skipped ({result.reason})")

    # Postfix's smtp client breaks lines over 998 octets when it sends them, after we signed: fold
    # them here, the same way, so what we sign is what goes on the wire. (Before the A-R deletions
    # below, which name fields by their place in the submitted header.)
    headers, body = _fold_long_lines(sub, out, headers, body)

    # Only we write Authentication-Results under our authserv-id: a submitted one (a user's
    # "mx.lawfirm.test; dkim=pass header.d=bank.test" to a colleague) is deleted. Never signed
    # (dkim_sign leaves A-R out of h=), so the signature below covers the same fields either way.
    forged = strip_our_results(sub.headers, cfg.authserv_id)
    if forged:
        out.header_changes += [("Authentication-Results", idx, "") for idx in forged]  # highest first
        out.notes.append(f"removed_forged_ar={len(forged)}")

    # 4. DKIM, last, over exactly what leaves.
    domain = author.rpartition("@")[2]
    keys = select_keys(domain, rt.signing_keys(), cfg.dkim.sign_subdomains) if domain else []
    if keys:
        hasher = BodyHasher()
        if isinstance(sub.raw, bytes):  # in memory: hash the spool's ranges in place
            for piece in body:
                if isinstance(piece, bytes):
                    hasher.update(piece)
                else:
                    hasher.update_range(sub.raw, *piece)
        else:
            for chunk in stream(sub, body):
                hasher.update(chunk)
        out.signatures = [(n, " " + v) for n, v in sign(headers, b"", keys, bh=hasher.hexdigest_b64())]
        out.notes.append("dkim=" + ",".join(f"{k.domain}/{k.selector}" for k in keys))
    else:
        out.notes.append(f"dkim=none (no key for {domain or 'empty From'})")
    return out


# Each changed header field costs Postfix's cleanup a reverse jump in the queue file on every later
# header edit, and record.c's rec_goto() gives up after 10,000 (REVERSE_JUMP_LIMIT): ~140 edits.
MAX_HEADER_FOLDS = 64


def _fold_long_lines(sub: Submission, out: Outcome, headers: list[Header],
                     body: list[tuple[int, int] | bytes]) -> tuple[list[Header], list[tuple[int, int] | bytes]]:
    """Headers and body with their lines over 998 octets folded (see longlines); the changes go
    into ``out`` (header changes, a replacement body) and a note on the log line.

    Only signed header fields are folded: Postfix's own fold of an unsigned one (X-*, Received)
    breaks no signature of ours, and each field we change is a queue-file edit for Postfix."""
    # The header block as submitted is in the spool: one scan of it (~1 us) spares a look at each field.
    head = LineScan()
    head.feed(sub.raw, 0, sub.body_offset)
    folded: list[tuple[str, str | None]] = []
    if out.header_changes or head.finish():
        folded = [(n, fold_header(n, v) if n.strip().lower() in SIGNED_HEADERS else None) for n, v in headers]
    count = sum(f is not None for _, f in folded)
    if count > MAX_HEADER_FOLDS:
        out.notes.append(f"long_header_lines=not_folded ({count} signed fields, over {MAX_HEADER_FOLDS})")
    elif count:
        new_headers = [(n, v if f is None else f) for (n, v), (_, f) in zip(headers, folded)]
        if out.header_changes:  # the disclaimer changed or added some: diff against what Postfix holds
            out.header_changes = header_changes(sub.headers, new_headers)
        else:  # headers are as submitted: change the folded ones in place
            seen: dict[str, int] = {}
            for n, f in folded:
                nth = seen[n.lower()] = seen.get(n.lower(), 0) + 1
                if f is not None:
                    out.header_changes.append((n, nth, f))
        out.notes.append(f"long_header_lines=folded({count})")
        headers = new_headers
    if out.new_body is None and sub.long_lines is not None:  # scanned as it arrived
        spans = sub.long_lines
    else:  # changed by the disclaimer (or not scanned): scan what will be sent
        scanner = LineScan()
        if isinstance(sub.raw, bytes):
            for piece in body:
                if isinstance(piece, bytes):
                    scanner.feed(piece)
                else:
                    scanner.feed(sub.raw, *piece)
        else:
            for chunk in stream(sub, body):
                scanner.feed(bytes(chunk))
        spans = scanner.finish()
    if spans:
        points = fold_points(spans)
        body = insert_folds(body, points)
        out.new_body = body
        out.notes.append(f"long_lines=folded({len(spans)})")
    return headers, body


def stream(sub: Submission, pieces: list[tuple[int, int] | bytes]) -> Iterator[bytes]:
    """The bytes of ``pieces``: spool ranges read in chunks, inserted bytes as they are."""
    for piece in pieces:
        if isinstance(piece, bytes):
            yield piece
        else:
            yield from sub.read_range(*piece)


def _capture(sub: Submission, rt: Runtime, out: Outcome) -> None:
    cfg = rt.config.capture
    if any(capture.is_capture_address(r, cfg.address) for r in sub.recipients):
        out.notes.append("capture=already (capture address is a recipient)")
        return
    why = capture.excluded(sub.mail_from, sub.recipients, rt.exclude_senders, rt.exclude_recipients)
    if why:
        out.notes.append(f"capture=excluded ({why})")
        return
    try:
        secret = rt.capture_secret()
        ref = capture.new_ref()
        rt.record_envelope(EnvelopeRecord(ref=ref, queue_id=sub.queue_id, mail_from=sub.mail_from,
                                          recipients=tuple(sub.recipients), login=sub.login or "",
                                          client=sub.client, created=time.time(),
                                          message_id=msgid(next(iter(_values(sub.headers, "message-id")), ""))
                                          or ""))
    except (capture.CaptureError, StoreError, OSError) as e:
        if cfg.on_failure == "tempfail":
            out.tempfail = f"capture impossible: {e}"
        else:
            out.notes.append(f"capture=FAILED ({e}; accepted per capture.on_failure)")
        return
    out.add_recipient = capture.capture_address(cfg.address, ref, secret)
    out.notes.append(f"capture={ref}")


_NEWLINE = re.compile(r"\r?\n")


def milter_value(value: str) -> str:
    """Header values go to Postfix with bare LF folds (Postfix writes CRLF)."""
    return _NEWLINE.sub("\n", value)
