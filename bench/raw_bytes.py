"""Where a message's raw bytes live with the store on PostgreSQL: a file on the router host's disk (today) or
``bytea`` in the database. What each costs per message, and how much WAL it writes.

Per message, both ways commit a small row (its SHA-256) in PostgreSQL, BATCH messages per transaction
(1: a delivery alone; 8: the router's group commit under load):

  file   the bytes written to ``<dir>/<sha[:2]>/<sha>.eml`` (temp file, rename), then ONE syncfs(2) of the
         file system per batch before the commit (router.sync = syncfs, as the router does)
  bytea  the bytes in the row (``raw bytea``; PostgreSQL TOASTs and pglz-compresses values over ~2 KB),
         nothing on the router host's disk

PostgreSQL: a private cluster (mattermail_dev.pgcluster: fsync on, synchronous_commit on, full_page_writes
on, the unix socket), on the same disk. WAL = ``pg_current_wal_lsn()`` difference per message (the commit
records included; the file way writes WAL for its small row only). Sizes 4 KB (text) and 100 KB (text with
a base64 attachment, which compresses little), rounds interleaved (file, bytea, bytea, file, ...), medians.

    .venv/bin/python -P bench/raw_bytes.py [N [ROUNDS [SIZES_KB]]]      (SIZES_KB: e.g. 4,16,64,100)

The file system is shared: syncfs(2) flushes every dirty page of it, other processes' too, so on a busy
host the file way pays for its neighbours' writes (which is what production would see as well).
"""

from __future__ import annotations

import base64
import hashlib
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

from mattermail_dev import pgcluster

from mattermail.atomicfile import sync_filesystem, write_atomic


def message(size: int, i: int, rng: random.Random) -> bytes:
    head = f"From: a@b.example\r\nTo: 1234@matters.lawfirm.test\r\nSubject: report {i}\r\nMessage-ID: <{i}.{size}@b>\r\n"
    def text(n: int) -> str:  # prose-like: words of a 2,000-word vocabulary, 72-column lines (pglz: ~2x)
        out, line, total, width = [], [], 0, 0
        while total < n:
            word = rng.choice(VOCABULARY)
            line.append(word)
            width += len(word) + 1
            if width > 72:
                out.append(" ".join(line) + "\r\n")
                total += width + 1
                line, width = [], 0
        return "".join(out)

    if size <= 16 * 1024:
        body = text(size)
    else:  # a 2 KB text and an attachment: base64 of random bytes (incompressible, as a PDF)
        blob = base64.encodebytes(rng.randbytes(size * 3 // 4)).decode().replace("\n", "\r\n")
        body = text(2048) + "\r\n--b\r\nContent-Transfer-Encoding: base64\r\n\r\n" + blob
    return (head + "\r\n" + body).encode()[:size]


_vocab = random.Random(7)
VOCABULARY = ["".join(_vocab.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(_vocab.randint(2, 11)))
              for _ in range(2000)]


def run_file(conn, root: Path, raws: list[bytes], batch: int) -> float:
    t0 = time.perf_counter()
    for first in range(0, len(raws), batch):
        shas = []
        for raw in raws[first:first + batch]:
            sha = hashlib.sha256(raw).hexdigest()
            dest = root / sha[:2] / f"{sha}.eml"
            dest.parent.mkdir(exist_ok=True)
            write_atomic(dest, raw, mode=0o600, sync_directory=False, sync_file=False)
            shas.append(sha)
        sync_filesystem(root)  # the files and their renames durable before the commit
        conn.execute("BEGIN")
        for sha in shas:
            conn.execute("INSERT INTO row_bench (sha256) VALUES (%s)", [sha])
        conn.execute("COMMIT")
    return time.perf_counter() - t0


def run_bytea(conn, raws: list[bytes], batch: int) -> float:
    t0 = time.perf_counter()
    for first in range(0, len(raws), batch):
        conn.execute("BEGIN")
        for raw in raws[first:first + batch]:
            conn.execute("INSERT INTO raw_bench (sha256, raw) VALUES (%s, %s)", [hashlib.sha256(raw).hexdigest(), raw])
        conn.execute("COMMIT")
    return time.perf_counter() - t0


def lsn(conn) -> int:
    return int(conn.execute("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn").fetchone()[0])


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 4
    sizes = [int(k) * 1024 for k in (sys.argv[3] if len(sys.argv) > 3 else "4,100").split(",")]
    import psycopg

    rng = random.Random(1)
    tmp = Path(tempfile.mkdtemp(prefix="mattermail-rawbytes-"))
    print(f"raw bytes: file + syncfs vs bytea; {n} messages per run, {rounds} interleaved rounds, "
          f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    with pgcluster.start() as pg:
        pg.create_database("raw")
        conn = psycopg.connect(f"postgresql://postgres@/raw?host={pg.root}&port={pg.port}", autocommit=True)
        conn.execute("CREATE TABLE row_bench (id bigserial PRIMARY KEY, sha256 text UNIQUE)")
        conn.execute("CREATE TABLE raw_bench (id bigserial PRIMARY KEY, sha256 text UNIQUE, raw bytea)")
        counter = 0
        for size in sizes:
            for batch in (1, 8):
                res: dict[str, list[tuple[float, float]]] = {"file": [], "bytea": []}
                for r in range(rounds):
                    for way in (("file", "bytea") if r % 2 == 0 else ("bytea", "file")):
                        raws = [message(size, counter + i, rng) for i in range(n)]
                        counter += n
                        conn.execute("CHECKPOINT")  # each run starts after a checkpoint: full-page images alike
                        w0 = lsn(conn)
                        dt = run_file(conn, tmp, raws, batch) if way == "file" else run_bytea(conn, raws, batch)
                        res[way].append((dt * 1000 / n, (lsn(conn) - w0) / n))
                stored = conn.execute("SELECT avg(pg_column_size(raw)) FROM raw_bench WHERE length(raw) = %s",
                                      [size]).fetchone()[0]
                line = [f"{size // 1024:>3} KB batch {batch}:"]
                for way in ("file", "bytea"):
                    ms = statistics.median(x[0] for x in res[way])
                    wal = statistics.median(x[1] for x in res[way])
                    line.append(f"{way} {ms:.2f} ms/msg ({'/'.join(f'{x[0]:.2f}' for x in res[way])}), "
                                f"WAL {wal / 1024:.1f} KB/msg")
                ratio = [b[0] / f[0] for f, b in zip(res["file"], res["bytea"])]
                line.append(f"bytea/file time per round {' '.join(f'{x:.2f}' for x in ratio)}, median "
                            f"{statistics.median(ratio):.2f}; stored bytea {float(stored) / 1024:.1f} KB")
                print("  ".join(line), flush=True)
        conn.close()
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    print(f"load at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
