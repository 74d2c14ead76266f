"""The 22 TPC-H queries through ``lh.sql`` and through plain DuckDB on the same Parquet files.

Both engines run each query once to warm up (those results are the ones checked), then ``reps``
timed runs, interleaved per query and alternating which engine goes first, so drift in the
machine's state (page cache, CPU clocks, neighbours) hits both alike. A query's time is the
median of its timed runs, end to end: SQL text in, all rows materialized as an Arrow table out.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

import matrixos as mx
from benchmarks.tpch.compare import compare_answer, compare_tables
from matrixos._tpch import TABLES, TpchData, generate, load

DATA_ROOT = Path(__file__).resolve().parent / "data"


@dataclass
class QueryResult:
    query: int
    rows: int
    duckdb_ms: list[float]
    matrixos_ms: list[float]
    problems: list[str] = field(default_factory=list)
    checked_against: list[str] = field(default_factory=list)

    @property
    def duckdb(self) -> float:
        return statistics.median(self.duckdb_ms)

    @property
    def matrixos(self) -> float:
        return statistics.median(self.matrixos_ms)

    @property
    def ratio(self) -> float:
        return self.matrixos / self.duckdb if self.duckdb else float("nan")

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        return {
            "query": self.query,
            "rows": self.rows,
            "duckdb_ms": self.duckdb_ms,
            "matrixos_ms": self.matrixos_ms,
            "duckdb_median_ms": self.duckdb,
            "matrixos_median_ms": self.matrixos,
            "duckdb_best_ms": min(self.duckdb_ms),
            "matrixos_best_ms": min(self.matrixos_ms),
            "ratio": self.ratio,
            "ok": self.ok,
            "checked_against": self.checked_against,
            "problems": self.problems,
        }


def prepare(scale: float, log: Callable[[str], None]) -> tuple[TpchData, Path]:
    """The data set (generated once into ``data/sf<SF>``) and its warehouse, loaded."""
    data = generate(DATA_ROOT / f"sf{scale:g}", scale, log=log)
    warehouse = data.root / "warehouse"
    lh = mx.connect(str(warehouse))
    try:
        t0 = time.perf_counter()
        rows = load(lh, data, "default")
        log(
            f"warehouse {warehouse}: "
            + ", ".join(f"{t} {rows[t]:,}" for t in TABLES)
            + f" ({time.perf_counter() - t0:.1f}s)"
        )
    finally:
        lh.close()
    return data, warehouse


def duckdb_connection(data: TpchData) -> duckdb.DuckDBPyConnection:
    """Plain DuckDB with one view per table over the generated Parquet file."""
    con = duckdb.connect()
    for t in TABLES:
        path = str(data.parquet(t)).replace("'", "''")
        con.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet('{path}')")
    return con


def _timed(fn: Callable[[], pa.Table]) -> tuple[float, pa.Table]:
    t0 = time.perf_counter()
    out = fn()
    return (time.perf_counter() - t0) * 1000.0, out


def run_queries(
    data: TpchData,
    warehouse: Path,
    queries: Sequence[int],
    reps: int,
    on_result: Callable[[QueryResult], None] | None = None,
) -> list[QueryResult]:
    lh = mx.connect(str(warehouse))
    con = duckdb_connection(data)
    results = []
    try:
        for n in queries:
            sql = data.query(n)

            def run_duckdb(sql: str = sql) -> pa.Table:
                return con.sql(sql).to_arrow_table()

            def run_matrixos(sql: str = sql) -> pa.Table:
                return lh.sql(sql).to_arrow()

            problems: list[str] = []
            # Warm-up, whose results are the ones checked.
            want = run_duckdb()
            try:
                got = run_matrixos()
            except mx.MatrixOSError as e:
                res = QueryResult(n, 0, [float("nan")], [float("nan")], [f"error: {e}"])
                results.append(res)
                if on_result:
                    on_result(res)
                continue
            checked = ["duckdb"]
            problems += [f"vs DuckDB: {p}" for p in compare_tables(got, want)]
            answer = data.answer(n)
            if answer is not None:
                checked.append(answer.name)
                problems += [f"vs {answer.name}: {p}" for p in compare_answer(got, answer)]
            d_ms: list[float] = []
            m_ms: list[float] = []
            for r in range(reps):
                order = [(run_duckdb, d_ms), (run_matrixos, m_ms)]
                for fn, sink in order if r % 2 == 0 else reversed(order):
                    ms, _ = _timed(fn)
                    sink.append(ms)
            res = QueryResult(n, got.num_rows, d_ms, m_ms, problems, checked)
            results.append(res)
            if on_result:
                on_result(res)
    finally:
        con.close()
        lh.close()
    return results
