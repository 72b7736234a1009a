"""The web view: server-rendered pages for people (no JavaScript), over the same queries as the API.

Sign-in with the submission login and password; every page needs a session (else: the sign-in form).
Every form posts the session's CSRF token. Jinja2 escapes every value (autoescape); message text is shown
as text, never as HTML.
"""

from __future__ import annotations

import re
import secrets
from typing import Any
from urllib.parse import urlencode

import jinja2
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from mattermail.store import UserError, access, inline_raw, sessions, webview
from mattermail.web import mail
from mattermail.web.api import attachment_download, audit_listing, audit_search, raw_download
from mattermail.web.auth import COOKIE, LOGIN_COOKIE, check_csrf, check_password, web_session
from mattermail.web.common import (load_message, log, matter_for, message_filings, message_text, not_found, paging,
                                   state, thread_groups)

_env = jinja2.Environment(loader=jinja2.PackageLoader("mattermail.web", "templates"),
                          autoescape=True, undefined=jinja2.StrictUndefined)
# the largest message whose attachments a timeline lists (bigger ones: "see the message")
TIMELINE_PARSE_LIMIT = 1024 * 1024


def render(request: Request, name: str, http_status: int = 200, **context: Any) -> HTMLResponse:
    return HTMLResponse(_env.get_template(name).render(request=request, **context), status_code=http_status)


def error_page(request: Request, status: int, message: str) -> HTMLResponse:
    return render(request, "error.html", status, viewer=None, csrf="", status=status, message=message)


def _secure(request: Request) -> bool:
    return state(request).config.web.cookie_secure


def _local_path(target: str) -> str:
    """A redirect target on this site only (``/...``, never ``//host`` or a scheme)."""
    return target if target.startswith("/") and not target.startswith("//") and "\\" not in target else "/matters"


# -- sign in and out ------------------------------------------------------------------------------------


async def login_form(request: Request, error: str = "", status: int = 200) -> Response:
    token = secrets.token_urlsafe(24)
    resp = render(request, "login.html", status, viewer=None, csrf=token, error=error,
                  next=_local_path(request.query_params.get("next", "/matters")))
    resp.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="strict", secure=_secure(request), path="/login")
    return resp


async def login(request: Request) -> Response:
    form = await request.form()
    check_csrf(request.cookies.get(LOGIN_COOKIE, ""), str(form.get("csrf", "")))
    st = state(request)
    who = await check_password(st, str(form.get("login", "")), str(form.get("password", "")))
    if who is None:
        log.info("sign-in failed for %r from %s", str(form.get("login", ""))[:200],
                 request.client.host if request.client else "?")
        return await login_form(request, "Wrong login or password.", 401)
    value, _ = sessions.create_session(st.store, who, st.config.web.session_hours)
    log.info("signed in: %s", who)
    resp = RedirectResponse(_local_path(str(form.get("next", "/matters"))), status_code=303)
    resp.set_cookie(COOKIE, value, max_age=st.config.web.session_hours * 3600, httponly=True, samesite="strict",
                    secure=_secure(request), path="/")
    resp.delete_cookie(LOGIN_COOKIE, path="/login")
    return resp


async def logout(request: Request) -> Response:
    v, s = web_session(request)
    form = await request.form()
    check_csrf(s.csrf, str(form.get("csrf", "")))
    sessions.end_session(state(request).store, request.cookies.get(COOKIE, ""))
    resp = RedirectResponse("/login", status_code=303)
    resp.delete_cookie(COOKIE, path="/")
    return resp


async def home(request: Request) -> Response:
    return RedirectResponse("/matters", status_code=303)


# -- pages ------------------------------------------------------------------------------------------------


def _page(request: Request, name: str, **context: Any) -> HTMLResponse:
    v, s = web_session(request)
    return render(request, name, viewer=v, csrf=s.csrf, **context)


def _pager(request: Request, number: int, per_page: int, total: int | None, more: bool | None = None) -> dict:
    has_next = more if more is not None else number * per_page < (total or 0)

    def link(n: int) -> str:
        return f"{request.url.path}?{urlencode({**request.query_params, 'page': n})}"
    return {"page": number, "prev": link(number - 1) if number > 1 else None, "next": link(number + 1) if has_next
            else None, "total": total}


async def matters(request: Request) -> Response:
    v, _ = web_session(request)
    return _page(request, "matters.html", rows=webview.list_matters(state(request).store, v))


def _timeline_entry(st, m) -> dict[str, Any]:
    path = st.store.blob_path(m.sha256)
    senders: list[str] = []
    recipients: list[str] = []
    attachments: list[mail.Attachment] | None = None
    try:
        inline = inline_raw(st.store, m.sha256)  # (store.inline_max, at most 256 KiB, is below TIMELINE_PARSE_LIMIT)
        if inline is not None or m.size <= TIMELINE_PARSE_LIMIT:
            senders, recipients, attachments = mail.timeline_summary(inline if inline is not None
                                                                     else path.read_bytes())
        else:
            senders, recipients = mail.header_correspondents(mail.read_header_block(path))
    except OSError:
        pass
    return {"m": m, "from": senders, "to": recipients, "attachments": attachments}


def _timeline(st, items) -> list[tuple[str, list[dict[str, Any]]]]:
    return thread_groups([_timeline_entry(st, m) for m in items], lambda e: e["m"].subject)


async def matter_page(request: Request) -> Response:
    v, _ = web_session(request)
    st = state(request)
    matter = matter_for(st, v, request.path_params["matter"], "web: matter page")
    number, per_page = paging(request, st.config.web.page_size)
    page = webview.matter_messages(st.store, v, matter.id, (number - 1) * per_page, per_page)
    audit_listing(st, v, [m.id for m in page.items], f"web: messages of matter {matter.id}", matter.id)
    wall = access.get_wall(st.store, matter.id) if v.admin else None
    return _page(request, "matter.html", matter=matter, threads=_timeline(st, page.items), wall=wall,
                 pager=_pager(request, number, per_page, page.total))


async def persons(request: Request) -> Response:
    v, _ = web_session(request)
    return _page(request, "persons.html", rows=webview.list_persons(state(request).store, v))


async def person_page(request: Request) -> Response:
    v, _ = web_session(request)
    st = state(request)
    person = webview.get_person(st.store, request.path_params["person"])
    if person is None:
        raise not_found(f"person {request.path_params['person']}")
    number, per_page = paging(request, st.config.web.page_size)
    page = webview.person_messages(st.store, v, person.id, (number - 1) * per_page, per_page)
    audit_listing(st, v, [m.id for m in page.items], f"web: messages of person {person.id}")
    return _page(request, "person.html", person=person, threads=_timeline(st, page.items),
                 pager=_pager(request, number, per_page, page.total))


async def message_page(request: Request) -> Response:
    v, _ = web_session(request)
    st = state(request)
    m, msg, _ = load_message(st, v, request.path_params["message"])
    filings = message_filings(st, v, m, "web: message")
    senders, recipients = mail.correspondents(msg)
    matters = [r.matter for r in webview.list_matters(st.store, v)] if v.admin else []
    return _page(request, "message.html", m=m, headers=mail.headers(msg), text=message_text(st, m),
                 attachments=mail.attachments(msg), filings=filings, senders=senders, recipients=recipients,
                 matters=matters)


async def raw(request: Request) -> Response:
    return raw_download(request, web_session(request)[0], "web")


async def attachment(request: Request) -> Response:
    return attachment_download(request, web_session(request)[0], "web")


_MARK = re.compile(r"\[([^\[\]]*)\]")


def highlight(snippet: str) -> list[tuple[str, bool]]:
    """The search snippet as (text, matched) pieces: the store marks matched words with [brackets]."""
    out: list[tuple[str, bool]] = []
    pos = 0
    for m in _MARK.finditer(snippet):
        if m.start() > pos:
            out.append((snippet[pos:m.start()], False))
        out.append((m.group(1), True))
        pos = m.end()
    if pos < len(snippet):
        out.append((snippet[pos:], False))
    return out


async def search(request: Request) -> Response:
    v, _ = web_session(request)
    st = state(request)
    q = request.query_params.get("q", "")
    hits: list = []
    pager = None
    if q.strip():
        number, per_page = paging(request, st.config.web.page_size)
        found, more = webview.search(st.store, v, q, (number - 1) * per_page, per_page)
        audit_search(st, v, [h.message.id for h in found], q)
        hits = [{"m": h.message, "pieces": highlight(h.snippet)} for h in found]
        pager = _pager(request, number, per_page, None, more)
    return _page(request, "search.html", q=q, hits=hits, pager=pager)


async def unfiled(request: Request) -> Response:
    v, _ = web_session(request)
    st = state(request)
    if not v.admin:
        return error_page(request, 403, "The unfiled queue is for admins.")
    number, per_page = paging(request, st.config.web.page_size)
    page = webview.unfiled(st.store, (number - 1) * per_page, per_page)
    return _page(request, "unfiled.html", items=page.items, matters=[r.matter for r in webview.list_matters(st.store, v)],
                 pager=_pager(request, number, per_page, page.total), error=request.query_params.get("error", ""))


async def refile(request: Request) -> Response:
    v, s = web_session(request)
    form = await request.form()
    check_csrf(s.csrf, str(form.get("csrf", "")))
    st = state(request)
    if not v.admin:
        return error_page(request, 403, "Refiling is for admins.")
    mid = request.path_params["message"]
    back = _local_path(str(form.get("back", f"/messages/{mid}")))
    if webview.visible_message(st.store, v, mid) is None:
        raise not_found(f"message {mid}")
    try:
        webview.refile(st.store, mid, str(form.get("matter", "")), str(form.get("reason", "")), f"web:{v.login}")
    except UserError as e:
        sep = "&" if "?" in back else "?"
        return RedirectResponse(f"{back}{sep}{urlencode({'error': str(e)})}", status_code=303)
    log.info("%s refiled message %d to matter %s", v.login, mid, form.get("matter"))
    return RedirectResponse(back, status_code=303)


ROUTES = [
    Route("/", home),
    Route("/login", login_form, methods=["GET"]),
    Route("/login", login, methods=["POST"]),
    Route("/logout", logout, methods=["POST"]),
    Route("/matters", matters),
    Route("/matters/{matter}", matter_page),
    Route("/persons", persons),
    Route("/persons/{person:int}", person_page),
    Route("/messages/{message:int}", message_page),
    Route("/messages/{message:int}/raw", raw),
    Route("/messages/{message:int}/attachments/{index:int}", attachment),
    Route("/messages/{message:int}/refile", refile, methods=["POST"]),
    Route("/search", search),
    Route("/unfiled", unfiled),
]
