"""The inbound decision core (DESIGN.md, "Inbound"): one call, one verdict.

:func:`evaluate` takes what the milter gathered for a message (envelope,
header fields, a way to read the whole message) and the SPF result from MAIL
FROM time, runs the checks, and returns an :class:`InboundVerdict`: the
decision (accept, tag, quarantine, or reject / tempfail with the SMTP reply),
the value of our ``Authentication-Results`` header, the forged ones to
delete, and the log fields.  It changes nothing itself: the milter adapter
(:mod:`~mattermail.milter.app`) applies the verdict through the milter
protocol, so every behaviour is testable without Postfix.

The checks live in modules of their own, each producing a type from
:mod:`~mattermail.milter.verdicts`:

* :func:`check_spf` — RFC 7208 (:mod:`~mattermail.milter.spf_check`).
* :func:`verify_dkim` — every ``DKIM-Signature`` (:mod:`~mattermail.milter.dkim_verify`).
* :func:`check_dmarc` — RFC 7489, per author domain (:mod:`~mattermail.milter.dmarc_check`).
* :func:`arc_trusted` — a valid ARC chain sealed by a trusted forwarder (:mod:`~mattermail.milter.arc_check`).
* :func:`authentication_results`, :func:`strip_our_results` — RFC 8601 (:mod:`~mattermail.milter.authresults`).

Here: :func:`check_author` (refuse mail whose author DMARC cannot judge,
before any DNS work), :func:`strictest` (the deciding DMARC result when From
names several author domains) and :func:`decide` (the action, per
:class:`InboundPolicy`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal

from mattermail.dns import Resolver
from mattermail.milter import author
from mattermail.milter.arc_check import arc_trusted, check_arc
from mattermail.milter.author import Authors, readable
from mattermail.milter.authresults import authentication_results, pvalue, quoted_value, strip_our_results
from mattermail.milter.dkim_verify import verify_dkim
from mattermail.milter.dmarc_check import check_dmarc, organizational_domain
from mattermail.milter.spf_check import check_spf
from mattermail.milter.verdicts import ARCResult, DKIMResult, DMARCResult, SPFResult

if TYPE_CHECKING:  # pragma: no cover
    from mattermail.config import Config

__all__ = [
    "ARCResult", "DKIMResult", "DMARCResult", "Decision", "InboundMessage", "InboundPolicy", "InboundSettings",
    "InboundVerdict", "SPFResult", "arc_trusted", "authentication_results", "check_author", "check_dmarc",
    "check_arc", "check_spf", "decide", "evaluate", "organizational_domain", "pvalue", "quoted_value", "strictest",
    "strip_our_results", "verify_dkim",
]


@dataclass(frozen=True)
class InboundPolicy:
    """What to do with authentication failures (the ``[inbound]`` settings).

    ``spf_fail``: reject SPF ``fail`` (550 5.7.23) or tag it; never applied
    when DMARC passed (RFC 7489 §10.1: forwarded mail).  ``dmarc_quarantine``:
    "hold" puts a DMARC-quarantined message on Postfix's hold queue, "tag"
    delivers it tagged.  ``on_temperror``: "tempfail" (451 4.4.3, the client
    retries) or "accept" (deliver, tagged).  ``trusted_forwarder``: the client
    is a forwarder we trust, so SPF, DMARC and display-name rejections become
    tags.  ``invalid_from``: "reject" or "tag" mail with no usable author
    address (bounces with a null sender are always accepted, see
    :func:`check_author`).  ``display_name_spoof``: "tag", "reject" or "off"
    for a From display name that shows a firm address on mail from outside.
    """

    spf_fail: Literal["tag", "reject"] = "tag"
    dmarc_quarantine: Literal["hold", "tag"] = "hold"
    on_temperror: Literal["tempfail", "accept"] = "tempfail"
    trusted_forwarder: bool = False
    invalid_from: Literal["reject", "tag"] = "reject"
    display_name_spoof: Literal["tag", "reject", "off"] = "tag"


@dataclass(frozen=True)
class Decision:
    """The action for the adapter: SMTP code, enhanced code and text only for reject/tempfail."""

    action: Literal["accept", "tag", "quarantine", "reject", "tempfail"]
    smtp_code: str
    xcode: str
    text: str
    reason: str


def _sanitize(text: str, limit: int = 200) -> str:
    """Domain-supplied text fit for an SMTP reply: printable ASCII, no ``%``, bounded."""
    return re.sub(r"\s+", " ", re.sub(r"[^\x20-\x7e]|%", " ", text)).strip()[:limit]


MAX_AUTHOR_DOMAINS = 8  # DMARC lookups per message are bounded: at most two per author domain


def check_author(who: Authors, null_sender: bool, cfg: InboundPolicy) -> Decision | None:
    """Refuse a message whose author DMARC cannot judge (RFC 7489 §6.6.1); None: go on.

    * Several ``From:`` fields → reject 550 5.7.1 (no legitimate mail has them).
    * No ``From:`` at all, or one with a mailbox that has no usable
      ``local@domain`` (an encoded word, ``undisclosed:;``, junk) → reject
      550 5.7.1, or tag with ``invalid_from = "tag"`` (DMARC then says
      permerror).  Exception: a bounce (null envelope sender) whose From
      shows no address-like text (``MAILER-DAEMON <>``, ``<>``) is accepted
      and tagged, since real MTAs write those; one that shows an ``@`` is not.
    * More than :data:`MAX_AUTHOR_DOMAINS` distinct author domains → reject.

    One field with several mailboxes (or a group) is fine here: the caller
    evaluates DMARC for each author domain and applies the strictest.
    """
    def reject(text: str, reason: str) -> Decision:
        return Decision("reject", "550", "5.7.1", text, reason)

    if who.fields > 1:
        return reject(f"Message has {who.fields} From: header fields; RFC 5322 allows exactly one",
                      f"{who.fields} From header fields")
    if not who.valid:
        what = "no From header field" if not who.fields else "no valid author address in From"
        if null_sender and "@" not in readable(who.text):
            return None
        if cfg.invalid_from == "tag":
            return Decision("tag", "", "", "", what)
        if not who.fields:
            return reject("Message has no From: header field, so no valid author address (RFC 5322)", what)
        return reject("Message has no valid author address in its From: header field (RFC 5322)", what)
    if len(who.domains) > MAX_AUTHOR_DOMAINS:
        return reject(f"From: names {len(who.domains)} author domains; at most {MAX_AUTHOR_DOMAINS} are accepted",
                      f"{len(who.domains)} author domains")
    return None


# Strictest first: the result whose consequence is hardest wins (RFC 7489 §6.6.1).
def _severity(d: DMARCResult) -> int:
    if d.result == "fail":
        return {"reject": 7, "quarantine": 6}.get(d.disposition, 4)
    return {"temperror": 5, "permerror": 3, "none": 2, "pass": 1}.get(d.result, 3)


def strictest(results: Sequence[DMARCResult]) -> DMARCResult:
    """The DMARC result that decides for a message with several author domains.

    Order: fail with disposition reject, fail with quarantine, temperror
    (it might have been a reject), fail with none, permerror, none, pass; the
    first author domain wins a tie.  A message passes only when every author
    domain passed.
    """
    return max(results, key=_severity)


def decide(spf: SPFResult, dmarc: DMARCResult, cfg: InboundPolicy, impersonated: str = "") -> Decision:
    """The action for a message, in this order of precedence.

    1. DMARC fail with disposition reject → reject 550 5.7.1 naming the From
       domain (a trusted forwarder gets tag instead).
    2. A From display name showing the firm address ``impersonated`` with
       ``display_name_spoof = "reject"`` → reject 550 5.7.1 naming it (a
       trusted forwarder gets tag).
    3. DMARC fail with disposition quarantine → quarantine (hold) or tag.
    4. A temporary error that leaves the verdict open — DMARC temperror, or SPF
       temperror when DMARC did not pass → tempfail 451 4.4.3, or tag when
       ``on_temperror`` is "accept".
    5. SPF fail when DMARC did not pass → reject 550 5.7.23, or tag.
    6. A display-name spoof with "tag" → tag; otherwise accept (the A-R header
       carries the details).
    """
    def act(action: str, reason: str, code: str = "", xcode: str = "", text: str = "") -> Decision:
        return Decision(action, code, xcode, text, reason)  # type: ignore[arg-type]

    if dmarc.result == "fail" and dmarc.disposition == "reject":
        reason = f"DMARC fail, {dmarc.from_domain} policy reject: {dmarc.reason}"
        if cfg.trusted_forwarder:
            return act("tag", reason + " (trusted forwarder: not rejected)")
        return act("reject", reason, "550", "5.7.1",
                   f"The domain {dmarc.from_domain} publishes a DMARC policy of reject "
                   "and this message failed authentication")
    spoof = impersonated if cfg.display_name_spoof != "off" else ""
    spoof_reason = f"From display name impersonates <{spoof}>"
    if spoof and cfg.display_name_spoof == "reject":
        if cfg.trusted_forwarder:
            return act("tag", spoof_reason + " (trusted forwarder: not rejected)")
        return act("reject", spoof_reason, "550", "5.7.1",
                   f"The From: display name impersonates <{_sanitize(spoof, 254)}>, an address of this organization")
    if dmarc.result == "fail" and dmarc.disposition == "quarantine":
        reason = f"DMARC fail, {dmarc.from_domain} policy quarantine: {dmarc.reason}"
        return act("quarantine" if cfg.dmarc_quarantine == "hold" else "tag", reason)
    if dmarc.result == "temperror" or (spf.result == "temperror" and dmarc.result != "pass"):
        what = "DMARC" if dmarc.result == "temperror" else "SPF"
        reason = f"{what} temperror: {dmarc.reason if what == 'DMARC' else spf.explanation}"
        if cfg.on_temperror == "accept":
            return act("tag", reason)
        return act("tempfail", reason, "451", "4.4.3",
                   "Temporary DNS failure checking sender authentication; try again later")
    if spf.result == "fail" and dmarc.result != "pass":
        reason = f"SPF fail for {spf.domain} ({spf.identity})"
        if cfg.spf_fail == "tag" or cfg.trusted_forwarder:
            return act("tag", reason)
        text = f"SPF check failed: {spf.domain} does not authorize this server to send its mail"
        expl = _sanitize(spf.explanation)
        if expl and expl != "SPF fail - not authorized":
            text += f" ({expl})"
        return act("reject", reason, "550", "5.7.23", text)
    if spoof:
        return act("tag", spoof_reason)
    return act("accept", f"SPF {spf.result}, DMARC {dmarc.result}")


# --- the one call -------------------------------------------------------------------

@dataclass(frozen=True)
class InboundSettings:
    """What :func:`evaluate` needs from the configuration (built once per configuration)."""

    authserv_id: str
    firm_domains: tuple[str, ...] = ()  # general.sending_domains: the display-name check's firm
    policy: InboundPolicy = field(default_factory=InboundPolicy)
    min_rsa_bits: int = 1024
    trusted_arc_authserv_ids: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, cfg: Config) -> InboundSettings:
        i = cfg.inbound
        policy = InboundPolicy(spf_fail=i.spf_fail, dmarc_quarantine=i.dmarc_quarantine,  # type: ignore[arg-type]
                               on_temperror=i.on_temperror, invalid_from=i.invalid_from,  # type: ignore[arg-type]
                               display_name_spoof=i.display_name_spoof)  # type: ignore[arg-type]
        return cls(cfg.authserv_id, tuple(cfg.general.sending_domains), policy, i.min_rsa_bits,
                   tuple(i.trusted_arc_authserv_ids))


@dataclass(frozen=True)
class InboundMessage:
    """One inbound message as the milter gathered it.

    ``headers``: the header fields in order, values as received.  ``raw``:
    returns the whole message (CRLF line ends); called at most once, and not
    at all for a message refused on its From fields.  ``trusted_forwarder``:
    the client is in ``inbound.trusted_forwarders``.
    """

    client_ip: str
    helo: str
    mail_from: str
    headers: Sequence[tuple[str, str]]
    raw: Callable[[], bytes]
    trusted_forwarder: bool = False


@dataclass(frozen=True)
class InboundVerdict:
    """What to do with a message, and what to say about it.

    ``decision``: the action and, for reject/tempfail, the SMTP reply.
    ``authentication_results``: the value of the header to insert first (""
    for a refused message: nothing is changed).  ``strip``: occurrence
    indexes of the ``Authentication-Results`` fields to delete (highest
    first).  ``log_fields``: the log line after the envelope summary.
    """

    decision: Decision
    spf: SPFResult
    dkim: tuple[DKIMResult, ...] = ()
    dmarc: tuple[DMARCResult, ...] = ()
    arc: ARCResult = ARCResult("none")
    impersonated: str = ""
    authentication_results: str = ""
    strip: tuple[int, ...] = ()
    evaluated: bool = True  # False: refused on the From fields before any check

    @property
    def refused(self) -> bool:
        return self.decision.action in ("reject", "tempfail")

    @property
    def results(self) -> str:
        """The results for the log line: ``spf=… dkim=… dmarc=…`` (and ``display_name_spoof=<…>``)."""
        return (f"spf={self.spf.result} dkim={','.join(r.result for r in self.dkim) or 'none'} "
                f"dmarc={','.join(r.result for r in self.dmarc)}"
                + (f" display_name_spoof=<{self.impersonated}>" if self.impersonated else ""))

    @property
    def log_fields(self) -> str:
        return self.log_line()

    def log_line(self, note: str = "") -> str:
        """The log line after the envelope summary; ``note``: the adapter's own (e.g. the capture copy)."""
        d = self.decision
        if not self.evaluated:
            return f"verdict={d.action} reason={d.reason}"
        if self.refused:
            return f"{self.results} verdict={d.action} reason={d.reason}"
        return (f"{self.results}{f' removed_forged_ar={len(self.strip)}' if self.strip else ''}"
                f"{f' {note}' if note else ''} verdict={d.action}" + (f" reason={d.reason}" if d.reason else ""))


def evaluate(msg: InboundMessage, spf: SPFResult, settings: InboundSettings, resolver: Resolver) -> InboundVerdict:
    """The verdict on one inbound message; ``spf`` is :func:`check_spf`'s result for it.

    1. The From fields (:func:`check_author`): several, or no usable author
       address, are refused here, before any DNS work.
    2. DKIM, every signature; DMARC for every author domain, the strictest
       deciding (RFC 7489 §6.6.1); the display-name check.
    3. A trusted forwarder — the client's address, or (only when it would
       change the outcome) a valid ARC chain sealed by a trusted authserv-id —
       turns rejections into tags.
    4. :func:`decide`; an accepted message gets our A-R value and the list of
       forged ones (claiming our authserv-id) to remove.
    """
    policy = settings.policy
    who = author.authors([v for n, v in msg.headers if n.lower().rstrip() == "from"])
    early = check_author(who, not msg.mail_from, policy)
    if early is not None and early.action == "reject":
        return InboundVerdict(early, spf, evaluated=False)
    raw = msg.raw()
    dkim_results = tuple(verify_dkim(raw, resolver, settings.min_rsa_bits))
    mail_from_domain = msg.mail_from.rpartition("@")[2] if msg.mail_from else msg.helo
    dmarcs = tuple(check_dmarc(d, spf, mail_from_domain, dkim_results, resolver)
                   for d in (who.domains if who.valid else ("",)))
    dmarc = strictest(dmarcs)
    spoof = author.impersonated(who, settings.firm_domains) if policy.display_name_spoof != "off" else ""
    forwarder, arc = msg.trusted_forwarder, ARCResult("none")
    if not forwarder and settings.trusted_arc_authserv_ids and (
            dmarc.result == "fail" or (spoof and policy.display_name_spoof == "reject")):
        arc = check_arc(raw, resolver, settings.trusted_arc_authserv_ids)
        forwarder = bool(arc.trusted)
    decision = decide(spf, dmarc, policy if policy.trusted_forwarder == forwarder
                      else replace(policy, trusted_forwarder=forwarder), spoof)
    if early is not None:  # invalid_from = "tag": the verdict says so
        decision = replace(decision, action="tag" if decision.action == "accept" else decision.action,
                           reason=f"{early.reason}; {decision.reason}")
    if decision.action in ("reject", "tempfail"):
        return InboundVerdict(decision, spf, dkim_results, dmarcs, arc, spoof)
    value = authentication_results(settings.authserv_id, spf, dkim_results, dmarcs, msg.client_ip,
                                   impersonated=spoof)
    return InboundVerdict(decision, spf, dkim_results, dmarcs, arc, spoof, value,
                          tuple(strip_our_results(msg.headers, settings.authserv_id)))
