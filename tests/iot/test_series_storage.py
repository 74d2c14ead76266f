"""Series tables on disk: compaction writes their files sorted by (tags, time) — the sort
order follows the tags as they grow — with the points unchanged."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

import matrixos as mx
from matrixos.catalog.names import TableIdent
from matrixos.iot.ingest import IotIngest
from matrixos.storage.delta import wait_for_maintenance

WAREHOUSES = ("local",)


@pytest.fixture
def ingest(lh: mx.Lakehouse, tmp_path: Path) -> Iterator[IotIngest]:
    with IotIngest(lh, tmp_path / "wal", flush_interval=3600) as ing:
        yield ing


def shuffled_lines(seed: int, n: int = 200) -> bytes:
    """Points of 20 hosts in two regions at random times of two days, in no order."""
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        h = rnd.randrange(20)
        t = 1_709_251_200 + rnd.randrange(2 * 86_400)  # 2024-03-01 and 02
        out.append(f"cpu,region=r{h % 2},host=h{h:02d} v={seed * 1000 + i}i {t}")
    return "\n".join(out).encode()


def location(lh: mx.Lakehouse, name: str) -> str:
    return lh.service.catalog.get_table(TableIdent.parse(name)).location


def in_order(path: str, keys: list[str]) -> bool:
    rows = pq.read_table(path).select(keys).to_pylist()
    tuples = [tuple(r[k] for k in keys) for r in rows]
    return tuples == sorted(tuples)


def test_series_tables_are_compacted_sorted_by_tags_then_time(
    lh: mx.Lakehouse, ingest: IotIngest
) -> None:
    ingest.write_lines(lh.principal, "iot.cpu", shuffled_lines(0), "s")
    ingest.flush()
    props = lh.service.catalog.get_table(TableIdent.parse("iot.cpu")).properties
    assert json.loads(props["matrixos.sort_by"]) == ["region", "host", "time"]
    lh.sql("ALTER TABLE iot.cpu SET TBLPROPERTIES ('matrixos.autoCompact.minFiles' = '4')")
    for seed in range(1, 8):
        ingest.write_lines(lh.principal, "iot.cpu", shuffled_lines(seed), "s")
        ingest.flush()  # one small file a day per flush; a tier of 4 compacts
    wait_for_maintenance()  # auto-compaction may run off the commit path
    loc = location(lh, "iot.cpu")
    delta = DeltaTable(loc)
    assert "OPTIMIZE" in [h["operation"] for h in delta.history()]
    keys = ["region", "host", "time"]
    merged = [
        a
        for a in pa.table(delta.get_add_actions(flatten=True)).to_pylist()
        if a["num_records"] > 200
    ]
    assert merged and all(in_order(f"{loc}/{a['path']}", keys) for a in merged)
    want = sorted(lh.sql("SELECT region, host, time, v FROM iot.cpu").fetchall())
    assert len(want) == 1600  # no two points share a series and a second here

    # OPTIMIZE rewrites each day whole, in order; the points stay the same
    lh.sql("OPTIMIZE iot.cpu")
    delta = DeltaTable(loc)
    files = pa.table(delta.get_add_actions(flatten=True)).to_pylist()
    assert len(files) == 2 and all(".sorted-" in a["path"] for a in files)  # one file a day
    assert all(in_order(f"{loc}/{a['path']}", keys) for a in files)
    assert sorted(lh.sql("SELECT region, host, time, v FROM iot.cpu").fetchall()) == want

    # a new tag joins the sort order before time
    ingest.write_lines(lh.principal, "iot.cpu", b"cpu,region=r0,host=h00,rack=k1 v=1i 1709251200")
    props = lh.service.catalog.get_table(TableIdent.parse("iot.cpu")).properties
    assert json.loads(props["matrixos.sort_by"]) == ["region", "host", "rack", "time"]
