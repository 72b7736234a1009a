"""Two-way capture (issue 17): the look-ups and the one change inbound capture copies need.

* :func:`is_user_address` — the milter's question "is this recipient one of the firm's users?"
  (an address some login owns: ``user_addresses``).
* :func:`forget_envelope` — the router dropping an inbound copy nobody files (``capture.inbound =
  "known"``) removes the envelope the milter recorded for it too: nothing of personal mail is kept.

Portable SQL only (plain SELECT/DELETE with ``?`` placeholders).
"""

from __future__ import annotations

from mattermail.store.engine import Store, normalise_address

__all__ = ["forget_envelope", "is_user_address"]


def is_user_address(store: Store, address: str) -> bool:
    """Whether ``address`` (case-insensitive) is owned by a login."""
    return store.db.execute("SELECT 1 FROM user_addresses WHERE address = ?",
                            [normalise_address(address)]).fetchone() is not None


def forget_envelope(store: Store, ref: str) -> None:
    """Remove the envelope recorded under ``ref`` (inside the caller's transaction)."""
    store.db.execute("DELETE FROM envelopes WHERE ref = ?", [ref])
