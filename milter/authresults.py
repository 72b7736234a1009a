"""Our ``Authentication-Results`` header (RFC 8601): the value we add, and the forged ones we remove.

Built by hand: results and comments are our own words, and every value from
the message or the envelope goes through :func:`quoted_value` or
:func:`pvalue`, so sender text can never run on as a result of ours.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from mattermail.milter.verdicts import DKIMResult, DMARCResult, SPFResult

__all__ = ["authentication_results", "authserv_id_of", "pvalue", "quoted_value", "strip_our_results"]

_AR_NAME = "authentication-results"

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


def authserv_id_of(value: str) -> str:
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
    token = authserv_id_of(value)
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
