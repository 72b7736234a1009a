"""mattermailctl dkim and dns: CliRunner against a tmp key table and devdns on loopback."""

from __future__ import annotations

import datetime
import json
import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import mattermail.ctl.base as base
import mattermail.ctl.dkim  # noqa: F401  (registers "dkim")
import mattermail.ctl.postfixcmd  # noqa: F401  (registers "postfix")
import mattermail.ctl.dnscmd  # noqa: F401  (registers "dns")
import pytest
from click.testing import CliRunner
from dnslib import RR
from mattermail.ctl.base import cli

from mattermail import dkimkeys
from mattermail_dev.devdns import free_port, serve

OUR_IP = "192.0.2.10"
MONTH = f"{datetime.date.today():%Y%m}"


class Zones:
    def __init__(self, path: Path, port: int) -> None:
        self.path, self.port = path, port

    def zone(self, domain: str, body: str) -> None:
        """Publish a zone for ``domain`` (names in ``body`` relative to it); written aside, then renamed."""
        tmp = self.path / f".{domain}.tmp"
        tmp.write_text(
            f"$ORIGIN {domain}.\n$TTL 300\n"
            f"@ IN SOA ns.{domain}. hostmaster.{domain}. ( 1 3600 600 86400 300 )\n"
            f"@ IN NS ns.{domain}.\nns IN A 192.0.2.53\n{body}\n",
            encoding="utf-8",
        )
        tmp.replace(self.path / f"{domain}.zone")

    def site(self, domain: str, spf: str = f"v=spf1 ip4:{OUR_IP} -all", dkim: str = "", extra: str = "") -> None:
        """MX, mx A record (our IP), SPF, DMARC p=reject, plus ``dkim`` zone lines and ``extra``."""
        self.zone(domain, "\n".join([
            "@ IN MX 10 mx", f"mx IN A {OUR_IP}", f'@ IN TXT "{spf}"',
            f'_dmarc IN TXT "v=DMARC1; p=reject; rua=mailto:dmarc@{domain}"', dkim, extra,
        ]))


@pytest.fixture(scope="module")
def zones(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zones]:
    path = tmp_path_factory.mktemp("zones")
    port = free_port()
    servers = serve(path, "127.0.0.1", port)
    yield Zones(path, port)
    for s in servers:
        if s.isAlive():
            s.stop()


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    return tmp_path / "keys"


@pytest.fixture
def run(write_config, zones: Zones, keys_dir: Path):
    cfg = write_config(
        f'[dkim]\nkeys_dir = "{keys_dir}"\n'
        f'[dns]\nnameservers = ["127.0.0.1"]\nport = {zones.port}\ntimeout = 2.0\n'
        '[general]\nhostname = "mx.good.test"\n'
    )

    def invoke(*args: str):
        return CliRunner().invoke(cli, ["--config", str(cfg), *args])

    return invoke


def _zone_line(output: str, owner: str) -> str:
    [line] = [ln.strip() for ln in output.splitlines() if ln.strip().startswith(owner + ".")]
    return line


def _one_line_error(r, field: str) -> None:
    assert r.exit_code == 1, r.output
    assert field in r.output
    assert len(r.output.strip().splitlines()) == 1, r.output


# --- dkim genkey --------------------------------------------------------------

@pytest.mark.parametrize("alg, selector, k", [("rsa", f"mm{MONTH}r", "rsa"), ("ed25519", f"mm{MONTH}e", "ed25519")])
def test_genkey_writes_0600_key_and_prints_record(run, keys_dir, alg, selector, k):
    r = run("dkim", "genkey", "LawFirm.test.", "--algorithm", alg)
    assert r.exit_code == 0, r.output
    path = keys_dir / "lawfirm.test" / f"{selector}.{alg}.pem"
    assert path.is_file() and str(path) in r.output
    assert path.stat().st_mode & 0o777 == 0o600
    key = dkimkeys.load_private_key(path)
    owner, value = dkimkeys.dns_record(key, selector, "lawfirm.test")

    [rr] = RR.fromZone(_zone_line(r.output, owner))
    strings = [s.decode("ascii") for s in rr.rdata.data]
    assert all(len(s) <= 255 for s in strings)
    if alg == "rsa":
        assert len(strings) >= 2  # a 2048-bit key does not fit one string
    joined = "".join(strings)
    assert joined == value and f"k={k};" in joined
    assert dkimkeys.public_key_matches(key, joined)
    assert value in [ln.strip() for ln in r.output.splitlines()]  # the bare value, for web forms
    assert [kk.selector for kk in dkimkeys.load_keytable(keys_dir)["lawfirm.test"]] == [selector]


def test_genkey_explicit_selector_and_bits(run, keys_dir):
    r = run("dkim", "genkey", "lawfirm.test", "--selector", "Sel2026", "--bits", "1024")
    assert r.exit_code == 0, r.output
    assert dkimkeys.load_private_key(keys_dir / "lawfirm.test" / "sel2026.rsa.pem").key_size == 1024


def test_genkey_refuses_existing_selector(run, keys_dir):
    assert run("dkim", "genkey", "lawfirm.test", "--algorithm", "ed25519", "--selector", "mm").exit_code == 0
    path = keys_dir / "lawfirm.test" / "mm.ed25519.pem"
    before = path.read_bytes()
    _one_line_error(run("dkim", "genkey", "lawfirm.test", "--algorithm", "ed25519", "--selector", "mm"), "--selector")
    # the same selector with another algorithm would publish at the same DNS name: refused too
    _one_line_error(run("dkim", "genkey", "lawfirm.test", "--selector", "mm"), "--selector")
    # and so is the default selector, used twice in a month
    assert run("dkim", "genkey", "lawfirm.test", "--algorithm", "ed25519").exit_code == 0
    _one_line_error(run("dkim", "genkey", "lawfirm.test", "--algorithm", "ed25519"), "--selector")
    assert path.read_bytes() == before
    assert not (keys_dir / "lawfirm.test" / "mm.rsa.pem").exists()


@pytest.mark.parametrize("args, field", [
    (["not a domain"], "domain"),
    (["lawfirm"], "domain"),
    (["bad-.test"], "domain"),
    (["a..b.test"], "domain"),
    (["x@lawfirm.test"], "domain"),
    (["lawfirm.test", "--selector", "bad selector"], "--selector"),
    (["lawfirm.test", "--selector", "-x"], "--selector"),
    (["lawfirm.test", "--bits", "512"], "--bits"),
    (["lawfirm.test", "--algorithm", "ed25519", "--bits", "2048"], "--bits"),
])
def test_genkey_bad_input(run, keys_dir, args, field):
    _one_line_error(run("dkim", "genkey", *args), field)
    assert not keys_dir.exists() or not any(keys_dir.rglob("*.pem"))


def test_genkey_unknown_algorithm_is_usage_error(run):
    assert run("dkim", "genkey", "lawfirm.test", "--algorithm", "dsa").exit_code == 2


@pytest.fixture
def switched(monkeypatch) -> list[str]:
    """Pretend the daemon user exists; record the users mattermailctl switches to."""
    calls: list[str] = []
    real_getpwnam = base.pwd.getpwnam
    monkeypatch.setattr(base.pwd, "getpwnam",
                        lambda n: SimpleNamespace(pw_name=n) if n == "mattermail" else real_getpwnam(n))
    monkeypatch.setattr(base.privileges, "drop", lambda user: calls.append(user) or True)
    monkeypatch.setattr(base.os, "umask", lambda mask: calls.append(f"umask {mask:03o}") or 0o022)  # not ours
    return calls


def test_ctl_as_root_writes_keys_as_the_daemon_user(run, keys_dir, switched):
    assert run("dkim", "genkey", "lawfirm.test", "--algorithm", "ed25519").exit_code == 0
    assert switched == ["mattermail", "umask 007"]  # before the key was written: the milter's user owns it


def test_ctl_stays_root_for_postfix_wiring(run, switched, tmp_path):
    r = run("postfix", "configure", "--dry-run", "--config-dir", str(tmp_path))
    assert "No such command" not in r.output and r.exit_code in (0, 1), r.output  # it ran, with the config
    assert switched == []


def test_ctl_without_daemon_user_stays_as_it_is(run, keys_dir, monkeypatch):
    def no_user(name):
        raise KeyError(name)

    monkeypatch.setattr(base.pwd, "getpwnam", no_user)
    monkeypatch.setattr(base.privileges, "drop", lambda user: pytest.fail("switched to a user that does not exist"))
    assert run("dkim", "genkey", "lawfirm.test", "--algorithm", "ed25519").exit_code == 0


# --- dkim list ----------------------------------------------------------------

def test_list(run, keys_dir):
    assert json.loads(run("dkim", "list", "--json").output) == []
    assert "no DKIM keys" in run("dkim", "list").output
    assert run("dkim", "genkey", "lawfirm.test", "--selector", "a1").exit_code == 0
    assert run("dkim", "genkey", "other.test", "--algorithm", "ed25519", "--selector", "b1").exit_code == 0
    r = run("dkim", "list", "--json")
    assert r.exit_code == 0, r.output
    listed = json.loads(r.output)
    assert [(k["domain"], k["selector"], k["algorithm"], k["bits"], k["state"]) for k in listed] == [
        ("lawfirm.test", "a1", "rsa", 2048, "active"), ("other.test", "b1", "ed25519", 256, "active")]
    for k in listed:
        key = dkimkeys.load_private_key(k["file"])
        assert (k["dns_name"], k["txt"]) == dkimkeys.dns_record(key, k["selector"], k["domain"])
        assert k["zone_line"] == dkimkeys.zone_line(k["dns_name"], k["txt"])
    text = run("dkim", "list").output
    assert "a1._domainkey.lawfirm.test." in text and "b1._domainkey.other.test." in text


# --- dkim rotate --------------------------------------------------------------

def test_rotate_then_finish_only_when_published(run, keys_dir, zones):
    d = "rotate.test"
    folder = keys_dir / d
    assert run("dkim", "genkey", d, "--algorithm", "ed25519", "--selector", "old1").exit_code == 0
    old_key = dkimkeys.load_private_key(folder / "old1.ed25519.pem")
    zones.site(d, dkim=dkimkeys.zone_line(*dkimkeys.dns_record(old_key, "old1", d)))

    r = run("dkim", "rotate", d)
    assert r.exit_code == 0, r.output
    new_sel = f"mm{MONTH}e"
    pending = folder / f"{new_sel}.ed25519.pem.pending"
    assert pending.is_file() and pending.stat().st_mode & 0o777 == 0o600
    assert f"dkim rotate {d} --finish" in r.output
    new_key = dkimkeys.load_private_key(pending)
    owner, value = dkimkeys.dns_record(new_key, new_sel, d)
    assert value in r.output and _zone_line(r.output, owner)
    # the pending key is not signed with
    assert [k.selector for k in dkimkeys.load_keytable(keys_dir)[d]] == ["old1"]
    # a second rotation while one is pending is refused
    _one_line_error(run("dkim", "rotate", d), "pending")

    # not published yet: exit 1, nothing changes
    r = run("dkim", "rotate", d, "--finish")
    _one_line_error(r, owner)
    assert "nothing changed" in r.output
    # published with the wrong key (the old one at the new selector): still refused
    zones.site(d, dkim="\n".join([dkimkeys.zone_line(*dkimkeys.dns_record(old_key, "old1", d)),
                                   dkimkeys.zone_line(*dkimkeys.dns_record(old_key, new_sel, d))]))
    _one_line_error(run("dkim", "rotate", d, "--finish"), owner)
    assert pending.is_file() and (folder / "old1.ed25519.pem").is_file()
    assert [k.selector for k in dkimkeys.load_keytable(keys_dir)[d]] == ["old1"]

    # published: the new key becomes active, the old one is retired and kept
    zones.site(d, dkim="\n".join([dkimkeys.zone_line(*dkimkeys.dns_record(old_key, "old1", d)),
                                   dkimkeys.zone_line(owner, value)]))
    r = run("dkim", "rotate", d, "--finish")
    assert r.exit_code == 0, r.output
    assert "old1" in r.output and "retired" in r.output
    assert not pending.exists()
    assert (folder / f"{new_sel}.ed25519.pem").is_file()
    assert (folder / "old1.ed25519.pem.retired").read_bytes()
    assert not (folder / "old1.ed25519.pem").exists()
    [k] = dkimkeys.load_keytable(keys_dir)[d]
    assert k.selector == new_sel and k.private_key.public_key() == new_key.public_key()
    states = {(k["selector"], k["state"]) for k in json.loads(run("dkim", "list", "--json").output)}
    assert states == {("old1", "retired"), (new_sel, "active")}
    # nothing left to finish
    _one_line_error(run("dkim", "rotate", d, "--finish"), "domain")


def test_rotate_default_selector_avoids_this_months(run, keys_dir):
    assert run("dkim", "genkey", "lawfirm.test", "--algorithm", "ed25519").exit_code == 0
    assert run("dkim", "rotate", "lawfirm.test").exit_code == 0
    today = f"{datetime.date.today():%Y%m%d}"
    assert (keys_dir / "lawfirm.test" / f"mm{today}e.ed25519.pem.pending").is_file()


@pytest.mark.parametrize("setup, args, field", [
    ([], ["rotate", "lawfirm.test"], "domain"),
    ([], ["rotate", "bad domain"], "domain"),
    ([["--algorithm", "ed25519"]], ["rotate", "lawfirm.test", "--algorithm", "rsa"], "domain"),
    ([["--algorithm", "ed25519", "--selector", "e1"], ["--selector", "r1"]], ["rotate", "lawfirm.test"], "--algorithm"),
    ([["--algorithm", "ed25519", "--selector", "e1"]], ["rotate", "lawfirm.test", "--selector", "e1"], "--selector"),
    ([["--algorithm", "ed25519", "--selector", "e1"]], ["rotate", "lawfirm.test", "--finish"], "domain"),
])
def test_rotate_bad_input(run, keys_dir, setup, args, field):
    for extra in setup:
        assert run("dkim", "genkey", "lawfirm.test", *extra).exit_code == 0
    before = sorted(p.name for p in keys_dir.rglob("*")) if keys_dir.exists() else []
    _one_line_error(run("dkim", *args), field)
    assert (sorted(p.name for p in keys_dir.rglob("*")) if keys_dir.exists() else []) == before


# --- dns check ----------------------------------------------------------------

def _ed_key(keys_dir: Path, domain: str, selector: str = "mm") -> dkimkeys.PrivateKey:
    key = dkimkeys.generate("ed25519")
    dkimkeys.write_private_key(keys_dir / domain / f"{selector}.ed25519.pem", key)
    return key


def test_dns_check_good_domain(run, keys_dir, zones):
    key = _ed_key(keys_dir, "good.test")
    zones.site("good.test", dkim=dkimkeys.zone_line(*dkimkeys.dns_record(key, "mm", "good.test")))
    r = run("dns", "check", "good.test")  # our IP from general.hostname = mx.good.test
    assert r.exit_code == 0, r.output
    assert OUR_IP in r.output.splitlines()[0]
    for check in ("mx", "spf", "dkim", "dmarc"):
        assert f"[ok] {check}: " in r.output
    assert "[error]" not in r.output and "no blocking problems" in r.output

    r = run("dns", "check", "good.test", "--ip", OUR_IP, "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["blocking"] is False and out["ips"] == [OUR_IP]
    assert [(f["check"], f["level"]) for f in out["findings"]] == [
        ("mx", "ok"), ("spf", "ok"), ("dkim", "ok"), ("dmarc", "ok")]


def test_dns_check_ip_not_authorised(run, keys_dir, zones):
    key = _ed_key(keys_dir, "good.test")
    zones.site("good.test", dkim=dkimkeys.zone_line(*dkimkeys.dns_record(key, "mm", "good.test")))
    r = run("dns", "check", "good.test", "--ip", "198.51.100.99")
    assert r.exit_code == 1, r.output
    assert "[error] spf: " in r.output and f"  fix: v=spf1 ip4:{OUR_IP} ip4:198.51.100.99 -all" in r.output


def test_dns_check_two_spf_records(run, zones):
    zones.site("twospf.test", extra='@ IN TXT "v=spf1 ip4:198.51.100.1 -all"')
    r = run("dns", "check", "twospf.test", "--ip", OUR_IP)
    assert r.exit_code == 1, r.output
    assert "[error] spf: " in r.output and "2 SPF records" in r.output
    assert "would be rejected by Gmail/Yahoo: 1 problem(s)" in r.output
    r = run("dns", "check", "twospf.test", "--ip", OUR_IP, "--json")
    assert r.exit_code == 1
    out = json.loads(r.output)
    assert out["blocking"] is True
    assert [f["check"] for f in out["findings"] if f["level"] == "error"] == ["spf"]


def test_dns_check_spf_11_lookups(run, zones):
    d = "lookups.test"
    chain = [f'i{n} IN TXT "v=spf1 include:i{n + 1}.{d} -all"' for n in range(1, 11)]
    chain.append('i11 IN TXT "v=spf1 ip4:198.51.100.7 -all"')
    zones.site(d, spf=f"v=spf1 ip4:{OUR_IP} include:i1.{d} -all", extra="\n".join(chain))
    r = run("dns", "check", d, "--ip", OUR_IP)
    assert r.exit_code == 1, r.output
    assert "11 DNS-querying terms" in r.output and "would be rejected by Gmail/Yahoo" in r.output


def test_dns_check_dkim_mismatch(run, keys_dir, zones):
    _ed_key(keys_dir, "mismatch.test")
    published = dkimkeys.generate("ed25519")
    zones.site("mismatch.test", dkim=dkimkeys.zone_line(*dkimkeys.dns_record(published, "mm", "mismatch.test")))
    r = run("dns", "check", "mismatch.test", "--ip", OUR_IP)
    assert r.exit_code == 1, r.output
    assert "[error] dkim: " in r.output and "mismatch" in r.output
    ours = dkimkeys.dns_record(dkimkeys.load_private_key(keys_dir / "mismatch.test" / "mm.ed25519.pem"),
                               "mm", "mismatch.test")[1]
    assert f"  fix: {ours}" in r.output


def test_dns_check_without_ip_and_unresolvable_hostname_is_usage_error(write_config, zones):
    cfg = write_config(f'[dns]\nnameservers = ["127.0.0.1"]\nport = {zones.port}\ntimeout = 2.0\n'
                       '[general]\nhostname = "nowhere.invalid"\n')
    r = CliRunner().invoke(cli, ["--config", str(cfg), "dns", "check", "good.test"])
    assert r.exit_code == 2, r.output
    assert "--ip" in r.output and "nowhere.invalid" in r.output


@pytest.mark.parametrize("args, field", [
    (["not a domain", "--ip", OUR_IP], "domain"),
    (["good.test", "--ip", "300.1.1.1"], "--ip"),
])
def test_dns_check_bad_input(run, args, field):
    _one_line_error(run("dns", "check", *args), field)


def test_help_has_examples():
    for path in (["dkim"], ["dkim", "genkey"], ["dkim", "list"], ["dkim", "rotate"], ["dns"], ["dns", "check"]):
        r = CliRunner().invoke(cli, [*path, "--help"])
        assert r.exit_code == 0 and "Example:" in r.output, path
    assert "--finish" in CliRunner().invoke(cli, ["dkim", "rotate", "--help"]).output


def test_key_files_mode(run, keys_dir):
    assert run("dkim", "genkey", "lawfirm.test", "--algorithm", "ed25519").exit_code == 0
    assert run("dkim", "rotate", "lawfirm.test").exit_code == 0
    for p in (keys_dir / "lawfirm.test").iterdir():
        assert os.stat(p).st_mode & 0o077 == 0, p
