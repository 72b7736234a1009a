"""mattermail-srs, the SRS socketmap daemon, as a real process: lookups, SIGHUP, SIGTERM, broken configs."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
SECRET = "0123456789abcdef0123456789abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(tmp_path: Path, port: int, secret: str = SECRET, domain: str = "lawfirm.test",
                 listen: str | None = None) -> Path:
    (tmp_path / "srs.key").write_text(secret + "\n")
    p = tmp_path / "m.toml"
    p.write_text(f"""[general]
user = ""
sending_domains = ["lawfirm.test"]
catchall_domains = ["matters.lawfirm.test"]

[srs]
listen = "{listen if listen is not None else f'127.0.0.1:{port}'}"
domain = "{domain}"
secret_file = "{tmp_path / 'srs.key'}"
""")
    return p


def netstring(data: bytes) -> bytes:
    return str(len(data)).encode() + b":" + data + b","


def ask(port: int, *requests: str) -> list[str]:
    """Send socketmap requests on one connection, as Postfix does; the replies in order."""
    out = []
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        f = s.makefile("rb")
        for r in requests:
            s.sendall(netstring(r.encode()))
            digits = b""
            while (c := f.read(1)) != b":":
                assert c, f"connection closed after {len(out)} replies"
                digits += c
            out.append(f.read(int(digits) + 1)[:-1].decode())
    return out


class Daemon:
    def __init__(self, config: Path, log: Path) -> None:
        self.log = log
        self.out = open(log, "wb")
        self.proc = subprocess.Popen([str(BIN / "mattermail-srs"), "--config", str(config)],
                                     stdout=self.out, stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_line(self, needle: str, count: int = 1, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.text().count(needle) < count:
            if self.proc.poll() is not None:
                raise AssertionError(f"exited {self.proc.returncode} before {needle!r}:\n{self.text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{needle!r} seen {self.text().count(needle)} time(s), "
                                     f"wanted {count}, within {timeout}s:\n{self.text()}")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self.out.close()


@pytest.fixture
def srsd(tmp_path):
    port = free_port()
    cfg = write_config(tmp_path, port)
    d = Daemon(cfg, tmp_path / "srs.log")
    d.port, d.config = port, cfg  # type: ignore[attr-defined]
    try:
        d.wait_line("ready: SRS socketmap on")
        yield d
    finally:
        d.stop()


def test_answers_the_three_tables_and_refuses_unknown_ones(srsd):
    fwd, local, perm = ask(srsd.port, "srs_forward bob@example.test", "srs_forward alice@lawfirm.test", "nosuch x")
    assert fwd.startswith("OK SRS0=") and fwd.endswith("@lawfirm.test"), fwd
    assert local == "NOTFOUND ", local
    assert perm.startswith("PERM "), perm
    srs = fwd[3:]
    rev, ok, forged = ask(srsd.port, f"srs_reverse {srs}", f"srs_check {srs}",
                          f"srs_check {srs.replace('SRS0=', 'SRS0=x', 1)}")
    assert rev == "OK bob@example.test" and ok == "NOTFOUND ", (rev, ok)
    assert forged.startswith("OK REJECT 5.1.1") and "signature" in forged, forged
    line = next(l for l in srsd.text().splitlines() if "srs_check: refused" in l)
    assert f"mattermail-srs[{srsd.proc.pid}]: srs_check: refused 'SRS0=x" in line, line


def test_sighup_switches_the_secret_and_a_broken_one_keeps_the_old(srsd, tmp_path):
    old = ask(srsd.port, "srs_forward bob@example.test")[0][3:]
    # A secret that is too short: refused, the old codec keeps answering (the old address still verifies).
    (tmp_path / "srs.key").write_text("short\n")
    srsd.proc.send_signal(signal.SIGHUP)
    srsd.wait_line("reload refused, still running with the previous configuration")
    assert "SRS secret" in srsd.text() and "shorter than 16 bytes" in srsd.text()
    assert ask(srsd.port, f"srs_reverse {old}") == ["OK bob@example.test"]
    # A new good secret: the old address no longer verifies, new ones are made with it.
    (tmp_path / "srs.key").write_text("fedcba9876543210fedcba9876543210\n")
    srsd.proc.send_signal(signal.SIGHUP)
    srsd.wait_line("reloaded ")
    refused, = ask(srsd.port, f"srs_check {old}")
    assert refused.startswith("OK REJECT 5.1.1"), refused
    # A config that does not parse: refused too, still answering.
    srsd.config.write_text(srsd.config.read_text() + "\n[srs\n")
    srsd.proc.send_signal(signal.SIGHUP)
    srsd.wait_line("reload refused", count=2)
    assert ask(srsd.port, "srs_forward bob@example.test")[0].startswith("OK SRS0="), srsd.text()
    # SRS switched off (listen = ""): that takes a restart; until then it keeps answering.
    srsd.config.write_text(srsd.config.read_text().replace("\n[srs\n", "\n").replace(
        f'listen = "127.0.0.1:{srsd.port}"', 'listen = ""'))
    srsd.proc.send_signal(signal.SIGHUP)
    srsd.wait_line("SRS switched off; still answering with the previous configuration")
    assert ask(srsd.port, "srs_forward bob@example.test")[0].startswith("OK SRS0="), srsd.text()
    assert srsd.proc.poll() is None


def test_sigterm_stops_it_promptly_even_with_a_client_connected(srsd):
    with socket.create_connection(("127.0.0.1", srsd.port), timeout=5):  # Postfix keeps connections open
        t0 = time.monotonic()
        srsd.proc.send_signal(signal.SIGTERM)
        rc = srsd.proc.wait(10)
        took = time.monotonic() - t0
    assert rc == 0 and took < 3, f"exit {rc} after {took:.2f}s"
    assert "stopped" in srsd.text()


@pytest.mark.parametrize("problem, expect", [
    ("domain", "srs.domain is required when srs.listen is set"),
    ("secret", "srs.secret_file: cannot read SRS secret"),
    ("toml", "not valid TOML"),
])
def test_broken_config_exits_78_naming_the_key(tmp_path, problem, expect):
    cfg = write_config(tmp_path, free_port(), domain="" if problem == "domain" else "lawfirm.test")
    if problem == "secret":
        (tmp_path / "srs.key").unlink()
    if problem == "toml":
        cfg.write_text(cfg.read_text() + "[srs\n")
    r = subprocess.run([str(BIN / "mattermail-srs"), "--config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 78, (r.returncode, r.stderr)
    assert r.stderr.startswith("mattermail-srs: fatal: ") and expect in r.stderr, r.stderr


def test_srs_off_exits_0_saying_so(tmp_path):
    cfg = write_config(tmp_path, 0, listen="")
    r = subprocess.run([str(BIN / "mattermail-srs"), "--config", str(cfg)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, (r.returncode, r.stderr)
    assert "SRS is off (srs.listen is empty" in r.stderr, r.stderr


def test_port_in_use_is_a_clear_fatal_line(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        cfg = write_config(tmp_path, taken.getsockname()[1])
        r = subprocess.run([str(BIN / "mattermail-srs"), "--config", str(cfg)], capture_output=True, text=True,
                           timeout=30)
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "fatal: srs.listen 127.0.0.1:" in r.stderr and "cannot listen" in r.stderr, r.stderr


def test_unix_socket_is_group_read_write_only(tmp_path):
    sock = tmp_path / "srs.sock"
    sock.write_text("stale")  # left by a killed daemon: replaced
    d = Daemon(write_config(tmp_path, 0, listen=f"unix:{sock}"), tmp_path / "srs.log")
    try:
        d.wait_line("ready: SRS socketmap on unix:")
        assert oct(os.stat(sock).st_mode & 0o777) == oct(0o660)
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(sock))
            s.sendall(netstring(b"srs_forward bob@example.test"))
            assert b":OK SRS0=" in s.recv(512)
    finally:
        d.stop()


def test_the_srs_daemon_loads_neither_router_nor_milter():
    code = ("import sys, mattermail.srsd; "
            "print(sorted(m for m in sys.modules if m.startswith(('mattermail.router', 'mattermail.milter', 'Milter'))))")
    r = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr
