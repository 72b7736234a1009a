"""The web view in a real headless Chromium (Debian's chromium + chromium-driver, driven by selenium).

Nothing is downloaded: selenium is given /usr/bin/chromedriver and /usr/bin/chromium explicitly (its
selenium-manager never runs). Without them these tests fail, naming the packages: they never skip.
The service runs in-process under uvicorn on a free loopback port, over the fixture store.
"""

from __future__ import annotations

import socket
import threading
from pathlib import Path

import pytest
import uvicorn

from mattermail.web.app import create_app

from .conftest import ADMIN, ALICE, BOB, PASSWORD, web_config

pytestmark = pytest.mark.browser

CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM = Path("/usr/bin/chromium")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(fill, tmp_path):
    port = _free_port()
    config = uvicorn.Config(create_app(fill.store, web_config(tmp_path)), host="127.0.0.1", port=port,
                            loop="asyncio", lifespan="off", log_config=None, access_log=False)
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    while not srv.started:
        if not thread.is_alive():
            pytest.fail("uvicorn exited before it served")
        threading.Event().wait(0.02)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


@pytest.fixture
def browser(monkeypatch):
    missing = [str(p) for p in (CHROMEDRIVER, CHROMIUM) if not p.exists()]
    assert not missing, f"{missing} missing: install Debian's chromium and chromium-driver (make deps)"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # selenium-manager, should anything call it, must not fetch anything
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=412,915"):
        options.add_argument(arg)  # a phone-sized window
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # to see CSP violations, if any
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def wait_for(driver, css: str):
    """The element, once the page that has it is loaded (a click that navigates returns before that)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, 15).until(ec.presence_of_element_located((By.CSS_SELECTOR, css)))


def sign_in(driver, base: str, login: str) -> None:
    from selenium.webdriver.common.by import By

    driver.get(f"{base}/matters")
    assert driver.current_url.startswith(f"{base}/login")
    driver.find_element(By.ID, "login").send_keys(login)
    driver.find_element(By.ID, "password").send_keys(PASSWORD)
    driver.find_element(By.ID, "signin").click()
    wait_for(driver, "#signout")
    assert driver.current_url == f"{base}/matters", driver.page_source[:500]


def test_sign_in_open_a_matter_read_a_message_and_search(server, browser, fill):
    from selenium.webdriver.common.by import By

    sign_in(browser, server, ALICE)
    browser.find_element(By.LINK_TEXT, "1234").click()
    assert "Smith v Jones" in wait_for(browser, "h1 .id").find_element(By.XPATH, "..").text
    browser.find_element(By.LINK_TEXT, "Re: Draft contract").click()
    assert wait_for(browser, "#subject").text == "Re: Draft contract"
    assert "signed contract attached" in browser.find_element(By.ID, "body").text
    browser.find_element(By.LINK_TEXT, "Search").click()
    wait_for(browser, "#q").send_keys("valuation")
    browser.find_element(By.ID, "search").click()
    wait_for(browser, "#hits")
    marks = browser.find_elements(By.CSS_SELECTOR, "#hits mark")
    assert [m.text for m in marks] == ["valuation"]
    # readable on a phone: nothing wider than the (narrow) window, on every page seen
    for path in ("/search?q=valuation", "/matters/1234", f"/messages/{fill.ids['Draft contract']}", "/matters"):
        browser.get(server + path)
        widths = browser.execute_script("return [document.documentElement.scrollWidth, window.innerWidth]")
        assert widths[0] <= widths[1] <= 600, (path, widths)
    # the style sheet loaded under the CSP, and nothing on these pages broke the policy
    assert browser.execute_script("return document.styleSheets.length") == 1
    assert browser.execute_script(
        "return getComputedStyle(document.querySelector('main')).maxWidth") == "960px"
    violations = [e["message"] for e in browser.get_log("browser") if "Content Security Policy" in e["message"]]
    assert violations == []


def test_a_screened_user_sees_neither_the_matter_nor_its_messages(server, browser, fill):
    from selenium.webdriver.common.by import By

    sign_in(browser, server, BOB)
    listed = browser.find_element(By.ID, "matters").text
    assert "Smith v Jones" in listed and "Estate of Brown" not in listed and "5678" not in listed
    for q in ("estate", "valuation", "note"):
        browser.get(f"{server}/search?q={q}")
        assert browser.find_elements(By.ID, "no-hits"), q
    browser.get(f"{server}/matters/5678")
    assert "404" in browser.find_element(By.TAG_NAME, "h1").text


def test_refile_from_the_unfiled_queue(server, browser, fill):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    mid = fill.ids["Who is this"]
    sign_in(browser, server, ADMIN)
    browser.find_element(By.LINK_TEXT, "Unfiled").click()
    assert "Who is this" in wait_for(browser, "#unfiled").text
    Select(browser.find_element(By.ID, f"refile-matter-{mid}")).select_by_value("1234")
    browser.find_element(By.ID, f"refile-reason-{mid}").send_keys("the client confirmed the matter")
    browser.find_element(By.ID, f"refile-{mid}").click()
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(browser, 15).until(lambda d: f"refile-{mid}" not in d.page_source)  # the queue, reloaded
    assert browser.current_url == f"{server}/unfiled"
    assert "Who is this" not in browser.find_element(By.ID, "unfiled").text
    browser.get(f"{server}/matters/1234")
    assert "Who is this" in browser.find_element(By.TAG_NAME, "main").text
