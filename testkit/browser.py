"""Headless Chromium under Selenium for the page's tests and benchmark: Debian's `chromium` and `chromium-driver`.

Selenium is given both paths, so Selenium Manager never tries to download a browser or a driver (there is no
internet here). `.ci/run` installs the two Debian packages when they are missing; elsewhere the tests skip.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome")
DRIVER_NAMES = ("chromedriver",)
PHONE_WINDOW = (390, 844)  # CSS pixels of a common phone held upright
DESKTOP_WINDOW = (1280, 1000)


def _which(names: tuple[str, ...]) -> str | None:
    return next((path for name in names if (path := shutil.which(name))), None)


def missing_browser() -> str | None:
    """Why the browser cannot run here, or None when it can."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (the dev extra)"
    if _which(BROWSER_NAMES) is None:
        return "no Chromium on PATH (Debian: apt-get install chromium chromium-driver)"
    if _which(DRIVER_NAMES) is None:
        return "no chromedriver on PATH (Debian: apt-get install chromium-driver)"
    return None


@contextmanager
def chromium(window: tuple[int, int] = DESKTOP_WINDOW) -> Iterator[WebDriver]:
    """A headless Chromium WebDriver that keeps the page's console messages (read with `get_log("browser")`)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = _which(BROWSER_NAMES) or ""
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(argument)
    options.add_argument(f"--window-size={window[0]},{window[1]}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=_which(DRIVER_NAMES)))
    try:
        yield driver
    finally:
        driver.quit()
