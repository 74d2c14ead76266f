"""The web console on loopback: page load and query-to-first-rows in Debian's chromium.

    .venv/bin/python -m benchmarks.console [--reps 10] [--rows 1000000]

Starts ``matrixos serve`` (HTTP only) on a free 127.0.0.1 port over a fresh warehouse with
``bench.t`` (``--rows`` rows x 4 columns), logs in once with a token, then times with
Playwright (``/usr/bin/chromium``):

* page load: a new tab opening ``/`` until the SQL editor is ready (session cookie already
  set: ``/console/api/me`` and the catalog tree fetched), first (cold) and the median after;
* query to first rows: clicking Run until the grid shows its first row, for ``SELECT 1``,
  ``SELECT * FROM bench.t LIMIT 100`` and the whole table (``--rows`` rows: the grid pages
  through chunks, the page holds 100).

The times are the browser's wall clock as Python sees it (each includes Playwright's round trip
of about a millisecond).
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from benchmarks.server_http import served

CHROMIUM = "/usr/bin/chromium"


def _report(name: str, samples: list[float]) -> None:
    rest = samples[1:] or samples
    med = statistics.median(rest)
    print(
        f"{name:<44} first {samples[0] * 1e3:8.1f} ms   median after {med * 1e3:8.1f} ms"
        f"   min {min(rest) * 1e3:8.1f} ms"
    )


def _ready(page: Any) -> None:
    page.wait_for_selector("textarea.sql-input")


def main() -> None:
    from playwright.sync_api import sync_playwright

    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--rows", type=int, default=1_000_000)
    args = ap.parse_args()
    with served(args.rows, "mx-bench-console-") as (_, url, token), sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        ctx = browser.new_context(base_url=url)
        ctx.set_default_timeout(300_000)
        page = ctx.new_page()
        page.goto("/")
        page.fill("#token", token)
        page.click("#login-token button")
        _ready(page)
        loads = []
        for _ in range(args.reps):
            tab = ctx.new_page()
            t = time.perf_counter()
            tab.goto("/#/sql")
            _ready(tab)
            loads.append(time.perf_counter() - t)
            tab.close()
        print(f"console on {url}, {args.reps} runs each (chromium {browser.version})")
        _report("page load (/ to SQL editor ready)", loads)
        for sql in ("SELECT 1", "SELECT * FROM bench.t LIMIT 100", "SELECT * FROM bench.t"):
            samples = []
            whole = sql.endswith("bench.t")  # the slow one: fewer runs
            for _ in range(max(3, args.reps // 3) if whole else args.reps):
                page.fill("textarea.sql-input", sql)
                page.evaluate("document.querySelector('.output').replaceChildren()")
                t = time.perf_counter()
                page.click("button:has-text('Run')")
                page.wait_for_selector("table.grid tbody tr")
                samples.append(time.perf_counter() - t)
            rows = page.locator("table.grid tbody tr").count()
            _report(f"query to first rows: {sql[:30]} ({rows} in DOM)", samples)
        info = page.inner_text(".page-info")
        print(f"last grid: {info}")
        browser.close()


if __name__ == "__main__":
    main()
