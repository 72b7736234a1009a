"""The dev stack's own config file across upgrades."""

from __future__ import annotations

from mattermail import config
from mattermail.devstack import Stack


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
