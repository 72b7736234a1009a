"""The DNS questions an inbound message's checks will ask at end of message, known earlier.

The SPF record's name is known at MAIL FROM; the DKIM keys' names and the
DMARC record's name once the header is in (the body's first chunk). The
milter sends these questions then (:meth:`~mattermail.dns.Resolver.prefetch`)
and the checks read the replies at end of message, so the DNS waits overlap
the SMTP transaction instead of following one another after it.

These are guesses made cheaply, without the checks' own parsers: a wrong one
costs one query nobody reads, never a different result (the checks ask for
what they need and get it either way).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from mattermail.milter import author

__all__ = ["spf_lookups", "header_lookups"]

MAX_SIGNATURES = 3  # keys fetched ahead for at most this many DKIM-Signature fields
MAX_AUTHOR_DOMAINS = 3  # DMARC records fetched ahead for at most this many author domains

_TAG_RES = {name: re.compile(r"(?:^|;)\s*" + name + r"\s*=\s*([^;]*)") for name in ("d", "s")}
_SPACES = re.compile(r"\s+")


def _name(text: str) -> str:
    """``text`` as a domain name to ask for, or "" when it cannot be one (no dot, a literal)."""
    name = text.strip().rstrip(".")
    return name if "." in name and "[" not in name and not name.startswith(".") else ""


def spf_lookups(mail_from: str, helo: str) -> list[tuple[str, str]]:
    """SPF's first question (RFC 7208 §4.4): TXT at the MAIL FROM domain, or at the HELO name for
    the null sender (as :func:`~mattermail.milter.spf_check.check_spf` evaluates)."""
    sender = mail_from.strip().strip("<>").strip()
    name = _name(sender.rpartition("@")[2] if sender else helo)
    return [(name, "TXT")] if name else []


def _tag(value: str, tag: str) -> str:
    m = _TAG_RES[tag].search(value)
    return _SPACES.sub("", m.group(1)) if m else ""


def header_lookups(headers: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """The key of each DKIM-Signature (``s._domainkey.d``, the first ``MAX_SIGNATURES``) and the
    DMARC record of each author domain (``_dmarc.<domain>``, RFC 7489 §6.6.3's first question; the
    first ``MAX_AUTHOR_DOMAINS``), in that order. The authors are read as the checks read them
    (:func:`~mattermail.milter.author.authors`, cached: the checks reuse this parse): From fields
    the checks refuse (several fields, no usable address) get no DMARC question."""
    keys: list[tuple[str, str]] = []
    authors: list[str] = []
    for name, value in headers:
        lname = name.lower().rstrip()
        if lname == "dkim-signature" and len(keys) < MAX_SIGNATURES:
            d, s = _name(_tag(value, "d")), _tag(value, "s")
            if d and s:
                keys.append((f"{s}._domainkey.{d}", "TXT"))
        elif lname == "from":
            authors.append(value)
    who = author.authors(authors)
    dmarc = [(f"_dmarc.{d}", "TXT") for d in who.domains[:MAX_AUTHOR_DOMAINS] if _name(d)] if who.valid else []
    return keys + dmarc
