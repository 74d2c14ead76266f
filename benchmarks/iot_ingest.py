"""IoT ingest throughput: HTTP line protocol into ``matrixos serve`` (TSBS cpu-only rows from
several client processes), compared in the same run with PostgreSQL 15 ``COPY`` of the same
rows and with ready Arrow batches written straight to Delta; MQTT QoS 1 through mosquitto;
freshness (an acknowledged point's time until a query sees it); optional kill -9 trials.

    python -m benchmarks.iot_ingest --quick
    python -m benchmarks.iot_ingest --duration 120 --hosts 1000 --clients 4 --json out.json
    python -m benchmarks.iot_ingest --kill-trials 100 --no-http --no-mqtt --no-compare

The server is the real ``matrixos serve`` (a subprocess, HTTP only, ``--flush-interval 1``),
its write-ahead log fsynced per group commit. Every number is for this machine as it was when
run; see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pyarrow as pa

import matrixos as mx
from matrixos.catalog.accounts import Accounts

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _servers import LOCALHOST, PostgresServer, free_port  # the tests' throwaway servers

TAGS = (
    "region",
    "datacenter",
    "rack",
    "os",
    "arch",
    "team",
    "service",
    "service_version",
    "service_environment",
)
FIELDS = (
    "usage_user",
    "usage_system",
    "usage_idle",
    "usage_nice",
    "usage_iowait",
    "usage_irq",
    "usage_softirq",
    "usage_steal",
    "usage_guest",
    "usage_guest_nice",
)
T0 = 1_451_606_400  # 2016-01-01, TSBS's start
STATEMENTS = "/api/2.0/sql/statements"


def host_tags(h: int) -> str:
    """TSBS cpu-only's tag set of host ``h`` (hostname first)."""
    r = random.Random(h)
    values = (
        f"eu-west-{h % 3}",
        f"eu-west-{h % 3}{'abc'[h % 3]}",
        str(r.randint(0, 99)),
        r.choice(["Ubuntu16.10", "Ubuntu15.10", "Ubuntu16.04LTS"]),
        r.choice(["x64", "x86"]),
        r.choice(["SF", "NYC", "LON", "CHI"]),
        str(r.randint(0, 19)),
        str(r.randint(0, 1)),
        r.choice(["production", "staging", "test"]),
    )
    return f"hostname=host_{h}," + ",".join(f"{k}={v}" for k, v in zip(TAGS, values, strict=True))


class CpuBodies:
    """Request bodies of TSBS cpu-only lines for ``hosts``, built from ready line prefixes
    (measurement, tags and 10 integer fields: ``variants`` value sets per host) joined with a
    timestamp per step: a client spends its CPU sending, not formatting text (TSBS's loaders
    read pre-generated files for the same reason)."""

    def __init__(self, hosts: list[int], variants: int = 16) -> None:
        rng = np.random.default_rng(hosts[0] if hosts else 0)
        tags = [host_tags(h) for h in hosts]
        self.prefixes: list[list[bytes]] = []
        for _ in range(variants):
            values = rng.integers(0, 100, size=(len(hosts), len(FIELDS))).tolist()
            lines = [
                ",".join(f"{f}={v}i" for f, v in zip(FIELDS, row, strict=True)) for row in values
            ]
            self.prefixes.append(
                [f"cpu,{t} {fs} ".encode() for t, fs in zip(tags, lines, strict=True)]
            )

    def body(self, step: int, steps: int) -> bytes:
        """One line per host at each of the times ``T0 + 10 s * (step .. step + steps - 1)``."""
        parts = []
        for k in range(step, step + steps):
            stamp = b"%d\n" % ((T0 + 10 * k) * 1_000_000_000)
            parts.append(stamp.join(self.prefixes[k % len(self.prefixes)]) + stamp)
        return b"".join(parts)[:-1]


# -- the server --------------------------------------------------------------------------------
class Server:
    def __init__(self, warehouse: Path, log: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://{LOCALHOST}:{self.port}"
        cmd = [
            sys.executable,
            "-m",
            "matrixos.cli",
            "serve",
            "--warehouse",
            str(warehouse),
            "--host",
            LOCALHOST,
            "--port",
            str(self.port),
            "--pg-port",
            "-1",
            *extra,
        ]
        self.proc = subprocess.Popen(cmd, stdout=log.open("ab"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 90
        while True:
            assert self.proc.poll() is None, log.read_text()[-3000:]
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "matrixos serve did not start"
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(120)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(30)


def make_warehouse(root: Path) -> str:
    with mx.connect(str(root)) as lh:
        lh.sql("CREATE SCHEMA IF NOT EXISTS iot")
        accounts = Accounts(lh.catalog)
        accounts.create("bench", admin=True)
        return accounts.create_token("bench")


def sql(c: httpx.Client, statement: str) -> list[list[Any]]:
    body = c.post(STATEMENTS, json={"statement": statement, "wait_timeout": "50s"}).json()
    if body["status"]["state"] != "SUCCEEDED":
        raise RuntimeError(body)
    return body.get("result", {}).get("data_array") or []


# -- HTTP line protocol ------------------------------------------------------------------------
def http_client(
    url: str, token: str, hosts: list[int], batch: int, duration: float, out: Any
) -> None:
    bodies = CpuBodies(hosts)
    per_body = max(1, batch // len(hosts))
    acked = refused = 0
    step = 0
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=120) as c:
        began = time.time()  # after the process's start-up (imports), which is not ingest
        deadline = time.monotonic() + duration
        while time.monotonic() < deadline:
            body = bodies.body(step, per_body)
            r = c.post("/api/v2/write", params={"bucket": "iot.cpu"}, content=body)
            if r.status_code == 204:
                acked += per_body * len(hosts)
                step += per_body
            elif r.status_code == 429:
                refused += 1
                time.sleep(float(r.headers.get("Retry-After", "1")))
            else:
                raise RuntimeError(f"{r.status_code}: {r.text[:500]}")
    out.put((acked, refused, began, time.time()))


def freshness_probe(
    url: str, token: str, stop: threading.Event, samples: list[float], polls: list[int]
) -> None:
    """A point written every 0.25 s; the time from its 204 until a query returns it, and how
    many queries that took (1: the first query after the acknowledgement saw it, so the time
    is that query's latency)."""
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}, timeout=60) as c:
        i = 0
        while not stop.is_set():
            i += 1
            r = c.post(
                "/api/v2/write", params={"bucket": "iot.probe"}, content=f"probe,id=p{i} v={i}i"
            )
            if r.status_code != 204:
                time.sleep(0.25)
                continue
            acked = time.perf_counter()
            n = 1
            while sql(c, f"SELECT count(*) FROM iot.probe WHERE id = 'p{i}'") != [["1"]]:
                n += 1
            samples.append(time.perf_counter() - acked)
            polls.append(n)
            stop.wait(0.25)


def run_http(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    token = make_warehouse(root / "wh")
    server = Server(root / "wh", root / "serve-http.log", "--flush-interval", "1")
    try:
        ctx = mp.get_context("spawn")
        out = ctx.Queue()
        hosts = list(range(args.hosts))
        shares = [hosts[i :: args.clients] for i in range(args.clients)]
        procs = [
            ctx.Process(
                target=http_client, args=(server.url, token, s, args.batch, args.duration, out)
            )
            for s in shares
        ]
        fresh: list[float] = []
        polls: list[int] = []
        stop = threading.Event()
        probe = threading.Thread(
            target=freshness_probe, args=(server.url, token, stop, fresh, polls)
        )
        start = time.perf_counter()
        for p in procs:
            p.start()
        probe.start()
        results = [out.get() for _ in procs]
        elapsed = max(r[3] for r in results) - min(r[2] for r in results)
        wall = time.perf_counter() - start
        stop.set()
        probe.join()
        for p in procs:
            p.join()
        lines = sum(r[0] for r in results)
        with httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=300
        ) as c:
            stored = int(sql(c, "SELECT count(*) FROM iot.cpu")[0][0])
    finally:
        server.stop()
    fresh.sort()
    return {
        "lines": lines,
        "seconds": round(elapsed, 1),
        "lines_per_s": round(lines / elapsed),
        "field_values_per_s": round(10 * lines / elapsed),
        "http_429": sum(r[1] for r in results),
        "wall_seconds_with_start_up": round(wall, 1),
        "stored_rows": stored,
        "exactly_once": stored == lines,
        "freshness_samples": len(fresh),
        "freshness_p50_ms": round(statistics.median(fresh) * 1e3, 1) if fresh else None,
        "freshness_p99_ms": round(fresh[min(len(fresh) - 1, int(len(fresh) * 0.99))] * 1e3, 1)
        if fresh
        else None,
        "freshness_queries_max": max(polls, default=None),
    }


# -- the same rows: PostgreSQL COPY and Arrow straight to Delta ---------------------------------
def cpu_arrow(n_rows: int, hosts: int) -> pa.Table:
    rng = np.random.default_rng(7)
    h = np.arange(n_rows) % hosts
    step = np.arange(n_rows) // hosts
    tags = ("hostname", *TAGS)
    per_host = [dict(kv.split("=") for kv in host_tags(i).split(",")) for i in range(hosts)]
    cols: dict[str, Any] = {
        t: pa.array([per_host[i][t] for i in range(hosts)]).take(pa.array(h)) for t in tags
    }
    cols["time"] = pa.array((T0 + 10 * step) * 1_000_000, pa.timestamp("us", "UTC"))
    cols["day"] = cols["time"].cast(pa.date32())
    for f in FIELDS:
        cols[f] = pa.array(rng.integers(0, 100, n_rows))
    return pa.table(cols)


def run_copy(table: pa.Table, clients: int) -> dict[str, Any]:
    import psycopg
    import pyarrow.csv as pacsv

    pg = PostgresServer()
    pg.start()
    try:
        dsn = pg.dsn(pg.create_database())
        pg_types = {"time": "timestamptz", "day": "date", **dict.fromkeys(FIELDS, "bigint")}
        cols = ", ".join(f"{c} {pg_types.get(c, 'text')}" for c in table.column_names)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"CREATE TABLE cpu ({cols})")
        parts = []
        step = -(-table.num_rows // clients)
        for i in range(clients):
            buf = io.BytesIO()
            pacsv.write_csv(
                table.slice(i * step, step), buf, pacsv.WriteOptions(include_header=False)
            )
            parts.append(buf.getvalue())

        def copy(data: bytes) -> None:
            with psycopg.connect(dsn) as conn, conn.cursor() as cur:
                with cur.copy("COPY cpu FROM STDIN WITH (FORMAT csv)") as cp:
                    for k in range(0, len(data), 1 << 20):
                        cp.write(data[k : k + (1 << 20)])
                conn.commit()

        start = time.perf_counter()
        threads = [threading.Thread(target=copy, args=(d,)) for d in parts]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
        with psycopg.connect(dsn) as conn:
            n = conn.execute("SELECT count(*) FROM cpu").fetchone()[0]  # type: ignore[index]
    finally:
        pg.stop()
    assert n == table.num_rows
    return {
        "rows": n,
        "seconds": round(elapsed, 2),
        "rows_per_s": round(n / elapsed),
        "field_values_per_s": round(10 * n / elapsed),
    }


def run_arrow_delta(root: Path, table: pa.Table, batch: int) -> dict[str, Any]:
    with mx.connect(str(root / "arrow-wh")) as lh:
        t = lh.create_table("iot.cpu", schema=table.schema, partition_by=["day"])
        start = time.perf_counter()
        for k in range(0, table.num_rows, batch):
            t.append(table.slice(k, batch))
        elapsed = time.perf_counter() - start
        n = lh.sql("SELECT count(*) FROM iot.cpu").fetchall()[0][0]
    return {
        "rows": n,
        "seconds": round(elapsed, 2),
        "rows_per_s": round(n / elapsed),
        "field_values_per_s": round(10 * n / elapsed),
        "batch_rows": batch,
    }


# -- MQTT ----------------------------------------------------------------------------------------
def start_mosquitto(root: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    conf = root / "mosquitto.conf"
    conf.write_text(
        f"listener {port} {LOCALHOST}\nallow_anonymous true\npersistence false\n"
        "max_inflight_messages 5000\nmax_queued_messages 1000000\n"
    )
    mosq = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([mosq, "-c", str(conf)], stderr=(root / "mosquitto.log").open("wb"))
    for _ in range(200):
        try:
            socket.create_connection((LOCALHOST, port), timeout=0.5).close()
            return proc, port
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("mosquitto did not start")


def mqtt_publisher(port: int, first: int, count: int, window: int = 2000) -> None:
    """``count`` QoS 1 messages (one TSBS cpu line each, the host in the topic), at most
    ``window`` unacknowledged, from ready MQTT 3.1.1 packets written in bulk; returns once
    mosquitto acknowledged every one. (paho's publish loop managed ~200 messages/s here and
    ``mosquitto_pub -l`` exits at the end of its input with messages still queued, losing
    them: either would measure the publisher, not the subscriber.)"""
    topic = f"tsbs/host_{first}".encode()
    fields = ",".join(f"{f}={{}}i" for f in FIELDS)
    packets = []
    for k, i in enumerate(range(first, first + count)):
        payload = f"cpu {fields.format(*([i % 100] * 10))} {(T0 + i) * 1_000_000_000}".encode()
        body = len(topic).to_bytes(2, "big") + topic + (k % 65535 + 1).to_bytes(2, "big")
        body += payload
        packets.append(bytes([0x32]) + _mqtt_length(len(body)) + body)
    sock = socket.create_connection((LOCALHOST, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client = f"bench-pub-{first}".encode()
    connect = b"\x00\x04MQTT\x04\x02\x00\x3c" + len(client).to_bytes(2, "big") + client
    sock.sendall(bytes([0x10]) + _mqtt_length(len(connect)) + connect)
    assert sock.recv(4)[3] == 0, "mosquitto refused the publisher"
    sent = acked = 0
    pending = b""
    while acked < count:
        if sent < count and sent - acked < window:
            upto = min(count, acked + window)
            sock.sendall(b"".join(packets[sent:upto]))
            sent = upto
        pending += sock.recv(1 << 16)
        acked += len(pending) // 4  # PUBACKs: 4 bytes each, nothing else comes
        pending = pending[len(pending) // 4 * 4 :]
    sock.sendall(b"\xe0\x00")
    sock.close()


def _mqtt_length(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def run_mqtt(root: Path, args: argparse.Namespace) -> dict[str, Any]:
    broker, port = start_mosquitto(root)
    token = make_warehouse(root / "mqtt-wh")
    server = Server(
        root / "mqtt-wh",
        root / "serve-mqtt.log",
        "--flush-interval",
        "1",
        "--mqtt",
        f"mqtt://{LOCALHOST}:{port}",
        "--route",
        "tsbs/{hostname}=iot.mqtt",
    )
    try:
        ctx = mp.get_context("spawn")
        per = args.mqtt_messages // args.clients
        procs = [
            ctx.Process(target=mqtt_publisher, args=(port, i * per, per))
            for i in range(args.clients)
        ]
        total = per * args.clients
        start = time.perf_counter()
        for p in procs:
            p.start()
        with httpx.Client(
            base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=120
        ) as c:
            n = 0
            first: tuple[float, int] | None = None  # the first poll that saw messages
            last = (time.perf_counter(), 0)  # the last poll that saw the count grow
            deadline = time.monotonic() + 900
            while n < total and time.monotonic() < deadline:
                time.sleep(0.25)
                try:
                    n = int(sql(c, "SELECT count(*) FROM iot.mqtt")[0][0])
                except RuntimeError:
                    n = 0
                if n and first is None:
                    first = (time.perf_counter(), n)
                if n > last[1]:
                    last = (time.perf_counter(), n)
                # A publisher that disconnects with messages in flight loses them (mosquitto
                # logs it as "out of memory"): stop once the count stands still.
                elif not any(p.is_alive() for p in procs) and time.perf_counter() - last[0] > 5:
                    break
        elapsed = last[0] - start
        steady = last[0] - first[0] if first else elapsed
        for p in procs:
            p.join()
    finally:
        server.stop()
        broker.terminate()
    return {
        "messages": total,
        "stored": n,  # (fewer: messages the publishers lost, never acknowledged by mosquitto)
        "seconds": round(steady, 1),
        # from the first poll that saw messages (publishers' start-up excluded) to the last
        "msgs_per_s": round((n - (first[1] if first else 0)) / steady),
        "msgs_per_s_with_start_up": round(n / elapsed),
    }


# -- kill -9 trials ----------------------------------------------------------------------------
def kill_trial(root: Path, token: str, seed: int) -> tuple[set[int], set[int], dict]:
    """Writers send batches of 50 unique points; the server is SIGKILLed at a random moment
    and restarted; returns (acknowledged, sent, present batch -> (rows, distinct times))."""
    args = ("--flush-interval", "0.2", "--wal-dir", str(root / "kill-wal"))
    server = Server(root / "kill-wh", root / "serve-kill.log", *args)
    acked: set[int] = set()
    sent: set[int] = set()
    stop = threading.Event()
    lock = threading.Lock()
    auth = {"Authorization": f"Bearer {token}"}

    def writer(w: int) -> None:
        with httpx.Client(base_url=server.url, headers=auth, timeout=30) as c:
            b = 0
            while not stop.is_set():
                bid = seed * 1_000_000 + w * 10_000 + b
                b += 1
                body = "\n".join(f"k,batch={bid} v={j}i {bid * 1000 + j}" for j in range(50))
                with lock:
                    sent.add(bid)
                params = {"bucket": "iot.kill", "precision": "us"}
                try:
                    r = c.post("/api/v2/write", params=params, content=body)
                except httpx.HTTPError:
                    return
                if r.status_code == 204:
                    with lock:
                        acked.add(bid)

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    while not acked:
        time.sleep(0.01)
    time.sleep(random.Random(seed).uniform(0, 1.5))
    server.kill()
    stop.set()
    for t in threads:
        t.join()
    server = Server(root / "kill-wh", root / "serve-kill.log", *args)
    try:
        with httpx.Client(base_url=server.url, headers=auth, timeout=120) as c:
            rows = sql(c, "SELECT batch, count(*), count(DISTINCT time) FROM iot.kill GROUP BY 1")
    finally:
        server.stop()
    mine = range(seed * 1_000_000, (seed + 1) * 1_000_000)
    present = {int(b): (int(n), int(d)) for b, n, d in rows if int(b) in mine}
    return acked, sent, present


def run_kill_trials(root: Path, trials: int) -> dict[str, Any]:
    """The suite's kill -9 trial (tests/iot/test_http.py), ``trials`` times on one warehouse."""
    token = make_warehouse(root / "kill-wh")
    acked_total = lost = dup = half = 0
    for seed in range(trials):
        acked, sent, present = kill_trial(root, token, seed)
        acked_total += len(acked)
        lost += sum(1 for b in acked if b not in present)
        dup += sum(1 for n, d in present.values() if n != d)
        half += sum(1 for b, (n, _) in present.items() if n != 50 or b not in sent)
        print(
            f"  trial {seed + 1}/{trials}: {len(acked)} batches acknowledged, {len(present)} "
            f"present; so far lost {lost}, duplicated {dup}, partial {half}",
            flush=True,
        )
    return {
        "trials": trials,
        "acknowledged_batches": acked_total,
        "lost": lost,
        "duplicated": dup,
        "partial": half,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="20 s, 200 hosts, 100k MQTT messages")
    ap.add_argument("--duration", type=float, default=120.0)
    ap.add_argument("--hosts", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--batch", type=int, default=5000, help="lines per HTTP request")
    ap.add_argument("--mqtt-messages", type=int, default=1_000_000)
    ap.add_argument("--compare-rows", type=int, default=2_000_000)
    ap.add_argument("--kill-trials", type=int, default=0)
    ap.add_argument("--no-http", action="store_true")
    ap.add_argument("--no-mqtt", action="store_true")
    ap.add_argument("--no-compare", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.quick:
        args.duration, args.hosts, args.mqtt_messages = 20.0, 200, 100_000
        args.compare_rows = min(args.compare_rows, 500_000)
    root = Path(tempfile.mkdtemp(prefix="mx-iot-bench-"))
    report: dict[str, Any] = {"cpus": os.cpu_count(), "load_before": os.getloadavg()}
    try:
        if not args.no_http:
            what = f"{args.clients} clients, {args.hosts} hosts, {args.duration:.0f} s"
            print(f"HTTP line protocol: {what}", flush=True)
            report["http"] = run_http(root, args)
            print(json.dumps(report["http"]), flush=True)
        if not args.no_compare:
            n = args.compare_rows
            if "http" in report:
                n = min(n, report["http"]["lines"]) or n
            table = cpu_arrow(n, args.hosts)
            print(f"same rows ({n:,}): PostgreSQL 15 COPY, Arrow -> Delta", flush=True)
            report["pg_copy"] = run_copy(table, args.clients)
            print(json.dumps(report["pg_copy"]), flush=True)
            report["arrow_delta"] = run_arrow_delta(root, table, 500_000)
            print(json.dumps(report["arrow_delta"]), flush=True)
        if not args.no_mqtt:
            print(
                f"MQTT QoS 1: {args.mqtt_messages:,} messages from {args.clients} publishers",
                flush=True,
            )
            report["mqtt"] = run_mqtt(root, args)
            print(json.dumps(report["mqtt"]), flush=True)
        if args.kill_trials:
            print(f"kill -9 trials: {args.kill_trials}", flush=True)
            report["kill"] = run_kill_trials(root, args.kill_trials)
            print(json.dumps(report["kill"]), flush=True)
    finally:
        report["load_after"] = os.getloadavg()
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
