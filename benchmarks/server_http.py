"""``matrixos serve`` over HTTP vs in process: per-statement overhead and result throughput.

    .venv/bin/python -m benchmarks.server_http [--reps 300] [--rows 1000000] [--scans 5]
        [--baseline DIR] [--streamed]

Starts ``matrixos serve`` (HTTP only) on a free 127.0.0.1 port over a fresh warehouse holding
one table of ``--rows`` rows x 4 columns, then times, in the same run:

* ``SELECT 1``: in-process ``lh.sql(...).to_arrow()``; a raw keep-alive httpx POST (JSON_ARRAY,
  answered inline); and the remote SDK's ``sql(...).to_arrow()`` (ARROW_STREAM: a POST and a
  chunk GET). Medians and p99 over ``--reps``, after 20 warm-up calls each.
* every row of the table: in-process ``lh.sql("SELECT * FROM t").to_arrow()`` vs the remote
  SDK's (one Arrow IPC stream, sent while the query runs), median of ``--scans`` (5) runs in
  turns; reports rows/s and the ratio.

``--baseline DIR`` serves another checkout beside this one; ``--streamed`` also serves this tree
with ``--stream-after 0`` (every Arrow answer streamed chunked from its first rows) beside the
default (a result whole within 0.05 s of its first rows goes as one sized body): an A/B of the
two result paths, turn by turn.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa

import matrixos as mx
from matrixos.catalog.accounts import Accounts
from matrixos.compute import free_port

# Runs Python with every package of the editable install (matrixos, matrixos.engine, …) taken
# from another checkout: argv is [tree, then python's own args ("-m module …" or a script)].
_BOOT = """
import os, runpy, sys
tree = sys.argv.pop(1)
for finder in sys.meta_path:
    mapping = getattr(sys.modules.get(getattr(finder, "__module__", "")), "MAPPING", None)
    if isinstance(mapping, dict) and "matrixos" in mapping:
        root = os.path.dirname(mapping["matrixos"])
        for name, path in mapping.items():
            mapping[name] = os.path.join(tree, os.path.relpath(path, root))
sys.path.insert(0, tree)
if sys.argv[1] == "-m":
    sys.argv = [sys.argv[2], *sys.argv[3:]]
    runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
else:
    sys.argv = sys.argv[1:]
    runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _in_tree(tree: str, args: list[str]) -> list[str]:
    """The command running ``python *args`` with the code of the checkout ``tree``."""
    return [sys.executable, "-c", _BOOT, tree, *args]


def make_warehouse(wh: str, rows: int) -> tuple[str, str]:
    """A warehouse at ``wh`` holding ``bench.t`` (``rows`` rows x 4 columns) and the admin
    account ``bench``: (wh, its token)."""
    rng = np.random.default_rng(0)
    data = pa.table({
        "id": np.arange(rows, dtype=np.int64),
        "x": rng.random(rows),
        "k": rng.integers(0, 1000, rows, dtype=np.int32),
        "s": pa.array([f"row{i % 10_000}" for i in range(rows)]),
    })  # fmt: skip
    with mx.connect(wh) as lh:
        lh.create_table("bench.t", data)
        accounts = Accounts(lh.catalog)
        accounts.create("bench", admin=True)
        return wh, accounts.create_token("bench")


@contextlib.contextmanager
def served(rows: int, prefix: str) -> Iterator[tuple[str, str, str]]:
    """A fresh warehouse holding ``bench.t`` (``rows`` rows x 4 columns) and an admin token,
    served by ``matrixos serve`` on a free loopback port: yields (warehouse, url, token); the
    server gets SIGTERM at the end (the server benchmarks share it)."""
    with served_by(rows, prefix, [None]) as (wh, urls):
        yield wh, urls[0][0], urls[0][1]


@contextlib.contextmanager
def served_by(
    rows: int, prefix: str, trees: list[str | None], options: list[list[str]] | None = None
) -> Iterator[tuple[str, list[tuple[str, str]]]]:
    """``served``, by one ``matrixos serve`` per source tree in ``trees`` (None: this one;
    else a checkout of another revision, run with its own code and warehouse of the same
    rows), each given its ``options`` (more ``serve`` arguments): yields (this tree's
    warehouse, each server's (url, admin token))."""
    root = Path(tempfile.mkdtemp(prefix=prefix))
    wh, token = make_warehouse(str(root / "warehouse"), rows)
    tokens = [token]
    # Another revision gets a warehouse of its own, made by its own code (its catalog may be
    # at another migration), holding the same rows.
    whs = [wh]
    for i, tree in enumerate(trees[1:], 1):
        if tree is None:  # this tree again (other options): the same warehouse
            whs.append(wh)
            tokens.append(token)
            continue
        made = subprocess.run(
            _in_tree(str(tree), [__file__, "--make-warehouse", str(root / f"warehouse{i}"),
                                 str(rows)]),
            cwd=tree, check=True, capture_output=True, text=True,
        )  # fmt: skip
        whs.append(str(root / f"warehouse{i}"))
        tokens.append(made.stdout.strip().splitlines()[-1])
    procs, urls = [], []
    try:
        for i, tree in enumerate(trees):
            port = free_port()
            log = (root / f"server{i}.log").open("wb")
            args = ["-m", "matrixos.cli", "serve", "--warehouse", whs[i], "--port", str(port),
                    "--pg-port", "-1", *(options[i] if options else [])]  # fmt: skip
            cmd = [sys.executable, *args] if tree is None else _in_tree(tree, args)
            procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=tree))
            urls.append(f"http://127.0.0.1:{port}")
            for _ in range(600):
                try:
                    if httpx.get(urls[-1] + "/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    time.sleep(0.1)
        yield wh, list(zip(urls, tokens, strict=True))
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
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


def _post(url: str, token: str) -> Callable[[], object]:
    """A keep-alive ``http.client`` POST of ``SELECT 1`` (JSON_ARRAY inline), body read."""
    conn = http.client.HTTPConnection(url.removeprefix("http://"))
    body = json.dumps({"statement": "SELECT 1", "wait_timeout": "10s"})
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}

    def call() -> object:
        try:
            conn.request("POST", "/api/2.0/sql/statements", body, headers)
            return json.loads(conn.getresponse().read())
        except (ConnectionError, http.client.HTTPException):  # idle past the keep-alive
            conn.close()
            conn.request("POST", "/api/2.0/sql/statements", body, headers)
            return json.loads(conn.getresponse().read())

    return call


def _httpx_post(raw: httpx.Client, body: dict[str, str]) -> Callable[[], object]:
    return lambda: raw.post("/api/2.0/sql/statements", json=body).json()


def _sdk_sql(remote: Any, sql: str) -> Callable[[], object]:
    return lambda: remote.sql(sql).to_arrow()


def _interleaved(
    fns: dict[str, Callable[[], object]], reps: int, warm: int, rounds: int
) -> dict[str, list[float]]:
    """``times`` of each of ``fns``, in ``rounds`` turns (each a share of ``reps``), so that a
    change of the machine's load falls on all of them alike."""
    out: dict[str, list[float]] = {name: [] for name in fns}
    for fn in fns.values():
        times(fn, 0, warm)
    for _ in range(rounds):
        for name, fn in fns.items():
            out[name] += times(fn, max(1, reps // rounds), 0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=300)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument(
        "--scans", type=int, default=5, help="runs of the SELECT * (each server, in turns)"
    )
    ap.add_argument(
        "--baseline",
        help="a checkout of another revision (git worktree add /tmp/base <rev>): its server is "
        "measured beside this one's, turn by turn",
    )
    ap.add_argument(
        "--streamed",
        action="store_true",
        help="also measure this tree's server with --stream-after 0 (every Arrow result "
        "streamed from its first rows, chunked) beside the default (a result whole within "
        "0.05 s goes as one sized body), turn by turn",
    )
    args = ap.parse_args()
    trees: list[str | None] = [None] + ([args.baseline] if args.baseline else [])
    options: list[list[str]] = [[] for _ in trees]
    tags = ["" if tree is None else " [baseline]" for tree in trees]
    if args.streamed:
        trees.append(None)
        options.append(["--stream-after", "0"])
        tags.append(" [--stream-after 0]")
    with served_by(args.rows, "mx-bench-http-", trees, options) as (wh, servers):
        n = args.rows
        lh = mx.connect(wh)
        print(f"SELECT 1, {args.reps} calls each (interleaved in 5 rounds; load: "
              f"{os.getloadavg()[0]:.1f})")  # fmt: skip
        fns: dict[str, Callable[[], object]] = {
            "in-process lh.sql": lambda: lh.sql("SELECT 1").to_arrow()
        }
        body = {"statement": "SELECT 1", "wait_timeout": "10s"}
        for (url, token), tag in zip(servers, tags, strict=True):
            raw = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"})
            remote = mx.connect(url, token=token) if not tag else None
            fns[f"HTTP POST, httpx (JSON_ARRAY inline){tag}"] = _httpx_post(raw, body)
            fns[f"HTTP POST, http.client (JSON_ARRAY){tag}"] = _post(url, token)
            if remote is not None:
                fns["remote SDK sql().to_arrow() (ARROW_STREAM)"] = _sdk_sql(remote, "SELECT 1")
        got = _interleaved(fns, args.reps, 20, 5)
        medians = {name: _summary(name, samples) for name, samples in got.items()}
        local = medians["in-process lh.sql"]
        for name, med in medians.items():
            if name != "in-process lh.sql":
                print(f"overhead over in-process: {name}: {(med - local) * 1e3:.3f} ms")
        print(f"\nSELECT * of {n:,} rows x 4 columns, {args.scans} runs each (in turns)")
        q = "SELECT * FROM bench.t"
        remotes = [mx.connect(url, token=token) for url, token in servers]
        fetches: dict[str, Callable[[], object]] = {
            "in-process lh.sql().to_arrow()": lambda: lh.sql(q).to_arrow()
        }
        for remote, tag in zip(remotes, tags, strict=True):
            fetches[f"remote SDK sql().to_arrow(){tag}"] = _sdk_sql(remote, q)
        took = {
            k: _summary(k, v) for k, v in _interleaved(fetches, args.scans, 1, args.scans).items()
        }
        assert remotes[0].sql(q).to_arrow().num_rows == n
        t_local = took.pop("in-process lh.sql().to_arrow()")
        for name, t in took.items():
            print(f"rows/s: in-process {n / t_local:,.0f}, {name} {n / t:,.0f} "
                  f"(ratio {t_local / t:.2f})")  # fmt: skip


if __name__ == "__main__":
    if sys.argv[1:2] == ["--make-warehouse"]:  # run by served_by with another tree's code
        print(make_warehouse(sys.argv[2], int(sys.argv[3]))[1])
    else:
        main()
