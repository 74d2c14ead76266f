"""Every code block of the README and docs/ runs (see ``_blocks`` for the rules): each page's
blocks in order, in a fresh folder and warehouse of their own, as a user would paste them.

Blocks that need what a test machine cannot give (an S3 bucket with credentials, a cluster of
machines, a GPU, a package index) carry a visible ``<!-- not run: reason -->``;
``test_not_run_blocks_are_few_and_justified`` lists them and keeps the list short.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

try:
    from tests.docs._blocks import ROOT, SERVE, Block, blocks, driver, pages
except ModuleNotFoundError:
    from _blocks import ROOT, SERVE, Block, blocks, driver, pages  # type: ignore[no-redef]

ALL: list[Block] = [b for p in pages() for b in blocks(p)]
RUN_PAGES = sorted({b.page for b in ALL if b.kind is not None and b.not_run is None})
#: The most blocks that may be marked not run; raising it is a decision, not an accident.
MAX_NOT_RUN = 28


def test_every_fence_names_its_language() -> None:
    bare = [b.where for b in ALL if not b.language]
    assert not bare, f"fences without a language (python, bash, sql, text…): {bare}"
    unknown = [
        (b.where, b.language)
        for b in ALL
        if b.kind is None and b.language not in {"text", "json", "yaml", "toml", "ini", "http",
                                                  "mermaid", "csv", "dockerfile"}
    ]  # fmt: skip
    assert not unknown, f"unknown block languages: {unknown}"


def test_not_run_blocks_are_few_and_justified() -> None:
    skipped = [b for b in ALL if b.not_run is not None]
    listing = "\n".join(f"  {b.where} ({b.language}): {b.not_run}" for b in skipped)
    print(f"\n{len(skipped)} code blocks not run:\n{listing}")
    assert all(len(b.not_run or "") >= 10 for b in skipped), listing  # a reason, not "skip"
    assert len(skipped) <= MAX_NOT_RUN, listing
    runnable = [b for b in ALL if b.kind is not None and b.not_run is None]
    assert len(runnable) >= 2 * len(skipped), "most code blocks must run"


@pytest.mark.parametrize("page", RUN_PAGES)
def test_page_code_blocks_run(page: str, tmp_path: Path) -> None:
    page_blocks = blocks(ROOT / page)
    script = tmp_path / "driver.py"
    script.write_text(driver(page_blocks, serve=SERVE in (ROOT / page).read_text()))
    work = tmp_path / "work"
    work.mkdir()
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "MATRIXOS_WAREHOUSE": str(work / "warehouse"),
        "MATRIXOS_HOME": str(tmp_path / "home"),
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "PYTHONPATH": str(ROOT),
        "MATRIXOS_COMPUTE": "local",
        "NO_COLOR": "1",
        "COLUMNS": "120",
    }
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, (
        f"a code block of {page} failed:\n{done.stdout[-6000:]}\n{done.stderr[-6000:]}"
    )
