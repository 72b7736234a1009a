"""A real store (SQLite in tmp_path; PostgreSQL too for the tests marked ``BOTH_ENGINES``) with users, matters, an ethical wall and filed mail, and the web app on it.

Users: ``alice@lawfirm.test`` (plain user), ``bob@lawfirm.test`` (screened off matter 5678) and
``admin@lawfirm.test`` (role admin). Matters 1234 "Smith v Jones" and 5678 "Estate of Brown" (walled:
bob denied). Messages are named by subject in ``WebFill.ids``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from email.message import EmailMessage

import pytest

from mattermail import config as configmod
from mattermail import passwords
from mattermail.store import Store, access, index_pending, insert_message, transaction
from mattermail.store import directory as d

PASSWORD = "correct-horse-battery"
# on the tests that exercise store queries: run them on both engines (tests/conftest.py, store_engine)
BOTH_ENGINES = pytest.mark.parametrize("store_engine", ("sqlite", "postgresql"), indirect=True)
ALICE, BOB, ADMIN = "alice@lawfirm.test", "bob@lawfirm.test", "admin@lawfirm.test"


def message_bytes(subject: str, body: str, date: str, sender: str = "jane@client.example",
                  to: str = "1234@matters.lawfirm.test", attachment: tuple[str, bytes] | None = None) -> bytes:
    m = EmailMessage()
    m["From"] = sender
    m["To"] = to
    m["Subject"] = subject
    m["Date"] = date
    m["Message-ID"] = f"<{hashlib.sha1((subject + date).encode()).hexdigest()}@client.example>"
    m.set_content(body)
    if attachment:
        m.add_attachment(attachment[1], maintype="application", subtype="pdf", filename=attachment[0])
    return bytes(m)


@dataclass
class WebFill:
    store: Store
    ids: dict[str, int] = field(default_factory=dict)
    day: int = 0

    def add(self, subject: str, body: str = "", matters: tuple[str, ...] = (), person: int | None = None,
            attachment: tuple[str, bytes] | None = None, sender: str = "jane@client.example") -> int:
        self.day += 1
        raw = message_bytes(subject, body or f"about {subject}", f"Mon, {self.day:02d} Jan 2024 10:00:00 +0000",
                            sender, attachment=attachment)
        sha, _ = self.store.write_blob(raw)
        with transaction(self.store):
            mid, _ = insert_message(self.store, raw, sha, body_text=body or f"about {subject}")
            for matter in matters:
                d.record_filing(self.store, d.Filing(mid, matter, person, "test", f"{matter}@matters.lawfirm.test"))
            if person and not matters:
                d.record_filing(self.store, d.Filing(mid, None, person, "test", "jane@client.example"))
            if not matters and not person:
                d.log_event(self.store, "unfiled", {"recipient": "x@matters.lawfirm.test"}, mid)
        while index_pending(self.store):
            pass
        self.ids[subject] = mid
        return mid


def everything_stored(store) -> str:
    """Every row of every table, as text."""
    if store.engine == "sqlite":
        return "\n".join(store.db.conn.iterdump())
    tables = [t for (t,) in store.db.execute("SELECT table_name FROM information_schema.tables "
                                             "WHERE table_schema = current_schema()")]
    return "\n".join(repr(row) for t in tables for row in store.db.execute(f"SELECT * FROM {t}"))


def web_config(tmp_path, secure: bool = False, page_size: int = 50) -> configmod.Config:
    return configmod.from_dict({
        "store": {"path": str(tmp_path / "store.sqlite"), "messages_dir": str(tmp_path / "messages")},
        "web": {"cookie_secure": secure, "page_size": page_size}})


@pytest.fixture
def fill(tmp_path, new_store_location) -> WebFill:
    store = Store(new_store_location(), tmp_path / "messages")
    store.actor = "test-admin"
    h = passwords.hash_password(PASSWORD)
    from mattermail.store import add_user

    for login in (ALICE, BOB, ADMIN):
        add_user(store, login, h)
    access.set_role(store, ADMIN, "admin")
    jane = d.add_person(store, "jane@client.example", "Jane Client")
    d.add_matter(store, "1234", "Smith v Jones", ["jane@client.example"])
    d.add_matter(store, "5678", "Estate of Brown")
    access.deny(store, "5678", [BOB])
    f = WebFill(store)
    f.jane = jane  # type: ignore[attr-defined]
    f.add("Draft contract", "the draft contract for signature", ("1234",), jane.id,
          attachment=("contract.pdf", b"%PDF-1.4 contract"))
    f.add("Re: Draft contract", "signed contract attached", ("1234",), jane.id)
    f.add("Brown estate valuation", "the valuation of the estate: confidential", ("5678",))
    f.add("Joint note", "a note about both the contract and the estate", ("1234", "5678"))
    f.add("Who is this", "an unfiled message about the contract")
    yield f
    store.close()


@pytest.fixture
def client(fill, tmp_path):
    from starlette.testclient import TestClient

    from mattermail.web.app import create_app

    with TestClient(create_app(fill.store, web_config(tmp_path)), base_url="http://127.0.0.1") as c:
        yield c


@pytest.fixture
def token(fill):
    """token(login, scope="read") -> the Bearer header for a new token."""
    from mattermail.store import tokens

    def make(login: str, scope: str = "read") -> dict[str, str]:
        _, secret = tokens.create_token(fill.store, login, scope)
        return {"Authorization": f"Bearer {secret}"}
    return make


@pytest.fixture(autouse=True)
def no_sign_in_lockouts(monkeypatch):
    """Each test starts with no failed sign-ins remembered (the lock-out is per process)."""
    from mattermail.web import auth

    monkeypatch.setattr(auth, "_failures", {})
