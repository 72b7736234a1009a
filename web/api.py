"""The JSON API, ``/api/v1/…``: what a practice-management system reads (and refiles) with a token.

Every answer that is not a success is ``{"error": {"status", "code", "message"}}``: 400 bad_request, 401
unauthorized (no or a dead token), 403 forbidden (the token's scope, or not an admin), 404 not_found — the
same for a matter or message that does not exist and for one behind an ethical wall.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from mattermail.store import UserError, access, webview
from mattermail.web import mail
from mattermail.web.auth import api_viewer, require_admin
from mattermail.web.common import (ApiError, audit, filing_json, load_message, matter_for, message_filings, message_text,
                                   not_found, paging, state, summary_json, thread_groups)
from mattermail.web.openapi import document


def _page_json(request: Request, page: webview.Page, number: int, per_page: int, thread: bool) -> dict[str, Any]:
    items = [summary_json(m) for m in page.items]
    out: dict[str, Any] = {"total": page.total, "page": number, "per_page": per_page}
    nxt = number * per_page < page.total
    out["next"] = _next(request, number) if nxt else None
    if thread:
        out["threads"] = [{"thread": key, "messages": group} for key, group in thread_groups(items, lambda i: i["subject"])]
    else:
        out["messages"] = items
    return out


def _next(request: Request, number: int) -> str:
    """The next page as a path and query (relative: right behind a reverse proxy too)."""
    return f"{request.url.path}?{urlencode({**request.query_params, 'page': number + 1})}"


def _thread(request: Request) -> bool:
    return request.query_params.get("thread", "") in ("1", "true", "yes")


async def matters(request: Request) -> Response:
    v = api_viewer(request)
    rows = webview.list_matters(state(request).store, v)
    return JSONResponse({"matters": [{"id": r.matter.id, "title": r.matter.title, "status": r.matter.status,
                                      "persons": list(r.matter.persons), "messages": r.messages} for r in rows]})


async def matter_messages(request: Request) -> Response:
    v = api_viewer(request)
    st = state(request)
    matter = matter_for(st, v, request.path_params["matter"], "api: matter messages")
    number, per_page = paging(request, st.config.web.page_size)
    page = webview.matter_messages(st.store, v, matter.id, (number - 1) * per_page, per_page)
    audit_listing(st, v, [m.id for m in page.items], f"api: messages of matter {matter.id}", matter.id)
    return JSONResponse({"matter": {"id": matter.id, "title": matter.title, "status": matter.status},
                         **_page_json(request, page, number, per_page, _thread(request))})


async def persons(request: Request) -> Response:
    v = api_viewer(request)
    rows = webview.list_persons(state(request).store, v)
    return JSONResponse({"persons": [{"id": r.person.id, "name": r.person.name, "addresses": list(r.person.addresses),
                                      "messages": r.messages} for r in rows]})


async def person_messages(request: Request) -> Response:
    v = api_viewer(request)
    st = state(request)
    pid = request.path_params["person"]
    person = webview.get_person(st.store, pid)
    if person is None:
        raise not_found(f"person {pid}")
    number, per_page = paging(request, st.config.web.page_size)
    page = webview.person_messages(st.store, v, pid, (number - 1) * per_page, per_page)
    audit_listing(st, v, [m.id for m in page.items], f"api: messages of person {pid}")
    return JSONResponse({"person": {"id": person.id, "name": person.name, "addresses": list(person.addresses)},
                         **_page_json(request, page, number, per_page, _thread(request))})


async def message(request: Request) -> Response:
    v = api_viewer(request)
    st = state(request)
    m, msg, _ = load_message(st, v, request.path_params["message"])
    filings = message_filings(st, v, m, "api: message")
    base = f"/api/v1/messages/{m.id}"
    return JSONResponse({**summary_json(m), "headers": mail.headers(msg), "text": message_text(st, m),
                         "filings": [filing_json(f) for f in filings], "raw_url": f"{base}/raw",
                         "attachments": [{"index": a.index, "filename": a.filename, "content_type": a.content_type,
                                          "size": a.size, "url": f"{base}/attachments/{a.index}"}
                                         for a in mail.attachments(msg)]})


def download(data: bytes, filename: str, media_type: str = "application/octet-stream") -> Response:
    """Bytes as a download, never rendered: attacker HTML in an attachment must not run on this origin."""
    return Response(data, media_type=media_type, headers={
        "Content-Disposition": mail.content_disposition(filename), "X-Content-Type-Options": "nosniff"})


def raw_download(request: Request, v: access.Viewer, via: str) -> Response:
    """The raw message ``v`` may see, as a download (``via``: "api" or "web", for the admin audit)."""
    st = state(request)
    m, _, data = load_message(st, v, request.path_params["message"])
    message_filings(st, v, m, f"{via}: raw message")
    return download(data, f"message-{m.id}.eml", "message/rfc822")


def attachment_download(request: Request, v: access.Viewer, via: str) -> Response:
    """One attachment of a message ``v`` may see, as a download; 404 for an index it does not have."""
    st = state(request)
    m, msg, _ = load_message(st, v, request.path_params["message"])
    found = mail.attachment_bytes(msg, request.path_params["index"])
    if found is None:
        raise not_found(f"attachment {request.path_params['index']} in message {m.id}")
    message_filings(st, v, m, f"{via}: attachment")
    att, data = found
    return download(data, mail.safe_filename(att.filename, att.index))


async def raw(request: Request) -> Response:
    return raw_download(request, api_viewer(request), "api")


async def attachment(request: Request) -> Response:
    return attachment_download(request, api_viewer(request), "api")


async def search(request: Request) -> Response:
    v = api_viewer(request)
    st = state(request)
    q = request.query_params.get("q", "")
    if not q.strip():
        raise ApiError(400, "bad_request", "q: give the words to look for")
    number, per_page = paging(request, st.config.web.page_size)
    matter = request.query_params.get("matter") or None
    if matter is not None:
        matter_for(st, v, matter, "api: search in matter")
    hits, more = webview.search(st.store, v, q, (number - 1) * per_page, per_page, matter)
    audit_search(st, v, [h.message.id for h in hits], q)
    return JSONResponse({"q": q, "page": number, "per_page": per_page,
                         "next": _next(request, number) if more else None,
                         "hits": [{**summary_json(h.message), "snippet": h.snippet} for h in hits]})


def audit_search(st, v: access.Viewer, ids: list[int], q: str) -> None:
    """An admin's search that shows messages of walled matters is logged, once per walled matter."""
    audit_listing(st, v, ids, f"search: {q[:200]}")


def audit_listing(st, v: access.Viewer, ids: list[int], what: str, logged: str | None = None) -> None:
    """An admin's list that shows messages filed to walled matters (a person's page, another matter's page
    with a message filed to both) is logged once per walled matter; ``logged``: the matter already logged."""
    if not v.admin or not ids:
        return
    for matter in sorted(webview.walled_matters_of(st.store, ids) - {logged}):
        audit(st, v, matter, what)


async def unfiled(request: Request) -> Response:
    v = api_viewer(request)
    require_admin(v)
    st = state(request)
    number, per_page = paging(request, st.config.web.page_size)
    page = webview.unfiled(st.store, (number - 1) * per_page, per_page)
    return JSONResponse(_page_json(request, page, number, per_page, False))


async def refile(request: Request) -> Response:
    v = api_viewer(request, "write")
    require_admin(v)
    st = state(request)
    try:
        body = json.loads(await request.body() or b"{}")
    except ValueError:
        raise ApiError(400, "bad_request", "the body must be JSON: {\"matter\": ID, \"reason\": TEXT}") from None
    if not isinstance(body, dict) or not isinstance(body.get("matter"), str) or not isinstance(body.get("reason"), str):
        raise ApiError(400, "bad_request", "the body must be JSON: {\"matter\": ID, \"reason\": TEXT}")
    mid = request.path_params["message"]
    if webview.visible_message(st.store, v, mid) is None:
        raise not_found(f"message {mid}")
    try:
        webview.refile(st.store, mid, body["matter"], body["reason"], f"web:{v.login}")
    except UserError as e:
        raise ApiError(400, "bad_request", str(e)) from None
    m = webview.visible_message(st.store, v, mid)
    assert m is not None
    return JSONResponse({**summary_json(m), "filings": [filing_json(f) for f in
                                                        message_filings(st, v, m, "api: refile")]})


async def openapi(request: Request) -> Response:
    return JSONResponse(document())


async def not_found_api(request: Request) -> Response:
    raise not_found(f"API endpoint {request.url.path}")


ROUTES = [
    Route("/api/v1/openapi.json", openapi),
    Route("/api/v1/matters", matters),
    Route("/api/v1/matters/{matter}/messages", matter_messages),
    Route("/api/v1/persons", persons),
    Route("/api/v1/persons/{person:int}/messages", person_messages),
    Route("/api/v1/messages/{message:int}", message),
    Route("/api/v1/messages/{message:int}/raw", raw),
    Route("/api/v1/messages/{message:int}/attachments/{index:int}", attachment),
    Route("/api/v1/messages/{message:int}/refile", refile, methods=["POST"]),
    Route("/api/v1/search", search),
    Route("/api/v1/unfiled", unfiled),
    Route("/api/v1/{rest:path}", not_found_api, methods=["GET", "POST", "PUT", "DELETE", "PATCH"]),
]
