"""``python -m benchmarks.s3_plans [--rows 100000] [--queries 50]``

Repeated statements on a Delta table in an S3 warehouse (a moto server on loopback, in a child
process that counts the requests it serves: ``benchmarks/_moto.py``), through the call a user
makes: ``lh.sql(text)``. Each statement (a point query and an aggregate) runs ``--queries``
times as the same text (its kept plan: engine/sql/plans.py, with the table's version checked
by one LIST of its Delta log, ``DeltaStore.is_latest``) and as a new text each time (a comment:
planned again). Reported per statement: p50 and p90 ms and the S3 requests the server saw, by
method (GET includes LIST).

On moto every request costs ~1.5-3 ms of the server's Python; on S3 a request costs more (a
HEAD or a small GET ~10-30 ms), so the request count is the figure that carries over.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks._moto import MotoS3

STATEMENTS = {
    "point query": "SELECT * FROM bench.points WHERE id = 4242",
    "aggregate": "SELECT count(*), sum(v), max(s) FROM bench.points",
}


def run(rows: int, queries: int) -> dict[str, Any]:
    import numpy as np
    import pyarrow as pa

    import matrixos as mx

    out: dict[str, Any] = {"rows": rows, "queries": queries, "load_before": os.getloadavg()[0]}
    with MotoS3() as moto:
        uri, options = moto.bucket()
        with mx.connect(uri, storage_options=options) as lh:
            rng = np.random.default_rng(0)
            lh.create_table(
                "bench.points",
                pa.table(
                    {
                        "id": np.arange(rows, dtype=np.int64),
                        "v": rng.random(rows),
                        "s": pa.array([f"row {i}" for i in range(rows)]),
                    }
                ),
            )
            for label, sql in STATEMENTS.items():
                for how in ("kept plan", "planned each time"):
                    lh.sql(sql).fetchall()  # the plan kept (and the first read) before timing
                    moto.counts()
                    samples = []
                    plans = set()
                    for i in range(queries):
                        text = sql if how == "kept plan" else f"{sql} -- {i}"
                        t0 = time.perf_counter()
                        res = lh.sql(text)
                        res.fetchall()
                        samples.append((time.perf_counter() - t0) * 1e3)
                        plans.add(res.stats.get("plan", "planned"))
                    counts = moto.counts()
                    per = {k: round(v / queries, 2) for k, v in sorted(counts.items())}
                    out[f"{label}, {how}"] = {
                        "p50_ms": statistics.median(samples),
                        "p90_ms": float(np.percentile(samples, 90)),
                        "requests_per_statement": per,
                        "plan": sorted(plans),
                    }
    out["load_after"] = os.getloadavg()[0]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.s3_plans", description=__doc__)
    ap.add_argument("--rows", type=int, default=100_000, help="table rows (default 100000)")
    ap.add_argument("--queries", type=int, default=50, help="runs per statement (default 50)")
    ap.add_argument("--json", type=Path, help="write the measurements to this file")
    a = ap.parse_args(argv)
    out = run(a.rows, a.queries)
    print(
        f"S3 (moto on loopback), {a.rows:,} rows, {a.queries} runs per statement; load "
        f"{out['load_before']:.1f} before, {out['load_after']:.1f} after"
    )
    print(f"{'statement':<36} {'p50 ms':>8} {'p90 ms':>8}  S3 requests per statement")
    for label in STATEMENTS:
        for how in ("kept plan", "planned each time"):
            m = out[f"{label}, {how}"]
            reqs = ", ".join(f"{k} {v:g}" for k, v in m["requests_per_statement"].items())
            print(f"{label + ', ' + how:<36} {m['p50_ms']:>8.2f} {m['p90_ms']:>8.2f}  {reqs}")
    if a.json:
        a.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
