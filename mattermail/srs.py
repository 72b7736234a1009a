"""SRS (Sender Rewriting Scheme) for mail this server forwards off-site.

Forwarded mail keeps the original sender's envelope address, which fails SPF
at the next hop (our IP is not in their record). SRS rewrites it to
``SRS0=hash=time=orig.domain=user@<our domain>``; a bounce to that address
comes back to us and is reversed to the original sender, but only when the
HMAC and the timestamp verify — forged or expired SRS addresses are refused
at RCPT, so we are not an open bounce relay. srslib does the encoding.

Postfix wiring (the proven postsrsd shape): a socketmap served by its own
small daemon, ``mattermail-srs`` (mattermail.srsd), with three tables,
``sender_canonical_maps = socketmap:inet:127.0.0.1:PORT:srs_forward``,
``recipient_canonical_maps = socketmap:inet:127.0.0.1:PORT:srs_reverse`` and
``check_recipient_access socketmap:inet:127.0.0.1:PORT:srs_check`` in
``smtpd_recipient_restrictions``. Canonical maps run in cleanup for every
message, so — as with postsrsd — every sender outside our own domains is
rewritten, not only that of forwarded mail: Postfix cannot tell a forward
from a delivery at that point, and a rewritten sender on a local delivery
is harmless (it reverses). The router unwraps it when it records senders.

The socketmap has a process of its own because cleanup asks it about every
message, inbound and outbound: while it does not answer, Postfix defers all
mail (4xx). Kept apart from the router, a router outage defers only mail for
the catch-all domain.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import srslib

from mattermail import secretfile


@dataclass(frozen=True)
class Verdict:
    """A socketmap answer: "OK <value>", "NOTFOUND", or a refusal for srs_check."""

    status: str  # "OK" | "NOTFOUND" | "TEMP" | "PERM"
    value: str = ""


class SRSCodec:
    def __init__(self, secret: bytes, domain: str, local_domains: Iterable[str], validity_days: int = 21) -> None:
        self.domain = domain.lower()
        self.local = {d.lower() for d in local_domains} | {self.domain}
        self._srs = srslib.SRS(secret.decode("ascii", "replace") if isinstance(secret, bytes) else secret,
                               validity_days=validity_days)

    def _is_ours(self, address: str) -> bool:
        return address.rpartition("@")[2].lower() == self.domain and srslib.SRS.is_srs_address(address, strict=False)

    def forward(self, sender: str) -> Verdict:
        """srs_forward: rewrite a foreign envelope sender; leave ours, the null sender and SRS ones alone."""
        sender = sender.strip()
        local, at, domain = sender.rpartition("@")
        if not at or not local or domain.lower() in self.local or self._is_ours(sender):
            return Verdict("NOTFOUND")
        try:
            return Verdict("OK", self._srs.forward(sender, self.domain))
        except srslib.Error:
            return Verdict("NOTFOUND")

    def reverse(self, recipient: str) -> Verdict:
        """srs_reverse: an SRS address of ours that verifies → the original sender."""
        if not self._is_ours(recipient):
            return Verdict("NOTFOUND")
        try:
            return Verdict("OK", self._srs.reverse(recipient))
        except srslib.Error:
            return Verdict("NOTFOUND")  # srs_check has already refused it at RCPT

    def check(self, recipient: str) -> Verdict:
        """srs_check (an access table): refuse forged or expired SRS addresses of ours at RCPT."""
        if not self._is_ours(recipient):
            return Verdict("NOTFOUND")
        try:
            self._srs.reverse(recipient)
        except srslib.InvalidTimestampError:
            return Verdict("OK", "REJECT 5.1.1 This bounce address has expired (SRS)")
        except srslib.Error:
            return Verdict("OK", "REJECT 5.1.1 This is not a bounce address we issued (SRS signature mismatch)")
        return Verdict("NOTFOUND")

    def unwrap(self, address: str) -> str:
        """The original address behind one of our SRS addresses (for recording senders), else as is."""
        if not self._is_ours(address):
            return address
        try:
            return self._srs.reverse(address)
        except srslib.Error:
            return address


def local_domains(cfg) -> set[str]:
    """The domains whose senders ``srs_forward`` leaves alone (the firm's sending and catch-all domains and
    ``srs.domain``), lower-cased: the codec's, and what ``postfix configure``'s sender filter keeps from the
    daemon (ctl/postfixconf.py ``srs_filters``), so the two cannot disagree."""
    return {d.lower() for d in (*cfg.general.sending_domains, *cfg.general.catchall_domains, cfg.srs.domain) if d}


class SRSConfigError(Exception):
    """SRS is switched on but cannot work; the message names the key."""


def load_codec(cfg) -> SRSCodec | None:
    """The codec ``cfg`` asks for (None when ``srs.listen`` is empty); SRSConfigError names the bad key."""
    if not cfg.srs.listen:
        return None
    if not cfg.srs.domain:
        raise SRSConfigError(f"{cfg.source}: srs.domain is required when srs.listen is set")
    try:
        secret = secretfile.load(cfg.srs.secret_file, "SRS secret")
    except secretfile.SecretError as e:
        raise SRSConfigError(f"srs.secret_file: {e}") from None
    return SRSCodec(secret, cfg.srs.domain, local_domains(cfg), cfg.srs.validity_days)
