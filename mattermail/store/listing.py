"""What people read: list, show, search and export the stored messages.

Every query behind ``mattermailctl messages`` (and the ``unfiled`` definition ``status`` counts with) lives
here; callers get frozen dataclasses and never see SQL, a rowid or FTS5 syntax, so a PostgreSQL store can
offer the same functions.

A message's *time* (:func:`message_datetime`, msgtime.py) is its ``Date`` header in UTC (a header without a
zone is read as UTC), or the time it was stored when the header is missing or unreadable. It is stored with
the row as sortable text (``messages.sort_time``, indexed; migration 12), so listings filter by date, order
and limit in SQL on either engine, and an index serves "newest N".

A message's *status*: ``filed`` (it has filings), ``personal`` (no filings, a ``personal`` event: a capture
copy with no known correspondent) or ``unfiled`` (neither). ``unfiled`` as a list filter and as the status
count (:data:`UNFILED`, :func:`count_unfiled`) also leaves out system mail (bounces, auto-replies).

Size: over 400 lines because list, show, search and export share one set of row types and
filters; splitting them would split the one definition of what a listing means ("unfiled", order).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Any

from mattermail.store import fulltext
from mattermail.store.chain import ChainEntry, history
from mattermail.store.engine import Store
from mattermail.store.msgtime import message_datetime, time_key

# -- the one definition of "unfiled" -----------------------------------------------------------------

UNFILED = ("m.system = 0"
           " AND NOT EXISTS (SELECT 1 FROM filings f WHERE f.message = m.id)"
           " AND NOT EXISTS (SELECT 1 FROM events e WHERE e.message = m.id AND e.kind = 'personal')")
"""SQL condition on ``messages m``: kept but filed nowhere — no filing, not system mail, not a personal copy."""


def count_unfiled(store: Store) -> int:
    """How many messages are unfiled (:data:`UNFILED`): what ``mattermailctl status`` reports."""
    return store.db.execute(f"SELECT COUNT(*) FROM messages m WHERE {UNFILED}").fetchone()[0]


# -- what a caller gets ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class MessageSummary:
    """One stored message, as listed. ``date`` is the Date header as written; :attr:`when` is its time."""

    id: int
    sha256: str
    size: int
    message_id: str
    subject: str
    header_from: str
    date: str
    received: float  # when it was stored (Unix time)
    direction: str  # "inbound" or "outbound"
    system: bool
    capture: str  # "verified", "unverified" (came to the capture address, did not verify) or ""

    @property
    def when(self) -> datetime:
        return message_datetime(self.date, self.received)


@dataclass(frozen=True)
class FilingView:
    """A filing with its names resolved: the matter's title, the person's primary address."""

    matter: str | None
    matter_title: str | None  # None: no such matter (any more)
    person_id: int | None
    person: str | None  # primary address, or "person #N (removed)"
    rule: str
    recipient: str
    detail: str


@dataclass(frozen=True)
class Delivery:
    recipient: str
    envelope_from: str
    queue_id: str
    delivered: float


@dataclass(frozen=True)
class Event:
    time: float
    kind: str
    queue_id: str
    detail: Mapping[str, Any] | str  # the JSON object the router logged, or its text when it is not JSON


@dataclass(frozen=True)
class CapturedEnvelope:
    """The sender's original envelope, as the milter recorded it for a capture copy."""

    mail_from: str
    recipients: tuple[str, ...]  # including Bcc'd ones
    login: str
    queue_id: str
    verified: bool


@dataclass(frozen=True)
class MessageDetail:
    message: MessageSummary
    filings: tuple[FilingView, ...]
    deliveries: tuple[Delivery, ...]  # the LMTP envelope; empty for imports
    events: tuple[Event, ...]
    captured_envelope: CapturedEnvelope | None  # the first recorded, for a capture copy
    history: tuple[ChainEntry, ...] = ()  # its records-chain entries, oldest first (store/chain.py)

    @property
    def status(self) -> str:
        """"filed", "personal" or "unfiled" (system mail included; see :data:`UNFILED` for the filter)."""
        if self.filings:
            return "filed"
        return "personal" if any(e.kind == "personal" for e in self.events) else "unfiled"

    @property
    def recipients(self) -> tuple[str, ...]:
        """The addresses it was filed (or considered) for, from its events, first seen first."""
        out: dict[str, None] = {}
        for e in self.events:
            if isinstance(e.detail, Mapping) and e.detail.get("recipient"):
                out.setdefault(e.detail["recipient"])
        return tuple(out)

    @property
    def system_reason(self) -> str:
        if not self.message.system:
            return ""
        for e in self.events:
            if isinstance(e.detail, Mapping) and e.detail.get("system"):
                return str(e.detail["system"])
        return ""


@dataclass(frozen=True)
class SearchHit:
    message: MessageSummary
    snippet: str  # matched words in [brackets], whitespace collapsed


# -- names ----------------------------------------------------------------------------------------------


class Names:
    """Person ids → primary addresses, matter ids → titles, looked up once per instance (one command)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._persons: dict[int, str] = {}
        self._matters: dict[str, str | None] = {}

    def person(self, pid: int | None) -> str | None:
        if pid is None:
            return None
        if pid not in self._persons:
            row = self._store.db.execute("SELECT address FROM person_addresses WHERE person = ? "
                                         "ORDER BY position, address LIMIT 1", [pid]).fetchone()
            self._persons[pid] = row[0] if row else f"person #{pid} (removed)"
        return self._persons[pid]

    def matter_title(self, matter: str | None) -> str | None:
        if matter is None:
            return None
        if matter not in self._matters:
            row = self._store.db.execute("SELECT title FROM matters WHERE id = ?", [matter]).fetchone()
            self._matters[matter] = row[0] if row else None
        return self._matters[matter]

    def filing(self, matter: str | None, person_id: int | None, rule: str, recipient: str,
               detail: str) -> FilingView:
        """A filing (stored, or one the router would make) with its names."""
        return FilingView(matter, self.matter_title(matter), person_id, self.person(person_id), rule, recipient,
                          detail)


# -- list --------------------------------------------------------------------------------------------

_COLUMNS = ("m.id, m.sha256, m.size, m.message_id, m.subject, m.header_from, m.date, m.received, m.direction, "
            "m.system, m.capture")
def _summary(row: tuple) -> MessageSummary:
    return MessageSummary(row[0], row[1], row[2], row[3] or "", row[4] or "", row[5] or "", row[6] or "",
                          row[7], row[8], bool(row[9]), row[10] or "")


def list_messages(store: Store, *, matter: str | None = None, person: int | None = None,
                  since: datetime | None = None, until: datetime | None = None, direction: str | None = None,
                  unfiled: bool = False, unverified: bool = False, newest_first: bool = True,
                  limit: int | None = None) -> list[MessageSummary]:
    """The messages matching every filter given, by time (:func:`message_datetime`, then id), at most ``limit``.

    ``matter``/``person`` (a person id): filed there. ``since``/``until``: the message's time is within
    (inclusive; naive = UTC). ``direction``: "inbound" or "outbound". ``unfiled``: :data:`UNFILED`.
    ``unverified``: came to the capture address without verifying. Filtering, order and limit run in SQL.
    """
    where: list[str] = []
    params: list[Any] = []
    if matter is not None:  # IN, not a correlated EXISTS: the matter's filings are read once
        where.append("m.id IN (SELECT f.message FROM filings f WHERE f.matter = ?)")
        params.append(matter)
    if person is not None:
        where.append("m.id IN (SELECT f.message FROM filings f WHERE f.person = ?)")
        params.append(person)
    if direction is not None:
        if direction not in ("inbound", "outbound"):
            raise ValueError(f"direction: {direction!r}")
        where.append("m.direction = ?")
        params.append(direction)
    if unfiled:
        where.append(f"({UNFILED})")
    if unverified:
        where.append("m.capture = 'unverified'")
    if since is not None:
        where.append("m.sort_time >= ?")
        params.append(time_key(since))
    if until is not None:
        where.append("m.sort_time <= ?")
        params.append(time_key(until))
    order = "DESC" if newest_first else "ASC"
    sql = (f"SELECT {_COLUMNS} FROM messages m" + (" WHERE " + " AND ".join(where) if where else "")
           + f" ORDER BY m.sort_time {order}, m.id {order}")
    if limit:
        sql += " LIMIT ?"
        params.append(limit)
    return [_summary(r) for r in store.db.execute(sql, params)]


# -- show ----------------------------------------------------------------------------------------------


def get_message(store: Store, message_id: int) -> MessageSummary | None:
    row = store.db.execute(f"SELECT {_COLUMNS} FROM messages m WHERE m.id = ?", [message_id]).fetchone()
    return _summary(row) if row else None


_HEX = re.compile(r"[0-9a-f]+")


def messages_by_sha256_prefix(store: Store, prefix: str, limit: int = 2) -> list[MessageSummary]:
    """The messages whose SHA-256 starts with ``prefix`` (hex, any case), at most ``limit`` (0: all)."""
    prefix = prefix.strip().lower()
    if not _HEX.fullmatch(prefix):
        raise ValueError(f"sha256 prefix: {prefix!r} is not hexadecimal")
    # Every hex digit sorts before "g": [prefix, prefix + "g") is exactly the prefix's range, and uses the index.
    sql = f"SELECT {_COLUMNS} FROM messages m WHERE m.sha256 >= ? AND m.sha256 < ? ORDER BY m.sha256"
    params: list[Any] = [prefix, prefix + "g"]
    if limit:
        sql += " LIMIT ?"
        params.append(limit)
    return [_summary(r) for r in store.db.execute(sql, params)]


def filings_of(store: Store, message: int, names: Names | None = None) -> tuple[FilingView, ...]:
    """The message's filings, oldest first, with names (``names``: a cache shared across messages)."""
    names = names or Names(store)
    return tuple(names.filing(*r) for r in store.db.execute(
        "SELECT matter, person, rule, recipient, detail FROM filings WHERE message = ? ORDER BY id", [message]))


def _parse_detail(text: str | None) -> Mapping[str, Any] | str:
    try:
        parsed = json.loads(text or "")
    except (TypeError, ValueError):
        return text or ""
    return MappingProxyType(parsed) if isinstance(parsed, dict) else text or ""  # read-only, as the dataclass


def message_detail(store: Store, message: MessageSummary, names: Names | None = None) -> MessageDetail:
    """Everything stored about one message: filings, deliveries, events, the captured envelope."""
    db = store.db
    deliveries = tuple(Delivery(r, ef or "", q or "", t) for r, ef, q, t in db.execute(
        "SELECT recipient, envelope_from, queue_id, delivered FROM deliveries WHERE message = ? ORDER BY id",
        [message.id]))
    events = tuple(Event(t, k, q or "", _parse_detail(det)) for t, k, q, det in db.execute(
        "SELECT time, kind, queue_id, detail FROM events WHERE message = ? ORDER BY id", [message.id]))
    row = db.execute(
        "SELECT e.mail_from, e.recipients, e.login, e.queue_id, c.verified FROM captures c "
        "JOIN envelopes e ON e.ref = c.ref WHERE c.message = ? ORDER BY c.recorded LIMIT 1", [message.id]).fetchone()
    captured = None
    if row is not None:
        try:
            rcpts = tuple(str(r) for r in json.loads(row[1] or "[]"))
        except (TypeError, ValueError):
            rcpts = ()
        captured = CapturedEnvelope(row[0] or "", rcpts, row[2] or "", row[3] or "", bool(row[4]))
    return MessageDetail(message, filings_of(store, message.id, names), deliveries, events, captured,
                         history(store, message.id))


# -- search ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchTerm:
    """One thing to look for: a word (``prefix``: any word starting with it) or a phrase."""

    text: str
    phrase: bool = False
    prefix: bool = False
    subject_only: bool = False


@dataclass(frozen=True)
class SearchQuery:
    """Every group must match (a group: one term, or alternatives joined by OR); no excluded term may."""

    groups: tuple[tuple[SearchTerm, ...], ...]
    excluded: tuple[SearchTerm, ...] = ()


_TOKEN = re.compile(r'(-)?(?:((?i:subject)):)?(?:"([^"]*)"?|(\S+))')


def parse_search(text: str) -> SearchQuery:
    """The user's search words, as :func:`search` documents them; never fails (anything else is a word)."""
    groups: list[list[SearchTerm]] = []
    excluded: list[SearchTerm] = []
    pending_or = negate_next = False
    for m in _TOKEN.finditer(text.replace("\x00", " ")):  # FTS5 reads a NUL as the end of the query
        minus, subject, phrase, word = m.groups()
        if phrase is None and not minus and not subject and word in ("AND", "OR", "NOT"):
            if word == "NOT":
                negate_next = True
            elif word == "OR":
                pending_or = bool(groups) and not negate_next
            continue
        negated, negate_next = bool(minus) or negate_next, False
        if phrase is not None:
            term = SearchTerm(" ".join(phrase.split()), phrase=True, subject_only=bool(subject))
        else:
            stripped = word.rstrip("*")
            term = SearchTerm(stripped, prefix=stripped != word, subject_only=bool(subject))
        if not any(c.isalnum() for c in term.text):  # nothing a word index could hold ("*", "-", "(")
            pending_or = False
            continue
        if negated:
            excluded.append(term)
        elif pending_or:
            groups[-1].append(term)
        else:
            groups.append([term])
        pending_or = False
    return SearchQuery(tuple(tuple(g) for g in groups), tuple(excluded))


def search(store: Store, text: str, matter: str | None = None, limit: int | None = 50) -> list[SearchHit]:
    """Messages whose subject or body text matches ``text``, best match first, at most ``limit`` (0/None: all).

    ``text`` is plain words, never a query language of the database:

    * every word must appear, matched by stem ("report" also finds "reports");
    * ``"an exact phrase"`` matches those words in that order (an unclosed quote runs to the end);
    * ``word*`` matches any word starting with ``word`` — there is no prefix matching without the ``*``;
    * ``a OR b`` matches either (OR joins the two terms beside it); ``AND`` may be written, it changes nothing;
    * ``-word`` or ``NOT word`` leaves out messages containing it (a query needs one term to look for);
    * ``subject:word`` or ``subject:"a phrase"`` looks in the subject only.

    Anything else — punctuation, parentheses, ``NEAR``, a lone ``*`` or quote — is part of a word, and
    characters that are not letters or digits separate words. Nothing to look for: no hits, no error.
    ``matter``: only messages filed there.
    """
    q = parse_search(text)
    if not q.groups:
        return []
    return [SearchHit(_summary(r[:-1]), " ".join((r[-1] or "").split()))
            for r in fulltext.search_rows(store, _COLUMNS, q, matter, limit)]

