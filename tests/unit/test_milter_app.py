"""The milter class driven through pymilter's TestCtx (no sockets)."""

import io
import logging

import Milter
import pytest
from Milter import testctx

from mattermail import config
from mattermail.milter.app import MatterMilter, Message, _guard
from mattermail.milter.runtime import Runtime
from mattermail import store as storemod

MSG = b"From: alice@lawfirm.test\nTo: bob@example.test\nSubject: hi\n\nhello\n"


class Ctx(testctx.TestCtx):
    pass


# the tests whose milter reads the store (users and their addresses) run on both engines
BOTH_ENGINES = pytest.mark.parametrize("store_engine", ("sqlite", "postgresql"), indirect=True)


def store_config(location, tmp_path) -> dict:
    """The [store] table for a ``new_store_location``: a SQLite path, or a PostgreSQL URL."""
    cfg = {"path": str(tmp_path / "s.sqlite"), "messages_dir": str(tmp_path / "m")}
    if isinstance(location, str):
        cfg["url"] = location
    return cfg


@pytest.fixture(autouse=True)
def milter_config(monkeypatch, tmp_path, new_store_location):
    # Negotiate no skipped steps, so TestCtx (which stops on NOREPLY) feeds every callback.
    monkeypatch.setattr(testctx.TestCtx, "default_opts", [Milter.CURR_ACTS, 0, 0, 0])
    cfg = config.from_dict({"milter": {"trusted_networks": ["127.0.0.1/32"]},
                            "store": store_config(new_store_location("s.sqlite"), tmp_path),
                            "dkim": {"keys_dir": str(tmp_path / "keys")},
                            # Nothing answers there: lookups fail at once (temperror), accepted and tagged.
                            "dns": {"nameservers": ["127.0.0.1"], "port": 9, "timeout": 1.0},
                            "inbound": {"on_temperror": "accept"}})
    MatterMilter.runtime = Runtime(cfg)
    storemod.add_user(MatterMilter.runtime.store(), "alice@lawfirm.test", "{ARGON2ID}x")
    Milter.factory = MatterMilter


def feed(ip: str, auth: str | None = None, queue_id: str = "4QX1Y2") -> Ctx:
    ctx = Ctx()
    ctx._setsymval("i", queue_id)
    if auth:
        ctx._setsymval("{auth_authen}", auth)
    assert ctx._connect(ip=ip) == Milter.CONTINUE
    ctx.rc = ctx._feedFile(io.BytesIO(MSG), "alice@lawfirm.test", "bob@example.test", "carol@example.test")
    return ctx


def test_inbound_is_accepted_and_logged(caplog):
    caplog.set_level(logging.INFO, "mattermail.milter")
    ctx = feed("192.0.2.7")
    assert ctx.rc == Milter.ACCEPT
    line = caplog.messages[-1]
    assert line.startswith("4QX1Y2: inbound ") and "nrcpt=2" in line and "spf=temperror" in line
    assert "Authentication-Results" in ctx._msg  # tagged, never a pass


def test_over_tcp_every_command_is_answered(tmp_path):
    MatterMilter.runtime = Runtime(config.from_dict({"milter": {"socket": "inet:127.0.0.1:8894"}}))
    opts = [Milter.CURR_ACTS, 0x1FFFFF, 0, 0]
    m = MatterMilter()
    m._setctx(Ctx())
    m.negotiate(opts)
    assert not opts[1] & (Milter.P_NR_HDR | Milter.P_NR_BODY | Milter.P_NR_MAIL)


@BOTH_ENGINES
def test_authenticated_submission_is_outbound(caplog):
    caplog.set_level(logging.INFO, "mattermail.milter")
    ctx = feed("192.0.2.7", auth="alice@lawfirm.test")
    assert ctx.rc == Milter.ACCEPT
    assert "4QX1Y2: outbound " in caplog.messages[-1] and "sasl_username=alice@lawfirm.test" in caplog.messages[-1]


@BOTH_ENGINES
def test_sending_as_someone_else_is_refused_with_reason():
    ctx = feed("192.0.2.7", auth="bob@lawfirm.test")
    assert ctx.rc == Milter.REJECT
    assert ctx._reply == ("553", "5.7.1", "<bob@lawfirm.test> may not send as <alice@lawfirm.test>")


def test_exception_becomes_451_with_traceback(caplog, monkeypatch):
    caplog.set_level(logging.INFO, "mattermail.milter")

    def broken(*args):
        raise RuntimeError("boom in direction")

    monkeypatch.setattr("mattermail.milter.app.inbound.verify_dkim", broken)
    ctx = feed("192.0.2.7")
    assert ctx.rc == Milter.TEMPFAIL
    assert ctx._reply[:2] == ("451", "4.3.0")
    assert any("boom in direction" in (r.exc_text or "") or r.exc_info for r in caplog.records)
    assert caplog.records[-1].getMessage().startswith("4QX1Y2: eom failed")


def test_failure_in_passive_callback_defers_at_eom(monkeypatch):
    def broken(self, rcpt, *params):
        raise ValueError("bad rcpt handling")

    broken.__name__ = "envrcpt"
    monkeypatch.setattr(MatterMilter, "envrcpt", Milter.noreply(_guard(broken)))
    ctx = feed("192.0.2.7")
    assert ctx.rc == Milter.TEMPFAIL and ctx._reply[0] == "451"


def test_negotiation_skips_unneeded_callbacks():
    """Protocol hygiene: Postfix is told not to wait for passive callbacks or send unused ones."""
    opts = [Milter.CURR_ACTS, 0x1FFFFF, 0, 0]
    m = MatterMilter()
    m._setctx(Ctx())
    assert m.negotiate(opts) == Milter.CONTINUE
    p = opts[1]
    for bit in (Milter.P_NR_CONN, Milter.P_NR_HELO, Milter.P_NR_MAIL, Milter.P_NR_HDR,
                Milter.P_NR_BODY, Milter.P_HDR_LEADSPC):
        assert p & bit, hex(bit)
    assert not p & (Milter.P_NR_RCPT | Milter.P_NORCPT)  # RCPT is answered: the capture address is refused there
    for bit in (Milter.P_NOEOH, Milter.P_NODATA, Milter.P_NOUNKNOWN):
        assert p & bit, hex(bit)


def test_byte_level_callbacks_answer_noreply_only_when_negotiated():
    """libmilter calls envrcpt_bytes/header_bytes/body directly (no decorator layers)."""
    for nr, want in ((True, Milter.NOREPLY), (False, Milter.CONTINUE)):
        m = MatterMilter()
        m._setctx(Ctx())
        m._protocol = (Milter.P_NR_HDR | Milter.P_NR_BODY) if nr else 0
        m.msg = Message(mail_from="alice@lawfirm.test")
        assert m.envrcpt_bytes(b"<bob@example.test>", b"NOTIFY=NEVER") == Milter.CONTINUE  # always answered
        assert m.header_bytes("Subject", b" caf\xc3\xa9 \xff") == want
        assert m.body(b"hello\r\n") == want
        assert m.msg.recipients == ["bob@example.test"]
        assert m.msg.headers == [("Subject", " caf\u00e9 \udcff")]  # pymilter's own decoding
    assert MatterMilter.body.milter_protocol == Milter.P_NR_BODY


def test_failure_in_a_byte_level_callback_defers_at_eom(monkeypatch, caplog):
    caplog.set_level(logging.INFO, "mattermail.milter")

    class Boom(list):
        def append(self, item):
            raise ValueError("bad header handling")

    m = MatterMilter()
    m._setctx(Ctx())
    m._protocol = 0
    m.msg = Message(mail_from="alice@lawfirm.test", queue_id="4QX1Y3")
    m.msg.headers = Boom()
    assert m.header_bytes("Subject", b" hi") == Milter.CONTINUE
    assert any(r.getMessage() == "4QX1Y3: header failed" and r.exc_info for r in caplog.records)
    assert m.eom() == Milter.TEMPFAIL


def test_replacement_body_goes_in_full_milter_chunks():
    from mattermail.milter.app import REPLACE_CHUNK, _chunks

    pieces = [b"a" * 65536, memoryview(b"b" * 70000)[3:], b"", b"c" * 10]
    out = list(_chunks(iter(pieces), REPLACE_CHUNK))
    assert b"".join(out) == b"a" * 65536 + b"b" * 69997 + b"c" * 10
    assert [len(c) for c in out[:-1]] == [REPLACE_CHUNK] * (len(out) - 1) and 0 < len(out[-1]) <= REPLACE_CHUNK
    assert all(isinstance(c, bytes) for c in out)


CAPTURE_REFUSALS = ["<capture@matters.lawfirm.test>", "<Capture@MATTERS.lawfirm.test>",
                    "<capture+abcdefabcdef.0123456789abcdef@matters.lawfirm.test>", '<"capture"@matters.lawfirm.test>',
                    '<"CAPTURE+x"@matters.lawfirm.test>', "<capture@matters.lawfirm.test.>",
                    "<@relay.example:capture@matters.lawfirm.test>", "<capture%matters.lawfirm.test@[127.0.0.1]>",
                    "<matters.lawfirm.test!capture>", "<cap\\ture@matters.lawfirm.test>"]


@pytest.mark.parametrize("rcpt", CAPTURE_REFUSALS)
@pytest.mark.parametrize("auth", [None, "alice@lawfirm.test"])
def test_a_client_naming_the_capture_address_is_refused_at_rcpt(tmp_path, caplog, rcpt, auth):
    caplog.set_level(logging.INFO, "mattermail.milter")
    cfg = MatterMilter.runtime.config
    MatterMilter.runtime = Runtime(config.from_dict({
        "milter": {"trusted_networks": ["127.0.0.1/32"]},
        "store": {"path": str(cfg.store.path), "messages_dir": str(cfg.store.messages_dir)},
        "capture": {"address": "capture@matters.lawfirm.test", "secret_file": str(tmp_path / "none")}}))
    ctx = Ctx()
    if auth:
        ctx._setsymval("{auth_authen}", auth)
    ctx._connect(ip="192.0.2.7")
    assert ctx._envfrom("<alice@lawfirm.test>") == Milter.CONTINUE
    assert ctx._envrcpt("<bob@example.test>") == Milter.CONTINUE
    assert ctx._envrcpt(rcpt) == Milter.REJECT, rcpt
    shown = rcpt.strip("<>").replace("%", "?")
    assert ctx._reply == ("550", "5.7.1", f"<{shown}>: the capture address accepts only copies made by this server")
    assert ctx.getpriv().msg.recipients == ["bob@example.test"]
    line = [r.getMessage() for r in caplog.records if "capture address named by a client" in r.getMessage()]
    assert len(line) == 1 and ("sasl_username=alice@lawfirm.test" in line[0]) == bool(auth), line


@pytest.mark.parametrize("rcpt", ["<capture@lawfirm.test>", "<capturex@matters.lawfirm.test>",
                                  "<1234@matters.lawfirm.test>", "<alice+capture@matters.lawfirm.test>",
                                  "<capture@matters.lawfirm.test.example>", "<bob@example.test>"])
def test_other_recipients_pass_rcpt(tmp_path, rcpt):
    cfg = MatterMilter.runtime.config
    MatterMilter.runtime = Runtime(config.from_dict({
        "store": {"path": str(cfg.store.path), "messages_dir": str(cfg.store.messages_dir)},
        "capture": {"address": "capture@matters.lawfirm.test", "secret_file": str(tmp_path / "none")}}))
    ctx = Ctx()
    ctx._connect(ip="192.0.2.7")
    ctx._envfrom("<x@example.test>")
    assert ctx._envrcpt(rcpt) == Milter.CONTINUE, rcpt
    assert ctx.getpriv().msg.recipients == [rcpt.strip("<>")]


# --- issue 11: authors, display names, forged Authentication-Results ----------------------

import dataclasses  # noqa: E402


class RecordingCtx(Ctx):
    """TestCtx deletes every field of a name on chgheader; record what the milter asked for."""

    def __init__(self) -> None:
        super().__init__()
        self.changes: list[tuple[str, int, str]] = []

    def chgheader(self, field, idx, value):
        self.changes.append((field, idx, value))
        return super().chgheader(field, idx, value)


def configure(**inbound) -> None:
    cfg = MatterMilter.runtime.config
    MatterMilter.runtime = Runtime(dataclasses.replace(
        cfg, general=dataclasses.replace(cfg.general, sending_domains=("lawfirm.test",), hostname="mx.lawfirm.test"),
        inbound=dataclasses.replace(cfg.inbound, **inbound),
        dns=dataclasses.replace(cfg.dns, timeout=0.1)))  # dead either way: no need to wait a second


def feed_raw(raw: bytes, sender: str = "bob@example.test", ip: str = "192.0.2.7", auth: str | None = None) -> RecordingCtx:
    configure() if "lawfirm.test" not in MatterMilter.runtime.config.general.sending_domains else None
    ctx = RecordingCtx()
    ctx._setsymval("i", "4QX1Y9")
    if auth:
        ctx._setsymval("{auth_authen}", auth)
    assert ctx._connect(ip=ip) == Milter.CONTINUE
    ctx.rc = ctx._feedFile(io.BytesIO(raw), sender, "alice@lawfirm.test")
    return ctx


def our_ar(ctx: Ctx) -> str:
    values = [v for v in ctx._msg.get_all("Authentication-Results", []) if str(v).lstrip().startswith("mx.lawfirm.test")]
    assert len(values) == 1, values
    return str(values[0])


BODY = b"To: alice@lawfirm.test\nSubject: probe\n\nhi\n"


def test_two_from_fields_are_refused_before_any_dns(caplog, monkeypatch):
    caplog.set_level(logging.INFO, "mattermail.milter")
    monkeypatch.setattr("mattermail.milter.app.inbound.verify_dkim", lambda *a: pytest.fail("DKIM work for a refused message"))
    ctx = feed_raw(b"From: alice@lawfirm.test\nFrom: bob@example.test\n" + BODY)
    assert ctx.rc == Milter.REJECT
    assert ctx._reply == ("550", "5.7.1", "Message has 2 From: header fields; RFC 5322 allows exactly one")
    assert "verdict=reject reason=2 From header fields" in caplog.messages[-1]


def test_no_from_and_encoded_word_from_are_refused_but_a_bounce_without_address_is_not(caplog):
    caplog.set_level(logging.INFO, "mattermail.milter")
    ctx = feed_raw(BODY)
    assert (ctx.rc, ctx._reply) == (Milter.REJECT, ("550", "5.7.1", "Message has no From: header field, so no valid "
                                                                    "author address (RFC 5322)"))
    ctx = feed_raw(b"From: =?utf-8?q?ceo=40lawfirm.test?=\n" + BODY)
    assert (ctx.rc, ctx._reply) == (Milter.REJECT, ("550", "5.7.1", "Message has no valid author address in its "
                                                                    "From: header field (RFC 5322)"))
    ctx = feed_raw(b"From: Mail Delivery Subsystem <MAILER-DAEMON>\n" + BODY, sender="")
    assert ctx.rc == Milter.ACCEPT and "dmarc=permerror" in our_ar(ctx)
    configure(invalid_from="tag")
    ctx = feed_raw(BODY)
    assert ctx.rc == Milter.ACCEPT and "verdict=tag reason=no From header field" in caplog.messages[-1]


def test_multi_author_from_gets_a_dmarc_result_per_domain(caplog):
    caplog.set_level(logging.INFO, "mattermail.milter")
    ctx = feed_raw(b"From: alice@lawfirm.test, bob@example.test\n" + BODY)
    assert ctx.rc == Milter.ACCEPT  # the fixture's DNS is dead: temperror, accepted and tagged
    ar = our_ar(ctx)
    assert "header.from=lawfirm.test" in ar and "header.from=example.test" in ar, ar
    assert "dmarc=temperror,temperror" in caplog.messages[-1]


def test_display_name_spoof_is_tagged_or_refused(caplog):
    caplog.set_level(logging.INFO, "mattermail.milter")
    raw = b'From: "=?utf-8?q?ceo=40lawfirm.test?=" <bob@example.test>\n' + BODY
    ctx = feed_raw(raw)
    assert ctx.rc == Milter.ACCEPT
    assert "x-display-name=spoofed policy.impersonates=ceo@lawfirm.test" in our_ar(ctx)
    assert "display_name_spoof=<ceo@lawfirm.test>" in caplog.messages[-1]
    configure(display_name_spoof="reject")
    ctx = feed_raw(raw)
    assert (ctx.rc, ctx._reply) == (Milter.REJECT, ("550", "5.7.1", "The From: display name impersonates "
                                                                    "<ceo@lawfirm.test>, an address of this organization"))
    configure(display_name_spoof="off")
    assert "x-display-name" not in our_ar(feed_raw(raw))


def test_forged_authentication_results_are_removed_on_submission_too(caplog):
    caplog.set_level(logging.INFO, "mattermail.milter")
    raw = (b"Authentication-Results: mx.lawfirm.test; dkim=pass header.d=bank.test\n"
           b"Authentication-Results: other.example; spf=pass\n"
           b"authentication-results: (x)\n MX.LawFirm.Test 1; dmarc=pass\n"
           b"From: alice@lawfirm.test\nTo: carol@lawfirm.test\nSubject: forged\n\nhi\n")
    for kw in ({"auth": "alice@lawfirm.test"}, {"ip": "127.0.0.1"}):  # SASL submission; trusted network
        ctx = feed_raw(raw, sender="alice@lawfirm.test", **kw)
        assert ctx.rc == Milter.ACCEPT, kw
        assert ctx.changes == [("Authentication-Results", 3, ""), ("Authentication-Results", 1, "")], kw
        assert "removed_forged_ar=2" in caplog.messages[-1] and " outbound " in caplog.messages[-1]
