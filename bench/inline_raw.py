#!/usr/bin/env -S python3 -P
"""Where the router keeps a small message's raw bytes: in a file of its own, or in its row (store.inline_max).

The router's own LMTP server and batches (router/lmtp.py, in this process, on uvloop as in production) over
a unix socket, fed by 8 client processes that talk as Postfix's lmtp(8) does on a cached connection
(MAIL, RCPT and DATA in one write, the message, then RSET). Two modes, the same code otherwise:

  file  ``store.inline_max = 0``: every message a file (temp file, rename, one syncfs(2) per batch), then the
        batch's commit (its WAL fsynced)
  row   ``store.inline_max = 262144``: the message in its ``messages`` row, committed with it; no file, no syncfs

Each run starts on a fresh SQLite store and ends when every message is answered ``250`` *and* indexed for
search (the indexer's work is in both). Rounds alternate the order of the modes; per size the report gives
the median messages/s, the router process's CPU per message (all its threads) and the machine's (all CPUs'
busy time, /proc/stat: the clients included, the same in both), and the ratios row/file.

By default the stores live on a journaled ext4 of their own (loop device, as bench/outbound: what a
production host has); ``--in-place`` uses the temp folder as it is. Run as root:

    .venv/bin/python -P bench/inline_raw.py [--messages 2000] [--rounds 3] [--sizes 4,16,32,64,100] [--in-place]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

CONNS = 8
HEAD = (b"Received: from mx.lawfirm.test by mx.lawfirm.test (Postfix) with ESMTP id 4ABCDEF12\r\n"
        b"\tfor <1234@matters.lawfirm.test>; Mon, 23 Nov 2026 12:00:00 +0000\r\n"
        b"From: bob@example.test\r\nTo: someone@example.test\r\nSubject: filing\r\n")


def client(path: str, n: int, idx: int, size: int) -> None:
    """One Postfix-like LMTP session: ``n`` messages of ``size`` bytes, each answered 250."""
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    f = s.makefile("rb")
    f.readline()
    s.sendall(b"LHLO mx.lawfirm.test\r\n")
    while f.readline()[3:4] != b" ":
        pass
    for i in range(n):
        head = HEAD + b"Message-ID: <%d.%d.%d@bench>\r\n\r\n" % (idx, i, size)
        line = b"line %d %d of the body, long enough to look like text in a real message body....\r\n" % (idx, i)
        body = head + line * max(1, (size - len(head)) // len(line))
        s.sendall(b"MAIL FROM:<bob@example.test> SIZE=%d\r\nRCPT TO:<1234@matters.lawfirm.test>\r\nDATA\r\n"
                  % len(body))
        for _ in range(3):
            f.readline()
        s.sendall(body + b".\r\n")
        reply = f.readline()
        if not reply.startswith(b"250"):
            raise SystemExit(f"delivery refused: {reply!r}")
        s.sendall(b"RSET\r\n")
        f.readline()
    s.sendall(b"QUIT\r\n")
    f.readline()


def machine_cpu() -> float:
    v = list(map(int, Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]))
    return (sum(v) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")


def process_cpu() -> float:
    t = os.times()
    return t.user + t.system


def run(root: Path, mode: str, size: int, count: int) -> tuple[float, float, float]:
    """One run on a fresh store: (msgs/s, router CPU ms/msg, machine CPU ms/msg)."""
    import uvloop

    from mattermail.config import from_dict
    from mattermail.router import lmtp
    from mattermail.store import Store, pending_count

    d = Path(tempfile.mkdtemp(prefix=f"inline-{mode}-", dir=root))
    try:
        Store(d / "store.sqlite", d / "messages").close()  # (migrated before the clock starts)
        store = Store(d / "store.sqlite", d / "messages", batches=True)
        cfg = from_dict({"store": {"inline_max": 0 if mode == "file" else 262144}})
        handler = lmtp.DeliveryHandler(store, config=cfg)
        loop = uvloop.new_event_loop()
        sock = str(d / "lmtp.sock")
        up = threading.Event()

        async def start() -> None:
            await lmtp.serve((f"unix:{sock}",), store, handler)
            up.set()

        t = threading.Thread(target=lambda: (loop.run_until_complete(start()), loop.run_forever()), daemon=True)
        t.start()
        if not up.wait(10):
            raise SystemExit("the LMTP server did not start")

        def clients(n: int, base: int) -> None:
            ps = [subprocess.Popen([sys.executable, "-P", __file__, "--client", sock, str(n), str(base + i), str(size)])
                  for i in range(CONNS)]
            if any(p.wait() for p in ps):
                raise SystemExit("a client failed")

        clients(5, 0)  # warm-up: connections, the interpreter's caches
        per = count // CONNS
        m0, p0, t0 = machine_cpu(), process_cpu(), time.perf_counter()
        clients(per, 100)
        while pending_count(store):  # indexed too (after the 250, in both modes)
            time.sleep(0.005)
        dt = time.perf_counter() - t0
        m1, p1 = machine_cpu(), process_cpu()
        n = per * CONNS
        asyncio.run_coroutine_threadsafe(handler.aclose(), loop).result(30)
        store.close()
        return n / dt, (p1 - p0) * 1000 / n, (m1 - m0) * 1000 / n
    finally:
        shutil.rmtree(d, ignore_errors=True)


def run_apart(root: Path, mode: str, size: int, count: int) -> tuple[float, float, float]:
    """:func:`run` in a process of its own: a fresh interpreter per run, and nothing left open on the file
    system afterwards."""
    r = subprocess.run([sys.executable, "-P", __file__, "--run", str(root), mode, str(size), str(count)],
                       capture_output=True, text=True, timeout=900, check=False)
    if r.returncode:
        raise SystemExit(f"run {mode} {size}: exit {r.returncode}: {r.stderr[-2000:]}")
    rate, router, machine = map(float, r.stdout.split())
    return rate, router, machine


def main() -> int:
    if sys.argv[1:2] == ["--client"]:
        path, n, idx, size = sys.argv[2], *map(int, sys.argv[3:6])
        client(path, n, idx, size)
        return 0
    if sys.argv[1:2] == ["--run"]:
        print(*run(Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])))
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=2000, help="messages per run (default 2000)")
    p.add_argument("--rounds", type=int, default=3, help="rounds, the modes' order alternating (default 3)")
    p.add_argument("--sizes", default="4,16,32,64,100", help="message sizes in KB (default 4,16,32,64,100)")
    p.add_argument("--in-place", action="store_true", help="the temp folder as it is, not a journaled ext4")
    args = p.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from benchpeers import journaled_scratch

    if os.geteuid() != 0 and not args.in_place:
        sys.exit("bench/inline_raw.py: run as root (a loop device), or with --in-place")
    sizes = [int(x) * 1024 for x in args.sizes.split(",")]
    results: dict[tuple[int, str], list[tuple[float, float, float]]] = {}
    with contextlib.ExitStack() as scratch:
        root, fs_line = scratch.enter_context(journaled_scratch("bench-inline", args.in_place, False, size_gb=4))
        print(fs_line, flush=True)
        for r in range(args.rounds):
            for size in sizes:
                for mode in (("file", "row") if r % 2 == 0 else ("row", "file")):
                    res = run_apart(root, mode, size, args.messages)
                    results.setdefault((size, mode), []).append(res)
                    print(f"  round {r + 1} {size // 1024:>4} KB {mode:<4}: {res[0]:7.1f} msgs/s, router "
                          f"{res[1]:.3f} ms/msg, machine {res[2]:.3f} ms/msg", flush=True)
    print(f"\n{args.messages} messages per run, {CONNS} LMTP sessions, {args.rounds} rounds; medians")
    print(f"{'size':>6}  {'file msgs/s':>11} {'row msgs/s':>10}  {'router file':>11} {'row':>6}  "
          f"{'machine file':>12} {'row':>6}  {'row/file machine':>16} {'rate':>6}")
    for size in sizes:
        f = [statistics.median(x) for x in zip(*results[(size, "file")])]
        w = [statistics.median(x) for x in zip(*results[(size, "row")])]
        print(f"{size // 1024:>3} KB  {f[0]:11.1f} {w[0]:10.1f}  {f[1]:11.3f} {w[1]:6.3f}  {f[2]:12.3f} {w[2]:6.3f}  "
              f"{w[2] / f[2]:16.2f} {w[0] / f[0]:6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
