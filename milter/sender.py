"""Sender ownership: may this SASL login send as these addresses?

Pure policy over the envelope sender, the ``From:`` / ``Sender:`` header values
and the set of addresses the login owns (its own plus those assigned to it
with ``mattermailctl user add --send-as``). The verdict carries the SMTP reply
a person understands.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from email.utils import getaddresses
from functools import lru_cache


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
    return tuple(_norm(addr) for _, addr in getaddresses(list(values)) if addr)


def check(login: str, owned: Collection[str], mail_from: str, from_values: Sequence[str],
          sender_values: Sequence[str]) -> Verdict:
    owned = {_norm(a) for a in owned}

    def refuse(address: str) -> Verdict:
        return Verdict(False, "553", "5.7.1", f"<{login}> may not send as <{address}>")

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
    if len(addrs) > 1:
        senders = mailboxes(sender_values)
        if len(senders) != 1:
            return Verdict(False, "550", "5.6.0",
                           "From: names several mailboxes, so a single Sender: header is required (RFC 5322 3.6.2)")
        if senders[0] not in owned:
            return refuse(senders[0])
    for a in addrs:
        if a not in owned:
            return refuse(a)
    return Verdict(True)
