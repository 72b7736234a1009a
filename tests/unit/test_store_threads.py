"""Thread filing end to end over a real store: Message-IDs recorded (store/threads.py, migration 9), the
``thread`` rule through router/filing.py, capture copies' milter-seen ids, imports in file order."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from mattermail.capture import capture_address
from mattermail.config import from_dict
from mattermail.ctl import importcmd, routecmd  # noqa: F401  (register on cli)
from mattermail.ctl.base import cli
from mattermail.msgid import msgid, msgids, subject_key
from mattermail.router import filing
from mattermail.store import (EnvelopeRecord, Store, directory as d, get_envelope, record_envelope, record_thread_keys,
                              thread_filings, transaction)
from mattermail.store.records import delete_message

CA = "matters.lawfirm.test"
SECRET = b"t" * 32


def make_cfg(tmp_path, **router):
    (tmp_path / "capture.key").write_bytes(SECRET)
    return from_dict({"general": {"hostname": "mx.lawfirm.test", "sending_domains": ["lawfirm.test"],
                                  "catchall_domains": [CA]},
                      "capture": {"address": f"capture@{CA}", "secret_file": str(tmp_path / "capture.key")},
                      "postfix": {"config_dir": str(tmp_path / "etc")}, "router": router})


@pytest.fixture
def store(store_location, tmp_path):
    s = Store(store_location, tmp_path / "m")
    d.add_person(s, "client@example.test", "Client")  # id 1
    d.add_matter(s, "1234", "Smith v Jones")
    d.add_matter(s, "5678", "Estate of Brown")
    yield s
    s.close()


def eml(mid: str, subject: str = "papers", frm: str = "stranger@else.example", extra: str = "") -> bytes:
    return (f"From: {frm}\r\nTo: someone@else.example\r\nSubject: {subject}\r\nMessage-ID: {mid}\r\n{extra}"
            f"\r\nbody of {mid}\r\n").encode()


def test_msgid_normal_form() -> None:
    assert msgid(" <Abc.123@Mail.Example.ORG> (comment)") == "Abc.123@mail.example.org"
    assert msgid("<a@b.test> <c@d.test>") == "a@b.test"
    assert msgid("") is None and msgid("no id here") is None and msgid("<>") is None
    assert msgids("<1@a.test>\r\n\t<2@A.TEST> (x <3@a.test>) <1@a.test>") == ["1@a.test", "2@a.test"]
    assert msgids("1@a.test 2@a.test") == ["1@a.test", "2@a.test"]  # no brackets (old clients)
    assert subject_key("RE: Fwd: AW:  Contract   Draft") == "contract draft"
    assert subject_key("Re[2]: FW: contract draft") == "contract draft"
    assert subject_key("Re: hi") == ""  # too short to thread by


def test_keys_recorded_once_and_looked_up_newest_first(store) -> None:
    with transaction(store):
        for i, matters in ((1, ["1234"]), (2, ["5678", "1234"])):
            store.db.execute("INSERT INTO messages (sha256, size, received) VALUES (?, 1, 0)", [f"sha{i}"])
            for m in matters:
                d.record_filing(store, d.Filing(i, m, None, "subject", f"x@{CA}", ""))
            assert record_thread_keys(store, i, [("msgid", "same@x.test"), ("subject", "papers")]) == 2
            assert record_thread_keys(store, i, [("msgid", "same@x.test")]) == 0  # a redelivery adds none
    got = [(h.matter, h.message) for h in thread_filings(store, "msgid", "same@x.test")]
    assert got == [("5678", 2), ("1234", 2), ("1234", 1)]
    assert thread_filings(store, "msgid", "other@x.test") == []
    with pytest.raises(ValueError):
        record_thread_keys(store, 1, [("bogus", "k")])


def test_a_reply_files_to_the_matter_of_the_message_it_answers(store, tmp_path) -> None:
    cfg = make_cfg(tmp_path)
    first = filing.file_message(eml("<Orig.1@LawFirm.test>", "[M-1234] papers"), None, [f"nobody@{CA}"], store, cfg)
    assert [(f.matter, f.rule) for f in first.outcomes[0].result.filings] == [("1234", "subject")]
    reply = eml("<reply.1@client.example>", "Re: papers", extra="In-Reply-To: <Orig.1@lawfirm.TEST>\r\n")
    res = filing.file_message(reply, None, [f"nobody@{CA}"], store, cfg)
    assert [(f.matter, f.rule, f.detail) for f in res.outcomes[0].result.filings] == [
        ("1234", "thread", f"In-Reply-To <Orig.1@lawfirm.test> (message {first.message_id})")]
    # the reply's own id is recorded: a reply to the reply threads too, through References
    third = eml("<3@client.example>", extra="References: <nothing@x.test> <reply.1@client.example>\r\n")
    res = filing.file_message(third, None, [f"nobody@{CA}"], store, cfg)
    assert [(f.matter, f.rule) for f in res.outcomes[0].result.filings] == [("1234", "thread")]
    # a redelivery of the first message does not thread to itself
    again = filing.route(eml("<Orig.1@LawFirm.test>", "papers"), f"nobody@{CA}", store, cfg)
    assert again.filings == []


def test_capture_copy_records_the_message_id_the_milter_saw(store, tmp_path) -> None:
    cfg = make_cfg(tmp_path)
    record_envelope(store, EnvelopeRecord("0123456789ab", "QOUT", "alice@lawfirm.test", ("client@example.test",),
                                          "alice@lawfirm.test", "127.0.0.1", 0.0, message_id="seen@lawfirm.test"))
    assert get_envelope(store, "0123456789ab").message_id == "seen@lawfirm.test"
    rcpt = capture_address(f"capture@{CA}", "0123456789ab", SECRET)
    # a copy whose header id differs from what the milter saw (rewritten later on the way): both are keys
    filing.file_message(eml("<header@lawfirm.test>", "[M-5678] estate", frm="alice@lawfirm.test"),
                        "alice@lawfirm.test", [rcpt], store, cfg)
    for ref in ("seen@lawfirm.test", "header@lawfirm.test"):
        res = filing.route(eml("<r@client.example>", extra=f"In-Reply-To: <{ref}>\r\n"), f"nobody@{CA}", store, cfg)
        assert [(f.matter, f.rule) for f in res.filings] == [("5678", "thread")], ref


def test_deleting_a_message_removes_its_keys(store, tmp_path) -> None:
    cfg = make_cfg(tmp_path)
    first = filing.file_message(eml("<gone@lawfirm.test>", "[M-1234] x"), None, [f"nobody@{CA}"], store, cfg)
    delete_message(store, first.message_id, "test")
    assert store.db.execute("SELECT COUNT(*) FROM thread_keys").fetchone()[0] == 0
    res = filing.route(eml("<r@x.test>", extra="In-Reply-To: <gone@lawfirm.test>\r\n"), f"nobody@{CA}", store, cfg)
    assert res.filings == []


def test_migration_9_backfills_message_ids_and_subjects(blank_store_location, tmp_path, monkeypatch) -> None:
    from mattermail import store as storemod
    from mattermail.store import schema, schema_pg

    n = [i for i, fn in enumerate(storemod.MIGRATIONS, 1) if fn.__name__ == "_m009_thread_keys"]
    assert n == [9]
    monkeypatch.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:8])
    monkeypatch.setattr(schema_pg, "PG_MIGRATIONS", schema_pg.PG_MIGRATIONS[:8])
    old = Store(blank_store_location, tmp_path / "m")
    assert old.schema_version() == 8
    for i, (header_id, subject) in enumerate((("<Old.1@Example.ORG>", "Re: Contract draft"), ("", "hi"),
                                              ("junk", "")), 1):
        old.db.execute("INSERT INTO messages (sha256, size, received, message_id, subject) VALUES (?, 1, 0, ?, ?)",
                       [f"s{i}", header_id, subject])
    old.db.execute("INSERT INTO envelopes (ref, queue_id, mail_from, recipients, login, client, created) "
                   "VALUES ('aaaaaaaaaaaa', 'Q', 'a@x.test', '[]', 'a@x.test', '127.0.0.1', 0)")
    old.close()
    monkeypatch.undo()
    new = Store(blank_store_location, tmp_path / "m")
    assert new.schema_version() >= 9
    rows = new.db.execute("SELECT message, kind, key FROM thread_keys ORDER BY message, kind").fetchall()
    assert rows == [(1, "msgid", "Old.1@example.org"), (1, "subject", "contract draft")]
    env = get_envelope(new, "aaaaaaaaaaaa")
    assert (env.message_id, env.direction) == ("", "outbound")  # envelopes recorded before: outbound capture
    new.close()


def test_import_threads_in_file_order_and_route_explain_names_the_reference(write_config, store_location,
                                                                           tmp_path) -> None:
    cfg = write_config(f'[general]\ncatchall_domains = ["{CA}"]\nsending_domains = ["lawfirm.test"]\n',
                       store=store_location)
    s = Store(store_location, tmp_path / "messages")
    d.add_matter(s, "1234", "Smith v Jones")
    s.close()
    folder = tmp_path / "mail"
    folder.mkdir()
    # file order: the original (filed by its tag), then a reply and a reply to the reply (no tag, no address)
    (folder / "1.eml").write_bytes(eml("<a@lawfirm.test>", "[M-1234] draft"))
    (folder / "2.eml").write_bytes(eml("<b@client.example>", "Re: draft", extra="In-Reply-To: <a@lawfirm.test>\r\n"))
    (folder / "3.eml").write_bytes(eml("<c@lawfirm.test>", "Re: Re: draft",
                                       extra="References: <a@lawfirm.test> <b@client.example>\r\n"))
    r = CliRunner().invoke(cli, ["--config", str(cfg), "import", str(folder)])
    assert r.exit_code == 0, r.output
    s = Store(store_location, tmp_path / "messages")
    rules = s.db.execute("SELECT m.message_id, f.matter, f.rule FROM filings f JOIN messages m ON m.id = f.message "
                         "ORDER BY m.id").fetchall()
    s.close()
    assert rules == [("<a@lawfirm.test>", "1234", "subject"), ("<b@client.example>", "1234", "thread"),
                     ("<c@lawfirm.test>", "1234", "thread")]
    reply = tmp_path / "reply.eml"
    reply.write_bytes(eml("<d@client.example>", "Re: draft",
                          extra="References: <a@lawfirm.test> <c@lawfirm.test>\r\n"))
    r = CliRunner().invoke(cli, ["--config", str(cfg), "route", "explain", str(reply), "--json"])
    out = json.loads(r.stdout)
    assert [(f["matter"], f["rule"]) for f in out["filings"]] == [("1234", "thread")]
    assert out["filings"][0]["detail"].startswith("References <c@lawfirm.test> (message 3)")
    assert any(": thread: References <c@lawfirm.test> → message 3, filed to matter 1234" in t for t in out["trace"])
    text = CliRunner().invoke(cli, ["--config", str(cfg), "route", "explain", str(reply)]).stdout
    assert "References <c@lawfirm.test>" in text and "rule thread" in text


def test_an_id_with_any_unicode_space_in_it_is_none() -> None:
    """The id test behind msgid (one regex search for a space) refuses exactly what str.isspace() calls a
    space, at every code point, and takes every other character."""
    import sys

    from mattermail.msgid import _norm

    spaces = [c for c in map(chr, range(sys.maxunicode + 1)) if c.isspace()]
    assert len(spaces) > 20 and all(_norm(f"a{c}b@x.test") is None for c in spaces)
    assert all(_norm(f"a{c}b@x.test") == f"a{c}b@x.test" for c in "!#%&'*+-/=?^_`{|}~é€\u200b\ufeff")
