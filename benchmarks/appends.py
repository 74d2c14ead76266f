"""``python -m benchmarks.appends [--appends 1000] [--rows 1000] [--json out.json]``

Many small appends through the public API (``lh.table(...).append``) beside plain
``deltalake.write_deltalake`` appends of the same batches to a table of its own, interleaved
batch by batch in one run so that a loaded machine slows both alike. Reported: the median and
p99 time per append commit over all and over the last 100 (the table then has ``--appends``
versions), the versions and active files left once the background upkeep the appends asked for
(auto-compaction, checkpoints) is done, and a full scan (``GROUP BY`` over every row through
``lh.sql``, the tables taking turns, median of 15) of the appended table beside the same rows
written once: wall time, and the process's CPU time (all threads), which a loaded machine
disturbs less.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from typing import Any

import numpy as np
import pyarrow as pa


def _batch(i: int, rows: int) -> pa.Table:
    rng = np.random.default_rng(i)
    ids = np.arange(i * rows, (i + 1) * rows, dtype=np.int64)
    return pa.table(
        {
            "id": ids,
            "sensor": pa.array(ids % 97, pa.int32()),
            "value": rng.random(rows),
            "flag": pa.array((ids % 3).astype(str)),
        }
    )


def _stats(ms: list[float]) -> dict[str, float]:
    s = sorted(ms)
    return {
        "p50_ms": round(statistics.median(s), 2),
        "p99_ms": round(s[min(len(s) - 1, int(len(s) * 0.99))], 2),
        "mean_ms": round(statistics.fmean(s), 2),
    }


def _scan_ms(lh: Any, tables: list[str], reps: int = 15) -> dict[str, dict[str, float]]:
    """Median wall and CPU ms of a full-scan aggregate through ``lh.sql``, the tables taking
    turns (after one untimed query each)."""
    wall: dict[str, list[float]] = {k: [] for k in tables}
    cpu: dict[str, list[float]] = {k: [] for k in tables}
    for rep in range(reps + 1):
        for name in tables:
            t0, c0 = time.perf_counter(), time.process_time()
            lh.sql(f"SELECT flag, count(*), sum(value) FROM {name} GROUP BY flag").to_arrow()
            if rep:
                wall[name].append((time.perf_counter() - t0) * 1e3)
                cpu[name].append((time.process_time() - c0) * 1e3)
    return {
        k: {
            "wall": round(statistics.median(wall[k]), 2),
            "cpu": round(statistics.median(cpu[k]), 2),
        }
        for k in tables
    }


def run(appends: int, rows: int) -> dict[str, Any]:
    from deltalake import DeltaTable, write_deltalake

    import matrixos as mx
    from matrixos.storage.delta import wait_for_maintenance

    root = tempfile.mkdtemp(prefix="mx-appends-")
    lh = mx.connect(root + "/wh")
    plain = root + "/plain"
    lh.sql("SELECT 1").fetchall()  # the SQL engine loaded before anything is timed
    t = lh.create_table("bench.events", _batch(0, rows))
    write_deltalake(plain, _batch(0, rows))
    plain_dt = DeltaTable(plain)
    mx_ms: list[float] = []
    dl_ms: list[float] = []
    for i in range(1, appends + 1):
        b = _batch(i, rows)
        if i % 2:  # alternate who goes first
            t0 = time.perf_counter()
            t.append(b)
            mx_ms.append((time.perf_counter() - t0) * 1e3)
            t0 = time.perf_counter()
            write_deltalake(plain_dt, b, mode="append")
            dl_ms.append((time.perf_counter() - t0) * 1e3)
        else:
            t0 = time.perf_counter()
            write_deltalake(plain_dt, b, mode="append")
            dl_ms.append((time.perf_counter() - t0) * 1e3)
            t0 = time.perf_counter()
            t.append(b)
            mx_ms.append((time.perf_counter() - t0) * 1e3)
    t0 = time.perf_counter()
    wait_for_maintenance()
    settle_ms = (time.perf_counter() - t0) * 1e3
    lh.create_table("bench.once", pa.concat_tables([_batch(i, rows) for i in range(appends + 1)]))
    scans = _scan_ms(lh, ["bench.events", "bench.once"])
    mx_files = DeltaTable(t.location).file_uris()
    return {
        "appends": appends,
        "rows_per_append": rows,
        "matrixos_append": {**_stats(mx_ms), "last100": _stats(mx_ms[-100:])},
        "write_deltalake_append": {**_stats(dl_ms), "last100": _stats(dl_ms[-100:])},
        "ratio_p50": round(statistics.median(mx_ms) / statistics.median(dl_ms), 2),
        "version": t.version,
        "active_files": len(mx_files),
        "plain_active_files": len(plain_dt.file_uris()),
        "upkeep_left_after_last_append_ms": round(settle_ms, 1),
        "scan_ms": scans,
        "scan_ratio_wall": round(scans["bench.events"]["wall"] / scans["bench.once"]["wall"], 2),
        "scan_ratio_cpu": round(scans["bench.events"]["cpu"] / scans["bench.once"]["cpu"], 2),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--appends", type=int, default=1000)
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    out = run(args.appends, args.rows)
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
