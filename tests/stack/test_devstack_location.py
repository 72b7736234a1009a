"""`make run` from a checkout Postfix's daemons cannot enter (issue 12 item 2): cloned under /root (0700).

Postfix's master opens its lock file as ``postfix``, Dovecot's auth runs as ``dovecot``: neither may
enter a 0700 directory of root's. The devstack moves such a var/ to a directory they can reach and
leaves a symlink; a part that still cannot start is named with the log line that says why.
"""

from __future__ import annotations

import os
import shutil
import smtplib
import stat
import tempfile
from pathlib import Path

import pytest

from mattermail_dev import devstack
from mattermail_dev.devstack import Ports, Stack, StackError

from .conftest import PASSWORD, StackClient


@pytest.fixture
def locked_parent():
    """A directory like /root: mode 0700, owned by root."""
    parent = Path(tempfile.mkdtemp(prefix="mattermail-0700-"))
    os.chmod(parent, 0o700)
    home = Path(tempfile.mkdtemp(prefix="mattermail-devstate-"))
    os.chmod(home, 0o755)
    try:
        yield parent, home
    finally:
        for d in (parent, home):
            shutil.rmtree(d, ignore_errors=True)


def test_postfix_under_a_0700_directory_fails_and_says_why(locked_parent, monkeypatch):
    parent, _ = locked_parent
    s = Stack(parent / "var", Ports.free())
    with pytest.raises(StackError) as e:
        s.start()
    text = str(e.value)
    assert text.startswith("postfix and dovecot: cannot start: user postfix cannot enter "
                           f"{parent} (mode 0700)"), text

    # Without that check, the real Postfix fails; the error is its own fatal line, and nothing is left running.
    monkeypatch.setattr(devstack, "unreachable_for_daemons", lambda var: "")
    try:
        with pytest.raises(StackError) as e:
            s.start()
    finally:
        s.stop()
    first = str(e.value).splitlines()[0]
    assert first.startswith("postfix: failed to start: ") and "fatal" in first, str(e.value)[:2000]
    assert "Permission denied" in first, first
    print(f"\n{first}")


def test_var_under_a_0700_directory_is_moved_where_postfix_can_reach_and_the_stack_works(locked_parent):
    parent, home = locked_parent
    var = parent / "var"
    var.mkdir()
    (var / "left-by-a-failed-start").write_text("kept\n")

    placed = devstack.place_var(var, home=home)
    assert placed == var and var.is_symlink(), f"{var}: symlink {var.is_symlink()}"
    target = var.resolve()
    assert target.parent == home and (target / "left-by-a-failed-start").read_text() == "kept\n", target
    assert devstack.place_var(var, home=home) == var and var.resolve() == target  # the second run: as is
    assert stat.S_IMODE(parent.stat().st_mode) == 0o700

    s = Stack(var, Ports.free())
    try:
        s.start()
        assert s.postfix_running() and s._dovecot_pid(), "postfix or dovecot not running"
        assert (target / "postfix" / "data" / "master.lock").exists()
        client = StackClient(s)
        r = client.ctl("user", "add", "alice@lawfirm.test", input=PASSWORD + "\n")
        assert r.returncode == 0, r.stderr
        # SASL through Dovecot (its auth reads the passwd-file under var/) and Postfix relaying to the sink.
        msg = client.message("alice@lawfirm.test", ["bob@example.test"], subject="from a 0700 checkout")
        client.submit("alice@lawfirm.test", msg, ["bob@example.test"])
        client.sink_with(b"from a 0700 checkout")
        inbound = client.message("carol@example.test", ["alice@lawfirm.test"], subject="into a 0700 checkout")
        client.inbound(inbound, ["alice@lawfirm.test"])
        client.sink_with(b"into a 0700 checkout")
    except (StackError, smtplib.SMTPException) as e:
        raise AssertionError(f"{e}\n{s._tail('postfix')}{s._tail('dovecot')}") from None
    finally:
        s.stop()
