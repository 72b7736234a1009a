"""Invisible capture: the signed envelope reference carried by the capture address.

The milter records the complete envelope (sender, every recipient including
Bcc'd ones, login, queue id) in the store under a random reference and adds
one envelope recipient, ``capture+<ref>.<mac>@<capture domain>``, with
``NOTIFY=NEVER``. Nothing is added to the message itself, so no recipient can
learn who else was on the envelope. The router takes the reference from the
address it is delivered to, checks the HMAC (so nobody outside can make the
router file a message against someone else's envelope by mailing a guessed
address), and reads the envelope. See docs/capture.md.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mattermail import secretfile

REF_BYTES = 6  # 12 hex characters: unique enough per store, short enough for a local part
MAC_CHARS = 16


class CaptureError(Exception):
    """Capture cannot be done (no secret, store not writable, ...)."""


def load_secret(path: Path) -> bytes:
    """The capture HMAC secret (see mattermail.secretfile); CaptureError when it cannot be used."""
    try:
        return secretfile.load(path, "capture secret")
    except secretfile.SecretError as e:
        raise CaptureError(str(e)) from None


def new_ref() -> str:
    return secrets.token_hex(REF_BYTES)


def _mac(secret: bytes, ref: str) -> str:
    return hmac.new(secret, ref.encode("ascii"), hashlib.sha256).hexdigest()[:MAC_CHARS]


def capture_address(base: str, ref: str, secret: bytes) -> str:
    """``capture@matters.firm`` + ref → ``capture+<ref>.<mac>@matters.firm``."""
    local, _, domain = base.rpartition("@")
    return f"{local}+{ref}.{_mac(secret, ref)}@{domain}"


@dataclass(frozen=True)
class ParsedCapture:
    ref: str | None  # None: the bare capture address (e.g. from a Postfix BCC map), no envelope
    valid: bool


def parse_capture_address(address: str, base: str, secret: bytes) -> ParsedCapture | None:
    """None when ``address`` is not the capture address; else its reference and whether the MAC verifies."""
    local, _, domain = address.strip("<>").rpartition("@")
    base_local, _, base_domain = base.rpartition("@")
    if domain.lower() != base_domain.lower():
        return None
    name, plus, ext = local.partition("+")
    if name.lower() != base_local.lower():
        return None
    if not plus:
        return ParsedCapture(None, True)
    m = re.fullmatch(r"([0-9a-f]{%d})\.([0-9a-f]{%d})" % (REF_BYTES * 2, MAC_CHARS), ext)
    if not m:
        return ParsedCapture(None, False)
    return ParsedCapture(m.group(1), hmac.compare_digest(_mac(secret, m.group(1)), m.group(2)))


def is_capture_address(address: str, base: str) -> bool:
    local, _, domain = address.strip("<>").rpartition("@")
    base_local, _, base_domain = base.rpartition("@")
    return domain.lower() == base_domain.lower() and local.partition("+")[0].lower() == base_local.lower()


def _unquote(local: str) -> str:
    """A local part in Postfix's internal form: quotes removed, backslash escapes resolved."""
    if '"' not in local and "\\" not in local:
        return local
    out, i = [], 0
    while i < len(local):
        c = local[i]
        if c == "\\" and i + 1 < len(local):
            out.append(local[i + 1])
            i += 2
            continue
        if c != '"':
            out.append(c)
        i += 1
    return "".join(out)


def _is_base(local: str, domain: str, base_local: str, base_domain: str) -> bool:
    local = local.lower()
    return (domain.lower().rstrip(".") == base_domain
            and (local == base_local or local.startswith(base_local + "+")))


def names_capture_address(rcpt: str, base: str) -> bool:
    """Whether an SMTP ``RCPT TO`` address would reach the capture address ``base``.

    Case-insensitive, with a quoted or escaped local part (``"Capture"@…``,
    ``capture\\+x@…``), a trailing dot, a source route (``@a,@b:capture@…``), and
    the old routing forms Postfix still rewrites (``capture%matters.firm@host``,
    ``matters.firm!capture``): any reading that names it counts. The milter
    refuses these at RCPT; only its own ``addrcpt`` may add the capture address.
    """
    base_local, _, base_domain = base.lower().rpartition("@")
    base_domain = base_domain.rstrip(".")
    addr = rcpt.strip().strip("<>").strip()
    if addr.startswith("@") and ":" in addr:  # source route
        addr = addr.partition(":")[2]
    for _ in range(8):  # bounded: each round removes one routing step
        local, at, domain = addr.rpartition("@")
        if not at:
            local, domain = addr, ""
        local = _unquote(local)
        if domain and _is_base(local, domain, base_local, base_domain):
            return True
        if "%" in local:  # percent hack: user%host@here
            addr = local[: local.rindex("%")] + "@" + local[local.rindex("%") + 1:]
        elif "!" in local:  # bang path: host!user
            host, _, user = local.partition("!")
            addr = f"{user}@{host}"
        else:
            return False
    return False


def excluded(sender: str, recipients: Iterable[str], sender_patterns: Iterable[re.Pattern[str]],
             recipient_patterns: Iterable[re.Pattern[str]]) -> str | None:
    """Why this message must not be captured, or None.

    A sender that matches, or any recipient that matches, excludes the whole
    message: an exclusion is the admin saying "conversations with this address
    are not filed", so a copy to others does not bring it back in.
    """
    for p in sender_patterns:
        if p.search(sender):
            return f"sender <{sender}> matches exclusion {p.pattern!r}"
    for r in recipients:
        for p in recipient_patterns:
            if p.search(r):
                return f"recipient <{r}> matches exclusion {p.pattern!r}"
    return None
