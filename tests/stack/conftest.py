"""An isolated stack per test session: own state dir under /tmp, own free ports.

It runs beside `make run`'s stack without touching it.
"""

from __future__ import annotations

import os
import shutil
import smtplib
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path

import pytest

from mattermail_dev.devstack import Ports, Stack

BIN = Path(sys.executable).parent
PASSWORD = "correct-horse-battery"


def wait_for(predicate: Callable[[], object], timeout: float = 20.0, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class StackClient:
    """What the tests do with a running stack."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack

    def ctl(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(BIN / "mattermailctl"), "--config", str(self.stack.config), *args],
                              input=input, capture_output=True, text=True, timeout=60)

    @staticmethod
    def message(sender: str, to: list[str], subject: str = "test", body: str = "Hello.\n", **headers: str) -> EmailMessage:
        m = EmailMessage()
        m["From"] = sender
        m["To"] = ", ".join(to)
        m["Subject"] = subject
        m["Message-ID"] = f"<{time.time_ns()}@test.mattermail>"
        for k, v in headers.items():
            m[k.replace("_", "-")] = v
        m.set_content(body)
        return m

    def submission(self) -> smtplib.SMTP:
        c = smtplib.SMTP("127.0.0.1", self.stack.ports.submission, timeout=30)
        c.ehlo("client.lawfirm.test")
        return c

    @staticmethod
    def tls(c: smtplib.SMTP) -> None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        c.starttls(context=ctx)
        c.ehlo("client.lawfirm.test")

    def submit(self, login: str, msg: EmailMessage, rcpts: list[str], password: str = PASSWORD) -> str:
        """Submit on the submission port with STARTTLS + AUTH; return Postfix's queue id."""
        with self.submission() as c:
            self.tls(c)
            c.login(login, password)
            return self._send(c, msg, rcpts)

    def inbound(self, msg: EmailMessage, rcpts: list[str], source: str = "127.0.0.2") -> str:
        """Deliver on the MX port as "the internet" does (from 127.0.0.2); return the queue id."""
        with smtplib.SMTP("127.0.0.1", self.stack.ports.smtp, timeout=30, source_address=(source, 0)) as c:
            c.ehlo("mail.example.test")
            return self._send(c, msg, rcpts)

    @staticmethod
    def _send(c: smtplib.SMTP, msg: EmailMessage, rcpts: list[str]) -> str:
        sender = msg["From"].addresses[0].addr_spec
        code, resp = c.mail(sender)
        if code != 250:
            raise smtplib.SMTPSenderRefused(code, resp, sender)
        for r in rcpts:
            code, resp = c.rcpt(r)
            if code != 250:
                raise smtplib.SMTPRecipientsRefused({r: (code, resp)})
        code, resp = c.data(msg.as_bytes())
        if code != 250:
            raise smtplib.SMTPDataError(code, resp)
        return resp.decode().rsplit(" ", 1)[-1]

    def sink_files(self) -> list[Path]:
        return sorted(self.stack.sink_dir.glob("*.eml"))

    def stored_raw(self, sha256: str) -> bytes:
        """A stored message's raw bytes as the store keeps them: in its row (store.inline_max) or its file."""
        return stored_raw(self.stack.var, sha256)

    def sink_with(self, needle: bytes, timeout: float = 20.0) -> Path:
        return wait_for(lambda: next((p for p in self.sink_files() if needle in p.read_bytes()), None),
                        timeout, f"{needle!r} in the sink")  # type: ignore[return-value]

    def log_line(self, name: str, *needles: str, timeout: float = 20.0) -> str:
        path = self.stack.logs / f"{name}.log"

        def find() -> str | None:
            if not path.exists():
                return None
            return next((l for l in path.read_text(errors="replace").splitlines() if all(n in l for n in needles)), None)

        return wait_for(find, timeout, f"{needles} in {path}")  # type: ignore[return-value]


def stored_raw(var: Path, sha256: str) -> bytes:
    """The raw bytes of the message with ``sha256`` in the store under ``var`` (store.sqlite, messages/), read
    through the store layer: its row or its file."""
    from mattermail.store import Store, read_raw

    store = Store(var / "store.sqlite", var / "messages")
    try:
        return read_raw(store, sha256)
    finally:
        store.close()


def children(parent: int) -> list[int]:
    """The pids of the processes whose parent is ``parent`` (a milter's workers), sorted."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == parent:
                        out.append(int(name))
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                pass
    return sorted(out)


def reload_lines(stack, name: str) -> int:
    """How many lines one SIGHUP makes ``name`` log ("reloaded", "reload refused"): one per milter worker
    (each reloads on its own, passed the signal by the milter's parent), one for any other daemon. Waiting
    for fewer lets a test send mail that a worker not reloaded yet still serves."""
    pid = stack.stack._running(name)
    return max(1, len(children(pid))) if name == "milter" and pid else 1


@pytest.fixture(scope="session")
def stack():
    if os.geteuid() != 0:
        pytest.fail("the stack tests start a private Postfix instance and must run as root")
    var = Path(tempfile.mkdtemp(prefix="mattermail-stack-"))
    os.chmod(var, 0o755)
    s = Stack(var, Ports.free())
    try:
        s.start()
        client = StackClient(s)
        r = client.ctl("user", "add", "alice@lawfirm.test", input=PASSWORD + "\n")
        assert r.returncode == 0, r.stderr
        yield client
    finally:
        s.stop()
        if not os.environ.get("MATTERMAIL_KEEP_STACK"):
            shutil.rmtree(var, ignore_errors=True)
