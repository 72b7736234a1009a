"""The webhook deliverer: POSTs each outbox event (store/webhooks.py), signed, retried with backoff.

Each request: a JSON body, ``X-Mattermail-Delivery: mmwh-<n>`` (the same on every retry: a receiver drops
one it has seen), ``X-Mattermail-Timestamp`` (Unix seconds: a receiver refuses old ones against replay)
and ``X-Mattermail-Signature: sha256=<hex>``, the HMAC-SHA256 under the webhook's secret of
``<timestamp>.<body>``. A 2xx answer delivers the event; anything else (or no answer within 10 s) is
retried after 5 s, 15 s, 1 min, then every 5 min, and nothing newer of the same matter
is sent before it (order kept per matter). Runs inside mattermail-web, one event at a time.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
import urllib.error
import urllib.request
from pathlib import Path

from mattermail.store import Store, get_message, webhooks
from mattermail.store.listing import Names
from mattermail.web.common import summary_json

log = logging.getLogger("mattermail.web.webhooks")
TIMEOUT = 10.0
POLL = 1.0


def sign(secret: bytes, timestamp: int, body: bytes) -> str:
    return "sha256=" + hmac.new(secret, str(timestamp).encode() + b"." + body, hashlib.sha256).hexdigest()


def payload(store: Store, e: webhooks.Event) -> bytes | None:
    m = get_message(store, e.message)
    if m is None:
        return None
    names = Names(store)
    return json.dumps({"type": f"message.{e.kind}", "delivery_id": e.delivery_id, "created": e.created,
                       "data": {"message": summary_json(m), "matter": e.matter,
                                "matter_title": names.matter_title(e.matter), "person_id": e.person,
                                "person": names.person(e.person), "rule": e.rule}},
                      ensure_ascii=True, separators=(",", ":")).encode()


def post(url: str, body: bytes, headers: dict[str, str]) -> str | None:
    """POST; None when the receiver answered 2xx, else what went wrong (one line)."""
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json",
                                                                         "User-Agent": "mattermail-webhooks",
                                                                         **headers})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as resp:
            return None if 200 <= resp.status < 300 else f"HTTP {resp.status}"
    except urllib.error.HTTPError as e:
        return f"HTTP {e.code}"
    except (urllib.error.URLError, OSError) as e:
        return f"{getattr(e, 'reason', None) or e}"


async def deliver_due(store: Store, now: float | None = None) -> int:
    """Send what is due now; returns how many events were delivered."""
    sent = 0
    now = time.time() if now is None else now
    for e in webhooks.due(store, now):
        hook = webhooks.get_webhook(store, e.webhook)
        if hook is None:
            continue
        if hook.login and not webhooks.visible_to(store, hook.login, e.message):
            webhooks.skip(store, e.id, f"behind an ethical wall for {hook.login}")
            continue
        body = payload(store, e)
        if body is None:
            webhooks.skip(store, e.id, "the message was deleted")
            continue
        try:
            secret = Path(hook.secret_file).read_bytes().strip()
        except OSError as err:
            webhooks.failed(store, e.id, f"secret file {hook.secret_file}: {err.strerror or err}", time.time())
            continue
        ts = int(time.time())
        error = await asyncio.to_thread(post, hook.url, body, {
            "X-Mattermail-Delivery": e.delivery_id, "X-Mattermail-Timestamp": str(ts),
            "X-Mattermail-Signature": sign(secret, ts, body)})
        if error is None:
            webhooks.delivered(store, e.id, time.time())
            sent += 1
        else:
            nxt = webhooks.failed(store, e.id, error, time.time())
            log.warning("webhook %d: %s to %s failed (%s); next try in %.0f s", hook.id, e.delivery_id, hook.url,
                        error, nxt - time.time())
    return sent


async def run(store: Store, stop: asyncio.Event) -> None:
    """Deliver until ``stop`` is set: due events at once, else a look every second for new ones."""
    while not stop.is_set():
        try:
            await deliver_due(store)
        except Exception:  # a bug or a store failure must not end the web service: logged, tried again
            log.exception("webhook delivery failed")
        try:
            await asyncio.wait_for(stop.wait(), POLL)
        except asyncio.TimeoutError:
            pass
