"""The cluster of docker/compose.yaml as local processes (`matrixos cluster up`): how long it
takes to start and stop, and the walk-through's steps against it.

    .venv/bin/python -m benchmarks.cluster [--workers 1] [--rows 20000] [--reps 5] [--json out.json]

Reported (seconds; medians of --reps where repeated): `up`, an INSERT of --rows rows through the
PostgreSQL wire, a GROUP BY over the table through the wire (the server's pool), the same query
as distributed SQL from a joined driver (`engine="ray"`), a 1-GPU job's submit-to-SUCCEEDED,
and `down`. The machine's load average is printed beside them (shared machines are noisy).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from matrixos.cluster.launcher import cluster_down, cluster_up


def _median(fn: Any, reps: int) -> float:
    samples = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


def run(workers: int, rows: int, reps: int) -> dict[str, Any]:
    import psycopg

    import matrixos as mx
    from matrixos.catalog.accounts import Accounts

    out: dict[str, Any] = {"workers": workers, "rows": rows, "reps": reps}
    folder = Path(tempfile.mkdtemp(prefix="mx-bench-cluster-"))
    t = time.perf_counter()
    state = cluster_up(folder / "cluster", workers=workers, gpu_workers=1)
    out["up_s"] = time.perf_counter() - t
    saved = dict(os.environ)
    try:
        os.environ.update(state.env)
        dsn = f"host=127.0.0.1 port={state.pg_port} dbname=main user=admin"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("CREATE SCHEMA IF NOT EXISTS bench")
            conn.execute("CREATE TABLE bench.t (id BIGINT, k INT, v DOUBLE PRECISION)")
            values = ", ".join(f"({i}, {i % 97}, {i * 0.5})" for i in range(rows))
            t = time.perf_counter()
            conn.execute(f"INSERT INTO bench.t VALUES {values}")
            out["pg_insert_s"] = time.perf_counter() - t
            query = "SELECT k, count(*), sum(v) FROM bench.t GROUP BY k"
            out["pg_groupby_s"] = _median(lambda: conn.execute(query).fetchall(), reps)
        with mx.connect() as lh:
            admin = lh.with_principal(Accounts(lh.catalog).principal("admin"))
            admin.sql(query, engine="ray").fetchall()  # joins the pool
            out["ray_groupby_s"] = _median(lambda: admin.sql(query, engine="ray").fetchall(), reps)
            script = folder / "job.py"
            script.write_text("print('ok')\n")

            def job() -> None:
                j = admin.jobs.submit(str(script), gpus=1, accelerators=["L4"])
                assert j.wait(timeout=300) == "SUCCEEDED"

            out["gpu_job_s"] = _median(job, max(1, reps // 2))
    finally:
        os.environ.clear()
        os.environ.update(saved)
        t = time.perf_counter()
        cluster_down(folder / "cluster")
        out["down_s"] = time.perf_counter() - t
    out["load_average"] = os.getloadavg()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="matrixos cluster up: start, walk-through, stop")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = run(args.workers, args.rows, args.reps)
    for key, value in result.items():
        print(f"{key:16} {value:.2f}" if isinstance(value, float) else f"{key:16} {value}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
