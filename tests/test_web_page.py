"""The explorer page at `/`: served offline by the app, and driven in headless Chromium against the real server.

The browser tests run `python -m service` on the committed default bundle (its 40 attributes include the seven
sliders of the textbook's widget) and use the page as a person would: buttons, the keyboard on a slider, file
uploads. They skip, saying why, where Chromium, its driver or Selenium are missing (`.ci/run` installs them).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from fastapi.testclient import TestClient

from service.api.web import CONTENT_SECURITY_POLICY
from service.core.bundle import DEFAULT_MODEL
from testkit.browser import PHONE_WINDOW, chromium, missing_browser
from testkit.phone_photos import IMAGE_DIR, face_files, phone_photo
from testkit.servers import RunningServer, serving

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

WAIT_S = 30
TEXTBOOK_SLIDERS = ("Male", "Eyeglasses", "Young", "Smiling", "Blond_Hair", "Pale_Skin", "Mustache")


# ---- served by the app ------------------------------------------------------------------------------------------


class _Assets(HTMLParser):
    """Every URL the page's HTML loads (scripts, style sheets, images, icons)."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if tag in ("script", "img") and named.get("src"):
            self.urls.append(named["src"] or "")
        if tag == "link" and named.get("href"):
            self.urls.append(named["href"] or "")


def test_page_and_its_files_are_served_from_the_package_without_internet(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "connect-src 'self'" in CONTENT_SECURITY_POLICY  # the page may call only its own server
    assets = _Assets()
    assets.feed(page.text)
    local = [url for url in assets.urls if not url.startswith("data:")]
    assert local and all(url.startswith("/web/") for url in local), assets.urls  # nothing from a CDN
    for url in local:
        answer = client.get(url)
        assert answer.status_code == 200 and answer.content, url
    script = client.get("/web/app.js").text
    assert not re.search(r"https?://", script), "the script must call the API by relative paths only"
    assert client.head("/").status_code == 200
    assert client.get("/web/missing.js").status_code == 404


def test_page_is_not_part_of_the_api_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "/" not in paths and not any(path.startswith("/web") for path in paths)


# ---- in a real browser ------------------------------------------------------------------------------------------

needs_browser = pytest.mark.skipif(missing_browser() is not None, reason=str(missing_browser()))


@pytest.fixture(scope="module")
def page_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    with serving(DEFAULT_MODEL, tmp_path_factory.mktemp("page") / "server.log") as running:
        yield running


@pytest.fixture(scope="module")
def browser(page_server: RunningServer) -> Iterator[WebDriver]:
    if reason := missing_browser():
        pytest.skip(reason)
    with chromium() as driver:
        driver.get(page_server.base_url + "/")
        _wait(driver, lambda d: d.execute_script("return document.body.dataset.state") == "idle")
        yield driver


def _wait(driver: WebDriver, condition: Any, message: str = "") -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S).until(condition, message)


def _face(driver: WebDriver) -> str:
    return driver.find_element("id", "face").get_attribute("src") or ""


def _idle_with_new_face(driver: WebDriver, before: str) -> str:
    """Waits for the page to show a face other than `before` and to have nothing on its way; returns it."""
    _wait(
        driver,
        lambda d: _face(d) not in ("", before) and d.execute_script("return document.body.dataset.state") == "idle",
        "the face did not change",
    )
    return _face(driver)


def _error(driver: WebDriver) -> str:
    box = driver.find_element("id", "error")
    return box.text if box.is_displayed() else ""


def _severe_console_entries(driver: WebDriver) -> list[dict[str, Any]]:
    return [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]


@needs_browser
def test_page_starts_with_a_random_face_its_seed_and_the_textbook_sliders(browser: WebDriver) -> None:
    assert _face(browser).startswith("data:image/png;base64,")
    seed = browser.find_element("id", "seed").get_attribute("value")
    assert seed and seed.isdigit()
    assert f"seed {seed}" in browser.find_element("id", "face-source").text
    sliders = [s.get_attribute("data-attribute") for s in browser.find_elements("css selector", "#sliders input")]
    assert tuple(sliders) == TEXTBOOK_SLIDERS
    picker = [o.get_attribute("value") for o in browser.find_elements("css selector", "#attribute-picker option")]
    assert len(picker) == 40 - len(TEXTBOOK_SLIDERS) and "Chubby" in picker and "Smiling" not in picker
    latent = browser.find_element("id", "latent-output").get_attribute("value") or ""
    assert len(latent.strip("[]").split(",")) == 128
    assert browser.find_element("id", "download").get_attribute("href") == _face(browser)
    assert _severe_console_entries(browser) == []


@needs_browser
def test_another_draws_a_new_seed_and_face(browser: WebDriver) -> None:
    before, seed = _face(browser), browser.find_element("id", "seed").get_attribute("value")
    browser.find_element("id", "another").click()
    _idle_with_new_face(browser, before)
    assert browser.find_element("id", "seed").get_attribute("value") != seed


@needs_browser
def test_smiling_slider_by_keyboard_changes_the_face_without_piling_up_requests(browser: WebDriver) -> None:
    from selenium.webdriver.common.keys import Keys

    before = _face(browser)
    latent_before = browser.find_element("id", "latent-output").get_attribute("value")
    browser.execute_script("performance.clearResourceTimings(); window.facevae.timings.length = 0;")
    slider = browser.find_element("css selector", "input[data-attribute=Smiling]")
    slider.send_keys(*[Keys.ARROW_RIGHT] * 20)  # step 0.1: strength 2
    _idle_with_new_face(browser, before)
    assert browser.find_element("css selector", "output[for=slider-Smiling]").text == "2.0"
    assert browser.find_element("id", "latent-output").get_attribute("value") != latent_before
    assert browser.execute_script("return window.facevae.timings.length") >= 1
    # Every face request the drag caused, in the order sent: never two on their way at once.
    spans = browser.execute_script(
        "return performance.getEntriesByType('resource')"
        ".filter(e => /\\/(edit|decode)$/.test(new URL(e.name).pathname))"
        ".map(e => [e.startTime, e.responseEnd]);"
    )
    assert 1 <= len(spans) <= 20
    for (_, end), (next_start, _) in itertools.pairwise(spans):
        assert next_start >= end, f"requests overlap: {spans}"
    assert _error(browser) == ""


@needs_browser
def test_a_picked_attribute_gets_its_own_slider(browser: WebDriver) -> None:
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element("id", "attribute-picker")).select_by_value("Chubby")
    browser.find_element("id", "add-attribute").click()
    assert browser.find_element("css selector", "input[data-attribute=Chubby]").is_displayed()
    picker = [o.get_attribute("value") for o in browser.find_elements("css selector", "#attribute-picker option")]
    assert "Chubby" not in picker


@needs_browser
def test_interpolation_strip_walks_from_the_current_face(browser: WebDriver) -> None:
    browser.find_element("id", "walk-steps").clear()
    browser.find_element("id", "walk-steps").send_keys("5")
    browser.find_element("id", "walk").click()
    _wait(browser, lambda d: d.find_element("id", "strip").is_displayed(), "no strip")
    width, height = browser.execute_script(
        "const s = document.getElementById('strip'); return [s.naturalWidth, s.naturalHeight];"
    )
    assert width >= 5 * height * 0.9 and height >= 64  # five faces side by side
    assert browser.find_element("id", "walk-seed").get_attribute("value").isdigit()  # the second face's seed
    assert _error(browser) == ""


@needs_browser
@pytest.mark.skipif(not IMAGE_DIR.is_dir(), reason=f"the shared CelebA subset is not at {IMAGE_DIR}")
def test_uploaded_photo_becomes_the_face(browser: WebDriver, tmp_path: Path) -> None:
    photo = tmp_path / "holiday.jpg"
    photo.write_bytes(phone_photo(face_files(1, 4321)[0], seed=5).jpeg)
    before = _face(browser)
    browser.find_element("id", "photo").send_keys(str(photo))
    _idle_with_new_face(browser, before)
    assert browser.find_element("id", "face-source").text == "photo holiday.jpg"
    assert _error(browser) == ""


@needs_browser
def test_api_errors_are_shown_in_words(browser: WebDriver, tmp_path: Path) -> None:
    assert _severe_console_entries(browser) == []  # nothing went wrong before the deliberate errors
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"this is not a photo")
    browser.find_element("id", "photo").send_keys(str(broken))
    _wait(browser, lambda d: _error(d) != "", "no error shown for an unreadable upload")
    assert _error(browser).startswith("400: not a recognised image")

    browser.find_element("css selector", "details summary").click()
    browser.find_element("id", "latent-input").send_keys("[0.1, 0.2, 0.3]")
    browser.find_element("id", "use-latent").click()
    _wait(browser, lambda d: "expected 128" in _error(d), "no error shown for a short latent")
    assert "z has 3 values" in _error(browser)

    browser.find_element("id", "latent-input").clear()
    browser.find_element("id", "latent-input").send_keys("not json")
    browser.find_element("id", "use-latent").click()
    _wait(browser, lambda d: _error(d).startswith("That is not JSON"), "no error shown for text that is not JSON")

    # The console holds only the browser's own notes on the refused requests, no script errors.
    entries = _severe_console_entries(browser)
    assert entries and all(entry["source"] == "network" for entry in entries), entries
    assert all(re.search(r"/(encode|decode|edit) - Failed to load resource", entry["message"]) for entry in entries)


@needs_browser
def test_phone_width_has_no_sideways_scrolling(browser: WebDriver) -> None:
    size = browser.get_window_size()
    try:
        browser.set_window_size(*PHONE_WINDOW)
        _wait(browser, lambda d: d.execute_script("return window.innerWidth") <= PHONE_WINDOW[0])
        overflow = browser.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 0
        face_width = browser.execute_script("return document.getElementById('face').getBoundingClientRect().width")
        assert face_width >= 0.6 * PHONE_WINDOW[0]  # large on the phone as well
    finally:
        browser.set_window_size(size["width"], size["height"])
