"""mattermailctl postfix configure, against a fresh copy of Debian's stock Postfix config.

The fixture builds what Debian's postinst writes on a fresh install (main.cf =
/usr/share/postfix/main.cf.debian, plus main.cf.tls when the snakeoil key
exists, plus its `smtpd_relay_restrictions`; master.cf = master.cf.dist).
A bare copy of main.cf.dist (the commented reference) fails `postfix check`
("bad string length 0 < 1: setgid_group"), so it is not what an admin has.
queue_directory / data_directory point at tmp dirs so `postfix check` (which
creates missing queue directories) never touches the system spool.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import mattermail.ctl.postfixcmd  # noqa: F401  (registers "postfix" on cli)
import mattermail.ctl.users  # noqa: F401  (registers "user", for the stack test)
import pytest
from click.testing import CliRunner
from mattermail.ctl.base import cli

from mattermail import config as configmod
from mattermail.ctl import postfixconf

STOCK = Path("/usr/share/postfix")
pytestmark = pytest.mark.skipif(
    shutil.which("postconf") is None or not (STOCK / "main.cf.debian").exists() or os.geteuid() != 0,
    reason="needs Debian's postfix package and root (postfix check)",
)


def stock_master() -> Path:
    return STOCK / "master.cf.dist" if (STOCK / "master.cf.dist").exists() else Path("/etc/postfix/master.cf")


@pytest.fixture
def pf(tmp_path: Path) -> Path:
    """A Postfix config dir as Debian's postinst creates it, with a private spool."""
    etc, spool, data = tmp_path / "etc", tmp_path / "spool", tmp_path / "data"
    for d in (etc, spool, data):
        d.mkdir()
    shutil.chown(data, "postfix", "postfix")
    text = (STOCK / "main.cf.debian").read_text()
    if Path("/etc/ssl/private/ssl-cert-snakeoil.key").exists():
        text += (STOCK / "main.cf.tls").read_text()
    (etc / "main.cf").write_text(text)
    shutil.copy(stock_master(), etc / "master.cf")
    postconf(etc, "-e", "smtpd_relay_restrictions=permit_mynetworks permit_sasl_authenticated defer_unauth_destination",
             f"queue_directory={spool}", f"data_directory={data}")
    return etc


def postconf(etc: Path, *args: str) -> str:
    out = subprocess.run(["postconf", "-c", str(etc), *args], capture_output=True, text=True, check=True).stdout
    backdate(etc)
    return out


def backdate(etc: Path) -> None:
    """Postfix waits (up to ~2 s) before reading a main.cf changed in the last second or two."""
    old = time.time() - 10
    for f in ("main.cf", "master.cf"):
        os.utime(etc / f, (old, old))


def write_cfg(tmp_path: Path, etc: Path, milter: str | None = None, extra: str = "") -> Path:
    milter = milter or f"unix:{tmp_path}/spool/mattermail/milter.sock"
    p = tmp_path / "mattermail.toml"
    p.write_text(f"""
[general]
sending_domains = ["firm.example"]
catchall_domains = ["matters.firm.example"]
[milter]
socket = "{milter}"
[router]
listen = ["unix:/run/mattermail/lmtp.sock", "127.0.0.1:2424"]
[srs]
listen = "127.0.0.1:10001"
domain = "firm.example"
[auth]
sender_login_map = "{tmp_path}/sender-login-map"
[postfix]
config_dir = "{etc}"
{extra}
""")
    return p


def run(cfg: Path, *args: str):
    return CliRunner().invoke(cli, ["--config", str(cfg), "postfix", "configure", *args])


def snapshot(etc: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(etc.iterdir())}


def test_configure_twice_second_run_changes_nothing(pf: Path, tmp_path: Path):
    cfg = write_cfg(tmp_path, pf)
    before = snapshot(pf)
    r = run(cfg)
    assert r.exit_code == 0, r.output
    assert "main.cf: smtpd_milters = unix:/mattermail/milter.sock" in r.output
    assert "master.cf: new service submission inet n - y - - smtpd" in r.output
    assert "postfix check: ok" in r.output and "reload" in r.output

    # backups hold the original bytes
    backups = sorted(pf.glob("*.mattermail-*.bak"))
    assert [b.name.split(".mattermail-")[0] for b in backups] == ["main.cf", "master.cf"]
    assert all(f"backup: {b}" in r.output for b in backups)
    for b in backups:
        assert b.read_bytes() == before[b.name.split(".mattermail-")[0]]

    main = dict(line.split(" = ", 1) for line in postconf(pf, "-n").splitlines() if " = " in line)
    assert main["smtpd_milters"] == "unix:/mattermail/milter.sock"
    assert main["non_smtpd_milters"] == "$smtpd_milters"
    assert main["milter_default_action"] == "tempfail"
    assert main["milter_protocol"] == "6"
    assert main["milter_connect_macros"] == postfixconf.CONNECT_MACROS
    assert main["milter_mail_macros"] == postfixconf.MAIL_MACROS
    assert main["relay_domains"] == "matters.firm.example"
    assert main["transport_maps"] == f"texthash:{pf}/mattermail-transport"
    # the first router listener is a unix socket outside the spool: the TCP one is used
    assert (pf / "mattermail-transport").read_text().splitlines()[-1] == "matters.firm.example\tlmtp:inet:127.0.0.1:2424"
    senders, recipients = f"regexp:{pf}/mattermail-srs-senders", f"regexp:{pf}/mattermail-srs-recipients"
    assert main["sender_canonical_maps"] == f"pipemap:{{{senders}, socketmap:inet:127.0.0.1:10001:srs_forward}}"
    assert main["recipient_canonical_maps"] == f"pipemap:{{{recipients}, socketmap:inet:127.0.0.1:10001:srs_reverse}}"
    assert main["smtpd_recipient_restrictions"] == \
        f"check_recipient_access pipemap:{{{recipients}, socketmap:inet:127.0.0.1:10001:srs_check}}"
    assert main["smtpd_sasl_type"] == "dovecot" and main["smtpd_sasl_path"] == "private/auth"

    # Postfix's own postmap reads the filters: what mattermail-srs may change goes on to it (the filter passes
    # the address on unchanged); the rest is not found, as the daemon would answer, without asking it.
    def passed(table: str, key: str) -> str | None:
        r = subprocess.run(["postmap", "-c", str(pf), "-q", key, f"regexp:{pf}/{table}"],
                           capture_output=True, text=True, check=False)
        assert r.returncode in (0, 1), r.stderr
        return r.stdout.strip() if r.returncode == 0 else None

    for foreign in ("bob@example.test", "Bob@Sub.Firm.Example", "bob@firmXexample", "x@firm.example.evil"):
        assert passed("mattermail-srs-senders", foreign) == foreign
    for own in ("alice@firm.example", "Alice@FIRM.EXAMPLE", "x+y@matters.firm.example", "@example.test", "bob"):
        assert passed("mattermail-srs-senders", own) is None
    for srs in ("SRS0=h=TT=example.test=bob@firm.example", "srs0=h=tt=example.test=bob@FIRM.example"):
        assert passed("mattermail-srs-recipients", srs) == srs
    for other in ("dave@example.test", "capture+r@matters.firm.example", "firm.example", "@firm.example"):
        assert passed("mattermail-srs-recipients", other) is None
    # the admin's settings and comments are still there
    assert main["smtpd_relay_restrictions"] == "permit_mynetworks permit_sasl_authenticated defer_unauth_destination"
    assert "# See http://www.postfix.org/COMPATIBILITY_README.html" in (pf / "main.cf").read_text()
    assert (pf / "master.cf").read_bytes().startswith(before["master.cf"])  # only appended to

    assert postconf(pf, "-M", "submission/inet").split()[:8] == ["submission", "inet", "n", "-", "y", "-", "-", "smtpd"]
    opts = dict(line.split(" = ", 1) for line in postconf(pf, "-P", "submission/inet").splitlines())
    assert opts["submission/inet/smtpd_tls_security_level"] == "encrypt"
    assert opts["submission/inet/smtpd_sasl_auth_enable"] == "yes"
    assert opts["submission/inet/smtpd_tls_auth_only"] == "yes"
    assert opts["submission/inet/smtpd_sender_login_maps"] == f"hash:{tmp_path}/sender-login-map"
    assert opts["submission/inet/smtpd_sender_restrictions"] == "reject_sender_login_mismatch"
    assert opts["submission/inet/smtpd_recipient_restrictions"] == "permit_sasl_authenticated,reject"

    after_first = snapshot(pf)
    r2 = run(cfg)
    assert r2.exit_code == 0, r2.output
    assert "no change" in r2.output and "main.cf:" not in r2.output
    assert snapshot(pf) == after_first  # byte-identical, and no new backups


def test_dry_run_writes_nothing_and_prints_the_diff(pf: Path, tmp_path: Path):
    cfg = write_cfg(tmp_path, pf)
    before = snapshot(pf)
    r = run(cfg, "--dry-run")
    assert r.exit_code == 0, r.output
    assert snapshot(pf) == before
    assert f"--- {pf}/main.cf" in r.output and f"+++ {pf}/master.cf" in r.output
    assert "+smtpd_milters = unix:/mattermail/milter.sock" in r.output
    assert "+submission inet  n       -       y       -       -       smtpd" in r.output
    assert "+    -o smtpd_tls_security_level=encrypt" in r.output
    assert "+++ " + str(pf / "mattermail-transport") in r.output
    assert "nothing written" in r.output
    # after a real run, a dry run has nothing to show
    assert run(cfg).exit_code == 0
    r = run(cfg, "--dry-run")
    assert r.exit_code == 0 and "no change" in r.output and "---" not in r.output


def test_failed_postfix_check_restores_the_original_bytes(pf: Path, tmp_path: Path, monkeypatch):
    cfg = write_cfg(tmp_path, pf)
    before = snapshot(pf)
    real = postfixconf.postfix_check
    calls = []

    def check_fails_after_the_change(config_dir):
        calls.append(config_dir)
        if len(calls) == 1:
            return real(config_dir)  # the check before changing: the stock config passes
        assert postconf(pf, "-h", "smtpd_milters").strip() == "unix:/mattermail/milter.sock"  # it was written
        return False, "postfix/postfix-script: warning: x\npostfix: fatal: simulated: bad table"

    monkeypatch.setattr(postfixconf, "postfix_check", check_fails_after_the_change)
    r = run(cfg)
    assert r.exit_code == 1
    assert r.output.strip().splitlines()[-1] == (
        "Error: postfix check failed, original files restored: postfix: fatal: simulated: bad table")
    assert len(calls) == 2
    assert snapshot(pf) == before  # main.cf, master.cf original bytes; no transport table, no backups left


def test_config_already_broken_is_refused_with_postfix_message(pf: Path, tmp_path: Path):
    postconf(pf, "-e", "mail_owner=no-such-user-mm")
    cfg = write_cfg(tmp_path, pf)
    before = snapshot(pf)
    r = run(cfg)
    assert r.exit_code == 1
    line = r.output.strip().splitlines()[-1]
    assert "postfix check fails before any change" in line and "mail_owner" in line and "no-such-user-mm" in line
    assert snapshot(pf) == before


def test_unwire_takes_out_the_srs_pipemaps_and_their_filters(pf: Path, tmp_path: Path):
    """packaging/unwire-postfix after `postfix configure` with SRS: the pipemaps (with the braces and the
    blank inside them), the srs_check restriction and both filter files go; the admin's items stay."""
    postconf(pf, "-e", "smtpd_recipient_restrictions=reject_unauth_pipelining", "sender_canonical_maps=hash:/a")
    cfg = write_cfg(tmp_path, pf)
    assert run(cfg).exit_code == 0
    assert (pf / "mattermail-srs-senders").exists() and (pf / "mattermail-srs-recipients").exists()
    unwire = Path(__file__).resolve().parents[2] / "packaging" / "unwire-postfix"
    r = subprocess.run(["sh", str(unwire), "--config-dir", str(pf)], capture_output=True, text=True, check=False,
                       env={**os.environ, "MATTERMAIL_CONFIG": str(cfg)})
    assert r.returncode == 0, r.stdout + r.stderr
    main = dict(line.split(" = ", 1) for line in postconf(pf, "-n").splitlines() if " = " in line)
    assert main["sender_canonical_maps"] == "hash:/a"
    assert "recipient_canonical_maps" not in main
    assert main["smtpd_recipient_restrictions"] == "reject_unauth_pipelining"
    assert not (pf / "mattermail-srs-senders").exists() and not (pf / "mattermail-srs-recipients").exists()
    left = postconf(pf, "-n")
    assert "socketmap" not in left and "pipemap" not in left and "mattermail-srs" not in left, left


def test_existing_lists_are_kept_and_ours_added(pf: Path, tmp_path: Path):
    postconf(pf, "-e", "relay_domains=old.example, $mydestination", "transport_maps=hash:/etc/postfix/transport",
             "smtpd_milters=inet:127.0.0.1:11332", "smtpd_recipient_restrictions=reject_unauth_pipelining",
             "milter_connect_macros=j {daemon_name} v {if_name}")
    cfg = write_cfg(tmp_path, pf)
    r = run(cfg)
    assert r.exit_code == 0, r.output
    assert "warning: smtpd_milters" not in r.output  # ours is appended last: nothing to warn about
    main = dict(line.split(" = ", 1) for line in postconf(pf, "-n").splitlines() if " = " in line)
    assert main["relay_domains"] == "old.example, $mydestination, matters.firm.example"
    assert main["transport_maps"] == f"texthash:{pf}/mattermail-transport, hash:/etc/postfix/transport"
    assert main["smtpd_milters"] == "inet:127.0.0.1:11332, unix:/mattermail/milter.sock"
    assert main["smtpd_recipient_restrictions"] == (f"check_recipient_access pipemap:{{regexp:{pf}/mattermail-srs-"
                                                    "recipients, socketmap:inet:127.0.0.1:10001:srs_check}, "
                                                    "reject_unauth_pipelining")
    assert main["milter_connect_macros"] == postfixconf.CONNECT_MACROS + " {if_name}"
    # a second run, and one with a second catch-all domain, merge again without duplicates
    assert "no change" in run(cfg).output
    cfg2 = write_cfg(tmp_path, pf, extra="")
    cfg2.write_text(cfg2.read_text().replace('["matters.firm.example"]', '["matters.firm.example", "cases.firm.example"]'))
    r = run(cfg2)
    assert r.exit_code == 0, r.output
    assert postconf(pf, "-h", "relay_domains").strip() == "old.example, $mydestination, matters.firm.example, cases.firm.example"
    assert "cases.firm.example\tlmtp:inet:127.0.0.1:2424" in (pf / "mattermail-transport").read_text()


def test_unix_milter_socket_outside_the_spool_is_a_clear_error(pf: Path, tmp_path: Path):
    cfg = write_cfg(tmp_path, pf, milter="unix:/run/mattermail/milter.sock")
    before = snapshot(pf)
    r = run(cfg)
    assert r.exit_code == 1
    line = r.output.strip().splitlines()[-1]
    assert line.startswith("Error: milter.socket: unix:/run/mattermail/milter.sock is outside the Postfix spool")
    assert f"unix:{tmp_path}/spool/mattermail/milter.sock" in line
    assert snapshot(pf) == before


def test_inet_milter_is_written_as_is(pf: Path, tmp_path: Path):
    cfg = write_cfg(tmp_path, pf, milter="inet:127.0.0.1:8894")
    assert run(cfg).exit_code == 0
    assert postconf(pf, "-h", "smtpd_milters").strip() == "inet:127.0.0.1:8894"


def test_a_milter_after_ours_is_warned_about(pf: Path, tmp_path: Path):
    postconf(pf, "-e", "smtpd_milters=unix:/mattermail/milter.sock, inet:127.0.0.1:11332")
    r = run(write_cfg(tmp_path, pf))
    assert r.exit_code == 0, r.output
    assert "warning: smtpd_milters: inet:127.0.0.1:11332 runs after mattermail's milter" in r.output
    assert postconf(pf, "-h", "smtpd_milters").strip() == "unix:/mattermail/milter.sock, inet:127.0.0.1:11332"


def test_existing_submission_service_is_completed_not_replaced(pf: Path, tmp_path: Path):
    postconf(pf, "-M", "submission/inet=submission inet n - y - 20 smtpd")
    postconf(pf, "-P", "submission/inet/smtpd_tls_wrappermode=no", "submission/inet/smtpd_tls_auth_only=no")
    cfg = write_cfg(tmp_path, pf)
    r = run(cfg)
    assert r.exit_code == 0, r.output
    assert "master.cf: submission/inet -o smtpd_tls_auth_only=yes  (was 'no')" in r.output
    assert postconf(pf, "-M", "submission/inet").split()[:8] == ["submission", "inet", "n", "-", "y", "-", "20", "smtpd"]
    opts = postconf(pf, "-P", "submission/inet")
    assert "smtpd_tls_wrappermode = no" in opts and "smtpd_tls_auth_only = yes" in opts
    assert postconf(pf, "-M").count("submission inet") == 1


def test_submission_running_something_else_is_refused(pf: Path, tmp_path: Path):
    postconf(pf, "-M", "submission/inet=submission inet n - y - - proxymap")
    r = run(write_cfg(tmp_path, pf))
    assert r.exit_code == 1
    assert "master.cf: submission/inet runs proxymap, not smtpd" in r.output


def test_missing_config_dir_and_help(tmp_path: Path, pf: Path):
    cfg = write_cfg(tmp_path, pf)
    r = run(cfg, "--config-dir", str(tmp_path / "nope"))
    assert r.exit_code == 1 and "--config-dir:" in r.output and "not a directory" in r.output
    (tmp_path / "empty").mkdir()
    r = run(cfg, "--config-dir", str(tmp_path / "empty"))
    assert r.exit_code == 1 and "has no main.cf" in r.output
    r = run(cfg, "--bogus")
    assert r.exit_code == 2
    r = CliRunner().invoke(cli, ["postfix", "configure", "--help"])
    assert r.exit_code == 0 and "Example:" in r.output and "--dry-run" in r.output


# -- edges: --edge --router HOST:PORT ---------------------------------------------------------


def edge_cfg(tmp_path: Path, etc: Path, store_url: str = "postgresql://mm@db.firm.example/mattermail") -> Path:
    """An edge's config: no router here (router.listen is this host's default unix socket), no SRS."""
    cfg = write_cfg(tmp_path, etc, extra=f'[store]\nurl = "{store_url}"\n' if store_url else "")
    text = cfg.read_text().replace('listen = ["unix:/run/mattermail/lmtp.sock", "127.0.0.1:2424"]\n', "")
    cfg.write_text(text.replace('[srs]\nlisten = "127.0.0.1:10001"\ndomain = "firm.example"\n', ""))
    return cfg


def test_edge_sends_catchall_mail_and_capture_copies_to_the_router_over_tcp(pf: Path, tmp_path: Path):
    cfg = edge_cfg(tmp_path, pf)
    # as a router host this config cannot be wired: its router listens on a unix socket outside the spool
    r = run(cfg)
    assert r.exit_code == 1 and "router.listen: unix:/run/mattermail/lmtp.sock" in r.output, r.output
    r = run(cfg, "--edge", "--router", "router.firm.example:2424")
    assert r.exit_code == 0, r.output
    assert "warning: store.url" not in r.output
    main = dict(line.split(" = ", 1) for line in postconf(pf, "-n").splitlines() if " = " in line)
    assert main["smtpd_milters"] == "unix:/mattermail/milter.sock"  # the milter is this host's own
    assert main["milter_default_action"] == "tempfail"
    assert main["relay_domains"] == "matters.firm.example"
    assert main["transport_maps"] == f"texthash:{pf}/mattermail-transport"
    table = (pf / "mattermail-transport").read_text()
    assert table.splitlines()[-1] == "matters.firm.example\tlmtp:inet:router.firm.example:2424"
    assert "this host is an edge" in table
    assert "sender_canonical_maps" not in main and "smtpd_recipient_restrictions" not in main  # no SRS here
    assert postconf(pf, "-M", "submission/inet").split()[:8] == ["submission", "inet", "n", "-", "y", "-", "-", "smtpd"]
    # idempotent; a moved router is one changed line in the table
    assert "no change" in run(cfg, "--edge", "--router", "router.firm.example:2424").output
    r = run(cfg, "--edge", "--router", "192.0.2.7:2525")
    assert r.exit_code == 0, r.output
    assert [ln for ln in r.output.splitlines() if ln.startswith(("main.cf", "master.cf", "rewrote", "new file"))] \
        == [f"rewrote {pf}/mattermail-transport"], r.output
    assert (pf / "mattermail-transport").read_text().splitlines()[-1] == "matters.firm.example\tlmtp:inet:192.0.2.7:2525"


def test_edge_dry_run_shows_the_router_address_and_writes_nothing(pf: Path, tmp_path: Path):
    cfg = edge_cfg(tmp_path, pf)
    before = snapshot(pf)
    r = run(cfg, "--edge", "--router", "[2001:db8::10]:2424", "--dry-run")
    assert r.exit_code == 0, r.output
    assert snapshot(pf) == before
    assert "+matters.firm.example\tlmtp:inet:[ipv6:2001:db8::10]:2424" in r.output
    assert "+smtpd_milters = unix:/mattermail/milter.sock" in r.output and "nothing written" in r.output


def test_edge_without_a_database_url_is_warned_about(pf: Path, tmp_path: Path):
    r = run(edge_cfg(tmp_path, pf, store_url=""), "--edge", "--router", "10.1.2.3:2424")
    assert r.exit_code == 0, r.output
    assert "warning: store.url: empty, so this edge's milter records capture envelopes in the local file" in r.output


@pytest.mark.parametrize("value, says", [
    ("router.firm.example", "expected the router host's LMTP address as HOST:PORT"),
    ("router.firm.example:", "expected the router host's LMTP address as HOST:PORT"),
    ("router.firm.example:0", "expected the router host's LMTP address as HOST:PORT"),
    ("router.firm.example:70000", "expected the router host's LMTP address as HOST:PORT"),
    ("unix:/run/mattermail/lmtp.sock", "is a unix socket, which another host cannot reach"),
    ("0.0.0.0:2424", "is a wildcard; name the router host's address"),
    ("[::]:2424", "is a wildcard; name the router host's address"),
    ("2001:db8::10:2424", "an IPv6 address needs brackets, as [2001:db8::10]:2424"),
    ("[router]:2424", "[router] is not an IPv6 address"),
    ("bad_host!:2424", "'bad_host!' is not a host name or address"),
])
def test_a_bad_router_address_is_refused_naming_the_option(pf: Path, tmp_path: Path, value: str, says: str):
    cfg = edge_cfg(tmp_path, pf)
    before = snapshot(pf)
    r = run(cfg, "--edge", "--router", value)
    assert r.exit_code == 1, r.output
    line = r.output.strip().splitlines()[-1]
    assert line.startswith("Error: --router: ") and says in line, line
    assert snapshot(pf) == before


def test_edge_and_router_go_together(pf: Path, tmp_path: Path):
    cfg = edge_cfg(tmp_path, pf)
    r = run(cfg, "--edge")
    assert r.exit_code == 1 and "Error: --edge: needs --router HOST:PORT" in r.output, r.output
    r = run(cfg, "--router", "10.1.2.3:2424")
    assert r.exit_code == 1 and "Error: --router: only with --edge" in r.output, r.output


# -- the pure core -------------------------------------------------------------------------


def cfg_from(**sections) -> configmod.Config:
    return configmod.from_dict(sections)


def test_debian_spool_socket_is_written_relative_to_the_chroot():
    cfg = cfg_from(milter={"socket": "unix:/var/spool/postfix/mattermail/milter.sock"},
                   general={"catchall_domains": ["Matters.Firm.Example."]},
                   router={"listen": ["unix:/var/spool/postfix/mattermail/lmtp.sock"]})
    main, master = postfixconf.desired_settings(cfg)
    assert main["smtpd_milters"] == "unix:/mattermail/milter.sock"
    assert main["relay_domains"] == "matters.firm.example"
    s = postfixconf.desired_settings(cfg)
    (content,) = s.files.values()
    assert "matters.firm.example\tlmtp:unix:/mattermail/lmtp.sock\n" in content
    assert "sender_canonical_maps" not in main  # no [srs] listen: no SRS maps
    assert [e.line() for e in master] == ["submission inet n - y - - smtpd"]
    assert ("smtpd_sender_login_maps", "hash:/var/lib/mattermail/sender-login-map") in master[0].options


def test_default_unix_sockets_outside_the_spool_name_the_key():
    with pytest.raises(postfixconf.PostfixConfError) as e:
        postfixconf.desired_settings(cfg_from())
    assert str(e.value).startswith("milter.socket:")
    assert "/var/spool/postfix/mattermail/milter.sock" in str(e.value)
    with pytest.raises(postfixconf.PostfixConfError, match=r"^router.listen: unix:/run/mattermail/lmtp.sock"):
        postfixconf.desired_settings(cfg_from(milter={"socket": "inet:127.0.0.1:8894"},
                                              general={"catchall_domains": ["m.example"]}))
    with pytest.raises(postfixconf.PostfixConfError, match=r"^srs.listen:"):
        postfixconf.desired_settings(cfg_from(milter={"socket": "inet:127.0.0.1:8894"},
                                              srs={"listen": "unix:/run/mattermail/srs.sock"}))
    # not chrooted: any path works, as is
    main, _ = postfixconf.desired_settings(cfg_from(), chroot={"smtpd": False, "cleanup": False})
    assert main["smtpd_milters"] == "unix:/run/mattermail/milter.sock"
    # some chrooted, some not: refused for unix sockets
    with pytest.raises(postfixconf.PostfixConfError, match="chrooted in some"):
        postfixconf.desired_settings(cfg_from(milter={"socket": "unix:/var/spool/postfix/m.sock"}),
                                     chroot={"smtpd": None})


def test_inet_specs_and_wildcard_listeners():
    cfg = cfg_from(milter={"socket": "inet:127.0.0.1:8894"}, general={"catchall_domains": ["m.example"]},
                   router={"listen": ["0.0.0.0:2424"]}, srs={"listen": "inet:127.0.0.1:10001"})
    s = postfixconf.desired_settings(cfg, config_dir="/etc/postfix")
    assert s.main["smtpd_milters"] == "inet:127.0.0.1:8894"
    assert set(s.files) == {Path("/etc/postfix/mattermail-transport"), Path("/etc/postfix/mattermail-srs-senders"),
                            Path("/etc/postfix/mattermail-srs-recipients")}
    assert "m.example\tlmtp:inet:127.0.0.1:2424\n" in s.files[Path("/etc/postfix/mattermail-transport")]
    assert s.main["sender_canonical_maps"] == \
        "pipemap:{regexp:/etc/postfix/mattermail-srs-senders, socketmap:inet:127.0.0.1:10001:srs_forward}"


def test_router_nexthop_in_postfix_notation():
    assert postfixconf.router_nexthop("Router.Firm.Example.:2424") == "inet:router.firm.example:2424"
    assert postfixconf.router_nexthop("inet:192.0.2.7:24") == "inet:192.0.2.7:24"
    assert postfixconf.router_nexthop("[2001:DB8:0::10]:2424") == "inet:[ipv6:2001:db8::10]:2424"
    assert postfixconf.router_nexthop("[ipv6:2001:db8::10]:2424") == "inet:[ipv6:2001:db8::10]:2424"


def test_edge_settings_ignore_router_listen_and_need_catchall_domains():
    cfg = cfg_from(milter={"socket": "inet:127.0.0.1:8894"}, general={"catchall_domains": ["m.example"]},
                   router={"listen": ["unix:/run/mattermail/lmtp.sock"]}, store={"url": "postgresql://db/mm"})
    s = postfixconf.desired_settings(cfg, config_dir="/etc/postfix", edge_router="10.0.0.5:2424")
    assert "m.example\tlmtp:inet:10.0.0.5:2424\n" in s.files[Path("/etc/postfix/mattermail-transport")]
    assert s.warnings == []
    with pytest.raises(postfixconf.PostfixConfError, match=r"^general.catchall_domains: empty, but an edge"):
        postfixconf.desired_settings(cfg_from(milter={"socket": "inet:127.0.0.1:8894"}), edge_router="10.0.0.5:2424")


@pytest.mark.parametrize(
    "name, current, ours, expected",
    [
        ("relay_domains", "", "a.example", "a.example"),
        ("relay_domains", "old.example", "a.example", "old.example, a.example"),
        ("relay_domains", "old.example A.example", "a.example", "old.example A.example"),
        ("transport_maps", "hash:/etc/postfix/transport", "texthash:/x", "texthash:/x, hash:/etc/postfix/transport"),
        ("transport_maps", "texthash:/x, hash:/t", "texthash:/x", "texthash:/x, hash:/t"),
        ("smtpd_recipient_restrictions", "permit_mynetworks, check_recipient_access socketmap:inet:h:1:srs_check",
         "check_recipient_access socketmap:inet:h:1:srs_check",
         "permit_mynetworks, check_recipient_access socketmap:inet:h:1:srs_check"),
        ("milter_mail_macros", postfixconf.MAIL_MACROS, postfixconf.MAIL_MACROS, postfixconf.MAIL_MACROS),
        ("milter_connect_macros", "j {daemon_name} {daemon_addr} v _", postfixconf.CONNECT_MACROS,
         postfixconf.CONNECT_MACROS),
        ("non_smtpd_milters", "", "$smtpd_milters", "$smtpd_milters"),
        ("non_smtpd_milters", "${smtpd_milters}", "$smtpd_milters", "${smtpd_milters}"),
        ("milter_default_action", "accept", "tempfail", "tempfail"),
        # the SRS socketmaps behind their filters: an older wiring's bare socketmap is replaced in place
        ("sender_canonical_maps", "", "pipemap:{regexp:/f, socketmap:inet:h:1:srs_forward}",
         "pipemap:{regexp:/f, socketmap:inet:h:1:srs_forward}"),
        ("sender_canonical_maps", "hash:/a, socketmap:inet:h:1:srs_forward, hash:/b",
         "pipemap:{regexp:/f, socketmap:inet:h:1:srs_forward}",
         "hash:/a, pipemap:{regexp:/f, socketmap:inet:h:1:srs_forward}, hash:/b"),
        ("recipient_canonical_maps", "hash:/a pipemap:{regexp:/f, socketmap:inet:h:1:srs_reverse}",
         "pipemap:{regexp:/f, socketmap:inet:h:1:srs_reverse}",
         "hash:/a pipemap:{regexp:/f, socketmap:inet:h:1:srs_reverse}"),
        ("smtpd_recipient_restrictions",
         "permit_mynetworks, check_recipient_access SOCKETMAP:inet:h:1:srs_check reject_unauth_pipelining",
         "check_recipient_access pipemap:{regexp:/f, socketmap:inet:h:1:srs_check}",
         "permit_mynetworks, check_recipient_access pipemap:{regexp:/f, socketmap:inet:h:1:srs_check} "
         "reject_unauth_pipelining"),
    ],
)
def test_merge_value(name, current, ours, expected):
    assert postfixconf.merge_value(name, current, ours, milter="unix:/m.sock") == expected


def test_non_smtpd_milters_with_other_milters_gets_ours_appended():
    assert postfixconf.merge_value("non_smtpd_milters", "inet:h:1", "$smtpd_milters", milter="unix:/m.sock") \
        == "inet:h:1, unix:/m.sock"


def test_split_list_keeps_braces_whole():
    assert postfixconf.split_list("a, b  c,{d e}, ${{$x} <level {2} ? {$y} : {}}") == [
        "a", "b", "c", "{d e}", "${{$x} <level {2} ? {$y} : {}}"]


# -- stack level (pytest -m stack): the configured stock files run a real Postfix --------------


@pytest.mark.stack
def test_stock_config_after_configure_starts_and_submission_mail_is_signed_and_captured():
    """Debian's stock main.cf/master.cf + only what a private loopback instance needs, then
    `postfix configure` (twice); Postfix starts with the result and a message submitted on the
    submission service (STARTTLS + AUTH) leaves DKIM-signed and is captured by the router."""
    import smtplib
    import ssl
    import tempfile
    from email.message import EmailMessage

    from mattermail_dev.devstack import Ports, Stack

    var = Path(tempfile.mkdtemp(prefix="mattermail-pfconf-"))
    os.chmod(var, 0o755)
    s = Stack(var, Ports.free())
    try:
        s.prepare()  # certs, keys, dovecot, mattermail.toml (inet milter, TCP router/SRS), dev Postfix files
        etc = s.etc
        text = (STOCK / "main.cf.debian").read_text()
        if Path("/etc/ssl/private/ssl-cert-snakeoil.key").exists():
            text += (STOCK / "main.cf.tls").read_text()
        (etc / "main.cf").write_text(text)
        shutil.copy(stock_master(), etc / "master.cf")
        p = s.ports
        postconf(etc, "-e",
                 "smtpd_relay_restrictions=permit_mynetworks permit_sasl_authenticated defer_unauth_destination",
                 # a private instance on loopback, delivering "the internet" to the sink
                 f"queue_directory={s.spool}", f"data_directory={var}/postfix/data", f"syslog_name={s.name}",
                 f"maillog_file={s.logs}/postfix.log", f"maillog_file_prefixes={var}",
                 "myhostname=mx.lawfirm.test", "mydomain=lawfirm.test", "mydestination=",
                 "inet_interfaces=127.0.0.1", "inet_protocols=ipv4", "mynetworks=127.0.0.1/32",
                 "smtp_bind_address=127.0.0.1", "lmtp_bind_address=127.0.0.1", "smtp_dns_support_level=disabled",
                 "smtp_tls_security_level=none", f"default_transport=smtp:[127.0.0.1]:{p.sink}",
                 f"relay_transport=smtp:[127.0.0.1]:{p.sink}", "relay_domains=lawfirm.test",
                 f"smtpd_tls_cert_file={var}/tls/cert.pem", f"smtpd_tls_key_file={var}/tls/key.pem",
                 "alias_maps=", "alias_database=", "local_recipient_maps=")
        postconf(etc, "-F", f"smtp/inet/service=127.0.0.1:{p.smtp}")

        r = CliRunner().invoke(cli, ["--config", str(s.config), "postfix", "configure"])
        assert r.exit_code == 0, r.output
        r = CliRunner().invoke(cli, ["--config", str(s.config), "postfix", "configure"])
        assert r.exit_code == 0 and "no change" in r.output, r.output
        assert postconf(etc, "-h", "relay_domains").strip() == "lawfirm.test, matters.lawfirm.test"
        # loopback test port instead of 587 (the service itself is what configure wrote)
        postconf(etc, "-F", f"submission/inet/service=127.0.0.1:{p.submission}")

        s.start_dns()
        s.start_sink()
        s.start_srs()
        s.start_router()
        s.start_milter()
        s.start_postfix()
        s.start_dovecot()
        r = CliRunner().invoke(cli, ["--config", str(s.config), "user", "add", "alice@lawfirm.test"],
                               input="correct-horse-battery\n")
        assert r.exit_code == 0, r.output

        m = EmailMessage()
        m["From"], m["To"], m["Subject"] = "alice@lawfirm.test", "someone@example.test", "pfconf stack test"
        m["Message-ID"] = f"<{time.time_ns()}@test.mattermail>"
        m.set_content("Hello.\n")
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        with smtplib.SMTP("127.0.0.1", p.submission, timeout=30) as c:
            c.ehlo("client.lawfirm.test")
            c.starttls(context=ctx)
            c.ehlo("client.lawfirm.test")
            c.login("alice@lawfirm.test", "correct-horse-battery")
            c.send_message(m)

        deadline = time.monotonic() + 30
        delivered = None
        while time.monotonic() < deadline and delivered is None:
            delivered = next((f for f in sorted(s.sink_dir.glob("*.eml")) if b"pfconf stack test" in f.read_bytes()),
                             None)
            time.sleep(0.1)
        assert delivered is not None, (s.logs / "postfix.log").read_text(errors="replace")[-3000:]
        assert b"DKIM-Signature:" in delivered.read_bytes()
        while time.monotonic() < deadline:
            if "capture=" in (s.logs / "router.log").read_text(errors="replace"):
                break
            time.sleep(0.1)
        assert "capture=" in (s.logs / "router.log").read_text(errors="replace")
    finally:
        s.stop()
        shutil.rmtree(var, ignore_errors=True)


def test_configure_leaves_the_size_limits_alone(pf: Path, tmp_path: Path):
    """local(8) refuses to run when mailbox_size_limit < message_size_limit: configure sets neither."""
    r = run(write_cfg(tmp_path, pf))
    assert r.exit_code == 0, r.output
    main = dict(line.split(" = ", 1) for line in postconf(pf, "-n").splitlines() if " = " in line)
    assert "message_size_limit" not in main and "mailbox_size_limit" not in main, main
    mailbox, message = (int(v) for v in postconf(pf, "-h", "mailbox_size_limit", "message_size_limit").split())
    assert mailbox == 0 or mailbox >= message, f"mailbox_size_limit {mailbox} < message_size_limit {message}"
