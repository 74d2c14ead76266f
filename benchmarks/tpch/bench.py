"""The 22 TPC-H queries through ``lh.sql`` and through plain DuckDB on the same Parquet files.

Both engines run each query once to warm up (those results are the ones checked), then ``reps``
timed runs, interleaved per query and rotating which engine goes first, so drift in the
machine's state (page cache, CPU clocks, neighbours) hits both alike. A query's time is the
median of its timed runs, end to end: SQL text in, all rows materialized as an Arrow table out.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import duckdb
import pyarrow as pa
from deltalake import DeltaTable

import matrixos as mx
from benchmarks._planning import PlanningClock
from benchmarks.tpch.compare import compare_answer, compare_tables
from matrixos.tpch import TABLES, TpchData, generate, load

DATA_ROOT = Path(__file__).resolve().parent / "data"


@dataclass
class QueryResult:
    query: int
    rows: int
    duckdb_ms: list[float]
    matrixos_ms: list[float]
    problems: list[str] = field(default_factory=list)
    checked_against: list[str] = field(default_factory=list)
    # DuckDB over the very Parquet files of the Delta tables (``--same-files``), when measured.
    same_files_ms: list[float] = field(default_factory=list)
    # MatrixOS's planning (until DuckDB gets the SQL) in the timed runs, and in the first run
    # of the text in this process (the warm-up: nothing of it cached).
    planning_ms: list[float] = field(default_factory=list)
    first_planning_ms: float = float("nan")

    @property
    def planning(self) -> float:
        return statistics.median(self.planning_ms) if self.planning_ms else float("nan")

    @property
    def duckdb(self) -> float:
        return statistics.median(self.duckdb_ms)

    @property
    def matrixos(self) -> float:
        return statistics.median(self.matrixos_ms)

    @property
    def same_files(self) -> float | None:
        return statistics.median(self.same_files_ms) if self.same_files_ms else None

    @property
    def ratio(self) -> float:
        return self.matrixos / self.duckdb if self.duckdb else float("nan")

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        out = {
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
            "planning_ms": self.planning_ms,
            "planning_median_ms": self.planning,
            "first_planning_ms": self.first_planning_ms,
        }
        if self.same_files_ms:
            out["duckdb_same_files_ms"] = self.same_files_ms
            out["duckdb_same_files_median_ms"] = self.same_files
        return out


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


def duckdb_connection(data: TpchData, warehouse: Path | None = None) -> duckdb.DuckDBPyConnection:
    """Plain DuckDB with one view per table: over the generated Parquet file, or (with
    ``warehouse``) over the active Parquet files of the table's current Delta version."""
    con = duckdb.connect()
    lh = mx.connect(str(warehouse)) if warehouse is not None else None
    try:
        for t in TABLES:
            if lh is None:
                paths = [str(data.parquet(t))]
            else:
                location = lh.table(f"default.{t}").location
                paths = [_local(u) for u in DeltaTable(location).file_uris()]
            listing = ", ".join("'" + p.replace("'", "''") + "'" for p in paths)
            con.execute(f"CREATE VIEW {t} AS SELECT * FROM read_parquet([{listing}])")
    finally:
        if lh is not None:
            lh.close()
    return con


def _local(uri: str) -> str:
    return unquote(uri[len("file://") :]) if uri.startswith("file://") else uri


def _run_duckdb(con: duckdb.DuckDBPyConnection, sql: str) -> pa.Table:
    return con.sql(sql).to_arrow_table()


def _run_matrixos(lh: mx.Lakehouse, sql: str) -> pa.Table:
    return lh.sql(sql).to_arrow()


def _timed(fn: Callable[[], pa.Table]) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000.0


class _Planned:
    """``lh.sql(sql).to_arrow()``, timed as a whole with its planning part beside it."""

    def __init__(self, clock: PlanningClock, lh: mx.Lakehouse, sql: str) -> None:
        self.clock, self.lh, self.sql = clock, lh, sql
        self.planning: list[float] = []

    def __call__(self) -> pa.Table:
        table, _, planning = self.clock.call(partial(_run_matrixos, self.lh, self.sql))
        self.planning.append(planning)
        return table  # type: ignore[no-any-return]


def run_queries(
    data: TpchData,
    warehouse: Path,
    queries: Sequence[int],
    reps: int,
    on_result: Callable[[QueryResult], None] | None = None,
    *,
    same_files: bool = False,
) -> list[QueryResult]:
    """Time and check each query; ``same_files`` adds DuckDB over the Delta tables' files."""
    lh = mx.connect(str(warehouse))
    con = duckdb_connection(data)
    con_same = duckdb_connection(data, warehouse) if same_files else None
    results = []
    clock = PlanningClock()
    timing = ExitStack()
    timing.enter_context(clock.installed())
    try:
        for n in queries:
            sql = data.query(n)
            engines: list[tuple[Callable[[], pa.Table], list[float]]] = []
            d_ms: list[float] = []
            m_ms: list[float] = []
            s_ms: list[float] = []
            planned = _Planned(clock, lh, sql)
            engines.append((partial(_run_duckdb, con, sql), d_ms))
            engines.append((planned, m_ms))
            if con_same is not None:
                engines.append((partial(_run_duckdb, con_same, sql), s_ms))

            # Warm-up, whose results are the ones checked.
            want = engines[0][0]()
            try:
                got = engines[1][0]()
            except mx.MatrixOSError as e:
                res = QueryResult(n, 0, [float("nan")], [float("nan")], [f"error: {e}"])
                results.append(res)
                if on_result:
                    on_result(res)
                continue
            for fn, _ in engines[2:]:
                fn()
            checked = ["duckdb"]
            problems = [f"vs DuckDB: {p}" for p in compare_tables(got, want)]
            answer = data.answer(n)
            if answer is not None:
                checked.append(answer.name)
                problems += [f"vs {answer.name}: {p}" for p in compare_answer(got, answer)]
            for r in range(reps):
                # Rotate who goes first, so neither engine always runs on a warmer machine.
                k = r % len(engines)
                for fn, sink in engines[k:] + engines[:k]:
                    sink.append(_timed(fn))
            res = QueryResult(n, got.num_rows, d_ms, m_ms, problems, checked, s_ms)
            res.first_planning_ms, res.planning_ms = planned.planning[0], planned.planning[1:]
            results.append(res)
            if on_result:
                on_result(res)
    finally:
        timing.close()
        con.close()
        if con_same is not None:
            con_same.close()
        lh.close()
    return results
