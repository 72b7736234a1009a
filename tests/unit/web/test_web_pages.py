"""The web view over HTTP in-process: sign-in, cookies, CSRF, escaping, walls in pages and search."""

from __future__ import annotations

import re

import pytest
from starlette.testclient import TestClient

from mattermail.store import access
from mattermail.web.app import create_app

from .conftest import ADMIN, ALICE, BOB, BOTH_ENGINES, PASSWORD, web_config


def sign_in(client, login: str, password: str = PASSWORD):
    form = client.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
    return client.post("/login", data={"login": login, "password": password, "csrf": csrf, "next": "/matters"},
                       follow_redirects=False)


def csrf_of(page: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


def test_pages_want_a_session(client):
    r = client.get("/matters/1234", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")


@BOTH_ENGINES
def test_sign_in_sets_a_strict_httponly_cookie(client):
    r = sign_in(client, ALICE)
    assert r.status_code == 303 and r.headers["location"] == "/matters"
    cookie = [c for c in r.headers.get_list("set-cookie") if c.startswith("mm_session=")][0].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "secure" not in cookie  # loopback dev config
    assert "Smith v Jones" in client.get("/matters").text


def test_cookie_is_secure_by_default(fill, tmp_path):
    with TestClient(create_app(fill.store, web_config(tmp_path, secure=True)), base_url="https://mm.test") as c:
        r = sign_in(c, ALICE)
        cookie = [x for x in r.headers.get_list("set-cookie") if x.startswith("mm_session=")][0].lower()
        assert "; secure" in cookie


def test_wrong_password_and_unknown_user_are_refused_alike(client):
    for login, pw in ((ALICE, "wrong-password-1"), ("nobody@lawfirm.test", PASSWORD)):
        r = sign_in(client, login, pw)
        assert r.status_code == 401 and "Wrong login or password." in r.text
    assert client.get("/matters", follow_redirects=False).status_code == 303


def test_sign_in_without_the_form_token_is_refused(client):
    client.get("/login")
    r = client.post("/login", data={"login": ALICE, "password": PASSWORD, "csrf": "forged"}, follow_redirects=False)
    assert r.status_code == 403


@BOTH_ENGINES
def test_matter_page_timeline_threads_and_attachments(client, fill):
    sign_in(client, ALICE)
    page = client.get("/matters/1234").text
    assert page.index("Joint note") < page.index("Re: Draft contract") < page.index(f'/messages/{fill.ids["Draft contract"]}"')
    assert "2 messages" in page  # the Draft contract thread
    assert "jane@client.example → 1234@matters.lawfirm.test" in page
    assert f'/messages/{fill.ids["Draft contract"]}/attachments/1">contract.pdf' in page


@BOTH_ENGINES
def test_matter_page_pages(fill, tmp_path):
    with TestClient(create_app(fill.store, web_config(tmp_path, page_size=2)), base_url="http://127.0.0.1") as c:
        sign_in(c, ALICE)
        first = c.get("/matters/1234").text
        assert "Joint note" in first and 'rel="next"' in first and ">Draft contract<" not in first
        second = c.get("/matters/1234?page=2").text
        assert ">Draft contract<" in second and 'rel="next"' not in second


def test_message_page_escapes_attacker_text(client, fill):
    mid = fill.add("<script>alert(1)</script>", "<img src=x onerror=alert(2)>", ("1234",))
    sign_in(client, ALICE)
    page = client.get(f"/messages/{mid}").text
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<img src=x" not in page and "&lt;img src=x onerror=alert(2)&gt;" in page
    assert "<script" not in page.replace("&lt;script", "")
    timeline = client.get("/matters/1234").text
    assert "<script>alert" not in timeline


def test_no_inline_script_or_style_anywhere(client, fill):
    sign_in(client, ADMIN)
    for path in ("/matters", "/matters/1234", f"/messages/{fill.ids['Draft contract']}", "/persons",
                 f"/persons/{fill.jane.id}", "/search?q=contract", "/unfiled"):
        r = client.get(path)
        assert r.status_code == 200, path
        assert "<script" not in r.text and "style=" not in r.text and "<style" not in r.text, path
        assert "script-src" not in r.headers["content-security-policy"]


@BOTH_ENGINES
def test_screened_user_sees_neither_the_matter_nor_its_messages(client, fill):
    sign_in(client, BOB)
    assert "Estate of Brown" not in client.get("/matters").text
    assert client.get("/matters/5678").status_code == 404
    assert client.get(f"/messages/{fill.ids['Brown estate valuation']}").status_code == 404
    assert client.get(f"/messages/{fill.ids['Joint note']}").status_code == 404
    results = client.get("/search?q=estate").text
    assert "Nothing found." in results and "valuation" not in results and "Joint note" not in results
    assert "Joint note" not in client.get("/matters/1234").text


@BOTH_ENGINES
def test_search_highlights(client, fill):
    sign_in(client, ALICE)
    page = client.get("/search?q=valuation").text
    assert "<mark>valuation</mark>" in page


@BOTH_ENGINES
def test_unfiled_queue_and_refile_for_admins(client, fill):
    sign_in(client, ALICE)
    assert client.get("/unfiled").status_code == 403
    client.cookies.clear()
    sign_in(client, ADMIN)
    page = client.get("/unfiled").text
    assert "Who is this" in page
    mid = fill.ids["Who is this"]
    r = client.post(f"/messages/{mid}/refile", data={"matter": "1234", "reason": "about the contract",
                                                     "csrf": "forged", "back": "/unfiled"}, follow_redirects=False)
    assert r.status_code == 403
    r = client.post(f"/messages/{mid}/refile", data={"matter": "1234", "reason": "about the contract",
                                                     "csrf": csrf_of(page), "back": "/unfiled"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/unfiled"
    assert "Who is this" not in client.get("/unfiled").text
    actor = fill.store.db.execute("SELECT actor FROM chain WHERE kind = 'refiled'").fetchone()[0]
    assert actor == f"web:{ADMIN}"


@BOTH_ENGINES
def test_admin_page_view_of_a_walled_matter_is_logged(client, fill):
    sign_in(client, ADMIN)
    assert "Your view is logged" in client.get("/matters/5678").text
    assert [v.what for v in access.admin_views(fill.store, "5678")] == ["web: matter page"]


@BOTH_ENGINES
def test_sign_out_ends_the_session(client):
    sign_in(client, ALICE)
    page = client.get("/matters").text
    r = client.post("/logout", data={"csrf": csrf_of(page)}, follow_redirects=False)
    assert r.status_code == 303
    assert client.get("/matters", follow_redirects=False).status_code == 303


@pytest.mark.parametrize("target", ["//evil.example/", "https://evil.example/", "/\\evil.example"])
def test_sign_in_never_redirects_off_site(client, target):
    form = client.get("/login")
    r = client.post("/login", data={"login": ALICE, "password": PASSWORD, "csrf": csrf_of(form.text), "next": target},
                    follow_redirects=False)
    assert r.headers["location"] == "/matters"


def test_password_guessing_locks_the_login_out(client, monkeypatch):
    from mattermail.web import auth

    monkeypatch.setattr(auth, "_failures", {})
    monkeypatch.setattr(auth, "FAILURE_LIMIT", 3)
    for _ in range(3):
        assert sign_in(client, ALICE, "wrong-password-1").status_code == 401
    assert sign_in(client, ALICE).status_code == 401  # the right password, but locked out for now
    assert sign_in(client, BOB).status_code == 303  # other logins are not affected
