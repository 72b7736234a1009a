"""The one DNS resolver every consumer uses (pyspf, dkimpy, DMARC, dns check).

Nameservers, port, timeout and cache size come from the ``[dns]`` config section; search
domains are never applied (a name is always absolute). Lookups return plain
Python values and raise :class:`TempError` for timeouts and SERVFAIL, so a
caller can report ``temperror`` and never mistake a failed lookup for "no
record".
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import dns.exception
import dns.message
import dns.name
import dns.query
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.resolver

from mattermail.config import DNS as DNSConfig


class TempError(Exception):
    """Timeout, SERVFAIL or no reachable server: try again later."""


@lru_cache(maxsize=4096)
def _qname(name: str) -> dns.name.Name:
    """The absolute name for ``name`` (parsed once: SPF, DKIM and DMARC ask for the same names again)."""
    return dns.name.from_text(name.rstrip(".") + ".")


_IN, _ANY, _NXDOMAIN = dns.rdataclass.IN, dns.rdatatype.ANY, dns.rcode.NXDOMAIN
_rdtype = lru_cache(maxsize=64)(dns.rdatatype.from_text)


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
        # One nameserver and no cache (cache_size = 0): each query is one UDP exchange (_exchange).
        ns = self.cfg.nameservers
        self._direct = (ns[0], self.cfg.port) if len(ns) == 1 and r.cache is None else None

    def query(self, name: str, rdtype: str) -> list[dns.rdata.Rdata]:
        """Answer records for ``name``; [] for NXDOMAIN or no data; TempError otherwise."""
        qname = _qname(name)
        cache = self._r.cache
        if cache is not None:  # what resolve() answers from its cache, without its per-query machinery
            answer = cache.get((qname, _rdtype(rdtype), _IN))
            if answer is not None:
                return list(answer)  # [] for a cached "no data"
            negative = cache.get((qname, _ANY, _IN))
            if negative is not None and negative.response.rcode() == _NXDOMAIN:
                return []
        if self._direct is not None:
            answer = self._exchange(qname, dns.rdatatype.from_text(rdtype))
            if answer is not None:
                return answer
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

    def _exchange(self, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> list[dns.rdata.Rdata] | None:
        """What ``resolve()`` answers for one nameserver without a cache, minus its per-query
        machinery (a third of its CPU): one ``dns.query.udp`` exchange (the first reply that
        ``is_response`` to the query), read by dnspython's own ``Answer`` (CNAME chains, checks).

        None: leave it to ``resolve()`` (a truncated reply, an rcode other than NOERROR and
        NXDOMAIN, a reply Answer refuses, a malformed reply, a socket error such as a refused port).
        A timeout is TempError at once: with one nameserver and lifetime = timeout, resolve() would end so.
        """
        assert self._direct is not None
        query = dns.message.make_query(qname, rdtype)
        try:
            response = dns.query.udp(query, self._direct[0], timeout=self.cfg.timeout, port=self._direct[1],
                                     ignore_unexpected=True, raise_on_truncation=True)
        except dns.exception.Timeout:
            raise TempError(f"{dns.rdatatype.to_text(rdtype)} {qname}: "
                            f"the DNS operation timed out after {self.cfg.timeout} seconds") from None
        except (OSError, dns.exception.DNSException):  # truncated, malformed, refused: resolve() decides
            return None
        rcode = response.rcode()
        if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            return None
        try:
            if rcode == dns.rcode.NXDOMAIN:
                dns.resolver.Answer(qname, dns.rdatatype.ANY, dns.rdataclass.IN, response)  # as resolve() checks it
                return []
            return list(dns.resolver.Answer(qname, rdtype, dns.rdataclass.IN, response, self._direct[0], self._direct[1]))
        except Exception:  # noqa: BLE001 - resolve() drops such a server and reports why
            return None
