"""The distributed engine sees points still in the write-ahead log: an in-order stream as one
more fragment of a fragment plan; points that may replace committed ones, and stage plans, on
the local engine (which unions them), with EXPLAIN saying why."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import matrixos as mx
from matrixos.iot.ingest import IotIngest


@pytest.fixture
def iot_ray_lh(ray_pool: Any, ray_cluster: Any, tmp_path: Path) -> Iterator[mx.Lakehouse]:
    with mx.connect(str(tmp_path / "wh"), compute=ray_cluster.address) as lh:
        yield lh


def lines(n: int, start: int = 0) -> bytes:
    return "\n".join(
        f"cpu,host=h{i % 4} v={start + i}i {(start + i) * 10**9}" for i in range(n)
    ).encode()


def test_ray_queries_see_points_still_in_the_log(iot_ray_lh: mx.Lakehouse, tmp_path: Path) -> None:
    lh = iot_ray_lh
    with IotIngest(lh, tmp_path / "wal", flush_interval=3600) as ingest:
        for k in range(3):  # three committed files
            ingest.write_lines(lh.principal, "iot.cpu", lines(100, start=100 * k))
            ingest.flush()
        ingest.write_lines(lh.principal, "iot.cpu", lines(50, start=300))  # in the log only
        agg = "SELECT host, count(*) AS n, sum(v) AS s FROM iot.cpu GROUP BY host"
        plan = [str(x) for x in lh.sql("EXPLAIN " + agg, engine="ray").to_arrow()["plan"]]
        assert not any("Engine: local" in line for line in plan), plan  # distributed
        want = sorted(lh.sql(agg, engine="local").fetchall())
        assert sum(n for _, n, _ in want) == 350
        assert sorted(lh.sql(agg, engine="ray").fetchall()) == want
        total = "SELECT count(*), sum(v) FROM iot.cpu WHERE v >= 250"
        assert lh.sql(total, engine="ray").fetchall() == [(100, sum(range(250, 350)))]

        # a point that replaces a committed one (same series and time): applied on one node
        ingest.write_lines(lh.principal, "iot.cpu", b"cpu,host=h0 v=-1i 0")
        plan = [str(x) for x in lh.sql("EXPLAIN " + agg, engine="ray").to_arrow()["plan"]]
        assert any("Engine: local" in line and "write-ahead log" in line for line in plan)
        got = sorted(lh.sql(agg, engine="ray").fetchall())
        assert got == sorted(lh.sql(agg, engine="local").fetchall())
        assert got[0][1:] == (88, want[0][2] - 0 - 1)  # h0: v=0 replaced by -1, no new row
        ingest.flush()
        assert sorted(lh.sql(agg, engine="ray").fetchall()) == got  # committed: the same answer

        # a new field's first points: its column exists only in the log yet
        ingest.write_lines(lh.principal, "iot.cpu", b"cpu,host=h9 v=1i,temp=20.5 999000000000")
        q = "SELECT count(*), max(temp) FROM iot.cpu"
        assert lh.sql(q, engine="ray").fetchall() == [(351, 20.5)]
