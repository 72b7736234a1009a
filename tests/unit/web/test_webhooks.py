"""Webhooks: the outbox written in the filing's transaction, signed deliveries, retries, order per matter."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from click.testing import CliRunner

from mattermail.store import access, transaction, webhooks
from mattermail.store import directory as d
from mattermail.web import webhooks as deliverer

from .conftest import BOB, BOTH_ENGINES

SECRET = b"s3cret-shared-with-the-pms"


class Receiver:
    """A practice-management system's endpoint on a loopback port: records every POST, answers 204."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.got: list[tuple[dict[str, str], bytes]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.got.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def drain(store, now: float | None = None) -> int:
    return asyncio.run(deliverer.deliver_due(store, now))


@pytest.fixture
def secret_file(tmp_path):
    p = tmp_path / "hook.key"
    p.write_bytes(SECRET + b"\n")
    return p


@BOTH_ENGINES
def test_receiver_down_then_up_gets_every_event_once_signed_and_in_order(fill, secret_file):
    port = free_port()  # nobody listens here yet: the receiver is down
    hook = webhooks.add_webhook(fill.store, f"http://127.0.0.1:{port}/hook", str(secret_file))
    d.add_matter(fill.store, "9000", "Third matter")
    order = ["1234", "5678", "9000"]
    for i in range(50):
        fill.add(f"Filing {i}", f"body {i}", (order[i % 3],))
    assert drain(fill.store) == 0
    status = webhooks.list_webhooks(fill.store)[0]
    assert status.backlog == 50 and status.delivered == 0 and status.last_error
    # every retry is scheduled with backoff: nothing is due again at once
    assert webhooks.due(fill.store, time.time()) == []
    receiver = Receiver(port)
    try:
        far = time.time() + 10 ** 6
        rounds = 0
        while webhooks.list_webhooks(fill.store)[0].backlog and rounds < 60:
            drain(fill.store, far)
            rounds += 1
    finally:
        receiver.close()
    assert len(receiver.got) == 50
    ids = [h["x-mattermail-delivery"] for h, _ in receiver.got]
    assert len(set(ids)) == 50
    per_matter: dict[str, list[int]] = {}
    for headers, body in receiver.got:
        expected = "sha256=" + hmac.new(SECRET, headers["x-mattermail-timestamp"].encode() + b"." + body,
                                        hashlib.sha256).hexdigest()
        assert hmac.compare_digest(headers["x-mattermail-signature"], expected)
        event = json.loads(body)
        assert event["type"] == "message.filed" and event["delivery_id"] == headers["x-mattermail-delivery"]
        per_matter.setdefault(event["data"]["matter"], []).append(int(event["data"]["message"]["subject"].split()[1]))
    assert {m: sorted(v) == v for m, v in per_matter.items()} == {"1234": True, "5678": True, "9000": True}
    assert sum(len(v) for v in per_matter.values()) == 50
    final = webhooks.list_webhooks(fill.store)[0]
    assert final.backlog == 0 and final.delivered == 50 and final.webhook.id == hook.id
    assert final.last_error == ""  # the outage is over


@BOTH_ENGINES
def test_a_failed_event_holds_back_its_matter_only(fill, secret_file):
    port = free_port()
    webhooks.add_webhook(fill.store, f"http://127.0.0.1:{port}/hook", str(secret_file))
    fill.add("A1", "", ("1234",))
    fill.add("A2", "", ("1234",))
    fill.add("B1", "", ("5678",))
    due = webhooks.due(fill.store, time.time())
    assert [(e.matter) for e in due] == ["1234", "5678"]  # one per matter: A2 waits behind A1


@BOTH_ENGINES
def test_the_outbox_row_is_part_of_the_filing_transaction(fill, secret_file):
    webhooks.add_webhook(fill.store, "http://127.0.0.1:9/hook", str(secret_file), matter="1234")
    mid = fill.ids["Who is this"]
    with pytest.raises(RuntimeError):
        with transaction(fill.store):
            d.record_filing(fill.store, d.Filing(mid, "1234", None, "test", "x@matters.lawfirm.test"))
            raise RuntimeError("the filing is rolled back")
    assert webhooks.list_webhooks(fill.store)[0].backlog == 0
    fill.add("Other matter", "", ("5678",))  # not this webhook's matter
    assert webhooks.list_webhooks(fill.store)[0].backlog == 0
    from mattermail.store import records

    records.refile_message(fill.store, mid, "1234", None, "about the contract")
    (event,) = webhooks.due(fill.store, time.time())
    assert event.kind == "refiled" and event.message == mid


@BOTH_ENGINES
def test_a_user_scoped_webhook_skips_walled_messages(fill, secret_file):
    port = free_port()
    receiver = Receiver(port)
    try:
        webhooks.add_webhook(fill.store, f"http://127.0.0.1:{port}/hook", str(secret_file), login=BOB)
        fill.add("Open news", "", ("1234",))
        fill.add("Walled news", "", ("5678",))
        assert access.walled_matters(fill.store, access.viewer(fill.store, BOB)) == {"5678"}
        drain(fill.store)
    finally:
        receiver.close()
    assert [json.loads(b)["data"]["message"]["subject"] for _, b in receiver.got] == ["Open news"]
    assert webhooks.list_webhooks(fill.store)[0].backlog == 0


def test_ctl_webhook_add_list_remove(write_config, tmp_path, secret_file):
    from mattermail.ctl.cli import cli

    cfg = write_config()

    def run(*args):
        return CliRunner().invoke(cli, ["--config", str(cfg), *args])
    r = run("webhook", "add", "https://pms.example/hook", "--secret-file", str(secret_file))
    assert r.exit_code == 0 and "added webhook 1" in r.output, r.output
    assert "backlog 0" in run("webhook", "list").output
    bad = run("webhook", "add", "ftp://x", "--secret-file", str(secret_file))
    assert bad.exit_code == 1 and "URL" in bad.output
    missing = run("webhook", "add", "https://x", "--secret-file", str(tmp_path / "nope"))
    assert missing.exit_code == 1 and "--secret-file" in missing.output
    assert run("webhook", "remove", "1").exit_code == 0
    assert run("webhook", "list").output.strip() == "no webhooks"
    for name in ("add", "list", "remove"):
        assert "Example:" in run("webhook", name, "--help").output
