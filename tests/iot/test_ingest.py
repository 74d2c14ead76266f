"""IotIngest on a real warehouse: read-your-writes through the write-ahead log, exactly-once
commits (Delta txn) across restarts, schema from the data, type conflicts, last write wins,
checkpoints under many small commits, and back-pressure."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

import matrixos as mx
from matrixos.catalog.names import TableIdent
from matrixos.errors import IngestBusy, PointsRejected
from matrixos.iot.flusher import commit_entries
from matrixos.iot.ingest import IotIngest

WAREHOUSES = ("local",)


@pytest.fixture
def ingest(lh: mx.Lakehouse, tmp_path: Path) -> Iterator[IotIngest]:
    # A long interval: the tests decide when to flush.
    with IotIngest(lh, tmp_path / "wal", flush_interval=3600) as ing:
        yield ing


def count(lh: mx.Lakehouse, table: str = "iot.cpu") -> int:
    return lh.sql(f"SELECT count(*) FROM {table}").fetchall()[0][0]


def lines(n: int, start: int = 0, host: str = "a") -> bytes:
    return "\n".join(f"cpu,host={host} v={i}i {(start + i) * 10**9}" for i in range(n)).encode()


def test_acknowledged_points_are_visible_at_once_and_after_the_flush(
    lh: mx.Lakehouse, ingest: IotIngest
) -> None:
    ack = ingest.write_lines(lh.principal, "iot.cpu", lines(100))
    assert ack.points == 100 and ack.tables == ["main.iot.cpu"]
    assert count(lh) == 100  # from the write-ahead log: nothing committed yet
    assert lh.table("iot.cpu").version == 0  # created empty, before the acknowledgement
    assert ingest.flush()["points"] == 100
    assert count(lh) == 100  # committed exactly once, not also pending
    t = lh.table("iot.cpu")
    assert t.version == 1 and t.partition_by == ["day"]
    schema = t.schema
    assert str(schema.field("time").type) == "timestamp[us, tz=UTC]"
    assert str(schema.field("day").type) == "date32[day]"


def test_new_fields_add_columns_and_type_conflicts_are_refused(
    lh: mx.Lakehouse, ingest: IotIngest
) -> None:
    ingest.write_lines(lh.principal, "iot.cpu", b"cpu,host=a v=1i 1000000000")
    ingest.flush()
    ingest.write_lines(lh.principal, "iot.cpu", b"cpu,host=a v=2i,temp=20.5 2000000000")
    got = lh.sql("SELECT v, temp FROM iot.cpu ORDER BY time").fetchall()
    assert got == [(1, None), (2, 20.5)]  # the pending point's new column, before the flush
    with pytest.raises(PointsRejected) as e:
        ingest.write_lines(lh.principal, "iot.cpu", b'cpu,host=a v=1i 3\ncpu,host=a v="x" 4')
    assert e.value.rejected[0]["line"] == 2 and e.value.rejected[0]["field"] == "v"
    with pytest.raises(PointsRejected) as e:  # against the table's column (committed)
        ingest.write_lines(lh.principal, "iot.cpu", b"cpu,host=a v=true 5")
    assert e.value.rejected[0]["field"] == "v" and "type conflict" in str(e.value)
    ingest.flush()
    assert lh.sql("SELECT count(*), sum(v) FROM iot.cpu").fetchall() == [(2, 3)]
    assert "temp" in lh.table("iot.cpu").schema.names


def test_last_write_wins_field_by_field(lh: mx.Lakehouse, ingest: IotIngest) -> None:
    ingest.write_lines(lh.principal, "iot.cpu", b"cpu,host=a v=1i,w=10i 5\ncpu,host=b v=7i 5")
    ingest.flush()
    # A repeated point (same series and time) with only one field: v replaced, w kept.
    ingest.write_lines(lh.principal, "iot.cpu", b"cpu,host=a v=2i 5")
    query = "SELECT host, v, w FROM iot.cpu ORDER BY host"
    expected = [("a", 2, 10), ("b", 7, None)]
    assert lh.sql(query).fetchall() == expected  # pending replaces committed
    ingest.write_lines(lh.principal, "iot.cpu", b"cpu,host=a v=3i 5\ncpu,host=a v=4i 5")
    assert lh.sql(query).fetchall() == [("a", 4, 10), ("b", 7, None)]
    ingest.flush()  # a MERGE, not an append
    assert lh.sql(query).fetchall() == [("a", 4, 10), ("b", 7, None)]


def test_restart_replays_and_never_duplicates(lh: mx.Lakehouse, tmp_path: Path) -> None:
    wal = tmp_path / "wal"
    first = IotIngest(lh, wal, flush_interval=3600)
    first.write_lines(lh.principal, "iot.cpu", lines(10))
    first.flush()
    first.write_lines(lh.principal, "iot.cpu", lines(5, start=10))
    # Committed but the process died before truncating the log: the commit holds the txn.
    st = first.tables()[0]
    commit_entries(first, st, [e for e in st.entries if e.version is None])
    first.write_lines(lh.principal, "iot.cpu", lines(3, start=15))
    first.close(flush=False)  # a crash: 3 points only in the log
    assert lh.sql("SELECT count(*) FROM iot.cpu").fetchall() == [(15,)]
    second = IotIngest(lh, wal, flush_interval=3600)
    try:
        assert count(lh) == 18  # replayed points are visible again
        second.flush()
        assert count(lh) == 18
        assert lh.sql("SELECT count(DISTINCT time) FROM iot.cpu").fetchall() == [(18,)]
    finally:
        second.close()
    assert not list((wal).glob("*.wal")) or all(p.stat().st_size == 0 for p in wal.glob("*.wal"))


def test_schema_bucket_routes_measurements_to_tables(lh: mx.Lakehouse, ingest: IotIngest) -> None:
    ack = ingest.write_lines(lh.principal, "fleet", b"cpu,host=a v=1 1\nmem,host=a used=5i 1")
    assert sorted(ack.tables) == ["main.fleet.cpu", "main.fleet.mem"]
    assert lh.sql("SELECT used FROM fleet.mem").fetchall() == [(5,)]
    ack = ingest.write_lines(lh.principal, "fleet.all", b"cpu,host=a v=1 1\nmem,host=a u=5i 1")
    assert lh.sql("SELECT measurement FROM fleet.all ORDER BY 1").fetchall() == [
        ("cpu",),
        ("mem",),
    ]


def test_json_points(lh: mx.Lakehouse, ingest: IotIngest) -> None:
    ingest.write_json(
        lh.principal,
        "iot.env",
        {
            "points": [
                {"tags": {"room": "k"}, "fields": {"t": 20}, "time": 1},
                {"room": "b", "t": 21.5, "time": 2},
            ]
        },
        "s",
    )
    assert lh.sql("SELECT room, t FROM iot.env ORDER BY time").fetchall() == [
        ("k", 20.0),
        ("b", 21.5),
    ]
    with pytest.raises(PointsRejected, match="point 2, field 't'"):
        bad = [{"room": "k", "t": 1}, {"tags": {"room": "k"}, "fields": {"t": "x"}}]
        ingest.write_json(lh.principal, "iot.env", bad)


def test_many_small_commits_checkpoint(lh: mx.Lakehouse, ingest: IotIngest) -> None:
    for i in range(105):
        ingest.write_lines(lh.principal, "iot.cpu", lines(2, start=2 * i))
        ingest.flush()
    location = lh.service.catalog.get_table(TableIdent.parse("iot.cpu")).location
    log_dir = Path(location.removeprefix("file://")) / "_delta_log"
    assert list(log_dir.glob("*.checkpoint.parquet"))
    assert count(lh) == 210


def test_back_pressure_refuses_beyond_capacity(lh: mx.Lakehouse, tmp_path: Path) -> None:
    with IotIngest(lh, tmp_path / "wal", flush_interval=3600, max_pending_bytes=20_000) as ing:
        ing.write_lines(lh.principal, "iot.cpu", lines(50))
        with pytest.raises(IngestBusy) as e:
            for i in range(1, 100):
                ing.write_lines(lh.principal, "iot.cpu", lines(50, start=50 * i))
        assert e.value.retry_after >= 1
        acknowledged = ing.acknowledged
        assert count(lh) == acknowledged  # what was refused is nowhere
    assert count(lh) == acknowledged


def test_writes_need_modify(lh: mx.Lakehouse, ingest: IotIngest) -> None:
    from matrixos.catalog.access import Principal

    ingest.write_lines(lh.principal, "iot.cpu", lines(1))
    nobody = Principal("nobody", grants=frozenset())
    with pytest.raises(mx.errors.AccessDenied):
        ingest.write_lines(nobody, "iot.cpu", lines(1, start=5))
    with pytest.raises(mx.errors.AccessDenied):
        ingest.write_lines(nobody, "iot.other", lines(1))
    assert count(lh) == 1


def test_a_warehouse_that_refuses_commits_stops_acknowledging(
    lh: mx.Lakehouse, ingest: IotIngest
) -> None:
    """The table's log cannot be written (its _delta_log is replaced by a file): the flush
    fails, writes are refused (503-class IngestBusy) instead of piling up, acknowledged points
    stay visible; once the warehouse takes commits again, everything lands once."""
    ingest.write_lines(lh.principal, "iot.cpu", lines(10))
    ingest.flush()
    location = lh.service.catalog.get_table(TableIdent.parse("iot.cpu")).location
    log_dir = Path(location.removeprefix("file://")) / "_delta_log"
    ingest.write_lines(lh.principal, "iot.cpu", lines(5, start=10))
    moved = log_dir.with_name("_delta_log.moved")
    log_dir.rename(moved)
    log_dir.write_text("not a folder")
    try:
        stats = ingest.flush()
        assert stats.get("errors") and stats["points"] == 0
        with pytest.raises(IngestBusy) as e:
            ingest.write_lines(lh.principal, "iot.cpu", lines(5, start=20))
        assert e.value.storage_failure and "last commit" in str(e.value)
    finally:
        log_dir.unlink()
        moved.rename(log_dir)
    ingest.flush()  # (the refused write woke the flusher: it may have committed them already)
    assert ingest.uncommitted == 0 and count(lh) == 15
    ingest.write_lines(lh.principal, "iot.cpu", lines(5, start=20))
    ingest.flush()
    assert lh.sql("SELECT count(*), count(DISTINCT time) FROM iot.cpu").fetchall() == [(20, 20)]


def test_points_in_a_commit_under_way_are_counted_once(lh: mx.Lakehouse, ingest: IotIngest) -> None:
    """The moment between a commit landing and the flusher marking its points: a query that
    loads the new version must not also take them from the log (the txn decides)."""
    from matrixos.iot import series
    from matrixos.iot.flusher import commit_once

    ingest.write_lines(lh.principal, "iot.cpu", lines(10))
    st = ingest.tables()[0]
    for e in st.entries:
        e.committing = True
    rows = pa.concat_tables([e.rows for e in st.entries])
    store = lh.service.store(lh.service.catalog.get_table(TableIdent.parse("iot.cpu")))
    commit_once(store, rows, app_id=ingest.wal.id, version=max(e.seq for e in st.entries))
    assert count(lh) == 10  # in the table, and still unmarked in the log
    assert series.TIME in lh.table("iot.cpu").schema.names


def test_object_store_warehouse(s3_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The log stays on local disk; the flusher commits to the S3 warehouse (moto server)."""
    uri = f"s3://{s3_server.make_bucket()}/wh"
    with mx.connect(uri, storage_options=s3_server.storage_options) as s3lh:
        with IotIngest(s3lh, tmp_path / "wal", flush_interval=3600) as ing:
            ing.write_lines(s3lh.principal, "iot.cpu", lines(20))
            assert count(s3lh) == 20
            assert ing.flush()["points"] == 20
            assert count(s3lh) == 20
        assert s3lh.table("iot.cpu").version == 1
