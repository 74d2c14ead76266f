"""``run_demo``: the Quickstart's tour on TPC-H sf=0.01 — tables, MERGE, idempotent re-runs.

The generated data and the generator's venv are cached under ``$TMPDIR`` (``matrixos-tpch/`` and
``matrixos-tpchgen-venv/``), so only the first run on a machine needs PyPI and takes a minute.
"""

from __future__ import annotations

import io
from decimal import Decimal
from pathlib import Path

import pytest
from rich.console import Console

import matrixos as mx
from matrixos import _tpch
from matrixos.demo import run_demo

SCALE = 0.01


@pytest.fixture(scope="module")
def tpch() -> _tpch.TpchData:
    # CI has ../shared and PyPI: a failure to generate is a real failure, not a skip.
    return _tpch.generate(_tpch.default_cache() / f"sf{SCALE:g}", SCALE)


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


def test_demo_loads_tpch_and_merges(tmp_path: Path, tpch: _tpch.TpchData) -> None:
    text = _run(tmp_path / "wh")
    for step in ("Load", "A join", "TPC-H Q1", "MERGE", "Time travel", "History", "Polars"):
        assert step in text
    with mx.connect(str(tmp_path / "wh")) as lh:
        assert sorted(lh.tables("tpch")) == sorted(f"main.tpch.{t}" for t in _tpch.TABLES)
        for t in _tpch.TABLES:
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


def test_demo_runs_again_on_the_same_warehouse(tmp_path: Path, tpch: _tpch.TpchData) -> None:
    _run(tmp_path / "wh")
    with mx.connect(str(tmp_path / "wh")) as lh:
        first = _customers(lh)
    _run(tmp_path / "wh")  # the tables are reloaded, so the MERGE applies once, not twice
    with mx.connect(str(tmp_path / "wh")) as lh:
        assert _customers(lh) == first
        assert lh.table("tpch.lineitem").count() == tpch.num_rows("lineitem")
        ops = [h["operation"] for h in lh.table("tpch.customer").history()]
        assert ops.count("MERGE") == 2


def test_generator_failure_is_explained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    script = tmp_path / "gen_tpch.sh"
    script.write_text(
        "echo 'ERROR: Could not find a version that satisfies the requirement duckdb==1.4.4' >&2\n"
        "exit 1\n"
    )
    monkeypatch.setenv("MATRIXOS_TPCH_GEN", str(script))
    monkeypatch.setenv("TMPDIR", str(tmp_path))  # an empty data cache
    with pytest.raises(_tpch.TpchError, match="TPC-H generation failed") as err:
        run_demo(str(tmp_path / "wh"), SCALE, console=Console(file=io.StringIO()))
    assert "duckdb==1.4.4" in str(err.value)
    assert err.value.hint is not None and "PyPI" in err.value.hint
    assert not (tmp_path / "matrixos-tpch" / f"sf{SCALE:g}").exists()  # nothing half-written
