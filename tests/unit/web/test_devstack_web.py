"""The dev stack's web service: rendered [web] config, started and stopped by pid like the other daemons."""

from __future__ import annotations

import tomllib
import urllib.request

from mattermail_dev import devstack


def test_devstack_starts_and_stops_the_web_view(tmp_path):
    stack = devstack.Stack(tmp_path / "var", devstack.Ports.free())
    stack.var.mkdir()
    stack.logs.mkdir()
    stack.run_dir.mkdir()
    devstack._render("mattermail.toml.in", stack.config, **stack.values())
    web = tomllib.loads(stack.config.read_text())["web"]
    assert web == {"listen": f"127.0.0.1:{stack.ports.web}", "cookie_secure": False}
    stack.start_web()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{stack.ports.web}/login", timeout=10) as r:
            assert r.status == 200 and b"Sign in" in r.read()
        assert f"http://127.0.0.1:{stack.ports.web}/" in stack.summary()
    finally:
        stack.stop_web()
    assert stack._running("web") is None


def test_an_old_dev_config_gets_a_web_section(tmp_path):
    stack = devstack.Stack(tmp_path, devstack.Ports())
    stack.config.write_text('[general]\nuser = ""\n')
    stack._migrate_web()
    assert tomllib.loads(stack.config.read_text())["web"]["listen"] == "127.0.0.1:8025"
