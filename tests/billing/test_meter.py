"""Usage records in ``system.billing.usage``: written by the meter, readable and joinable in SQL,
summed by ``lh.usage`` for the accounts a principal may see; SQL statements metered too."""

from __future__ import annotations

import gc
import itertools
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

import matrixos as mx
from matrixos.catalog.access import Principal
from matrixos.catalog.accounts import Accounts
from matrixos.errors import AccessDenied, ConfigError, OutOfCredit
from matrixos.metering import Meter, StatementMeter, UsageRecord

T0 = datetime(2026, 12, 5, 8, 0, tzinfo=UTC)
BOB = Principal("bob", frozenset(), groups=frozenset({"team-a"}))
EVE = Principal("eve", frozenset())


@pytest.fixture
def lh(tmp_path: Path) -> Iterator[mx.Lakehouse]:
    with mx.connect(str(tmp_path / "wh")) as lh:
        for name, kind in (
            ("team-a", "group"),
            ("team-b", "group"),
            ("bob", "user"),
            ("eve", "user"),
        ):
            lh.accounts.create(name, kind)
        lh.accounts.add_member("team-a", "bob")
        yield lh


def _gpu(account: str, job: str, hours: float, start: datetime, accel: str = "H100") -> UsageRecord:
    return UsageRecord(
        account, "bob", resource="gpu", accelerator=accel, quantity=8,
        start=start, end=start + timedelta(hours=hours), job_id=job, node="node-1",
    )  # fmt: skip


def test_meter_writes_rows_sql_can_join_and_charges(lh: mx.Lakehouse) -> None:
    lh.accounts.credit("team-a", 100)
    meter = Meter(lh.service)
    try:
        balance = meter.record([_gpu("team-a", "job-1", 1, T0)])
        h100_8h = Decimal(8 * 989) / 312  # 8 H100s for an hour
        assert Decimal(str(balance)) == pytest.approx(100 - h100_8h)
        cpu = UsageRecord(
            "team-a", "bob", resource="cpu", quantity=16, start=T0, end=T0 + timedelta(hours=1),
            job_id="job-1", node="node-1",
        )  # fmt: skip
        meter.record([cpu, _gpu("team-b", "job-2", 0.5, T0, "A100")])
        meter.flush()
    finally:
        meter.close()
    rows = lh.sql(
        "SELECT job_id, resource, accelerator, quantity, seconds, degrees "
        "FROM system.billing.usage ORDER BY job_id, resource"
    ).fetchall()
    assert [r[:5] for r in rows] == [
        ("job-1", "cpu", None, 16.0, 3600.0),
        ("job-1", "gpu", "H100", 8.0, 3600.0),
        ("job-2", "gpu", "A100", 8.0, 1800.0),
    ]
    assert rows[2][5] == Decimal(4)  # 8 A100s for half an hour
    # Joinable with any table: usage per job joined with a jobs list of one's own.
    lh.create_table("ops.jobs", [{"id": "job-1", "team": "vision"}, {"id": "job-2", "team": "nlp"}])
    joined = lh.sql(
        "SELECT j.team, sum(u.degrees) AS d FROM system.billing.usage u "
        "JOIN ops.jobs j ON u.job_id = j.id GROUP BY j.team ORDER BY j.team"
    ).fetchall()
    assert [t for t, _ in joined] == ["nlp", "vision"]
    # The ledger holds exactly what the usage table says was used.
    used = lh.sql("SELECT sum(degrees) FROM system.billing.usage WHERE account = 'team-a'").scalar()
    assert lh.accounts.balance("team-a") == 100 - used
    assert lh.accounts.balance("team-b") == -4  # never credited: billed, below zero


def test_usage_sums_and_visibility(lh: mx.Lakehouse) -> None:
    meter = Meter(lh.service)
    try:
        meter.record(
            [_gpu("team-a", "job-1", 1, T0), _gpu("team-a", "job-2", 2, T0 + timedelta(days=1))]
        )
        meter.record([_gpu("team-b", "job-3", 1, T0, "L4")])
        meter.record([_gpu("eve", "job-4", 1, T0, "T4")])
    finally:
        meter.close()
    by_day = lh.usage(by="day")
    assert by_day.column("account").to_pylist() == ["eve", "team-a", "team-b", "team-a"]
    assert by_day.column("degrees").to_pylist()[3] == pytest.approx(Decimal(2 * 8 * 989) / 312)
    by_job = lh.usage(account="team-a", by="job").to_pylist()
    assert [(r["job"], r["seconds"]) for r in by_job] == [("job-1", 3600.0), ("job-2", 7200.0)]
    by_hour = lh.usage(by="hour", since=T0 + timedelta(hours=12), until="2026-12-06T09:00")
    assert by_hour.to_pylist() == [
        {
            "period": T0 + timedelta(days=1),
            "account": "team-a",
            "resource": "gpu",
            "accelerator": "H100",
            "quantity_seconds": 8 * 7200.0,
            "seconds": 7200.0,
            "degrees": pytest.approx(Decimal(2 * 8 * 989) / 312, abs=Decimal("1e-9")),
            "records": 1,
        }
    ]
    # bob sees his group's usage only; eve her own; neither may ask for another's.
    bob, eve = lh.with_principal(BOB), lh.with_principal(EVE)
    assert set(bob.usage(by="job").column("account").to_pylist()) == {"team-a"}
    assert eve.usage(by="job").column("job").to_pylist() == ["job-4"]
    with pytest.raises(AccessDenied, match="eve may not read the usage of team-a"):
        eve.usage(account="team-a")
    with pytest.raises(AccessDenied):  # and not the table itself
        eve.sql("SELECT * FROM system.billing.usage")
    with pytest.raises(ConfigError, match="since='yesterday' is not a time"):
        lh.usage(since="yesterday")
    with pytest.raises(ConfigError, match="by='week'"):
        lh.usage(by="week")  # type: ignore[arg-type]


def test_only_admins_credit_through_the_session(lh: mx.Lakehouse) -> None:
    bob = lh.with_principal(BOB)
    with pytest.raises(AccessDenied, match="bob may not credit team-a"):
        bob.accounts.credit("team-a", degrees=100)
    lh.accounts.credit("team-a", degrees=100)
    assert bob.accounts.balance("team-a") == 100
    assert [e.kind for e in bob.accounts.ledger("team-a")] == ["credit"]
    with pytest.raises(AccessDenied):
        lh.with_principal(EVE).accounts.balance("team-a")


def test_sql_statements_are_metered_and_stopped_at_zero(tmp_path: Path) -> None:
    # A costly CPU (a core-second is 1/3600 degree) makes one statement's cost visible.
    table = tmp_path / "degrees.json"
    table.write_text('{"CPU": 312}')
    settings = {"meter_statements": True, "duckdb_threads": 2, "degree_table": str(table)}
    with mx.connect(str(tmp_path / "wh"), **settings) as lh:
        lh.accounts.create("bob")
        lh.accounts.create("eve")
        lh.create_table("s.t", [{"x": i} for i in range(1000)])
        lh.sql("GRANT USE CATALOG ON CATALOG main TO bob")
        lh.sql("GRANT USE SCHEMA ON SCHEMA main.s TO bob")
        lh.sql("GRANT SELECT ON TABLE main.s.t TO bob")
        bob = lh.with_principal(Accounts(lh.catalog).principal("bob"))
        res = bob.sql("SELECT sum(x) FROM s.t")
        assert res.fetchall() == [(499500,)]
        with pytest.raises(AccessDenied):
            lh.with_principal(EVE).sql("SELECT * FROM s.t")  # failed statements count too
        rows = lh.usage(by="job").to_pylist()
        mine = {r["account"]: r for r in rows}
        assert mine["bob"]["job"] == "sql" and mine["bob"]["records"] == 1
        assert mine["bob"]["resource"] == "cpu"
        nodes = lh.sql("SELECT DISTINCT node FROM system.billing.usage").fetchall()
        assert nodes == [(socket.gethostname(),)]
        assert mine["bob"]["quantity_seconds"] == pytest.approx(2 * mine["bob"]["seconds"])
        assert mine["eve"]["records"] == 1
        # Statements of an account never credited are billed, not stopped.
        assert lh.accounts.balance("bob") == -mine["bob"]["degrees"]
        assert mine["bob"]["degrees"] == pytest.approx(
            Decimal(mine["bob"]["quantity_seconds"]) / 3600, abs=Decimal("1e-8")
        )
        # Once credited, an account is stopped at zero.
        lh.accounts.credit("bob", -lh.accounts.balance("bob") + Decimal("0.000000001"))
        assert bob.sql("SELECT 1").fetchall() == [(1,)]  # takes the balance below zero
        lh.usage()  # writes what is queued (charges included)
        assert lh.accounts.balance("bob") < 0
        with pytest.raises(
            OutOfCredit, match=r"bob has -0\.\d+ degrees left: statements are stopped"
        ):
            bob.sql("SELECT 1")
        lh.accounts.credit("bob", 1)
        assert bob.sql("SELECT 1").fetchall() == [(1,)]


def test_a_long_statement_is_metered_while_it_runs(tmp_path: Path) -> None:
    with mx.connect(str(tmp_path / "wh"), duckdb_threads=3) as lh:
        meter = StatementMeter(lh.service, interval_s=0.02)
        try:
            running = meter.begin(BOB)
            start = running.mark
            deadline = time.monotonic() + 60
            while running.mark == start and time.monotonic() < deadline:  # until a record went
                time.sleep(0.01)
            meter.end(running)
            meter.end(running)  # a second end records nothing
            meter.flush()
        finally:
            meter.close()
        rows = lh.sql(
            'SELECT statement_id, account, quantity, epoch(start), epoch("end"), seconds '
            "FROM system.billing.usage ORDER BY start"
        ).fetchall()
    assert len(rows) >= 2 and {r[:3] for r in rows} == {(running.statement_id, "bob", 3.0)}
    for before, after in itertools.pairwise(rows):
        assert after[3] == pytest.approx(before[4], abs=1e-6)  # back to back
    assert sum(r[5] for r in rows) == pytest.approx(rows[-1][4] - rows[0][3], abs=1e-5)


def test_an_object_store_catalog_keeps_no_ledger_and_statements_still_run(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'catalog'}"
    with mx.connect(str(tmp_path / "wh"), catalog_url=url, meter_statements=True) as lh:
        assert lh.sql("SELECT 41 + 1").fetchall() == [(42,)]  # not metered, not refused
        with pytest.raises(ConfigError, match="prepaid credits need a database catalog"):
            lh.accounts.balance("bob")
        assert lh.usage().num_rows == 0


def test_a_result_dropped_unread_stops_being_metered(tmp_path: Path) -> None:
    def records() -> int:
        return sum(r["records"] for r in lh.usage(by="job").to_pylist())

    with mx.connect(str(tmp_path / "wh"), meter_statements=True) as lh:
        lh.create_table("s.t", [{"x": i} for i in range(10)])
        result = lh.sql("SELECT x FROM s.t")  # a stream nobody reads yet: still running
        assert records() == 0
        del result
        gc.collect()
        assert records() == 1  # ended when dropped
        lh.sql("SELECT 1").fetchall()  # read to its end: ended at once
        assert records() == 2


# What the test below runs in a child process (a deadlock there cannot hang the test run).
_COLLECTED_WHILE_BUSY = """
import sys
import matrixos as mx

with mx.connect(sys.argv[1], meter_statements=True) as lh:
    lh.create_table("s.t", [{"x": i} for i in range(10)])
    meter = lh._statement_meter()
    results = [lh.sql("SELECT x FROM s.t") for _ in range(3)]  # streams nobody reads
    with meter._lock:  # as inside the meter's `end`, when the collection struck
        results.clear()  # the last references: each result's finalizer runs here, now
    print(sum(r["records"] for r in lh.usage(by="job").to_pylist()))
"""


def test_a_result_collected_while_the_meter_is_busy_is_recorded_without_a_deadlock(
    tmp_path: Path,
) -> None:
    # A garbage collection runs finalizers in whatever thread it interrupts: a server once hung
    # when one ran inside the meter's `end` (holding its lock) and ended a dropped result.
    try:
        done = subprocess.run(
            [sys.executable, "-c", _COLLECTED_WHILE_BUSY, str(tmp_path / "wh")],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    except subprocess.TimeoutExpired as e:
        raise AssertionError("dropping results inside the meter deadlocked") from e
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["3"], done.stdout + done.stderr[-2000:]
