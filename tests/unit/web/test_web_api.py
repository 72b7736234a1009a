"""The JSON API (/api/v1) on a real store: every endpoint, its 401/403/404 answers, paging and the walls."""

from __future__ import annotations

import hashlib
import json

import pytest

from mattermail.store import access, tokens

from .conftest import ADMIN, ALICE, BOB, BOTH_ENGINES, everything_stored  # noqa: F401  (importlib mode resolves the package-relative name)


def error_of(r, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["status"] == status and body["error"]["code"] == code, body
    assert body["error"]["message"]
    return body["error"]


GETS = ["/api/v1/matters", "/api/v1/matters/1234/messages", "/api/v1/persons", "/api/v1/persons/1/messages",
        "/api/v1/messages/1", "/api/v1/messages/1/raw", "/api/v1/messages/1/attachments/1",
        "/api/v1/search?q=contract", "/api/v1/unfiled"]


@pytest.mark.parametrize("path", GETS)
def test_every_endpoint_wants_a_live_token(client, token, fill, path):
    r = client.get(path)
    error_of(r, 401, "unauthorized")
    assert r.headers["www-authenticate"] == "Bearer"
    error_of(client.get(path, headers={"Authorization": "Bearer mmt_not-a-token"}), 401, "unauthorized")
    headers = token(ADMIN)
    assert client.get(path, headers=headers).status_code == 200
    tid = tokens.list_tokens(fill.store, ADMIN)[-1].id
    tokens.revoke_token(fill.store, tid)
    error_of(client.get(path, headers=headers), 401, "unauthorized")


@BOTH_ENGINES
def test_tokens_are_stored_hashed_and_record_their_last_use(client, token, fill):
    headers = token(ALICE)
    secret = headers["Authorization"].split()[1]
    assert tokens.list_tokens(fill.store, ALICE)[0].last_used is None
    assert client.get("/api/v1/matters", headers=headers).status_code == 200
    assert tokens.list_tokens(fill.store, ALICE)[0].last_used is not None
    dump = everything_stored(fill.store)
    assert secret not in dump and hashlib.sha256(secret.encode()).hexdigest() in dump


@BOTH_ENGINES
def test_matters_with_counts_and_the_wall(client, token):
    def listed(login):
        return {m["id"]: m["messages"] for m in client.get("/api/v1/matters", headers=token(login)).json()["matters"]}
    assert listed(ALICE) == {"1234": 3, "5678": 2}
    # bob is screened off 5678: he sees neither it nor the note filed to both (its count is 2, not 3)
    assert listed(BOB) == {"1234": 2}
    assert listed(ADMIN) == {"1234": 3, "5678": 2}


@BOTH_ENGINES
def test_matter_messages_newest_first_paged_and_threaded(client, token, fill):
    h = token(ALICE)
    r = client.get("/api/v1/matters/1234/messages?per_page=2", headers=h).json()
    assert r["total"] == 3 and r["page"] == 1 and r["per_page"] == 2
    assert [m["subject"] for m in r["messages"]] == ["Joint note", "Re: Draft contract"]
    assert r["next"] == "/api/v1/matters/1234/messages?per_page=2&page=2"
    r2 = client.get(r["next"], headers=h).json()
    assert [m["subject"] for m in r2["messages"]] == ["Draft contract"] and r2["next"] is None
    t = client.get("/api/v1/matters/1234/messages?thread=1", headers=h).json()
    assert [(g["thread"], [m["subject"] for m in g["messages"]]) for g in t["threads"]] == [
        ("joint note", ["Joint note"]), ("draft contract", ["Re: Draft contract", "Draft contract"])]
    error_of(client.get("/api/v1/matters/1234/messages?per_page=0", headers=h), 400, "bad_request")
    error_of(client.get("/api/v1/matters/1234/messages?page=x", headers=h), 400, "bad_request")


@BOTH_ENGINES
def test_a_walled_or_missing_matter_is_404_alike(client, token, fill):
    bob = error_of(client.get("/api/v1/matters/5678/messages", headers=token(BOB)), 404, "not_found")
    missing = error_of(client.get("/api/v1/matters/9999/messages", headers=token(BOB)), 404, "not_found")
    assert bob["message"].replace("5678", "N") == missing["message"].replace("9999", "N")
    assert client.get("/api/v1/matters/5678/messages", headers=token(ALICE)).json()["total"] == 2


@BOTH_ENGINES
def test_admin_views_of_a_walled_matter_are_logged(client, token, fill):
    assert access.admin_views(fill.store, "5678") == []
    client.get("/api/v1/matters/5678/messages", headers=token(ADMIN))
    client.get(f"/api/v1/messages/{fill.ids['Joint note']}", headers=token(ADMIN))
    views = access.admin_views(fill.store, "5678")
    assert [(v.login, v.what, v.message) for v in reversed(views)] == [
        (ADMIN, "api: matter messages", None), (ADMIN, "api: message", fill.ids["Joint note"])]
    assert access.admin_views(fill.store, "1234") == []
    # the Joint note is filed to 1234 too: an admin listing 1234 sees it, and that is a view of 5678
    client.get("/api/v1/matters/1234/messages", headers=token(ADMIN))
    assert access.admin_views(fill.store, "5678")[0].what == "api: messages of matter 1234"
    client.get("/api/v1/search?q=estate", headers=token(ADMIN))
    assert access.admin_views(fill.store, "5678")[0].what == "search: estate"
    before = len(access.admin_views(fill.store, "5678", 100))
    client.get("/api/v1/matters/5678/messages", headers=token(ALICE))  # not an admin: nothing logged
    assert len(access.admin_views(fill.store, "5678", 100)) == before


@BOTH_ENGINES
def test_persons_and_their_messages(client, token, fill):
    rows = client.get("/api/v1/persons", headers=token(BOB)).json()["persons"]
    assert rows == [{"id": fill.jane.id, "name": "Jane Client", "addresses": ["jane@client.example"], "messages": 2}]
    r = client.get(f"/api/v1/persons/{fill.jane.id}/messages", headers=token(BOB)).json()
    assert [m["subject"] for m in r["messages"]] == ["Re: Draft contract", "Draft contract"]
    error_of(client.get("/api/v1/persons/999/messages", headers=token(BOB)), 404, "not_found")


@BOTH_ENGINES
def test_one_message_raw_and_attachment(client, token, fill):
    h = token(ALICE)
    mid = fill.ids["Draft contract"]
    m = client.get(f"/api/v1/messages/{mid}", headers=h).json()
    assert m["subject"] == "Draft contract" and m["headers"]["From"] == "jane@client.example"
    assert m["text"] == "the draft contract for signature"
    assert [f["matter"] for f in m["filings"]] == ["1234"]
    assert m["attachments"] == [{"index": 1, "filename": "contract.pdf", "content_type": "application/pdf",
                                 "size": 17, "url": f"/api/v1/messages/{mid}/attachments/1"}]
    raw = client.get(m["raw_url"], headers=h)
    assert raw.status_code == 200 and raw.headers["content-type"].startswith("message/rfc822")
    assert b"Subject: Draft contract" in raw.content
    att = client.get(m["attachments"][0]["url"], headers=h)
    assert att.content == b"%PDF-1.4 contract"
    assert att.headers["content-type"] == "application/octet-stream"
    assert att.headers["content-disposition"] == 'attachment; filename="contract.pdf"'
    error_of(client.get(f"/api/v1/messages/{mid}/attachments/2", headers=h), 404, "not_found")
    error_of(client.get("/api/v1/messages/99999", headers=h), 404, "not_found")


@pytest.mark.parametrize("suffix", ["", "/raw", "/attachments/1"])
def test_a_screened_user_gets_404_for_walled_messages(client, token, fill, suffix):
    for subject in ("Brown estate valuation", "Joint note", "Who is this"):
        error_of(client.get(f"/api/v1/messages/{fill.ids[subject]}{suffix}", headers=token(BOB)), 404, "not_found")


@BOTH_ENGINES
def test_search_never_reveals_walled_messages(client, token, fill):
    def found(login, q):
        return [h["subject"] for h in client.get("/api/v1/search", params={"q": q}, headers=token(login)).json()["hits"]]
    assert set(found(ALICE, "contract")) == {"Draft contract", "Re: Draft contract", "Joint note"}
    assert set(found(BOB, "contract")) == {"Draft contract", "Re: Draft contract"}
    assert found(BOB, "estate") == [] and found(BOB, "confidential") == []
    assert set(found(ADMIN, "contract")) == {"Draft contract", "Re: Draft contract", "Joint note", "Who is this"}
    hit = client.get("/api/v1/search?q=valuation", headers=token(ALICE)).json()["hits"][0]
    assert "[valuation]" in hit["snippet"]
    error_of(client.get("/api/v1/search?q=", headers=token(ALICE)), 400, "bad_request")
    error_of(client.get("/api/v1/search?q=estate&matter=5678", headers=token(BOB)), 404, "not_found")


@BOTH_ENGINES
def test_search_pages(client, token, fill):
    h = token(ALICE)
    first = client.get("/api/v1/search?q=contract&per_page=2", headers=h).json()
    second = client.get(first["next"], headers=h).json()
    assert len(first["hits"]) == 2 and len(second["hits"]) == 1 and second["next"] is None
    assert {x["id"] for x in first["hits"]}.isdisjoint({x["id"] for x in second["hits"]})


@BOTH_ENGINES
def test_unfiled_queue_is_for_admins(client, token, fill):
    error_of(client.get("/api/v1/unfiled", headers=token(ALICE)), 403, "forbidden")
    r = client.get("/api/v1/unfiled", headers=token(ADMIN)).json()
    assert r["total"] == 1 and [m["subject"] for m in r["messages"]] == ["Who is this"]


@BOTH_ENGINES
def test_refile_needs_write_scope_and_an_admin_and_is_recorded(client, token, fill):
    mid = fill.ids["Who is this"]
    body = {"matter": "1234", "reason": "client confirmed it is about the contract"}
    url = f"/api/v1/messages/{mid}/refile"
    error_of(client.post(url, json=body), 401, "unauthorized")
    error_of(client.post(url, json=body, headers=token(ADMIN, "read")), 403, "forbidden")
    error_of(client.post(url, json=body, headers=token(ALICE, "write")), 403, "forbidden")
    error_of(client.post(url, json={"matter": "1234"}, headers=token(ADMIN, "write")), 400, "bad_request")
    error_of(client.post(url, json={"matter": "nope", "reason": "x"}, headers=token(ADMIN, "write")), 400, "bad_request")
    error_of(client.post("/api/v1/messages/99999/refile", json=body, headers=token(ADMIN, "write")), 404, "not_found")
    r = client.post(url, json=body, headers=token(ADMIN, "write"))
    assert r.status_code == 200, r.text
    assert [f["matter"] for f in r.json()["filings"]] == ["1234"]
    entry = fill.store.db.execute("SELECT actor, detail FROM chain WHERE kind = 'refiled'").fetchone()
    assert entry[0] == f"web:{ADMIN}" and json.loads(entry[1])["reason"] == body["reason"]
    assert client.get("/api/v1/unfiled", headers=token(ADMIN)).json()["total"] == 0
    assert client.get(f"/api/v1/messages/{mid}", headers=token(ALICE)).status_code == 200


def test_openapi_document_lists_every_endpoint(client):
    doc = client.get("/api/v1/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    for path in ("/api/v1/matters", "/api/v1/matters/{matter}/messages", "/api/v1/messages/{message}",
                 "/api/v1/messages/{message}/raw", "/api/v1/search", "/api/v1/unfiled",
                 "/api/v1/messages/{message}/refile", "/api/v1/persons/{person}/messages"):
        assert path in doc["paths"], path


def test_unknown_api_path_is_a_json_404(client, token):
    error_of(client.get("/api/v1/nothing-here", headers=token(ALICE)), 404, "not_found")


def test_every_answer_has_a_strict_csp(client):
    r = client.get("/api/v1/openapi.json")
    assert "script-src" not in r.headers["content-security-policy"]
    assert "default-src 'none'" in r.headers["content-security-policy"]


def test_attachment_names_in_any_script_download_safely(client, token, fill):
    mid = fill.add("Contract in Japanese", "", ("1234",), attachment=("契約 \"x\"\r\n.pdf", b"%PDF"))
    m = client.get(f"/api/v1/messages/{mid}", headers=token(ALICE)).json()
    r = client.get(m["attachments"][0]["url"], headers=token(ALICE))
    assert r.status_code == 200 and r.content == b"%PDF"
    disposition = r.headers["content-disposition"]
    assert disposition.startswith('attachment; filename="') and "\r" not in disposition and "\n" not in disposition
    assert "filename*=UTF-8''" in disposition and "%E5%A5%91%E7%B4%84" in disposition
    assert disposition.count('"') == 2
