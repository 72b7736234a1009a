"""What the API and the pages share: the service's state, error answers, and a message as data.

The JSON for a message, a matter or a person is built here once; the API returns it and the pages
render it (Datasette's habit: every page has the data the API serves).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from email.message import EmailMessage
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

from mattermail import config as configmod
from mattermail.store import Store, access, raw_where, read_raw, webview
from mattermail.store.listing import FilingView, MessageSummary, filings_of
from mattermail.web import mail

log = logging.getLogger("mattermail.web")

MAX_PER_PAGE = 500


@dataclass
class State:
    store: Store
    config: configmod.Config


def state(request: Request) -> State:
    return request.app.state.mm


class ApiError(HTTPException):
    """An error answered as ``{"error": {"status": N, "code": "...", "message": "..."}}``."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(status, message)
        self.code = code


def error_json(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "code": code, "message": message}}, status_code=status,
                        headers=headers)


def not_found(what: str) -> ApiError:
    return ApiError(404, "not_found", f"no {what}")


def paging(request: Request, default: int) -> tuple[int, int]:
    """(page, per_page) from the query string: page from 1, per_page 1 to 500."""
    def number(name: str, fallback: int, high: int) -> int:
        raw = request.query_params.get(name, "")
        if raw == "":
            return fallback
        if not raw.isdigit() or not 1 <= int(raw) <= high:
            raise ApiError(400, "bad_request", f"{name}: expected a whole number from 1 to {high}")
        return int(raw)
    return number("page", 1, 10**6), number("per_page", default, MAX_PER_PAGE)


def summary_json(m: MessageSummary) -> dict[str, Any]:
    return {"id": m.id, "subject": m.subject, "from": m.header_from, "date": m.when.isoformat(),
            "direction": m.direction, "size": m.size, "sha256": m.sha256, "message_id": m.message_id,
            "system": m.system}


def filing_json(f: FilingView) -> dict[str, Any]:
    return {"matter": f.matter, "matter_title": f.matter_title, "person_id": f.person_id, "person": f.person,
            "rule": f.rule, "recipient": f.recipient}


def load_message(st: State, v: access.Viewer, message_id: int) -> tuple[MessageSummary, EmailMessage, bytes]:
    """The message ``v`` may see, parsed, with its raw bytes; 404 (the same for "hidden" as for "absent")."""
    m = webview.visible_message(st.store, v, message_id)
    if m is None:
        raise not_found(f"message {message_id}")
    try:
        raw = read_raw(st.store, m.sha256)  # its row (a small message) or its file
    except OSError as e:
        log.error("message %d: cannot read %s: %s", m.id, raw_where(st.store, m.sha256), e.strerror or e)
        raise ApiError(503, "unavailable", f"message {m.id}: its stored file cannot be read") from None
    return m, mail.parse(raw), raw


def message_filings(st: State, v: access.Viewer, m: MessageSummary, what: str) -> tuple[FilingView, ...]:
    """The message's filings; an admin's look at one filed to a walled matter is logged (``what``)."""
    filings = filings_of(st.store, m.id)
    if v.admin:
        for matter in sorted(access.walled_among(st.store, [f.matter for f in filings if f.matter])):
            audit(st, v, matter, what, m.id)
    return filings


def audit(st: State, v: access.Viewer, matter: str, what: str, message: int | None = None) -> None:
    access.log_admin_view(st.store, v.login, matter, what, message)
    log.info("admin %s viewed walled matter %s: %s%s", v.login, matter, what,
             f" (message {message})" if message is not None else "")


def matter_for(st: State, v: access.Viewer, matter_id: str, what: str):
    """The matter, when ``v`` may see it (404 otherwise, hidden or absent alike); logs an admin's view."""
    from mattermail.store import directory

    m = directory.get_matter(st.store, matter_id)
    if m is None or not access.may_see_matter(st.store, v, matter_id):
        raise not_found(f"matter {matter_id}")
    if v.admin and access.is_walled(st.store, matter_id):
        audit(st, v, matter_id, what)
    return m


def message_text(st: State, m: MessageSummary) -> str:
    return webview.body_text(st.store, m.id)


def thread_groups(items: list[Any], subject_of) -> list[tuple[str, list[Any]]]:
    """Items grouped by :func:`mail.thread_key` of their subject, groups in order of their newest item."""
    groups: dict[str, list[Any]] = {}
    for item in items:
        groups.setdefault(mail.thread_key(subject_of(item)), []).append(item)
    return list(groups.items())
