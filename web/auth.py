"""Who is asking: an API token (``Authorization: Bearer``) or a signed-in browser (the session cookie).

The browser signs in with the login and password it uses for submission (the users Dovecot's
passwd-file is written from), checked against the same argon2 hashes. The session cookie is HttpOnly,
SameSite=Strict and Secure (``web.cookie_secure``); every form carries the session's CSRF token.
"""

from __future__ import annotations

import functools
import hmac
import secrets
import time

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request

from mattermail import passwords
from mattermail.store import access, normalise_address, password_hashes, sessions, tokens
from mattermail.web.common import ApiError, State, state

COOKIE = "mm_session"
LOGIN_COOKIE = "mm_login"  # the sign-in form's CSRF token (double-submit: there is no session yet)


def api_viewer(request: Request, scope: str = "read") -> access.Viewer:
    """The viewer of an API request: 401 without a live token, 403 when its scope does not allow ``scope``."""
    st = state(request)
    header = request.headers.get("authorization", "")
    kind, _, secret = header.partition(" ")
    if kind.lower() != "bearer" or not secret.strip():
        raise ApiError(401, "unauthorized", "send Authorization: Bearer TOKEN (mattermailctl api token create)")
    token = tokens.authenticate_token(st.store, secret.strip())
    if token is None:
        raise ApiError(401, "unauthorized", "this token is unknown or revoked")
    if not token.allows(scope):
        raise ApiError(403, "forbidden", f"this token's scope is {token.scope}; this needs {scope}")
    return access.viewer(st.store, token.login)


def require_admin(v: access.Viewer) -> None:
    if not v.admin:
        raise ApiError(403, "forbidden", "only an admin may do this (mattermailctl user role ADDRESS admin)")


class SignedOut(Exception):
    """The browser has no live session: the page handler sends it to the sign-in form."""


def web_session(request: Request) -> tuple[access.Viewer, sessions.WebSession]:
    value = request.cookies.get(COOKIE, "")
    s = sessions.session_for(state(request).store, value) if value else None
    if s is None:
        raise SignedOut()
    return access.viewer(state(request).store, s.login), s


def check_csrf(expected: str, given: str) -> None:
    if not expected or not hmac.compare_digest(expected.encode(), (given or "").encode()):
        raise ApiError(403, "forbidden", "the form is stale or was not sent by this site: reload the page")


@functools.cache
def _dummy() -> str:
    """An argon2 hash of a password nobody has: an unknown login costs as much time as a wrong password."""
    return passwords.hash_password(secrets.token_urlsafe(16))


# Password guessing: after FAILURE_LIMIT wrong passwords for one login within FAILURE_WINDOW seconds, that
# login's sign-in is refused (without checking) until the window has passed. Per process, in memory.
FAILURE_LIMIT = 5
FAILURE_WINDOW = 900.0
_failures: dict[str, list[float]] = {}


def locked_out(login: str, now: float | None = None) -> bool:
    now = time.monotonic() if now is None else now
    recent = [t for t in _failures.get(normalise_address(login), []) if now - t < FAILURE_WINDOW]
    return len(recent) >= FAILURE_LIMIT


async def check_password(st: State, login: str, password: str) -> str | None:
    """The login, when ``password`` is its submission password; None otherwise (or when locked out)."""
    login = normalise_address(login)
    if locked_out(login):
        return None
    stored = dict(password_hashes(st.store)).get(login)
    ok = await run_in_threadpool(passwords.verify_password, stored or _dummy(), password)
    if ok and stored:
        _failures.pop(login, None)
        return login
    now = time.monotonic()
    _failures[login] = [t for t in _failures.get(login, []) if now - t < FAILURE_WINDOW][-FAILURE_LIMIT:] + [now]
    if len(_failures) > 10_000:  # a flood of made-up logins must not grow this without end
        _failures.pop(next(iter(_failures)))
    return None
