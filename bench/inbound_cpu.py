"""CPU per message of the milter's inbound decision, in-process (a micro-benchmark, seconds).

What the milter does for one inbound message between MAIL FROM and the end of
the message, minus the milter protocol: SPF for the MAIL FROM, then the
decision at end of message (From parsed, every DKIM signature verified, DMARC
per author domain, the display-name check, the decision, our
Authentication-Results value).  Messages look like bench/inbound's (~4 KB,
text/plain, CRLF, a few Received fields) from ``--domains`` sender domains,
each with an SPF record, a DMARC record (p=none) and an RSA-2048 DKIM key;
``--ed25519`` adds an Ed25519 signature as well (production's dual signing).

DNS is a local stub: answers built once from zone-like records, handed out
as dnspython rdata by :meth:`Resolver.query`, so the numbers are the milter's
own work without the DNS wire (count the queries with the ``queries/msg``
line).  With ``--dns`` the same records are served by the dev DNS server
(mattermail-devdns) in another process and our real Resolver asks it, as the
milter does with ``cache_size = 0``: the numbers then include the DNS
client's CPU (not the server's).

    .venv/bin/python -P bench/inbound_cpu.py [--messages 400] [--rounds 7] [--profile 25] [--dns]

Prints CPU ms per message for signed and unsigned mail, each the median of
``--rounds`` passes over the messages (after one warm-up pass), and, with
``--profile N``, cProfile's N most expensive functions (cumulative) for the
signed messages.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field

import dns.rdata
import dns.rdataclass
import dns.rdatatype

from mattermail import dkimkeys
from mattermail.config import DNS
from mattermail.dns import Resolver
from mattermail.milter import inbound
from mattermail.milter.dkim_sign import sign
from mattermail.milter.outbound import header_block

CLIENT = "192.0.2.25"
AUTHSERV = "mx.lawfirm.test"
FIRM = ("lawfirm.test",)
SIZE = 4 * 1024


@dataclass
class StubResolver(Resolver):
    """Our Resolver with the network replaced by a dict: (name, TYPE) -> rdata list."""

    records: dict[tuple[str, str], list] = field(default_factory=dict)
    asked: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:  # no dnspython resolver: nothing leaves the process
        pass

    def add(self, name: str, rdtype: str, text: str) -> None:
        rd = dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rdtype), text)
        self.records.setdefault((name.lower().rstrip("."), rdtype), []).append(rd)

    def query(self, name: str, rdtype: str) -> list:
        self.asked[rdtype] += 1
        return list(self.records.get((name.lower().rstrip("."), rdtype), ()))


@dataclass
class CountingResolver(Resolver):
    """The real Resolver, counting the queries it is asked."""

    asked: Counter = field(default_factory=Counter)

    def query(self, name: str, rdtype: str) -> list:
        self.asked[rdtype] += 1
        return super().query(name, rdtype)


def serve(stub: StubResolver, folder: str) -> tuple[subprocess.Popen, CountingResolver]:
    """The stub's records as a zone file, served by mattermail-devdns in another process."""
    lines = ["$ORIGIN .", "$TTL 300"] + [f"{name}. IN {rdtype} {rd.to_text()}"
                                         for (name, rdtype), rds in stub.records.items() for rd in rds]
    with open(f"{folder}/bench.zone", "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-P", "-m", "mattermail_dev.devdns", "--zones", folder,
                               "--address", "127.0.0.1", "--port", str(port)], stderr=subprocess.DEVNULL)
    resolver = CountingResolver(DNS(nameservers=("127.0.0.1",), port=port, timeout=2.0, cache_size=0))
    for _ in range(100):
        try:
            if resolver.txt(next(iter(stub.records))[0]):
                return server, resolver
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.1)
    server.kill()
    raise SystemExit("mattermail-devdns did not answer")


@dataclass
class Sample:
    mail_from: str
    helo: str
    headers: list[tuple[str, str]]
    raw: bytes


def publish(resolver: StubResolver, domains: int, ed25519: bool) -> dict[str, list[dkimkeys.SigningKey]]:
    keys: dict[str, list[dkimkeys.SigningKey]] = {}
    for i in range(domains):
        d = f"sender{i + 1:02d}.example"
        resolver.add(d, "TXT", f'"v=spf1 ip4:{CLIENT} -all"')
        resolver.add(f"_dmarc.{d}", "TXT", '"v=DMARC1; p=none"')
        rsa = dkimkeys.generate("rsa", 2048)
        keys[d] = [dkimkeys.SigningKey(d, "s1", "rsa-sha256", rsa)]
        if ed25519:
            ed = dkimkeys.generate("ed25519")
            keys[d].insert(0, dkimkeys.SigningKey(d, "s2", "ed25519-sha256", ed))
        for k in keys[d]:
            owner, record = dkimkeys.dns_record(k.private_key, k.selector, d)
            strings = [record[j:j + 255] for j in range(0, len(record), 255)]
            resolver.add(owner, "TXT", " ".join(f'"{s}"' for s in strings))
    return keys


def make(seq: int, domain: str, keys: list[dkimkeys.SigningKey] | None) -> Sample:
    """A ~4 KB message as the milter gathers it (header values with their leading space)."""
    headers = [
        ("Received", f" from mail.{domain} (mail.{domain} [{CLIENT}])\r\n\tby mx.lawfirm.test (Postfix) with ESMTPS id"
                     f" 4Q{seq:06X}\r\n\tfor <someone@lawfirm.test>; Thu, 3 Dec 2026 12:00:00 +0000 (UTC)"),
        ("Received", f" from app1.internal ([10.0.0.{seq % 250}])\r\n\tby mail.{domain} with ESMTP;"
                     " Thu, 3 Dec 2026 11:59:59 +0000"),
        ("From", f" Sender News <news@{domain}>"), ("To", " <someone@lawfirm.test>"),
        ("Subject", f" bench message {seq}"), ("Date", " Thu, 03 Dec 2026 11:59:58 +0000"),
        ("Message-ID", f" <bench.{seq}@{domain}>"), ("MIME-Version", " 1.0"),
        ("Content-Type", ' text/plain; charset="us-ascii"'), ("Content-Transfer-Encoding", " 7bit"),
    ]
    lines, n = [], 1
    while len(header_block(headers)) + sum(len(x) for x in lines) < SIZE:
        lines.append(f"{n:04d} The quick brown fox jumps over the lazy dog; pack my box with liquor.\r\n".encode())
        n += 1
    body = b"".join(lines)
    if keys:
        sigs = sign(headers[2:], body, keys, linesep="\r\n")
        headers = headers[:2] + [(name, " " + value) for name, value in sigs] + headers[2:]
    return Sample(f"news@{domain}", f"mail.{domain}", headers, header_block(headers) + body)


SETTINGS = inbound.InboundSettings(authserv_id=AUTHSERV, firm_domains=FIRM) if hasattr(inbound, "evaluate") else None


def one(s: Sample, resolver: Resolver) -> object:
    """What app.py does for one inbound message (envfrom's SPF, then the end of message)."""
    spf = inbound.check_spf(resolver, CLIENT, s.mail_from, s.helo, 20.0)
    if hasattr(inbound, "evaluate"):
        msg = inbound.InboundMessage(client_ip=CLIENT, helo=s.helo, mail_from=s.mail_from, headers=s.headers,
                                     raw=lambda: s.raw)
        return inbound.evaluate(msg, spf, SETTINGS, resolver)
    return _legacy(s, spf, resolver)


def _legacy(s: Sample, spf: inbound.SPFResult, resolver: Resolver) -> object:  # app.py before the decision core
    from mattermail.milter import author
    policy = inbound.InboundPolicy()
    who = author.authors([v for n, v in s.headers if n.lower().rstrip() == "from"])
    early = inbound.check_author(who, not s.mail_from, policy)
    if early is not None and early.action == "reject":
        return early
    dk = inbound.verify_dkim(s.raw, resolver, 1024)
    dmarcs = [inbound.check_dmarc(d, spf, s.mail_from.rpartition("@")[2], dk, resolver)
              for d in (who.domains if who.valid else ("",))]
    dmarc = inbound.strictest(dmarcs)
    spoof = author.impersonated(who, FIRM)
    decision = inbound.decide(spf, dmarc, policy, spoof)
    inbound.strip_our_results(s.headers, AUTHSERV)
    inbound.authentication_results(AUTHSERV, spf, dk, dmarcs, CLIENT, impersonated=spoof)
    return decision


def cpu_ms(samples: list[Sample], resolver: Resolver) -> float:
    start = time.process_time()
    for s in samples:
        one(s, resolver)
    return (time.process_time() - start) * 1000 / len(samples)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=400, help="messages per kind and pass (default 400)")
    ap.add_argument("--domains", type=int, default=50, help="sender domains (default 50)")
    ap.add_argument("--rounds", type=int, default=7, help="timed passes; the median is reported (default 7)")
    ap.add_argument("--ed25519", action="store_true", help="sign with Ed25519 as well as RSA-2048")
    ap.add_argument("--profile", type=int, default=0, metavar="N", help="print cProfile's N top functions")
    ap.add_argument("--dns", action="store_true", help="ask the dev DNS server in another process (uncached)")
    args = ap.parse_args()

    stub = StubResolver(DNS(nameservers=("127.0.0.1",), port=53, timeout=1.0, cache_size=0))
    keys = publish(stub, args.domains, args.ed25519)
    resolver: StubResolver | CountingResolver = stub
    if args.dns:
        folder = tempfile.mkdtemp(prefix="mattermail-bench-dns-")
        server, resolver = serve(stub, folder)
    try:
        return run(args, keys, resolver)
    finally:
        if args.dns:
            server.kill()
            server.wait()


def run(args: argparse.Namespace, keys: dict[str, list[dkimkeys.SigningKey]],
        resolver: StubResolver | CountingResolver) -> int:
    domains = list(keys)
    kinds = {"signed": [make(i, domains[i % len(domains)], keys[domains[i % len(domains)]])
                        for i in range(args.messages)],
             "unsigned": [make(i, domains[i % len(domains)], None) for i in range(args.messages)]}
    first = one(kinds["signed"][0], resolver)
    print(f"sample verdict: {first!r}"[:400])
    for kind, samples in kinds.items():
        cpu_ms(samples, resolver)  # warm-up: caches (PSL, author parsing) filled as in a running milter
        resolver.asked.clear()
        runs = [cpu_ms(samples, resolver) for _ in range(args.rounds)]
        per_msg = {t: c / (len(samples) * args.rounds) for t, c in resolver.asked.items()}
        print(f"{kind:8s} CPU ms/msg: median {statistics.median(runs):.3f} (min {min(runs):.3f}, max {max(runs):.3f}, "
              f"{args.rounds} rounds of {len(samples)}); queries/msg: "
              + " ".join(f"{t}={q:.2f}" for t, q in sorted(per_msg.items())))
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        for s in kinds["signed"]:
            one(s, resolver)
        prof.disable()
        pstats.Stats(prof, stream=sys.stdout).sort_stats("cumulative").print_stats(args.profile)
        pstats.Stats(prof, stream=sys.stdout).sort_stats("tottime").print_stats(args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
