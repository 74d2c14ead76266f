"""``run_demo``: the Quickstart's tour on TPC-H sf=0.01 — tables, MERGE, idempotent re-runs —
and the TPC-H generator behind it.

The generated data and the generator's venv are cached in ``matrixos.tpch.default_cache()``
(``~/.cache/matrixos/tpch``), so only the first run on a machine needs the package index.
"""

from __future__ import annotations

import io
import os
from decimal import Decimal
from pathlib import Path

import pytest
from rich.console import Console

import matrixos as mx
from matrixos import tpch as mx_tpch
from matrixos.cluster.services import free_port
from matrixos.demo import next_steps, run_demo
from matrixos.errors import TpchError

SCALE = 0.01


@pytest.fixture(scope="module")
def tpch() -> mx_tpch.TpchData:
    # CI has the package index: a failure to generate is a real failure, not a skip.
    return mx_tpch.cached(SCALE)


def _run(warehouse: Path) -> str:
    out = io.StringIO()
    run_demo(str(warehouse), SCALE, console=Console(file=out, width=120))
    return out.getvalue()


def _customers(lh: mx.Lakehouse, version: int | None = None) -> list[tuple[object, ...]]:
    at = f" VERSION AS OF {version}" if version is not None else ""
    return lh.sql(
        f"SELECT c_custkey, c_acctbal, c_mktsegment, c_comment FROM tpch.customer{at} "
        "WHERE c_custkey <= 3 OR c_comment = 'added by the demo' ORDER BY c_custkey"
    ).fetchall()


def test_demo_loads_tpch_and_merges(tmp_path: Path, tpch: mx_tpch.TpchData) -> None:
    text = _run(tmp_path / "wh")
    for step in ("Load", "A join", "TPC-H Q1", "MERGE", "Time travel", "History", "Polars"):
        assert step in text
    # The closing hints are code to copy: longer than the console is wide, yet never broken.
    hints = next_steps(str((tmp_path / "wh").resolve()))
    assert max(len(h) for h in hints) > 120
    lines = [line.strip() for line in text.splitlines()]
    for hint in hints:
        assert hint in lines, hint
    with mx.connect(str(tmp_path / "wh")) as lh:
        assert sorted(lh.tables("tpch")) == sorted(f"main.tpch.{t}" for t in mx_tpch.TABLES)
        for t in mx_tpch.TABLES:
            extra = 2 if t == "customer" else 0  # the MERGE inserted two customers
            assert lh.table(f"tpch.{t}").count() == tpch.num_rows(t) + extra, t
        customer = lh.table("tpch.customer")
        assert customer.history(1)[0]["operation"] == "MERGE"
        before, after = _customers(lh, customer.version - 1), _customers(lh)
        assert len(before) == 3 and len(after) == 5
        for old, new in zip(before, after[:3], strict=False):
            assert new[0] == old[0]
            assert new[1] == old[1] + Decimal(1000)  # type: ignore[operator]
            assert new[2] == "AUTOMOBILE"
        max_key = tpch.num_rows("customer")  # TPC-H customer keys are 1..n
        assert [r[0] for r in after[3:]] == [max_key + 1, max_key + 2]


def test_demo_runs_again_on_the_same_warehouse(tmp_path: Path, tpch: mx_tpch.TpchData) -> None:
    _run(tmp_path / "wh")
    with mx.connect(str(tmp_path / "wh")) as lh:
        first = _customers(lh)
    _run(tmp_path / "wh")  # the tables are reloaded, so the MERGE applies once, not twice
    with mx.connect(str(tmp_path / "wh")) as lh:
        assert _customers(lh) == first
        assert lh.table("tpch.lineitem").count() == tpch.num_rows("lineitem")
        ops = [h["operation"] for h in lh.table("tpch.customer").history()]
        assert ops.count("MERGE") == 2


def _no_package_index(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """pip sees only a closed loopback port as its index and an empty folder of wheels."""
    port = free_port()  # nothing listens there: connections are refused at once
    (tmp_path / "no-wheels").mkdir()
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", f"http://127.0.0.1:{port}/simple")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "no-wheels"))
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")


def test_generator_failure_is_explained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    monkeypatch.setenv("MATRIXOS_TPCH_DIR", str(cache))  # an empty cache: the venv is built
    _no_package_index(monkeypatch, tmp_path)
    lines: list[str] = []
    with pytest.raises(TpchError, match="could not install the TPC-H generator") as err:
        run_demo(str(tmp_path / "wh"), SCALE, console=Console(file=io.StringIO()))
    assert "duckdb==1.4.4" in str(err.value)  # pip's own last lines are quoted
    assert err.value.hint is not None and "package index" in err.value.hint
    with pytest.raises(TpchError):
        mx_tpch.cached(SCALE, log=lines.append)
    assert any("installing duckdb==1.4.4" in line for line in lines)  # progress was shown
    # Nothing half-written: no venv, no data set, no temporary folder left behind.
    assert sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) == []


def test_generation_is_offline_once_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tpch: mx_tpch.TpchData
) -> None:
    _no_package_index(monkeypatch, tmp_path)  # the cached venv needs no index
    lines: list[str] = []
    data = mx_tpch.generate(tmp_path / "sf0.01", SCALE, log=lines.append)
    assert data.complete() and data.root == (tmp_path / "sf0.01").resolve()
    assert not any("installing" in line for line in lines)
    assert any("lineitem: 60,175 rows" in line for line in lines)
    rows = {t: data.num_rows(t) for t in mx_tpch.TABLES}
    assert rows == {t: tpch.num_rows(t) for t in mx_tpch.TABLES}
    assert rows["nation"] == 25 and rows["region"] == 5 and rows["customer"] == 1500
    assert "l_returnflag" in data.query(1) and "FROM\n    lineitem" in data.query(1)
    assert [data.answer(n) is not None for n in mx_tpch.QUERIES] == [True] * 22
    first = (data.answer(6) or tmp_path).read_text().splitlines()
    assert first[0] == "revenue" and float(first[1]) > 0  # pipe-separated, with a header
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".sf0.01-")]  # renamed
    # A complete data set is kept as it is.
    before = data.parquet("region").stat().st_mtime_ns
    assert mx_tpch.generate(tmp_path / "sf0.01", SCALE).parquet("region").stat().st_mtime_ns == (
        before
    )


def test_bad_scale_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TpchError, match="must be positive"):
        mx_tpch.generate(tmp_path / "x", 0)
    assert not (tmp_path / "x").exists()
