"""What every daemon does at start: Postfix-style logs, syslog, giving up root, refusing bad settings."""

from __future__ import annotations

import logging
import os
import pwd
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mattermail import logs, privileges

BIN = Path(sys.executable).parent


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    yield
    root.handlers[:] = saved
    root.setLevel(level)


def _emit(capsys, *records: tuple[int, str]) -> list[str]:
    log = logs.QueueIdAdapter(logging.getLogger("mattermail.test"), {"queue_id": "4XyZ1"})
    for level, text in records:
        log.log(level, text)
    return capsys.readouterr().err.splitlines()


def test_stderr_lines_are_postfix_style_without_timestamps_under_journald(capsys, monkeypatch, restore_logging):
    monkeypatch.setenv("JOURNAL_STREAM", "8:12345")
    logs.setup("mattermail-milter", "info")
    out = _emit(capsys, (logging.INFO, "from=<a@b.test> verdict=accept"), (logging.WARNING, "no key"),
                (logging.ERROR, "store failed"), (logging.DEBUG, "not shown"))
    pid = os.getpid()
    assert out == [f"mattermail-milter[{pid}]: 4XyZ1: from=<a@b.test> verdict=accept",
                   f"mattermail-milter[{pid}]: warning: 4XyZ1: no key",
                   f"mattermail-milter[{pid}]: error: 4XyZ1: store failed"]


def test_stderr_lines_carry_the_time_outside_journald(capsys, monkeypatch, restore_logging):
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    logs.setup("mattermail-router", "info")
    (line,) = _emit(capsys, (logging.INFO, "status=stored"))
    stamp, rest = line.split(" ", 1)
    assert len(stamp) == 19 and stamp[4] == "-" and stamp[10] == "T"
    assert rest == f"mattermail-router[{os.getpid()}]: 4XyZ1: status=stored"


def test_syslog_gets_mail_facility_and_the_postfix_tag(tmp_path, capsys, restore_logging):
    path = tmp_path / "log.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    server.settimeout(5)
    try:
        logs.setup("mattermail-milter", "info", syslog=True, syslog_socket=path)
        _emit(capsys, (logging.WARNING, "no key"))
        datagram = server.recv(4096).decode()
    finally:
        server.close()
        logs.setup("mattermail-test", "info")
    # <PRI> = facility mail (2) * 8 + warning (4) = 20
    assert datagram.rstrip("\x00") == f"<20>mattermail-milter[{os.getpid()}]: warning: 4XyZ1: no key"


def test_syslog_socket_missing_is_an_error(tmp_path, restore_logging):
    with pytest.raises(OSError):
        logs.setup("mattermail-milter", "info", syslog=True, syslog_socket=tmp_path / "nothing-here")


def _in_child(fn) -> int:
    """Run ``fn`` in a forked child (so this process keeps root); its exit status."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os._exit(fn())
        except BaseException:
            os._exit(99)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@pytest.mark.real_privileges
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch users")
def test_drop_becomes_the_user_for_good():
    nobody = pwd.getpwnam("nobody")

    def child() -> int:
        assert privileges.drop("nobody") is True
        assert (os.getuid(), os.geteuid(), os.getgid()) == (nobody.pw_uid, nobody.pw_uid, nobody.pw_gid)
        try:
            os.setuid(0)
        except PermissionError:
            return 0
        return 1

    assert _in_child(child) == 0


@pytest.mark.real_privileges
def test_drop_without_user_or_root_changes_nothing():
    assert privileges.drop("") is False
    if os.geteuid() != 0:
        assert privileges.drop("nobody") is False


@pytest.mark.real_privileges
@pytest.mark.skipif(os.geteuid() != 0, reason="only root switches users")
def test_drop_to_a_missing_user_names_the_setting():
    with pytest.raises(privileges.PrivilegeError, match=r"general\.user: no such user 'no-such-mm-user'"):
        privileges.drop("no-such-mm-user")


@pytest.mark.skipif(os.geteuid() != 0, reason="only root switches users")
@pytest.mark.parametrize("daemon", ["mattermail-milter", "mattermail-router"])
def test_daemon_started_as_root_refuses_a_missing_user(tmp_path, daemon):
    p = tmp_path / "m.toml"
    p.write_text("[general]\nuser = 'no-such-mm-user'\n")
    r = subprocess.run([str(BIN / daemon), "--config", str(p)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 78, r.stderr
    assert "general.user" in r.stderr and "no-such-mm-user" in r.stderr


@pytest.mark.parametrize("daemon", ["mattermail-milter", "mattermail-router"])
def test_daemon_with_unreachable_syslog_exits_78_naming_it(tmp_path, daemon):
    p = tmp_path / "m.toml"
    p.write_text(f"[general]\nuser = ''\n[log]\nsyslog = true\nsyslog_socket = '{tmp_path}/no-log'\n")
    r = subprocess.run([str(BIN / daemon), "--config", str(p)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 78, r.stderr
    assert "log.syslog" in r.stderr and "no-log" in r.stderr

# A daemon started as root serving as its user is tested with the installed package
# (tests/package): the dev venv's interpreter lives under /root, which no other user may read.
