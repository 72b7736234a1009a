"""Catch-all filing end to end: real Postfix, milter and router; the directory written straight into the store."""

from __future__ import annotations

import json
import sqlite3

import pytest

from mattermail.store import directory as d
from mattermail.router.lmtp import queue_id_of
from mattermail.store import Store, UserError

CA = "matters.lawfirm.test"


@pytest.fixture(scope="module")
def people(stack):
    """Persons, matters and an alias of this module (ids and addresses no other test uses)."""
    var = stack.stack.var
    store = Store(var / "store.sqlite", var / "messages")

    def person(email: str, name: str) -> int:
        try:
            return d.add_person(store, email, name).id
        except UserError:
            return d.person_by_email(store, email).id  # type: ignore[union-attr]

    ids = {"alice": person("alice@lawfirm.test", "Alice"), "client": person("rt-client@example.test", "Client"),
           "bcc": person("rt-bcc@clientco.test", "Bcc'd client")}
    for mid in ("7101", "7102", "7103"):
        d.add_matter(store, mid, f"Router test matter {mid}")
    d.add_alias(store, f"rt-smith@{CA}", [CA], matter="7103")
    store.close()
    return ids


def filings(stack, message_id: str) -> list[tuple]:
    db = sqlite3.connect(stack.stack.var / "store.sqlite")
    try:
        return db.execute("SELECT f.matter, f.person, f.rule, f.recipient FROM filings f JOIN messages m "
                          "ON m.id = f.message WHERE m.message_id = ? ORDER BY f.id", [message_id]).fetchall()
    finally:
        db.close()


def send_inbound(stack, rcpts, subject="router test", sender="bob@example.test", **headers):
    msg = stack.message(sender, rcpts, subject=subject, **headers)
    qid = stack.inbound(msg, rcpts)
    for r in rcpts:
        stack.log_line("router", qid, f"to=<{r}>", "status=stored")
    return msg, qid


def test_matter_address(stack, people):
    msg, qid = send_inbound(stack, [f"7101@{CA}"])
    assert filings(stack, msg["Message-ID"]) == [("7101", None, "matter-address", f"7101@{CA}")]
    assert "filed=matter:7101" in stack.log_line("router", qid, f"to=<7101@{CA}>")


def test_plus_address_files_person_and_matter(stack, people):
    msg, _ = send_inbound(stack, [f"alice+m-7102@{CA}"], sender="rt-client@example.test")
    assert filings(stack, msg["Message-ID"]) == [("7102", people["alice"], "plus-address", f"alice+m-7102@{CA}")]


def test_alias_and_sender(stack, people):
    msg, _ = send_inbound(stack, [f"rt-smith@{CA}"], sender="RT-Client@example.test")
    assert filings(stack, msg["Message-ID"]) == [("7103", None, "alias", f"rt-smith@{CA}"),
                                                 (None, people["client"], "sender", f"rt-smith@{CA}")]


def test_subject_reference(stack, people):
    msg, _ = send_inbound(stack, [f"inbox@{CA}"], subject="Re: papers [M-7101]")
    assert filings(stack, msg["Message-ID"]) == [("7101", None, "subject", f"inbox@{CA}")]


def test_unknown_matter_is_kept_unfiled(stack, people):
    msg, qid = send_inbound(stack, [f"7999@{CA}"])
    assert filings(stack, msg["Message-ID"]) == []
    assert 'unfiled="unknown matter 7999"' in stack.log_line("router", qid, f"to=<7999@{CA}>")
    db = sqlite3.connect(stack.stack.var / "store.sqlite")
    kind, detail = db.execute("SELECT e.kind, e.detail FROM events e JOIN messages m ON m.id = e.message "
                              "WHERE m.message_id = ?", [msg["Message-ID"]]).fetchone()
    assert kind == "unfiled" and json.loads(detail)["reason"] == "unknown matter 7999"


def test_one_message_to_two_addresses_is_stored_once_and_filed_twice(stack, people):
    msg, _ = send_inbound(stack, [f"7101@{CA}", f"7102@{CA}"])
    assert sorted(filings(stack, msg["Message-ID"])) == [("7101", None, "matter-address", f"7101@{CA}"),
                                                         ("7102", None, "matter-address", f"7102@{CA}")]
    db = sqlite3.connect(stack.stack.var / "store.sqlite")
    assert db.execute("SELECT count(*) FROM messages WHERE message_id = ?", [msg["Message-ID"]]).fetchone()[0] == 1


def test_capture_copy_files_to_the_bccd_client(stack, people):
    msg = stack.message("alice@lawfirm.test", ["someone@example.test"], subject="outbound with a Bcc'd client")
    qid = stack.submit("alice@lawfirm.test", msg, ["someone@example.test", "rt-bcc@clientco.test"])
    line = stack.log_line("router", qid, "capture=", "status=stored")
    assert f"filed=person:{people['bcc']}" in line
    rows = filings(stack, msg["Message-ID"])
    assert [(m, p, rule) for m, p, rule, _ in rows] == [(None, people["bcc"], "correspondent")]
    assert rows[0][3].startswith("capture+")
    db = sqlite3.connect(stack.stack.var / "store.sqlite")
    assert db.execute("SELECT direction FROM messages WHERE message_id = ?", [msg["Message-ID"]]).fetchone() == (
        "outbound",)


def test_unfiled_mail_is_forwarded_to_the_failed_mail_address(stack, people):
    config = stack.stack.config
    original = config.read_text()
    config.write_text(original.replace("[router]\n", '[router]\nfailed_mail_address = "rt-failed@example.test"\n', 1))
    stack.stack.stop_router()
    stack.stack.start_router()
    try:
        msg, qid = send_inbound(stack, [f"7998@{CA}"], subject="for nobody")
        notice = stack.sink_with(b"unknown matter 7998")
        raw = notice.read_bytes()
        assert msg["Message-ID"].encode() in raw and b"message/rfc822" in raw and b"Auto-Submitted" in raw
        env = json.loads(notice.with_suffix(".json").read_text())
        assert env["mail_from"] in ("", "<>") and env["rcpt_tos"] == ["rt-failed@example.test"]
        stack.log_line("router", qid, "forwarded to <rt-failed@example.test>")
        # The notice leaves through Postfix like any mail, so the milter captures it too: that copy comes
        # back to the router as system mail (Auto-Submitted), personal, and is never forwarded again.
        nqid = queue_id_of(raw)
        line = stack.log_line("router", nqid, "capture=", "status=stored")
        assert "system=(auto" in line and "personal" in line
        assert "forwarded" not in (stack.stack.logs / "router.log").read_text().split(f"{nqid}: ", 1)[1]
    finally:
        config.write_text(original)
        stack.stack.stop_router()
        stack.stack.start_router()
