#!/usr/bin/env -S python3 -P
"""CPU per delivered message with full-text indexing inside the delivery transaction vs after the 250.

The router's LMTP server in this process (router/lmtp.py, a fresh store in a temp dir per run), N messages
of ~4 KB (distinct words, so the index grows as in real mail) sent by S concurrent LMTP sessions over
loopback; two modes, interleaved rounds:

  inline      the old write path: migration 4's trigger indexes each message inside the delivery
              transaction (the queue trigger dropped), so every 250 waits for FTS5
  background  today's: the delivery only queues the message (migration 8); the indexer thread indexes
              it after the commit

Reported per run: the writer thread's CPU ms/msg (filing + commit: what a 250 waits for), the indexer
thread's CPU ms/msg, the whole process's CPU ms/msg (client threads included, the same in both modes),
messages/s until every 250 and until every message is searchable, and the 1-minute load average.
Every run checks that search finds all N messages.

    .venv/bin/python -P bench/index_cost.py [--messages 800] [--sessions 8] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import resource
import smtplib
import statistics
import tempfile
import threading
import time
from pathlib import Path

import uvloop

from mattermail.router import lmtp
from mattermail.router import indexer as router_indexer
from mattermail.store import Store, directory, pending_count, search

WORDS = [f"w{i:05d}" for i in range(20000)]


def message(i: int, rng: random.Random) -> bytes:
    body = []
    while sum(len(l) + 2 for l in body) < 4000:
        body.append(" ".join(rng.choice(WORDS) for _ in range(10)))
    return (f"Received: from mx.lawfirm.test by mx.lawfirm.test (Postfix) with ESMTP id Q{i:08X}\r\n"
            f"\tfor <1234@matters.lawfirm.test>; Mon, 23 Nov 2026 12:00:00 +0000\r\n"
            f"From: bob@example.test\r\nSubject: bench {i}\r\nMessage-ID: <bench-{i}@x>\r\n\r\n"
            + "\r\n".join(body) + f"\r\nbenchmark{i % 7} allbench\r\n").encode()


def inline(store: Store) -> None:
    """The write path before migration 8: index inside the inserting transaction."""
    store.db.execute("DROP TRIGGER messages_ai")
    store.db.execute("CREATE TRIGGER messages_ai AFTER INSERT ON messages BEGIN "
                     "INSERT INTO messages_fts (rowid, subject, body_text) VALUES (new.id, new.subject, new.body_text); "
                     "END")


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run(mode: str, msgs: list[bytes], sessions: int) -> dict[str, float]:
    tmp = Path(tempfile.mkdtemp(prefix="index-cost-"))
    store = Store(tmp / "s.sqlite", tmp / "m")
    directory.add_matter(store, "1234", "Bench")
    if mode == "inline":
        inline(store)
    handler = lmtp.DeliveryHandler(store)
    writer_cpu = [0.0]
    file = handler._file

    def timed(batch):
        t = time.thread_time()
        try:
            return file(batch)
        finally:
            writer_cpu[0] += time.thread_time() - t

    handler._file = timed  # type: ignore[method-assign]
    indexer_cpu = [0.0]
    catch_up = router_indexer.Indexer._catch_up

    def timed_catch_up(self, st):
        t = time.thread_time()
        try:
            return catch_up(self, st)
        finally:
            indexer_cpu[0] += time.thread_time() - t

    router_indexer.Indexer._catch_up = timed_catch_up  # type: ignore[method-assign]
    loop = uvloop.new_event_loop()  # the router's loop (router/__main__.py)
    holder: dict = {}
    ready = threading.Event()

    async def start():
        holder["servers"] = await lmtp.serve(("127.0.0.1:0",), store, handler)
        ready.set()

    t = threading.Thread(target=lambda: (loop.run_until_complete(start()), loop.run_forever()), daemon=True)
    t.start()
    assert ready.wait(10)
    assert handler.indexer.started.wait(10)
    port = holder["servers"][0].sockets[0].getsockname()[1]
    chunks = [msgs[i::sessions] for i in range(sessions)]
    codes: list[int] = []

    def client(chunk):
        with smtplib.LMTP("127.0.0.1", port) as c:
            for raw in chunk:
                c.ehlo()
                c.mail("bob@example.test")
                c.rcpt("1234@matters.lawfirm.test")
                c.putcmd("data")
                c.getreply()
                c.send(raw + b".\r\n")
                codes.append(c.getreply()[0])
                c.rset()

    c0, w0 = cpu(), time.monotonic()
    threads = [threading.Thread(target=client, args=(ch,)) for ch in chunks]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    delivered = time.monotonic() - w0
    deadline = time.monotonic() + 120
    while pending_count(store) and time.monotonic() < deadline:
        time.sleep(0.005)
    searchable = time.monotonic() - w0
    total_cpu = cpu() - c0
    n = len(msgs)
    found = len(search(store, "allbench", limit=0))
    asyncio.run_coroutine_threadsafe(_cancel(), loop).result(5)
    loop.call_soon_threadsafe(loop.stop)
    t.join(5)
    handler.forwarder.stop()
    handler.indexer.stop()
    router_indexer.Indexer._catch_up = catch_up  # type: ignore[method-assign]
    store.close()
    if codes.count(250) != n or found != n:
        raise SystemExit(f"{mode}: {codes.count(250)} of {n} answered 250, search finds {found}")
    return {"writer": writer_cpu[0] / n * 1000, "indexer": indexer_cpu[0] / n * 1000, "process": total_cpu / n * 1000,
            "rate_250": n / delivered, "rate_search": n / searchable, "load": os.getloadavg()[0]}


async def _cancel() -> None:
    for task in asyncio.all_tasks() - {asyncio.current_task()}:
        task.cancel()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--messages", type=int, default=800)
    ap.add_argument("--sessions", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    rng = random.Random(13)
    msgs = [message(i, rng) for i in range(a.messages)]
    res: dict[str, list[dict[str, float]]] = {"inline": [], "background": []}
    for r in range(a.rounds):
        for mode in (("inline", "background") if r % 2 == 0 else ("background", "inline")):
            x = run(mode, msgs, a.sessions)
            res[mode].append(x)
            print(f"round {r + 1} {mode:10s} writer {x['writer']:.2f} ms/msg, indexer {x['indexer']:.2f}, "
                  f"process {x['process']:.2f}; {x['rate_250']:.0f} msg/s to 250, {x['rate_search']:.0f} "
                  f"searchable; load {x['load']:.2f}", flush=True)
    for mode, xs in res.items():
        med = {k: statistics.median(x[k] for x in xs) for k in xs[0]}
        print(f"median {mode:10s} writer {med['writer']:.2f} ms/msg, indexer {med['indexer']:.2f}, process "
              f"{med['process']:.2f}; {med['rate_250']:.0f} msg/s to 250, {med['rate_search']:.0f} searchable")


if __name__ == "__main__":
    main()
