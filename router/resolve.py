"""Recipient resolution for mail without an LMTP envelope, and loop classification.

"Which addresses was this message for?" — answered from the LMTP envelope when
there is one, otherwise from the trace headers our own MTA added
(``Delivered-To``, ``X-Original-To``, ``Envelope-To``, ``X-Envelope-To``,
``Received: ... for <addr>``). Pure functions over bytes / parsed headers; they
never raise on malformed input (garbage, 8-bit bytes, RFC 2047 words, empty
values), they just find nothing.

Choices:
* Only the topmost ``trusted_hops`` instances of each header name are read:
  headers are prepended, so the topmost ones are the ones our MTA wrote; older
  instances were written by whoever delivered the message before and may point
  anywhere.
* Catch-all filtering is an exact, case-insensitive domain match (a trailing
  dot is ignored); subdomains do not match. Punycode and Unicode spellings of
  a domain are not unified.
* Addresses are returned with the domain lower-cased and the local part as
  written; duplicates (after that normalisation) are dropped, order kept.
* Addresses are read with the shared parser (mattermail/addresses.py): a
  Received header's ``for`` clause is found outside comments and quoted
  strings, with or without ``<>``, a quoted local part with spaces included
  (``for ":fail: x"@d``); a source route (``<@a:u@b>``) is dropped; clauses
  that are not an address (``for <@example.com>``) are skipped. Only the
  first address of a clause is used (RFC 5321 allows one).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from email import policy
from email.message import Message
from email.parser import BytesParser

from mattermail.addresses import addr_spec, mailboxes, received_for

__all__ = ["DEFAULT_HEADERS", "Resolved", "addresses_in", "loop_reason", "received_for",
           "resolve"]

DEFAULT_HEADERS: tuple[str, ...] = (
    "Delivered-To", "X-Original-To", "Envelope-To", "X-Envelope-To", "Received")


@dataclass(frozen=True)
class Resolved:
    """One recipient address and where it was found ("envelope", "Delivered-To", "Received[0]")."""

    address: str
    source: str


_INNER_COMMENT = re.compile(r"\([^()]*\)")


def _text(value: object) -> str:
    """Any header value (str with surrogate escapes, Header object, None) as clean text."""
    if value is None:
        return ""
    s = value if isinstance(value, str) else str(value)
    try:
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeError:
        return s.encode("utf-8", "replace").decode("utf-8", "replace")


def _unfold(value: str) -> str:
    """Folded header text on one line, whitespace runs collapsed."""
    return re.sub(r"\s+", " ", value).strip()


def _strip_comments(value: str) -> str:
    """Remove (possibly nested) parenthesised comments; stray parentheses are dropped."""
    value = re.sub(r"\\[()]", "", value)
    for _ in range(100):  # bounded: each pass removes one nesting level
        stripped = _INNER_COMMENT.sub(" ", value)
        if stripped == value:
            break
        value = stripped
    return value.replace("(", " ").replace(")", " ")


def addresses_in(value: str) -> list[str]:
    """Every address in an address-list header value (``a@b``, ``<a@b>``, ``Name <a@b>``, lists), canonical."""
    return [m.address for m in mailboxes([value]) if m.valid]


def _as_message(raw: bytes | bytearray | memoryview | str | Message) -> Message:
    """A Message as given, or the header block of raw bytes parsed leniently (compat32)."""
    if isinstance(raw, Message):
        return raw
    if isinstance(raw, str):
        raw = raw.encode("utf-8", "surrogateescape")
    return BytesParser(policy=policy.compat32).parsebytes(bytes(raw), headersonly=True)


def _headers(msg: Message, name: str) -> list[str]:
    """All values of header ``name`` (case-insensitive), topmost first, as clean text."""
    want = name.strip().lower()
    try:
        return [_text(v) for k, v in msg.raw_items() if str(k).strip().lower() == want]
    except Exception:  # pragma: no cover - a Message subclass with odd headers
        return []


def _domains(catchall_domains: Iterable[str]) -> frozenset[str]:
    """Normalised catch-all domains; a lone string is one domain, not its characters."""
    if isinstance(catchall_domains, str):
        catchall_domains = [catchall_domains]
    return frozenset(d.strip().rstrip(".").lower() for d in catchall_domains if d and d.strip())


def resolve(raw_headers: bytes | Message, catchall_domains: Iterable[str],
            envelope: Sequence[str] = (), header_order: Sequence[str] = DEFAULT_HEADERS,
            trusted_hops: int = 1) -> list[Resolved]:
    """The addresses a message was for.

    Envelope recipients (from LMTP), when given, win and are all returned
    (source "envelope"). Otherwise each header name of ``header_order`` is
    tried in turn, reading only its topmost ``trusted_hops`` instances and
    keeping addresses in ``catchall_domains``; the first name that yields an
    address wins. ``trusted_hops <= 0`` trusts no header.
    """
    seen: set[str] = set()
    out: list[Resolved] = []

    def add(addr: str, source: str) -> None:
        if addr not in seen:
            seen.add(addr)
            out.append(Resolved(addr, source))

    if envelope:
        for rcpt in envelope:
            text = _unfold(_text(rcpt))
            addr = addr_spec(text) or text.strip("<>").strip()
            if addr:
                add(addr, "envelope")
        if out:
            return out
    domains = _domains(catchall_domains)
    if not domains or trusted_hops <= 0:
        return out
    try:
        msg = _as_message(raw_headers)
    except Exception:  # pragma: no cover - the feed parser does not raise in practice
        return out
    for name in header_order:
        is_received = name.strip().lower() == "received"
        for i, value in enumerate(_headers(msg, name)[:trusted_hops]):
            if is_received:
                found = [a] if (a := received_for(value)) else []
                source = f"Received[{i}]"
            else:
                found = addresses_in(value)
                source = name.strip()
            for addr in found:
                if addr.rpartition("@")[2] in domains:
                    add(addr, source)
        if out:
            return out
    return out


def loop_reason(msg: bytes | Message) -> tuple[str, str] | None:
    """(class, reason) for mail that must never get an automatic reply, else None.

    "bounce": top-level ``multipart/report`` (DSN, MDN, ARF) or a null
    topmost ``Return-Path: <>``. "auto": ``Auto-Submitted`` present and not
    "no" (RFC 3834). ``Precedence`` is deliberately not considered.
    """
    try:
        m = _as_message(msg)
    except Exception:  # pragma: no cover
        return None
    ctype = next(iter(_headers(m, "Content-Type")), "")
    if _unfold(ctype).split(";", 1)[0].strip().lower() == "multipart/report":
        return "bounce", "multipart/report"
    return_path = _headers(m, "Return-Path")
    if return_path and re.fullmatch(r"<\s*>", _strip_comments(_unfold(return_path[0])).strip()):
        return "bounce", "null return path"
    for value in _headers(m, "Auto-Submitted")[:1]:
        keyword = _strip_comments(_unfold(value)).split(";", 1)[0].strip().lower()
        if keyword and keyword != "no":
            return "auto", f"Auto-Submitted: {keyword}"
    return None
