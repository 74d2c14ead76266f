"""``python -m benchmarks.catalog [--reps 50] [--json out.json]``

The catalog an object-store warehouse carries (``<warehouse>/_catalog/``, a commit log) against
SQLite, on one moto S3 server: a lookup as the SQL engine makes it (``lh.table``), a change
(``create_schema``), and a cold ``connect()`` + ``tables()`` as a new process pays it. Medians in
milliseconds; moto answers slower than a nearby S3 endpoint for LIST, faster for PUT.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa

import matrixos as mx
from benchmarks._torture import MotoS3


def _median_ms(fn: Callable[[], Any], reps: int) -> float:
    samples = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return round(statistics.median(samples) * 1000, 2)


def measure(s3: MotoS3, catalog_url: str | None, reps: int) -> dict[str, float]:
    uri, opts = s3.bucket()
    with mx.connect(uri, storage_options=opts, catalog_url=catalog_url) as lh:
        for i in range(25):  # a catalog with some history: checkpoints and commits after them
            lh.create_schema(f"s{i}")
        lh.create_table("s0.t", pa.table({"x": [1]}))
        lookup = _median_ms(lambda: lh.table("s0.t"), reps)
        counter = iter(range(10**6))
        change = _median_ms(lambda: lh.create_schema(f"x{next(counter)}"), reps)

    def cold() -> None:
        with mx.connect(uri, storage_options=opts, catalog_url=catalog_url) as fresh:
            fresh.tables()

    return {"lookup_ms": lookup, "change_ms": change, "cold_connect_ms": _median_ms(cold, reps)}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--json", help="write the numbers here")
    args = ap.parse_args(argv)
    out: dict[str, dict[str, float]] = {}
    with MotoS3() as s3, tempfile.TemporaryDirectory() as tmp:
        out["object-store log (in the bucket)"] = measure(s3, None, args.reps)
        out["sqlite (local file)"] = measure(s3, f"sqlite:///{Path(tmp) / 'c.db'}", args.reps)
    print(f"{'catalog':34} {'lookup':>9} {'change':>9} {'cold':>9}  (median ms)")
    for name, row in out.items():
        print(
            f"{name:34} {row['lookup_ms']:9.2f} {row['change_ms']:9.2f} "
            f"{row['cold_connect_ms']:9.2f}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
