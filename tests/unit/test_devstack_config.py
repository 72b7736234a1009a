"""The dev stack's own config files: its mattermail.toml across upgrades, its Postfix main.cf."""

from __future__ import annotations

import subprocess

from mattermail import config
from mattermail_dev import devstack
from mattermail_dev.devstack import Ports, Stack


def test_config_from_before_general_user_gets_user_empty(tmp_path, capsys):
    s = Stack(tmp_path)
    s.config.write_text('# mine\n[general]\nhostname = "mx.lawfirm.test"\n\n[log]\nlevel = "debug"\n')
    s._migrate_config()
    cfg = config.load(s.config)
    assert cfg.general.user == "" and cfg.general.hostname == "mx.lawfirm.test" and cfg.log.level == "debug"
    assert s.config.read_text().startswith("# mine\n")  # the admin's lines stay
    assert "general.user" in capsys.readouterr().out
    before = s.config.read_text()
    s._migrate_config()
    assert s.config.read_text() == before  # once only


def test_config_without_general_section_gets_one(tmp_path):
    s = Stack(tmp_path)
    s.config.write_text('[log]\nlevel = "info"\n')
    s._migrate_config()
    assert config.load(s.config).general.user == ""


def test_config_that_names_a_user_is_left_alone(tmp_path):
    s = Stack(tmp_path)
    s.config.write_text('[general]\nuser = "nobody"\n')
    s._migrate_config()
    assert s.config.read_text() == '[general]\nuser = "nobody"\n'


def test_dev_postfix_mailbox_limit_holds_the_largest_message(tmp_path):
    """local(8) fails fatally (mail sits in the active queue) when a mailbox may hold less than one message."""
    s = Stack(tmp_path, Ports.free())
    devstack._render("main.cf.in", s.etc / "main.cf", **s.values())
    out = subprocess.run(["postconf", "-c", str(s.etc), "-h", "mailbox_size_limit", "message_size_limit"],
                         capture_output=True, text=True, check=True).stdout
    mailbox, message = (int(v) for v in out.split())
    assert message >= 50 * 1024 * 1024, f"message_size_limit {message}: the firm's 25 MB mail no longer fits"
    assert mailbox == 0 or mailbox >= message, f"mailbox_size_limit {mailbox} < message_size_limit {message}"


def test_config_from_before_postfix_submission_points_test_send_at_the_stack(tmp_path, capsys):
    s = Stack(tmp_path, Ports.free())
    s.config.write_text('[general]\nuser = ""\n\n[postfix]\nconfig_dir = "/x"\n')
    s._migrate_submission()
    cfg = config.load(s.config)
    assert cfg.postfix.submission == f"127.0.0.1:{s.ports.submission}" and str(cfg.postfix.config_dir) == "/x"
    assert "postfix.submission" in capsys.readouterr().out
    before = s.config.read_text()
    s._migrate_submission()
    assert s.config.read_text() == before  # once only
