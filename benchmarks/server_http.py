"""``matrixos serve`` over HTTP vs in process: per-statement overhead and result throughput.

    .venv/bin/python -m benchmarks.server_http [--reps 300] [--rows 1000000]

Starts ``matrixos serve`` (HTTP only) on a free 127.0.0.1 port over a fresh warehouse holding
one table of ``--rows`` rows x 4 columns, then times, in the same run:

* ``SELECT 1``: in-process ``lh.sql(...).to_arrow()``; a raw keep-alive httpx POST (JSON_ARRAY,
  answered inline); and the remote SDK's ``sql(...).to_arrow()`` (ARROW_STREAM: a POST and a
  chunk GET). Medians and p99 over ``--reps``, after 20 warm-up calls each.
* every row of the table: in-process ``lh.sql("SELECT * FROM t").to_arrow()`` vs the remote
  SDK's (Arrow IPC chunks), median of 5; reports rows/s and the ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa

import matrixos as mx
from matrixos.catalog.accounts import Accounts


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def served(rows: int, prefix: str) -> Iterator[tuple[str, str, str]]:
    """A fresh warehouse holding ``bench.t`` (``rows`` rows x 4 columns) and an admin token,
    served by ``matrixos serve`` on a free loopback port: yields (warehouse, url, token); the
    server gets SIGTERM at the end (the server benchmarks share it)."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    wh = str(root / "warehouse")
    rng = np.random.default_rng(0)
    n = rows
    data = pa.table({
        "id": np.arange(n, dtype=np.int64),
        "x": rng.random(n),
        "k": rng.integers(0, 1000, n, dtype=np.int32),
        "s": pa.array([f"row{i % 10_000}" for i in range(n)]),
    })  # fmt: skip
    with mx.connect(wh) as lh:
        lh.create_table("bench.t", data)
        accounts = Accounts(lh.catalog)
        accounts.create("bench", admin=True)
        token = accounts.create_token("bench")
    port = _free_port()
    log = (root / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "matrixos.cli", "serve", "--warehouse", wh, "--port", str(port),
         "--pg-port", "-1"],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield wh, url, token
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def times(fn: Callable[[], object], reps: int, warm: int) -> list[float]:
    """Seconds per call of ``fn``, ``reps`` times after ``warm`` untimed calls (the server
    benchmarks share it)."""
    for _ in range(warm):
        fn()
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def _summary(name: str, samples: list[float]) -> float:
    med = statistics.median(samples)
    p99 = sorted(samples)[int(len(samples) * 0.99) - 1]
    print(f"{name:<44} median {med * 1e3:8.3f} ms   p99 {p99 * 1e3:8.3f} ms")
    return med


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=300)
    ap.add_argument("--rows", type=int, default=1_000_000)
    args = ap.parse_args()
    with served(args.rows, "mx-bench-http-") as (wh, url, token):
        n = args.rows
        lh = mx.connect(wh)
        remote = mx.connect(url, token=token)
        raw = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"})
        print(f"SELECT 1, {args.reps} calls each")
        local = _summary("in-process lh.sql", times(
            lambda: lh.sql("SELECT 1").to_arrow(), args.reps, 20))  # fmt: skip
        body = {"statement": "SELECT 1", "wait_timeout": "10s"}
        post = "/api/2.0/sql/statements"
        http = _summary("HTTP POST (JSON_ARRAY inline)", times(
            lambda: raw.post(post, json=body).json(), args.reps, 20))  # fmt: skip
        sdk = _summary("remote SDK sql().to_arrow() (ARROW_STREAM)", times(
            lambda: remote.sql("SELECT 1").to_arrow(), args.reps, 20))  # fmt: skip
        print(f"overhead over in-process: HTTP {(http - local) * 1e3:.3f} ms, "
              f"SDK {(sdk - local) * 1e3:.3f} ms")  # fmt: skip
        print(f"\nSELECT * of {n:,} rows x 4 columns, 5 runs each")
        q = "SELECT * FROM bench.t"
        t_local = _summary("in-process lh.sql().to_arrow()", times(
            lambda: lh.sql(q).to_arrow(), 5, 1))  # fmt: skip
        t_sdk = _summary("remote SDK sql().to_arrow()", times(
            lambda: remote.sql(q).to_arrow(), 5, 1))  # fmt: skip
        assert remote.sql(q).to_arrow().num_rows == n
        print(f"rows/s: in-process {n / t_local:,.0f}, remote {n / t_sdk:,.0f} "
              f"(ratio {t_local / t_sdk:.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
