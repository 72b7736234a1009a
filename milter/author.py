"""Who wrote a message: the ``From:`` header field(s) read once, for DMARC and the
display-name check (pure functions, cached: the same From values come again and again).

RFC 7489 §6.6.1: DMARC evaluates the domain of the RFC5322.From address, so a
message must name its author unambiguously.  :func:`authors` reports how many
From fields there are and every mailbox of them (groups flattened);
:attr:`Authors.valid` says whether each mailbox is a usable ``local@domain``.

:func:`impersonated` finds a firm address (one of ``general.sending_domains``
or a subdomain) written in the visible text of the From field — a display
name, a comment, a quoted local part, RFC 2047 encoded words decoded — while
the real author address is outside: ``"ceo@lawfirm.test" <bob@example.test>``.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from functools import lru_cache

from mattermail import addresses

__all__ = ["Authors", "Mailbox", "authors", "impersonated", "readable"]

# A domain as DMARC can look it up: LDH labels (and "_"), at least two of them.
_DOMAIN = re.compile(r"[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?(?:\.[a-z0-9_](?:[a-z0-9_-]*[a-z0-9_])?)+")
# A run of RFC 2047 encoded words (the whitespace between them is not text); the charset may
# carry an RFC 2231 language ("utf-8*en"), which email.header does not expect: it is dropped.
_WORD = r"=\?[^?\s]+\?[bBqQ]\?[^?\s]*\?="
_ENCODED_RUN = re.compile(_WORD + r"(?:\s+" + _WORD + ")*")
_LANGUAGE = re.compile(r"(=\?[^?*\s]+)\*[^?\s]*\?")
# An address as a reader would take it in free text (ASCII; a plain local part, so the reported
# address is clean: "x%ceo@lawfirm.test" still yields ceo@lawfirm.test).
# The lookbehind starts a match only at the beginning of a run: without it a long run of
# letters would be rescanned from every position (quadratic in a 100 KB header).
_ADDRESS_IN_TEXT = re.compile(r"(?<![A-Za-z0-9._+-])([A-Za-z0-9._+-]+)\s*@\s*([A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)+)")


@dataclass(frozen=True)
class Mailbox:
    """One mailbox of a From field: the display name as written, the addr-spec lower-cased,
    and its domain as DMARC looks it up ("" when the address has no usable one)."""

    name: str
    address: str
    domain: str


def _domain(address: str) -> str:
    """The domain of ``address`` without a trailing dot (its IDNA A-label), or "" when unusable."""
    local, at, domain = address.rpartition("@")
    domain = domain.rstrip(".")
    if not domain.isascii():  # an internationalized domain: DMARC looks up its A-label
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            return ""
    return domain if local and at and len(domain) <= 253 and _DOMAIN.fullmatch(domain) else ""


# eq=False: compared and hashed by identity, which is cheap; _authors hands out one object per value list.
@dataclass(frozen=True, eq=False)
class Authors:
    """The From header fields of a message, parsed.

    ``valid``: exactly one From field naming at least one mailbox, each with a
    usable domain.  ``domains``: the distinct author domains in order of
    appearance (only meaningful when ``valid``).  ``text``: the From values
    joined, for the display-name check.
    """

    fields: int  # how many From: header fields the message has
    mailboxes: tuple[Mailbox, ...]
    text: str
    domains: tuple[str, ...]
    valid: bool


def authors(from_values: Sequence[str]) -> Authors:
    """Parse the values of every ``From:`` header field of a message."""
    return _authors(tuple(from_values))


@lru_cache(maxsize=4096)
def _authors(values: tuple[str, ...]) -> Authors:
    boxes = []
    for box in addresses.mailboxes(values):
        addr = box.address.lower()
        boxes.append(Mailbox(box.name, addr, _domain(addr)))
    valid = len(values) == 1 and bool(boxes) and all(m.domain for m in boxes)
    return Authors(len(values), tuple(boxes), " ".join(values),
                   tuple(dict.fromkeys(m.domain for m in boxes if m.domain)), valid)


def readable(text: str) -> str:
    """``text`` as a mail reader shows it: encoded words decoded, compatibility forms folded (＠ → @)."""
    if "=?" in text:
        def decode(m: re.Match[str]) -> str:
            try:
                return str(make_header(decode_header(_LANGUAGE.sub(r"\1?", m.group(0)))))
            except (ValueError, LookupError, UnicodeError, HeaderParseError):  # a broken one stays as written
                return m.group(0)
        text = _ENCODED_RUN.sub(decode, text)
    if not text.isascii():
        text = unicodedata.normalize("NFKC", text)
    return text


def _firm(domain: str, firm_domains: tuple[str, ...]) -> bool:
    domain = domain.lower().rstrip(".")
    return any(domain == d or domain.endswith("." + d) for d in firm_domains)


def impersonated(who: Authors, firm_domains: Sequence[str]) -> str:
    """The firm address shown in the From text of a message from outside, or "".

    "From outside" means some author address is not in ``firm_domains`` (mail
    whose authors are all firm addresses is DMARC's business).  Addresses that
    are themselves author addresses do not count: ``alice@lawfirm.test,
    bob@example.test`` names two authors and DMARC judges both.
    """
    firm = _firm_domains(tuple(firm_domains))
    return _impersonated(who, firm) if firm else ""


@lru_cache(maxsize=16)
def _firm_domains(domains: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(d.lower().rstrip(".") for d in domains if d)


@lru_cache(maxsize=4096)
def _impersonated(who: Authors, firm: tuple[str, ...]) -> str:
    if who.mailboxes and all(m.domain and _firm(m.domain, firm) for m in who.mailboxes):
        return ""
    text = readable(who.text)
    low = text.lower()
    if "@" not in text or not any(d in low for d in firm):  # the common case: one cheap scan
        return ""
    real = {m.address for m in who.mailboxes if m.domain}
    for m in _ADDRESS_IN_TEXT.finditer(text):
        local, domain = m.group(1)[-64:].lstrip("."), m.group(2)  # the end a reader sees next to the "@"
        address = f"{local}@{domain}".lower().rstrip(".")
        if local and len(domain) <= 253 and _firm(domain, firm) and address not in real:
            return address
    return ""
