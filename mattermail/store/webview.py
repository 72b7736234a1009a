"""The queries mattermail-web serves (its JSON API and its pages), each behind the ethical walls.

Every listing, count and search here applies :func:`mattermail.store.access.visible_sql` for the viewer,
so a screened user's counts and searches never include a walled matter's messages. Order: newest first
by the message's time (:func:`mattermail.store.listing.message_datetime`), then id; pages by offset.

A matter's or person's messages are selected with ``m.id IN (SELECT message FROM filings WHERE matter = ?)``
(evaluated once, by the matter index), never a correlated ``EXISTS`` on the matter (which walks the
matter's filings once per message: quadratic in the matter's size).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mattermail.store import listing, records
from mattermail.store.access import Viewer, visible_sql, walled_matters
from mattermail.store.directory import Matter, Person
from mattermail.store.engine import Store, UserError
from mattermail.store.listing import _COLUMNS, UNFILED, MessageSummary, _summary

@dataclass(frozen=True)
class MatterRow:
    matter: Matter
    messages: int  # how many messages of it the viewer may see


@dataclass(frozen=True)
class PersonRow:
    person: Person
    messages: int


@dataclass(frozen=True)
class Page:
    total: int
    offset: int
    items: tuple[MessageSummary, ...]


def list_matters(store: Store, v: Viewer) -> list[MatterRow]:
    """The matters ``v`` may see, by id, each with the count of its messages ``v`` may see."""
    walled = walled_matters(store, v)
    cond, params = visible_sql(v)
    counts = dict(store.db.execute(
        f"SELECT f.matter, COUNT(DISTINCT f.message) FROM filings f JOIN messages m ON m.id = f.message "
        f"WHERE f.matter IS NOT NULL AND {cond} GROUP BY f.matter", params).fetchall())
    persons: dict[str, list[str]] = {}
    for matter, address in store.db.execute(
            "SELECT mp.matter, pa.address FROM matter_persons mp JOIN person_addresses pa ON pa.person = mp.person "
            "AND pa.position = 0 ORDER BY mp.matter, pa.address"):
        persons.setdefault(matter, []).append(address)
    out = []
    for mid, title, status in store.db.execute("SELECT id, title, status FROM matters ORDER BY id"):
        if mid in walled:
            continue
        out.append(MatterRow(Matter(mid, title, status, tuple(persons.get(mid, ()))), int(counts.get(mid, 0))))
    return out


def _page(store: Store, where: str, params: list[Any], offset: int, limit: int) -> Page:
    total = store.db.execute(f"SELECT COUNT(*) FROM messages m WHERE {where}", params).fetchone()[0]
    rows = store.db.execute(
        f"SELECT {_COLUMNS} FROM messages m WHERE {where} "
        f"ORDER BY m.sort_time DESC, m.id DESC LIMIT ? OFFSET ?", [*params, limit, offset])
    return Page(int(total), offset, tuple(_summary(r) for r in rows))


def matter_messages(store: Store, v: Viewer, matter: str, offset: int = 0, limit: int = 50) -> Page:
    """The messages filed to ``matter`` that ``v`` may see, newest first (the caller checked the matter)."""
    cond, params = visible_sql(v)
    return _page(store, f"m.id IN (SELECT f.message FROM filings f WHERE f.matter = ?) AND {cond}",
                 [matter, *params], offset, limit)


def list_persons(store: Store, v: Viewer) -> list[PersonRow]:
    """Every person, with the count of messages filed to them that ``v`` may see."""
    cond, params = visible_sql(v)
    counts = dict(store.db.execute(
        f"SELECT f.person, COUNT(DISTINCT f.message) FROM filings f JOIN messages m ON m.id = f.message "
        f"WHERE f.person IS NOT NULL AND {cond} GROUP BY f.person", params).fetchall())
    addrs: dict[int, list[str]] = {}
    for pid, address in store.db.execute("SELECT person, address FROM person_addresses ORDER BY person, position, "
                                         "address"):
        addrs.setdefault(pid, []).append(address)
    return [PersonRow(Person(pid, name or "", tuple(addrs.get(pid, ()))), int(counts.get(pid, 0)))
            for pid, name in store.db.execute("SELECT id, name FROM persons ORDER BY id")]


def get_person(store: Store, pid: int) -> Person | None:
    row = store.db.execute("SELECT id, name FROM persons WHERE id = ?", [pid]).fetchone()
    if row is None:
        return None
    addrs = tuple(r[0] for r in store.db.execute(
        "SELECT address FROM person_addresses WHERE person = ? ORDER BY position, address", [pid]))
    return Person(row[0], row[1] or "", addrs)


def person_messages(store: Store, v: Viewer, pid: int, offset: int = 0, limit: int = 50) -> Page:
    cond, params = visible_sql(v)
    return _page(store, f"m.id IN (SELECT f.message FROM filings f WHERE f.person = ?) AND {cond}",
                 [pid, *params], offset, limit)


def unfiled(store: Store, offset: int = 0, limit: int = 50) -> Page:
    """The unfiled queue (:data:`mattermail.store.listing.UNFILED`): for admins only (the caller checks)."""
    return _page(store, UNFILED, [], offset, limit)


def visible_message(store: Store, v: Viewer, message: int) -> MessageSummary | None:
    """The message, when it exists and ``v`` may see it; None otherwise (the caller answers 404 either way)."""
    cond, params = visible_sql(v)
    row = store.db.execute(f"SELECT {_COLUMNS} FROM messages m WHERE m.id = ? AND {cond}",
                           [message, *params]).fetchone()
    return _summary(row) if row else None


def visible_ids(store: Store, v: Viewer, ids: list[int]) -> set[int]:
    if not ids:
        return set()
    cond, params = visible_sql(v)
    out: set[int] = set()
    for i in range(0, len(ids), 500):
        chunk = ids[i:i + 500]
        marks = ", ".join("?" for _ in chunk)
        out.update(r[0] for r in store.db.execute(f"SELECT m.id FROM messages m WHERE m.id IN ({marks}) AND {cond}",
                                                  [*chunk, *params]))
    return out


def search(store: Store, v: Viewer, text: str, offset: int = 0, limit: int = 50,
           matter: str | None = None) -> tuple[list[listing.SearchHit], bool]:
    """The store's full-text search (:func:`mattermail.store.listing.search`), only what ``v`` may see, best
    first: hits ``offset`` to ``offset + limit`` and whether there are more. Hidden messages are dropped
    before paging, so counts and pages say nothing about them."""
    want = offset + limit + 1
    fetch = max(want * 2, 100)
    while True:
        hits = listing.search(store, text, matter=matter, limit=fetch)
        ok = visible_ids(store, v, [h.message.id for h in hits])
        shown = [h for h in hits if h.message.id in ok]
        if len(shown) >= want or len(hits) < fetch:
            return shown[offset:offset + limit], len(shown) > offset + limit
        fetch *= 4


def refile(store: Store, message: int, matter: str, reason: str, actor: str) -> None:
    """Refile (records.refile_message) with ``actor`` named in the records chain (``web:<login>``)."""
    if not reason.strip():
        raise UserError("reason: give the reason (it is kept in the records chain)")
    before = store.actor
    store.actor = actor
    try:
        records.refile_message(store, message, matter, None, reason)
    finally:
        store.actor = before


def body_text(store: Store, message: int) -> str:
    """The readable text the router extracted when it filed the message (what search indexes)."""
    row = store.db.execute("SELECT body_text FROM messages WHERE id = ?", [message]).fetchone()
    return (row[0] or "") if row else ""


def walled_matters_of(store: Store, ids: list[int]) -> set[str]:
    """The walled matters these messages are filed to (an admin's search that shows them is logged)."""
    if not ids:
        return set()
    marks = ", ".join("?" for _ in ids)
    return {r[0] for r in store.db.execute(
        f"SELECT DISTINCT f.matter FROM filings f JOIN matter_access a ON a.matter = f.matter "
        f"WHERE f.message IN ({marks})", ids)}


def warm_sort_keys(store: Store) -> int:
    """How many messages the store has (logged at service start). Sort keys are stored with each message
    (``messages.sort_time``), so there is nothing to compute."""
    return int(store.db.execute("SELECT COUNT(*) FROM messages").fetchone()[0])