"""Every read path of the process that holds the write-ahead log sees acknowledged points
before their commit: SQL, ``Table.to_arrow()`` / ``count()`` / Polars, and exactly once after
it; time travel reads what was committed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

import matrixos as mx
from matrixos.iot.ingest import IotIngest

WAREHOUSES = ("local",)


@pytest.fixture
def ingest(lh: mx.Lakehouse, tmp_path: Path) -> Iterator[IotIngest]:
    with IotIngest(lh, tmp_path / "wal", flush_interval=3600) as ing:
        yield ing


def lines(n: int, start: int = 0, host: str = "a") -> bytes:
    return "\n".join(
        f"cpu,host={host} v={start + i}i {(start + i) * 10**9}" for i in range(n)
    ).encode()


def test_sdk_reads_see_acknowledged_points(lh: mx.Lakehouse, ingest: IotIngest) -> None:
    ingest.write_lines(lh.principal, "iot.cpu", lines(10))
    ingest.flush()
    ingest.write_lines(lh.principal, "iot.cpu", lines(5, start=10))  # in the log only
    t = lh.table("iot.cpu")
    assert t.version == 1
    assert t.count() == 15
    assert sorted(t.to_arrow().column("v").to_pylist()) == list(range(15))
    assert t.to_arrow(columns=["v"]).column_names == ["v"]
    assert t.to_polars().height == 15
    assert t.to_arrow(version=1).num_rows == 10  # time travel: committed rows only
    ingest.flush()
    assert t.count() == 15 and t.to_arrow().num_rows == 15  # once each after the commit


def test_sdk_reads_apply_last_write_wins_of_pending_points(
    lh: mx.Lakehouse, ingest: IotIngest
) -> None:
    ingest.write_lines(lh.principal, "iot.cpu", b"cpu,host=a v=1i,w=1i 1000000000")
    ingest.flush()
    # the same series and time again: it replaces the committed point's v, keeps its w
    ingest.write_lines(lh.principal, "iot.cpu", b"cpu,host=a v=2i 1000000000")
    rows = lh.table("iot.cpu").to_arrow().select(["host", "v", "w"]).to_pylist()
    assert rows == [{"host": "a", "v": 2, "w": 1}]
    assert lh.table("iot.cpu").count() == 1
    ingest.flush()
    rows = lh.table("iot.cpu").to_arrow().select(["host", "v", "w"]).to_pylist()
    assert rows == [{"host": "a", "v": 2, "w": 1}]


def test_a_repeated_query_reuses_its_plan_and_sees_each_new_point(
    lh: mx.Lakehouse, ingest: IotIngest
) -> None:
    ingest.write_lines(lh.principal, "iot.cpu", lines(10))
    ingest.flush()
    q = "SELECT count(*), sum(v) FROM iot.cpu WHERE host = 'a'"
    ingest.write_lines(lh.principal, "iot.cpu", lines(5, start=10))
    assert lh.sql(q).fetchall() == [(15, sum(range(15)))]
    for k in range(3):  # more points between runs: the kept plan scans the log's rows now
        ingest.write_lines(lh.principal, "iot.cpu", lines(5, start=15 + 5 * k))
        res = lh.sql(q)
        assert res.fetchall() == [(20 + 5 * k, sum(range(20 + 5 * k)))]
        assert res.stats.get("plan") == "cached"
    # a point replacing a committed one: the pending rows change shape, planned again
    ingest.write_lines(lh.principal, "iot.cpu", b"cpu,host=a v=100i 0")
    res = lh.sql(q)
    assert res.fetchall() == [(30, sum(range(1, 30)) + 100)]
    assert res.stats.get("plan") != "cached"
    # a new column only in the log: planned again, and seen
    ingest.write_lines(lh.principal, "iot.cpu", b"cpu,host=a v=1i,temp=2.5 99000000000")
    assert lh.sql(q).fetchall() == [(31, sum(range(1, 30)) + 101)]
    assert lh.sql("SELECT max(temp) FROM iot.cpu").fetchall() == [(2.5,)]
    ingest.flush()  # committed: a new version; each point still counted once
    for _ in range(2):
        assert lh.sql(q).fetchall() == [(31, sum(range(1, 30)) + 101)]


def test_counts_taken_while_flushes_land_see_each_point_once(
    lh: mx.Lakehouse, ingest: IotIngest
) -> None:
    # A writer acknowledges points and flushes them, again and again, while this thread
    # counts: each count lies between the points acknowledged before it began and those
    # acknowledged when it ended, whatever moment of a commit it met.
    import threading

    acked = 0
    stop = threading.Event()
    failures: list[BaseException] = []

    def write() -> None:
        nonlocal acked
        try:
            while not stop.is_set():
                ingest.write_lines(lh.principal, "iot.cpu", lines(50, start=acked))
                acked += 50
                ingest.flush()
        except BaseException as e:  # reported by the test
            failures.append(e)

    ingest.write_lines(lh.principal, "iot.cpu", lines(50))
    acked = 50
    writer = threading.Thread(target=write)
    writer.start()
    seen = []
    try:
        for _ in range(150):
            low = acked
            (n,) = lh.sql("SELECT count(*) FROM iot.cpu").fetchone()
            high = acked
            seen.append((low, n, high))
    finally:
        stop.set()
        writer.join()
    assert not failures, failures
    wrong = [s for s in seen if not s[0] <= s[1] <= s[2]]
    assert not wrong, wrong[:5]
    assert lh.table("iot.cpu").version > 10  # the counts met many commits
