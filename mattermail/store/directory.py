"""Persons, matters, aliases, filings and the event log: the store's directory.

Plain functions over :class:`~mattermail.store.engine.Store`; errors a person
can fix raise :class:`~mattermail.store.engine.UserError` with the field
named. Every lookup the router does has an index (see migration 4).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from mattermail import validate
from mattermail.store import chain
from mattermail.store.engine import Store, UserError, normalise_address, transaction
from mattermail.store.threads import thread_filings


@dataclass(frozen=True)
class Person:
    id: int
    name: str
    addresses: tuple[str, ...]  # the first is the primary address

    @property
    def email(self) -> str:
        return self.addresses[0] if self.addresses else ""


@dataclass(frozen=True)
class Matter:
    id: str
    title: str
    status: str
    persons: tuple[str, ...]  # primary addresses


@dataclass(frozen=True)
class Alias:
    address: str
    person: str | None  # primary address of the person
    matter: str | None


@dataclass(frozen=True)
class Filing:
    message: int
    matter: str | None
    person: int | None
    rule: str
    recipient: str
    detail: str = ""


# -- persons --------------------------------------------------------------------------------


def _person(store: Store, pid: int) -> Person | None:
    row = store.db.execute("SELECT id, name FROM persons WHERE id = ?", [pid]).fetchone()
    if row is None:
        return None
    addrs = [r[0] for r in store.db.execute(
        "SELECT address FROM person_addresses WHERE person = ? ORDER BY position, address", [pid])]
    return Person(row[0], row[1] or "", tuple(addrs))


def person_by_email(store: Store, email: str) -> Person | None:
    """The person whose primary (or, failing that, any) address this is; lowest id when shared."""
    rows = store.db.execute(
        "SELECT person FROM person_addresses WHERE address = ? ORDER BY position, person",
        [normalise_address(email)]).fetchall()
    return _person(store, rows[0][0]) if rows else None


def persons_for_address(store: Store, address: str) -> list[Person]:
    """Every person with this address, in a deterministic order (lowest id first)."""
    rows = store.db.execute("SELECT person FROM person_addresses WHERE address = ? ORDER BY person",
                            [normalise_address(address)]).fetchall()
    return [p for p in (_person(store, r[0]) for r in rows) if p is not None]


def add_person(store: Store, email: str, name: str = "", others: Sequence[str] = ()) -> Person:
    addresses = [normalise_address(email)] + [normalise_address(a) for a in others if normalise_address(a) != normalise_address(email)]
    with transaction(store):
        if store.db.execute("SELECT 1 FROM person_addresses WHERE address = ? AND position = 0",
                            [addresses[0]]).fetchone():
            raise UserError(f"email: a person with primary address {addresses[0]} already exists")
        pid = store.db.insert("INSERT INTO persons (name, created) VALUES (?, ?)", [name, time.time()])
        for i, a in enumerate(dict.fromkeys(addresses)):
            store.db.execute("INSERT INTO person_addresses (person, address, position) VALUES (?, ?, ?)", [pid, a, i])
    person = _person(store, pid)
    assert person is not None
    return person


def edit_person(store: Store, email: str, name: str | None = None, add: Sequence[str] = (),
                remove: Sequence[str] = ()) -> Person:
    person = person_by_email(store, email)
    if person is None:
        raise UserError(f"email: no person with address {normalise_address(email)}")
    with transaction(store):
        if name is not None:
            store.db.execute("UPDATE persons SET name = ? WHERE id = ?", [name, person.id])
        for a in remove:
            a = normalise_address(a)
            if a == person.email:
                raise UserError(f"--remove-email: {a} is the primary address; remove the person instead")
            store.db.execute("DELETE FROM person_addresses WHERE person = ? AND address = ?", [person.id, a])
        pos = len(person.addresses)
        for a in add:
            store.db.execute("INSERT INTO person_addresses (person, address, position) VALUES (?, ?, ?) "
                             "ON CONFLICT DO NOTHING",
                             [person.id, normalise_address(a), pos])
            pos += 1
    updated = _person(store, person.id)
    assert updated is not None
    return updated


def remove_person(store: Store, email: str) -> None:
    person = person_by_email(store, email)
    if person is None:
        raise UserError(f"email: no person with address {normalise_address(email)}")
    with transaction(store):
        if store.db.execute("SELECT 1 FROM aliases WHERE person = ?", [person.id]).fetchone():
            raise UserError(f"email: {person.email} still has aliases; remove them first")
        store.db.execute("DELETE FROM matter_persons WHERE person = ?", [person.id])
        store.db.execute("DELETE FROM person_addresses WHERE person = ?", [person.id])
        store.db.execute("DELETE FROM persons WHERE id = ?", [person.id])


def list_persons(store: Store) -> list[Person]:
    return [p for p in (_person(store, r[0]) for r in store.db.execute("SELECT id FROM persons ORDER BY id"))
            if p is not None]


# -- matters ---------------------------------------------------------------------------------


def get_matter(store: Store, matter_id: str) -> Matter | None:
    row = store.db.execute("SELECT id, title, status FROM matters WHERE id = ?", [matter_id]).fetchone()
    if row is None:
        return None
    persons = [r[0] for r in store.db.execute(
        "SELECT pa.address FROM matter_persons mp JOIN person_addresses pa ON pa.person = mp.person "
        "AND pa.position = 0 WHERE mp.matter = ? ORDER BY pa.address", [matter_id])]
    return Matter(row[0], row[1], row[2], tuple(persons))


def _check_matter_id(matter_id: str) -> None:
    try:
        validate.matter_id(matter_id)
    except validate.Invalid as e:
        raise UserError(f"id: {matter_id!r} is not a valid matter id: {e}") from None


def _person_ids(store: Store, emails: Sequence[str], field: str) -> list[int]:
    """The ids of the persons with these addresses; a UserError naming ``field`` for an unknown one."""
    pids = []
    for email in emails:
        p = person_by_email(store, email)
        if p is None:
            raise UserError(f"{field}: no person with address {normalise_address(email)}")
        pids.append(p.id)
    return pids


def add_matter(store: Store, matter_id: str, title: str, persons: Sequence[str] = ()) -> Matter:
    _check_matter_id(matter_id)
    if not title.strip():
        raise UserError("--title: a matter needs a title")
    pids = _person_ids(store, persons, "--person")
    with transaction(store):
        if store.db.execute("SELECT 1 FROM matters WHERE id = ?", [matter_id]).fetchone():
            raise UserError(f"id: matter {matter_id} already exists")
        store.db.execute("INSERT INTO matters (id, title, status, created) VALUES (?, ?, 'open', ?)",
                         [matter_id, title, time.time()])
        for pid in dict.fromkeys(pids):
            store.db.execute("INSERT INTO matter_persons (matter, person) VALUES (?, ?)", [matter_id, pid])
    m = get_matter(store, matter_id)
    assert m is not None
    return m


def set_matter_status(store: Store, matter_id: str, status: str) -> Matter:
    if status not in ("open", "closed"):
        raise UserError("status: must be open or closed")
    if store.db.execute("UPDATE matters SET status = ? WHERE id = ?", [status, matter_id]).rowcount == 0:
        raise UserError(f"id: no matter {matter_id}")
    m = get_matter(store, matter_id)
    assert m is not None
    return m


def list_matters(store: Store, status: str | None = None) -> list[Matter]:
    q = "SELECT id FROM matters" + (" WHERE status = ?" if status else "") + " ORDER BY id"
    return [m for m in (get_matter(store, r[0]) for r in store.db.execute(q, [status] if status else []))
            if m is not None]


# -- aliases ----------------------------------------------------------------------------------


def add_alias(store: Store, address: str, catchall_domains: Iterable[str], person: str | None = None,
              matter: str | None = None) -> Alias:
    address = normalise_address(address)
    domains = {d.lower() for d in catchall_domains}
    if address.rpartition("@")[2] not in domains:
        raise UserError(f"address: {address} is not in a catch-all domain ({', '.join(sorted(domains)) or 'none configured'})")
    if (person is None) == (matter is None):
        raise UserError("give exactly one of --person or --matter")
    pid = None
    if person is not None:
        p = person_by_email(store, person)
        if p is None:
            raise UserError(f"--person: no person with address {normalise_address(person)}")
        pid = p.id
    if matter is not None and get_matter(store, matter) is None:
        raise UserError(f"--matter: no matter {matter}")
    with transaction(store):
        if store.db.execute("SELECT 1 FROM aliases WHERE address = ?", [address]).fetchone():
            raise UserError(f"address: alias {address} already exists")
        store.db.execute("INSERT INTO aliases (address, person, matter, created) VALUES (?, ?, ?, ?)",
                         [address, pid, matter, time.time()])
    return Alias(address, normalise_address(person) if person else None, matter)


def get_alias(store: Store, address: str) -> Alias | None:
    row = store.db.execute(
        "SELECT a.address, pa.address, a.matter FROM aliases a LEFT JOIN person_addresses pa "
        "ON pa.person = a.person AND pa.position = 0 WHERE a.address = ?", [normalise_address(address)]).fetchone()
    return Alias(row[0], row[1], row[2]) if row else None


def remove_alias(store: Store, address: str) -> None:
    if store.db.execute("DELETE FROM aliases WHERE address = ?", [normalise_address(address)]).rowcount == 0:
        raise UserError(f"address: no alias {normalise_address(address)}")


def list_aliases(store: Store) -> list[Alias]:
    rows = store.db.execute(
        "SELECT a.address, pa.address, a.matter FROM aliases a LEFT JOIN person_addresses pa "
        "ON pa.person = a.person AND pa.position = 0 ORDER BY a.address").fetchall()
    return [Alias(*r) for r in rows]


# -- filings and events --------------------------------------------------------------------------


def filing_key(f: Filing) -> tuple:
    """What makes a filing unique (the index ``filings_once``): message, matter, person, recipient."""
    return (f.message, f.matter or "", f.person or 0, f.recipient)


def record_filing(store: Store, f: Filing, sha256: str | None = None, fresh: bool = False) -> bool:
    """Record a filing once (a redelivery files nothing twice); True when it is new. Call inside a transaction.
    A new filing appends its ``filed`` chain entry (``sha256``: the message's, when the caller has it).
    ``fresh``: the caller inserted the message in this transaction and records each :func:`filing_key` once,
    so the filing is new: nothing to wait for (``db.defer``)."""
    sql = ("INSERT INTO filings (message, matter, person, rule, recipient, detail, created) "
           "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING")
    values = [f.message, f.matter, f.person, f.rule, f.recipient, f.detail, time.time()]
    with chain.atomic(store):
        if fresh:
            store.db.defer(sql, values, merge=True)
        elif store.db.execute(sql, values).rowcount != 1:
            return False
        chain.append(store, "filed", f.message, _sha256_of(store, f.message) if sha256 is None else sha256,
                     chain.filing_detail(f.matter, f.person, f.rule, f.recipient, f.detail))
    return True


def _sha256_of(store: Store, message: int) -> str:
    row = store.db.execute("SELECT sha256 FROM messages WHERE id = ?", [message]).fetchone()
    return row[0] if row else ""


def filings_for(store: Store, message: int) -> list[Filing]:
    rows = store.db.execute("SELECT message, matter, person, rule, recipient, detail FROM filings "
                            "WHERE message = ? ORDER BY id", [message]).fetchall()
    return [Filing(*r) for r in rows]


def log_event(store: Store, kind: str, detail: dict | str, message: int | None = None, queue_id: str = "",
              sha256: str | None = None) -> None:
    """An events row; an ``unfiled`` or ``personal`` outcome for a message also appends its chain entry
    (``sha256``: the message's, when the caller has it)."""
    text = detail if isinstance(detail, str) else json.dumps(detail, sort_keys=True)
    chained = kind in ("unfiled", "personal") and message is not None
    with chain.atomic(store) if chained else contextlib.nullcontext():
        store.db.defer("INSERT INTO events (time, kind, message, queue_id, detail) VALUES (?, ?, ?, ?, ?)",
                       [time.time(), kind, message, queue_id, text])
        if chained:
            d = detail if isinstance(detail, dict) else {}
            chain.append(store, kind, message, _sha256_of(store, message) if sha256 is None else sha256,
                         {k: d[k] for k in ("recipient", "reason", "source") if k in d} | {"queue_id": queue_id})


# -- bulk imports (mattermailctl person import / matter import) -----------------------------------


def import_persons(store: Store, rows: Sequence[tuple[str, str, Sequence[str]]]) -> int:
    """Add every ``(email, name, other addresses)`` row in ONE transaction: all or nothing.

    The caller validates first (so its errors can name a CSV line); a clash found
    here (e.g. a person added meanwhile) still rolls the whole import back.
    """
    with transaction(store):
        now = time.time()
        for email, name, others in rows:
            primary = normalise_address(email)
            if store.db.execute("SELECT 1 FROM person_addresses WHERE address = ? AND position = 0",
                                [primary]).fetchone():
                raise UserError(f"email: a person with primary address {primary} already exists")
            pid = store.db.insert("INSERT INTO persons (name, created) VALUES (?, ?)", [name, now])
            for i, a in enumerate(dict.fromkeys([primary, *(normalise_address(o) for o in others)])):
                store.db.execute("INSERT INTO person_addresses (person, address, position) VALUES (?, ?, ?)",
                                 [pid, a, i])
    return len(rows)


def import_matters(store: Store, rows: Sequence[tuple[str, str, Sequence[str]]]) -> int:
    """Add every ``(id, title, person addresses)`` row in ONE transaction: all or nothing."""
    with transaction(store):
        now = time.time()
        for matter_id, title, persons in rows:
            _check_matter_id(matter_id)
            if not title.strip():
                raise UserError("title: a matter needs a title")
            if store.db.execute("SELECT 1 FROM matters WHERE id = ?", [matter_id]).fetchone():
                raise UserError(f"id: matter {matter_id} already exists")
            pids = _person_ids(store, persons, "persons")
            store.db.execute("INSERT INTO matters (id, title, status, created) VALUES (?, ?, 'open', ?)",
                             [matter_id, title, now])
            for pid in dict.fromkeys(pids):
                store.db.execute("INSERT INTO matter_persons (matter, person) VALUES (?, ?)", [matter_id, pid])
    return len(rows)


# -- the router's questions (each one indexed query) -----------------------------------------------


class Lookups:
    """The routing rules' directory questions (router/rules.py ``Lookups``), each one indexed query.

    ``cached=True`` (the router's batches, one per batch transaction): each alias, matter and address is
    read once and its answer kept for the batch. SQLite's batch holds the write lock, so nothing changes
    the directory meanwhile; on PostgreSQL a change committed during the batch (a few milliseconds) is seen
    by the next batch, as if the batch had been filed just before it. Thread look-ups are never cached
    (the batch's own messages add thread keys)."""

    def __init__(self, store: Store, cached: bool = False) -> None:
        self._db = store.db
        self._store = store
        self._memo: dict[tuple[str, str], Any] | None = {} if cached else None

    def _cached(self, kind: str, key: str, read: Callable[[], Any]) -> Any:
        if self._memo is None:
            return read()
        k = (kind, key)
        if k not in self._memo:
            self._memo[k] = read()
        return self._memo[k]

    def alias(self, address: str) -> tuple[int | None, str | None] | None:
        def read() -> tuple[int | None, str | None] | None:
            row = self._db.execute("SELECT person, matter FROM aliases WHERE address = ?",
                                   [normalise_address(address)]).fetchone()
            return (row[0], row[1]) if row else None

        return self._cached("alias", address, read)

    def matter_status(self, matter_id: str) -> str | None:
        def read() -> str | None:
            row = self._db.execute("SELECT status FROM matters WHERE id = ?", [matter_id]).fetchone()
            return row[0] if row else None

        return self._cached("matter", matter_id, read)

    def persons(self, address: str) -> list[int]:
        def read() -> tuple[int, ...]:
            return tuple(r[0] for r in self._db.execute(
                "SELECT person FROM person_addresses WHERE address = ? ORDER BY person", [normalise_address(address)]))

        return list(self._cached("persons", address, read))

    def thread(self, kind: str, key: str) -> list[tuple[str, int, str]]:
        """(matter, message id, sha256) of the stored messages with this thread key, newest first
        (store/threads.py)."""
        return [(h.matter, h.message, h.sha256) for h in thread_filings(self._store, kind, key)]


def forwarded_recipients(store: Store, message: int) -> set[str]:
    """The recipients whose unfiled notice for ``message`` was already forwarded (events ``forwarded``)."""
    done: set[str] = set()
    for (detail,) in store.db.execute("SELECT detail FROM events WHERE message = ? AND kind = 'forwarded'",
                                      [message]):
        done.update(json.loads(detail).get("recipients", []))
    return done


def filed_message_count(store: Store, matter_id: str) -> int:
    """How many distinct messages are filed against the matter."""
    row = store.db.execute("SELECT COUNT(DISTINCT message) FROM filings WHERE matter = ?", [matter_id]).fetchone()
    return int(row[0])
