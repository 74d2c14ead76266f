"""``python -m benchmarks.iot_queries [--quick] [--hosts 1000] [--hours 28] [--reps 5]
[--wal-steps 6] [--json out.json]``

TSBS's ``cpu-only`` query types over one table of CPU readings (a row every 10 s per host, 10
float fields, tags hostname/region/datacenter/service): MatrixOS (``lh.sql`` over a Delta
table partitioned by day, rows sorted by (hostname, time)) against plain DuckDB over the same
rows as sorted Parquet, in the same process and run, with the same DuckDB thread count.

The newest ``--wal-steps`` readings of every host are not committed: they are written as line
protocol through ``IotIngest`` with its flusher stopped, so they sit acknowledged in its
write-ahead log and every MatrixOS query unions them into its scan (read-your-writes); DuckDB
reads the same rows from a second Parquet file. Both sides answer over identical rows (the
answers are compared).

The full scale (1,000 hosts x 28 h = 10.08M rows = 100.8M field values) needs ~3 GB of disk
under ``$TMPDIR/matrixos-bench/iot`` (kept: a re-run starts at once) and ~8 GB of memory while
generating. ``--quick`` is 100 hosts x 3 h for trying.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

FIELDS = [
    "usage_user", "usage_system", "usage_idle", "usage_nice", "usage_iowait",
    "usage_irq", "usage_softirq", "usage_steal", "usage_guest", "usage_guest_nice",
]  # fmt: skip
START = datetime(2016, 1, 1)  # TSBS's default start
STEP = timedelta(seconds=10)
SEED = 123
THREADS = 2


# -- data -------------------------------------------------------------------------------------
def generate(hosts: int, steps: int) -> pa.Table:
    """TSBS-like rows sorted by (hostname, time): each field a random walk in [0, 100]."""
    rng = np.random.default_rng(SEED)
    n = hosts * steps
    host_idx = np.repeat(np.arange(hosts, dtype=np.int32), steps)
    step_idx = np.tile(np.arange(steps, dtype=np.int64), hosts)
    start_us = int(START.replace(tzinfo=UTC).timestamp() * 1_000_000)
    times = start_us + step_idx * int(STEP.total_seconds() * 1_000_000)
    cols: dict[str, Any] = {
        "time": pa.array(times, pa.timestamp("us", "UTC")),
        "hostname": _tag([f"host_{i}" for i in range(hosts)], host_idx),
        "region": _tag([f"region_{i}" for i in range(9)], host_idx % 9),
        "datacenter": _tag([f"dc_{i}" for i in range(40)], host_idx % 40),
        "service": _tag([str(i) for i in range(20)], host_idx % 20),
    }
    for f in FIELDS:
        walk = rng.normal(0, 1, size=(hosts, steps)).cumsum(axis=1)
        walk += rng.uniform(0, 100, size=(hosts, 1))
        cols[f] = pa.array(np.abs((walk % 200) - 100).reshape(n))  # reflected into [0, 100]
    days = (times - start_us) // 86_400_000_000
    cols["day"] = pa.array(
        (np.datetime64(START.date()) + days.astype("timedelta64[D]")).astype("datetime64[D]")
    )
    return pa.table(cols)


def _tag(values: list[str], idx: np.ndarray) -> pa.Array:
    return pa.DictionaryArray.from_arrays(pa.array(idx, pa.int32()), pa.array(values)).cast(
        pa.string()
    )


def prepare(root: Path, hosts: int, hours: int, wal_steps: int) -> dict[str, Any]:
    """The Parquet files (committed part sorted, WAL part) and the MatrixOS warehouse."""

    steps = hours * 360
    key = f"h{hosts}_t{hours}_w{wal_steps}_utc"
    folder = root / key
    done = folder / "done.json"
    if done.exists():
        info = json.loads(done.read_text())
        if not _warehouse_as_made(folder):  # written to since (by hand, another run…)
            shutil.rmtree(folder / "warehouse", ignore_errors=True)
            t1 = time.perf_counter()
            _make_table(folder, pq.read_table(folder / "cpu.parquet"))
            info["delta_write_s"] = round(time.perf_counter() - t1, 1)
        return info
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    t0 = time.perf_counter()
    data = generate(hosts, steps)
    wal_start = START + STEP * (steps - wal_steps)
    ts = data.column("time")
    import pyarrow.compute as pc

    cut = pa.scalar(wal_start.replace(tzinfo=UTC), pa.timestamp("us", "UTC"))
    committed = data.filter(pc.less(ts, cut))
    wal = data.filter(pc.greater_equal(ts, cut))
    del data
    gen_s = time.perf_counter() - t0
    pq.write_table(committed, folder / "cpu.parquet", row_group_size=122_880)
    pq.write_table(wal, folder / "wal.parquet")
    t1 = time.perf_counter()
    _make_table(folder, committed)
    info = {
        "hosts": hosts,
        "hours": hours,
        "rows": committed.num_rows + wal.num_rows,
        "wal_rows": wal.num_rows,
        "field_values": (committed.num_rows + wal.num_rows) * len(FIELDS),
        "generate_s": round(gen_s, 1),
        "delta_write_s": round(time.perf_counter() - t1, 1),
        "end": (START + STEP * steps).isoformat(),
        "folder": str(folder),
    }
    done.write_text(json.dumps(info))
    return info


def _make_table(folder: Path, committed: pa.Table) -> None:
    """``bench.cpu``: a series table with the properties the IoT ingest gives one (its tags,
    its sort order for compaction), holding the committed rows (already in that order)."""
    import matrixos as mx
    from matrixos.iot.series import table_properties

    with mx.connect(str(folder / "warehouse")) as lh:
        props = table_properties(["hostname", "region", "datacenter", "service"])
        lh.create_table("bench.cpu", committed, partition_by=["day"], properties=props)


def _warehouse_as_made(folder: Path) -> bool:
    """Whether ``bench.cpu`` still holds only what ``prepare`` wrote (its first version)."""
    import matrixos as mx

    try:
        with mx.connect(str(folder / "warehouse")) as lh:
            return lh.table("bench.cpu").version == 0
    except mx.MatrixOSError:
        return False


def line_protocol(rows: pa.Table) -> str:
    """``rows`` as InfluxDB line protocol (microsecond timestamps)."""
    out = []
    us = rows.column("time").cast(pa.int64()).to_pylist()
    cols = {c: rows.column(c).to_pylist() for c in rows.column_names}
    for i in range(rows.num_rows):
        tags = ",".join(
            f"{t}={cols[t][i]}" for t in ("hostname", "region", "datacenter", "service")
        )
        fields = ",".join(f"{f}={cols[f][i]!r}" for f in FIELDS)
        out.append(f"cpu,{tags} {fields} {us[i]}")
    return "\n".join(out)


# -- queries ----------------------------------------------------------------------------------
def queries(info: dict[str, Any]) -> dict[str, str]:
    """TSBS cpu-only query types (TimescaleDB's forms), ``{t}`` the table."""
    rng = np.random.default_rng(7)
    end = datetime.fromisoformat(info["end"])
    hours = int(info["hours"])

    def window(h: int) -> tuple[str, str]:
        latest = max(0, hours - h)
        start = START + timedelta(hours=int(rng.integers(0, latest + 1)))
        return start.isoformat(sep=" "), (start + timedelta(hours=h)).isoformat(sep=" ")

    def hosts(k: int) -> str:
        picked = rng.choice(int(info["hosts"]), size=k, replace=False)
        return ", ".join(f"'host_{i}'" for i in sorted(picked))

    def span(a: str, b: str) -> str:
        return f"time >= TIMESTAMP '{a}' AND time < TIMESTAMP '{b}'"

    max5 = ", ".join(f"max({f}) AS {f}" for f in FIELDS[:5])
    avg_all = ", ".join(f"avg({f}) AS {f}" for f in FIELDS)
    a1, b1 = window(1)
    a8, b8 = window(1)
    a12, b12 = window(min(12, hours))
    a12b, b12b = window(min(12, hours))
    h12 = window(min(12, hours))
    last_end = (end - timedelta(minutes=int(rng.integers(0, 60)))).isoformat(sep=" ")
    return {
        "single-groupby-1-1-1": (
            "SELECT time_bucket(INTERVAL '1 minute', time) AS minute, max(usage_user) "
            f"FROM {{t}} WHERE hostname IN ({hosts(1)}) AND {span(a1, b1)} "
            "GROUP BY minute ORDER BY minute"
        ),
        "single-groupby-5-8-1": (
            f"SELECT time_bucket(INTERVAL '1 minute', time) AS minute, {max5} "
            f"FROM {{t}} WHERE hostname IN ({hosts(8)}) AND {span(a8, b8)} "
            "GROUP BY minute ORDER BY minute"
        ),
        "double-groupby-1": (
            "SELECT time_bucket(INTERVAL '1 hour', time) AS hour, hostname, avg(usage_user) "
            f"FROM {{t}} WHERE {span(a12, b12)} GROUP BY hour, hostname ORDER BY hour, hostname"
        ),
        "double-groupby-all": (
            f"SELECT time_bucket(INTERVAL '1 hour', time) AS hour, hostname, {avg_all} "
            f"FROM {{t}} WHERE {span(a12b, b12b)} GROUP BY hour, hostname ORDER BY hour, hostname"
        ),
        "lastpoint": "SELECT DISTINCT ON (hostname) * FROM {t} ORDER BY hostname, time DESC",
        "high-cpu-1": (
            f"SELECT * FROM {{t}} WHERE usage_user > 90.0 AND {span(*h12)} "
            f"AND hostname IN ({hosts(1)}) ORDER BY time"
        ),
        "high-cpu-all": (
            f"SELECT * FROM {{t}} WHERE usage_user > 90.0 AND {span(a12, b12)} "
            "ORDER BY hostname, time"
        ),
        "groupby-orderby-limit": (
            "SELECT time_bucket(INTERVAL '1 minute', time) AS minute, max(usage_user) "
            f"FROM {{t}} WHERE time < TIMESTAMP '{last_end}' "
            "GROUP BY minute ORDER BY minute DESC LIMIT 5"
        ),
    }


def timed_pair(
    a: Callable[[], pa.Table], b: Callable[[], pa.Table], reps: int
) -> tuple[tuple[float, float, float, pa.Table], tuple[float, float, float, pa.Table]]:
    """Each side's (cold, warm median, warm median CPU) seconds and answer; the warm runs
    alternate a, b, a, … so that load from elsewhere on the machine falls on both sides alike.
    CPU: this process's (all its threads, DuckDB's too), which a loaded machine disturbs less
    than the wall clock."""
    cold = []
    outs = []
    for fn in (a, b):
        t0 = time.perf_counter()
        outs.append(fn())
        cold.append(time.perf_counter() - t0)
    warm: list[list[float]] = [[], []]
    cpu: list[list[float]] = [[], []]
    for _ in range(reps):
        for i, fn in enumerate((a, b)):
            t0, c0 = time.perf_counter(), time.process_time()
            outs[i] = fn()
            warm[i].append(time.perf_counter() - t0)
            cpu[i].append(time.process_time() - c0)
    return (
        (cold[0], statistics.median(warm[0]), statistics.median(cpu[0]), outs[0]),
        (cold[1], statistics.median(warm[1]), statistics.median(cpu[1]), outs[1]),
    )


def same(a: pa.Table, b: pa.Table) -> bool:
    if a.num_rows != b.num_rows:
        return False
    a = a.rename_columns([str(i) for i in range(a.num_columns)])
    b = b.rename_columns([str(i) for i in range(b.num_columns)]).cast(a.schema)
    return bool(a.equals(b))


def run(info: dict[str, Any], reps: int, only: list[str] | None) -> list[dict[str, Any]]:
    import duckdb

    import matrixos as mx
    from matrixos.iot.ingest import IotIngest

    folder = Path(info["folder"])
    lh = mx.connect(str(folder / "warehouse"), duckdb_threads=THREADS)
    wal_dir = tempfile.mkdtemp(prefix="matrixos-bench-wal-")
    ingest = IotIngest(lh, wal_dir, start=False)  # no flusher: the points stay in the log
    ack = ingest.write_lines(
        lh.principal, "bench.cpu", line_protocol(pq.read_table(folder / "wal.parquet")), "us"
    )
    assert ingest.uncommitted == ack.points == info["wal_rows"], ack
    con = duckdb.connect()
    con.execute(f"SET threads = {THREADS}")
    con.execute("SET TimeZone = 'UTC'")
    files = f"read_parquet(['{folder / 'cpu.parquet'}', '{folder / 'wal.parquet'}'])"
    rows = []
    try:
        for name, sql in queries(info).items():
            if only and name not in only:
                continue
            (mx_cold, mx_warm, mx_cpu, mx_out), (dk_cold, dk_warm, dk_cpu, dk_out) = timed_pair(
                lambda s=sql: lh.sql(s.format(t="bench.cpu")).to_arrow(),  # type: ignore[misc]
                lambda s=sql: con.sql(s.format(t=files)).to_arrow_table(),  # type: ignore[misc]
                reps,
            )
            if name in ("high-cpu-all", "lastpoint", "double-groupby-all", "double-groupby-1"):
                ok = mx_out.num_rows == dk_out.num_rows
            else:
                ok = same(mx_out, dk_out)
            row = {
                "query": name,
                "rows": mx_out.num_rows,
                "matrixos_cold_ms": round(mx_cold * 1000, 1),
                "matrixos_warm_ms": round(mx_warm * 1000, 1),
                "duckdb_cold_ms": round(dk_cold * 1000, 1),
                "duckdb_warm_ms": round(dk_warm * 1000, 1),
                "ratio_warm": round(mx_warm / dk_warm, 2),
                "matrixos_cpu_ms": round(mx_cpu * 1000, 1),
                "duckdb_cpu_ms": round(dk_cpu * 1000, 1),
                "ratio_cpu": round(mx_cpu / max(dk_cpu, 1e-6), 2),
                "same_answer": ok,
            }
            rows.append(row)
            print(
                f"{name:24} {row['rows']:>8} rows  MatrixOS {row['matrixos_warm_ms']:>8.1f} ms "
                f"(cold {row['matrixos_cold_ms']:>8.1f})  DuckDB {row['duckdb_warm_ms']:>8.1f} ms "
                f"(cold {row['duckdb_cold_ms']:>8.1f})  x{row['ratio_warm']:<5} "
                f"CPU x{row['ratio_cpu']:<5} "
                f"{'same' if ok else 'DIFFERENT'}",
                flush=True,
            )
    finally:
        ingest.close(flush=False)
        shutil.rmtree(wal_dir, ignore_errors=True)
        lh.close()
        con.close()
    return rows


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    p.add_argument("--quick", action="store_true", help="100 hosts x 3 h")
    p.add_argument("--hosts", type=int, default=1000)
    p.add_argument("--hours", type=int, default=28)
    p.add_argument("--wal-steps", type=int, default=6, help="newest readings left in the WAL")
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--only", nargs="*", help="query types to run")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    if args.quick:
        args.hosts, args.hours = 100, 3
    root = Path(os.environ.get("TMPDIR") or tempfile.gettempdir()) / "matrixos-bench" / "iot"
    info = prepare(root, args.hosts, args.hours, args.wal_steps)
    print(
        f"{info['rows']:,} rows ({info['field_values']:,} field values; {info['wal_rows']:,} "
        f"rows in the WAL) — generated in {info['generate_s']} s, Delta write "
        f"{info['delta_write_s']} s; {THREADS} DuckDB threads each side",
        flush=True,
    )
    rows = run(info, args.reps, args.only)
    ratios = [r["ratio_warm"] for r in rows]
    if ratios:
        geo = float(np.exp(np.mean(np.log(ratios))))
        cpu = float(np.exp(np.mean(np.log([r["ratio_cpu"] for r in rows]))))
        print(f"geometric mean of warm ratios: x{geo:.2f} (CPU time: x{cpu:.2f})")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"info": info, "machine": platform.platform(), "rows": rows}, indent=2)
        )


if __name__ == "__main__":
    main()
