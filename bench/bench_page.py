"""The explorer page in headless Chromium: time from a slider move to the new face on screen, and a screenshot.

A real server (`python -m service`, one worker) and the page at `/`. Each round moves the Smiling slider one step
with the keyboard and waits for the face; the page itself records the time from the `input` event to the new
image decoded and in the `<img>` (`window.facevae.timings`), so it includes the page's 40 ms debounce, the
`/edit` request, base64 decoding and image decoding. Side by side, interleaved round by round, the same `/edit`
request (same latent, same strengths, `Accept: application/json`) from Python's httpx: the ratio is what the page
adds to the bare API call. Finally a screenshot of the page with Smiling at +2 and an interpolation strip, for the
README.

    python -m bench.bench_page                       # 40 rounds; writes bench/results/page.json and the screenshot
    python -m bench.bench_page --rounds 10 --screenshot /tmp/page.png

Needs Chromium, chromedriver and Selenium (testkit/browser.py says how to get them). Run it as a module from the
repository root: it imports `bench.common` and `testkit.browser`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import httpx
import numpy as np

from bench.common import FIGURES_DIR, RESULTS_DIR, Table, fmt, latency_summary, machine, running_server, write_report
from service.core.bundle import DEFAULT_MODEL
from testkit.browser import chromium, missing_browser

DEFAULT_OUT = RESULTS_DIR / "page.json"
DEFAULT_SCREENSHOT = FIGURES_DIR / "explorer.png"
WAIT_S = 30
SCREENSHOT_WIDTH = 1280


def _wait(condition: object, driver: object) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    WebDriverWait(driver, WAIT_S).until(condition)


def measure(base_url: str, rounds: int, screenshot: Path) -> dict[str, list[float]]:
    """Milliseconds per round: the page's slider-to-face time and the bare /edit call, interleaved."""
    from selenium.webdriver.common.keys import Keys

    page_ms: list[float] = []
    api_ms: list[float] = []
    with chromium() as driver, httpx.Client(base_url=base_url, timeout=30) as http:
        driver.get(base_url + "/")
        _wait(lambda d: d.execute_script("return document.body.dataset.state") == "idle", driver)
        slider = driver.find_element("css selector", "input[data-attribute=Smiling]")
        # Strength in tenths: up to +2, down to +0.1 and up again, so every round asks /edit for a new face.
        tenths = [0, *itertools.islice(itertools.cycle([*range(1, 21), *range(19, 1, -1)]), rounds)]
        for before, after in itertools.pairwise(tenths):
            key = Keys.ARROW_RIGHT if after > before else Keys.ARROW_LEFT
            seen = driver.execute_script("return window.facevae.timings.length")
            slider.send_keys(key)
            _wait(lambda d, n=seen: d.execute_script("return window.facevae.timings.length") > n, driver)
            _wait(lambda d: d.execute_script("return document.body.dataset.state") == "idle", driver)
            page_ms.append(driver.execute_script("return window.facevae.timings.at(-1)"))

            body = driver.execute_script(
                "return {z: state.base.z, attributes: Object.fromEntries([...state.strengths].filter(e => e[1]))}"
            )
            started = time.perf_counter()
            answer = http.post("/edit", json=body, headers={"Accept": "application/json"})
            api_ms.append((time.perf_counter() - started) * 1000)
            answer.raise_for_status()
        shown = driver.find_element("css selector", "output[for=slider-Smiling]")
        tenths = 20 - round(float(shown.text) * 10)  # end at +2 for the screenshot
        slider.send_keys(*[Keys.ARROW_RIGHT if tenths > 0 else Keys.ARROW_LEFT] * abs(tenths))
        _wait(
            lambda d: shown.text == "2.0" and d.execute_script("return document.body.dataset.state") == "idle", driver
        )
        driver.find_element("id", "walk-seed").send_keys("7")
        driver.find_element("id", "walk").click()
        _wait(lambda d: d.find_element("id", "strip").is_displayed(), driver)
        _wait(lambda d: d.execute_script("return document.body.dataset.state") == "idle", driver)
        errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
        if errors:
            raise SystemExit(f"the page logged errors: {json.dumps(errors)}")
        screenshot.parent.mkdir(parents=True, exist_ok=True)
        height = driver.execute_script("window.scrollTo(0, 0); return document.documentElement.scrollHeight")
        driver.set_window_size(SCREENSHOT_WIDTH, height + 140)  # the whole page: window chrome takes about 140 px
        driver.save_screenshot(str(screenshot))
    return {"page_ms": page_ms, "api_ms": api_ms}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="bundle to serve")
    parser.add_argument("--rounds", type=int, default=40, help="slider moves (each also timed as a bare /edit)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="JSON report (a .md table is written beside)")
    parser.add_argument("--screenshot", type=Path, default=DEFAULT_SCREENSHOT, help="where the PNG screenshot goes")
    args = parser.parse_args(argv)
    if reason := missing_browser():
        print(f"cannot run: {reason}", file=sys.stderr)
        return 2
    with running_server(args.model, args.out.with_suffix(".server.log")) as base_url:
        times = measure(base_url, args.rounds, args.screenshot)
    page, api = latency_summary(times["page_ms"]), latency_summary(times["api_ms"])
    ratio = float(np.median(np.array(times["page_ms"]) / np.array(times["api_ms"])))
    table = Table(
        "Slider move to new face (ms, one round = one 0.1 step of Smiling)",
        ["measured", "rounds", "p50", "p95", "mean"],
        [
            [
                "page: input event to new face decoded (Chromium)",
                page["count"],
                *(fmt(page[k]) for k in ("p50", "p95", "mean")),
            ],
            ["bare POST /edit from httpx", api["count"], *(fmt(api[k]) for k in ("p50", "p95", "mean"))],
        ],
        note=f"Median per-round ratio page / bare call: {ratio:.2f} (includes the page's 40 ms debounce).",
    )
    report = {"machine": machine(), "model": str(args.model), "page": page, "api": api, "ratio_p50": ratio, **times}
    write_report(
        args.out,
        report,
        [table],
        f"median {page['p50']:.0f} ms from slider move to new face in the browser, {ratio:.2f}x the bare /edit call; "
        f"screenshot {args.screenshot}",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
