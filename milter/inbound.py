"""The pure core of the inbound pipeline (DESIGN.md, "Inbound"): SPF, DKIM, DMARC,
one trustworthy ``Authentication-Results`` header, and the decision.

No pymilter here: the milter adapter gathers the envelope and the message,
calls these functions and applies the :class:`Decision`.  All DNS goes through
our :class:`~mattermail.dns.Resolver`; a timeout or SERVFAIL becomes
``temperror`` and never ``pass``, ``fail`` or ``none``.

* :func:`strip_our_results` — which incoming ``Authentication-Results`` claim
  our authserv-id (delete them, highest index first).
* :func:`check_spf` — RFC 7208 at MAIL FROM (HELO identity for the null sender), by pyspf.
* :func:`verify_dkim` — every ``DKIM-Signature`` (RSA and Ed25519), by dkimpy.
* :func:`check_dmarc` — RFC 7489 (in :mod:`mattermail.milter.dmarc_check`).
* :func:`authentication_results` — the RFC 8601 header value, every sender-supplied value quoted.
* :func:`check_author` — refuse mail whose author DMARC cannot judge (several From
  fields, no usable author address), before any DNS work.
* :func:`strictest` — the deciding DMARC result when From names several author domains.
* :func:`decide` — accept, tag, quarantine, reject or tempfail, per :class:`InboundPolicy`.

Size: over 400 lines: SPF, DKIM, DMARC, ARC and the Authentication-Results writer in one core;
issue 14 splits it into a decision core and a module of result types.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import dkim
import dkim.util
import dns.exception
import spf

from mattermail.dns import Resolver, TempError
from mattermail.dnscheck import spf_resolver
from mattermail.milter.author import Authors, readable
from mattermail.milter.dmarc_check import DMARCResult, check_dmarc, organizational_domain

__all__ = [
    "DKIMResult", "DMARCResult", "Decision", "InboundPolicy", "SPFResult", "authentication_results",
    "check_author", "check_dmarc", "check_spf", "decide", "organizational_domain", "pvalue", "quoted_value",
    "strictest", "strip_our_results", "verify_dkim",
]

_AR_NAME = "authentication-results"


# --- SPF ---------------------------------------------------------------------------

@dataclass(frozen=True)
class SPFResult:
    """RFC 7208 result for one identity (``mailfrom``, or ``helo`` for the null sender)."""

    result: Literal["pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"]
    identity: Literal["mailfrom", "helo"]
    domain: str
    explanation: str


def check_spf(resolver: Resolver, client_ip: str, mail_from: str, helo: str, timeout: float) -> SPFResult:
    """SPF for the MAIL FROM identity, or the HELO identity when MAIL FROM is ``<>``.

    pyspf does the evaluation with its DNS hook pointed at ``resolver``
    (:func:`~mattermail.dnscheck.spf_resolver`); ``timeout`` is the budget
    for the whole check (pyspf's ``querytime``, RFC 7208 §4.6.4): past it,
    and on any DNS timeout or SERVFAIL, the result is ``temperror``.
    """
    sender = mail_from.strip().strip("<>").strip()
    helo = helo.strip().rstrip(".")
    identity: Literal["mailfrom", "helo"] = "mailfrom" if sender else "helo"
    ip = client_ip.strip().strip("[]")
    ip = ip[5:] if ip.lower().startswith("ipv6:") else ip
    domain = (sender.rpartition("@")[2] if sender else helo).rstrip(".").lower()
    if not sender and not helo:
        return SPFResult("none", identity, "", "no MAIL FROM domain and no HELO name")
    try:
        with spf_resolver(resolver):
            q = spf.query(i=ip, s=sender, h=helo, querytime=max(timeout, 1e-9))  # 0 would mean "no budget"
            result, _code, explanation = q.check()
    except (ValueError, spf.PermError) as e:  # an unusable client address
        return SPFResult("permerror", identity, domain, f"cannot evaluate SPF: {e}")
    except (spf.TempError, TempError) as e:
        return SPFResult("temperror", identity, domain, f"SPF Temporary Error: {e}")
    if result not in ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"):
        result = "permerror"  # "ambiguous" exists only in pyspf's harsh mode
    return SPFResult(result, identity, (q.o or domain).rstrip(".").lower(), str(explanation or ""))


# --- DKIM --------------------------------------------------------------------------

@dataclass(frozen=True)
class DKIMResult:
    """The verdict on one ``DKIM-Signature`` (``d=``, ``s=``, ``a=``), with a reason unless it passed."""

    result: Literal["pass", "fail", "neutral", "temperror", "permerror", "policy"]
    domain: str
    selector: str
    reason: str
    algorithm: str


class _KeyTempError(Exception):
    """A key lookup failed temporarily (raised through dkimpy, which lets it pass)."""


_SIG_HEADER_RE = re.compile(rb"^DKIM-Signature[ \t]*:(.*(?:\r?\n[ \t].*)*)", re.IGNORECASE | re.MULTILINE)


def _tag(sig: bytes, name: str) -> str:
    """One tag of a signature that may not parse as a whole (best effort, for reporting)."""
    m = re.search(rb"(?:^|;)\s*" + name.encode() + rb"\s*=\s*([^;]*)", sig)
    return re.sub(r"\s+", "", m.group(1).decode("ascii", "replace")) if m else ""


def _sig_tags(value: bytes) -> tuple[str, str, str]:
    """(d=, s=, a=) of a signature header value."""
    return _tag(value, "d"), _tag(value, "s"), _tag(value, "a")


# Why a signature or key was unusable, in words of our own: dkimpy's messages quote the
# sender's tag values, which must not reach our Authentication-Results (see _reason below).
_SIG_ERRORS: tuple[tuple[str, str], ...] = (
    ("unknown signature algorithm", "unsupported signature algorithm (a=)"),
    ("b= value is not valid base64", "b= is not valid base64"),
    ("bh= value is not valid base64", "bh= is not valid base64"),
    ("cv= value", "invalid cv="),
    ("d= value is not valid", "d= is not a valid domain"),
    ("i= domain is not a subdomain of d=", "i= is not within d="),
    ("l= value", "l= is not a number"),
    ("q= value", "unsupported query method (q=)"),
    ("t= value is not", "t= is not a number"),
    ("t= value is in the future", "t= is in the future"),
    ("v= value", "unsupported version (v=)"),
    ("x= value is not", "x= is not a number"),
    ("x= value is less than t=", "x= is before t="),
    ("tlsrpt", "key is for TLS reports only (s=tlsrpt)"),
    ("invalid c= value", "unsupported canonicalization (c=)"),
)
_KEY_ERRORS: tuple[tuple[str, str], ...] = (
    ("missing public key", "key record not found"),
    ("bad version", "key record is not v=DKIM1"),
    ("incomplete rsa public key", "key record has no p="),
    ("could not parse", "public key data cannot be parsed"),
    ("unknown algorithm in k=", "unsupported key type (k=)"),
    ("digest too large for modulus", "key too small for the signature"),
)
_SIG_TAGS = frozenset({"v", "a", "b", "bh", "d", "h", "s", "i", "l", "q", "t", "x", "c", "z"})


def _reason(e: object, table: tuple[tuple[str, str], ...], default: str) -> str:
    """The fixed phrase for a dkimpy error message (matched on dkimpy's own wording)."""
    text = str(e).lower()
    m = re.match(r"missing b?'?(\w+)'?=", text)
    if m:
        return f"signature has no {m.group(1)}=" if m.group(1) in _SIG_TAGS else "signature lacks a required tag"
    return next((phrase for needle, phrase in table if needle in text), default)


def _key_problem(record: bytes | None) -> str:
    """Why a key record is unusable ("" when it looks usable)."""
    if not record:
        return "key record not found"
    try:
        tags = dkim.util.parse_tag_value(record)
    except dkim.util.InvalidTagValueList:
        return "key record syntax error"
    if not re.sub(rb"\s+", b"", tags.get(b"p", b"")):
        return "key revoked (empty p=)"
    try:
        dkim.evaluate_pk(b"key", record)
    except (dkim.KeyFormatError, binascii.Error) as e:
        return "unusable key: " + _reason(e, _KEY_ERRORS, "key record cannot be used")
    return ""


def _temp_reason(e: TempError) -> str:
    return ("DNS timeout looking up the key" if "timed out" in str(e).lower() or "timeout" in str(e).lower()
            else "DNS server failure looking up the key")


def verify_dkim(raw: bytes, resolver: Resolver, min_rsa_bits: int = 1024) -> list[DKIMResult]:
    """Verify every ``DKIM-Signature`` of ``raw`` (top to bottom); [] when there is none.

    dkimpy's ``verify()`` checks only one signature, so each is verified with
    ``verify(idx=i)``.  dkimpy swallows key-lookup problems into ``False``, so
    the key is fetched through our own ``dnsfunc``: a temporary DNS failure is
    raised as :class:`_KeyTempError` (dkimpy lets unknown exceptions through)
    and reported as ``temperror``; a missing, revoked or unparsable key is
    ``permerror``; a body hash or signature mismatch, or an expired signature
    (``x=`` past), ``fail``; a malformed signature ``neutral``; a valid
    signature made with an RSA key shorter than ``min_rsa_bits``, or with
    rsa-sha1 (RFC 8301), ``policy``.

    Every ``reason`` is a phrase of our own (``_SIG_ERRORS``, ``_KEY_ERRORS``):
    never text from the signature, which the sender wrote.
    """
    headers_end = re.search(rb"\r?\n\r?\n", raw)
    header_block = raw[: headers_end.start() + 1] if headers_end else raw
    found = [m.group(1) for m in _SIG_HEADER_RE.finditer(header_block)]
    if not found:
        return []
    try:
        verifier = dkim.DKIM(raw, minkey=min_rsa_bits)
    except (dkim.DKIMException, IndexError, ValueError):  # dkimpy's parser trips on a leading folded line
        return [DKIMResult("permerror", *_sig_tags(v)[:2], "message header cannot be parsed", _sig_tags(v)[2])
                for v in found]
    sigs = [v for n, v in verifier.headers if n.lower() == b"dkim-signature"]
    fetched: dict[str, bytes | None] = {}

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        try:
            qname = name.decode("ascii").rstrip(".")
            records = resolver.txt(qname)
        except TempError as e:
            raise _KeyTempError(_temp_reason(e)) from e
        except (UnicodeError, ValueError, dns.exception.DNSException):  # not a valid DNS name: no key
            records = []
        value = records[0].encode("utf-8", "surrogateescape") if records else None
        fetched["key"] = value
        return value

    results = []
    for i, value in enumerate(sigs):
        d, s, a = _sig_tags(value)
        fetched.clear()
        try:
            ok = verifier.verify(idx=i, dnsfunc=dnsfunc)
        except _KeyTempError as e:
            results.append(DKIMResult("temperror", d, s, str(e), a))
            continue
        except dkim.KeyFormatError as e:
            m = re.search(r"public key too small: (\d+)", str(e))
            why = (f"RSA key of {m.group(1)} bits is shorter than the {min_rsa_bits} bits required (RFC 8301)"
                   if m else "unusable key: " + _reason(e, _KEY_ERRORS, "key record cannot be used"))
            results.append(DKIMResult("policy" if m else "permerror", d, s, why, a))
            continue
        except dkim.UnknownKeyTypeError:  # dkimpy's sign of a key record for another service (s=)
            results.append(DKIMResult("permerror", d, s, "unusable key: not for email (s=)", a))
            continue
        except dkim.ValidationError as e:
            if "body hash mismatch" in str(e):
                results.append(DKIMResult("fail", d, s, "body hash did not verify", a))
            elif "x= value is past" in str(e):
                results.append(DKIMResult("fail", d, s, "signature expired (x= is past)", a))
            else:
                results.append(DKIMResult("neutral", d, s, _reason(e, _SIG_ERRORS, "signature syntax error"), a))
            continue
        except dkim.MessageFormatError as e:
            results.append(DKIMResult("neutral", d, s, _reason(e, _SIG_ERRORS, "signature is not a valid tag list"), a))
            continue
        except binascii.Error:
            results.append(DKIMResult("neutral", d, s, "b= or bh= is not valid base64", a))
            continue
        except KeyError:
            results.append(DKIMResult("neutral", d, s, "signature lacks a required tag", a))
            continue
        except (dkim.DKIMException, ValueError, IndexError, TypeError) as e:  # dkimpy tripping on odd input
            results.append(DKIMResult("neutral", d, s, "signature cannot be processed: "
                                      + type(e).__name__.replace("Error", " error").lower().strip(), a))
            continue
        if ok and a.lower() == "rsa-sha1":
            results.append(DKIMResult("policy", d, s, "rsa-sha1 signatures are not accepted (RFC 8301)", a))
        elif ok:
            results.append(DKIMResult("pass", d, s, "", a))
        else:
            problem = _key_problem(fetched.get("key")) if "key" in fetched else ""
            results.append(DKIMResult("permerror", d, s, problem, a) if problem
                           else DKIMResult("fail", d, s, "signature did not verify", a))
    return results


# --- Authentication-Results ----------------------------------------------------------

# RFC 2045 token (what authres accepts unquoted as a reason) and the pvalue shapes we
# write unquoted: a domain name (DNS labels, "_" allowed) or a simple local@domain.
_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`{|}~-]+")
_DNS_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?")
_LOCAL_AT = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*@")
_ALGORITHM = re.compile(r"[a-z0-9]+-[a-z0-9]+")
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")
VALUE_LIMIT = 100  # characters of a quoted value before escaping; longer text is cut and ends in "..."


def _comment(text: str, limit: int = VALUE_LIMIT) -> str:
    """Text safe inside an RFC 5322 comment: printable ASCII, no parentheses or backslashes, bounded."""
    return re.sub(r"[^\x20-\x7e]|[()\\]", " ", text).strip()[:limit]


def quoted_value(text: str, limit: int = VALUE_LIMIT) -> str:
    """``text`` as an RFC 2045 value: a token as it is, anything else a quoted-string.

    The quoted form holds printable ASCII only (CR, LF and other controls
    become spaces, 8-bit characters ``?``), is cut to ``limit`` characters
    *before* escaping (so never inside a quoted-pair), and escapes ``\\``
    and ``"``.  authres's own ``quote_if_needed`` leaves anything with an
    ``@`` unquoted, which let sender text run on as new results.
    """
    if len(text) <= limit and _TOKEN.fullmatch(text):
        return text
    text = " ".join(_UNPRINTABLE.sub(lambda m: " " if m.group(0) in "\r\n\t\x0b\x0c" else "?", text).split())
    if len(text) > limit:
        text = text[: limit - 3].rstrip() + "..."
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _name(text: str) -> str | None:
    """A domain name (or selector) fit to write unquoted, or None."""
    return text if len(text) <= 253 and _DNS_NAME.fullmatch(text) else None


def pvalue(text: str) -> str:
    """An RFC 8601 pvalue: a domain name or ``local@domain`` unquoted, anything else quoted."""
    local, at, domain = text.rpartition("@")
    if not at:
        return _name(text) or quoted_value(text)
    if len(text) <= 254 and _name(domain) and (not local or _LOCAL_AT.fullmatch(local + "@")):
        return text
    return quoted_value(text)


def authentication_results(authserv_id: str, spf: SPFResult, dkim: Sequence[DKIMResult],
                           dmarc: DMARCResult | Sequence[DMARCResult], client_ip: str, *,
                           impersonated: str = "", linesep: str = "\n") -> str:
    """The value of our ``Authentication-Results`` header (RFC 8601).

    One ``spf=`` (``smtp.mailfrom`` or ``smtp.helo``, the client IP in a
    comment), one ``dkim=`` per signature (``header.d``/``header.s``/
    ``header.a``, ``reason=`` when it did not pass; ``dkim=none`` without
    signatures), one ``dmarc=`` per author domain with ``header.from`` and
    the published policy and applied disposition in a comment, and
    ``x-display-name=spoofed policy.impersonates=<firm address>`` when the
    From display name shows a firm address on mail from outside.  Each result
    starts a new line folded with ``linesep`` + TAB (``"\\n"`` for a milter's
    addheader).

    Built by hand (authres parses it in the tests): results and comments are
    our own words; every value from the message or the envelope goes through
    :func:`quoted_value` or :func:`pvalue`; DKIM's ``d=``/``s=``/``a=`` are
    written only when they are a valid name, since authres (like other
    parsers) accepts a quoted pvalue only as the last property.
    """
    parts = [authserv_id]
    spf_part = f"spf={spf.result} ({_comment(f'sender IP is {client_ip}')})"
    if spf.domain:
        spf_part += f" smtp.{'helo' if spf.identity == 'helo' else 'mailfrom'}={pvalue(spf.domain)}"
    parts.append(spf_part)
    for sig in dkim:
        text = f"dkim={sig.result}"
        if sig.reason:
            text += f" reason={quoted_value(sig.reason)}"
        for prop, val in (("d", _name(sig.domain)), ("s", _name(sig.selector)),
                          ("a", sig.algorithm.lower() if _ALGORITHM.fullmatch(sig.algorithm.lower()) else None)):
            if val:
                text += f" header.{prop}={val}"
        parts.append(text)
    if not dkim:
        parts.append("dkim=none")
    for dm in ([dmarc] if isinstance(dmarc, DMARCResult) else dmarc):
        text = f"dmarc={dm.result}"
        if dm.policy:
            text += f" (p={dm.policy} dis={dm.disposition})"
        if dm.from_domain:
            text += f" header.from={pvalue(dm.from_domain)}"
        parts.append(text)
    if impersonated:
        parts.append(f"x-display-name=spoofed policy.impersonates={pvalue(impersonated)}")
    return (";" + linesep + "\t").join(parts)


def _authserv_id(value: str) -> str:
    """The authserv-id of an ``Authentication-Results`` value: the first token after CFWS."""
    i, n = 0, len(value)
    while i < n:
        if value[i].isspace():
            i += 1
        elif value[i] == "(":  # a comment, possibly nested, with quoted-pairs
            depth = 0
            while i < n:
                c = value[i]
                i += 2 if c == "\\" else 1
                depth += (c == "(") - (c == ")")
                if depth == 0:
                    break
        else:
            break
    rest = value[i:]
    if rest.startswith('"'):
        m = re.match(r'"((?:[^"\\]|\\.)*)"?', rest, re.DOTALL)
        return re.sub(r"\\(.)", r"\1", m.group(1)) if m else ""
    m = re.match(r'[^\s;()"]+', rest)
    return m.group(0) if m else ""


def _claims(value: str, ours: str) -> bool:
    """Whether an A-R value's authserv-id is ``ours`` (also when junk follows it: ``ours/1;``)."""
    token = _authserv_id(value)
    lead = re.match(r"[\w.-]*", token)
    return any(t.rstrip(".").lower() == ours for t in (token, lead.group(0) if lead else ""))


def strip_our_results(headers: Sequence[tuple[str, str]], authserv_id: str) -> list[int]:
    """Indexes of the ``Authentication-Results`` fields that claim ``authserv_id``.

    Indexes are 1-based occurrence numbers among the message's
    Authentication-Results fields (what ``chgheader`` takes), highest first
    so deleting in order never shifts a later one.  The authserv-id is the
    first token of the value after any comments and whitespace (a version
    number may follow it); it matches case-insensitively, ignoring a trailing
    dot.  A malformed value still counts when it starts with our id, even
    with junk glued to it (``ours/1;``), but ``ours.example`` is another id.
    ARC-Authentication-Results and other fields are left alone.
    """
    ours = authserv_id.strip().rstrip(".").lower()
    hits, count = [], 0
    for name, value in headers:
        if name.strip().lower() != _AR_NAME:
            continue
        count += 1
        if _claims(value, ours):
            hits.append(count)
    return sorted(hits, reverse=True)


# --- decision ----------------------------------------------------------------------

def arc_trusted(raw: bytes, resolver: Resolver, trusted_ids: Sequence[str]) -> str | None:
    """The trusted authserv-id when ``raw`` carries a valid ARC chain sealed by one; else None.

    A forwarder (a mailing list, a forwarding service) that re-sends mail
    breaks SPF and often DKIM; when it recorded its own verdict in an ARC set
    and the chain validates (dkimpy's ``arc_verify``: every seal and message
    signature checks out), the admin may trust the newest set's authserv-id.
    Any DNS or parse problem means "not trusted", never an error.
    """
    if not trusted_ids or b"arc-seal:" not in raw[:65536].lower():
        return None
    trusted = {t.lower().rstrip(".") for t in trusted_ids}

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        try:
            records = resolver.txt(name.decode("ascii").rstrip("."))
        except (TempError, UnicodeError, ValueError, dns.exception.DNSException):
            return None
        return records[0].encode("utf-8", "surrogateescape") if records else None

    try:
        cv, results, _ = dkim.arc_verify(raw, dnsfunc=dnsfunc)
    except Exception:  # a malformed chain is an untrusted chain
        return None
    if cv != dkim.CV_Pass or not results:
        return None
    newest = max(results, key=lambda r: r.get("instance", 0))
    aar = (newest.get("aar-value") or b"").decode("utf-8", "replace")  # "i=1; authserv-id; results"
    authserv = _authserv_id(re.sub(r"^\s*i\s*=\s*\d+\s*;", "", aar)).lower().rstrip(".")
    return authserv if authserv in trusted else None


@dataclass(frozen=True)
class InboundPolicy:
    """What to do with authentication failures (the ``[inbound]`` settings).

    ``spf_fail``: reject SPF ``fail`` (550 5.7.23) or tag it; never applied
    when DMARC passed (RFC 7489 §10.1: forwarded mail).  ``dmarc_quarantine``:
    "hold" puts a DMARC-quarantined message on Postfix's hold queue, "tag"
    delivers it tagged.  ``on_temperror``: "tempfail" (451 4.4.3, the client
    retries) or "accept" (deliver, tagged).  ``trusted_forwarder``: the client
    is a forwarder we trust, so SPF, DMARC and display-name rejections become
    tags.  ``invalid_from``: "reject" or "tag" mail with no usable author
    address (bounces with a null sender are always accepted, see
    :func:`check_author`).  ``display_name_spoof``: "tag", "reject" or "off"
    for a From display name that shows a firm address on mail from outside.
    """

    spf_fail: Literal["tag", "reject"] = "tag"
    dmarc_quarantine: Literal["hold", "tag"] = "hold"
    on_temperror: Literal["tempfail", "accept"] = "tempfail"
    trusted_forwarder: bool = False
    invalid_from: Literal["reject", "tag"] = "reject"
    display_name_spoof: Literal["tag", "reject", "off"] = "tag"


@dataclass(frozen=True)
class Decision:
    """The action for the adapter: SMTP code, enhanced code and text only for reject/tempfail."""

    action: Literal["accept", "tag", "quarantine", "reject", "tempfail"]
    smtp_code: str
    xcode: str
    text: str
    reason: str


def _sanitize(text: str, limit: int = 200) -> str:
    """Domain-supplied text fit for an SMTP reply: printable ASCII, no ``%``, bounded."""
    return re.sub(r"\s+", " ", re.sub(r"[^\x20-\x7e]|%", " ", text)).strip()[:limit]


MAX_AUTHOR_DOMAINS = 8  # DMARC lookups per message are bounded: at most two per author domain


def check_author(who: Authors, null_sender: bool, cfg: InboundPolicy) -> Decision | None:
    """Refuse a message whose author DMARC cannot judge (RFC 7489 §6.6.1); None: go on.

    * Several ``From:`` fields → reject 550 5.7.1 (no legitimate mail has them).
    * No ``From:`` at all, or one with a mailbox that has no usable
      ``local@domain`` (an encoded word, ``undisclosed:;``, junk) → reject
      550 5.7.1, or tag with ``invalid_from = "tag"`` (DMARC then says
      permerror).  Exception: a bounce (null envelope sender) whose From
      shows no address-like text (``MAILER-DAEMON <>``, ``<>``) is accepted
      and tagged, since real MTAs write those; one that shows an ``@`` is not.
    * More than :data:`MAX_AUTHOR_DOMAINS` distinct author domains → reject.

    One field with several mailboxes (or a group) is fine here: the caller
    evaluates DMARC for each author domain and applies the strictest.
    """
    def reject(text: str, reason: str) -> Decision:
        return Decision("reject", "550", "5.7.1", text, reason)

    if who.fields > 1:
        return reject(f"Message has {who.fields} From: header fields; RFC 5322 allows exactly one",
                      f"{who.fields} From header fields")
    if not who.valid:
        what = "no From header field" if not who.fields else "no valid author address in From"
        if null_sender and "@" not in readable(who.text):
            return None
        if cfg.invalid_from == "tag":
            return Decision("tag", "", "", "", what)
        if not who.fields:
            return reject("Message has no From: header field, so no valid author address (RFC 5322)", what)
        return reject("Message has no valid author address in its From: header field (RFC 5322)", what)
    if len(who.domains) > MAX_AUTHOR_DOMAINS:
        return reject(f"From: names {len(who.domains)} author domains; at most {MAX_AUTHOR_DOMAINS} are accepted",
                      f"{len(who.domains)} author domains")
    return None


# Strictest first: the result whose consequence is hardest wins (RFC 7489 §6.6.1).
def _severity(d: DMARCResult) -> int:
    if d.result == "fail":
        return {"reject": 7, "quarantine": 6}.get(d.disposition, 4)
    return {"temperror": 5, "permerror": 3, "none": 2, "pass": 1}.get(d.result, 3)


def strictest(results: Sequence[DMARCResult]) -> DMARCResult:
    """The DMARC result that decides for a message with several author domains.

    Order: fail with disposition reject, fail with quarantine, temperror
    (it might have been a reject), fail with none, permerror, none, pass; the
    first author domain wins a tie.  A message passes only when every author
    domain passed.
    """
    return max(results, key=_severity)


def decide(spf: SPFResult, dmarc: DMARCResult, cfg: InboundPolicy, impersonated: str = "") -> Decision:
    """The action for a message, in this order of precedence.

    1. DMARC fail with disposition reject → reject 550 5.7.1 naming the From
       domain (a trusted forwarder gets tag instead).
    2. A From display name showing the firm address ``impersonated`` with
       ``display_name_spoof = "reject"`` → reject 550 5.7.1 naming it (a
       trusted forwarder gets tag).
    3. DMARC fail with disposition quarantine → quarantine (hold) or tag.
    4. A temporary error that leaves the verdict open — DMARC temperror, or SPF
       temperror when DMARC did not pass → tempfail 451 4.4.3, or tag when
       ``on_temperror`` is "accept".
    5. SPF fail when DMARC did not pass → reject 550 5.7.23, or tag.
    6. A display-name spoof with "tag" → tag; otherwise accept (the A-R header
       carries the details).
    """
    def act(action: str, reason: str, code: str = "", xcode: str = "", text: str = "") -> Decision:
        return Decision(action, code, xcode, text, reason)  # type: ignore[arg-type]

    if dmarc.result == "fail" and dmarc.disposition == "reject":
        reason = f"DMARC fail, {dmarc.from_domain} policy reject: {dmarc.reason}"
        if cfg.trusted_forwarder:
            return act("tag", reason + " (trusted forwarder: not rejected)")
        return act("reject", reason, "550", "5.7.1",
                   f"The domain {dmarc.from_domain} publishes a DMARC policy of reject "
                   "and this message failed authentication")
    spoof = impersonated if cfg.display_name_spoof != "off" else ""
    spoof_reason = f"From display name impersonates <{spoof}>"
    if spoof and cfg.display_name_spoof == "reject":
        if cfg.trusted_forwarder:
            return act("tag", spoof_reason + " (trusted forwarder: not rejected)")
        return act("reject", spoof_reason, "550", "5.7.1",
                   f"The From: display name impersonates <{_sanitize(spoof, 254)}>, an address of this organization")
    if dmarc.result == "fail" and dmarc.disposition == "quarantine":
        reason = f"DMARC fail, {dmarc.from_domain} policy quarantine: {dmarc.reason}"
        return act("quarantine" if cfg.dmarc_quarantine == "hold" else "tag", reason)
    if dmarc.result == "temperror" or (spf.result == "temperror" and dmarc.result != "pass"):
        what = "DMARC" if dmarc.result == "temperror" else "SPF"
        reason = f"{what} temperror: {dmarc.reason if what == 'DMARC' else spf.explanation}"
        if cfg.on_temperror == "accept":
            return act("tag", reason)
        return act("tempfail", reason, "451", "4.4.3",
                   "Temporary DNS failure checking sender authentication; try again later")
    if spf.result == "fail" and dmarc.result != "pass":
        reason = f"SPF fail for {spf.domain} ({spf.identity})"
        if cfg.spf_fail == "tag" or cfg.trusted_forwarder:
            return act("tag", reason)
        text = f"SPF check failed: {spf.domain} does not authorize this server to send its mail"
        expl = _sanitize(spf.explanation)
        if expl and expl != "SPF fail - not authorized":
            text += f" ({expl})"
        return act("reject", reason, "550", "5.7.23", text)
    if spoof:
        return act("tag", spoof_reason)
    return act("accept", f"SPF {spf.result}, DMARC {dmarc.result}")
