"""The dev stack's test DNS server, counting the queries it answers (for bench/inbound).

It serves a zone directory with mattermail_dev.devdns's own resolver (same
zone parsing, same answers, same per-query cost: nothing is changed in the
dev package), on one or more labelled listeners (``--listen NAME=ADDR:PORT``,
UDP and TCP), and counts every query by listener, type and name. Sender
domains ``senderNN.example`` are folded into ``<sender>.example`` so the
counts read as a per-message recipe. On SIGUSR1 it writes the cumulative
counts, with a sequence number, to the ``--stats`` file (written to a temp
file and renamed, so a reader never sees half of it):

    {"seq": 3, "counts": {"main": {"TXT s1._domainkey.<sender>.example": 1200, ...}}}

The bench takes a snapshot before and after each timed run and divides the
difference by the messages sent.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import threading
from collections import Counter
from pathlib import Path

from dnslib import QTYPE, DNSRecord
from dnslib.server import BaseResolver, DNSServer

from mattermail_dev.devdns import ZoneDirResolver, _QuietLogger

SENDER = re.compile(r"\bsender\d+\.example\.?$")
MESSAGE = re.compile(r"^p\d+(?:-\d+)?\.u\.")


def fold(name: str) -> str:
    """senderNN.example as <sender>.example; bench/inbound's names of one message (pNNNN-RUN.u.,
    pNNNN.u._domainkey.) as <msg>.u."""
    return MESSAGE.sub("<msg>.u.", SENDER.sub("<sender>.example", name.lower().rstrip(".")))


class Counting(BaseResolver):
    """Answers with the shared zone resolver; counts under its listener's label."""

    def __init__(self, inner: ZoneDirResolver, label: str, counts: dict[str, Counter], lock: threading.Lock) -> None:
        self.inner, self.label, self.counts, self.lock = inner, label, counts, lock

    def resolve(self, request: DNSRecord, handler: object) -> DNSRecord:
        key = f"{QTYPE.get(request.q.qtype, request.q.qtype)} {fold(str(request.q.qname))}"
        with self.lock:
            self.counts[self.label][key] += 1
        return self.inner.resolve(request, handler)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--zones", required=True, type=Path)
    p.add_argument("--listen", action="append", required=True, help="NAME=ADDRESS:PORT (repeatable)")
    p.add_argument("--stats", required=True, type=Path, help="file written on SIGUSR1")
    a = p.parse_args(argv)
    inner = ZoneDirResolver(a.zones)
    inner.records()
    counts: dict[str, Counter] = {}
    lock = threading.Lock()
    servers = []
    for spec in a.listen:
        label, _, hostport = spec.partition("=")
        host, _, port = hostport.rpartition(":")
        counts[label] = Counter()
        r = Counting(inner, label, counts, lock)
        for tcp in (False, True):
            s = DNSServer(r, address=host, port=int(port), tcp=tcp, logger=_QuietLogger())
            s.start_thread()
            servers.append(s)
    seq = [0]
    dump = threading.Event()
    stop = threading.Event()
    signal.signal(signal.SIGUSR1, lambda *_: dump.set())
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"countdns: serving {a.zones} on {', '.join(a.listen)}", flush=True)
    while not stop.is_set():
        if dump.wait(0.2):
            dump.clear()
            seq[0] += 1
            with lock:
                snap = {k: dict(v) for k, v in counts.items()}
            tmp = a.stats.with_suffix(".tmp")
            tmp.write_text(json.dumps({"seq": seq[0], "counts": snap}), encoding="utf-8")
            os.replace(tmp, a.stats)
    for s in servers:
        s.stop()


if __name__ == "__main__":
    main()
