"""The store layer on SQLite vs PostgreSQL: what the router does per message, without SMTP or LMTP.

Each message, as router/filing.py files it: the messages row (its ``stored`` chain entry), one delivery, a
filing to a matter (its ``filed`` entry) and a ``filed`` event; BATCH messages per durable transaction
(1: a delivery alone; 8: the router's group commit under load), then the background indexing of all of
them. SQLite: a file in a temp dir (synchronous=FULL); PostgreSQL: a database in a private cluster
(mattermail_dev.pgcluster: fsync on, over TCP on 127.0.0.1), the same machine. Rounds are interleaved
(SQLite, PostgreSQL, SQLite, ...); the report gives the median per engine. Also counts the statements
each engine runs per message (both run the same queries; PostgreSQL adds the chain's advisory lock).

    .venv/bin/python -P bench/store_engines.py [N [ROUNDS [BATCH ...]]]
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from mattermail_dev import pgcluster

from mattermail.store import Store, index_pending, insert_message, record_deliveries, transaction
from mattermail.store import directory as d


def run(location: Path | str, root: Path, n: int, batch: int) -> tuple[float, float, float, float]:
    """(wall ms, client CPU ms, indexing ms, statements) per message."""
    s = Store(location, root / "m")
    d.add_matter(s, "1234", "bench")
    raws = [f"From: a@b.example\r\nSubject: report {i}\r\nMessage-ID: <{i}@b>\r\n\r\nbody {i}\r\n".encode()
            for i in range(n)]
    count = [0]
    if s.engine == "sqlite":  # every statement sent (a trigger's own statements come as "-- TRIGGER" lines)
        s.db.conn.set_trace_callback(lambda sql: sql.startswith("--") or count.__setitem__(0, count[0] + 1))
    else:
        real = s.db.conn.execute

        def counted(*a, **k):
            count[0] += 1
            return real(*a, **k)

        s.db.conn.execute = counted  # type: ignore[method-assign]
    t0, c0 = time.perf_counter(), time.process_time()
    for first in range(0, n, batch):
        with transaction(s):
            for i in range(first, min(first + batch, n)):
                with transaction(s):  # a savepoint per message, as router/batch.py
                    sha, _ = s.write_blob(raws[i], sync_dir=False)
                    mid, _ = insert_message(s, raws[i], sha, body_text=f"body {i}")
                    record_deliveries(s, mid, "a@b.example", ["1234@m.test"], "Q")
                    d.record_filing(s, d.Filing(mid, "1234", None, "matter-address", "1234@m.test", ""))
                    d.log_event(s, "filed", {"recipient": "1234@m.test"}, mid, "Q")
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    statements = count[0]
    t1 = time.perf_counter()
    while index_pending(s):
        pass
    indexing = time.perf_counter() - t1
    s.close()
    return wall / n * 1000, cpu / n * 1000, indexing / n * 1000, statements / n


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 400
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    batches = [int(b) for b in sys.argv[3:]] or [1, 8]
    results: dict[tuple[str, int], list[tuple[float, float, float, float]]] = {}
    with pgcluster.start() as pg, tempfile.TemporaryDirectory() as tmp:
        version = pg.sql_value("SHOW server_version")
        k = 0
        for r in range(rounds):
            for batch in batches:
                for engine in ("sqlite", "postgresql") if r % 2 == 0 else ("postgresql", "sqlite"):
                    k += 1
                    root = Path(tmp) / f"run{k}"
                    location = root / "s.sqlite" if engine == "sqlite" else pg.create_database(f"bench{k}")
                    results.setdefault((engine, batch), []).append(run(location, root, n, batch))
    print(f"mattermail store engines: {n} messages x {rounds} rounds (medians), PostgreSQL {version}")
    for batch in batches:
        med = {e: [statistics.median(x[i] for x in results[(e, batch)]) for i in range(4)]
               for e in ("sqlite", "postgresql")}
        for e, (wall, cpu, idx, stm) in med.items():
            print(f"  batch {batch:2d} {e:10s}: {wall:6.3f} ms/message wall, {cpu:6.3f} ms client CPU, "
                  f"indexing {idx:.3f} ms/message, {stm:.1f} statements/message")
        print(f"  batch {batch:2d} PostgreSQL/SQLite messages/s: {med['sqlite'][0] / med['postgresql'][0]:.2f}x")


if __name__ == "__main__":
    main()
