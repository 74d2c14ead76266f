"""Latency targets besides TPC-H: import time, connect, a point query, many small appends."""

from __future__ import annotations

import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

import matrixos as mx
from benchmarks.tpch.bench import duckdb_connection
from benchmarks.tpch.compare import compare_tables
from matrixos.tpch import TpchData

SMALL_FILE_ROWS = 1_000_000
SMALL_FILE_BATCH = 1_000
SCAN_SQL = (
    "SELECT l_returnflag, sum(l_quantity), avg(l_extendedprice) FROM {table} GROUP BY 1 ORDER BY 1"
)


def _best_subprocess_ms(code: str, n: int = 5) -> float:
    best = float("inf")
    for _ in range(n):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True)
        best = min(best, time.perf_counter() - t0)
    return best * 1000.0


def import_time() -> dict[str, float]:
    """``python -c 'import matrixos'`` minus ``python -c pass``, best of 5 each."""
    bare = _best_subprocess_ms("pass")
    full = _best_subprocess_ms("import matrixos")
    return {"import_ms": full - bare, "python_startup_ms": bare}


def connect_time(warehouse: Path) -> dict[str, float]:
    """``mx.connect()`` on the existing warehouse, best of 5 (in a process that imported it)."""
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        lh = mx.connect(str(warehouse))
        times.append((time.perf_counter() - t0) * 1000.0)
        lh.close()
    return {"connect_ms": min(times)}


def point_query(data: TpchData, warehouse: Path, n: int = 20) -> dict[str, Any]:
    """``SELECT * FROM orders WHERE o_orderkey = k`` for ``n`` existing keys, median ms."""
    keys_col = pq.read_table(data.parquet("orders"), columns=["o_orderkey"]).column(0)
    keys = random.Random(42).sample(keys_col.to_pylist(), n)
    lh = mx.connect(str(warehouse))
    con = duckdb_connection(data)
    m_ms: list[float] = []
    d_ms: list[float] = []
    try:
        sql = "SELECT * FROM orders WHERE o_orderkey = {}"
        lh.sql(sql.format(keys[0])).fetchall()  # warm-up: the snapshot, the cursor
        con.sql(sql.format(keys[0])).fetchall()
        for k in keys:
            t0 = time.perf_counter()
            rows = lh.sql(sql.format(k)).fetchall()
            t1 = time.perf_counter()
            con.sql(sql.format(k)).fetchall()
            t2 = time.perf_counter()
            if len(rows) != 1:
                raise AssertionError(f"point query for o_orderkey={k} returned {len(rows)} rows")
            m_ms.append((t1 - t0) * 1000.0)
            d_ms.append((t2 - t1) * 1000.0)
    finally:
        con.close()
        lh.close()
    return {
        "point_query_ms": statistics.median(m_ms),
        "point_query_duckdb_ms": statistics.median(d_ms),
        "point_query_table_rows": keys_col.length(),
    }


def _slice_of_lineitem(data: TpchData, rows: int) -> pa.Table:
    src = pq.read_table(data.parquet("lineitem"))
    parts, have = [], 0
    while have < rows:  # small scale factors have fewer rows: repeat them
        parts.append(src.slice(0, rows - have))
        have += parts[-1].num_rows
    return pa.concat_tables(parts).combine_chunks()


def small_files(
    data: TpchData, warehouse: Path, log: Callable[[str], None], reps: int = 9
) -> dict[str, Any]:
    """1,000 appends of 1,000 rows (auto-compaction on, the default) vs one write of 1M rows."""
    rows = _slice_of_lineitem(data, SMALL_FILE_ROWS)
    lh = mx.connect(str(warehouse))
    try:
        for name in ("bench.small_appends", "bench.one_write"):
            lh.drop_table(name, if_exists=True)
        t0 = time.perf_counter()
        one = lh.create_table("bench.one_write", rows)
        one_write_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        small = lh.create_table("bench.small_appends", rows.slice(0, SMALL_FILE_BATCH))
        for i in range(1, SMALL_FILE_ROWS // SMALL_FILE_BATCH):
            small.append(rows.slice(i * SMALL_FILE_BATCH, SMALL_FILE_BATCH))
            if i % 250 == 0:
                log(f"  {i} appends, {time.perf_counter() - t0:.0f}s")
        appends_s = time.perf_counter() - t0
        if small.count() != one.count():
            raise AssertionError("the appended table does not hold the same rows")
        # Warm-up; the two tables must aggregate the same.
        a = lh.sql(SCAN_SQL.format(table=small.name)).to_arrow()
        b = lh.sql(SCAN_SQL.format(table=one.name)).to_arrow()
        if problems := compare_tables(a, b):
            raise AssertionError(f"the two tables aggregate differently: {problems}")
        one_ms: list[float] = []
        small_ms: list[float] = []
        for r in range(reps):
            order = [(one, one_ms), (small, small_ms)]
            for t, sink in order if r % 2 == 0 else reversed(order):
                t0 = time.perf_counter()
                lh.sql(SCAN_SQL.format(table=t.name)).fetchall()
                sink.append((time.perf_counter() - t0) * 1000.0)
        d_small, d_one = small.describe(), one.describe()
        return {
            "small_files_appends": SMALL_FILE_ROWS // SMALL_FILE_BATCH,
            "small_files_append_s": appends_s,
            "small_files_append_ms_each": appends_s
            * 1000.0
            / (SMALL_FILE_ROWS // SMALL_FILE_BATCH),
            "one_write_s": one_write_s,
            "small_files_active_files": d_small["num_files"],
            "one_write_active_files": d_one["num_files"],
            "small_files_version": d_small["version"],
            "small_files_scan_reps": reps,
            "small_files_scan_ms": statistics.median(small_ms),
            "one_write_scan_ms": statistics.median(one_ms),
            "small_files_scan_ratio": statistics.median(small_ms) / statistics.median(one_ms),
        }
    finally:
        lh.close()
