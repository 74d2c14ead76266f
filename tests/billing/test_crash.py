"""A metering process killed at any point loses no usage and writes none twice: the charge and
its rows' outbox entry commit together, and the next meter moves what a dead one left."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from decimal import Decimal
from pathlib import Path

import matrixos as mx
from matrixos.catalog.billing import from_nano, to_nano
from matrixos.catalog.outbox import Outbox
from matrixos.metering import Meter, UsageRecord

WORKER = textwrap.dedent(
    """
    import os, signal, sys, time
    import matrixos as mx
    from matrixos.metering import Meter, UsageRecord
    wh, worker, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    lh = mx.connect(wh)
    # worker 0 never flushes: its rows are only in the outbox when it is killed
    meter = Meter(lh.service, interval_s=3600 if worker == 0 else 0.05)
    t = time.time()
    for i in range(n):
        meter.record([UsageRecord("team-a", "bob", resource="gpu", accelerator="L4",
                                  quantity=1, start=t + i, end=t + i + 1.5 + worker,
                                  job_id=f"w{worker}")])
    if worker == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    meter.close()
    """
)


def test_killed_meters_lose_nothing_and_concurrent_ones_balance(tmp_path: Path) -> None:
    wh = str(tmp_path / "wh")
    with mx.connect(wh) as lh:
        lh.accounts.create("team-a", kind="group")
        lh.accounts.credit("team-a", 1)
    workers, n = 3, 15
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, wh, str(w), str(n)]) for w in range(workers)
    ]
    codes = [p.wait(timeout=300) for p in procs]
    assert codes == [-9, 0, 0]
    with mx.connect(wh) as lh:
        outbox = Outbox(lh.service.catalog.engine)  # type: ignore[attr-defined]
        assert outbox.count() == n  # the killed worker's rows, charged, not yet in Delta
        Meter(lh.service, stale_s=0).close()  # the next meter takes them over
        assert outbox.count() == 0
        rows = lh.sql(
            "SELECT job_id, count(*), count(DISTINCT record_id), sum(degrees) "
            "FROM system.billing.usage GROUP BY job_id ORDER BY job_id"
        ).fetchall()
        assert [(j, c, d) for j, c, d, _ in rows] == [("w0", n, n), ("w1", n, n), ("w2", n, n)]
        used = sum(r[3] for r in rows)
        # L4: 121 TFLOPS; worker w's records last 1.5 + w seconds each.
        expected = sum(
            Decimal(121 * (1.5 + w)) / 312 / 3600 for w in range(workers) for _ in range(n)
        )
        assert abs(used - expected) < Decimal("1e-8")  # each record rounded to 1e-9
        summary = lh.accounts.summary("team-a")
        assert summary.consumed == used and summary.balance == 1 - used
        charges = [e for e in lh.accounts.ledger("team-a") if e.kind == "charge"]
        assert len(charges) == workers * n and -sum(e.degrees for e in charges) == used


def test_rows_a_dead_meter_wrote_but_did_not_clear_are_not_written_twice(
    tmp_path: Path, catalog_url: str
) -> None:
    with mx.connect(str(tmp_path / "wh"), catalog_url=catalog_url) as lh:
        meter = Meter(lh.service)
        record = UsageRecord(
            "team-a", "bob", resource="cpu", quantity=4, start=0.0, end=60.0, job_id="j1"
        ).priced()
        meter.record([record])
        meter.close()
        # As if a meter had appended the row and died before clearing its outbox entry.
        outbox = Outbox(lh.service.catalog.engine)  # type: ignore[attr-defined]
        with outbox.engine.begin() as conn:
            outbox.insert(conn, "dead-meter", [(record.record_id, record.payload())])
        Meter(lh.service, stale_s=0).close()
        assert outbox.count() == 0
        assert lh.sql("SELECT count(*), sum(seconds) FROM system.billing.usage").fetchone() == (
            1,
            60.0,
        )
        # ... and the ledger was charged once, for exactly the row's degrees.
        used = lh.sql("SELECT sum(degrees) FROM system.billing.usage").scalar()
        assert lh.accounts.summary("team-a").consumed == used == from_nano(to_nano(24 / 312 / 3600))
