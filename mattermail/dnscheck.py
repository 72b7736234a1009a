"""The core of ``mattermailctl dns check DOMAIN``: is the domain's DNS fit to send?

:func:`check_domain` looks at MX, SPF (RFC 7208), DKIM (RFC 6376) and DMARC
(RFC 7489) through our :class:`~mattermail.dns.Resolver` and returns
:class:`Finding` objects; :func:`blocking` says whether any of them would make
Gmail or Yahoo reject the firm's mail.  A :class:`Finding`'s ``fix`` is always
the exact TXT value to publish at the name its message gives (what a registrar's
web form asks for), never a zone-file line.

A DNS timeout or SERVFAIL is reported as an ``error`` saying the lookup failed
temporarily, never as a missing record.

pyspf and our resolver
    pyspf does its own DNS through the module-level hook ``spf.DNSLookup(name,
    qtype, strict, timeout)``.  :func:`spf_resolver` installs (once, keeping
    the previous hook as fallback) a dispatcher that answers from the
    :class:`Resolver` held in a context variable and otherwise calls the
    previous hook, so it is thread-safe and leaves other users of pyspf alone.

Size: just over 400 lines: the DNS-fitness checks (SPF, DKIM, DMARC, MX, PTR) with their
findings; the milter uses only spf_resolver from it, which is why it stays in the shared package.
"""

from __future__ import annotations

import contextvars
import ipaddress
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import spf

from mattermail.dkimkeys import SigningKey, dns_record, public_key_matches
from mattermail.dns import Resolver, TempError

Check = Literal["mx", "spf", "dkim", "dmarc"]
Level = Literal["ok", "warn", "error"]

#: RFC 7208 §4.6.4 processing limits.
MAX_LOOKUPS = 10
MAX_VOID_LOOKUPS = 2
_MECHANISMS = {"all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"}
_LOOKUP_MECHANISMS = {"include", "a", "mx", "ptr", "exists"}
_SPF_RE = re.compile(r"^v=spf1(\s|$)", re.I)
_DMARC_RE = re.compile(r"^v\s*=\s*DMARC1\s*(;|$)", re.I)
_POLICIES = ("none", "quarantine", "reject")


@dataclass(frozen=True)
class Finding:
    """One result line: which check, how bad, what, and the TXT value to publish."""

    check: Check
    level: Level
    message: str
    fix: str | None = None


def blocking(findings: Sequence[Finding]) -> bool:
    """True when any finding would make Gmail or Yahoo reject the firm's mail (any error)."""
    return any(f.level == "error" for f in findings)


def _temp(check: Check, e: Exception) -> Finding:
    """The finding for a lookup that timed out or got SERVFAIL: never "missing"."""
    return Finding(check, "error", f"DNS lookup failed temporarily ({e}); cannot tell "
                   "whether the record exists: try again later")


# --- pyspf hook -----------------------------------------------------------------

_active: contextvars.ContextVar[Resolver | None] = contextvars.ContextVar("mattermail_spf_resolver", default=None)
_seen: contextvars.ContextVar[list[bytes] | None] = contextvars.ContextVar("mattermail_spf_seen", default=None)
_fallback: Callable[..., Any] | None = None
_install_lock = threading.Lock()
#: rdata -> the value pyspf's dnspython driver gives for each query type it asks.
_SPF_VALUES: dict[str, Callable[[Any], Any]] = {
    "A": lambda r: r.address, "AAAA": lambda r: r.address,
    "MX": lambda r: (r.preference, r.exchange.to_text(omit_final_dot=True)),
    "PTR": lambda r: r.target.to_text(omit_final_dot=True),
    "TXT": lambda r: list(r.strings), "SPF": lambda r: list(r.strings),
}


def _spf_lookup(name: str, qtype: str, strict: Any = True, timeout: float = 20) -> list[tuple[tuple[str, str], Any]]:
    """pyspf's ``DNSLookup`` contract, answered by the active :class:`Resolver`."""
    resolver = _active.get()
    if resolver is None:
        assert _fallback is not None
        return _fallback(name, qtype, strict, timeout)
    convert = _SPF_VALUES.get(qtype)
    try:
        rdatas = resolver.query(name, qtype) if convert else []
    except TempError as e:
        raise spf.TempError(f"DNS {e}") from e
    records = _seen.get()
    if records is not None and qtype in ("TXT", "SPF"):
        records.extend(b"".join(r.strings) for r in rdatas)
    return [((name, qtype), convert(r)) for r in rdatas] if convert else []


@contextmanager
def spf_resolver(resolver: Resolver, records: list[bytes] | None = None) -> Iterator[None]:
    """Make pyspf, in this thread/context, do its DNS through ``resolver``; each TXT (or SPF) record
    it reads is added to ``records`` when given (its strings joined)."""
    global _fallback
    with _install_lock:
        if spf.DNSLookup is not _spf_lookup:
            _fallback, spf.DNSLookup = spf.DNSLookup, _spf_lookup
    token = _active.set(resolver)
    seen = _seen.set(records)
    try:
        yield
    finally:
        _seen.reset(seen)
        _active.reset(token)


# --- SPF ------------------------------------------------------------------------

@dataclass(frozen=True)
class _Term:
    text: str
    qualifier: str  # "+", "-", "~", "?"; "" for modifiers
    name: str  # lower-case mechanism or modifier name
    value: str  # after ":" (mechanisms) or "=" (modifiers)
    modifier: bool

    def target(self, domain: str) -> str:
        """The domain a DNS-querying term looks up."""
        return self.value.split("/")[0].rstrip(".") or domain


def _parse_spf(record: str) -> list[_Term]:
    """The terms after ``v=spf1``, in order."""
    terms = []
    for text in record.split()[1:]:
        m = re.match(r"^([a-z][a-z0-9_.-]*)=(.*)$", text, re.I)
        if m:
            terms.append(_Term(text, "", m.group(1).lower(), m.group(2), True))
            continue
        qualifier = text[0] if text[0] in "+-~?" else "+"
        body = text[1:] if text[0] in "+-~?" else text
        name = re.match(r"[A-Za-z0-9]*", body).group()  # type: ignore[union-attr]
        rest = body[len(name):]
        terms.append(_Term(text, qualifier, name.lower(), rest[1:] if rest.startswith(":") else rest, False))
    return terms


def _spf_records(resolver: Resolver, domain: str) -> tuple[list[str], bool]:
    """(the ``v=spf1`` records of ``domain``, whether it had no TXT at all)."""
    txt = resolver.txt(domain)
    return [t for t in txt if _SPF_RE.match(t.strip())], not txt


@dataclass
class _Walk:
    """Lookup and void-lookup counts over a record and everything it includes."""

    resolver: Resolver
    lookups: int = 0
    voids: list[str] = field(default_factory=list)
    void_terms: set[str] = field(default_factory=set)  # top-level terms whose lookup was void
    problems: list[str] = field(default_factory=list)

    def void(self, what: str, term: _Term, top: bool) -> None:
        """Count a lookup that found nothing; the fix drops such top-level terms."""
        self.voids.append(what)
        if top:
            self.void_terms.add(term.text)

    def addresses(self, name: str) -> bool:
        """Whether ``name`` has an A or AAAA record."""
        return bool(self.resolver.query(name, "A") or self.resolver.query(name, "AAAA"))

    def walk(self, domain: str, terms: list[_Term], top: bool) -> None:
        """Count every DNS-querying term, statically (worst case: nothing matches)."""
        has_all = any(t.name == "all" and not t.modifier for t in terms)
        for t in terms:
            querying = t.name == "redirect" and not has_all if t.modifier else t.name in _LOOKUP_MECHANISMS
            if not querying:
                continue
            self.lookups += 1
            target = t.target(domain)
            if self.lookups > 4 * MAX_LOOKUPS or "%" in target or t.name == "ptr":
                continue  # runaway (loop), a macro needing a sender, or ptr needing a client IP
            if t.name in ("include", "redirect"):
                records, empty = _spf_records(self.resolver, target)
                if empty:
                    self.void(f"{t.name}:{target}", t, top)
                if len(records) != 1:
                    self.problems.append(f"{t.text} (from {domain}): {target} has "
                                         f"{len(records) or 'no'} SPF records, so receivers get permerror")
                    if top and not records:
                        self.void_terms.add(t.text)
                else:
                    self.walk(target, _parse_spf(records[0]), False)
            elif t.name in ("a", "exists"):
                if not (self.addresses(target) if t.name == "a" else self.resolver.query(target, "A")):
                    self.void(f"{t.name}:{target}", t, top)
            elif t.name == "mx":
                mxs = self.resolver.query(target, "MX")
                if not mxs:
                    self.void(f"mx:{target}", t, top)
                for mx in mxs[:MAX_LOOKUPS]:
                    host = mx.exchange.to_text(omit_final_dot=True)
                    if host and not self.addresses(host):
                        self.voids.append(f"mx:{target} -> {host}")


def _corrected_spf(terms: list[_Term], drop: set[str], add: Sequence[str]) -> str:
    """The record with ``all`` last (``~all`` for +all/?all), ``drop`` removed, ``add`` before ``all``."""
    mechs = [t.text for t in terms if not t.modifier and t.name != "all" and t.text not in drop]
    mods = [t.text for t in terms if t.modifier]
    alls = [t for t in terms if t.name == "all" and not t.modifier]
    if alls:
        tail = ["~all" if alls[0].qualifier in "+?" else alls[0].text]
    else:
        tail = [] if any(t.name == "redirect" for t in terms) else ["~all"]
    return " ".join(["v=spf1", *mechs, *[a for a in add if a not in mechs], *tail, *mods])


def _ip_term(ip: str) -> str:
    """``ip4:…`` or ``ip6:…`` for one of our addresses."""
    addr = ipaddress.ip_address(ip)
    return f"ip{addr.version}:{addr.compressed}"


def _check_spf(domain: str, resolver: Resolver, our_ips: Sequence[str]) -> list[Finding]:
    """One record, syntax, ``all``, limits (static, worst case), and our IPs through pyspf."""
    records, _ = _spf_records(resolver, domain)
    if not records:
        fix = " ".join(["v=spf1", *[_ip_term(ip) for ip in our_ips], "~all"])
        return [Finding("spf", "error", f"{domain} has no SPF record (TXT v=spf1)", fix)]
    if len(records) > 1:
        listed = " and ".join(f'"{r}"' for r in records)
        return [Finding("spf", "error", f"{domain} has {len(records)} SPF records ({listed}): receivers "
                        "get permerror; merge them into one")]
    record = records[0].strip()
    terms = _parse_spf(record)
    mechs = [t for t in terms if not t.modifier]
    found: list[tuple[Level, str]] = []
    drop = {t.text for t in mechs if t.name not in _MECHANISMS}  # pyspf reports them (permerror)
    alls = [i for i, t in enumerate(mechs) if t.name == "all"]
    if alls and alls[0] != len(mechs) - 1:
        ignored = " ".join(t.text for t in mechs[alls[0] + 1:])
        found.append(("error", f"{mechs[alls[0]].text} is not the last mechanism: {ignored} after it are ignored"))
    if alls and mechs[alls[0]].qualifier == "+":
        found.append(("error", f"{mechs[alls[0]].text} authorises every host on the internet to send as {domain}"))
    elif alls and mechs[alls[0]].qualifier == "?":
        found.append(("warn", "?all gives neutral for unauthorised hosts: use ~all or -all"))
    elif not alls and not any(t.name == "redirect" for t in terms):
        found.append(("warn", "no all mechanism: unauthorised hosts get neutral; end the record with ~all or -all"))
    for t in mechs:
        if t.name == "ptr":
            found.append(("warn", f"{t.text}: ptr is slow, unreliable and deprecated (RFC 7208 §5.5); use ip4/ip6 or a"))
    walk = _Walk(resolver)
    walk.walk(domain, terms, True)
    found += [("error", p) for p in walk.problems]
    if walk.lookups > MAX_LOOKUPS:
        found.append(("error", f"{walk.lookups} DNS-querying terms including nested includes (limit {MAX_LOOKUPS}): "
                      "receivers get permerror; replace includes or a/mx with ip4/ip6"))
    if len(walk.voids) > MAX_VOID_LOOKUPS:
        found.append(("error", f"{len(walk.voids)} void lookups (limit {MAX_VOID_LOOKUPS}): "
                      f"{', '.join(walk.voids)}: receivers get permerror"))
    drop |= walk.void_terms
    base = _corrected_spf(terms, drop, ())
    authorised: list[str] = []
    missing: list[str] = []
    with spf_resolver(resolver):
        for ip in our_ips:
            res, expl = spf.check2(i=ip, s=f"postmaster@{domain}", h=domain)
            if res == "temperror":
                return [_temp("spf", TempError(expl))]
            if res == "pass":
                authorised.append(ip)
            elif res == "permerror":
                found.append(("error", f"receivers evaluating {ip} get permerror: {expl}"))
            else:
                found.append(("error", f"our server {ip} is not authorised (SPF {res})"))
            if res != "pass":
                fixed_res = spf.query(i=ip, s=f"postmaster@{domain}", h=domain).check(spf=base)[0]
                if fixed_res != "pass":
                    missing.append(_ip_term(ip))
    fix = _corrected_spf(terms, drop, missing)
    found = list(dict.fromkeys(found))
    out = [Finding("spf", level, f"{domain} SPF: {msg}", fix if fix != record else None) for level, msg in found]
    if not out:
        out.append(Finding("spf", "ok", f'{domain} SPF "{record}" authorises {", ".join(authorised) or "-"}; '
                           f"{walk.lookups}/{MAX_LOOKUPS} lookups, {len(walk.voids)} void"))
    return out


# --- MX, DKIM, DMARC ------------------------------------------------------------

def _check_mx(domain: str, resolver: Resolver) -> list[Finding]:
    """MX present (a warning if not: mail falls back to A/AAAA), null MX flagged."""
    mxs = sorted(resolver.query(domain, "MX"), key=lambda r: r.preference)
    if not mxs:
        return [Finding("mx", "warn", f"{domain} has no MX record: mail to it falls back to its A/AAAA address")]
    hosts = [(r.preference, r.exchange.to_text(omit_final_dot=True)) for r in mxs]
    if len(hosts) == 1 and hosts[0][1] in ("", "."):
        return [Finding("mx", "warn", f"{domain} has a null MX: it receives no mail, so bounces and reports to it are lost")]
    return [Finding("mx", "ok", f"{domain} MX: " + ", ".join(f"{p} {h}" for p, h in hosts))]


def _check_dkim(domain: str, resolver: Resolver, keys: Sequence[SigningKey]) -> list[Finding]:
    """Each of our keys for ``domain`` is published, and is the public half of our private key."""
    mine = [k for k in keys if k.domain.rstrip(".").lower() == domain]
    if not mine:
        return [Finding("dkim", "warn", f"no DKIM key for {domain}: its mail is not DKIM-signed")]
    out: list[Finding] = []
    for key in mine:
        owner, value = dns_record(key.private_key, key.selector, domain)
        try:
            records = resolver.txt(owner)
        except TempError as e:
            out.append(_temp("dkim", e))
            continue
        if not records:
            out.append(Finding("dkim", "error", f"{owner}: no DKIM record ({key.algorithm}); publish TXT at {owner}", value))
        elif not any(public_key_matches(key.private_key, r) for r in records):
            out.append(Finding("dkim", "error", f"{owner}: key mismatch: DNS does not publish our "
                               f"{key.algorithm} key; replace the TXT at {owner}", value))
        else:
            out.append(Finding("dkim", "ok", f"{owner} publishes our {key.algorithm} key"))
    return out


def _mailto_list(value: str) -> tuple[list[str], list[str]]:
    """(addresses, bad URIs) of a DMARC rua/ruf value."""
    good, bad = [], []
    for uri in filter(None, (u.strip() for u in value.split(","))):
        addr = uri[7:].split("!")[0] if uri.lower().startswith("mailto:") else ""
        (good if re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", addr) else bad).append(addr or uri)
    return good, bad


def _check_dmarc(domain: str, resolver: Resolver) -> list[Finding]:
    """Exactly one valid ``v=DMARC1`` record; reports its policy and report addresses."""
    owner = f"_dmarc.{domain}"
    records = [t.strip() for t in resolver.txt(owner) if _DMARC_RE.match(t.strip())]
    if not records:
        return [Finding("dmarc", "error", f"{owner}: no DMARC record; Gmail and Yahoo require one "
                        f"(start with p=none and reports, publish TXT at {owner})",
                        f"v=DMARC1; p=none; rua=mailto:postmaster@{domain}")]
    if len(records) > 1:
        return [Finding("dmarc", "error", f"{owner}: {len(records)} DMARC records: receivers ignore all of them; keep one")]
    tags: dict[str, str] = {}
    for item in records[0].split(";")[1:]:
        name, sep, value = item.partition("=")
        if sep:
            tags[name.strip().lower()] = value.strip()
    problems: list[str] = []

    def choice(tag: str, allowed: Sequence[str], default: str | None) -> None:
        if tag in tags and tags[tag].lower() not in allowed:
            problems.append(f"{tag}={tags[tag]} is not one of {'|'.join(allowed)}")
            if default is None:
                del tags[tag]
            else:
                tags[tag] = default

    if "p" not in tags:
        problems.append("the required p= tag is missing")
        tags = {"p": "none", **tags}
    choice("p", _POLICIES, "none")
    choice("sp", _POLICIES, None)
    choice("adkim", ("r", "s"), None)
    choice("aspf", ("r", "s"), None)
    if "pct" in tags and not (tags["pct"].isdigit() and 0 <= int(tags["pct"]) <= 100):
        problems.append(f"pct={tags.pop('pct')} is not a whole number 0-100")
    reports: dict[str, list[str]] = {}
    for tag in ("rua", "ruf"):
        reports[tag], bad = _mailto_list(tags.get(tag, ""))
        if bad:
            problems.append(f"{tag}= has invalid mailto: URIs: {', '.join(bad)}")
            tags[tag] = ",".join(f"mailto:{a}" for a in reports[tag])
            if not reports[tag]:
                del tags[tag]
    fixed = "; ".join(["v=DMARC1", *(f"{k}={v}" for k, v in tags.items())])
    if problems:
        return [Finding("dmarc", "error", f"{owner}: invalid DMARC record: {'; '.join(problems)}", fixed)]
    policy = f"p={tags['p'].lower()}" + "".join(f", {t}={tags[t]}" for t in ("sp", "pct") if t in tags)
    rua = f"aggregate reports to {', '.join(reports['rua'])}" if reports["rua"] else "no aggregate reports (no rua=)"
    ruf = f"; failure reports to {', '.join(reports['ruf'])}" if reports["ruf"] else ""
    summary = f"{owner}: policy {policy}; {rua}{ruf}"
    if tags["p"].lower() == "none":
        stricter = "; ".join(["v=DMARC1", *(f"{k}={'quarantine' if k == 'p' else v}" for k, v in tags.items())])
        return [Finding("dmarc", "warn", f"{summary}: p=none only monitors, spoofed mail is still "
                        "delivered; move to quarantine or reject once reports are clean", stricter)]
    return [Finding("dmarc", "ok", summary)]


def check_domain(domain: str, resolver: Resolver, our_ips: Sequence[str],
                 keys: Sequence[SigningKey]) -> list[Finding]:
    """Check MX, SPF, DKIM and DMARC of ``domain`` for sending from ``our_ips`` with ``keys``.

    ``keys`` may hold keys of other domains; only those for ``domain`` are checked.
    Findings come in check order (mx, spf, dkim, dmarc).
    """
    domain = domain.strip().rstrip(".").lower()
    out: list[Finding] = []
    for check, run in (("mx", lambda: _check_mx(domain, resolver)),
                       ("spf", lambda: _check_spf(domain, resolver, our_ips)),
                       ("dkim", lambda: _check_dkim(domain, resolver, keys)),
                       ("dmarc", lambda: _check_dmarc(domain, resolver))):
        try:
            out += run()
        except TempError as e:
            out.append(_temp(check, e))  # type: ignore[arg-type]
    return out
