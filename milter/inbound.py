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
* :func:`authentication_results` — the RFC 8601 header value, built with authres.
* :func:`decide` — accept, tag, quarantine, reject or tempfail, per :class:`InboundPolicy`.
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import authres
import authres.dmarc
import dkim
import dkim.util
import dns.exception
import spf

from mattermail.dns import Resolver, TempError
from mattermail.dnscheck import spf_resolver
from mattermail.milter.dmarc_check import DMARCResult, check_dmarc, organizational_domain

__all__ = [
    "DKIMResult", "DMARCResult", "Decision", "InboundPolicy", "SPFResult", "authentication_results",
    "check_dmarc", "check_spf", "decide", "organizational_domain", "strip_our_results", "verify_dkim",
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


def _short(e: object, limit: int = 100) -> str:
    """An exception's text, bounded (dkimpy's key errors quote the whole key)."""
    text = re.sub(r"\s+", " ", str(e)).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _key_problem(record: bytes | None) -> str:
    """Why a key record is unusable ("" when it looks usable)."""
    if not record:
        return "no key for signature"
    try:
        tags = dkim.util.parse_tag_value(record)
    except dkim.util.InvalidTagValueList as e:
        return f"key record syntax error: {e}"
    if not re.sub(rb"\s+", b"", tags.get(b"p", b"")):
        return "key revoked (empty p=)"
    try:
        dkim.evaluate_pk(b"key", record)
    except (dkim.KeyFormatError, binascii.Error) as e:
        return f"unusable key: {_short(e)}"
    return ""


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
    """
    headers_end = re.search(rb"\r?\n\r?\n", raw)
    header_block = raw[: headers_end.start() + 1] if headers_end else raw
    found = [m.group(1) for m in _SIG_HEADER_RE.finditer(header_block)]
    if not found:
        return []
    try:
        verifier = dkim.DKIM(raw, minkey=min_rsa_bits)
    except dkim.DKIMException as e:
        return [DKIMResult("permerror", *_sig_tags(v)[:2], f"message cannot be parsed: {_short(e)}", _sig_tags(v)[2])
                for v in found]
    sigs = [v for n, v in verifier.headers if n.lower() == b"dkim-signature"]
    fetched: dict[str, bytes | None] = {}

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        try:
            qname = name.decode("ascii").rstrip(".")
            records = resolver.txt(qname)
        except TempError as e:
            raise _KeyTempError(str(e)) from e
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
            results.append(DKIMResult("temperror", d, s, f"key lookup failed temporarily: {e}", a))
            continue
        except dkim.KeyFormatError as e:
            m = re.search(r"public key too small: (\d+)", str(e))
            why = (f"RSA key of {m.group(1)} bits is shorter than the {min_rsa_bits} bits required (RFC 8301)"
                   if m else f"unusable key: {_short(e)}")
            results.append(DKIMResult("policy" if m else "permerror", d, s, why, a))
            continue
        except dkim.ValidationError as e:
            if "body hash mismatch" in str(e):
                results.append(DKIMResult("fail", d, s, "body hash did not verify", a))
            elif "x= value is past" in str(e):
                results.append(DKIMResult("fail", d, s, f"signature expired (x={_tag(value, 'x')})", a))
            else:
                results.append(DKIMResult("neutral", d, s, f"signature syntax error: {_short(e)}", a))
            continue
        except (dkim.DKIMException, binascii.Error, KeyError, ValueError) as e:
            results.append(DKIMResult("neutral", d, s, f"signature cannot be processed: {_short(e)}", a))
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

def _comment(text: str) -> str:
    """Text safe inside an RFC 5322 comment: printable ASCII, no parentheses or backslashes."""
    return re.sub(r"[^\x20-\x7e]|[()\\]", " ", text).strip()


def authentication_results(authserv_id: str, spf: SPFResult, dkim: Sequence[DKIMResult],
                           dmarc: DMARCResult, client_ip: str, *, linesep: str = "\n") -> str:
    """The value of our ``Authentication-Results`` header (RFC 8601), built with authres.

    One ``spf=`` (``smtp.mailfrom`` or ``smtp.helo``, the client IP in a
    comment), one ``dkim=`` per signature (``header.d``/``header.s``/
    ``header.a``, ``reason=`` when it did not pass; ``dkim=none`` without
    signatures), one ``dmarc=`` with ``header.from`` and the published
    policy and applied disposition in a comment.  Each result starts a new
    line folded with ``linesep`` + TAB (``"\\n"`` for a milter's addheader).
    """
    spf_res = authres.SPFAuthenticationResult(result=spf.result, result_comment=_comment(f"sender IP is {client_ip}"))
    if spf.domain:
        if spf.identity == "helo":
            spf_res.smtp_helo = spf.domain
        else:
            spf_res.smtp_mailfrom = spf.domain
    results: list[authres.AuthenticationResult] = [spf_res]
    for sig in dkim:
        res = authres.DKIMAuthenticationResult(result=sig.result, reason=sig.reason[:100] or None)
        for attr, val in (("header_d", sig.domain), ("header_s", sig.selector), ("header_a", sig.algorithm)):
            if val:
                setattr(res, attr, val)
        results.append(res)
    if not dkim:
        results.append(authres.DKIMAuthenticationResult(result="none"))
    comment = f"p={dmarc.policy or 'none'} dis={dmarc.disposition}" if dmarc.policy else ""
    dm = authres.dmarc.DMARCAuthenticationResult(result=dmarc.result, result_comment=comment or None)
    if dmarc.from_domain:
        dm.header_from = dmarc.from_domain
    results.append(dm)
    header = authres.AuthenticationResultsHeader(authserv_id=authserv_id, results=results)
    # header.header_value() renders the same on one line; fold one result per line instead.
    return header.authserv_id + ";" + ";".join(f"{linesep}\t{r}" for r in header.results)


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
    is a forwarder we trust, so SPF and DMARC rejections become tags.
    """

    spf_fail: Literal["tag", "reject"] = "tag"
    dmarc_quarantine: Literal["hold", "tag"] = "hold"
    on_temperror: Literal["tempfail", "accept"] = "tempfail"
    trusted_forwarder: bool = False


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


def decide(spf: SPFResult, dmarc: DMARCResult, cfg: InboundPolicy) -> Decision:
    """The action for a message, in this order of precedence.

    1. DMARC fail with disposition reject → reject 550 5.7.1 naming the From
       domain (a trusted forwarder gets tag instead).
    2. DMARC fail with disposition quarantine → quarantine (hold) or tag.
    3. A temporary error that leaves the verdict open — DMARC temperror, or SPF
       temperror when DMARC did not pass → tempfail 451 4.4.3, or tag when
       ``on_temperror`` is "accept".
    4. SPF fail when DMARC did not pass → reject 550 5.7.23, or tag.
    5. Otherwise accept (the A-R header carries the details).
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
    return act("accept", f"SPF {spf.result}, DMARC {dmarc.result}")
