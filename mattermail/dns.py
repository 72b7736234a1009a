"""The one DNS resolver every consumer uses (pyspf, dkimpy, DMARC, dns check).

Nameservers, port, timeout and cache size come from the ``[dns]`` config section; search
domains are never applied (a name is always absolute). Lookups return plain
Python values and raise :class:`TempError` for timeouts and SERVFAIL, so a
caller can report ``temperror`` and never mistake a failed lookup for "no
record".
"""

from __future__ import annotations

from dataclasses import dataclass

import dns.exception
import dns.name
import dns.rdatatype
import dns.resolver

from mattermail.config import DNS as DNSConfig


class TempError(Exception):
    """Timeout, SERVFAIL or no reachable server: try again later."""


@dataclass
class Resolver:
    cfg: DNSConfig

    def __post_init__(self) -> None:
        if self.cfg.nameservers:
            r = dns.resolver.Resolver(configure=False)
            r.nameservers = list(self.cfg.nameservers)
        else:
            r = dns.resolver.Resolver(configure=True)
        r.port = self.cfg.port
        r.timeout = self.cfg.timeout
        r.lifetime = self.cfg.timeout
        r.search = []
        r.use_search_by_default = False
        # A TTL-respecting in-process cache: SPF, DKIM and DMARC for a sender repeat the same
        # lookups message after message (bench/inbound: half the milter's time was DNS).
        r.cache = dns.resolver.LRUCache(self.cfg.cache_size) if self.cfg.cache_size else None
        self._r = r

    def query(self, name: str, rdtype: str) -> list[dns.rdata.Rdata]:
        """Answer records for ``name``; [] for NXDOMAIN or no data; TempError otherwise."""
        qname = dns.name.from_text(name.rstrip(".") + ".")
        try:
            answer = self._r.resolve(qname, rdtype, search=False, raise_on_no_answer=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except (dns.exception.Timeout, dns.resolver.NoNameservers, dns.resolver.LifetimeTimeout) as e:
            raise TempError(f"{rdtype} {name}: {e}") from e
        return list(answer)

    def txt(self, name: str) -> list[str]:
        """TXT records for ``name``, each record's strings joined."""
        return [b"".join(r.strings).decode("utf-8", "replace") for r in self.query(name, "TXT")]
