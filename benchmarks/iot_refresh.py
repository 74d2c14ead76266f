"""``python -m benchmarks.iot_refresh [--hosts 1000] [--hours 28] [--batches 5]``

A continuous aggregate's incremental refresh against a full recompute: the TSBS ``cpu-only``
rows of ``benchmarks.iot_queries`` (default 10.08M rows) in a fresh warehouse, a view of
one-minute averages per host over them (1.68M rows), then ``--batches`` times: one new reading
per host appended (1,000 rows) and ``REFRESH MATERIALIZED VIEW`` timed. For comparison the
view's query over the whole source, and that query plus an overwrite of the view (what a
refresh without change tracking would do).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time

import pyarrow as pa
import pyarrow.compute as pc

from benchmarks.iot_queries import STEP, generate

VIEW = (
    "SELECT time_bucket('1 minute', time) AS bucket, hostname, avg(usage_user) AS usage_user, "
    "max(usage_system) AS usage_system, count(*) AS n FROM bench.cpu GROUP BY 1, 2"
)


def main(argv: list[str] | None = None) -> None:
    import matrixos as mx

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    p.add_argument("--hosts", type=int, default=1000)
    p.add_argument("--hours", type=int, default=28)
    p.add_argument("--batches", type=int, default=5)
    args = p.parse_args(argv)
    root = tempfile.mkdtemp(prefix="matrixos-bench-refresh-")
    try:
        data = generate(args.hosts, args.hours * 360)
        lh = mx.connect(root, duckdb_threads=2)
        src = lh.create_table("bench.cpu", data, partition_by=["day"])
        t0 = time.perf_counter()
        lh.sql(f"CREATE MATERIALIZED VIEW bench.cpu_1m AS {VIEW}")
        create_s = time.perf_counter() - t0
        rows = lh.sql("SELECT count(*) FROM bench.cpu_1m").scalar()
        newest = data.filter(pc.equal(data.column("time"), pc.max(data["time"])))
        times = []
        for k in range(1, args.batches + 1):
            step = newest.set_column(
                0,
                "time",
                pc.add(newest.column("time"), pa.scalar(STEP * k, pa.duration("us"))),
            )
            src.append(step)
            t1 = time.perf_counter()
            out = lh.sql("REFRESH MATERIALIZED VIEW bench.cpu_1m").to_arrow().to_pylist()[0]
            times.append(time.perf_counter() - t1)
            print(
                f"refresh {k}: {times[-1] * 1000:.0f} ms, {out['rows']} rows rewritten", flush=True
            )
        t2 = time.perf_counter()
        full = lh.sql(VIEW).to_arrow()
        query_s = time.perf_counter() - t2
        lh.table("bench.cpu_1m").overwrite(full)
        full_s = time.perf_counter() - t2
        print(
            f"{data.num_rows:,} source rows, {rows:,} view rows: CREATE {create_s:.1f} s; "
            f"incremental REFRESH median {statistics.median(times) * 1000:.0f} ms; "
            f"full recompute {query_s:.1f} s (+ overwrite: {full_s:.1f} s)"
        )
        lh.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
