"""DMARC (RFC 7489) evaluation for inbound mail: policy discovery, alignment, disposition.

A pure function over the SPF and DKIM results plus DNS through our
:class:`~mattermail.dns.Resolver` (so a timeout is ``temperror``, never "no
record").

Choices
    *Record parsing* uses the ``dmarc`` library's :class:`dmarc.Policy` (lenient
    mode: an invalid optional tag falls back to its default, RFC 7489 §6.3).
    Its alignment check is *not* used: it compares domains by suffix without the
    Public Suffix List, so ``d=co.uk`` would align with ``example.co.uk``, and
    it does no ``pct`` sampling.

    *Organizational domains* come from the Public Suffix List algorithm (with
    its implicit ``*`` rule, which publicsuffix2's ``get_sld`` lacks: it maps
    ``mail.example.test`` to ``test``), as implemented by ``publicsuffixlist``
    over the list it bundles: each release of that package carries the list
    of its day (``ai.vn`` and some 350 other ICANN suffixes since 2019), and
    nothing is downloaded at run time.  Upgrading the package updates the list.
"""

from __future__ import annotations

import functools
import random
import re
from collections.abc import Callable, Sequence

import dmarc as dmarclib
from publicsuffixlist import PublicSuffixList

from mattermail.dns import Resolver, TempError
from mattermail.milter.verdicts import DKIMResult, DMARCResult, Policy, SPFResult

__all__ = ["DMARCResult", "check_dmarc", "organizational_domain"]

_DMARC_RE = re.compile(r"^\s*v\s*=\s*DMARC1\s*(;|$)")
_RUA_RE = re.compile(r"(^|;)\s*rua\s*=\s*mailto:", re.IGNORECASE)
_DOWNGRADE: dict[str, Policy] = {"reject": "quarantine", "quarantine": "none", "none": "none"}


# --- Public Suffix List -----------------------------------------------------------

@functools.lru_cache(maxsize=4096)
def _a_label(name: str) -> str:
    """``name`` lower-cased with each label as its IDNA A-label when it can be converted."""
    out = []
    for label in name.strip().rstrip(".").lower().split("."):
        try:
            out.append(label.encode("idna").decode("ascii") if not label.isascii() else label)
        except UnicodeError:
            out.append(label)
    return ".".join(out)


_PSL = PublicSuffixList()  # ICANN and private rules, unknown TLDs as one label (the "*" rule)


@functools.lru_cache(maxsize=4096)
def organizational_domain(domain: str) -> str:
    """RFC 7489 §3.2: the public suffix plus one label (the domain itself if it is a suffix)."""
    name = _a_label(domain)
    if ".." in name:  # an empty label: the list judges the labels after it (as before the change)
        name = name.rpartition("..")[2]
    return _PSL.privatesuffix(name) or name


def _aligned(from_domain: str, other: str, mode: str) -> bool:
    """Identifier alignment: equal (strict) or same organizational domain (relaxed)."""
    other = _a_label(other)
    if not other:
        return False
    if other == from_domain:
        return True
    return mode != "s" and organizational_domain(other) == organizational_domain(from_domain)


# --- policy discovery ---------------------------------------------------------------

def _records(resolver: Resolver, domain: str) -> list[str]:
    """The ``v=DMARC1`` TXT records at ``_dmarc.<domain>`` (TempError propagates)."""
    return [t.strip() for t in resolver.txt(f"_dmarc.{domain}") if _DMARC_RE.match(t)]


@functools.lru_cache(maxsize=1024)  # the same records come message after message; check_dmarc only reads it
def _parse(record: str, from_domain: str, org_domain: str | None) -> dmarclib.Policy:
    """Parse with the dmarc library; RFC 7489 §6.6.3: a bad ``p=`` with a ``rua=`` acts as p=none."""
    cleaned = ";".join(part for part in record.split(";") if part.strip())
    policy = dmarclib.Policy("DMARC1", from_domain, org_domain)
    try:
        policy.parse_record(cleaned, strict=False)
    except dmarclib.RecordSyntaxError as e:
        if "tag p" not in str(e) or not _RUA_RE.search(cleaned):
            raise
        policy = dmarclib.Policy("DMARC1", from_domain, org_domain)
        policy.parse_record(re.sub(r";\s*p\s*=[^;]*", "", cleaned, flags=re.IGNORECASE) + ";p=none", strict=False)
    return policy


def check_dmarc(from_domain: str, spf: SPFResult, mail_from_domain: str, dkim: Sequence[DKIMResult],
                resolver: Resolver, rng: Callable[[], float] = random.random) -> DMARCResult:
    """Evaluate DMARC for a message whose RFC5322.From domain is ``from_domain``.

    SPF counts when it passed for ``mail_from_domain`` (the MAIL FROM domain,
    or the HELO name for the null sender; "" means ``spf.domain``); DKIM when
    any signature passed.  Policy discovery: ``_dmarc.<from>``, then
    ``_dmarc.<organizational domain>`` (whose ``sp=`` then applies).  Several
    records at one name → permerror; an unusable record → none; a DNS timeout
    → temperror.  When neither identifier aligns but an aligned SPF or DKIM
    check had a temporary error, the result is temperror (it might have
    passed).  ``pct``: a failing message is sampled when ``rng() * 100 <
    pct``; one not sampled gets the next milder disposition (§6.6.4).
    """
    domain = _a_label(from_domain)
    org = organizational_domain(domain) if domain else ""

    def result(res: str, reason: str, policy: str = "", disposition: Policy = "none",
               a_spf: bool = False, a_dkim: bool = False) -> DMARCResult:
        return DMARCResult(res, domain, org, policy, disposition, a_spf, a_dkim, reason)  # type: ignore[arg-type]

    if not domain or "." not in domain or not re.fullmatch(r"[a-z0-9_.-]+", domain):
        return result("permerror", f"no usable RFC5322.From domain ({from_domain!r})")
    try:
        records, found_at = _records(resolver, domain), domain
        if not records and org != domain:
            records, found_at = _records(resolver, org), org
    except TempError as e:
        return result("temperror", f"DMARC record lookup failed temporarily: {e}")
    if not records:
        return result("none", f"no DMARC record at _dmarc.{domain}" + (f" or _dmarc.{org}" if org != domain else ""))
    if len(records) > 1:
        return result("permerror", f"_dmarc.{found_at} has {len(records)} DMARC records")
    try:
        pol = _parse(records[0], domain, org if found_at != domain else None)
    except dmarclib.Error as e:
        return result("none", f"invalid DMARC record at _dmarc.{found_at}: {e}")
    use_sp = found_at != domain and pol.sp.value is not None
    published: Policy = (pol.sp if use_sp else pol.p).value
    pct = min(max(pol.pct, 0), 100)

    spf_domain = _a_label(mail_from_domain or spf.domain)
    spf_matches = spf_domain == _a_label(spf.domain) and _aligned(domain, spf_domain, pol.aspf.value)
    a_spf = spf.result == "pass" and spf_matches
    a_dkim = any(d.result == "pass" and _aligned(domain, d.domain, pol.adkim.value) for d in dkim)
    if a_spf or a_dkim:
        how = " and ".join(n for n, ok in (("SPF", a_spf), ("DKIM", a_dkim)) if ok)
        return result("pass", f"{how} aligned with {domain}", published, "none", a_spf, a_dkim)
    if (spf.result == "temperror" and spf_matches) or any(
            d.result == "temperror" and _aligned(domain, d.domain, pol.adkim.value) for d in dkim):
        return result("temperror", "an aligned SPF or DKIM check failed temporarily", published)
    disposition, reason = published, f"neither SPF nor DKIM aligned with {domain}"
    if pct < 100 and not rng() * 100 < pct:
        disposition = _DOWNGRADE[published]
        reason += f"; not sampled (pct={pct}), {published} applied as {disposition}"
    return result("fail", reason, published, disposition)
