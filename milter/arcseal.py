"""ARC sealing (RFC 8617) of inbound mail this server forwards off-site.

A message we accepted for one of the firm's addresses and that Postfix's
virtual alias expansion sends to a mailbox outside the firm's domains reaches
the next hop from our IP: SPF for the original sender fails there (SRS fixes
the envelope, not DMARC alignment), and a DKIM signature broken on the way
leaves nothing. An ARC set records our verdict under the firm's key, so a next
hop that trusts us can accept it.

Where: in the milter, at end of message, because only there is our verdict
known and the message still open for headers. The milter runs in smtpd,
before cleanup(8) expands virtual aliases, so it sees the recipients as the
client gave them; :class:`AliasMaps` asks Postfix's own ``virtual_alias_maps``
(``postmap -q``, any table type) where each would go, recursively as cleanup
does. A message is sealed when some recipient expands to an address outside
``general.sending_domains`` and ``general.catchall_domains`` (one seal per
message: the copies for the firm's own mailboxes carry it too, harmlessly).
Forwarding that happens after the queue (local(8): ``alias_maps``,
``.forward``) is out of the milter's sight and is not sealed.

What: ``arc=`` (our check of the chain the message arrived with, dkimpy's
``arc_verify``) is added to our ``Authentication-Results``;
:mod:`~mattermail.milter.arc_sign` copies that into
``ARC-Authentication-Results: i=N`` and signs ``ARC-Message-Signature`` and
``ARC-Seal`` (``cv=none`` for the first set, else the chain's result) in
OpenSSL with the RSA key of the sealing domain from the DKIM key table (ARC is
rsa-sha256 only; the Ed25519 key of dual signing cannot seal).

Failure: sealing never costs a message. No key, a table Postfix cannot read, a
DNS timeout while checking the prior chain: the message goes on unsealed (as
before this feature) and the log says ``arc=unsealed reason=...`` at error
level. A tempfail would hold forwarded mail at the sender's for a problem only
the admin can fix, and mail without a seal is what every forwarder sent before
ARC existed; the verdict itself still decides accept or reject as always.
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import dkim
import dns.exception

from mattermail import dkimkeys
from mattermail.dns import Resolver, TempError
from mattermail.milter import arc_sign

log = logging.getLogger("mattermail.milter")

MAX_DEPTH = 20  # virtual alias nesting, as Postfix's virtual_alias_recursion_limit (1000 is its default; 20 is plenty)
MAX_ADDRESSES = 1000  # as virtual_alias_expansion_limit
POSTMAP_TIMEOUT = 10.0
CACHE_SECONDS = 60.0  # an alias change reaches the sealing decision within this
CACHE_ENTRIES = 10000
_SPLIT = re.compile(r"[\s,]+")

Lookup = Callable[[Sequence[str]], dict[str, list[str]]]


@dataclass(frozen=True)
class Seal:
    """What the milter applies: our Authentication-Results value, and the ARC set to prepend.

    ``headers`` are (name, value) in the order to add each at the top
    (``addheader(name, value, 0)``): ARC-Authentication-Results first, so the
    ARC-Seal ends up topmost. Values use bare LF folds, as milters pass them.
    """

    ar_value: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    note: str = ""


# --- where the recipients go ---------------------------------------------------------

def _domain(address: str) -> str:
    return address.rpartition("@")[2].strip().rstrip(".").lower()


def _candidates(address: str, delimiters: str) -> list[str]:
    """virtual(5) lookup keys for ``address``, in order: the address, without its extension, ``@domain``."""
    local, at, domain = address.rpartition("@")
    if not at:
        return [address]
    keys = [address]
    if delimiters:
        cut = min((i for i in (local.find(d) for d in delimiters) if i > 0), default=-1)
        if cut > 0:
            keys.append(f"{local[:cut]}@{domain}")
    keys.append(f"@{domain}")
    return keys


def expand(recipients: Iterable[str], lookup: Lookup, delimiters: str = "") -> dict[str, list[str]]:
    """Each recipient -> the addresses Postfix's virtual alias expansion delivers it to.

    As cleanup(8) does: the first key that matches wins (full address,
    address without ``recipient_delimiter`` extension, ``@domain``); results
    are expanded again, except an address that maps to itself; an address
    nothing matches is delivered as it is. Bounded by :data:`MAX_DEPTH` and
    :data:`MAX_ADDRESSES` (past them, what is left counts as delivered as is).
    """
    rcpts = list(dict.fromkeys(recipients))
    final: dict[str, list[str]] = {r: [] for r in rcpts}
    level = {r: [_norm(r)] for r in rcpts}
    seen: dict[str, set[str]] = {r: set() for r in rcpts}
    for depth in range(MAX_DEPTH + 1):
        for r in rcpts:
            level[r] = [a for a in dict.fromkeys(level[r]) if a not in seen[r]]
            seen[r].update(level[r])
        if not any(level.values()):
            break
        if depth == MAX_DEPTH:
            for r in rcpts:
                final[r].extend(level[r])
            break
        # one lookup per level for all recipients: each is a postmap run
        keys = list(dict.fromkeys(k for r in rcpts for a in level[r] for k in _candidates(a, delimiters)))
        found = lookup(keys)
        for r in rcpts:
            nxt: list[str] = []
            for a in level[r]:
                cands = _candidates(a, delimiters)
                targets = next((found[k] for k in cands if k in found), None)
                if targets is None:
                    final[r].append(a)
                    continue
                for t in map(_norm, targets):
                    if t == a:
                        final[r].append(t)
                    elif t:
                        nxt.append(t)
            if len(final[r]) + len(nxt) > MAX_ADDRESSES:
                final[r].extend(nxt)
                nxt = []
            level[r] = nxt
    return {r: list(dict.fromkeys(final[r])) for r in rcpts}


def _norm(address: str) -> str:
    return address.strip().strip("<>").lower()


def forwarded(recipients: Iterable[str], firm_domains: Iterable[str], lookup: Lookup,
              delimiters: str = "") -> dict[str, list[str]]:
    """Recipients that alias expansion sends outside the firm's domains -> those outside addresses.

    A recipient no alias rewrites is delivered where Postfix routes its own
    domain: not a forward, whatever the domain.
    """
    ours = {d.strip().rstrip(".").lower() for d in firm_domains}
    result: dict[str, list[str]] = {}
    for rcpt, final in expand(recipients, lookup, delimiters).items():
        if final == [_norm(rcpt)]:
            continue
        outside = [a for a in final if _domain(a) not in ours]
        if outside:
            result[rcpt] = outside
    return result


def _tool(name: str) -> str:
    """Postfix's commands live in /usr/sbin, which a daemon's PATH may lack."""
    return shutil.which(name) or f"/usr/sbin/{name}"


class AliasMaps:
    """Postfix's ``virtual_alias_maps``, asked with ``postmap -q`` (every table type Postfix has)."""

    def __init__(self, config_dir: Path, tables: Sequence[str] | None = None, delimiters: str | None = None) -> None:
        self.config_dir = config_dir
        self._tables = list(tables) if tables is not None else None
        self._delimiters = delimiters
        self._lock = threading.Lock()
        self._cache: dict[str, tuple[float, list[str] | None]] = {}

    def _postconf(self) -> None:
        with self._lock:
            if self._tables is not None and self._delimiters is not None:
                return
            out = subprocess.run([_tool("postconf"), "-c", str(self.config_dir), "-h", "virtual_alias_maps",
                                  "recipient_delimiter"], capture_output=True, text=True, timeout=POSTMAP_TIMEOUT)
            if out.returncode != 0:
                raise RuntimeError(f"postconf -c {self.config_dir}: {out.stderr.strip()[:200]}")
            lines = out.stdout.splitlines() + ["", ""]
            if self._tables is None:
                self._tables = [t for t in _SPLIT.split(lines[0]) if t]
            if self._delimiters is None:
                self._delimiters = lines[1].strip()

    @property
    def tables(self) -> list[str]:
        self._postconf()
        return list(self._tables or [])

    @property
    def delimiters(self) -> str:
        self._postconf()
        return self._delimiters or ""

    def lookup(self, keys: Sequence[str]) -> dict[str, list[str]]:
        """The first table that has a key answers for it (Postfix's order).

        Answers (found or not) are kept for :data:`CACHE_SECONDS`: a postmap
        run costs ~10 ms, and most inbound mail goes to a few addresses.
        """
        now = time.monotonic()
        with self._lock:
            cached = {k: self._cache[k] for k in keys if k in self._cache and self._cache[k][0] > now}
        missing = [k for k in keys if k not in cached]
        fresh = self._postmap(missing) if missing else {}
        with self._lock:
            if len(self._cache) > CACHE_ENTRIES:
                self._cache.clear()
            for k in missing:
                self._cache[k] = (now + CACHE_SECONDS, fresh.get(k))
        found = {k: v for k, (_, v) in cached.items() if v is not None}
        found.update(fresh)
        return found

    def _postmap(self, keys: Sequence[str]) -> dict[str, list[str]]:
        found: dict[str, list[str]] = {}
        for table in self.tables:
            rest = [k for k in keys if k not in found]
            if not rest:
                break
            out = subprocess.run([_tool("postmap"), "-c", str(self.config_dir), "-q", "-", table],
                                 input="\n".join(rest) + "\n", capture_output=True, text=True,
                                 timeout=POSTMAP_TIMEOUT)
            if out.returncode not in (0, 1):  # 1: none of the keys found
                raise RuntimeError(f"postmap -q {table}: {out.stderr.strip()[:200]}")
            for line in out.stdout.splitlines():
                key, _, value = line.partition("\t")
                if key in rest and key not in found:
                    found[key] = [a for a in _SPLIT.split(value) if a]
        return found


# --- the chain the message arrived with --------------------------------------------------

class _DNSTemp(Exception):
    pass


def chain_result(raw: bytes, resolver: Resolver) -> str:
    """``none`` (no ARC set), ``pass``, ``fail``, or ``temperror`` (a DNS timeout: do not judge)."""
    end = re.search(rb"\r?\n\r?\n", raw)
    if b"arc-seal" not in (raw[:end.start()] if end else raw).lower():
        return "none"

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        try:
            records = resolver.txt(name.decode("ascii").rstrip("."))
        except TempError as e:
            raise _DNSTemp(str(e)) from e
        except (UnicodeError, ValueError, dns.exception.DNSException):
            return None
        return records[0].encode("utf-8", "surrogateescape") if records else None

    try:
        cv, _, _ = dkim.arc_verify(raw, dnsfunc=dnsfunc)
    except _DNSTemp:
        return "temperror"
    except Exception:  # noqa: BLE001 - dkimpy tripping on a malformed chain: a failed chain
        return "fail"
    return {dkim.CV_Pass: "pass", dkim.CV_None: "none"}.get(cv, "fail")


# --- sealing ----------------------------------------------------------------------------


def sealing_key(table: dict[str, list[dkimkeys.SigningKey]], domain: str) -> dkimkeys.SigningKey | None:
    return next((k for k in table.get(domain.lower(), ()) if k.algorithm == "rsa-sha256"), None)


def message_for_sealing(ar_value: str, headers: Sequence[tuple[str, str]], forged: Iterable[int],
                        body: bytes) -> bytes:
    """The message as it will leave: our A-R on top, the forged ones (1-based among A-R) gone."""
    drop = set(forged)
    lines = [f"Authentication-Results: {ar_value}"]
    n = 0
    for name, value in headers:
        if name.strip().lower() == "authentication-results":
            n += 1
            if n in drop:
                continue
        lines.append(f"{name}:{value}")
    head = "\r\n".join(line.replace("\r\n", "\n").replace("\n", "\r\n") for line in lines)
    return head.encode("utf-8", "surrogateescape") + b"\r\n\r\n" + body


@dataclass
class Sealer:
    """The milter's sealing step (one per runtime): decide, check the prior chain, seal."""

    authserv_id: str
    domain: str
    firm_domains: tuple[str, ...]
    aliases: AliasMaps
    keys: Callable[[], dict[str, list[dkimkeys.SigningKey]]]
    resolver: Resolver
    enabled: bool = True

    def seal(self, recipients: Sequence[str], headers: Sequence[tuple[str, str]], forged: Iterable[int],
             ar_value: str, raw: bytes, body_offset: int, logger: logging.LoggerAdapter | None = None) -> Seal:
        """Our A-R value (with ``arc=`` when sealing) and the ARC set; never raises.

        ``raw`` is the message as received (header block and body, CRLF), the
        body starting at ``body_offset``.
        """
        if not self.enabled:
            return Seal(ar_value)
        seal = self._seal(recipients, headers, forged, ar_value, raw, body_offset)
        if seal.note.startswith("arc=unsealed"):
            (logger or log).error("%s (the message goes on without an ARC set)", seal.note)
        return seal

    def _seal(self, recipients: Sequence[str], headers: Sequence[tuple[str, str]], forged: Iterable[int],
              ar_value: str, raw: bytes, body_offset: int) -> Seal:
        try:
            away = forwarded(recipients, self.firm_domains, self.aliases.lookup, self.aliases.delimiters)
        except Exception as e:  # noqa: BLE001 - never lose mail over a seal
            return self._unsealed(ar_value, f"virtual alias lookup failed: {e}")
        if not away:
            return Seal(ar_value)
        to = ",".join(sorted({a for targets in away.values() for a in targets}))[:200]
        if not self.domain:
            return self._unsealed(ar_value, "no sealing domain (inbound.arc_domain, general.sending_domains)", to)
        key = sealing_key(self.keys(), self.domain)
        if key is None:
            return self._unsealed(ar_value, f"no RSA DKIM key for {self.domain}", to)
        cv = chain_result(raw, self.resolver)
        if cv == "temperror":
            return self._unsealed(ar_value, "DNS timeout checking the ARC chain it arrived with", to)
        value = f"{ar_value};\n\tarc={cv}"
        try:
            started = time.perf_counter()
            arc = arc_sign.arc_set(headers, raw[body_offset:], value, cv, key)
            ms = (time.perf_counter() - started) * 1000
        except Exception as e:  # noqa: BLE001 - a chain we cannot extend, a key OpenSSL refuses
            return self._unsealed(value, f"sealing failed: {type(e).__name__}: {str(e)[:120]}", to)
        instance = re.search(r"\bi=(\d+)", arc[0][1])
        return Seal(value, arc, f"arc=sealed i={instance.group(1) if instance else '?'} cv={cv} "
                                f"d={key.domain} s={key.selector} forwarded_to=<{to}> seal_ms={ms:.1f}")

    @staticmethod
    def _unsealed(ar_value: str, reason: str, to: str = "") -> Seal:
        return Seal(ar_value, [], f"arc=unsealed reason={reason}" + (f" forwarded_to=<{to}>" if to else ""))
