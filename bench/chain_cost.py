"""The records chain's cost per filed message, at the store layer (no SMTP, no LMTP).

Stores N messages, each written, inserted and filed to a matter in its own durable transaction (as the
router's single deliveries do), once with the chain and once with chain.append replaced by a no-op; the
store layout is otherwise identical. Prints wall and CPU ms per message for both and the difference
(interleaved rounds; wall time swings with other load on a shared machine, CPU time much less).

    .venv/bin/python -P bench/chain_cost.py [N [ROUNDS]]

The issue's target (the chain costs <= 5% of router throughput) is measured with bench/router.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from mattermail.store import Store, chain, insert_message, transaction
from mattermail.store import directory as d


def run(n: int, with_chain: bool, root: Path) -> tuple[float, float]:
    saved = chain.append
    if not with_chain:
        chain.append = lambda *a, **k: None  # type: ignore[assignment]
    try:
        s = Store(root / "s.sqlite", root / "m")
        d.add_matter(s, "1234", "bench")
        raws = [f"From: a@b.example\r\nSubject: {i}\r\nMessage-ID: <{i}-{with_chain}@b>\r\n\r\nbody {i}\r\n".encode()
                for i in range(n)]
        t0, c0 = time.perf_counter(), time.process_time()
        for raw in raws:
            sha, _ = s.write_blob(raw)
            with transaction(s):
                mid, _ = insert_message(s, raw, sha)
                d.record_filing(s, d.Filing(mid, "1234", None, "matter-address", "1234@m.test", ""))
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        s.close()
        return elapsed / n * 1000, cpu / n * 1000
    finally:
        chain.append = saved  # type: ignore[assignment]


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    results: dict[bool, list[tuple[float, float]]] = {}
    for _ in range(rounds):  # interleaved, so load from other work falls on both alike
        for with_chain in (False, True):
            with tempfile.TemporaryDirectory() as tmp:
                results.setdefault(with_chain, []).append(run(n, with_chain, Path(tmp)))
    for i, what in ((0, "wall"), (1, "CPU")):
        for name, pick in (("best", min), ("median", statistics.median)):
            off, on = pick(r[i] for r in results[False]), pick(r[i] for r in results[True])
            print(f"{n} messages x {rounds} rounds, {what} {name}: without chain {off:.3f} ms/message, with chain "
                  f"{on:.3f} ms/message, {on - off:+.3f} ms ({(on - off) / off * 100:+.1f}%)")


if __name__ == "__main__":
    main()
