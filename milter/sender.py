"""Sender ownership: may this SASL login send as these addresses?

Pure policy over the envelope sender, the ``From:`` / ``Sender:`` /
``Resent-From:`` / ``Resent-Sender:`` header values and the set of addresses
the login owns (its own plus those assigned to it with ``mattermailctl user
add --send-as``). Every mailbox in those fields must be owned, and (with
``[milter] display_name_check = "refuse"``) no display name in them may name
an email address the login does not own: ``"ceo@lawfirm.test"
<alice@lawfirm.test>`` shows most readers the CEO as the sender. The verdict
carries the SMTP reply a person understands.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from email.header import decode_header, make_header
from functools import lru_cache

from mattermail import addresses


@dataclass(frozen=True)
class Verdict:
    ok: bool
    code: str = "250"
    xcode: str = "2.0.0"
    text: str = ""


def _norm(address: str) -> str:
    return address.strip().strip("<>").lower()


def mailboxes(values: Sequence[str]) -> list[str]:
    """Every addr-spec in the given header values (groups and display names handled)."""
    return list(_mailboxes(tuple(values)))


@lru_cache(maxsize=4096)  # the same few From: values come again and again; parsing them is not cheap
def _mailboxes(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(_norm(box.address) for box in addresses.mailboxes(values) if box.address)


# Something shaped like an email address inside a display name (after RFC 2047 decoding and NFKC,
# so "=?utf-8?q?ceo=40firm.test?=" and a fullwidth "ceo＠firm.test" are caught too).
_ADDRESS_IN_TEXT = re.compile(r"[^\s@<>()\[\]\\\",;:]+@[^\s@<>()\[\]\\\",;:]+\.[^\s@<>()\[\]\\\",;:.]+")


def _decoded(name: str) -> str:
    try:
        name = str(make_header(decode_header(name)))
    except Exception:  # a malformed encoded word: look at the text as it is
        pass
    return unicodedata.normalize("NFKC", name)


@lru_cache(maxsize=4096)
def _named(values: tuple[str, ...]) -> tuple[str, ...]:
    """The addresses named in the display names (and comments) of ``values``, lower-cased."""
    out: list[str] = []
    for box in addresses.mailboxes(values):
        if box.name:
            out += [m.group(0).strip(".'").lower() for m in _ADDRESS_IN_TEXT.finditer(_decoded(box.name))]
    return tuple(out)


def named_in_display_names(values: Sequence[str]) -> list[str]:
    return list(_named(tuple(values)))


def check(login: str, owned: Collection[str], mail_from: str, from_values: Sequence[str],
          sender_values: Sequence[str], resent_values: Sequence[str] = (), *,
          display_names: bool = True) -> Verdict:
    """``resent_values``: the Resent-From and Resent-Sender values; ``display_names``: refuse a display name
    naming an address the login does not own (config ``milter.display_name_check``)."""
    owned = {_norm(a) for a in owned}

    def refuse(address: str) -> Verdict:
        return Verdict(False, "553", "5.7.1", f"<{printable(login)}> may not send as <{printable(address)}>")

    env = _norm(mail_from)
    if env and env not in owned:  # a null sender (<>, e.g. a read receipt) claims no identity
        return refuse(env)
    if not from_values:
        return Verdict(False, "550", "5.6.0", "Message has no From: header; your mail program must add one")
    if len(from_values) > 1:
        return Verdict(False, "550", "5.6.0", "Message has more than one From: header")
    addrs = mailboxes(from_values)
    if not addrs:
        return Verdict(False, "550", "5.6.0", "The From: header holds no email address")
    senders = mailboxes(sender_values)
    if len(addrs) > 1 and len(senders) != 1:
        return Verdict(False, "550", "5.6.0",
                       "From: names several mailboxes, so a single Sender: header is required (RFC 5322 3.6.2)")
    for a in (*addrs, *senders, *mailboxes(resent_values)):
        if a not in owned:
            return refuse(a)
    if display_names:
        for named in _named((*from_values, *sender_values, *resent_values)):
            if named not in owned:
                return Verdict(False, "553", "5.7.1",
                               f"<{printable(login)}> may not use a display name that names <{printable(named)}>")
    return Verdict(True)


def printable(text: str, limit: int = 200) -> str:
    """Attacker-chosen text made safe for an SMTP reply line: printable ASCII, no '%' (libmilter
    treats it as a format character), at most ``limit`` characters."""
    out = "".join(c if " " <= c <= "~" and c != "%" else "?" for c in text)
    return out if len(out) <= limit else out[: limit - 3] + "..."
