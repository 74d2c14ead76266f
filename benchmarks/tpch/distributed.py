"""``python -m benchmarks.tpch.distributed [--sf 1] [--files 4] [--reps 1] [--queries 1-22]``

The 22 TPC-H queries through MatrixOS with ``engine="local"`` and ``engine="ray"`` (a private
Ray runtime on this machine, ``compute="ray"``), each table of more than 1,000 rows loaded as
``--files`` Delta files so scans split into fragments. Prints the median time per query and
engine and the total ratio; exits 1 when a distributed answer differs from the local one.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from functools import partial
from typing import Literal

import pyarrow as pa

import matrixos as mx
from benchmarks.tpch.__main__ import _parse_queries
from benchmarks.tpch.bench import DATA_ROOT, _timed
from matrixos.tpch import QUERIES, generate, load_split


def _run(lh: mx.Lakehouse, sql: str, engine: Literal["local", "ray"]) -> pa.Table:
    return lh.sql(sql, engine=engine).to_arrow()


def _same(a: pa.Table, b: pa.Table) -> bool:
    if a.schema != b.schema or a.num_rows != b.num_rows:
        return False
    if a.equals(b):
        return True
    for name in a.column_names:
        x, y = a[name].to_pylist(), b[name].to_pylist()
        if pa.types.is_floating(a.schema.field(name).type):
            if any(abs(p - q) > 1e-9 * max(1.0, abs(p)) for p, q in zip(x, y, strict=True)):
                return False
        elif x != y:
            return False
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.tpch.distributed")
    ap.add_argument("--sf", type=float, default=1.0)
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--queries", default="1-22")
    args = ap.parse_args(argv)
    queries = _parse_queries(args.queries) if args.queries else list(QUERIES)
    data = generate(DATA_ROOT / f"sf{args.sf:g}", args.sf, log=print)
    warehouse = data.root / f"warehouse-{args.files}files"
    with mx.connect(str(warehouse), compute="ray") as lh:
        t0 = time.perf_counter()
        if not lh.tables():
            load_split(lh, data, args.files)
        print(f"warehouse {warehouse} ready ({time.perf_counter() - t0:.1f}s)")
        lh.sql("SELECT count(*) FROM nation", engine="ray").to_arrow()  # start the runtime
        print(f"{'query':>5} {'local ms':>9} {'ray ms':>9} {'ratio':>6}  answer")
        totals = [0.0, 0.0]
        bad = 0
        for n in queries:
            sql = data.query(n)
            want = lh.sql(sql, engine="local").to_arrow()
            got = lh.sql(sql, engine="ray").to_arrow()
            ok = _same(want, got)
            bad += not ok
            times: list[list[float]] = [[], []]
            for r in range(args.reps):
                order = [0, 1] if r % 2 == 0 else [1, 0]
                for k in order:
                    run = partial(_run, lh, sql, "local" if k == 0 else "ray")
                    times[k].append(_timed(run))
            local, dist = statistics.median(times[0]), statistics.median(times[1])
            totals[0] += local
            totals[1] += dist
            print(
                f"Q{n:02d}  {local:9.1f} {dist:9.1f} {dist / local:5.2f}x  "
                + ("ok" if ok else "DIFFERS")
            )
        print(
            f"total {totals[0]:9.1f} {totals[1]:9.1f} {totals[1] / totals[0]:5.2f}x  ({bad} differ)"
        )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
