"""The PostgreSQL wire vs in process, and vs a real PostgreSQL, in one run.

    .venv/bin/python -m benchmarks.server_pg [--reps 300] [--rows 1000000] [--fetches 3]

Starts the MatrixOS wire server (``start_pg_server``, SCRAM off: ``auth="trust"``) in its own
process on a free 127.0.0.1 port over a fresh warehouse holding one table of ``--rows`` rows x 4
columns (bigint, double, text, integer), and a throwaway PostgreSQL 15 (the tests' helper)
holding the same rows, then times with psycopg 3 (extended protocol, text results):

* ``SELECT 1``: in-process ``lh.sql(...).fetchall()``, psycopg over the MatrixOS wire, and
  psycopg against PostgreSQL: medians and p99 over ``--reps`` after 20 warm-up calls; the
  wire's overhead is its median minus in-process's.
* every row: ``SELECT * FROM t`` fetched whole by psycopg from both servers, best and median
  of ``--fetches``; reports the ratio (the issue's bar: at most 1.5x PostgreSQL's time).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psycopg
import pyarrow as pa

import matrixos as mx
from benchmarks.server_http import times

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _servers import PostgresServer  # the tests' throwaway PostgreSQL

SERVE = """
import sys, matrixos as mx
from matrixos.server.pgwire import start_pg_server
lh = mx.connect(sys.argv[1], create=False)
handle = start_pg_server(lh, port=0, auth="trust")
print(handle.port, flush=True)
sys.stdin.read()
handle.stop()
"""


def ms(xs: list[float]) -> str:
    xs = sorted(xs)
    p99 = xs[min(len(xs) - 1, int(len(xs) * 0.99))]
    return f"p50 {statistics.median(xs) * 1e3:.3f} ms, p99 {p99 * 1e3:.3f} ms"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=300)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--fetches", type=int, default=3)
    args = ap.parse_args()
    n = args.rows
    wh = tempfile.mkdtemp(prefix="mx-bench-pg-")
    lh = mx.connect(wh)
    rng = np.random.default_rng(0)
    data = pa.table(
        {
            "id": np.arange(n, dtype=np.int64),
            "x": rng.random(n),
            "s": pa.array([f"row{i}" for i in range(n)]),
            "d": pa.array(np.arange(n) % 1000, pa.int32()),
        }
    )
    lh.create_table("b.t", data)
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, wh], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    pg = PostgresServer()
    pg.start()
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        mxc = psycopg.connect(host="127.0.0.1", port=port, user="bench", dbname="main")
        mxc.autocommit = True
        real = psycopg.connect(pg.dsn())
        real.autocommit = True
        real.execute("CREATE TABLE t (id bigint, x double precision, s text, d integer)")
        with real.cursor().copy("COPY t FROM STDIN") as copy:
            for row in zip(*(c.to_pylist() for c in data.columns), strict=True):
                copy.write_row(row)
        real.execute("ANALYZE t")

        local = times(lambda: lh.sql("SELECT 1").fetchall(), args.reps, 20)
        wire = times(lambda: mxc.execute("SELECT 1").fetchall(), args.reps, 20)
        postgres = times(lambda: real.execute("SELECT 1").fetchall(), args.reps, 20)
        print(f"SELECT 1 in process        {ms(local)}")
        print(f"SELECT 1 MatrixOS wire     {ms(wire)}")
        print(f"SELECT 1 PostgreSQL 15     {ms(postgres)}")
        overhead = (statistics.median(wire) - statistics.median(local)) * 1e3
        print(f"wire overhead over in-process: {overhead:.3f} ms (bar: <= 1 ms)")

        def fetch(conn: psycopg.Connection, sql: str) -> list[float]:
            out = []
            for _ in range(args.fetches):
                t = time.perf_counter()
                got = conn.execute(sql).fetchall()
                out.append(time.perf_counter() - t)
                assert len(got) == n
            return out

        ours = fetch(mxc, "SELECT * FROM b.t")
        theirs = fetch(real, "SELECT * FROM t")
        print(
            f"{n:,} rows x 4: MatrixOS wire best {min(ours):.2f} s (median "
            f"{statistics.median(ours):.2f}), PostgreSQL 15 best {min(theirs):.2f} s (median "
            f"{statistics.median(theirs):.2f}); ratio of medians "
            f"{statistics.median(ours) / statistics.median(theirs):.2f}x (bar: <= 1.5x)"
        )
    finally:
        pg.stop()
        if proc.stdin is not None:
            proc.stdin.close()
        proc.wait(30)


if __name__ == "__main__":
    main()
