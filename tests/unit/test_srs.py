import asyncio
import time

import pytest

from mattermail import socketmap
from mattermail.srs import SRSCodec

SECRET = b"an-srs-secret-of-enough-length"


@pytest.fixture
def codec():
    return SRSCodec(SECRET, "lawfirm.test", ["lawfirm.test", "matters.lawfirm.test"])


def test_forward_only_foreign_senders(codec):
    v = codec.forward("bob@example.test")
    assert v.status == "OK" and v.value.startswith("SRS0=") and v.value.endswith("@lawfirm.test")
    assert "example.test=bob" in v.value
    for local in ("alice@lawfirm.test", "x@matters.lawfirm.test", "", "MAILER-DAEMON", v.value):
        assert codec.forward(local).status == "NOTFOUND", local


def test_genuine_bounce_reverses_forged_and_expired_are_refused(codec):
    srs = codec.forward("bob@example.test").value
    assert codec.check(srs).status == "NOTFOUND"  # no objection: accepted at RCPT
    assert codec.reverse(srs).value == "bob@example.test"
    assert codec.unwrap(srs) == "bob@example.test"

    forged = srs.replace("SRS0=", "SRS0=x", 1)
    assert "signature" in codec.check(forged).value and codec.check(forged).value.startswith("REJECT 5.1.1")
    other = SRSCodec(b"another-secret-entirely-different", "lawfirm.test", []).forward("bob@example.test").value
    assert codec.check(other).value.startswith("REJECT")
    assert codec.reverse(other).status == "NOTFOUND"

    # Made 30 days ago (srslib's clock hook), the address is past the 21-day validity.
    then = SRSCodec(SECRET, "lawfirm.test", [])
    then._srs._time_fn = lambda: time.time() - 30 * 86400
    expired = then.forward("bob@example.test").value
    assert codec.check(expired).value == "REJECT 5.1.1 This bounce address has expired (SRS)"


def test_socketmap_protocol_round_trip(codec):
    async def run() -> list[bytes]:
        tables = {"srs_forward": codec.forward, "srs_check": codec.check}

        def lookup(name, key):
            fn = tables.get(name)
            if fn is None:
                return "PERM", "no such map"
            v = fn(key)
            return v.status, v.value

        srv = await asyncio.start_server(socketmap.handler(lookup), "127.0.0.1", 0)
        port = srv.sockets[0].getsockname()[1]
        r, w = await asyncio.open_connection("127.0.0.1", port)
        out = []
        for req in (b"srs_forward bob@example.test", b"srs_forward alice@lawfirm.test", b"nosuch x"):
            w.write(socketmap.netstring(req))
            await w.drain()
            out.append(await socketmap.read_netstring(r))
        w.close()
        srv.close()
        return out

    ok, notfound, perm = asyncio.run(run())
    assert ok.startswith(b"OK SRS0=") and notfound == b"NOTFOUND " and perm.startswith(b"PERM ")


def test_srs_secret_problems_name_the_srs_key_not_capture(tmp_path):
    from mattermail.config import from_dict
    from mattermail.srs import SRSConfigError, load_codec as load_srs

    cfg = from_dict({"srs": {"listen": "127.0.0.1:10001", "domain": "lawfirm.test",
                             "secret_file": str(tmp_path / "srs.key")}})
    with pytest.raises(SRSConfigError, match=r"^srs\.secret_file: cannot read SRS secret .*srs\.key"):
        load_srs(cfg)
    (tmp_path / "srs.key").write_text("short\n")
    with pytest.raises(SRSConfigError, match=r"SRS secret .* is shorter than 16 bytes"):
        load_srs(cfg)
    (tmp_path / "srs.key").write_text("0123456789abcdef0123456789abcdef\n")
    assert load_srs(cfg) is not None
