"""The one DNS resolver every consumer uses (pyspf, dkimpy, DMARC, dns check).

Nameservers, port, timeout and cache size come from the ``[dns]`` config section; search
domains are never applied (a name is always absolute). Lookups return plain
Python values and raise :class:`TempError` for timeouts and SERVFAIL, so a
caller can report ``temperror`` and never mistake a failed lookup for "no
record".
"""

from __future__ import annotations

import contextvars
import socket
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import dns.exception
import dns.inet
import dns.message
import dns.name
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
#: At most this many prefetched queries wait for their readers at once (one socket each).
MAX_PENDING = 256
_rdtype = lru_cache(maxsize=64)(dns.rdatatype.from_text)

#: Inside :meth:`Resolver.derived`: the earliest expiration of the answers used so far (0: one
#: could not be cached, so neither can anything computed from it).
_used: contextvars.ContextVar[list[float] | None] = contextvars.ContextVar("mattermail_dns_used", default=None)
DERIVED_ENTRIES = 4096


def _note(expiration: float) -> None:
    used = _used.get()
    if used is not None and expiration < used[0]:
        used[0] = expiration


@dataclass(eq=False)
class _Front:
    """An answer of dnspython's cache (Resolver.query), with its TXT strings once decoded."""

    expiration: float
    records: tuple[dns.rdata.Rdata, ...]
    text: tuple[str, ...] | None = None


@dataclass(eq=False)
class Pending:
    """A query :meth:`Resolver.prefetch` sent, whose reply waits in its socket for :meth:`Resolver.query`."""

    key: tuple[dns.name.Name, dns.rdatatype.RdataType]
    sock: socket.socket
    query: dns.message.Message


@dataclass
class Resolver:
    cfg: DNSConfig
    _front = None  # set in __post_init__ (a subclass that skips it, such as a test's stub, has none)

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
        # One nameserver: queries can be sent ahead (prefetch); without a cache (cache_size = 0),
        # each query is one UDP exchange (_exchange).
        ns = self.cfg.nameservers
        self._server = (ns[0], self.cfg.port) if len(ns) == 1 else None
        self._direct = self._server if r.cache is None else None
        self._family = dns.inet.af_for_address(ns[0]) if self._server else socket.AF_INET
        self._pending: dict[tuple[dns.name.Name, dns.rdatatype.RdataType], Pending] = {}
        self._pending_lock = threading.Lock()
        # Results computed from cached answers only (an SPF verdict): kept until the first of
        # those answers expires, so they are exactly what recomputing would give. None: no cache.
        self._derived: dict[Hashable, tuple[float, Any]] | None = {} if r.cache is not None else None
        self._derived_lock = threading.Lock()
        # In front of dnspython's cache: what it answered for (name as asked, type), until the same
        # expiration, without its Name objects, hashing and lock per question; TXT strings decoded once.
        self._front: dict[tuple[str, str], _Front] | None = {} if r.cache is not None else None

    def derived(self, key: Hashable, compute: Callable[[], Any], keep: Callable[[Any], bool],
                general: Hashable | None = None, applies_generally: Callable[[], bool] | None = None) -> Any:
        """``compute()``, or its earlier result for ``key`` while every DNS answer it used is
        still in the cache (their TTLs). ``keep(result)`` False: not kept (a temporary error).
        ``general``: a wider key (the same question for a whole class of keys), looked up first;
        a result is kept under it instead when ``applies_generally()``, asked after computing, says
        it holds for the whole class. Without a cache (``cache_size = 0``) this is just ``compute()``."""
        if self._derived is None:
            return compute()
        now = time.time()
        for k in (general, key) if general is not None else (key,):
            hit = self._derived.get(k)
            if hit is not None and hit[0] > now:
                return hit[1]
        used = [float("inf")]
        token = _used.set(used)
        try:
            result = compute()
        finally:
            _used.reset(token)
        if keep(result) and used[0] > time.time() and used[0] != float("inf"):
            if general is not None and applies_generally is not None and applies_generally():
                key = general
            with self._derived_lock:
                if len(self._derived) >= DERIVED_ENTRIES:
                    self._derived.clear()
                self._derived[key] = (used[0], result)
        return result

    def _fresh(self, name: str, rdtype: str, note: bool = True) -> _Front | None:
        """The front cache's entry for this question while it has not expired (its expiration noted
        for :meth:`derived` unless ``note`` is False)."""
        front = self._front
        if front is None:
            return None
        hit = front.get((name, rdtype))
        if hit is None or hit.expiration <= time.time():
            return None
        if note:
            _note(hit.expiration)
        return hit

    def _keep(self, name: str, rdtype: str, expiration: float, records: Iterable[dns.rdata.Rdata]) -> None:
        front = self._front
        assert front is not None
        if len(front) >= self.cfg.cache_size:  # as many questions as dnspython's cache keeps
            front.clear()
        front[name, rdtype] = _Front(expiration, tuple(records))

    def query(self, name: str, rdtype: str) -> list[dns.rdata.Rdata]:
        """Answer records for ``name``; [] for NXDOMAIN or no data; TempError otherwise."""
        hit = self._fresh(name, rdtype)
        if hit is not None:
            return list(hit.records)
        qname = _qname(name)
        cache = self._r.cache
        if cache is not None:  # what resolve() answers from its cache, without its per-query machinery
            answer = cache.get((qname, _rdtype(rdtype), _IN))
            if answer is not None:
                _note(answer.expiration)
                self._keep(name, rdtype, answer.expiration, answer)
                return list(answer)  # [] for a cached "no data"
            negative = cache.get((qname, _ANY, _IN))
            if negative is not None and negative.response.rcode() == _NXDOMAIN:
                _note(negative.expiration)
                self._keep(name, rdtype, negative.expiration, ())
                return []
        if self._pending:
            with self._pending_lock:
                sent = self._pending.pop((qname, _rdtype(rdtype)), None)
            if sent is not None:
                answer = self._collect(sent)
                if answer is not None:
                    return answer
        if self._direct is not None:
            _note(0.0)
            answer = self._exchange(qname, dns.rdatatype.from_text(rdtype))
            if answer is not None:
                return answer
        try:
            answer = self._r.resolve(qname, rdtype, search=False, raise_on_no_answer=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            _note(0.0)  # not kept this time; the next lookup of it is a cache hit, with its expiration
            return []
        except (dns.exception.Timeout, dns.resolver.NoNameservers, dns.resolver.LifetimeTimeout) as e:
            _note(0.0)
            raise TempError(f"{rdtype} {name}: {e}") from e
        _note(answer.expiration if cache is not None else 0.0)
        return list(answer)

    def txt(self, name: str) -> list[str]:
        """TXT records for ``name``, each record's strings joined."""
        hit = self._fresh(name, "TXT")
        if hit is None:
            return [b"".join(r.strings).decode("utf-8", "replace") for r in self.query(name, "TXT")]
        if hit.text is None:
            hit.text = tuple(b"".join(r.strings).decode("utf-8", "replace") for r in hit.records)
        return list(hit.text)

    def prefetch(self, lookups: Iterable[tuple[str, str]]) -> list[Pending]:
        """Send the queries for ``lookups`` ((name, type) pairs) now and return without waiting:
        a later :meth:`query` for one of them reads the reply that has come in meanwhile, so the
        wait overlaps the rest of the SMTP transaction instead of following it.

        Only with one nameserver; a question already cached, already sent by someone else and not
        yet read, or not a valid DNS name is skipped, as is everything once ``MAX_PENDING``
        queries wait. Queries are sent as :meth:`_exchange` sends them; a reply that is anything
        but a plain answer, or a socket error, leaves the question to the usual path. The caller
        gives the returned list to :meth:`release` when it is done (read or not).
        """
        if self._server is None:
            return []
        cache = self._r.cache
        sent: list[Pending] = []
        for name, rdtype in lookups:
            if self._fresh(name, rdtype, False) is not None:
                continue
            try:
                key = (_qname(name), _rdtype(rdtype))
            except (dns.exception.DNSException, ValueError, UnicodeError):
                continue
            if key in self._pending:
                continue
            if cache is not None:
                answer = cache.get((key[0], key[1], _IN))
                if answer is not None:  # the next prefetch of it stops at the front cache
                    self._keep(name, rdtype, answer.expiration, answer)
                    continue
                if cache.get((key[0], _ANY, _IN)) is not None:
                    continue
            query = dns.message.make_query(key[0], key[1])
            try:
                sock = self._send(query)
            except OSError:
                continue
            pending = Pending(key, sock, query)
            with self._pending_lock:
                if key in self._pending or len(self._pending) >= MAX_PENDING:
                    sock.close()
                    continue
                self._pending[key] = pending
            sent.append(pending)
        return sent

    def release(self, sent: Iterable[Pending]) -> None:
        """Close the queries from :meth:`prefetch` that no :meth:`query` has read."""
        for pending in sent:
            with self._pending_lock:
                if self._pending.get(pending.key) is pending:
                    del self._pending[pending.key]
            pending.sock.close()

    def _collect(self, sent: Pending) -> list[dns.rdata.Rdata] | None:
        """The answer to a query sent (by :meth:`prefetch` or :meth:`_exchange`), kept in the cache if
        any, as :meth:`query` returns it; None: leave it to the usual path (see :meth:`_answer`).
        Waits at most the timeout from now."""
        qname, rdtype = sent.key
        try:
            with sent.sock:
                sent.sock.settimeout(self.cfg.timeout)
                response = self._receive(sent.sock, sent.query, time.monotonic() + self.cfg.timeout)
        except TimeoutError:
            _note(0.0)
            raise TempError(f"{dns.rdatatype.to_text(rdtype)} {qname}: "
                            f"the DNS operation timed out after {self.cfg.timeout} seconds") from None
        except (OSError, dns.exception.DNSException):
            return None
        return self._answer(qname, rdtype, response)

    def _exchange(self, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType) -> list[dns.rdata.Rdata] | None:
        """What ``resolve()`` answers for one nameserver without a cache, minus its per-query
        machinery (a third of its CPU): one UDP exchange (:meth:`_send`, then :meth:`_collect` as
        for a prefetched query), the reply read by dnspython's own ``Answer`` (CNAME chains, checks).

        None: leave it to ``resolve()`` (a truncated reply, an rcode other than NOERROR and
        NXDOMAIN, a reply Answer refuses, a malformed reply, a socket error such as a refused port).
        A timeout is TempError at once: with one nameserver and lifetime = timeout, resolve() would end so.
        """
        assert self._direct is not None
        query = dns.message.make_query(qname, rdtype)
        try:
            sock = self._send(query)
        except OSError:
            return None
        return self._collect(Pending((qname, rdtype), sock, query))

    def _answer(self, qname: dns.name.Name, rdtype: dns.rdatatype.RdataType,
                response: dns.message.Message) -> list[dns.rdata.Rdata] | None:
        """The records of a NOERROR or NXDOMAIN ``response`` as ``resolve()`` reads them, kept in the
        cache as it keeps them (NXDOMAIN under type ANY); None for anything else, or a reply Answer refuses."""
        assert self._server is not None
        rcode = response.rcode()
        if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
            return None
        cache = self._r.cache
        try:
            if rcode == dns.rcode.NXDOMAIN:
                answer = dns.resolver.Answer(qname, _ANY, _IN, response)  # as resolve() checks it
                if cache is not None:
                    cache.put((qname, _ANY, _IN), answer)
                _note(0.0)
                return []
            answer = dns.resolver.Answer(qname, rdtype, _IN, response, self._server[0], self._server[1])
        except Exception:  # noqa: BLE001 - resolve() drops such a server and reports why
            return None
        if cache is not None:
            cache.put((qname, rdtype, _IN), answer)
        _note(answer.expiration if cache is not None else 0.0)
        return list(answer)

    def _send(self, query: dns.message.Message) -> socket.socket:
        """A fresh UDP socket (a random source port per query) connected to the nameserver, ``query``
        sent on it. Connected, so the kernel drops datagrams from any other address (what
        ``dns.query.udp``'s ignore_unexpected filters); :meth:`_receive` waits on it with the socket's own
        timeout, where dns.query creates and closes an epoll selector for each wait, twice per query
        (half of the exchange's system calls, each a release of the GIL other sessions wait for)."""
        assert self._server is not None
        s = socket.socket(self._family, socket.SOCK_DGRAM)
        try:
            s.settimeout(self.cfg.timeout)
            s.connect(self._server)
            s.send(query.to_wire())
        except BaseException:
            s.close()
            raise
        return s

    def _receive(self, s: socket.socket, query: dns.message.Message, deadline: float) -> dns.message.Message:
        """The first reply to ``query`` on ``s`` before ``deadline``, as ``dns.query.udp(ignore_unexpected=True,
        raise_on_truncation=True)`` returns it. A datagram that is not a reply to it (another id or
        question, or not DNS) is skipped. TimeoutError at the deadline; dns.message.Truncated for a
        truncated reply."""
        while True:
            data = s.recv(65535)
            try:
                response = dns.message.from_wire(data, raise_on_truncation=True)
            except dns.message.Truncated as e:
                if query.is_response(e.message()):
                    raise
                response = None
            except Exception:  # noqa: BLE001 - not DNS: not our reply
                response = None
            if response is not None and query.is_response(response):
                return response
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("the DNS operation timed out")
            s.settimeout(left)
