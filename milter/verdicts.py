"""The results of inbound authentication, one type per method: SPF, DKIM, DMARC, ARC.

Plain frozen values with no behaviour, imported by the checks that produce
them (:mod:`~mattermail.milter.spf_check`, :mod:`~mattermail.milter.dkim_verify`,
:mod:`~mattermail.milter.dmarc_check`, :mod:`~mattermail.milter.arc_check`), by
the Authentication-Results writer (:mod:`~mattermail.milter.authresults`) and
by the decision core (:mod:`~mattermail.milter.inbound`).  This module imports
none of them, so no check depends on another's module for its types.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["ARCResult", "DKIMResult", "DMARCResult", "Policy", "SPFResult"]

Policy = Literal["none", "quarantine", "reject"]


@dataclass(frozen=True)
class SPFResult:
    """RFC 7208 result for one identity (``mailfrom``, or ``helo`` for the null sender)."""

    result: Literal["pass", "fail", "softfail", "neutral", "none", "temperror", "permerror"]
    identity: Literal["mailfrom", "helo"]
    domain: str
    explanation: str


@dataclass(frozen=True)
class DKIMResult:
    """The verdict on one ``DKIM-Signature`` (``d=``, ``s=``, ``a=``), with a reason unless it passed."""

    result: Literal["pass", "fail", "neutral", "temperror", "permerror", "policy"]
    domain: str
    selector: str
    reason: str
    algorithm: str


@dataclass(frozen=True)
class DMARCResult:
    """The DMARC verdict for one author domain.

    ``policy`` is the published policy that applies to the From domain (``sp=``
    for a subdomain when the record came from the organizational domain), ""
    when there is no usable record; ``disposition`` is what the receiver should
    do after ``pct`` sampling ("none" unless ``result`` is "fail").
    """

    result: Literal["pass", "fail", "none", "temperror", "permerror"]
    from_domain: str
    org_domain: str
    policy: Literal["none", "quarantine", "reject", ""]
    disposition: Policy
    aligned_spf: bool
    aligned_dkim: bool
    reason: str


@dataclass(frozen=True)
class ARCResult:
    """An ARC chain as far as the decision needs it (RFC 8617).

    ``result``: "none" when not evaluated (no chain, or no forwarder is
    trusted, or nothing needed it); "pass" when the chain validated; "fail"
    otherwise.  ``trusted``: the authserv-id of the newest set when the chain
    passed and that id is one the admin trusts, else "".
    """

    result: Literal["pass", "fail", "none"]
    trusted: str = ""
