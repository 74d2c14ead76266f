"""``python -m benchmarks.tpch [--sf 1] [--reps 3] [--queries 1,6] [--json out.json] [--no-extras]``

Runs the 22 TPC-H queries through MatrixOS and plain DuckDB, checks every MatrixOS answer against
DuckDB's reference answers and against DuckDB on the raw Parquet, prints the timings, and (unless
``--no-extras``) the import / connect / point-query / small-files targets. Exits 1 when any
answer differs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

import duckdb
from rich.console import Console
from rich.table import Table

from benchmarks.tpch import extras
from benchmarks.tpch.bench import QueryResult, prepare, run_queries
from matrixos.tpch import QUERIES


def _parse_queries(text: str) -> list[int]:
    out: list[int] = []
    for part in text.split(","):
        part = part.strip().lower().lstrip("q")
        if "-" in part:
            lo, hi = part.split("-", 1)
            out.extend(range(int(lo), int(hi) + 1))
        elif part:
            out.append(int(part))
    bad = [q for q in out if q not in QUERIES]
    if bad:
        raise argparse.ArgumentTypeError(f"no TPC-H query {bad}; queries are 1-22")
    return out


def _args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.tpch", description=__doc__)
    ap.add_argument("--sf", type=float, default=1.0, help="scale factor (default 1)")
    ap.add_argument("--reps", type=int, default=3, help="timed runs per query (default 3)")
    ap.add_argument(
        "--queries",
        type=_parse_queries,
        default=list(QUERIES),
        help="e.g. 1,6 or 1-5,9 (default all 22)",
    )
    ap.add_argument("--json", type=Path, help="write all measurements to this file")
    ap.add_argument(
        "--same-files",
        action="store_true",
        help="also time plain DuckDB over the Delta tables' own Parquet files (separates "
        "MatrixOS's overhead from the file layout)",
    )
    ap.add_argument(
        "--extras",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure import, connect, point query and small files (default on)",
    )
    a = ap.parse_args(argv)
    if a.reps < 1:
        ap.error("--reps must be at least 1")
    return a


def _query_table(results: list[QueryResult], sf: float, reps: int) -> Table:
    t = Table(
        title=f"TPC-H SF{sf:g}: median of {reps} timed runs after one warm-up (ms)",
        title_justify="left",
        caption="answer: MatrixOS's rows vs DuckDB on the raw Parquet and vs the reference "
        f"answers_sf{sf:g}/qNN.csv (where DuckDB ships them)",
        caption_justify="left",
    )
    t.add_column("query")
    t.add_column("DuckDB", justify="right")
    t.add_column("MatrixOS", justify="right")
    t.add_column("ratio", justify="right")
    same = all(r.same_files is not None for r in results)
    if same:
        t.add_column("DuckDB on\nDelta files", justify="right")
        t.add_column("MatrixOS /\nsame files", justify="right")
    t.add_column("planning", justify="right")
    t.add_column("rows", justify="right")
    t.add_column("answer")
    for r in results:
        ratio = f"{r.ratio:.2f}x"
        if r.ratio > 1.1:
            ratio = f"[yellow]{ratio}[/]"
        extra = []
        if same:
            s = r.same_files or float("nan")
            extra = [f"{s:,.1f}", f"{r.matrixos / s:.2f}x"]
        t.add_row(
            f"Q{r.query:02d}",
            f"{r.duckdb:,.1f}",
            f"{r.matrixos:,.1f}",
            ratio,
            *extra,
            f"{r.planning:.2f}",
            f"{r.rows:,}",
            "[green]ok[/]" if r.ok else "[red]WRONG[/]",
        )
    d = sum(r.duckdb for r in results)
    m = sum(r.matrixos for r in results)
    t.add_section()
    extra = []
    if same:
        s = sum(r.same_files or 0.0 for r in results)
        extra = [f"{s:,.1f}", f"[bold]{m / s:.2f}x[/]"]
    p = sum(r.planning for r in results)
    t.add_row(
        "total", f"{d:,.1f}", f"{m:,.1f}", f"[bold]{m / d:.2f}x[/]", *extra, f"{p:.1f}", "", ""
    )
    # Sums of each query's best run: noise on a shared machine only ever adds time.
    bd = sum(min(r.duckdb_ms) for r in results)
    bm = sum(min(r.matrixos_ms) for r in results)
    extra = []
    if same:
        bs = sum(min(r.same_files_ms) for r in results)
        extra = [f"{bs:,.1f}", f"{bm / bs:.2f}x"]
    t.add_row("sum of bests", f"{bd:,.1f}", f"{bm:,.1f}", f"{bm / bd:.2f}x", *extra, "", "", "")
    return t


def _summary(results: list[QueryResult], sf: float) -> str:
    """The issue's target metric on one line: the total ratio and MatrixOS's planning share."""
    d = sum(r.duckdb for r in results)
    m = sum(r.matrixos for r in results)
    p = sum(r.planning for r in results)
    first = [r.first_planning_ms for r in results]
    return (
        f"SF{sf:g}: MatrixOS / DuckDB = {m / d:.2f}x (medians; sum of bests "
        f"{sum(min(r.matrixos_ms) for r in results) / sum(min(r.duckdb_ms) for r in results):.2f}x)"
        f"; planning {p / len(results):.2f} ms per query, {100 * p / m:.1f} % of MatrixOS's time "
        f"(first run of each text: {sum(first) / len(first):.2f} ms per query)"
    )


def _extras_table(x: dict[str, Any]) -> Table:
    t = Table(title="Other targets", title_justify="left")
    t.add_column("measure")
    t.add_column("value", justify="right")
    t.add_column("how")
    if "import_ms" in x:
        t.add_row(
            "import matrixos",
            f"{x['import_ms']:.0f} ms",
            f"best of 5 subprocesses, minus bare python ({x['python_startup_ms']:.0f} ms)",
        )
    if "connect_ms" in x:
        t.add_row("mx.connect(existing)", f"{x['connect_ms']:.1f} ms", "best of 5, in-process")
    if "point_query_ms" in x:
        t.add_row(
            "point query",
            f"{x['point_query_ms']:.1f} ms",
            f"SELECT * FROM orders WHERE o_orderkey = k, median of 20 "
            f"({x['point_query_table_rows']:,} rows; DuckDB on Parquet "
            f"{x['point_query_duckdb_ms']:.1f} ms)",
        )
    if "small_files_scan_ratio" in x:
        t.add_row(
            "1,000 appends x 1,000 rows",
            f"{x['small_files_append_s']:.1f} s",
            f"{x['small_files_append_ms_each']:.1f} ms per append; auto-compaction left "
            f"{x['small_files_active_files']} active files at version {x['small_files_version']} "
            f"(one write: {x['one_write_active_files']} files, {x['one_write_s']:.1f} s)",
        )
        t.add_row(
            "full scan, appended / one write",
            f"{x['small_files_scan_ratio']:.2f}x",
            f"GROUP BY l_returnflag, median of {x['small_files_scan_reps']}: "
            f"{x['small_files_scan_ms']:.1f} ms vs "
            f"{x['one_write_scan_ms']:.1f} ms",
        )
    return t


def main(argv: list[str] | None = None) -> int:
    a = _args(argv)
    console = Console()

    def log(msg: str) -> None:
        console.print(f"[dim]{msg}[/]")

    data, warehouse = prepare(a.sf, log)
    load_before = os.getloadavg()[0]
    console.print(
        f"duckdb {duckdb.__version__}, python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, load average {load_before:.1f}; "
        f"queries {','.join(map(str, a.queries))}; {a.reps} reps"
    )

    def progress(r: QueryResult) -> None:
        state = "ok" if r.ok else "WRONG"
        log(f"Q{r.query:02d} duckdb {r.duckdb:.1f} ms, matrixos {r.matrixos:.1f} ms, {state}")

    results = run_queries(data, warehouse, a.queries, a.reps, progress, same_files=a.same_files)
    console.print(_query_table(results, a.sf, a.reps))
    console.print(_summary(results, a.sf))
    load_after = os.getloadavg()[0]
    log(f"load average {load_before:.1f} before the queries, {load_after:.1f} after")
    wrong = [r for r in results if not r.ok]
    for r in wrong:
        console.print(f"[red]Q{r.query:02d} answer differs:[/]")
        for p in r.problems:
            console.print(f"  {p}")

    x: dict[str, Any] = {}
    if a.extras:
        log("measuring import, connect and the point query …")
        x.update(extras.import_time())
        x.update(extras.connect_time(warehouse))
        x.update(extras.point_query(data, warehouse))
        log("small files: 1,000 appends of 1,000 rows …")
        x.update(extras.small_files(data, warehouse, log))
        console.print(_extras_table(x))

    if a.json:
        d = sum(r.duckdb for r in results)
        m = sum(r.matrixos for r in results)
        doc = {
            "scale_factor": a.sf,
            "reps": a.reps,
            "statistic": "median",
            "duckdb_version": duckdb.__version__,
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "load_average_before_after": [load_before, load_after],
            "queries": [r.to_json() for r in results],
            "total_duckdb_ms": d,
            "total_matrixos_ms": m,
            "total_ratio": m / d,
            "planning_ms_per_query": sum(r.planning for r in results) / len(results),
            "first_planning_ms_per_query": sum(r.first_planning_ms for r in results) / len(results),
            "total_duckdb_best_ms": sum(min(r.duckdb_ms) for r in results),
            "total_matrixos_best_ms": sum(min(r.matrixos_ms) for r in results),
            "total_duckdb_same_files_ms": sum(r.same_files or 0.0 for r in results)
            if a.same_files
            else None,
            "all_answers_ok": not wrong,
            "extras": x,
        }
        a.json.write_text(json.dumps(doc, indent=2))
        log(f"wrote {a.json}")
    if wrong:
        console.print(f"[red bold]{len(wrong)} answer(s) differ[/]")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
