"""The ASGI application of mattermail-web: the JSON API, the pages, security headers, error answers.

Handlers are ``async`` and call the store directly: one SQLite connection, used by one event loop, one
request at a time (the queries are indexed and short; argon2 runs in a thread). Every response carries a
Content-Security-Policy with no inline script or style, and no framing.
"""

from __future__ import annotations

import asyncio
import contextlib

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mattermail import config as configmod
from mattermail.store import Store, StoreError, describe_error
from mattermail.web import api, pages
from mattermail.web.auth import SignedOut
from mattermail.web.common import ApiError, State, error_json, log

CSP = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; "
       "base-uri 'none'")
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]


class SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` to every HTTP response (a pure ASGI middleware: no buffering)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                message["headers"] = list(message.get("headers", [])) + [
                    (k, v) for k, v in SECURITY_HEADERS if k not in names]
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith("/api/")


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = exc.code if isinstance(exc, ApiError) else {400: "bad_request", 401: "unauthorized", 403: "forbidden",
                                                       404: "not_found", 405: "method_not_allowed"}.get(
        exc.status_code, "error")
    headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
    if _wants_json(request):
        return error_json(exc.status_code, code, str(exc.detail), headers)
    return pages.error_page(request, exc.status_code, str(exc.detail))


async def _signed_out(request: Request, exc: Exception) -> Response:
    return RedirectResponse(f"/login?next={request.url.path}", status_code=303)


async def _store_error(request: Request, exc: Exception) -> Response:
    kind, text = describe_error(exc)
    log.error("store failed (%s: %s) on %s %s", kind, text, request.method, request.url.path)
    if _wants_json(request):
        return error_json(503, "unavailable", "the store is unavailable; try again later")
    return pages.error_page(request, 503, "The store is unavailable; try again later.")


def _lifespan(store: Store):
    """Runs the webhook deliverer beside the service (mattermail-web; tests drive it themselves)."""
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette):
        from mattermail.web import webhooks

        stop = asyncio.Event()
        task = asyncio.get_running_loop().create_task(webhooks.run(store, stop))
        try:
            yield
        finally:
            stop.set()
            await task
    return lifespan


def create_app(store: Store, config: configmod.Config, deliver_webhooks: bool = False) -> Starlette:
    app = Starlette(
        lifespan=_lifespan(store) if deliver_webhooks else None,
        routes=[*api.ROUTES, *pages.ROUTES,
                Mount("/static", app=StaticFiles(packages=[("mattermail.web", "static")]), name="static")],
        exception_handlers={HTTPException: _http_error, SignedOut: _signed_out, StoreError: _store_error},
    )
    app.state.mm = State(store, config)
    return SecurityHeaders(app)  # type: ignore[return-value]
