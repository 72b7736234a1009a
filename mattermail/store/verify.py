"""``mattermailctl store verify``: walk the records chain and re-hash every raw message (its file, or its row).

One read transaction (a WAL snapshot) sees the chain and the tables as of one commit, so it runs while
the router writes. The chain is replayed (which messages are live with which SHA-256, which filings and
holds they have) and compared with the messages, filings and holds tables; then each live message's raw
bytes are re-hashed: its row's (``messages.raw``, a small message) or its file's. Raw files are named by
their SHA-256 and never rewritten: a file missing because a message was deleted after the snapshot is
re-checked and not reported.

Every problem names the chain entry (seq), the message, its file and the event; they come sorted by
entry, so the first is the first place the record diverges.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from mattermail.store import chain
from mattermail.store.engine import Store
from mattermail.store.messages import raw_where


@dataclass(frozen=True)
class Problem:
    seq: int | None  # the chain entry it concerns (None: a row no entry accounts for)
    message: int | None
    file: str | None
    event: str | None
    what: str

    def line(self) -> str:
        where = [f"entry {self.seq}" if self.seq is not None else "no entry"]
        if self.event:
            where.append(self.event)
        if self.message is not None:
            where.append(f"message {self.message}")
        if self.file:
            where.append(f"file {self.file}")
        return f"{', '.join(where)}: {self.what}"


@dataclass
class Report:
    length: int = 0
    head: str = chain.GENESIS
    messages: int = 0
    files: int = 0
    filings: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _hash_file(path: str) -> str | None:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except FileNotFoundError:
        return None
    return h.hexdigest()


def _ftuple(d: dict) -> tuple:
    return (d.get("matter"), d.get("person"), d.get("rule") or "", d.get("recipient") or "", d.get("detail") or "")


def _fname(t: tuple) -> str:
    parts = [f"matter {t[0]}" if t[0] else "", f"person #{t[1]}" if t[1] is not None else ""]
    return "filing (" + ", ".join(p for p in parts if p) + f", rule {t[2]})"


Wrap = Callable[[list[tuple[int, str]]], Iterable[tuple[int, str]]]


def verify(store: Store, wrap: Wrap | None = None, expect: Iterable[tuple[int, str]] = ()) -> Report:
    """Check the store; ``wrap`` wraps the (message id, sha256) list being re-hashed (a progress bar).

    ``expect``: (length, digest) heads recorded earlier outside the server (``store verify --head``): entry
    ``length`` must still carry that hash, else the chain was rewritten from there (hashes recomputed)."""
    rep = Report()
    wanted = dict(expect)
    db = store.db
    live: dict[int, tuple[str, int]] = {}  # message -> (sha256, entry that stored it)
    filings: dict[int, dict[tuple, int]] = {}  # message -> filing -> entry
    holds: dict[str, int] = {}
    problems = rep.problems
    db.begin_snapshot()  # one snapshot for the chain and the tables
    try:
        prev_seq, prev_hash = 0, chain.GENESIS
        for e in chain.entries(db):
            rep.length += 1
            fpath = str(store.blob_path(e.sha256)) if e.sha256 else None
            if e.seq != prev_seq + 1:
                gap = f"{prev_seq + 1}" if e.seq == prev_seq + 2 else f"{prev_seq + 1}-{e.seq - 1}"
                problems.append(Problem(e.seq, e.message, fpath, e.kind,
                                        f"entry {gap} before it is missing (removed from the chain)"))
            elif e.prev_hash != prev_hash:
                problems.append(Problem(e.seq, e.message, fpath, e.kind,
                                        f"does not follow entry {prev_seq} (entries reordered, or entry {prev_seq} "
                                        "altered)"))
            if e.expected_hash() != e.hash:
                problems.append(Problem(e.seq, e.message, fpath, e.kind,
                                        "its hash does not match its contents (entry altered, or moved here from "
                                        "another position)"))
            if e.seq in wanted and wanted.pop(e.seq) != e.hash:
                problems.append(Problem(e.seq, e.message, fpath, e.kind,
                                        "its hash is not the head recorded for length "
                                        f"{e.seq} (the chain was rewritten from here or before)"))
            prev_seq, prev_hash = e.seq, e.hash
            _replay(e, live, filings, holds)
        rep.head = prev_hash
        for length in sorted(wanted):
            problems.append(Problem(length, None, None, None, f"the chain has no entry {length}, but a head of "
                                                              f"that length was recorded (entries removed)"))
        in_rows = _compare(store, rep, live, filings, holds)
        todo = sorted((mid, sha) for mid, (sha, _) in live.items())
    finally:
        if db.in_transaction:
            db.execute("COMMIT")
    missing: list[tuple[int, str]] = []
    for mid, sha in (wrap(todo) if wrap else todo):
        # a small message is kept in its row (messages.raw), not a file: read only for those the snapshot saw so
        inline = _inline_raw(store, mid) if mid in in_rows else None
        got = hashlib.sha256(inline).hexdigest() if inline is not None else _hash_file(str(store.blob_path(sha)))
        rep.files += 1
        if got is None:
            missing.append((mid, sha))
        elif got != sha:
            problems.append(Problem(live[mid][1], mid, raw_where(store, sha, inline is not None), "stored",
                                    f"raw {'message' if inline is not None else 'file'} altered (its SHA-256 is "
                                    f"now {got}, the chain has {sha})"))
    for mid, sha in missing:  # deleted since the snapshot? (files are removed only after the chain says so)
        if store.db.execute("SELECT 1 FROM messages WHERE id = ? AND sha256 = ?", [mid, sha]).fetchone() is None \
                and store.db.execute("SELECT 1 FROM chain WHERE message = ? AND kind = 'deleted'",
                                     [mid]).fetchone() is not None:
            continue
        problems.append(Problem(live[mid][1], mid, str(store.blob_path(sha)), "stored", "raw file missing"))
    problems.sort(key=lambda p: (p.seq if p.seq is not None else 1 << 62))
    return rep


def _inline_raw(store: Store, message: int) -> bytes | None:
    row = store.db.execute("SELECT raw FROM messages WHERE id = ? AND raw IS NOT NULL", [message]).fetchone()
    return bytes(row[0]) if row is not None else None


def _replay(e: chain.ChainEntry, live: dict, filings: dict, holds: dict) -> None:
    d = e.details
    if e.kind == "stored" and e.message is not None:
        live[e.message] = (e.sha256, e.seq)
    elif e.kind == "filed" and e.message is not None:
        filings.setdefault(e.message, {})[_ftuple(d)] = e.seq
    elif e.kind == "refiled" and e.message is not None:
        filings[e.message] = {_ftuple(f): e.seq for f in d.get("to", [])}
    elif e.kind == "deleted" and e.message is not None:
        live.pop(e.message, None)
        filings.pop(e.message, None)
    elif e.kind == "hold":
        holds[str(d.get("matter"))] = e.seq
    elif e.kind == "release":
        holds.pop(str(d.get("matter")), None)


def _compare(store: Store, rep: Report, live: dict, filings: dict, holds: dict) -> set[int]:
    """Compare the tables with the replayed chain (problems into ``rep``); the ids of the messages kept in
    their rows."""
    db, problems = store.db, rep.problems
    seen: set[int] = set()
    in_rows: set[int] = set()
    for mid, sha, inline in db.execute("SELECT id, sha256, raw IS NOT NULL FROM messages ORDER BY id").fetchall():
        rep.messages += 1
        seen.add(mid)
        if inline:
            in_rows.add(mid)
        path = raw_where(store, sha, bool(inline))
        if mid not in live:
            problems.append(Problem(None, mid, path, None,
                                    "in the messages table but in no chain entry (planted, or its entry removed)"))
        elif live[mid][0] != sha:
            problems.append(Problem(live[mid][1], mid, path, "stored",
                                    f"the messages table says SHA-256 {sha}, the chain {live[mid][0]}"))
    for mid, (sha, seq) in live.items():
        if mid not in seen:
            problems.append(Problem(seq, mid, str(store.blob_path(sha)), "stored",
                                    "missing from the messages table (removed without a chain entry)"))
    table: dict[int, Counter] = {}
    for row in db.execute("SELECT message, matter, person, rule, recipient, detail FROM filings"):
        rep.filings += 1
        table.setdefault(row[0], Counter())[(row[1], row[2], row[3] or "", row[4] or "", row[5] or "")] += 1
    for mid in sorted(set(table) | set(filings)):
        expected = filings.get(mid, {})
        have = table.get(mid, Counter())
        sha = live.get(mid, ("", 0))[0]
        path = str(store.blob_path(sha)) if sha else None
        for t, seq in expected.items():
            if have.get(t, 0) < 1:
                problems.append(Problem(seq, mid, path, "filed" if seq else None,
                                        f"{_fname(t)} missing from the filings table"))
        for t, n in have.items():
            if t not in expected or n > 1:
                problems.append(Problem(None, mid, path, None, f"{_fname(t)} is in the filings table but in no "
                                                                "chain entry (added or changed outside the record)"))
    now = {m for (m,) in db.execute("SELECT matter FROM holds")}
    for m, seq in holds.items():
        if m not in now:
            problems.append(Problem(seq, None, None, "hold", f"the legal hold on matter {m} is gone without a "
                                                             "release entry"))
    for m in now - set(holds):
        problems.append(Problem(None, None, None, None, f"a legal hold on matter {m} has no chain entry"))
    return in_rows


def iter_problems(rep: Report) -> Iterator[str]:
    for p in rep.problems:
        yield p.line()
