"""Who may see what: user roles and ethical walls (issue 18).

* A user with role ``admin`` sees every matter and the unfiled queue; every view an admin has of a walled
  matter (its page, its messages, a message filed to it) is recorded in ``access_log``
  (:func:`log_admin_view`).
* A matter's wall: ``deny`` rows name addresses (user logins) that may not see it; ``only`` rows, when a
  matter has any, are the only users who may. Both may be set; a denied user stays denied.
* Everyone else (a plain user) sees a message when it is filed somewhere (a matter or a person) and is
  filed to **no** matter walled off from them. A message filed to a walled matter *and* to a matter the
  user may see is hidden from that user everywhere: it carries the walled matter's business, and showing
  it under the other matter would reveal it. Unfiled and personal mail is for admins only.

:func:`visible_sql` is the one SQL condition every listing, count and search of mattermail-web applies.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from mattermail.store.engine import Store, UserError, normalise_address, transaction

ROLES = ("admin", "user")
MODES = ("deny", "only")


@dataclass(frozen=True)
class Viewer:
    """Who is asking: a login, and whether it is an admin."""

    login: str
    admin: bool = False


@dataclass(frozen=True)
class Wall:
    matter: str
    denied: tuple[str, ...]
    only: tuple[str, ...]

    @property
    def walled(self) -> bool:
        return bool(self.denied or self.only)


@dataclass(frozen=True)
class AdminView:
    time: float
    login: str
    matter: str
    message: int | None
    what: str


# -- roles -------------------------------------------------------------------------------------------


def set_role(store: Store, login: str, role: str) -> None:
    login = normalise_address(login)
    if role not in ROLES:
        raise UserError(f"ROLE: {role!r} is not one of {', '.join(ROLES)}")
    with transaction(store):
        if store.db.execute("SELECT 1 FROM users WHERE login = ?", [login]).fetchone() is None:
            raise UserError(f"ADDRESS: no such user: {login}")
        store.db.execute("DELETE FROM user_roles WHERE login = ?", [login])
        if role != "user":
            store.db.execute("INSERT INTO user_roles (login, role, actor, since) VALUES (?, ?, ?, ?)",
                             [login, role, store.actor, time.time()])


def role_of(store: Store, login: str) -> str:
    """The user's role; a role set before the user was (re)created does not count (removing a user leaves
    its role row, and a new user of the same address must not inherit admin)."""
    row = store.db.execute("SELECT r.role FROM user_roles r JOIN users u ON u.login = r.login "
                           "WHERE r.login = ? AND r.since >= u.created", [normalise_address(login)]).fetchone()
    return row[0] if row else "user"


def viewer(store: Store, login: str) -> Viewer:
    login = normalise_address(login)
    return Viewer(login, role_of(store, login) == "admin")


def list_roles(store: Store) -> list[tuple[str, str]]:
    return [tuple(r) for r in store.db.execute("SELECT login, role FROM user_roles ORDER BY login")]


# -- walls -------------------------------------------------------------------------------------------


def _matter_exists(store: Store, matter: str) -> None:
    if store.db.execute("SELECT 1 FROM matters WHERE id = ?", [matter]).fetchone() is None:
        raise UserError(f"ID: no matter {matter}")


def get_wall(store: Store, matter: str) -> Wall:
    rows = store.db.execute("SELECT mode, address FROM matter_access WHERE matter = ? ORDER BY mode, address",
                            [matter]).fetchall()
    return Wall(matter, tuple(a for m, a in rows if m == "deny"), tuple(a for m, a in rows if m == "only"))


def list_walls(store: Store) -> list[Wall]:
    ids = [r[0] for r in store.db.execute("SELECT DISTINCT matter FROM matter_access ORDER BY matter")]
    return [get_wall(store, m) for m in ids]


def deny(store: Store, matter: str, addresses: Iterable[str]) -> Wall:
    """Screen ``addresses`` off ``matter`` (added to those already denied)."""
    with transaction(store):
        _matter_exists(store, matter)
        for a in dict.fromkeys(normalise_address(a) for a in addresses):
            store.db.execute("DELETE FROM matter_access WHERE matter = ? AND mode = 'deny' AND address = ?",
                             [matter, a])
            store.db.execute("INSERT INTO matter_access (matter, mode, address, actor, since) "
                             "VALUES (?, 'deny', ?, ?, ?)", [matter, a, store.actor, time.time()])
    return get_wall(store, matter)


def only(store: Store, matter: str, addresses: Sequence[str]) -> Wall:
    """Let only ``addresses`` (and admins) see ``matter``; replaces the previous ``only`` list."""
    if not addresses:
        raise UserError("--only: name at least one address (or use --clear)")
    with transaction(store):
        _matter_exists(store, matter)
        store.db.execute("DELETE FROM matter_access WHERE matter = ? AND mode = 'only'", [matter])
        for a in dict.fromkeys(normalise_address(a) for a in addresses):
            store.db.execute("INSERT INTO matter_access (matter, mode, address, actor, since) "
                             "VALUES (?, 'only', ?, ?, ?)", [matter, a, store.actor, time.time()])
    return get_wall(store, matter)


def clear(store: Store, matter: str) -> Wall:
    with transaction(store):
        _matter_exists(store, matter)
        store.db.execute("DELETE FROM matter_access WHERE matter = ?", [matter])
    return get_wall(store, matter)


# -- the condition every query applies -------------------------------------------------------------------

WALLED_FOR = ("SELECT a.matter FROM matter_access a WHERE (a.mode = 'deny' AND a.address = ?) OR "
              "(a.mode = 'only' AND NOT EXISTS (SELECT 1 FROM matter_access b WHERE b.matter = a.matter "
              "AND b.mode = 'only' AND b.address = ?))")
"""SQL: the ids of the matters walled off from one login (two parameters: the login twice)."""


def visible_sql(v: Viewer, alias: str = "m") -> tuple[str, list[object]]:
    """SQL condition on ``messages <alias>`` (and its parameters): the message is one ``v`` may see."""
    if v.admin:
        return "1 = 1", []
    return (f"EXISTS (SELECT 1 FROM filings fv WHERE fv.message = {alias}.id) AND NOT EXISTS "
            f"(SELECT 1 FROM filings fw WHERE fw.message = {alias}.id AND fw.matter IN ({WALLED_FOR}))",
            [v.login, v.login])


def walled_matters(store: Store, v: Viewer) -> set[str]:
    """The matters ``v`` may not see (none for an admin)."""
    if v.admin:
        return set()
    return {r[0] for r in store.db.execute(WALLED_FOR, [v.login, v.login])}


def may_see_matter(store: Store, v: Viewer, matter: str) -> bool:
    return v.admin or matter not in walled_matters(store, v)


def is_walled(store: Store, matter: str) -> bool:
    return store.db.execute("SELECT 1 FROM matter_access WHERE matter = ? LIMIT 1", [matter]).fetchone() is not None


def walled_among(store: Store, matters: Iterable[str]) -> set[str]:
    """Those of ``matters`` that have a wall (admin views of them are logged)."""
    ms = list(dict.fromkeys(m for m in matters if m))
    if not ms:
        return set()
    marks = ", ".join("?" for _ in ms)
    return {r[0] for r in store.db.execute(f"SELECT DISTINCT matter FROM matter_access WHERE matter IN ({marks})", ms)}


def log_admin_view(store: Store, login: str, matter: str, what: str, message: int | None = None) -> None:
    store.db.execute("INSERT INTO access_log (time, login, matter, message, what) VALUES (?, ?, ?, ?, ?)",
                     [time.time(), login, matter, message, what])


def admin_views(store: Store, matter: str, limit: int = 20) -> list[AdminView]:
    return [AdminView(*r) for r in store.db.execute(
        "SELECT time, login, matter, message, what FROM access_log WHERE matter = ? ORDER BY time DESC, id DESC "
        "LIMIT ?", [matter, limit])]
