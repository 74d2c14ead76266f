"""Retention (matrixos/iot/retention.py): ``matrixos.retention`` set by ALTER TABLE, enforced by
deleting whole day partitions of a real Delta table, in one pass or by the background task."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

import matrixos as mx
from matrixos.catalog.access import Principal
from matrixos.errors import AccessDenied, NotSupported, SQLError
from matrixos.iot.retention import RetentionTask, enforce_retention

WAREHOUSES = ("local",)
NOW = dt.datetime(2024, 3, 1, 12, 0)


def readings(days_ago: list[int], now: dt.datetime, day_type: str = "date") -> pa.Table:
    rows = []
    for d in days_ago:
        t = now - dt.timedelta(days=d)
        for h in range(3):
            day: object = t.date() if day_type == "date" else t.date().isoformat()
            rows.append({"time": t - dt.timedelta(hours=h), "day": day, "v": float(d)})
    return pa.Table.from_pylist(rows)


def days(lh: mx.Lakehouse, name: str) -> list[object]:
    return [r[0] for r in lh.sql(f"SELECT DISTINCT day FROM {name} ORDER BY 1").fetchall()]


@pytest.mark.parametrize("day_type", ["date", "string"])
def test_retention_deletes_whole_old_day_partitions(lh: mx.Lakehouse, day_type: str) -> None:
    t = lh.create_table(
        "iot.r", readings([0, 1, 29, 30, 31, 45], NOW, day_type), partition_by=["day"]
    )
    lh.sql("ALTER TABLE iot.r SET TBLPROPERTIES ('matrixos.retention' = '30 days')")
    assert lh.table("iot.r").info.properties["matrixos.retention"] == "30 days"
    before = t.version
    # bound: 2024-01-31 12:00; day 01-30 ends at 01-31 00:00 (gone), 01-31 holds rows on
    # both sides of the bound and is kept whole
    assert enforce_retention(lh.service, lh.principal, now=NOW) == {"main.iot.r": 6}
    kept = [str(d) for d in days(lh, "iot.r")]
    assert kept == ["2024-01-31", "2024-02-01", "2024-02-29", "2024-03-01"]
    last = lh.table("iot.r").history(1)[0]
    assert last["operation"] == "DELETE"
    assert int(last["operationMetrics"]["num_added_files"]) == 0  # files removed, none rewritten
    assert lh.table("iot.r").version == before + 1
    # nothing older left: the next pass commits nothing
    assert enforce_retention(lh.service, lh.principal, now=NOW) == {}
    assert lh.table("iot.r").version == before + 1


def test_retention_property_is_checked_and_can_be_unset(lh: mx.Lakehouse) -> None:
    lh.create_table("iot.flat", readings([0, 40], NOW))
    with pytest.raises(NotSupported, match="partitioned by day"):
        lh.sql("ALTER TABLE iot.flat SET TBLPROPERTIES ('matrixos.retention' = '30 days')")
    lh.create_table("iot.r", readings([0, 40], NOW), partition_by=["day"])
    with pytest.raises(SQLError, match="not a duration"):
        lh.sql("ALTER TABLE iot.r SET TBLPROPERTIES ('matrixos.retention' = 'a while')")
    # PostgreSQL's storage-parameter form sets it too
    lh.sql("ALTER TABLE iot.r SET ('matrixos.retention' = '2 weeks')", dialect="postgres")
    assert lh.table("iot.r").info.properties["matrixos.retention"] == "2 weeks"
    assert lh.maintenance is None  # setting it deletes nothing until maintenance is started
    lh.sql("ALTER TABLE iot.r UNSET TBLPROPERTIES ('matrixos.retention')")
    assert "matrixos.retention" not in lh.table("iot.r").info.properties
    assert enforce_retention(lh.service, lh.principal, now=NOW) == {}
    assert len(days(lh, "iot.r")) == 2
    with pytest.raises(AccessDenied, match="ALTER"):
        lh.sql("ALTER TABLE iot.r ADD COLUMN w INT")


def test_setting_retention_needs_modify(lh: mx.Lakehouse) -> None:
    lh.create_table("iot.r", readings([0], NOW), partition_by=["day"])
    bob = lh.with_principal(
        Principal("bob", frozenset({"USE CATALOG ON main", "USE SCHEMA ON CATALOG main",
                                    "SELECT ON main.iot.r"}))
    )  # fmt: skip
    with pytest.raises(AccessDenied, match="MODIFY"):
        bob.sql("ALTER TABLE iot.r SET TBLPROPERTIES ('matrixos.retention' = '1 day')")


def test_background_task_enforces_retention(lh: mx.Lakehouse) -> None:
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    lh.create_table("iot.r", readings([0, 1, 10], now), partition_by=["day"])
    lh.sql("ALTER TABLE iot.r SET TBLPROPERTIES ('matrixos.retention' = '3 days')")
    task = RetentionTask(lh.service, lh.principal, every=0.05).start()
    try:
        assert task.wait_runs(2)
    finally:
        task.stop()
    assert not task.running
    assert days(lh, "iot.r") == [(now - dt.timedelta(days=d)).date() for d in (1, 0)]


def test_retention_of_a_series_table_written_by_the_ingest(lh: mx.Lakehouse, tmp_path) -> None:
    """The IoT ingest's tables (partitioned by a DATE ``day``) take the property as they are."""
    from matrixos.iot.ingest import IotIngest

    now = dt.datetime(2024, 3, 1, 12, tzinfo=dt.UTC)
    lines = "\n".join(
        f"cpu,host=a usage={d}.0 {int((now - dt.timedelta(days=d)).timestamp())}"
        for d in (0, 10, 40, 41)
    )
    with IotIngest(lh, tmp_path / "wal") as ingest:
        ingest.write_lines(lh.principal, "iot.cpu", lines, "s")
    lh.sql("ALTER TABLE iot.cpu SET TBLPROPERTIES ('matrixos.retention' = '30 days')")
    deleted = enforce_retention(lh.service, lh.principal, now=now.replace(tzinfo=None))
    assert deleted == {"main.iot.cpu": 2}
    assert lh.sql("SELECT usage FROM iot.cpu ORDER BY 1").fetchall() == [(0.0,), (10.0,)]
