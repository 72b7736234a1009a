"""SIGHUP through the real stack: new settings for the next message, a broken config changes nothing."""

from __future__ import annotations

import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from mattermail.store import directory as d
from mattermail.store import Store, UserError

from .conftest import children, reload_lines, wait_for
from .test_outbound import dkim_results

CA = "matters.lawfirm.test"


def pid(stack, name: str) -> int:
    p = stack.stack._running(name)
    assert p, f"{name} is not running"
    return p


def lines(stack, name: str, needle: str) -> int:
    text = (stack.stack.logs / f"{name}.log").read_text(errors="replace")
    return sum(1 for line in text.splitlines() if needle in line)


def hup(stack, name: str, expect: str) -> None:
    """SIGHUP ``name`` and wait for a log line containing ``expect`` from each of its processes (every
    milter worker reloads on its own)."""
    before, n = lines(stack, name, expect), reload_lines(stack, name)
    os.kill(pid(stack, name), signal.SIGHUP)
    wait_for(lambda: lines(stack, name, expect) >= before + n, 30, f"{n} x {expect!r} in {name}.log")


@contextmanager
def config_text(stack, text: str) -> Iterator[None]:
    """Replace the stack's config file for the block; put it back (and reload) afterwards."""
    path = stack.stack.config
    original = path.read_text()
    path.write_text(text)
    try:
        yield
    finally:
        path.write_text(original)
        for name in ("milter", "router"):
            hup(stack, name, "reloaded")


def submit_and_fetch(stack, subject: str) -> bytes:
    msg = stack.message("alice@lawfirm.test", ["someone@example.test"], subject=subject)
    stack.submit("alice@lawfirm.test", msg, ["someone@example.test"])
    return stack.sink_with(msg["Message-ID"].encode()).read_bytes()


def filings(stack, message_id: str) -> list[tuple]:
    db = sqlite3.connect(stack.stack.var / "store.sqlite")
    try:
        return db.execute("SELECT f.matter, f.rule FROM filings f JOIN messages m ON m.id = f.message "
                          "WHERE m.message_id = ? ORDER BY f.id", [message_id]).fetchall()
    finally:
        db.close()


@pytest.fixture(scope="module")
def matter(stack) -> str:
    store = Store(stack.stack.var / "store.sqlite", stack.stack.var / "messages")
    try:
        d.add_matter(store, "7201", "Reload test matter")
    except UserError:
        pass
    store.close()
    return "7201"


def test_sighup_with_a_new_disclaimer_the_next_message_carries_it(stack, tmp_path):
    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("Reload disclaimer ONE -- Lawfirm LLP\n")
    second.write_text("Reload disclaimer TWO -- Lawfirm LLP\n")
    assert stack.ctl("disclaimer", "set", "--sender", "alice@lawfirm.test", "--text", str(first)).returncode == 0
    try:
        raw = submit_and_fetch(stack, "before reload")
        assert raw.count(b"Reload disclaimer ONE") == 1
        milter = pid(stack, "milter")
        assert stack.ctl("disclaimer", "set", "--sender", "alice@lawfirm.test", "--text", str(second)).returncode == 0
        hup(stack, "milter", "reloaded")
        raw = submit_and_fetch(stack, "after reload")
        assert raw.count(b"Reload disclaimer TWO") == 1 and b"Reload disclaimer ONE" not in raw
        assert dkim_results(stack, raw) and all(dkim_results(stack, raw))
        assert pid(stack, "milter") == milter
    finally:
        stack.ctl("disclaimer", "remove", "--sender", "alice@lawfirm.test")


def test_sighup_with_a_broken_config_keeps_both_daemons_on_the_old_one(stack, matter):
    before = {name: pid(stack, name) for name in ("milter", "router")}
    broken = stack.stack.config.read_text().replace("[router]", "[router]\nmatter_patterns = ['(']", 1)
    with config_text(stack, broken):
        for name in ("milter", "router"):
            hup(stack, name, "reload refused")
            line = next(line for line in (stack.stack.logs / f"{name}.log").read_text().splitlines()
                        if "reload refused" in line)
            assert "router.matter_patterns" in line and str(stack.stack.config) in line, line
        assert {name: pid(stack, name) for name in before} == before
        # Still serving, on the old settings: signed outbound mail, filed inbound mail.
        raw = submit_and_fetch(stack, "while the config is broken")
        assert dkim_results(stack, raw) and all(dkim_results(stack, raw))
        msg = stack.message("bob@example.test", [f"{matter}@{CA}"], subject="broken config, still filed")
        qid = stack.inbound(msg, [f"{matter}@{CA}"])
        stack.log_line("router", qid, "status=stored")
        assert filings(stack, msg["Message-ID"]) == [(matter, "matter-address")]


def test_router_sighup_applies_a_new_subject_pattern(stack, matter):
    text = stack.stack.config.read_text()
    assert "subject_patterns" not in text
    changed = text.replace("[router]", "[router]\nsubject_patterns = ['\\bCase #(\\d+)']", 1)
    msg = stack.message("bob@example.test", [f"inbox@{CA}"], subject=f"Re: Case #{matter}")
    qid = stack.inbound(msg, [f"inbox@{CA}"])
    stack.log_line("router", qid, "status=stored")
    assert filings(stack, msg["Message-ID"]) == [] or all(f[1] != "subject" for f in filings(stack, msg["Message-ID"]))
    with config_text(stack, changed):
        hup(stack, "router", "reloaded")
        msg = stack.message("bob@example.test", [f"inbox@{CA}"], subject=f"Re: Case #{matter}")
        qid = stack.inbound(msg, [f"inbox@{CA}"])
        stack.log_line("router", qid, "status=stored")
        assert (matter, "subject") in filings(stack, msg["Message-ID"])


def test_a_burst_of_sighups_neither_stops_the_milter_nor_breaks_sessions(stack):
    milter = pid(stack, "milter")
    before = lines(stack, "milter", "reloaded")
    for _ in range(30):
        os.kill(milter, signal.SIGHUP)
        time.sleep(0.01)
    raw = submit_and_fetch(stack, "after a burst of SIGHUPs")
    assert dkim_results(stack, raw) and all(dkim_results(stack, raw))
    wait_for(lambda: lines(stack, "milter", "reloaded") > before, 30, "a reload")
    assert pid(stack, "milter") == milter


def test_log_lines_are_postfix_style_with_the_queue_id(stack):
    msg = stack.message("alice@lawfirm.test", ["someone@example.test"], subject="log style")
    qid = stack.submit("alice@lawfirm.test", msg, ["someone@example.test"])
    line = stack.log_line("milter", f": {qid}: ")
    milter = pid(stack, "milter")  # the worker that served it when there are workers (milter.workers)
    assert any(f"mattermail-milter[{p}]: {qid}: " in line for p in [milter, *children(milter)]), line


def test_sighup_with_an_unreadable_key_keeps_the_old_keys(stack):
    bad = stack.stack.var / "dkim" / "lawfirm.test" / "broken.rsa.pem"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    try:
        hup(stack, "milter", "reload refused")
        line = [line for line in (stack.stack.logs / "milter.log").read_text().splitlines()
                if "reload refused" in line][-1]
        assert "dkim.keys_dir" in line and "lawfirm.test" in line, line
        raw = submit_and_fetch(stack, "signed with the old keys")
        assert dkim_results(stack, raw) and all(dkim_results(stack, raw))
    finally:
        bad.unlink()
