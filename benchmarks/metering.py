"""``python -m benchmarks.metering [--records 1000] [--procs 4] [--statements 500]
[--json out.json]``

What metering costs, as the job runtime and the SQL front ends call it:

- ``record``: one ``Meter.record`` call (a job's GPU and CPU records for one interval: the
  charge, its ledger rows and the rows' outbox entries in one catalog transaction), median and
  p99, and how long the background thread takes to move everything to Delta at ``close``;
- ``concurrent``: ``--procs`` processes recording at once into one catalog (records per second
  in all), then the check that the usage table, the ledger and the balance agree exactly;
- ``statements``: ``lh.sql("SELECT 1")`` with ``meter_statements`` off and on, alternating
  rounds (median and p99 of each), the overhead a metered server statement pays.

Each part uses a fresh local warehouse with its SQLite catalog.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import matrixos as mx
from matrixos.metering import Meter, UsageRecord

_WORKER = textwrap.dedent(
    """
    import sys, time
    import matrixos as mx
    from matrixos.metering import Meter, UsageRecord
    wh, url, worker, n = sys.argv[1], sys.argv[2] or None, int(sys.argv[3]), int(sys.argv[4])
    lh = mx.connect(wh, catalog_url=url)
    meter = Meter(lh.service)
    meter.record([])  # the catalog connection and tables are ready: time the calls only
    t0 = time.time()
    for i in range(n):
        meter.record([UsageRecord("team-a", "bob", resource="gpu", accelerator="H100",
                                  quantity=8, start=0.0, end=10.0, job_id=f"w{worker}-{i}")])
    t1 = time.time()
    meter.close()
    print(t0, t1, time.time())
    """
)


def _stats(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    return {
        "median_ms": round(statistics.median(samples) * 1000, 3),
        "p99_ms": round(samples[max(int(len(samples) * 0.99) - 1, 0)] * 1000, 3),
    }


def _interval(i: int) -> list[UsageRecord]:
    t = float(i * 10)
    return [
        UsageRecord("team-a", "bob", resource="gpu", accelerator="H100", quantity=8,
                    start=t, end=t + 10, job_id=f"j{i}", node="n1"),
        UsageRecord("team-a", "bob", resource="cpu", quantity=16,
                    start=t, end=t + 10, job_id=f"j{i}", node="n1"),
    ]  # fmt: skip


def record(root: Path, url: str | None, n: int) -> dict[str, Any]:
    with mx.connect(str(root / "record"), catalog_url=url) as lh:
        lh.accounts.create("team-a", kind="group")
        lh.accounts.credit("team-a", 10**6)
        meter = Meter(lh.service)
        samples = []
        for i in range(n):
            t0 = time.perf_counter()
            meter.record(_interval(i))
            samples.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        meter.close()
        closing = time.perf_counter() - t0
        rows = lh.sql("SELECT count(*), sum(degrees) FROM system.billing.usage").fetchone()
        summary = lh.accounts.summary("team-a")
        assert rows is not None and rows[0] == 2 * n and rows[1] == summary.consumed
    return {"calls": n, **_stats(samples), "close_s": round(closing, 3)}


def concurrent(root: Path, url: str | None, procs: int, n: int) -> dict[str, Any]:
    wh = str(root / "concurrent")
    with mx.connect(wh, catalog_url=url) as lh:
        lh.accounts.create("team-a", kind="group")
        lh.accounts.credit("team-a", 10**6)
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, wh, url or "", str(w), str(n)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for w in range(procs)
    ]
    outs = [p.communicate()[0] for p in workers]
    codes = [p.returncode for p in workers]
    # From the first process's first call to the last one's last call (process starts and
    # imports excluded), and to the last close (rows in Delta).
    stamps = [[float(x) for x in out.split()] for out in outs if out.strip()]
    elapsed = max(s[1] for s in stamps) - min(s[0] for s in stamps)
    written = max(s[2] for s in stamps) - min(s[0] for s in stamps)
    with mx.connect(wh, catalog_url=url) as lh:
        count, used = lh.sql(
            "SELECT count(*), sum(degrees) FROM system.billing.usage"
        ).fetchone() or (0, 0)
        summary = lh.accounts.summary("team-a")
        charges = [e for e in lh.accounts.ledger("team-a") if e.kind == "charge"]
    return {
        "processes": procs,
        "records": procs * n,
        "exit_codes": codes,
        "seconds": round(elapsed, 2),
        "records_per_s": round(procs * n / elapsed, 1),
        "all_in_delta_s": round(written, 2),
        "usage_rows": count,
        "exact": count == procs * n
        and used == summary.consumed == -sum(e.degrees for e in charges)
        and summary.balance == summary.credited - used,
    }


def statements(root: Path, url: str | None, n: int, rounds: int = 4) -> dict[str, Any]:
    samples: dict[bool, list[float]] = {False: [], True: []}
    for r in range(rounds):
        for metered in (False, True) if r % 2 == 0 else (True, False):
            wh = str(root / f"statements-{r}-{metered}")
            with mx.connect(wh, catalog_url=url, meter_statements=metered) as lh:
                for _ in range(20):  # warm: the engine, the meter, the catalog connection
                    lh.sql("SELECT 1").fetchall()
                for _ in range(n // rounds):
                    t0 = time.perf_counter()
                    lh.sql("SELECT 1").fetchall()
                    samples[metered].append(time.perf_counter() - t0)
    return {"unmetered": _stats(samples[False]), "metered": _stats(samples[True])}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.metering")
    parser.add_argument("--records", type=int, default=1000, help="Meter.record calls")
    parser.add_argument("--procs", type=int, default=4, help="concurrent recording processes")
    parser.add_argument("--statements", type=int, default=500, help="SELECT 1 per mode")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        out = {
            "record": record(root, None, args.records),
            "concurrent": concurrent(root, None, args.procs, max(args.records // args.procs, 1)),
            "statements": statements(root, None, args.statements),
        }
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
