"""The console tests' fixtures: one real ``matrixos serve`` and one Debian chromium (driven by
Playwright, never a downloaded browser) per test module.

The warehouse is the server tests' (``make_served_warehouse``: ``admin``, ``alice`` with
schema ``sales``, ``bob`` with no grants) plus ``media.pics`` (a Lance table with PNG
thumbnails), ``web.pages`` (cells and a comment holding an ``<img onerror>`` payload) and
``web.page_ids`` made from it (lineage).
Screenshots go to ``$MATRIXOS_TEST_ARTIFACTS`` (or the test's ``tmp_path``).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import matrixos as mx

try:
    from tests.server._serve import MatrixOSServer, ServedWarehouse, make_served_warehouse
except ModuleNotFoundError:
    from server._serve import (  # type: ignore[no-redef]
        MatrixOSServer,
        ServedWarehouse,
        make_served_warehouse,
    )

CHROMIUM = "/usr/bin/chromium"
XSS = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'


def png(color: tuple[int, int, int]) -> bytes:
    """A 16x16 PNG of one color."""
    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(out, format="PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def console_warehouse(tmp_path_factory: pytest.TempPathFactory) -> ServedWarehouse:
    wh = make_served_warehouse(tmp_path_factory.mktemp("console") / "warehouse")
    with mx.connect(wh.uri) as lh:
        pics = [
            {"id": 1, "caption": "a red square", "thumbnail": png((220, 30, 30))},
            {"id": 2, "caption": "a blue square", "thumbnail": png((30, 30, 220))},
        ]
        lh.create_table("media.pics", pics, format="lance").set_embedding(
            "caption", embedder="hash"
        )
        lh.create_table("web.pages", [{"id": 1, "html": XSS}], comment=XSS)
        t = lh.table("web.pages")
        t.append([{"id": 2, "html": "two"}, {"id": 3, "html": "three"}])
        lh.sql("CREATE TABLE web.page_ids AS SELECT id FROM web.pages")  # lineage: pages → ids
    return wh


@pytest.fixture(scope="module")
def console_server(
    console_warehouse: ServedWarehouse, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MatrixOSServer]:
    log = tmp_path_factory.mktemp("console-log") / "server.log"
    server = MatrixOSServer(console_warehouse.uri, log, args=["--chunk-rows", "1000"])
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (./dev installs it)")
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def artifacts(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    """Where a test keeps its screenshots."""
    root = os.environ.get("MATRIXOS_TEST_ARTIFACTS")
    out = Path(root) / "console" / request.node.name if root else tmp_path / "screens"
    out.mkdir(parents=True, exist_ok=True)
    return out
