import os
import subprocess
import sys
from pathlib import Path

import pytest

from mattermail import config

BIN = Path(sys.executable).parent


def test_defaults_and_values(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[milter]\nsocket = "inet:127.0.0.1:8894"\ntrusted_networks = ["10.0.0.0/8"]\n'
                 '[dns]\nnameservers = ["127.0.0.1"]\nport = 5353\ntimeout = 2\n[general]\nhostname = "mx.x.test"\n')
    cfg = config.load(p)
    assert cfg.milter.socket == "inet:127.0.0.1:8894"
    assert cfg.milter.trusted_networks == ("10.0.0.0/8",)
    assert cfg.dns.port == 5353 and cfg.dns.timeout == 2.0
    assert cfg.router.listen == ("unix:/run/mattermail/lmtp.sock",)
    assert cfg.authserv_id == "mx.x.test"
    assert cfg.postfix.submission == "127.0.0.1:587"
    assert config.from_dict({"postfix": {"submission": "[::1]:5870"}}).postfix.submission == "[::1]:5870"
    assert cfg.inbound.arc_seal is False and cfg.inbound.arc_domain == ""
    arc = config.from_dict({"inbound": {"arc_seal": True, "arc_domain": "LawFirm.test."}}).inbound
    assert arc.arc_seal is True and arc.arc_domain == "lawfirm.test"
    with pytest.raises(Exception):
        cfg.milter.socket = "x"  # frozen


@pytest.mark.parametrize(
    "text, words",
    [
        ("[milter]\nsokcet = 'unix:/x'\n", ["milter.sokcet", "unknown key"]),
        ("[miltr]\nsocket = 'unix:/x'\n", ["[miltr]", "unknown section"]),
        ("[dns]\nport = 'fiftythree'\n", ["dns.port", "integer"]),
        ("[dns]\nport = 70000\n", ["dns.port", "1-65535"]),
        ("[dns]\ntimeout = 0\n", ["dns.timeout", "positive"]),
        ("[dns]\nnameservers = ['not-an-ip']\n", ["dns.nameservers"]),
        ("[milter]\nsocket = 'unix:relative'\n", ["milter.socket", "absolute"]),
        ("[milter]\ntrusted_networks = '127.0.0.1'\n", ["milter.trusted_networks", "list"]),
        ("[milter]\ntrusted_networks = ['300.1.1.1/8']\n", ["milter.trusted_networks"]),
        ("[log]\nlevel = 'loud'\n", ["log.level", "debug, info"]),
        ("[milter]\ndisplay_name_check = 'warn'\n", ["milter.display_name_check", "refuse or off"]),
        ("[postfix]\nsubmission = '587'\n", ["postfix.submission", "HOST:PORT"]),
        ("[postfix]\nsubmission = 'localhost:0'\n", ["postfix.submission", "HOST:PORT"]),
        ("[inbound]\ndisplay_name_spoof = 'warn'\n", ["inbound.display_name_spoof", "tag, reject or off"]),
        ("[inbound]\ninvalid_from = 'accept'\n", ["inbound.invalid_from", "reject or tag"]),
        ("[inbound]\narc_seal = 'yes'\n", ["inbound.arc_seal", "true or false"]),
        ("[inbound]\narc_domain = 'not a domain'\n", ["inbound.arc_domain", "a domain name"]),
        ("[inbound]\narc_domain = 'lawfirm'\n", ["inbound.arc_domain", "a domain name"]),
        ("[milter]\nworkers = 65\n", ["milter.workers", "0 (one per CPU) to 64"]),
        ("[milter]\nworkers = -1\n", ["milter.workers", "negative"]),
        ("[milter]\nworkers = 'auto'\n", ["milter.workers", "integer"]),
        ("[store]\ninline_max = 300000\n", ["store.inline_max", "0 to 262144"]),
        ("[store]\ninline_max = -1\n", ["store.inline_max", "negative"]),
        ("[store]\ninline_max = '32k'\n", ["store.inline_max", "integer"]),
        ("[milter\n", ["not valid TOML"]),
    ],
)
def test_bad_config_names_key_and_file(tmp_path, text, words):
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(config.ConfigError) as e:
        config.load(p)
    msg = str(e.value)
    assert str(p) in msg
    for w in words:
        assert w in msg


def test_missing_file_is_named(tmp_path):
    with pytest.raises(config.ConfigError, match="not found"):
        config.load(tmp_path / "nope.toml")


def test_env_var_selects_file(tmp_path, monkeypatch):
    p = tmp_path / "env.toml"
    p.write_text("[general]\nhostname = 'from-env'\n")
    monkeypatch.setenv(config.ENV_VAR, str(p))
    assert config.load().general.hostname == "from-env"


@pytest.mark.parametrize("daemon", ["mattermail-milter", "mattermail-router"])
def test_daemon_with_broken_config_exits_78_with_one_line(tmp_path, daemon):
    p = tmp_path / "broken.toml"
    p.write_text("[router]\nlisten = 'not-a-list'\n")
    r = subprocess.run([str(BIN / daemon), "--config", str(p)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 78
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "router.listen" in lines[0] and str(p) in lines[0]


def test_workers_one_per_cpu_each_keep_to_a_cpu_of_their_own(monkeypatch):
    from mattermail.milter.__main__ import worker_cpu

    default, by_hand = config.from_dict({}), config.from_dict({"milter": {"workers": 2}})
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {5, 3})  # systemd's CPUAffinity=3 5, say
    assert [worker_cpu(default, n) for n in (1, 2, 3)] == [3, 5, 3]
    assert worker_cpu(by_hand, 1) is None  # a count set by hand: the scheduler places them
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {2})
    assert worker_cpu(default, 1) is None  # one CPU: one process, nothing to keep


def test_milter_workers_default_to_one_per_cpu_the_process_may_run_on():
    from mattermail.milter.__main__ import worker_count

    cpus = len(os.sched_getaffinity(0))
    assert config.from_dict({}).milter.workers == 0
    assert worker_count(config.from_dict({})) == min(cpus, 64)
    assert worker_count(config.from_dict({"milter": {"workers": 1}})) == 1
    assert worker_count(config.from_dict({"milter": {"workers": 3}})) == 3
