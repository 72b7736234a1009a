"""Webhook subscriptions and their outbox (issue 18): every filing becomes an event for each matching webhook.

The outbox rows are written by a trigger on ``filings`` (migration 11, _m011_webhooks), inside the filing's transaction.
:func:`due` hands the deliverer what may be sent now, oldest first, at most one per (webhook, matter) and
never past an older undelivered event of the same matter (order kept per matter); :func:`delivered`,
:func:`failed` and :func:`skip` record each outcome. A webhook scoped to a user (``login``) gets only the
events of messages that user may see (ethical walls): the others are skipped, and say why.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from mattermail.store.access import Viewer, visible_sql
from mattermail.store.engine import Store, UserError, normalise_address

# Seconds before retry N (1-based); the last value repeats: a receiver back after an outage gets its backlog
# within 5 minutes.
BACKOFF = (5, 15, 60, 300)


@dataclass(frozen=True)
class Webhook:
    id: int
    url: str
    secret_file: str
    matter: str | None
    login: str | None
    created: float


@dataclass(frozen=True)
class WebhookStatus:
    webhook: Webhook
    backlog: int
    delivered: int
    last_delivered: float | None
    last_error: str  # of the newest event still waiting ("" when nothing waits after a failure)


@dataclass(frozen=True)
class Event:
    id: int  # the outbox row: delivery id mmwh-<id>
    webhook: int
    message: int
    matter: str | None
    person: int | None
    rule: str
    created: float
    attempts: int

    @property
    def delivery_id(self) -> str:
        return f"mmwh-{self.id}"

    @property
    def kind(self) -> str:
        return "refiled" if self.rule == "refile" else "filed"


_HOOK = "id, url, secret_file, matter, login, created"


def add_webhook(store: Store, url: str, secret_file: str, matter: str | None = None,
                login: str | None = None) -> Webhook:
    if not (url.startswith("https://") or url.startswith("http://")):
        raise UserError(f"URL: {url!r} is not an http(s) URL")
    if matter is not None and store.db.execute("SELECT 1 FROM matters WHERE id = ?", [matter]).fetchone() is None:
        raise UserError(f"--matter: no matter {matter}")
    if login is not None:
        login = normalise_address(login)
        if store.db.execute("SELECT 1 FROM users WHERE login = ?", [login]).fetchone() is None:
            raise UserError(f"--user: no such user: {login}")
    now = time.time()
    wid = store.db.insert("INSERT INTO webhooks (url, secret_file, matter, login, created) VALUES (?, ?, ?, ?, ?)",
                          [url, secret_file, matter, login, now])
    return Webhook(wid, url, secret_file, matter, login, now)


def remove_webhook(store: Store, webhook_id: int) -> Webhook:
    w = get_webhook(store, webhook_id)
    if w is None:
        raise UserError(f"ID: no webhook {webhook_id}")
    store.db.execute("UPDATE webhooks SET removed = ? WHERE id = ?", [time.time(), webhook_id])
    return w


def get_webhook(store: Store, webhook_id: int) -> Webhook | None:
    row = store.db.execute(f"SELECT {_HOOK} FROM webhooks WHERE id = ? AND removed IS NULL", [webhook_id]).fetchone()
    return Webhook(*row) if row else None


def list_webhooks(store: Store) -> list[WebhookStatus]:
    out = []
    for row in store.db.execute(f"SELECT {_HOOK} FROM webhooks WHERE removed IS NULL ORDER BY id").fetchall():
        w = Webhook(*row)
        backlog, done, last = store.db.execute(
            "SELECT SUM(CASE WHEN delivered IS NULL AND skipped IS NULL THEN 1 ELSE 0 END), "
            "SUM(CASE WHEN delivered IS NOT NULL THEN 1 ELSE 0 END), MAX(delivered) FROM webhook_outbox "
            "WHERE webhook = ?", [w.id]).fetchone()
        err = store.db.execute("SELECT last_error FROM webhook_outbox WHERE webhook = ? AND last_error <> '' "
                               "AND delivered IS NULL AND skipped IS NULL ORDER BY id DESC LIMIT 1", [w.id]).fetchone()
        out.append(WebhookStatus(w, int(backlog or 0), int(done or 0), last, err[0] if err else ""))
    return out


def due(store: Store, now: float, limit: int = 100) -> list[Event]:
    """The events to send now: per (webhook, matter), its oldest pending event, when its retry time has come."""
    rows = store.db.execute(
        "SELECT o.id, o.webhook, o.message, o.matter, o.person, o.rule, o.created, o.attempts, o.next_try "
        "FROM webhook_outbox o JOIN webhooks w ON w.id = o.webhook "
        "WHERE o.delivered IS NULL AND o.skipped IS NULL AND w.removed IS NULL ORDER BY o.id").fetchall()
    seen: set[tuple[int, str | None]] = set()
    out: list[Event] = []
    for r in rows:
        key = (r[1], r[3])
        if key in seen:
            continue
        seen.add(key)
        if r[8] <= now:
            out.append(Event(*r[:8]))
            if len(out) >= limit:
                break
    return out


def next_due(store: Store) -> float | None:
    row = store.db.execute("SELECT MIN(next_try) FROM webhook_outbox WHERE delivered IS NULL AND skipped IS NULL").fetchone()
    return row[0]


def delivered(store: Store, event_id: int, now: float) -> None:
    store.db.execute("UPDATE webhook_outbox SET delivered = ?, attempts = attempts + 1 WHERE id = ?", [now, event_id])


def failed(store: Store, event_id: int, error: str, now: float) -> float:
    """Record a failed attempt; returns when the next one is due."""
    row = store.db.execute("SELECT attempts FROM webhook_outbox WHERE id = ?", [event_id]).fetchone()
    attempts = (row[0] if row else 0) + 1
    nxt = now + BACKOFF[min(attempts, len(BACKOFF)) - 1]
    store.db.execute("UPDATE webhook_outbox SET attempts = ?, next_try = ?, last_error = ? WHERE id = ?",
                     [attempts, nxt, error[:500], event_id])
    return nxt


def skip(store: Store, event_id: int, why: str) -> None:
    store.db.execute("UPDATE webhook_outbox SET skipped = ? WHERE id = ?", [why, event_id])


def visible_to(store: Store, login: str, message: int) -> bool:
    """Whether a webhook scoped to ``login`` may carry this message (the same walls as the API)."""
    from mattermail.store.access import viewer

    v: Viewer = viewer(store, login)
    cond, params = visible_sql(v)
    return store.db.execute(f"SELECT 1 FROM messages m WHERE m.id = ? AND {cond}", [message, *params]).fetchone() \
        is not None
