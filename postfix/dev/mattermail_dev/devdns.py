"""mattermail-devdns: the dev stack's DNS server, serving standard zone files.

Serves every ``*.zone`` file in a directory (BIND syntax, parsed by dnslib) on
UDP and TCP. A file that changes is re-read on the next query, so tests can
add their own domains by writing a zone file. Names that exist with other
types answer NOERROR/NODATA; names that do not exist answer NXDOMAIN, or a
wildcard's records (``*.example.org``, RFC 4592: below the closest existing
name only). For the
dev stack and tests only: it is not a production name server.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path

from dnslib import QTYPE, RCODE, RR, DNSLabel, DNSRecord
from dnslib.server import BaseResolver, DNSLogger, DNSServer

log = logging.getLogger("mattermail_dev.devdns")


class ZoneDirResolver(BaseResolver):
    def __init__(self, zone_dir: Path) -> None:
        self.zone_dir = Path(zone_dir)
        self._lock = threading.Lock()
        self._stamp: tuple[tuple[str, int, int], ...] = ()
        self._records: list[RR] = []

    def _snapshot(self) -> tuple[tuple[str, int, int], ...]:
        out = []
        for p in sorted(self.zone_dir.glob("*.zone")):
            try:
                st = p.stat()
            except FileNotFoundError:
                continue
            out.append((p.name, st.st_mtime_ns, st.st_size))
        return tuple(out)

    def records(self) -> list[RR]:
        with self._lock:
            stamp = self._snapshot()
            if stamp != self._stamp:
                records: list[RR] = []
                for name, _, _ in stamp:
                    path = self.zone_dir / name
                    try:
                        records.extend(RR.fromZone(path.read_text(encoding="utf-8")))
                    except Exception as e:  # a half-written or bad file must not kill the server
                        log.error("%s: cannot parse zone file: %s", path, e)
                self._records = records
                self._stamp = stamp
                log.info("loaded %d records from %d zone files", len(records), len(stamp))
            return self._records

    def resolve(self, request: DNSRecord, handler: object) -> DNSRecord:
        reply = request.reply()
        qname = request.q.qname
        qtype = QTYPE[request.q.qtype]
        records = self.records()
        matches = [rr for rr in records if rr.rname == qname] or _wildcard(records, qname)
        if not matches:
            # An empty non-terminal (a name with names below it) exists: NODATA, not NXDOMAIN.
            if not any(rr.rname.matchSuffix(qname) for rr in records):
                reply.header.rcode = RCODE.NXDOMAIN
            return reply
        for rr in matches:
            if qtype == "ANY" or QTYPE[rr.rtype] == qtype:
                reply.add_answer(rr)
        if not reply.rr:
            cnames = [rr for rr in matches if QTYPE[rr.rtype] == "CNAME"]
            for rr in cnames:
                reply.add_answer(rr)
                target = rr.rdata.label
                for t in records:
                    if t.rname == target and QTYPE[t.rtype] == qtype:
                        reply.add_answer(t)
        return reply


def _wildcard(records: list[RR], qname: DNSLabel) -> list[RR]:
    """A wildcard's records as ``qname``'s (RFC 4592): ``*.E`` at the closest existing ancestor
    E of a name that does not exist; [] when qname exists (an empty non-terminal) or E has none."""
    if any(rr.rname.matchSuffix(qname) for rr in records):
        return []
    labels = qname.label
    for i in range(1, len(labels)):
        encloser = DNSLabel(labels[i:])
        star = DNSLabel((b"*",) + labels[i:])
        found = [RR(qname, rr.rtype, rr.rclass, rr.ttl, rr.rdata) for rr in records if rr.rname == star]
        if found or any(rr.rname.matchSuffix(encloser) for rr in records):
            return found
    return []


class _QuietLogger(DNSLogger):
    def __init__(self) -> None:
        super().__init__(log="-request,-reply,-truncated,-error,-recv,-send,-data", prefix=False)


def free_port(address: str = "127.0.0.1") -> int:
    """A port free for both UDP and TCP on ``address`` (for test DNS servers)."""
    import socket

    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind((address, 0))
            port = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind((address, port))
                except OSError:
                    continue
        return port
    raise RuntimeError("no port free for both UDP and TCP")


def serve(zone_dir: Path, address: str, port: int) -> list[DNSServer]:
    resolver = ZoneDirResolver(zone_dir)
    resolver.records()
    servers = [DNSServer(resolver, address=address, port=port, tcp=tcp, logger=_QuietLogger()) for tcp in (False, True)]
    for s in servers:
        s.start_thread()
    return servers


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="mattermail-devdns", description=__doc__.splitlines()[0])
    parser.add_argument("--zones", required=True, type=Path, help="directory of *.zone files")
    parser.add_argument("--address", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5353)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s mattermail-devdns: %(message)s")
    servers = serve(args.zones, args.address, args.port)
    log.info("serving %s on %s:%d udp+tcp", args.zones, args.address, args.port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    while not stop.wait(1.0):
        pass
    for s in servers:
        s.stop()


if __name__ == "__main__":
    main()
