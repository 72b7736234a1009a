"""mattermail.store.listing on a tmp store: filters, order and limit in SQL, search that takes any text."""

from __future__ import annotations

import hashlib
import random
import time
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from mattermail.store import directory as d
from mattermail.store import messages as store_messages
from mattermail.store.indexer import index_pending
from mattermail.store.listing import UNFILED
from mattermail.store import (
    EnvelopeRecord, Store, count_unfiled, get_message, insert_message, list_messages, message_datetime,
    message_detail, messages_by_sha256_prefix, parse_search, record_capture, record_deliveries, record_envelope,
    search, transaction,
)

# The stored time of every message (Unix time of 2024-03-01 12:00 UTC): what an undated message sorts by.
STORED = datetime(2024, 3, 1, 12, 0, tzinfo=UTC).timestamp()


def raw(subject: str, date: str | None, body: str = "") -> bytes:
    head = f"From: x@client.example\r\nSubject: {subject}\r\nMessage-ID: <{subject.replace(' ', '.')}@t>\r\n"
    if date is not None:
        head += f"Date: {date}\r\n"
    return f"{head}\r\n{body}\r\n".encode()


class Fill:
    """A store with persons, matters and messages named by their subject."""

    def __init__(self, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
        self.store = store
        self.ids: dict[str, int] = {}
        monkeypatch.setattr(store_messages, "time", SimpleNamespace(time=lambda: STORED))
        self.jane = d.add_person(store, "jane@client.example", "Jane")
        self.bob = d.add_person(store, "bob@partner.example", "Bob")
        d.add_matter(store, "1234", "Smith v Jones")
        d.add_matter(store, "5678", "Estate of Brown")

    def add(self, subject: str, date: str | None, body: str = "", *, matter: str | None = None,
            person: int | None = None, system: bool = False, personal: bool = False, direction: str = "inbound",
            capture: str = "") -> int:
        data = raw(subject, date, body)
        with transaction(self.store):
            mid, new = insert_message(self.store, data, hashlib.sha256(data).hexdigest(), direction=direction,
                                      body_text=body, system=system, capture=capture)
            assert new
            if matter or person:
                d.record_filing(self.store, d.Filing(mid, matter, person, "test-rule", "r@matters.test", "why"))
                d.log_event(self.store, "filed", {"recipient": "r@matters.test"}, mid, "Q1")
            elif personal:
                d.log_event(self.store, "personal", {"recipient": "capture@matters.test"}, mid)
            else:
                d.log_event(self.store, "unfiled", {"recipient": "r@matters.test", "reason": "no rule matched",
                                                    **({"system": "auto-replied"} if system else {})}, mid)
        self.ids[subject] = mid
        return mid

    def names(self, listed) -> list[str]:
        by_id = {v: k for k, v in self.ids.items()}
        return [by_id[m.id] for m in listed]


@pytest.fixture
def fill(store_location, tmp_path, monkeypatch):
    s = Store(store_location, tmp_path / "messages")
    f = Fill(s, monkeypatch)
    f.add("plus", "Mon, 01 Jan 2024 09:00:00 +0000", "the zebrafish reports for review", matter="1234",
          person=f.jane.id)
    f.add("hearing", "Tue, 02 Jan 2024 09:00:00 +0000", "The hearing moves to March.", matter="1234")
    f.add("lunch", "Wed, 03 Jan 2024 23:30:00 -0500", "Are you free on Friday?", person=f.jane.id)  # 01-04 04:30Z
    f.add("estate", "Fri, 05 Jan 2024 09:00:00 +0000", "Inventory of the estate.", matter="5678")
    f.add("stray", "Sat, 06 Jan 2024 09:00:00 +0000", "Who gets this? smith-jones")
    f.add("auto", "Sun, 07 Jan 2024 09:00:00 +0000", "I am away.", system=True)
    f.add("advice", "Mon, 08 Jan 2024 09:00:00 +0000", "Please find our advice.", person=f.bob.id,
          direction="outbound", capture="verified")
    f.add("dinner", "Tue, 09 Jan 2024 09:00:00 +0000", "See you at eight.", personal=True,
          direction="outbound", capture="verified")
    f.add("planted", "Wed, 10 Jan 2024 09:00:00", "A planted quokka.", capture="unverified")  # no zone: UTC
    f.add("undated", None, "No date header at all.")  # sorts by its stored time, 2024-03-01 12:00
    f.add("garbled", "the day after tomorrow", "An unreadable date.")  # the same stored time; higher id
    f.add("twin", "Mon, 01 Jan 2024 09:00:00 +0000", "Same time as plus.", matter="1234")  # tie: by id
    assert index_pending(s, limit=100) == 12  # the 12 above; search reads the index, filled after the commit
    yield f
    s.close()


ALL_NEWEST_FIRST = ["garbled", "undated", "planted", "dinner", "advice", "auto", "stray", "estate", "lunch",
                    "hearing", "twin", "plus"]


# -- list: order and limit --------------------------------------------------------------------------------


def test_list_is_newest_first_by_date_header_then_stored_time_then_id(fill):
    listed = list_messages(fill.store)
    assert fill.names(listed) == ALL_NEWEST_FIRST
    # the same order Python gets from message_datetime, the definition of a message's time
    by_python = sorted(listed, key=lambda m: (message_datetime(m.date, m.received), m.id), reverse=True)
    assert [m.id for m in listed] == [m.id for m in by_python]
    assert fill.names(list_messages(fill.store, newest_first=False)) == ALL_NEWEST_FIRST[::-1]
    assert listed[0].when == datetime(2024, 3, 1, 12, 0, tzinfo=UTC)  # garbled: the stored time
    assert listed[fill.names(listed).index("lunch")].when == datetime(2024, 1, 4, 4, 30, tzinfo=UTC)


def test_limit_keeps_the_newest(fill):
    assert fill.names(list_messages(fill.store, limit=3)) == ALL_NEWEST_FIRST[:3]
    assert fill.names(list_messages(fill.store, limit=3, newest_first=False)) == ["plus", "twin", "hearing"]
    assert len(list_messages(fill.store, limit=0)) == len(ALL_NEWEST_FIRST)  # 0: all
    assert fill.names(list_messages(fill.store, direction="inbound", limit=2)) == ["garbled", "undated"]


# -- list: filters -------------------------------------------------------------------------------------------


def test_filters(fill):
    ls = lambda **kw: fill.names(list_messages(fill.store, **kw))
    assert ls(matter="1234") == ["hearing", "twin", "plus"]
    assert ls(matter="5678") == ["estate"]
    assert ls(matter="9999") == []
    assert ls(person=fill.jane.id) == ["lunch", "plus"]
    assert ls(person=fill.bob.id, matter="1234") == []
    assert ls(direction="outbound") == ["dinner", "advice"]
    with pytest.raises(ValueError):
        ls(direction="sideways")
    assert ls(unverified=True) == ["planted"]
    # unfiled: no filing, not system mail ("auto"), not a personal copy ("dinner")
    assert ls(unfiled=True) == ["garbled", "undated", "planted", "stray"]
    assert count_unfiled(fill.store) == 4
    assert "filings" in UNFILED and "personal" in UNFILED


def test_since_and_until_are_inclusive_and_read_in_utc(fill):
    ls = lambda **kw: fill.names(list_messages(fill.store, **kw))
    at = lambda *a: datetime(*a, tzinfo=UTC)
    assert ls(since=at(2024, 1, 4, 4, 30), until=at(2024, 1, 4, 4, 30)) == ["lunch"]  # the -0500 date, exactly
    assert ls(until=at(2024, 1, 4, 4, 29, 59)) == ["hearing", "twin", "plus"]
    assert ls(since=at(2024, 1, 9, 9), until=at(2024, 1, 10, 9)) == ["planted", "dinner"]
    assert ls(since=datetime(2024, 3, 1, 12)) == ["garbled", "undated"]  # naive: UTC; the stored time
    assert ls(since=at(2024, 3, 1, 12, 0, 0, 1)) == []
    assert ls(since=at(2024, 1, 2), until=at(2024, 1, 6, 9), matter="1234") == ["hearing"]


# -- show -----------------------------------------------------------------------------------------------------


def test_message_detail_has_names_events_and_status(fill):
    plus = get_message(fill.store, fill.ids["plus"])
    assert plus is not None and plus.subject == "plus" and plus.capture == "" and not plus.system
    det = message_detail(fill.store, plus)
    assert det.status == "filed" and det.recipients == ("r@matters.test",)
    (f,) = det.filings
    assert (f.matter, f.matter_title, f.person, f.person_id, f.rule) == (
        "1234", "Smith v Jones", "jane@client.example", fill.jane.id, "test-rule")
    assert [(e.kind, e.queue_id, dict(e.detail)) for e in det.events] == [
        ("filed", "Q1", {"recipient": "r@matters.test"})]
    assert det.deliveries == () and det.captured_envelope is None
    auto = message_detail(fill.store, get_message(fill.store, fill.ids["auto"]))
    assert (auto.status, auto.system_reason) == ("unfiled", "auto-replied")
    assert message_detail(fill.store, get_message(fill.store, fill.ids["dinner"])).status == "personal"
    assert get_message(fill.store, 999999) is None
    with pytest.raises(Exception):
        det.filings = ()  # frozen


def test_message_detail_with_deliveries_and_captured_envelope(fill):
    mid = fill.ids["advice"]
    with transaction(fill.store):
        record_envelope(fill.store, EnvelopeRecord("r" * 12, "Q9", "alice@lawfirm.test",
                                                   ("bob@partner.example", "hidden@bcc.example"),
                                                   "alice", "127.0.0.1", time.time()))
        record_capture(fill.store, mid, "r" * 12, True)
        record_deliveries(fill.store, mid, "alice@lawfirm.test", ["capture@matters.test"], "Q10")
    det = message_detail(fill.store, get_message(fill.store, mid))
    ce = det.captured_envelope
    assert (ce.mail_from, ce.recipients, ce.login, ce.queue_id, ce.verified) == (
        "alice@lawfirm.test", ("bob@partner.example", "hidden@bcc.example"), "alice", "Q9", True)
    assert [(x.recipient, x.envelope_from, x.queue_id) for x in det.deliveries] == [
        ("capture@matters.test", "alice@lawfirm.test", "Q10")]


def test_sha256_prefix(fill):
    sha = get_message(fill.store, fill.ids["plus"]).sha256
    assert [m.id for m in messages_by_sha256_prefix(fill.store, sha[:10].upper())] == [fill.ids["plus"]]
    assert messages_by_sha256_prefix(fill.store, "f" * 64 + "0") == []
    assert len(messages_by_sha256_prefix(fill.store, sha[:1], limit=0)) >= 1
    for bad in ("abc%", "", "_" * 8):  # never a LIKE pattern or an empty "everything"
        with pytest.raises(ValueError):
            messages_by_sha256_prefix(fill.store, bad)


# -- search ----------------------------------------------------------------------------------------------------


def hits(fill, text, **kw):
    return fill.names([h.message for h in search(fill.store, text, **kw)])


def test_search_words_phrases_prefix_or_not_subject(fill):
    assert hits(fill, "zebrafish") == ["plus"]
    assert hits(fill, "report") == ["plus"]  # stemmed: reports
    assert hits(fill, "zebra") == [] and hits(fill, "zebra*") == ["plus"]  # prefix only when asked
    assert hits(fill, '"zebrafish reports"') == ["plus"] and hits(fill, '"reports zebrafish"') == []
    assert sorted(hits(fill, "zebrafish OR inventory")) == ["estate", "plus"]
    assert hits(fill, "zebrafish AND inventory") == []  # AND: every word, as without it
    assert sorted(hits(fill, "estate OR hearing")) == ["estate", "hearing"]
    assert sorted(hits(fill, "zebrafish OR inventory OR hearing")) == ["estate", "hearing", "plus"]
    assert hits(fill, "march zebrafish OR hearing") == ["hearing"]  # OR binds the two words beside it only
    assert hits(fill, "hearing -march") == [] and hits(fill, "hearing NOT march") == []
    assert hits(fill, "subject:hearing") == ["hearing"] and hits(fill, "subject:march") == []
    assert hits(fill, "SUBJECT:\"hearing\" march") == ["hearing"]
    assert hits(fill, "smith-jones") == ["stray"]
    (h,) = search(fill.store, "quokka")
    assert h.message.capture == "unverified" and "[quokka]" in h.snippet


def test_search_within_a_matter_and_limit(fill):
    assert sorted(hits(fill, "the")) == ["estate", "hearing", "plus"]
    assert sorted(hits(fill, "the", matter="1234")) == ["hearing", "plus"]
    assert hits(fill, "inventory", matter="1234") == []
    assert hits(fill, "inventory", matter="5678") == ["estate"]
    assert len(search(fill.store, "the", limit=1)) == 1
    assert len(search(fill.store, "the", limit=0)) == 3


@pytest.mark.parametrize("text, found", [
    ("foo AND", []), ("zebrafish AND", ["plus"]), ('"', []), ('"zebrafish', ["plus"]), ("NEAR(", []),
    ("NEAR(zebrafish, reports)", []), ("zebrafish NEAR(", []), ("*", []), ("zebrafish *", ["plus"]),
    ("-x", []), ("-zebrafish", []), ("NOT", []), ("OR zebrafish OR", ["plus"]), ("(zebrafish)", ["plus"]),
    ("zebrafish)", ["plus"]), ("^zebrafish", ["plus"]), ("{subject}:hearing", []), ("nosuchcolumn:zebrafish", []),
    ('zebra"fish', []), ('""zebrafish""', ["plus"]), ("zebrafish\x00", ["plus"]), ("+", []), ("'", []),
    ("subject:", []), ("subject:-", []), ("\\", []), ("zebrafish:", ["plus"]), ("a:b:c", []), ("AND OR NOT", []),
])
def test_search_takes_hostile_operator_input_as_words(fill, text, found):
    assert hits(fill, text) == found, f"{text!r}: {parse_search(text)}"


def test_search_never_raises_on_random_operator_soup(fill):
    pieces = ['"', "*", "(", ")", "-", ":", "^", "{", "}", "+", "NEAR", "AND", "OR", "NOT", "subject:",
              "zebrafish", "hearing", " ", " ", "\\", "'", ",", "\x00", "é"]
    rng = random.Random(1312)
    total = 0
    for _ in range(400):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 12)))
        total += len(search(fill.store, text, matter="1234" if rng.random() < 0.3 else None))
    assert total > 0, "400 random queries over 'zebrafish'/'hearing' found nothing at all"


def test_migration_12_stores_each_message_time_and_listings_order_by_it(blank_store_location, tmp_path,
                                                                        monkeypatch):
    """Rows stored before migration 12 get their sort time from their Date header (or the time they were
    stored); a listing by time and a since/until filter then agree with message_datetime."""
    from mattermail import store as storemod
    from mattermail.store import schema, schema_pg

    assert [i for i, fn in enumerate(storemod.MIGRATIONS, 1) if fn.__name__ == "_m012_sort_time"] == [12]
    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:11])
    monkeypatch.setattr(schema_pg, "PG_MIGRATIONS", schema_pg.PG_MIGRATIONS[:11])
    old = storemod.Store(blank_store_location, tmp_path / "m")
    rows = [("Tue, 2 Mar 1999 09:44:33 +0100", 5.0), ("", 1_700_000_000.0), ("not a date", 3.0),
            ("Mon, 23 Nov 2026 12:00:00 -0500", 0.0)]
    for i, (date, received) in enumerate(rows, 1):
        old.db.execute("INSERT INTO messages (sha256, size, received, date) VALUES (?, 1, ?, ?)",
                       [f"s{i}", received, date])
    old.close()
    monkeypatch.undo()
    new = storemod.Store(blank_store_location, tmp_path / "m")
    assert new.schema_version() >= 12
    got = dict(new.db.execute("SELECT sha256, sort_time FROM messages").fetchall())
    assert got == {"s1": "19990302084433000000", "s2": "20231114221320000000", "s3": "19700101000003000000",
                   "s4": "20261123170000000000"}
    assert [m.sha256 for m in storemod.list_messages(new)] == ["s4", "s2", "s1", "s3"]
    since = [m.sha256 for m in storemod.list_messages(new, since=datetime(2000, 1, 1), newest_first=False)]
    assert since == ["s2", "s4"]
    new.close()
