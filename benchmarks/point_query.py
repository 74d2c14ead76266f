"""``python -m benchmarks.point_query [--rows 1000000] [--files 1] [--queries 200] [--json f]``

A point query on a table of ``--rows`` rows (default 1M), through the call a user makes:
``lh.sql("SELECT * FROM bench.points WHERE id = k").fetchall()``, in a fresh process that has
done nothing before (no warm-up: the first statement is reported on its own), against plain
DuckDB on the same Parquet files in the same process, interleaved key by key.

Reported (ms): the first statement of the process; then the median and p90 over ``--queries``
different keys (every text new: planned each time) and MatrixOS's planning part of it (until
DuckDB gets the SQL, ``benchmarks/_planning.py``); one text repeated (its plan reused); DuckDB on
the same files; the ratio. Target (issue 16): median ≤ 5 ms, planning ≤ 1 ms.

The table is made once with ``lh.create_table`` (MatrixOS's default layout; with ``--files
n``, in n appends of consecutive keys, so a key's file is found by its statistics) under
``$TMPDIR/matrixos-bench/point_query``; a re-run measures at once.

Every key is a new text, but the statement is the same with another literal: it runs from
the plan kept for its literals lifted out (``engine/sql/plans.py``), one per set of files the
key prunes to, so with ``--files n`` the first keys that land in each file are planned.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

TARGET_MS = 5.0
TARGET_PLANNING_MS = 1.0


def _warehouse(rows: int, files: int = 1) -> Path:
    name = f"rows{rows}" if files == 1 else f"rows{rows}-files{files}"
    return Path(tempfile.gettempdir()) / "matrixos-bench" / "point_query" / name


def prepare(rows: int, files: int = 1) -> Path:
    """The warehouse with ``bench.points`` (``id`` 0…rows-1, a double, a string)."""
    import numpy as np
    import pyarrow as pa

    import matrixos as mx

    wh = _warehouse(rows, files)
    # the files as written: no auto-compaction merges them
    with mx.connect(str(wh), auto_compact_min_files=max(16, files + 1)) as lh:
        if any(t.name == "main.bench.points" for t in lh.service.tables(lh.principal, "bench")):
            if lh.sql("SELECT count(*) FROM bench.points").scalar() == rows:
                return wh
            lh.drop_table("bench.points")
        rng = np.random.default_rng(0)
        data = pa.table(
            {
                "id": np.arange(rows, dtype=np.int64),
                "v": rng.random(rows),
                "s": pa.array([f"row {i}" for i in range(rows)]),
            }
        )
        step = -(-rows // files)
        t = lh.create_table("bench.points", data.slice(0, step))
        for start in range(step, rows, step):
            t.append(data.slice(start, step))
    return wh


def _fetch(lh: Any, sql: str, planned: list[str] | None = None) -> list[tuple[Any, ...]]:
    result = lh.sql(sql)
    if planned is not None and result.stats.get("plan") != "cached":
        planned.append(sql)
    return result.fetchall()  # type: ignore[no-any-return]


def measure(wh: Path, rows: int, queries: int) -> dict[str, Any]:
    """In this (fresh) process: the first statement, then ``queries`` keys interleaved with
    DuckDB on the same files, then one text repeated."""
    t0 = time.perf_counter()
    import duckdb
    from deltalake import DeltaTable

    import matrixos as mx
    from benchmarks._planning import PlanningClock

    lh = mx.connect(str(wh))
    connect_ms = (time.perf_counter() - t0) * 1000.0
    clock = PlanningClock()
    keys = [(i * 7919 + 13) % rows for i in range(queries + 1)]
    with clock.installed():
        first = f"SELECT * FROM bench.points WHERE id = {keys[0]}"
        rows0, first_ms, first_plan = clock.call(partial(_fetch, lh, first))
        assert len(rows0) == 1
        location = lh.table("bench.points").location
        files = [f.split("://", 1)[-1] for f in DeltaTable(location).file_uris()]
        con = duckdb.connect()
        listing = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
        con.execute(f"CREATE VIEW points AS SELECT * FROM read_parquet([{listing}])")
        con.sql(f"SELECT * FROM points WHERE id = {keys[0]}").fetchall()  # DuckDB's first too
        m_ms: list[float] = []
        p_ms: list[float] = []
        d_ms: list[float] = []
        fresh: list[str] = []  # the keys planned afresh (no kept plan for their files yet)
        for i, k in enumerate(keys[1:]):
            text = f"SELECT * FROM bench.points WHERE id = {k}"

            def duck(k: int = k) -> None:
                t = time.perf_counter()
                assert len(con.sql(f"SELECT * FROM points WHERE id = {k}").fetchall()) == 1
                d_ms.append((time.perf_counter() - t) * 1000.0)

            if i % 2:
                duck()
            got, total, planning = clock.call(partial(_fetch, lh, text, fresh))
            assert len(got) == 1
            m_ms.append(total)
            p_ms.append(planning)
            if not i % 2:
                duck()
        same = f"SELECT * FROM bench.points WHERE id = {keys[1]}"
        r_ms: list[float] = []
        rp_ms: list[float] = []
        for _ in range(queries):
            _, total, planning = clock.call(partial(_fetch, lh, same))
            r_ms.append(total)
            rp_ms.append(planning)
    lh.close()
    planned = len(fresh)
    q90 = statistics.quantiles(m_ms, n=10)[-1]
    return {
        "rows": rows,
        "queries": queries,
        "files": len(files),
        "connect_ms": connect_ms,
        "first_ms": first_ms,
        "first_planning_ms": first_plan,
        "median_ms": statistics.median(m_ms),
        "p90_ms": q90,
        "planning_median_ms": statistics.median(p_ms),
        "planned": planned,
        "repeated_median_ms": statistics.median(r_ms),
        "repeated_planning_median_ms": statistics.median(rp_ms),
        "duckdb_median_ms": statistics.median(d_ms),
        "ratio": statistics.median(m_ms) / statistics.median(d_ms),
        "load_average": os.getloadavg()[0],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.point_query", description=__doc__)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--files", type=int, default=1, help="write the table in this many files")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:  # the measuring process: prints its figures as JSON
        print(json.dumps(measure(_warehouse(a.rows, a.files), a.rows, a.queries)))
        return 0
    prepare(a.rows, a.files)
    load = os.getloadavg()[0]
    out = subprocess.run(
        [
            *(sys.executable, "-m", "benchmarks.point_query", "--child"),
            *("--rows", str(a.rows), "--queries", str(a.queries), "--files", str(a.files)),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    r = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"point query on {r['rows']:,} rows ({r['files']} file(s)), load average {load:.1f}")
    print(
        f"  fresh process: connect {r['connect_ms']:.1f} ms, first statement {r['first_ms']:.1f} ms"
    )
    print(
        f"  {r['queries']} different keys: median {r['median_ms']:.2f} ms, "
        f"p90 {r['p90_ms']:.2f} ms, of which planning {r['planning_median_ms']:.2f} ms "
        f"({r['planned']} planned afresh, the others from a kept plan)"
    )
    print(
        f"  one text repeated (plan reused): median {r['repeated_median_ms']:.2f} ms, planning "
        f"{r['repeated_planning_median_ms']:.2f} ms"
    )
    print(f"  DuckDB on the same Parquet files: median {r['duckdb_median_ms']:.2f} ms")
    ok = r["median_ms"] <= TARGET_MS and r["planning_median_ms"] <= TARGET_PLANNING_MS
    print(
        f"  MatrixOS / DuckDB {r['ratio']:.2f}x; target median ≤ {TARGET_MS:g} ms and planning "
        f"≤ {TARGET_PLANNING_MS:g} ms: {'met' if ok else 'NOT met'}"
    )
    if a.json:
        a.json.write_text(json.dumps(r, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
