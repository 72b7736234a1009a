"""Thread filing and two-way capture end to end (issue 17): real Postfix, milter and router.

alice writes to a client with a matter tag; the capture copy is filed to the matter. The client's reply,
without tag, names alice's message in In-Reply-To and is filed to the same matter by the ``thread`` rule:
sent to an address of the catch-all domain that resolves nothing by itself, or to alice herself (the
inbound capture copy). Mail from a stranger to alice is delivered and not stored.
"""

from __future__ import annotations

import json
import sqlite3

import pytest

from mattermail.store import Store, UserError
from mattermail.store import directory as d

CA = "matters.lawfirm.test"


@pytest.fixture(scope="module")
def client_id(stack) -> int:
    store = Store(stack.stack.var / "store.sqlite", stack.stack.var / "messages")
    try:
        try:
            pid = d.add_person(store, "client@example.test", "Client").id
        except UserError:
            pid = d.person_by_email(store, "client@example.test").id  # type: ignore[union-attr]
        try:
            d.add_matter(store, "1234", "Smith v Jones")
        except UserError:
            pass
        return pid
    finally:
        store.close()


def filings(stack, message_id: str) -> list[tuple]:
    db = sqlite3.connect(stack.stack.var / "store.sqlite")
    try:
        return db.execute("SELECT f.matter, f.person, f.rule, f.detail FROM filings f JOIN messages m "
                          "ON m.id = f.message WHERE m.message_id = ? ORDER BY f.id", [message_id]).fetchall()
    finally:
        db.close()


def test_a_reply_without_tag_or_matter_address_files_by_thread(stack, client_id, tmp_path):
    first = stack.message("alice@lawfirm.test", ["client@example.test"], subject="[M-1234] engagement letter")
    qid = stack.submit("alice@lawfirm.test", first, ["client@example.test"])
    stack.log_line("router", qid, "capture=", "status=stored")
    assert [(m, p, rule) for m, p, rule, _ in filings(stack, first["Message-ID"])] == [
        ("1234", None, "subject"), (None, client_id, "correspondent")]
    # the capture envelope recorded the Message-ID the milter saw, normalised
    db = sqlite3.connect(stack.stack.var / "store.sqlite")
    seen = db.execute("SELECT e.message_id FROM envelopes e JOIN captures c ON c.ref = e.ref JOIN messages m "
                      "ON m.id = c.message WHERE m.message_id = ?", [first["Message-ID"]]).fetchone()
    db.close()
    assert seen == (first["Message-ID"].strip("<>"),)

    rcpt = f"thread-inbox@{CA}"  # no alias, no matter id, no person: nothing by address
    reply = stack.message("client@example.test", [rcpt], subject="Re: engagement letter",
                          In_Reply_To=first["Message-ID"])
    qid = stack.inbound(reply, [rcpt])
    line = stack.log_line("router", qid, f"to=<{rcpt}>", "status=stored")
    assert "filed=matter:1234" in line
    assert filings(stack, reply["Message-ID"]) == [
        ("1234", None, "thread", f"In-Reply-To {first['Message-ID']} (message "
         + str(_message_row(stack, first["Message-ID"])) + ")"),
        (None, client_id, "sender", "client@example.test")]

    # route explain of the reply (as stored) names the reference that matched
    path = tmp_path / "reply.eml"
    path.write_bytes(reply.as_bytes())
    r = stack.ctl("route", "explain", str(path), "--recipient", rcpt, "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert [(f["matter"], f["rule"]) for f in out["filings"]] == [("1234", "thread"), (None, "sender")]
    assert any(f"thread: In-Reply-To {first['Message-ID']} → message" in t for t in out["trace"]), out["trace"]


def _message_row(stack, message_id: str) -> int:
    db = sqlite3.connect(stack.stack.var / "store.sqlite")
    try:
        return db.execute("SELECT id FROM messages WHERE message_id = ?", [message_id]).fetchone()[0]
    finally:
        db.close()


def _row(stack, message_id: str) -> tuple | None:
    db = sqlite3.connect(stack.stack.var / "store.sqlite")
    try:
        return db.execute("SELECT direction, capture FROM messages WHERE message_id = ?", [message_id]).fetchone()
    finally:
        db.close()


def test_a_clients_reply_to_alice_is_captured_inbound_and_filed_by_thread(stack, client_id):
    first = stack.message("alice@lawfirm.test", ["client@example.test"], subject="[M-1234] completion statement")
    qid = stack.submit("alice@lawfirm.test", first, ["client@example.test"])
    stack.log_line("router", qid, "capture=", "status=stored")

    reply = stack.message("client@example.test", ["alice@lawfirm.test"], subject="Re: completion statement",
                          In_Reply_To=first["Message-ID"])
    qid = stack.inbound(reply, ["alice@lawfirm.test"])
    stack.sink_with(reply["Message-ID"].encode())  # alice gets it as ever
    assert "(inbound)" in stack.log_line("milter", qid, "capture=")
    line = stack.log_line("router", qid, "capture=", "status=")
    assert "status=stored" in line and "filed=matter:1234" in line, line
    assert [(m, p, rule) for m, p, rule, _ in filings(stack, reply["Message-ID"])] == [
        ("1234", None, "thread"), (None, client_id, "correspondent")]
    assert _row(stack, reply["Message-ID"]) == ("inbound", "verified")


def test_mail_from_a_stranger_to_alice_is_delivered_and_not_stored(stack, client_id):
    msg = stack.message("stranger@example.test", ["alice@lawfirm.test"], subject="dinner on friday?")
    qid = stack.inbound(msg, ["alice@lawfirm.test"])
    assert msg["Message-ID"].encode() in stack.sink_with(msg["Message-ID"].encode()).read_bytes()
    line = stack.log_line("router", qid, "capture=", "status=")
    assert "status=dropped" in line and "dropped=personal" in line, line
    assert _row(stack, msg["Message-ID"]) is None
    assert not any(msg["Message-ID"].encode() in p.read_bytes()
                   for p in (stack.stack.var / "messages").rglob("*.eml"))
