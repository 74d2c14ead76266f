"""Many clients at once on one ``matrixos serve``: TPC-H queries and point lookups, half over the
PostgreSQL wire (psycopg 3), half over the HTTP statement API (httpx).

    .venv/bin/python -m benchmarks.server_load [--clients 50] [--duration 300] [--scale 0.1]
        [--procs 10] [--users 10] [--tpch-share 0.2] [--readme]

Set-up (not timed): a fresh warehouse with TPC-H at ``--scale`` (``matrixos.tpch``: generated
once, cached), ``--users`` accounts that may read it (each with a password and an API token),
and ``matrixos serve`` on free 127.0.0.1 ports (HTTP and wire; default limits, so at most 16
statements per user: clients are spread over the users). Every TPC-H query is run once over
each protocol first; the run stops if one fails.

Then ``--clients`` clients — half psycopg (a connection each, ``autocommit``, SCRAM login),
half httpx (a keep-alive client each, ``wait_timeout`` 50 s, JSON_ARRAY) — run in ``--procs``
processes (threads inside) for ``--duration`` seconds. Each request is a TPC-H query (one of
the 22, in turn, with probability ``--tpch-share``) or a point lookup (an order by key, a
customer by key, the line items of an order: random keys, bound as parameters). A request
that raises, answers non-200 or does not end ``SUCCEEDED`` is an error (an HTTP statement
still running after its wait is polled until it ends). Reported: requests,
errors (the bar: 0), QPS, and p50/p99 latency per client kind and per request kind.
``--readme`` writes the result into benchmarks/README.md (between the ``server_load``
markers).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import httpx

import matrixos as mx
from matrixos.catalog.accounts import Accounts
from matrixos.compute import free_port
from matrixos.tpch import QUERIES, cached, load

STATEMENTS = "/api/2.0/sql/statements"
README = Path(__file__).with_name("README.md")
BEGIN, END = "<!-- server_load -->", "<!-- /server_load -->"
# (name, psycopg text with %s, HTTP text with :k, the key's range: a table's row count)
LOOKUPS = (
    ("order", "SELECT * FROM orders WHERE o_orderkey = %s",
     "SELECT * FROM orders WHERE o_orderkey = :k", "orders"),
    ("customer", "SELECT c_name, c_acctbal, c_mktsegment FROM customer WHERE c_custkey = %s",
     "SELECT c_name, c_acctbal, c_mktsegment FROM customer WHERE c_custkey = :k", "customer"),
    ("lines", "SELECT l_linenumber, l_quantity, l_extendedprice FROM lineitem "
     "WHERE l_orderkey = %s ORDER BY l_linenumber",
     "SELECT l_linenumber, l_quantity, l_extendedprice FROM lineitem "
     "WHERE l_orderkey = :k ORDER BY l_linenumber", "orders"),
)  # fmt: skip


def _queries(scale: float) -> dict[int, str]:
    data = cached(scale)
    return {n: data.query(n).strip().rstrip(";") for n in QUERIES}


def _keys(table: str, rows: dict[str, int]) -> int:
    # TPC-H keys: customer 1..N; orders are sparse (1..4N, 8 of each 32 used), any key works
    return rows[table] * (4 if table == "orders" else 1)


def _client(kind: str, conf: dict[str, Any], user: str, stop_at: float, out: list) -> None:
    """One client's loop; appends (kind, request, seconds, ok, error) to ``out``."""
    rng = random.Random(hash((user, threading.get_ident())))
    queries: dict[int, str] = conf["queries"]
    order = list(queries)
    rng.shuffle(order)
    turn = 0
    if kind == "pg":
        import psycopg

        conn = psycopg.connect(
            host="127.0.0.1", port=conf["pg_port"], dbname="main", user=user,
            password=conf["password"][user], autocommit=True, connect_timeout=30,
        )  # fmt: skip
    else:
        http = httpx.Client(
            base_url=conf["url"], timeout=120,
            headers={"Authorization": f"Bearer {conf['token'][user]}"},
        )  # fmt: skip
    while time.time() < stop_at:
        if rng.random() < conf["tpch_share"]:
            n = order[turn % len(order)]
            turn += 1
            name, pg_sql, http_sql, params = f"q{n:02d}", queries[n], queries[n], None
        else:
            name, pg_sql, http_sql, table = LOOKUPS[rng.randrange(len(LOOKUPS))]
            key = rng.randint(1, _keys(table, conf["rows"]))
            params = key
        t = time.perf_counter()
        error = None
        try:
            if kind == "pg":
                conn.execute(pg_sql, None if params is None else (params,)).fetchall()
            else:
                body: dict[str, Any] = {"statement": http_sql, "wait_timeout": "50s"}
                if params is not None:
                    body["parameters"] = [{"name": "k", "value": str(params), "type": "BIGINT"}]
                r = http.post(STATEMENTS, json=body)
                answer = r.json() if r.status_code == 200 else {}
                state = answer.get("status", {}).get("state")
                while state in ("PENDING", "RUNNING"):  # past the wait: poll, as a client does
                    time.sleep(0.05)
                    r = http.get(f"{STATEMENTS}/{answer['statement_id']}")
                    state = r.json().get("status", {}).get("state")
                if state != "SUCCEEDED":
                    error = f"HTTP {r.status_code} {state}: {r.text[:200]}"
        except Exception as e:  # every failure counts, whatever it is
            error = f"{type(e).__name__}: {str(e)[:200]}"
        out.append((kind, "tpch" if name.startswith("q") else name, time.perf_counter() - t,
                    error))  # fmt: skip
    if kind == "pg":
        conn.close()
    else:
        http.close()


def _process(kind: str, users: list[str], conf: dict[str, Any], stop_at: float, q: Any) -> None:
    out: list = []
    threads = [threading.Thread(target=_client, args=(kind, conf, u, stop_at, out)) for u in users]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    q.put(out)


def _pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] * 1e3 if xs else float("nan")


def _check(conf: dict[str, Any], user: str) -> None:
    """Every TPC-H query once over each protocol: the run stops on a failure."""
    import psycopg

    http = httpx.Client(
        base_url=conf["url"], timeout=300,
        headers={"Authorization": f"Bearer {conf['token'][user]}"},
    )  # fmt: skip
    with psycopg.connect(
        host="127.0.0.1", port=conf["pg_port"], dbname="main", user=user,
        password=conf["password"][user], autocommit=True,
    ) as conn:  # fmt: skip
        for n, sql in conf["queries"].items():
            conn.execute(sql).fetchall()
            r = http.post(STATEMENTS, json={"statement": sql, "wait_timeout": "50s"})
            state = r.json().get("status", {}).get("state")
            if state != "SUCCEEDED":
                raise SystemExit(f"TPC-H q{n:02d} over HTTP: {r.status_code} {r.text[:500]}")
    http.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--duration", type=float, default=300.0)
    ap.add_argument("--scale", type=float, default=0.1)
    ap.add_argument("--procs", type=int, default=10)
    ap.add_argument("--users", type=int, default=10)
    ap.add_argument("--tpch-share", type=float, default=0.2)
    ap.add_argument("--readme", action="store_true", help="write the result into README.md")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="mx-bench-load-"))
    wh = str(root / "warehouse")
    t0 = time.time()
    users = [f"u{i}" for i in range(args.users)]
    passwords, tokens = {u: f"pw-{u}-Bench1" for u in users}, {}
    with mx.connect(wh) as lh:
        rows = load(lh, cached(args.scale))
        accounts = Accounts(lh.catalog)
        for u in users:
            accounts.create(u, password=passwords[u])
            tokens[u] = accounts.create_token(u)
            accounts.grant("USE CATALOG", "main", u)
            accounts.grant("USE SCHEMA", "main.default", u)
            accounts.grant("SELECT", "main.default", u)
    print(f"set-up: TPC-H sf{args.scale:g} loaded ({sum(rows.values()):,} rows) "
          f"in {time.time() - t0:.0f} s")  # fmt: skip
    port, pg_port = free_port(), free_port()
    log = (root / "server.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "matrixos.cli", "serve", "--warehouse", wh, "--port", str(port),
         "--pg-port", str(pg_port)],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ},
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    conf = {
        "url": url, "pg_port": pg_port, "password": passwords, "token": tokens,
        "queries": _queries(args.scale), "rows": rows, "tpch_share": args.tpch_share,
    }  # fmt: skip
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        t0 = time.time()
        _check(conf, users[0])
        print(f"checked the 22 queries over both protocols in {time.time() - t0:.0f} s")
        half = args.clients // 2
        kinds = ["pg"] * half + ["http"] * (args.clients - half)
        clients = [(k, users[i % len(users)]) for i, k in enumerate(kinds)]
        per = -(-len(clients) // args.procs)
        groups: dict[tuple[str, int], list[str]] = defaultdict(list)
        for i, (k, u) in enumerate(clients):
            groups[(k, i // per)].append(u)
        q: Any = mp.get_context("spawn").Queue()
        stop_at = time.time() + 5 + args.duration  # 5 s for the processes to start
        procs = [
            mp.get_context("spawn").Process(target=_process, args=(k, us, conf, stop_at, q))
            for (k, _), us in groups.items()
        ]
        for p in procs:
            p.start()
        samples = [s for _ in procs for s in q.get()]
        for p in procs:
            p.join()
        args.load = os.getloadavg()[1]  # the machine's 5-minute load average at the end
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
    report = _report(args, samples)
    print(report)
    if args.readme:
        _write_readme(args, report)


def _report(args: argparse.Namespace, samples: list) -> str:
    errors = [s for s in samples if s[3] is not None]
    lines = [
        f"{args.clients} clients ({args.clients // 2} psycopg, {args.clients - args.clients // 2}"
        f" httpx) for {args.duration:g} s, TPC-H sf{args.scale:g}, {args.tpch_share:.0%} TPC-H "
        f"queries, the rest point lookups; machine: {os.cpu_count()} cores, 5-minute load "
        f"average {getattr(args, 'load', float('nan')):.1f} at the end (all processes)",
        "",
        f"requests {len(samples):,}, errors {len(errors)}, QPS {len(samples) / args.duration:.1f}",
        "",
        "| client | request | count | QPS | p50 ms | p99 ms |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    groups: dict[tuple[str, str], list[float]] = defaultdict(list)
    for kind, what, s, _ in samples:
        groups[(kind, "all")].append(s)
        groups[(kind, what)].append(s)
    for (kind, what), xs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] != "all")):
        lines.append(
            f"| {kind} | {what} | {len(xs):,} | {len(xs) / args.duration:.1f} | "
            f"{_pct(xs, 0.5):.1f} | {_pct(xs, 0.99):.1f} |"
        )
    for e in errors[:5]:
        lines.append(f"\nerror ({e[0]} {e[1]}): {e[3]}")
    return "\n".join(lines)


def _write_readme(args: argparse.Namespace, report: str) -> None:
    text = README.read_text()
    cmd = (
        f"python -m benchmarks.server_load --clients {args.clients} --duration {args.duration:g}"
        f" --scale {args.scale:g} --procs {args.procs} --users {args.users}"
    )
    block = f"{BEGIN}\n`{cmd}` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}):\n\n"
    block += report + f"\n{END}"
    if BEGIN in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip("\n") + "\n\n## Server under load: 50 clients\n\n" + block + "\n"
    README.write_text(text)


if __name__ == "__main__":
    main()
