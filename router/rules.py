"""The routing rules: which matter and which person one recipient address files a message to.

A pure core (no store, no I/O): :func:`apply_rules` takes what is known about
one recipient of one message (:class:`RuleContext`), asks directory questions
through :class:`Lookups`, and returns the filings with a trace of every rule
tried (``mattermailctl route explain``). In order: ``alias``,
``matter-address``, ``plus-address`` (the first of these three that matches
decides the address; an unknown matter id makes it unfiled), ``thread``
(In-Reply-To/References name a message filed to a matter; router/threads.py),
``subject`` and ``thread-subject`` (off by default) (each used when no earlier
rule gave a matter), ``sender`` (when the address gave no person;
shared addresses: lowest person id, recorded as ambiguous) and, for capture
copies only, ``correspondent``. Each rule that files makes its own
:class:`FilingDecision`. The full rules, with every choice made: docs/routing.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol

from mattermail.config import Config, Router
from mattermail.router import threads

__all__ = ["FilingDecision", "Lookups", "RouterRules", "RoutingResult", "RuleContext", "apply_rules", "merge"]


@dataclass(frozen=True)
class FilingDecision:
    matter: str | None
    person_id: int | None
    rule: str
    recipient: str
    detail: str = ""


@dataclass
class RoutingResult:
    filings: list[FilingDecision] = field(default_factory=list)
    trace: list[str] = field(default_factory=list)
    unfiled_reason: str | None = None
    system: bool = False
    system_reason: str = ""
    personal: bool = False
    warnings: list[str] = field(default_factory=list)
    resolved: list[str] = field(default_factory=list)  # "addr (source)", set by filing.route


@dataclass(frozen=True)
class RuleContext:
    """What the rules see of one message for one recipient address."""

    recipient: str | None  # the catch-all address (None: no address known)
    subject: str = ""
    from_addresses: tuple[str, ...] = ()
    envelope_from: str | None = None
    capture: bool = False  # the recipient is the capture address
    correspondents: tuple[tuple[str, str], ...] = ()  # (address, where it was seen), capture copies
    loop: tuple[str, str] | None = None  # loop_reason(): (class, reason)
    # (normalised id, "In-Reply-To"/"References"), most recent first: In-Reply-To, then References backwards
    references: tuple[tuple[str, str], ...] = ()
    subject_key: str = ""  # the subject as thread-subject compares it (mattermail/msgid.py)
    sha256: str = ""  # the message itself: never its own thread
    inbound_capture: bool = False  # a capture copy of inbound mail to a user (two-way capture)


class Lookups(Protocol):
    def alias(self, address: str) -> tuple[int | None, str | None] | None:
        """(person id, matter id) of an alias, or None."""

    def matter_status(self, matter_id: str) -> str | None:
        """"open"/"closed", or None when there is no such matter."""

    def persons(self, address: str) -> list[int]:
        """Ids of the persons with this address (case-insensitive), ascending."""

    def thread(self, kind: str, key: str) -> list[tuple[str, int, str]]:
        """(matter, message id, sha256) of each filing to a matter of the stored messages with this thread
        key ("msgid" or "subject"), the most recently stored message first."""


@dataclass(frozen=True)
class RouterRules:
    """The rule settings, compiled once from the config."""

    catchall_domains: tuple[str, ...] = ()
    sending_domains: tuple[str, ...] = ()
    matter_patterns: tuple[re.Pattern[str], ...] = tuple(re.compile(p, re.IGNORECASE) for p in Router().matter_patterns)
    subject_patterns: tuple[re.Pattern[str], ...] = tuple(re.compile(p, re.IGNORECASE) for p in Router().subject_patterns)
    file_personal: bool = False
    thread_subject: bool = False

    @classmethod
    def from_config(cls, cfg: Config) -> RouterRules:
        return cls(
            catchall_domains=tuple(d.lower().rstrip(".") for d in cfg.general.catchall_domains),
            sending_domains=tuple(d.lower().rstrip(".") for d in cfg.general.sending_domains),
            matter_patterns=tuple(re.compile(p, re.IGNORECASE) for p in cfg.router.matter_patterns),
            subject_patterns=tuple(re.compile(p, re.IGNORECASE) for p in cfg.router.subject_patterns),
            file_personal=cfg.router.file_personal,
            thread_subject=cfg.router.thread_subject,
        )

    def own_domain(self, address: str) -> bool:
        """The firm's own (sending or catch-all) domain, or a subdomain of one."""
        domain = address.rpartition("@")[2].lower().rstrip(".")
        return any(domain == d or domain.endswith("." + d) for d in (*self.sending_domains, *self.catchall_domains))


ADDRESS_RULES = ("alias", "matter-address", "plus-address")


class _Run:
    """One apply_rules call: the result being built and its trace helper."""

    def __init__(self, ctx: RuleContext, lookups: Lookups, cfg: RouterRules) -> None:
        self.ctx, self.lookups, self.cfg = ctx, lookups, cfg
        self.rcpt = (ctx.recipient or "").strip().strip("<>")
        self.result = RoutingResult()

    def t(self, rule: str, text: str) -> None:
        self.result.trace.append(f"{self.rcpt or '(no recipient)'}: {rule}: {text}")

    @staticmethod
    def matter_in(text: str, patterns: Sequence[re.Pattern[str]]) -> tuple[str, str] | None:
        """(matter id, pattern) of the first pattern found in ``text``."""
        for p in patterns:
            m = p.search(text)
            if m and m.group(1):
                return m.group(1), p.pattern
        return None

    def choose_person(self, rule: str, address: str) -> tuple[int, str] | None:
        """(lowest person id, detail) for an address; shared addresses are recorded as ambiguous."""
        pids = sorted(self.lookups.persons(address))
        if not pids:
            return None
        detail = address
        if len(pids) > 1:
            detail = f"{address} (ambiguous: persons {', '.join(map(str, pids))} share it; chose {pids[0]})"
            self.result.warnings.append(f"{rule}: {detail}")
        return pids[0], detail

    def file(self, matter: str | None, person: int | None, rule: str, detail: str) -> None:
        self.result.filings.append(FilingDecision(matter, person, rule, self.rcpt, detail))

    def matter(self) -> str | None:
        """The first matter filed so far, or None."""
        return next((f.matter for f in self.result.filings if f.matter), None)


def _alias(run: _Run) -> FilingDecision | str | None:
    hit = run.lookups.alias(run.rcpt)
    if hit is None:
        run.t("alias", "no alias")
        return None
    person, matter = hit
    run.t("alias", f"alias → {'matter ' + matter if matter else 'person ' + str(person)}")
    return FilingDecision(matter, person, "alias", run.rcpt, f"alias {run.rcpt.lower()}")


def _matter_ref(run: _Run, rule: str, text: str, what: str) -> FilingDecision | str | None:
    found = run.matter_in(text, run.cfg.matter_patterns)
    if found is None:
        run.t(rule, f"{what} {text!r} matches no matter pattern")
        return None
    matter, pattern = found
    status = run.lookups.matter_status(matter)
    if status is None:
        run.t(rule, f"{what} {text!r} matches {pattern} → matter {matter}, which does not exist: unfiled")
        return f"unknown matter {matter}"
    run.t(rule, f"{what} {text!r} matches {pattern} → matter {matter}" + (" (closed)" if status == "closed" else ""))
    return FilingDecision(matter, None, rule, run.rcpt, f"{what} {text} ~ {pattern}")


def _plus_person(run: _Run, base: str, domain: str) -> tuple[int, str] | None:
    hit = run.lookups.alias(f"{base}@{domain}")
    if hit is not None and hit[0] is not None:
        return hit[0], f"alias {base}@{domain}"
    for d in run.cfg.sending_domains:
        chosen = run.choose_person("plus-address", f"{base}@{d}")
        if chosen:
            return chosen
    return None


def _plus(run: _Run) -> FilingDecision | str | None:
    local, _, domain = run.rcpt.rpartition("@")
    base, plus, ext = local.partition("+")
    if not plus or not base or not ext:
        run.t("plus-address", "no +extension")
        return None
    person = _plus_person(run, base, domain.lower())
    found = run.matter_in(ext, run.cfg.matter_patterns)
    matter = None
    if found is not None:
        if run.lookups.matter_status(found[0]) is None:
            run.t("plus-address", f"extension {ext!r} → matter {found[0]}, which does not exist: unfiled")
            return f"unknown matter {found[0]}"
        matter = found[0]
    if person is None and matter is None:
        run.t("plus-address", f"{base!r} is no known person and {ext!r} no matter reference")
        return None
    who = f"person {person[0]} ({person[1]})" if person else f"no person for {base!r}"
    run.t("plus-address", f"{who}; " + (f"matter {matter}" if matter else f"no matter in {ext!r}"))
    return FilingDecision(matter, person[0] if person else None, "plus-address", run.rcpt,
                          f"{base}+{ext}" + (f"; {person[1]}" if person else ""))


def _subject(run: _Run, have_matter: str | None, source: str = "the address") -> None:
    subject = run.ctx.subject or ""
    known: tuple[str, str] | None = None
    seen = False
    for p in run.cfg.subject_patterns:
        for m in p.finditer(subject):
            mid = m.group(1)
            if not mid:
                continue
            seen = True
            if run.lookups.matter_status(mid) is None:
                run.t("subject", f"{m.group(0)} ~ {p.pattern} → matter {mid}, which does not exist: ignored")
            elif known is None:
                known = (mid, f"{m.group(0)} ~ {p.pattern}")
    if known is None:
        if not seen:
            run.t("subject", "no matter reference in the subject")
        return
    if have_matter is not None:
        run.t("subject", f"{known[1]} → matter {known[0]}: not used (matter {have_matter} from {source})")
        return
    run.t("subject", f"{known[1]} → matter {known[0]}")
    run.file(known[0], None, "subject", known[1])


def _sender(run: _Run, have_person: bool) -> None:
    candidates = list(dict.fromkeys(a.lower() for a in (*run.ctx.from_addresses, run.ctx.envelope_from or "") if a))
    if have_person:
        run.t("sender", "not needed: the address gave a person")
        return
    for addr in candidates:
        chosen = run.choose_person("sender", addr)
        if chosen:
            run.t("sender", f"{addr} → person {chosen[0]}" + (" (ambiguous)" if "ambiguous" in chosen[1] else ""))
            run.file(None, chosen[0], "sender", chosen[1])
            return
    run.t("sender", f"no person with address {', '.join(candidates)}" if candidates else "no sender address")


def _correspondents(run: _Run) -> None:
    filed: set[int] = set()
    for addr, where in run.ctx.correspondents:
        addr = addr.strip().strip("<>").lower()
        if not addr or "@" not in addr:
            continue
        if run.cfg.own_domain(addr):
            run.t("correspondent", f"{addr} ({where}): the firm's own domain, skipped")
            continue
        chosen = run.choose_person("correspondent", addr)
        if chosen is None:
            run.t("correspondent", f"{addr} ({where}): no such person")
        elif chosen[0] in filed:
            run.t("correspondent", f"{addr} ({where}): person {chosen[0]} again")
        else:
            filed.add(chosen[0])
            run.t("correspondent", f"{addr} ({where}) → person {chosen[0]}")
            run.file(None, chosen[0], "correspondent", f"{chosen[1]} ({where})")
    if not run.ctx.correspondents:
        run.t("correspondent", "no correspondents")


def apply_rules(ctx: RuleContext, lookups: Lookups, cfg: RouterRules) -> RoutingResult:
    """File one recipient address of one message: the filings, the trace, or why it is unfiled."""
    run = _Run(ctx, lookups, cfg)
    res = run.result
    if ctx.loop:
        res.system, res.system_reason = True, f"{ctx.loop[0]} ({ctx.loop[1]})"
        run.t("loop", f"{res.system_reason}: system mail, filed but never answered or forwarded")
    if ctx.capture:
        for rule in ADDRESS_RULES:
            run.t(rule, "not applicable: capture copy")
        _matter_rules(run, None)
        run.t("sender", "not applicable: capture copy (" + ("the sender is a correspondent)" if ctx.inbound_capture
                                                              else "the sender is the firm's user)"))
        _correspondents(run)
        if not res.filings:
            res.personal = True
            unfiled = cfg.file_personal and not ctx.inbound_capture  # personal mail to a user is never forwarded
            run.t("result", "no known correspondent: personal" + (", unfiled (file_personal)" if unfiled else ", not filed"))
            if unfiled:
                res.unfiled_reason = "no known correspondent"
        res.filings = [replace(f, recipient=f.recipient.lower()) for f in res.filings]
        return res
    decision: FilingDecision | str | None = None
    if not run.rcpt:
        for rule in ADDRESS_RULES:
            run.t(rule, "not applicable: no recipient address")
    else:
        for rule, fn in zip(ADDRESS_RULES, (_alias, _matter_address, _plus)):
            if decision is not None:
                run.t(rule, "not tried: decided by an earlier rule")
                continue
            decision = fn(run)
    if isinstance(decision, str):
        res.unfiled_reason = decision
        for rule in ("thread", "subject", "thread-subject", "sender"):
            run.t(rule, f"not applied: {decision}")
        run.t("correspondent", "not applicable: not a capture copy")
        return res
    if decision is not None:
        res.filings.append(decision)
    _matter_rules(run, decision.matter if decision else None)
    _sender(run, bool(decision and decision.person_id is not None))
    run.t("correspondent", "not applicable: not a capture copy")
    if not res.filings:
        res.unfiled_reason = "no rule matched"
    res.filings = [replace(f, recipient=f.recipient.lower()) for f in res.filings]
    return res


def _matter_rules(run: _Run, from_address: str | None) -> None:
    """thread, subject, thread-subject: each files a matter only when no earlier rule gave one."""
    threads.thread(run, from_address)
    by_thread = None if from_address else run.matter()
    _subject(run, from_address or by_thread, "the address" if from_address else "the thread")
    threads.thread_subject(run, run.matter())


def _matter_address(run: _Run) -> FilingDecision | str | None:
    return _matter_ref(run, "matter-address", run.rcpt.rpartition("@")[0], "local part")


def merge(results: Iterable[RoutingResult]) -> RoutingResult:
    """Several addresses' results as one (route explain, imports): filed when any address filed."""
    out = RoutingResult()
    reasons: list[str] = []
    for r in results:
        out.filings += r.filings
        out.trace += r.trace
        out.warnings += r.warnings
        out.resolved += r.resolved
        out.system = out.system or r.system
        out.system_reason = out.system_reason or r.system_reason
        out.personal = out.personal or r.personal
        if r.unfiled_reason and r.unfiled_reason not in reasons:
            reasons.append(r.unfiled_reason)
    if not out.filings and reasons:
        out.unfiled_reason = "; ".join(reasons)
    out.personal = out.personal and not out.filings
    return out
