"""Disclaimers: default, per domain and per sender."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from mattermail.store.engine import Store, UserError, normalise_address

# -- disclaimers -----------------------------------------------------------------

DISCLAIMER_SCOPES = ("default", "domain", "sender")


@dataclass(frozen=True)
class DisclaimerRow:
    scope: str
    key: str
    text: str
    html: str | None
    updated: float


def set_disclaimer(store: Store, scope: str, key: str, text: str, html: str | None) -> None:
    if scope not in DISCLAIMER_SCOPES:
        raise UserError(f"scope: must be one of {', '.join(DISCLAIMER_SCOPES)}")
    if not text.strip():
        raise UserError("text: the disclaimer text is empty")
    key = "" if scope == "default" else normalise_address(key)
    store.db.execute(
        "INSERT INTO disclaimers (scope, key, text, html, updated) VALUES (?, ?, ?, ?, ?)"
        " ON CONFLICT (scope, key) DO UPDATE SET text = excluded.text, html = excluded.html, updated = excluded.updated",
        [scope, key, text, html, time.time()],
    )


def remove_disclaimer(store: Store, scope: str, key: str) -> None:
    key = "" if scope == "default" else normalise_address(key)
    if store.db.execute("DELETE FROM disclaimers WHERE scope = ? AND key = ?", [scope, key]).rowcount == 0:
        raise UserError(f"no {scope} disclaimer{' for ' + key if key else ''}")


def list_disclaimers(store: Store) -> list[DisclaimerRow]:
    rows = store.db.execute(
        "SELECT scope, key, text, html, updated FROM disclaimers"
        " ORDER BY CASE scope WHEN 'default' THEN 0 WHEN 'domain' THEN 1 ELSE 2 END, key"
    ).fetchall()
    return [DisclaimerRow(*r) for r in rows]


def disclaimer_for(rows: Iterable[DisclaimerRow], sender: str) -> DisclaimerRow | None:
    """The most specific disclaimer for ``sender``: per sender, then per domain (or parent domain), then default."""
    sender = normalise_address(sender)
    domain = sender.rpartition("@")[2]
    by_key = {(r.scope, r.key): r for r in rows}
    if ("sender", sender) in by_key:
        return by_key[("sender", sender)]
    labels = domain.split(".")
    for i in range(len(labels) - 1):
        hit = by_key.get(("domain", ".".join(labels[i:])))
        if hit:
            return hit
    return by_key.get(("default", ""))
