"""Envelopes the milter records for capture copies, and the router's links from copies to them."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass

from mattermail.store.engine import Store, transaction

# -- envelopes of captured messages ---------------------------------------------------


@dataclass(frozen=True)
class EnvelopeRecord:
    ref: str
    queue_id: str
    mail_from: str
    recipients: tuple[str, ...]
    login: str
    client: str
    created: float
    message_id: str = ""  # the Message-ID the milter saw, normalised (mattermail/msgid.py); "" when none
    direction: str = "outbound"  # "outbound": a user's submission; "inbound": mail to a user (two-way capture)


_INSERT = ("INSERT INTO envelopes (ref, queue_id, mail_from, recipients, login, client, created, message_id, "
           "direction) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")


def _row(env: EnvelopeRecord) -> list:
    return [env.ref, env.queue_id, env.mail_from, json.dumps(list(env.recipients)), env.login, env.client,
            env.created, env.message_id, env.direction]


def record_envelope(store: Store, env: EnvelopeRecord) -> None:
    store.db.execute(_INSERT, _row(env))


def record_envelopes(store: Store, envs: Sequence[EnvelopeRecord]) -> None:
    """Several envelopes in one transaction (the milter's group commit, milter/envelopes.py)."""
    with transaction(store):
        store.db.executemany(_INSERT, [_row(e) for e in envs])


def record_capture(store: Store, message: int, ref: str, verified: bool) -> None:
    store.db.execute("INSERT INTO captures (message, ref, verified, recorded) VALUES (?, ?, ?, ?) "
                     "ON CONFLICT DO NOTHING",
                     [message, ref, int(verified), time.time()])


def get_envelope(store: Store, ref: str) -> EnvelopeRecord | None:
    row = store.db.execute(
        "SELECT ref, queue_id, mail_from, recipients, login, client, created, message_id, direction FROM envelopes"
        " WHERE ref = ?", [ref]
    ).fetchone()
    if row is None:
        return None
    return EnvelopeRecord(row[0], row[1], row[2], tuple(json.loads(row[3])), row[4], row[5], row[6], row[7] or "",
                          row[8] or "outbound")
