"""Two-way capture: the invisible capture copy of inbound mail to the firm's users (issue 17).

Called by the milter at the end of an inbound message that SPF/DKIM/DMARC
accepted (not held, not refused). Like outbound capture (milter/outbound.py):
the envelope is recorded under a signed reference (``direction`` "inbound")
and the capture address is added as an envelope recipient; nothing is added
to the message. The router files the copy by its correspondents and thread;
with ``capture.inbound = "known"`` it drops, unstored, a copy no rule files.

No copy when ``capture.inbound = "off"``, when no recipient is a user's
address (``mattermailctl user``), when a recipient is in a catch-all domain
(the router files that delivery already: never twice), for system mail (a
null sender, ``Auto-Submitted`` other than "no", a ``multipart/report``),
or when the capture exclusions match.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from mattermail import capture
from mattermail.milter.runtime import Runtime
from mattermail.msgid import msgid
from mattermail.store import EnvelopeRecord, StoreError

__all__ = ["Copy", "inbound_copy", "system_mail"]


@dataclass(frozen=True)
class Copy:
    """What to do: add ``recipient`` (None: no copy), or tempfail with ``tempfail``; ``note`` for the log."""

    recipient: str | None = None
    note: str = ""
    tempfail: str = ""


def _values(headers: Sequence[tuple[str, str]], name: str) -> list[str]:
    return [v for n, v in headers if n.lower().rstrip() == name]


def system_mail(mail_from: str, headers: Sequence[tuple[str, str]]) -> str:
    """Why this is mail no person wrote (a bounce, an auto-reply, a report), or ""."""
    if not mail_from.strip("<> "):
        return "null sender"
    for value in _values(headers, "auto-submitted")[:1]:
        keyword = value.split(";", 1)[0].split("(", 1)[0].strip().lower()
        if keyword and keyword != "no":
            return f"Auto-Submitted: {keyword}"
    for value in _values(headers, "content-type")[:1]:
        if value.split(";", 1)[0].strip().lower() == "multipart/report":
            return "multipart/report"
    return ""


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower().rstrip(".")


def inbound_copy(rt: Runtime, queue_id: str, mail_from: str, recipients: Sequence[str],
                 headers: Sequence[tuple[str, str]], client: str) -> Copy:
    """Record the envelope and name the capture recipient for an accepted inbound message, or say why not."""
    cfg = rt.config
    if cfg.capture.inbound == "off" or not cfg.capture.address:
        return Copy()
    if any(capture.is_capture_address(r, cfg.capture.address) for r in recipients):
        return Copy(note="capture=already (capture address is a recipient)")
    catchall = rt.catchall_domains
    if catchall and any(_domain(r) in catchall for r in recipients):
        return Copy()  # the router gets this delivery itself
    try:
        if not rt.any_user_address(recipients):
            return Copy()
        why = system_mail(mail_from, headers) or capture.excluded(mail_from, recipients, rt.exclude_senders,
                                                                   rt.exclude_recipients)
        if why:
            return Copy(note=f"capture=no ({why})")
        secret = rt.capture_secret()
        ref = capture.new_ref()
        rt.record_envelope(EnvelopeRecord(
            ref=ref, queue_id=queue_id, mail_from=mail_from, recipients=tuple(recipients), login="",
            client=client, created=time.time(), message_id=msgid(next(iter(_values(headers, "message-id")), "")) or "",
            direction="inbound"))
    except (capture.CaptureError, StoreError, OSError) as e:
        if cfg.capture.on_failure == "tempfail":
            return Copy(tempfail=f"capture impossible: {e}")
        return Copy(note=f"capture=FAILED ({e}; accepted per capture.on_failure)")
    return Copy(capture.capture_address(cfg.capture.address, ref, secret), f"capture={ref} (inbound)")
