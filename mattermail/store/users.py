"""SMTP users (login, password hash, the addresses each may send as)."""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from mattermail.store.engine import Store, UserError, normalise_address, transaction

# -- SMTP users ------------------------------------------------------------------


@dataclass(frozen=True)
class User:
    login: str
    addresses: tuple[str, ...]


def list_users(store: Store) -> list[User]:
    rows = store.db.execute(
        "SELECT u.login, a.address FROM users u LEFT JOIN user_addresses a ON a.login = u.login ORDER BY u.login, a.address"
    ).fetchall()
    out: dict[str, list[str]] = {}
    for login, address in rows:
        out.setdefault(login, [])
        if address:
            out[login].append(address)
    return [User(login, tuple(addrs)) for login, addrs in out.items()]


def add_user(store: Store, login: str, password_hash: str, send_as: Iterable[str] = ()) -> User:
    login = normalise_address(login)
    addresses = sorted({login, *(normalise_address(a) for a in send_as)})
    with transaction(store):
        if store.db.execute("SELECT 1 FROM users WHERE login = ?", [login]).fetchone():
            raise UserError(f"user {login} already exists")
        store.db.execute("INSERT INTO users (login, password_hash, created) VALUES (?, ?, ?)", [login, password_hash, time.time()])
        for a in addresses:
            store.db.execute("INSERT INTO user_addresses (login, address) VALUES (?, ?)", [login, a])
    return User(login, tuple(addresses))


def set_password(store: Store, login: str, password_hash: str) -> None:
    login = normalise_address(login)
    cur = store.db.execute("UPDATE users SET password_hash = ? WHERE login = ?", [password_hash, login])
    if cur.rowcount == 0:
        raise UserError(f"no such user: {login}")


def remove_user(store: Store, login: str) -> None:
    login = normalise_address(login)
    with transaction(store):
        store.db.execute("DELETE FROM user_addresses WHERE login = ?", [login])
        cur = store.db.execute("DELETE FROM users WHERE login = ?", [login])
        if cur.rowcount == 0:
            raise UserError(f"no such user: {login}")


def login_addresses(store: Store) -> list[tuple[str, str]]:
    return [tuple(r) for r in store.db.execute("SELECT login, address FROM user_addresses ORDER BY address, login")]


def password_hashes(store: Store) -> list[tuple[str, str]]:
    return [tuple(r) for r in store.db.execute("SELECT login, password_hash FROM users ORDER BY login")]


def owned_addresses(store: Store, login: str) -> set[str]:
    """Every address ``login`` may send as (its own included); empty for an unknown login."""
    rows = store.db.execute("SELECT address FROM user_addresses WHERE login = ?",
                            [normalise_address(login)]).fetchall()
    return {r[0] for r in rows}
