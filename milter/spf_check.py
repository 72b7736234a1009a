"""SPF (RFC 7208) for inbound mail, by pyspf with its DNS through our resolver."""

from __future__ import annotations

import re
from typing import Literal

import spf

from mattermail.dns import Resolver, TempError
from mattermail.dnscheck import spf_resolver
from mattermail.milter.verdicts import SPFResult

__all__ = ["check_spf"]


def check_spf(resolver: Resolver, client_ip: str, mail_from: str, helo: str, timeout: float) -> SPFResult:
    """SPF for the MAIL FROM identity, or the HELO identity when MAIL FROM is ``<>``.

    pyspf does the evaluation with its DNS hook pointed at ``resolver``
    (:func:`~mattermail.dnscheck.spf_resolver`); ``timeout`` is the budget
    for the whole check (pyspf's ``querytime``, RFC 7208 §4.6.4): past it,
    and on any DNS timeout or SERVFAIL, the result is ``temperror``.

    With the resolver's cache on, a result is kept while every DNS answer it
    was computed from is still cached (:meth:`Resolver.derived`): the same
    client, sender and HELO get the same result again until the first of
    those TTLs runs out, without pyspf's evaluation (which, run cold between
    Postfix's processes, cost ~0.3 ms CPU per message). A temperror is never kept.

    For the MAIL FROM identity, the local part of the sender and the HELO name change a result
    only through the macros ``%{s}``, ``%{l}`` and ``%{h}`` (RFC 7208 §7): when no record pyspf
    read has one, the result is kept for the client and the domain, so the next sender at that
    domain (mail from a firm's many correspondents), from whichever of the sending host's names,
    gets it without pyspf.
    """
    sender = mail_from.strip().strip("<>").strip()
    local, at, domain = sender.partition("@")  # as pyspf splits it (split_email: at the first "@")
    records: list[bytes] = []
    general = ("spf@", client_ip, domain) if at and "@" not in domain else None
    return resolver.derived(("spf", client_ip, mail_from, helo),
                            lambda: _check(resolver, client_ip, mail_from, helo, timeout, records),
                            lambda r: r.result != "temperror", general,
                            lambda: not any(_SENDER_MACRO.search(r) for r in records))


#: A macro that expands to the sender, its local part or the HELO name (RFC 7208 §7.2: s, l, h;
#: upper case URL-escaped).
_SENDER_MACRO = re.compile(rb"%\{[slhSLH]")


def _check(resolver: Resolver, client_ip: str, mail_from: str, helo: str, timeout: float,
           records: list[bytes] | None = None) -> SPFResult:
    sender = mail_from.strip().strip("<>").strip()
    helo = helo.strip().rstrip(".")
    identity: Literal["mailfrom", "helo"] = "mailfrom" if sender else "helo"
    ip = client_ip.strip().strip("[]")
    ip = ip[5:] if ip.lower().startswith("ipv6:") else ip
    domain = (sender.rpartition("@")[2] if sender else helo).rstrip(".").lower()
    if not sender and not helo:
        return SPFResult("none", identity, "", "no MAIL FROM domain and no HELO name")
    try:
        with spf_resolver(resolver, records):
            q = spf.query(i=ip, s=sender, h=helo, querytime=max(timeout, 1e-9))  # 0 would mean "no budget"
            result, _code, explanation = q.check()
    except (ValueError, spf.PermError) as e:  # an unusable client address
        return SPFResult("permerror", identity, domain, f"cannot evaluate SPF: {e}")
    except (spf.TempError, TempError) as e:
        return SPFResult("temperror", identity, domain, f"SPF Temporary Error: {e}")
    if result not in ("pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"):
        result = "permerror"  # "ambiguous" exists only in pyspf's harsh mode
    return SPFResult(result, identity, (q.o or domain).rstrip(".").lower(), str(explanation or ""))
