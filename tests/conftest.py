"""Shared fixtures. Stack fixtures live in tests/stack/conftest.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from mattermail import privileges

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus"


@pytest.fixture
def write_config(tmp_path: Path):
    """Write a TOML config (store and passwd file under tmp_path) and return its path."""

    def write(extra: str = "") -> Path:
        (tmp_path / "postfix").mkdir(exist_ok=True)
        (tmp_path / "postfix" / "main.cf").write_text("")  # for postmap -c
        p = tmp_path / "mattermail.toml"
        p.write_text(
            f"""
[store]
path = "{tmp_path}/store.sqlite"
messages_dir = "{tmp_path}/messages"
[auth]
passwd_file = "{tmp_path}/dovecot-users"
sender_login_map = "{tmp_path}/sender-login-map"
[postfix]
config_dir = "{tmp_path}/postfix"
{extra}
""",
            encoding="utf-8",
        )
        return p

    return write


@pytest.fixture(autouse=True)
def _test_process_keeps_its_user(request, monkeypatch):
    """mattermailctl run in-process (CliRunner) must not turn the test runner into the daemon user.

    On a machine with the package installed the ``mattermail`` user exists, and
    ctl as root would switch to it. Tests of the switch itself mark themselves
    ``real_privileges`` (and run it in a child process).
    """
    if request.node.get_closest_marker("real_privileges") is None:
        monkeypatch.setattr(privileges, "drop", lambda user: False)
