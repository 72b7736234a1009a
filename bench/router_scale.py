#!/usr/bin/env -S python3 -P
"""Router resolution at scale: route() per message with an almost empty store vs 100,000 persons / 50,000 matters.

Two stores in a temp dir (removed at the end, even on error), same targets in both:

  small   the targets only (4 persons, 2 matters, 1 alias), added with router.directory
  loaded  100,000 persons (one address each), 50,000 matters and 10,000 aliases,
          bulk-inserted with executemany in ONE transaction (timed), the targets
          among them (in the middle of the id ranges, not first)

For each message shape (4 KB body, like bench/router's) ``router.filing.route()``
— resolution and every rule, nothing written — is timed per call (the two
stores alternating call by call, after a warm-up); reported: median and p99
µs per message, and loaded ÷ small (flat = about 1). Each shape's result is checked (the right
filing or unfiled reason) in both stores. Then EXPLAIN QUERY PLAN for every
lookup the router does per message, and for mattermailctl's directory lookups;
any full table scan is named.

    .venv/bin/python -P bench/router_scale.py [--persons 100000] [--matters 50000] [--aliases 10000]
                                              [--rounds 10] [--per-round 500]

No root, no stack. The last line is ``resolution loaded/small (median, worst shape): X.XX``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".venv"
if Path(sys.prefix).resolve() != VENV.resolve() and os.environ.get("MATTERMAIL_BENCH_REEXEC") != "1":
    os.environ["MATTERMAIL_BENCH_REEXEC"] = "1"
    py = str(VENV / "bin" / "python")
    os.execv(py, [py, "-P", str(Path(__file__).resolve()), *sys.argv[1:]])

import argparse
import shutil
import statistics
import tempfile
import time

from mattermail.store import directory
from mattermail.router.filing import route
from mattermail.router.rules import RouterRules
from mattermail.store import Store

from mattermail.config import from_dict

DOMAIN = "matters.lawfirm.test"
MATTER = "125000"  # loaded matters are 100000..149999: this one is in the middle
SECRET = b"s" * 32  # capture secret given to route(), so it reads no key file
STRANGER = "stranger@elsewhere.example"
TARGETS = (  # (primary address, name): the persons every store has
    ("alice@lawfirm.test", "Alice Lawyer"),        # plus-address base (alice+125000@)
    ("bob@client.example", "Bob Client"),          # sender -> person
    ("carol@acme.example", "Carol Acme"),          # alias acme@matters.lawfirm.test -> her
    ("dave@other.example", "Dave Other"),
)
ALIAS = f"acme@{DOMAIN}"

# shape: (recipient, From, Subject, expected: filings as {(rule, matter, person address)} or the unfiled reason)
SHAPES = {
    "matter address": (f"{MATTER}@{DOMAIN}", STRANGER, "Draft contract", {("matter-address", MATTER, None)}),
    "plus-address": (f"alice+{MATTER}@{DOMAIN}", STRANGER, "Draft contract", {("plus-address", MATTER, "alice@lawfirm.test")}),
    "alias": (ALIAS, STRANGER, "Invoice", {("alias", None, "carol@acme.example")}),
    "sender -> person": (f"inbox@{DOMAIN}", "bob@client.example", "Question", {("sender", None, "bob@client.example")}),
    "subject reference": (f"inbox@{DOMAIN}", STRANGER, f"Re: [M-{MATTER}] draft", {("subject", MATTER, None)}),
    "unknown matter": (f"999999@{DOMAIN}", STRANGER, "Hello", "unknown matter 999999"),
}


def message(rcpt: str, sender: str, subject: str, n: int = 0) -> bytes:
    head = (f"Return-Path: <{sender}>\r\nDelivered-To: {rcpt}\r\n"
            f"Received: from mx.elsewhere.example (mx.elsewhere.example [192.0.2.7])\r\n"
            f"\tby mx.lawfirm.test (Postfix) with ESMTP id 4B1C2D3E4F{n:02d}\r\n\tfor <{rcpt}>; "
            f"Mon, 23 Nov 2026 10:00:00 +0000 (UTC)\r\n"
            f"From: Someone <{sender}>\r\nTo: <{rcpt}>\r\nSubject: {subject}\r\n"
            f"Date: Mon, 23 Nov 2026 10:00:00 +0000\r\nMessage-Id: <scale.{n}@elsewhere.example>\r\n\r\n")
    body = b"".join((str(i) + "X" * 79)[:80].encode() + b"\r\n" for i in range(1, 51))  # 4,100 bytes
    return head.encode() + body


def config():
    return from_dict({"general": {"hostname": "mx.lawfirm.test", "sending_domains": ["lawfirm.test"],
                                  "catchall_domains": [DOMAIN]},
                      "capture": {"address": f"capture@{DOMAIN}"}})


def small_store(d: Path) -> Store:
    store = Store(d / "small.sqlite", d / "small-messages")
    for email, name in TARGETS:
        directory.add_person(store, email, name)
    directory.add_matter(store, MATTER, "Target matter", ["bob@client.example"])
    directory.add_matter(store, str(int(MATTER) + 1), "Another matter")
    directory.add_alias(store, ALIAS, [DOMAIN], person="carol@acme.example")
    return store


def loaded_store(d: Path, persons: int, matters: int, aliases: int) -> tuple[Store, float]:
    """Bulk load with executemany in one transaction; the targets are placed mid-range."""
    store = Store(d / "loaded.sqlite", d / "loaded-messages")
    now = time.time()
    mid = persons // 2
    targets = {mid + i: t for i, t in enumerate(TARGETS)}  # person ids of the targets
    carol = next(pid for pid, t in targets.items() if t[0] == "carol@acme.example")
    person_rows = [(pid, targets.get(pid, (None, f"Person {pid}"))[1], now) for pid in range(1, persons + 1)]
    address_rows = [(pid, targets[pid][0] if pid in targets else f"p{pid:06d}@client{pid % 997}.example", 0)
                    for pid in range(1, persons + 1)]
    matter_rows = [(str(100000 + i), f"Matter {100000 + i}", "open" if i % 5 else "closed", now) for i in range(matters)]
    alias_rows = [(f"a{i:05d}@{DOMAIN}", (i % persons) + 1 if i % 2 else None, None if i % 2 else str(100000 + i % matters), now)
                  for i in range(aliases)]
    alias_rows[aliases // 2] = (ALIAS, carol, None, now)
    conn = store.db.conn
    t0 = time.perf_counter()
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany("INSERT INTO persons (id, name, created) VALUES (?, ?, ?)", person_rows)
        conn.executemany("INSERT INTO person_addresses (person, address, position) VALUES (?, ?, ?)", address_rows)
        conn.executemany("INSERT INTO matters (id, title, status, created) VALUES (?, ?, ?, ?)", matter_rows)
        conn.executemany("INSERT INTO aliases (address, person, matter, created) VALUES (?, ?, ?, ?)", alias_rows)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    dt = time.perf_counter() - t0
    store.close()  # the router opens the store afresh: so does this bench
    return Store(d / "loaded.sqlite", d / "loaded-messages"), dt


def check(store: Store, cfg, rules, name: str) -> int:
    """Every shape resolves as expected; returns the number of SQL statements per shape (max)."""
    pid_of = {email: directory.person_by_email(store, email).id for email, _ in TARGETS}
    most = 0
    for shape, (rcpt, sender, subject, want) in SHAPES.items():
        stmts: list[str] = []
        store.db.conn.set_trace_callback(stmts.append)
        r = route(message(rcpt, sender, subject), rcpt, store, cfg, envelope_from=sender, capture_secret=SECRET,
                  rules=rules)
        store.db.conn.set_trace_callback(None)
        most = max(most, len(stmts))
        if isinstance(want, str):
            ok = not r.filings and r.unfiled_reason == want
        else:
            ok = {(f.rule, f.matter, f.person_id) for f in r.filings} == {
                (rule, m, pid_of[p] if p else None) for rule, m, p in want}
        if not ok:
            raise RuntimeError(f"{name} store, {shape}: got filings {r.filings}, unfiled {r.unfiled_reason!r}")
    return most


def pct(xs: list[float], p: float) -> float:
    ys = sorted(xs)
    k = (len(ys) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(ys) - 1)
    return ys[lo] + (ys[hi] - ys[lo]) * (k - lo)


# The lookups, as the code runs them (router/filing.py, mattermail/store/, mattermail/store/directory.py, ctl/).
ROUTER_QUERIES = {
    "alias (rule 1, plus base)": "SELECT person, matter FROM aliases WHERE address = ?",
    "matter status (rules 2-4)": "SELECT status FROM matters WHERE id = ?",
    "persons by address (3, 5, 6)": "SELECT person FROM person_addresses WHERE address = ? ORDER BY person",
    "message by sha256": "SELECT id FROM messages WHERE sha256 = ?",
    "capture envelope by ref": "SELECT ref, queue_id, mail_from, recipients, login, client, created FROM envelopes WHERE ref = ?",
    "forwarded events": "SELECT detail FROM events WHERE message = ? AND kind = 'forwarded'",
}
CTL_QUERIES = {
    "person_by_email": "SELECT person FROM person_addresses WHERE address = ? ORDER BY position, person",
    "primary address taken": "SELECT 1 FROM person_addresses WHERE address = ? AND position = 0",
    "person's addresses": "SELECT address FROM person_addresses WHERE person = ? ORDER BY position, address",
    "matter's persons": "SELECT pa.address FROM matter_persons mp JOIN person_addresses pa ON pa.person = mp.person "
                        "AND pa.position = 0 WHERE mp.matter = ? ORDER BY pa.address",
    "get_alias": "SELECT a.address, pa.address, a.matter FROM aliases a LEFT JOIN person_addresses pa "
                 "ON pa.person = a.person AND pa.position = 0 WHERE a.address = ?",
    "remove_person: aliases of person": "SELECT 1 FROM aliases WHERE person = ?",
    "remove_person: matter_persons of person": "DELETE FROM matter_persons WHERE person = ?",
    "matter message count": "SELECT COUNT(DISTINCT message) FROM filings WHERE matter = ?",
    "message deliveries": "SELECT recipient, envelope_from FROM deliveries WHERE message = ? ORDER BY id",
    "message events": "SELECT time, kind, queue_id, detail FROM events WHERE message = ? ORDER BY id",
}


def plan(store: Store, sql: str) -> str:
    rows = store.db.conn.execute("EXPLAIN QUERY PLAN " + sql, [None] * sql.count("?")).fetchall()
    return "; ".join(r[3] for r in rows)


def is_scan(p: str) -> bool:
    return any(step.strip().startswith("SCAN") and "CONSTANT ROW" not in step for step in p.split(";"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--persons", type=int, default=100_000)
    ap.add_argument("--matters", type=int, default=50_000)
    ap.add_argument("--aliases", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=10, help="rounds over all shapes (default 10)")
    ap.add_argument("--per-round", type=int, default=500, help="route() calls per shape, store and round (default 500)")
    args = ap.parse_args()

    d = Path(tempfile.mkdtemp(prefix="mattermail-bench-scale-"))
    stores: dict[str, Store] = {}
    try:
        cfg = config()
        rules = RouterRules.from_config(cfg)
        stores["small"] = small_store(d)
        stores["loaded"], load_s = loaded_store(d, args.persons, args.matters, args.aliases)
        size_mb = (d / "loaded.sqlite").stat().st_size / 1e6
        stmts = {name: check(s, cfg, rules, name) for name, s in stores.items()}
        msgs = {shape: message(rcpt, sender, subject) for shape, (rcpt, sender, subject, _) in SHAPES.items()}
        samples: dict[tuple[str, str], list[float]] = {(n, sh): [] for n in stores for sh in SHAPES}
        for rnd in range(args.rounds + 1):  # round 0 is the warm-up
            for shape, (rcpt, sender, _s, _w) in SHAPES.items():
                raw = msgs[shape]
                for _ in range(args.per_round if rnd else 100):
                    for name, store in stores.items():  # alternate call by call: no drift between the two
                        t0 = time.perf_counter_ns()
                        route(raw, rcpt, store, cfg, envelope_from=sender, capture_secret=SECRET, rules=rules)
                        if rnd:
                            samples[name, shape].append((time.perf_counter_ns() - t0) / 1000)
        plans = {name: plan(stores["loaded"], sql) for name, sql in ROUTER_QUERIES.items()}
        ctl_scans = [name for name, sql in CTL_QUERIES.items() if is_scan(plan(stores["loaded"], sql))]
    finally:
        for s in stores.values():
            s.close()
        shutil.rmtree(d, ignore_errors=True)

    n = args.rounds * args.per_round
    print(f"mattermail router scale bench: Python {sys.version.split()[0]}, SQLite {__import__('sqlite3').sqlite_version}, "
          f"{os.cpu_count()} CPUs")
    print(f"bulk load: {args.persons:,} persons + {args.persons:,} addresses, {args.matters:,} matters, "
          f"{args.aliases:,} aliases: {load_s:.2f} s (executemany, one transaction; {size_mb:.1f} MB)")
    print(f"route() per 4 KB message, no writes; {n} calls per shape and store, the stores alternating; "
          f"checked: every shape files as expected in both; <= {max(stmts.values())} SQL statements per call")
    print()
    print(f"{'µs per message':<18} {'small: p50':>10} {'p99':>7}  {'loaded: p50':>11} {'p99':>7}  {'ratio p50':>9} {'p99':>5}")
    ratios = []
    for shape in SHAPES:
        s, big = samples["small", shape], samples["loaded", shape]
        r50, r99 = statistics.median(big) / statistics.median(s), pct(big, 99) / pct(s, 99)
        ratios.append(r50)
        print(f"{shape:<18} {statistics.median(s):>10.0f} {pct(s, 99):>7.0f}  {statistics.median(big):>11.0f} "
              f"{pct(big, 99):>7.0f}  {r50:>9.2f} {r99:>5.2f}")
    print()
    print("EXPLAIN QUERY PLAN (loaded store) of the router's per-message lookups; full table scans: "
          + (", ".join(n for n, p in plans.items() if is_scan(p)) or "none"))
    for name, p in plans.items():
        print(f"  {name:<29} {'FULL SCAN: ' if is_scan(p) else ''}{p}")
    print("mattermailctl/directory lookups with a full table scan (not per message): "
          + (", ".join(ctl_scans) or "none"))
    print()
    print(f"resolution loaded/small (median, worst shape): {max(ratios):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
