"""mattermailctl status and test-send against the real stack."""

from __future__ import annotations

import json
import re
import sqlite3

from click.testing import CliRunner

from mattermail.ctl import statuscmd, testsend  # noqa: F401  (each registers its command)
from mattermail.ctl.base import cli

from .conftest import PASSWORD

STEPS = ["connect", "STARTTLS", "AUTH", "accepted", "captured", "signed"]


def run(stack, *args: str, input: str | None = None):
    return CliRunner().invoke(cli, ["--config", str(stack.stack.config), *args], input=input)


def steps(output: str) -> dict[str, str]:
    """{step: "ok" | "FAILED" | "skipped"} from test-send's one-line-per-step report."""
    found = {}
    for line in output.splitlines():
        m = re.match(r"(\S+)\s+(ok|FAILED|skipped)\s", line)
        if m:
            found[m.group(1)] = m.group(2)
    return found


def test_status_on_the_running_stack(stack):
    r = run(stack, "status", "--json")
    assert r.exit_code == 0, r.output
    report = json.loads(r.stdout)
    assert report["ok"] is True and report["unreachable"] == []
    by_name = {d["name"]: d for d in report["daemons"]}
    assert set(by_name) == {"milter", "router", "srs", "dns"}
    assert all(d["up"] for d in report["daemons"]), report["daemons"]
    assert by_name["router"]["detail"].startswith("220")
    assert report["queue"]["source"] == "postqueue"
    assert all(isinstance(report["queue"][q], int) for q in ("active", "deferred", "hold", "incoming"))
    assert report["log"]["file"] == str(stack.stack.logs / "postfix.log") and report["log"]["scanned"] > 0
    counts = report["store"]["counts"]
    assert set(counts) == {"messages", "filings", "unfiled", "persons", "matters", "aliases", "users", "not_indexed"}
    assert counts["users"] >= 1 and report["store"]["db_bytes"] > 0
    assert 0 <= counts["not_indexed"] <= counts["messages"], counts  # the router indexes after the 250

    text = run(stack, "status")
    assert text.exit_code == 0, text.output
    assert re.search(r"milter\s+up", text.stdout) and "active " in text.stdout and "users " in text.stdout
    assert re.search(r"not indexed \d+", text.stdout), text.stdout


def test_status_names_a_stopped_milter(stack):
    stack.stack.stop_milter()
    try:
        r = run(stack, "status", "--json")
        assert r.exit_code == 1, r.output
        report = json.loads(r.stdout)
        assert report["unreachable"] == ["milter"]
        assert "unreachable: milter" in r.stderr
        text = run(stack, "status")
        assert text.exit_code == 1 and re.search(r"milter\s+DOWN", text.stdout)
    finally:
        stack.stack.start_milter()
    assert run(stack, "status").exit_code == 0


def test_send_passes_every_step_including_signed_and_captured(stack):
    """No --server: the config's postfix.submission says where the stack's submission service listens."""
    r = run(stack, "test-send", "--user", "alice@lawfirm.test", "--password-stdin", input=PASSWORD + "\n")
    assert r.exit_code == 0, r.output
    assert re.search(rf"^connect\s+ok\s+127\.0\.0\.1:{stack.stack.ports.submission}: 220 ", r.stdout, re.M), r.stdout
    assert steps(r.stdout) == dict.fromkeys(STEPS, "ok"), r.stdout
    assert "certificate not verified" in r.stdout and "d=lawfirm.test" in r.stdout
    message_id = re.search(r"Message-ID (<[^>]+>)", r.stdout).group(1)
    db = sqlite3.connect(stack.stack.var / "store.sqlite")
    try:
        assert db.execute("SELECT COUNT(*) FROM captures c JOIN messages m ON m.id = c.message"
                          " WHERE m.message_id = ?", [message_id]).fetchone()[0] == 1
    finally:
        db.close()


def test_send_server_option_overrides_the_config(stack):
    from mattermail_dev.devdns import free_port

    port = free_port()  # nothing listens there
    r = run(stack, "test-send", "--user", "alice@lawfirm.test", "--server", f"127.0.0.1:{port}",
            input=PASSWORD + "\n")
    assert r.exit_code == 1, r.output
    assert steps(r.stdout) == {"connect": "FAILED"} and f"127.0.0.1:{port}: connection refused" in r.stdout, r.stdout


def test_send_with_a_wrong_password_fails_at_auth(stack):
    r = run(stack, "test-send", "--user", "alice@lawfirm.test", "--server", f"127.0.0.1:{stack.stack.ports.submission}",
            input="not-the-password\n")
    assert r.exit_code == 1, r.output
    assert steps(r.stdout) == {"connect": "ok", "STARTTLS": "ok", "AUTH": "FAILED"}, r.stdout
    assert "test-send failed at AUTH" in r.stderr and "535" in r.stderr
