"""Continuous aggregates (engine/sql/matviews.py, matrixos/iot/cagg.py) on real Delta tables:
created from a time_bucket query, refreshed incrementally (only the buckets the source's
changes touch), kept fresh by the background refresher, dropped."""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

import matrixos as mx
from matrixos.catalog.access import Principal
from matrixos.errors import AccessDenied, NotSupported, SQLError
from matrixos.iot.cagg import ViewRefresher

try:
    from tests.server._serve import MatrixOSServer
except ImportError:  # run from tests/
    from server._serve import MatrixOSServer  # type: ignore[no-redef]

WAREHOUSES = ("local",)
T0 = dt.datetime(2024, 1, 1)
QUERY = (
    "SELECT time_bucket('1 minute', time) AS bucket, host, avg(usage) AS usage, "
    "count(*) AS n, max(usage) - min(usage) AS spread FROM iot.cpu GROUP BY 1, 2"
)


def points(minutes: list[float], host: str = "a", usage: float = 1.0) -> pa.Table:
    return pa.Table.from_pylist(
        [
            {"time": T0 + dt.timedelta(minutes=m, seconds=5), "host": host, "usage": usage + m}
            for m in minutes
        ]
    )


def view_rows(lh: mx.Lakehouse, name: str = "iot.cpu_1m") -> list[tuple]:
    return lh.sql(f"SELECT * FROM {name} ORDER BY bucket, host").fetchall()


def fresh_rows(lh: mx.Lakehouse) -> list[tuple]:
    return lh.sql(f"SELECT * FROM ({QUERY}) ORDER BY bucket, host").fetchall()


@pytest.fixture
def cpu(lh: mx.Lakehouse) -> mx.Lakehouse:
    lh.create_table("iot.cpu", points(list(range(10))))
    lh.table("iot.cpu").append(points([0, 5], host="b"))
    return lh


@pytest.mark.parametrize(
    ("dialect", "sql"),
    [
        ("postgres", f"CREATE MATERIALIZED VIEW iot.cpu_1m AS {QUERY} WITH (refresh = '1 hour')"),
        ("duckdb", f"CREATE MATERIALIZED VIEW iot.cpu_1m AS {QUERY} WITH (refresh = '1 hour')"),
        ("postgres", f"CREATE MATERIALIZED VIEW iot.cpu_1m WITH (refresh = '1 hour') AS {QUERY}"),
    ],
)
def test_create_materializes_the_query(cpu: mx.Lakehouse, dialect: str, sql: str) -> None:
    out = cpu.sql(sql, dialect=dialect).to_arrow().to_pylist()[0]
    assert out["rows"] == 12
    assert view_rows(cpu) == fresh_rows(cpu)
    props = cpu.table("iot.cpu_1m").info.properties
    assert props["matrixos.view.source"] == "main.iot.cpu"
    assert props["matrixos.view.refresh"] == "1 hour"
    assert props["matrixos.view.bucket"] == "bucket"
    assert props["matrixos.view.time"] == "time"
    skipped = cpu.sql(f"CREATE MATERIALIZED VIEW IF NOT EXISTS iot.cpu_1m AS {QUERY}")
    assert skipped.to_arrow().column("skipped").to_pylist() == [True]


def test_refresh_recomputes_only_the_touched_buckets(cpu: mx.Lakehouse) -> None:
    cpu.sql(f"CREATE MATERIALIZED VIEW iot.cpu_1m AS {QUERY}")
    view = cpu.table("iot.cpu_1m")
    # A marker in bucket 0 that only a recompute of bucket 0 would remove.
    view.update({"n": "-1"}, where="bucket = '2024-01-01 00:00:00' AND host = 'a'")
    cpu.table("iot.cpu").append(points([7.5, 8.2], host="a", usage=100))  # late points
    out = cpu.sql("REFRESH MATERIALIZED VIEW iot.cpu_1m").to_arrow().to_pylist()[0]
    assert out["buckets"] == 1 and out["rows"] == 2  # minutes 7 and 8 only
    assert out["source_version"] == cpu.table("iot.cpu").version
    rows = {(r[0].minute, r[1]): r for r in view_rows(cpu)}
    assert rows[(0, "a")][3] == -1  # untouched: not recomputed
    assert rows[(7, "a")][3] == 2 and rows[(8, "a")][3] == 2
    want = {(r[0].minute, r[1]): r for r in fresh_rows(cpu)}
    assert {k: v for k, v in rows.items() if k != (0, "a")} == {
        k: v for k, v in want.items() if k != (0, "a")
    }
    last = view.history(1)[0]
    assert last["operation"] == "WRITE" and "00:07:00" in str(last["operationParameters"])
    assert last["matrixos.view.source_version"] == str(out["source_version"])
    # nothing new: nothing done, no commit
    version = view.version
    again = cpu.sql("REFRESH MATERIALIZED VIEW iot.cpu_1m").to_arrow().to_pylist()[0]
    assert again["buckets"] == 0 and view.version == version


@pytest.mark.parametrize("dialect", ["duckdb", "postgres", "databricks", "trino"])
def test_refresh_follows_every_kind_of_change(cpu: mx.Lakehouse, dialect: str) -> None:
    cpu.sql(f"CREATE MATERIALIZED VIEW iot.cpu_1m AS {QUERY}")
    src = cpu.table("iot.cpu")
    changes = [
        lambda: src.append(points([3.5, 20], host="c")),  # new series, a new bucket
        lambda: src.delete("host = 'b'"),  # a whole series gone
        lambda: src.update({"usage": "usage * 2"}, where="time < '2024-01-01 00:02:00'"),
        lambda: src.merge(points([4, 30], host="a", usage=7), on=["time", "host"]),
    ]
    for change in changes:
        change()
        cpu.sql("REFRESH MATERIALIZED VIEW iot.cpu_1m", dialect=dialect)
        assert view_rows(cpu) == fresh_rows(cpu)
    assert not [r for r in view_rows(cpu) if r[1] == "b"]


def test_any_aggregate_and_a_where_clause(cpu: mx.Lakehouse) -> None:
    cpu.sql(
        "CREATE MATERIALIZED VIEW iot.q AS SELECT time_bucket('5 minutes', time) AS bucket, "
        "quantile_cont(usage, 0.5) AS p50, count(DISTINCT host) AS hosts, "
        "first(usage, time) AS opening FROM iot.cpu WHERE usage > 1 GROUP BY bucket",
        dialect="postgres",
    )
    cpu.table("iot.cpu").append(points([6], host="z", usage=50))
    cpu.sql("REFRESH MATERIALIZED VIEW iot.q", dialect="postgres")
    got = cpu.sql("SELECT * FROM iot.q ORDER BY bucket").fetchall()
    want = cpu.sql(
        "SELECT time_bucket('5 minutes', time) AS bucket, quantile_cont(usage, 0.5), "
        "count(DISTINCT host), arg_min(usage, time) FROM iot.cpu WHERE usage > 1 "
        "GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert got == want


def test_drop_materialized_view(cpu: mx.Lakehouse) -> None:
    cpu.sql(f"CREATE MATERIALIZED VIEW iot.cpu_1m AS {QUERY}")
    with pytest.raises(SQLError, match="is a table, not a materialized view"):
        cpu.sql("DROP MATERIALIZED VIEW iot.cpu")
    with pytest.raises(SQLError, match="not a materialized view"):
        cpu.sql("REFRESH MATERIALIZED VIEW iot.cpu", dialect="postgres")
    cpu.sql("DROP MATERIALIZED VIEW iot.cpu_1m")
    assert cpu.tables("iot") == ["main.iot.cpu"]
    cpu.sql("DROP MATERIALIZED VIEW IF EXISTS iot.cpu_1m")


@pytest.mark.parametrize(
    ("sql", "error", "message"),
    [
        ("SELECT time_bucket('1 minute', c.time) AS b, count(*) FROM iot.cpu c JOIN iot.cpu d "
         "ON c.host = d.host GROUP BY 1", NotSupported, "reads one table"),
        ("SELECT host, count(*) FROM iot.cpu GROUP BY 1", NotSupported, "groups by time_bucket"),
        ("SELECT time_bucket('1 minute', time) AS b, count(*) FROM iot.cpu GROUP BY host",
         SQLError, "must GROUP BY its time_bucket"),
        ("SELECT time_bucket('1 minute', time), count(*) FROM iot.cpu GROUP BY 1",
         SQLError, "name the bucket column"),
        ("SELECT time_bucket('1 minute', time) AS b, count(*) FROM iot.cpu GROUP BY 1 LIMIT 3",
         NotSupported, "LIMIT"),
        ("SELECT time_bucket('1 minute', time) AS b, count(*) FROM iot.cpu GROUP BY 1 "
         "WITH (refresh = 'often')", SQLError, "not a duration"),
        ("SELECT time_bucket('1 minute', time) AS b, count(*) FROM iot.cpu GROUP BY 1 "
         "WITH (compress = 'yes')", NotSupported, "compress"),
    ],
)  # fmt: skip
def test_definitions_that_cannot_be_refreshed_per_bucket_are_refused(
    cpu: mx.Lakehouse, sql: str, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        cpu.sql(f"CREATE MATERIALIZED VIEW iot.bad AS {sql}", dialect="postgres")
    assert "main.iot.bad" not in cpu.tables("iot")


def test_refresh_needs_modify_on_the_view(cpu: mx.Lakehouse) -> None:
    cpu.sql(f"CREATE MATERIALIZED VIEW iot.cpu_1m AS {QUERY}")
    use = {"USE CATALOG ON main", "USE SCHEMA ON CATALOG main"}
    bob = cpu.with_principal(
        Principal("bob", frozenset({*use, "SELECT ON main.iot.cpu", "SELECT ON main.iot.cpu_1m"}))
    )
    assert len(view_rows(bob)) == 12
    with pytest.raises(AccessDenied, match="MODIFY"):
        bob.sql("REFRESH MATERIALIZED VIEW iot.cpu_1m", dialect="postgres")


def test_refresher_refreshes_views_when_due(cpu: mx.Lakehouse) -> None:
    cpu.sql(f"CREATE MATERIALIZED VIEW iot.hourly AS {QUERY} WITH (refresh = '1 hour')")
    cpu.sql(f"CREATE MATERIALIZED VIEW iot.never AS {QUERY}")  # no interval: manual only
    assert cpu.maintenance is not None
    cpu.maintenance.stop()  # the session's own refresher: this test drives one by hand
    refresher = ViewRefresher(cpu._engine.views, cpu.principal)
    cpu.table("iot.cpu").append(points([40]))
    assert refresher.run_once(now=1000.0) == ["main.iot.hourly"]
    cpu.table("iot.cpu").append(points([41]))
    assert refresher.run_once(now=1000.0 + 3599) == []  # not due yet
    assert refresher.run_once(now=1000.0 + 3600) == ["main.iot.hourly"]
    assert view_rows(cpu, "iot.hourly") == fresh_rows(cpu)
    assert cpu.table("iot.never").to_arrow().num_rows == 12  # stored rows: not refreshed


def test_session_starts_the_background_refresher(cpu: mx.Lakehouse) -> None:
    cpu.sql(f"CREATE MATERIALIZED VIEW iot.manual AS {QUERY}")
    cpu.sql("REFRESH MATERIALIZED VIEW iot.manual")
    assert cpu.maintenance is None  # nothing scheduled yet
    cpu.sql(f"CREATE MATERIALIZED VIEW iot.cpu_1m AS {QUERY} WITH (refresh = '1 second')")
    maintenance = cpu.maintenance
    assert maintenance is not None and maintenance.refresher.running
    cpu.table("iot.cpu").append(points([90]))

    def stored() -> list[int]:  # the materialized rows, not the real-time read
        return [b.minute for b in cpu.table("iot.cpu_1m").to_arrow().column("bucket").to_pylist()]

    deadline = time.monotonic() + 60
    while 30 not in stored() and time.monotonic() < deadline:  # 01:30 is minute 30
        maintenance.refresher.wait_runs(maintenance.refresher.runs + 1)
    assert 30 in stored()
    assert view_rows(cpu) == fresh_rows(cpu)
    cpu.close()
    assert not maintenance.refresher.running and not maintenance.retention.running


def test_reads_are_real_time_past_the_watermark(cpu: mx.Lakehouse) -> None:
    """As TimescaleDB's default: stored buckets before the watermark (the newest bucket at the
    last refresh), buckets from there on computed from the source at read time."""
    cpu.sql(f"CREATE MATERIALIZED VIEW iot.cpu_1m AS {QUERY}")
    cpu.sql(f"CREATE MATERIALIZED VIEW iot.stored AS {QUERY} WITH (materialized_only = 'true')")
    props = cpu.table("iot.cpu_1m").info.properties
    assert props["matrixos.view.watermark"] == "2024-01-01 00:09:00"
    cpu.table("iot.cpu").append(points([9.5, 30], host="a", usage=100))  # at/after the mark
    cpu.table("iot.cpu").append(points([2.5], host="a", usage=100))  # late: an old bucket
    rows = {(r[0].minute, r[1]): r for r in view_rows(cpu)}
    fresh = {(r[0].minute, r[1]): r for r in fresh_rows(cpu)}
    assert rows[(9, "a")] == fresh[(9, "a")] and rows[(30, "a")] == fresh[(30, "a")]
    assert rows[(2, "a")][3] == 1 != fresh[(2, "a")][3]  # the late point waits for a refresh
    assert (30, "a") not in {(r[0].minute, r[1]) for r in view_rows(cpu, "iot.stored")}
    # time travel and the SDK read the stored rows
    at0 = cpu.sql("SELECT count(*) FROM iot.cpu_1m VERSION AS OF 0").scalar()
    assert at0 == 12 == cpu.table("iot.cpu_1m").to_arrow().num_rows
    # a reader of the view who may not read the source gets the stored rows
    use = {"USE CATALOG ON main", "USE SCHEMA ON CATALOG main"}
    bob = cpu.with_principal(Principal("bob", frozenset({*use, "SELECT ON main.iot.cpu_1m"})))
    assert len(view_rows(bob)) == 12
    cpu.sql("REFRESH MATERIALIZED VIEW iot.cpu_1m")
    assert cpu.table("iot.cpu_1m").info.properties["matrixos.view.watermark"].endswith("00:30:00")
    assert view_rows(cpu) == fresh_rows(cpu)


def test_matrixos_serve_refreshes_views_and_enforces_retention(
    lh: mx.Lakehouse, tmp_path: Path
) -> None:
    """The server starts the upkeep: a view is refreshed at its interval, retention enforced."""
    lh.create_table("iot.cpu", points(list(range(10))))
    lh.sql(f"CREATE MATERIALIZED VIEW iot.cpu_1m AS {QUERY} WITH (refresh = '1 second')")
    old = dt.date(2000, 1, 1)
    lh.create_table(
        "iot.r", [{"day": old, "v": 1.0}, {"day": dt.date.today(), "v": 2.0}], partition_by=["day"]
    )
    lh.sql("ALTER TABLE iot.r SET TBLPROPERTIES ('matrixos.retention' = '30 days')")
    lh.close()  # its own refresher stops: from here on only the server's runs
    server = MatrixOSServer(lh.warehouse.uri, tmp_path / "server.log").start()
    reader = mx.connect(lh.warehouse.uri)
    try:
        reader.table("iot.cpu").append(points([90]))

        def stored() -> list[int]:
            col = reader.table("iot.cpu_1m").to_arrow().column("bucket")
            return [b.minute for b in col.to_pylist()]

        deadline = time.monotonic() + 60
        while (30 not in stored() or reader.table("iot.r").to_arrow().num_rows != 1) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.2)  # polling another process: no event to wait on
        assert 30 in stored(), server.log()
        assert reader.table("iot.r").to_arrow().column("v").to_pylist() == [2.0], server.log()
    finally:
        reader.close()
        server.stop()


def test_a_refresh_that_lands_last_with_older_rows_is_repaired(cpu: mx.Lakehouse) -> None:
    """Two refreshers (a session's and a server's) race: the one computed from the older
    source version commits last (Delta's conflict retry puts it on top). The version recorded
    in that commit is the older one, so the next refresh recomputes what it overwrote."""
    cpu.sql(f"CREATE MATERIALIZED VIEW iot.cpu_1m AS {QUERY}")
    stale = cpu.table("iot.cpu_1m").to_arrow()  # computed from source version 1
    cpu.table("iot.cpu").append(points([3.5], usage=500))
    cpu.sql("REFRESH MATERIALIZED VIEW iot.cpu_1m")
    assert view_rows(cpu) == fresh_rows(cpu)
    # the slower refresher's commit: minute 3 as of source version 1
    old = stale.filter(pc.equal(stale.column("bucket").cast(pa.string()), "2024-01-01 00:03:00"))
    cpu.service.table(cpu.principal, "iot.cpu_1m").overwrite(
        old,
        where="bucket >= '2024-01-01 00:03:00' AND bucket < '2024-01-01 00:04:00'",
        commit_metadata={"matrixos.view.source_version": "1"},
    )
    assert view_rows(cpu) != fresh_rows(cpu)
    out = cpu.sql("REFRESH MATERIALIZED VIEW iot.cpu_1m").to_arrow().to_pylist()[0]
    assert out["buckets"] == 1
    assert view_rows(cpu) == fresh_rows(cpu)


def test_background_refresh_acts_as_the_views_owner(cpu: mx.Lakehouse) -> None:
    """A view is refreshed with its owner's grants: once alice may no longer read the source,
    the (admin) refresher does not put rows she cannot see into her view."""
    from matrixos.catalog.accounts import Accounts

    for stmt in (
        "CREATE USER alice",
        "GRANT USE CATALOG ON CATALOG main TO alice",
        "GRANT USE SCHEMA, CREATE ON SCHEMA iot TO alice",
        "GRANT SELECT ON TABLE iot.cpu TO alice",
    ):
        cpu.sql(stmt)
    alice = cpu.with_principal(Accounts(cpu.catalog).principal("alice"))
    alice.sql(f"CREATE MATERIALIZED VIEW iot.mine AS {QUERY} WITH (refresh = '1 second')")
    assert cpu.table("iot.mine").info.owner == "alice"
    assert cpu.maintenance is not None
    cpu.maintenance.stop()  # the session's own refresher: this test drives one by hand
    refresher = ViewRefresher(cpu._engine.views, cpu.principal)
    cpu.sql("REVOKE SELECT ON TABLE iot.cpu FROM alice")
    cpu.table("iot.cpu").append(points([40]))
    assert refresher.run_once(now=0.0) == []  # refused as alice: logged, nothing written
    assert cpu.table("iot.mine").to_arrow().num_rows == 12
    cpu.sql("GRANT SELECT ON TABLE iot.cpu TO alice")
    assert refresher.run_once(now=10.0) == ["main.iot.mine"]
    assert cpu.table("iot.mine").to_arrow().num_rows == 13


def test_a_view_over_a_cte_is_recomputed_whole(cpu: mx.Lakehouse) -> None:
    """Its time column is the CTE's: the source's statistics cannot bound the changed buckets,
    so a refresh recomputes everything (and reads are materialized only)."""
    cpu.sql(
        "CREATE MATERIALIZED VIEW iot.c AS WITH r AS (SELECT time AS at, usage FROM iot.cpu) "
        "SELECT time_bucket('1 minute', at) AS bucket, max(usage) AS top FROM r GROUP BY 1"
    )
    assert "matrixos.view.watermark" not in cpu.table("iot.c").info.properties
    cpu.table("iot.cpu").append(points([50], usage=7))
    out = cpu.sql("REFRESH MATERIALIZED VIEW iot.c").to_arrow().to_pylist()[0]
    assert out["buckets"] == -1
    got = cpu.sql("SELECT * FROM iot.c ORDER BY 1").fetchall()
    want = cpu.sql(
        "SELECT time_bucket('1 minute', time), max(usage) FROM iot.cpu GROUP BY 1 ORDER BY 1"
    ).fetchall()
    assert got == want


def test_real_time_reads_include_points_still_in_the_write_ahead_log(
    lh: mx.Lakehouse, tmp_path: Path
) -> None:
    """Points acknowledged by the IoT ingest and not yet committed are part of the source's
    latest version: a view's real-time part sees them before any flush or refresh."""
    from matrixos.iot.ingest import IotIngest

    ingest = IotIngest(lh, tmp_path / "wal", start=False)  # no flusher: points stay pending
    try:
        base = int(T0.replace(tzinfo=dt.UTC).timestamp())
        lines = "\n".join(f"cpu,host=a usage={m}.0 {base + 60 * m}" for m in range(5))
        ingest.write_lines(lh.principal, "iot.cpu", lines, "s")
        ingest.flush()
        lh.sql(
            "CREATE MATERIALIZED VIEW iot.m AS SELECT time_bucket('1 minute', time) AS bucket, "
            "max(usage) AS top FROM iot.cpu GROUP BY 1"
        )
        ingest.write_lines(lh.principal, "iot.cpu", f"cpu,host=a usage=99.0 {base + 600}", "s")
        assert ingest.uncommitted == 1
        rows = lh.sql("SELECT bucket, top FROM iot.m ORDER BY 1").fetchall()
        assert [(r[0].minute, r[1]) for r in rows] == [
            (0, 0.0), (1, 1.0), (2, 2.0), (3, 3.0), (4, 4.0), (10, 99.0)
        ]  # fmt: skip
        assert lh.table("iot.m").to_arrow().num_rows == 5  # stored: not refreshed
    finally:
        ingest.close(flush=False)
