"""``python -m benchmarks.lance_merge [--merges 150] [--rows 100] [--backend local|s3] [--json f]``

MERGE latency on Lance tables through the public API (``lh.table(...).merge``) beside plain
``lance`` ``merge_insert(...).execute`` on a dataset of its own, interleaved merge by merge in
one run so that a loaded machine slows both alike. Each merge upserts ``--rows`` rows: half
update existing keys, half insert new ones. Two MatrixOS tables: an integer key (the first
merge declares it Lance's primary key, so Lance checks concurrent inserts of the same key)
and a float key (Lance does not check it: the merge takes the table's merge lease, an
``flock`` locally, put-if-absent objects on S3, plus a repair tag on S3). Also one-row appends
to the integer table (each write first looks for merges a dead writer left to repair) beside
plain lance appends. Prints p50/p99 per kind and the ratio of p50s to plain
lance's merge (or append). ``--backend s3``: a moto server on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from functools import partial
from typing import Any

import pyarrow as pa


def _rows(i: int, rows: int, key: str) -> pa.Table:
    """Merge ``i``: keys ``[i*rows/2, i*rows/2 + rows)``, half of them already present."""
    start = i * rows // 2
    ids = list(range(start, start + rows))
    keys = pa.array([k + 0.5 for k in ids]) if key == "double" else pa.array(ids, pa.int64())
    return pa.table({"id": keys, "v": [f"m{i}"] * rows})


def _merge(table: Any, data: pa.Table) -> Any:
    return table.merge(data, on=["id"])


def _stats(ms: list[float]) -> dict[str, float]:
    s = sorted(ms)
    return {
        "p50_ms": round(statistics.median(s), 2),
        "p99_ms": round(s[min(len(s) - 1, int(len(s) * 0.99))], 2),
    }


def main(argv: list[str] | None = None) -> int:
    import lance

    import matrixos as mx

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--merges", type=int, default=150)
    p.add_argument("--rows", type=int, default=100)
    p.add_argument("--json", default=None)
    p.add_argument("--backend", choices=["local", "s3"], default="local")
    args = p.parse_args(argv)

    times: dict[str, list[float]] = {}
    with ExitStack() as stack:
        if args.backend == "s3":  # a moto server on 127.0.0.1
            from benchmarks._moto import MotoS3

            uri, options = stack.enter_context(MotoS3()).bucket()
        else:
            uri, options = f"{tempfile.mkdtemp(prefix='lance_merge_bench_')}/wh", None
        lh = stack.enter_context(mx.connect(uri, storage_options=options))
        tables = {
            "int key (declared)": "int64",
            "float key (recorded)": "double",
        }
        handles: dict[str, Any] = {}
        for n, (name, key) in enumerate(tables.items()):
            handles[name] = lh.create_table(f"b.t{n}", _rows(0, args.rows, key), format="lance")
        plain_uri = f"{uri}/plain.lance"
        plain_opts = lh.warehouse.lance_options(plain_uri)
        lance.write_dataset(
            _rows(0, args.rows, "int64"),
            plain_uri,
            enable_stable_row_ids=True,
            storage_options=plain_opts,
        )

        def plain(data: pa.Table) -> None:
            ds = lance.dataset(plain_uri, storage_options=plain_opts)
            ds.merge_insert("id").when_matched_update_all().when_not_matched_insert_all().execute(
                data
            )

        def plain_append(data: pa.Table) -> None:
            lance.write_dataset(data, plain_uri, mode="append", storage_options=plain_opts)

        runs: dict[str, Callable[[pa.Table], Any]] = {"plain lance merge_insert": plain}
        for name in tables:
            runs[name] = partial(_merge, handles[name])
        appender = handles["int key (declared)"]
        for i in range(1, args.merges + 1):
            for name, run in runs.items():
                key = tables.get(name, "int64")
                data = _rows(i, args.rows, key)
                t0 = time.perf_counter()
                run(data)
                times.setdefault(name, []).append((time.perf_counter() - t0) * 1000)
            extra = pa.table({"id": pa.array([-i], pa.int64()), "v": ["a"]})
            for name, run in [("plain lance append", plain_append), ("append", appender.append)]:
                t0 = time.perf_counter()
                run(extra)
                times.setdefault(name, []).append((time.perf_counter() - t0) * 1000)
        for name, t in handles.items():
            counts = t.to_arrow().column("id").value_counts()
            dup = [c for c in counts.to_pylist() if c["counts"] > 1]
            assert not dup, f"{name}: duplicated keys {dup[:3]}"
    append_ref = statistics.median(times["plain lance append"])
    ref = {"append": append_ref, "plain lance append": append_ref}
    merge_ref = statistics.median(times["plain lance merge_insert"])
    out = {
        name: {**_stats(ms), "x_plain": round(statistics.median(ms) / ref.get(name, merge_ref), 2)}
        for name, ms in times.items()
    }
    width = max(len(n) for n in out)
    print(
        f"{args.backend}: {args.merges} merges of {args.rows} rows (half updates, half "
        "inserts), one-row appends; x: p50 over plain lance's p50 (merge or append)"
    )
    for name, s in out.items():
        print(
            f"{name:<{width}}  p50 {s['p50_ms']:7.2f} ms  p99 {s['p99_ms']:7.2f} ms  "
            f"x{s['x_plain']:.2f} plain"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"backend": args.backend, "merges": args.merges, "rows": args.rows, "results": out},
                f,
                indent=2,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
