"""What every milter connection shares: config, read-only lookups, keys, secrets.

One instance per daemon. Lookups go through a single store connection behind
a lock (libmilter runs each SMTP session in its own thread); capture envelopes
are written on a second one (milter/envelopes.py: concurrent sessions' records
in one commit). On SQLite the
disclaimers and the users' addresses (the sender check, two-way capture) are
kept in memory and re-read when one of them changes (the store's lookup
generation, moved by triggers in the changing transaction), so ``mattermailctl
disclaimer set`` or ``user add`` takes effect at the next message without a
restart; on PostgreSQL they are read per look-up.
DKIM keys are re-read when a file in the keys directory changes.

A store that fails (damaged, locked, unreadable; a PostgreSQL server that is
down) raises ``StoreError`` to the caller, which defers the message (451); the
connection is closed and the cached disclaimers dropped, so the next look-up
reopens the file (or reconnects) and reads it afresh. A PostgreSQL connection
found lost by a look-up (the server restarted meanwhile) is replaced at once
and the look-up tried once more. A database file replaced on disk (a restore into a new store) is
noticed before each look-up and reopened too: the milter never answers from
the old file's rows.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from mattermail import dkimkeys
from mattermail.config import Config
from mattermail.dns import Resolver
from mattermail import capture
from mattermail.milter import arcseal
from mattermail.milter.direction import parse_networks
from mattermail.milter.envelopes import EnvelopeWriter
from mattermail.milter.inbound import InboundSettings
from mattermail import store as storemod

log = logging.getLogger("mattermail.milter")
T = TypeVar("T")


def _dir_stamp(path: Path) -> tuple:
    try:
        return tuple(sorted((str(p), p.stat().st_mtime_ns) for p in path.rglob("*.pem")))
    except OSError:
        return ()


@dataclass(frozen=True)
class _Users:
    """The users' addresses as the milter asks for them: by login (the sender check), and all of them
    (two-way capture)."""

    by_login: dict[str, frozenset[str]]
    addresses: frozenset[str]

    @classmethod
    def load(cls, store: storemod.Store) -> _Users:
        users = storemod.list_users(store)
        return cls({u.login: frozenset(u.addresses) for u in users},
                   frozenset(a for u in users for a in u.addresses))


@dataclass
class Runtime:
    config: Config

    def __post_init__(self) -> None:
        cfg = self.config
        self.trusted = parse_networks(cfg.milter.trusted_networks)
        self.trusted_forwarders = parse_networks(cfg.inbound.trusted_forwarders)
        self.resolver = Resolver(cfg.dns)
        self.inbound = InboundSettings.from_config(cfg)
        # No-reply callbacks only where they cannot stall (see MatterMilter.negotiate).
        self.noreply = cfg.milter.socket.startswith("unix:")
        self.exclude_senders = [re.compile(p, re.I) for p in cfg.capture.exclude_senders]
        self.exclude_recipients = [re.compile(p, re.I) for p in cfg.capture.exclude_recipients]
        # RCPT TO the capture address is refused (only the milter's addrcpt adds it): a recipient
        # that does not contain the capture domain at all skips the full check.
        self.capture_domain = cfg.capture.address.rpartition("@")[2].lower().rstrip(".").encode() or None
        self.catchall_domains = frozenset(d.lower().rstrip(".") for d in cfg.general.catchall_domains)
        self._lock = threading.Lock()
        self._store: storemod.Store | None = None
        self.envelopes = EnvelopeWriter(self._open_store, cfg.store.where)
        # SQLite: what is kept in memory, by name, with the lookup generation it was read at (see _kept_now)
        self._kept: dict[str, tuple[int, object]] = {}
        self._keys: dict[str, list[dkimkeys.SigningKey]] = {}
        self._keys_stamp: tuple | None = None
        self._keys_checked = 0.0
        # ARC sealing of forwarded mail (milter/arcseal.py); Postfix's alias tables are read on first use.
        self.arc = arcseal.Sealer(
            authserv_id=cfg.authserv_id,
            domain=cfg.inbound.arc_domain or next(iter(cfg.general.sending_domains), ""),
            firm_domains=(*cfg.general.sending_domains, *cfg.general.catchall_domains),
            aliases=arcseal.AliasMaps(cfg.postfix.config_dir), keys=self.signing_keys, resolver=self.resolver,
            enabled=cfg.inbound.arc_seal)

    # -- store lookups ---------------------------------------------------------------
    def store(self) -> storemod.Store:
        if self._store is not None and self._store.replaced():
            log.warning("store %s was replaced on disk: reopening it", self.config.store.where)
            self._forget_store()
        if self._store is None:
            self._store = self._open_store()
            # Remember the WAL file now (opening read the database: it exists), so that a replacement
            # made before the next look-up is noticed even when one look-up serves a whole message.
            self._store.replaced()
        return self._store

    def _open_store(self) -> storemod.Store:
        # NORMAL, not FULL: in WAL mode a commit then survives a crash of any process but
        # not a power cut before the next checkpoint. An fsync per message serialised every
        # SMTP session behind this store's lock (bench/outbound: 149 vs 384 msgs/s). What a
        # power cut could lose is an envelope record: the message itself is in Postfix's
        # (fsynced) queue, and the router files it from its headers, logging missing-envelope.
        return storemod.Store(self.config.store.location, self.config.store.messages_dir, durable=False)

    def _forget_store(self) -> None:
        """Close the store and drop what was read from it (called with the lock held)."""
        store, self._store = self._store, None
        # a replaced file may repeat the old generation with other rows, so the cache goes too
        self._kept = {}
        if store is not None:
            try:
                store.close()
            except storemod.StoreError:
                pass

    def _failed(self, what: str, e: BaseException) -> None:
        kind, text = storemod.describe_error(e)
        log.error("store %s: %s failed (%s: %s); closing it, the next look-up reopens it",
                  self.config.store.where, what, kind, text)
        self._forget_store()

    def _locked(self, what: str, fn: Callable[[storemod.Store], T]) -> T:
        """``fn(store)`` under the lock. A PostgreSQL connection that turns out lost (the server restarted
        while it was idle: the first statement finds out) is replaced and ``fn`` tried once more, so the
        first message after a database restart is not deferred for nothing."""
        with self._lock:
            for again in (False, True):
                try:
                    return fn(self.store())
                except storemod.StoreError as e:
                    lost = self._store is not None and self._store.db.lost
                    self._failed(what, e)
                    if again or not lost:
                        raise
        raise AssertionError("unreachable")

    def _kept_now(self, store: storemod.Store, name: str, load: Callable[[storemod.Store], T],
                  version: int | None = None) -> T:
        """SQLite: ``load(store)``, kept in memory and re-read only when the lookup generation moved (a change
        to the users, their addresses or the disclaimers); ``version`` when the caller already read it."""
        if version is None:
            version = storemod.lookup_generation(store)
        kept = self._kept.get(name)
        if kept is None or kept[0] != version:
            kept = self._kept[name] = (version, load(store))
        return kept[1]  # type: ignore[return-value]

    def _users(self, store: storemod.Store, version: int | None = None) -> _Users | None:
        """The users' addresses from memory on SQLite; None on PostgreSQL, where the caller asks the database
        (one query, as checking whether to reload would be)."""
        return self._kept_now(store, "users", _Users.load, version) if store.engine == "sqlite" else None

    def _owned(self, store: storemod.Store, login: str, version: int | None = None) -> set[str]:
        users = self._users(store, version)
        if users is None:
            return storemod.owned_addresses(store, login)
        return set(users.by_login.get(storemod.normalise_address(login), ()))

    def _disclaimers_now(self, store: storemod.Store, version: int | None = None) -> list[storemod.DisclaimerRow]:
        """The disclaimers; on SQLite re-read only when the lookup generation moved. On PostgreSQL they are
        read per look-up: checking the generation first would cost a round trip more."""
        if store.engine != "sqlite":
            return storemod.list_disclaimers(store)
        return self._kept_now(store, "disclaimers", storemod.list_disclaimers, version)

    def owned_addresses(self, login: str) -> set[str]:
        return self._locked("sender look-up", lambda store: self._owned(store, login))

    def is_user_address(self, address: str) -> bool:
        """Whether a login owns ``address`` (two-way capture: inbound mail to the firm's users)."""
        return self.any_user_address((address,))

    def any_user_address(self, addresses: Sequence[str]) -> bool:
        """Whether a login owns one of ``addresses`` (one look-up for a message's recipients)."""
        def known(store: storemod.Store) -> bool:
            users = self._users(store)
            if users is None:
                return any(storemod.is_user_address(store, a) for a in addresses)
            return any(storemod.normalise_address(a) in users.addresses for a in addresses)

        return self._locked("user look-up", known)

    def disclaimer_for(self, sender: str) -> storemod.DisclaimerRow | None:
        return storemod.disclaimer_for(self._locked("disclaimer look-up", self._disclaimers_now), sender)

    def sender_lookups(self, login: str, author: str) -> tuple[set[str], storemod.DisclaimerRow | None]:
        """:meth:`owned_addresses` and :meth:`disclaimer_for` in one look-up (one store check, one
        generation check): an authenticated submission needs both."""
        def both(store: storemod.Store) -> tuple[set[str], list[storemod.DisclaimerRow]]:
            version = storemod.lookup_generation(store) if store.engine == "sqlite" else None
            return self._owned(store, login, version), self._disclaimers_now(store, version)

        owned, rows = self._locked("sender look-up", both)
        return owned, storemod.disclaimer_for(rows, author)

    def record_envelope(self, env: storemod.EnvelopeRecord) -> None:
        """Commit a capture envelope (milter/envelopes.py: a connection of its own, concurrent sessions'
        records in one commit); raises StoreError when it failed."""
        self.envelopes.record(env)

    # -- keys and secrets ------------------------------------------------------------------
    def load_keys(self) -> None:
        """Read the key table now; raises when it cannot be loaded (start-up and SIGHUP refuse it)."""
        with self._lock:
            self._load_keys(_dir_stamp(self.config.dkim.keys_dir))

    def _load_keys(self, stamp: tuple) -> None:
        self._keys = dkimkeys.load_keytable(self.config.dkim.keys_dir)
        self._keys_stamp = stamp
        self._keys_checked = time.monotonic()
        log.info("loaded DKIM keys for %d domain(s) from %s", len(self._keys), self.config.dkim.keys_dir)

    def signing_keys(self) -> dict[str, list[dkimkeys.SigningKey]]:
        now = time.monotonic()
        with self._lock:
            if now - self._keys_checked > 1.0:
                self._keys_checked = now
                stamp = _dir_stamp(self.config.dkim.keys_dir)
                if stamp != self._keys_stamp:
                    try:
                        self._load_keys(stamp)
                    except Exception as e:  # keep signing with the keys we had; say why
                        log.error("cannot load DKIM keys from %s, keeping the previous ones: %s",
                                  self.config.dkim.keys_dir, e)
                        self._keys_stamp = stamp
            return self._keys

    def refuses_recipient(self, rcpt: bytes) -> bool:
        """Whether a client's RCPT TO names the capture address (mattermail/capture.py)."""
        dom = self.capture_domain
        return (dom is not None and dom in rcpt.lower()
                and capture.names_capture_address(rcpt.decode("utf-8", "surrogateescape"), self.config.capture.address))

    def capture_secret(self) -> bytes:
        return capture.load_secret(self.config.capture.secret_file)
