"""The router down (issue 11 item 8): only mail for the catch-all domain waits; everything else flows.

Postfix asks the SRS socketmap (mattermail-srs, its own process) about every message, and the router
only about catch-all deliveries. With the router killed:

* inbound mail for a firm user is accepted (250) and relayed to its mailbox host (the sink), with an
  SRS0 envelope sender;
* an outbound submission is accepted (250) and reaches the sink DKIM-signed;
* catch-all mail is accepted (250) and queued: Postfix's LMTP delivery to the router is deferred
  (connection refused) and it stays in the queue; after the router restarts and the queue is flushed it
  is filed exactly once.
"""

from __future__ import annotations

import json
import re
import uuid

import pytest
from mattermail.store import directory as d
from mattermail.store import Store, UserError

from .conftest import wait_for
from .test_outbound import dkim_results
from .test_router_robustness import alive, db, drain, filed_once_problems, queued, router_pid, sigkill_router

CA = "matters.lawfirm.test"
MATTER = "1234"
RCPT = f"{MATTER}@{CA}"


@pytest.fixture(scope="module")
def matter(stack):
    store = Store(stack.stack.var / "store.sqlite", stack.stack.var / "messages")
    try:
        d.add_matter(store, MATTER, "Router-down tests")
    except UserError:
        pass  # already there (the stack is shared by the session)
    store.close()
    return MATTER


def srs_pid(stack) -> int:
    return int((stack.stack.run_dir / "srs.pid").read_text())


def test_with_the_router_killed_only_catchall_mail_waits(stack, matter):
    tag = uuid.uuid4().hex[:10]
    srs_before = srs_pid(stack)
    killed = sigkill_router(stack)
    try:
        assert not alive(killed)
        # Inbound for a firm user: 250 (stack.inbound raises on any other reply), relayed with SRS.
        inbound = stack.message("bob@example.test", ["alice@lawfirm.test"], subject=f"router down inbound {tag}")
        stack.inbound(inbound, ["alice@lawfirm.test"])
        path = stack.sink_with(f"router down inbound {tag}".encode())
        mail_from = json.loads(path.with_suffix(".json").read_text())["mail_from"]
        assert mail_from.startswith("SRS0=") and "=example.test=bob@lawfirm.test" in mail_from, mail_from

        # Outbound submission: 250, at the sink, signed.
        outbound = stack.message("alice@lawfirm.test", ["carol@example.test"], subject=f"router down outbound {tag}")
        stack.submit("alice@lawfirm.test", outbound, ["carol@example.test"])
        raw = stack.sink_with(f"router down outbound {tag}".encode()).read_bytes()
        results = dkim_results(stack, raw)
        assert results and all(results), f"DKIM results of the outbound copy: {results}"

        # Catch-all: accepted, then deferred in the queue (the router refuses connections).
        catchall = stack.message("bob@example.test", [RCPT], subject=f"router down catch-all {tag}")
        qid = stack.inbound(catchall, [RCPT])
        line = stack.log_line("postfix", f"{qid}: to=<{RCPT}>", "status=deferred")
        assert re.search(r"connect to 127\.0\.0\.1\[127\.0\.0\.1\]:\d+: Connection refused", line), line
        assert qid in queued(stack), f"{qid} not in Postfix's queue: {sorted(queued(stack))}"
        with db(stack) as conn:
            n = conn.execute("SELECT count(*) FROM messages WHERE message_id = ?", [catchall["Message-ID"]]).fetchone()[0]
        assert n == 0, f"{n} stored while the router was down"
        assert srs_pid(stack) == srs_before and alive(srs_before), "the SRS daemon was restarted or died"
    finally:
        stack.stack.start_router()
    assert router_pid(stack) != killed
    drain(stack, {qid})
    stack.log_line("router", qid, f"to=<{RCPT}>", "status=stored")
    with db(stack) as conn:
        problems = filed_once_problems(conn, [catchall["Message-ID"]], MATTER, RCPT)
    assert problems == [], problems


def test_router_down_leaves_status_naming_only_the_router(stack):
    killed = sigkill_router(stack)
    try:
        r = stack.ctl("status", "--json")
        report = json.loads(r.stdout)
        assert r.returncode == 1 and report["unreachable"] == ["router"], (r.returncode, report["unreachable"])
        by_name = {x["name"]: x for x in report["daemons"]}
        assert by_name["srs"]["up"] and "socketmap answered" in by_name["srs"]["detail"], by_name["srs"]
    finally:
        stack.stack.start_router()
    wait_for(lambda: router_pid(stack) != killed, 10, "the router's restart")
