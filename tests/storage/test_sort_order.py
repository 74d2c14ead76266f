"""A table's sort order (property ``matrixos.sort_by``): compaction writes its rows sorted by
those columns, in files and row groups whose statistics are tight, without changing the rows,
and two compactions of one snapshot still commit once."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import random
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

import matrixos as mx
from matrixos.catalog.names import TableIdent
from matrixos.errors import ConcurrentWriteError, ConfigError
from matrixos.storage._delta_compaction import ROW_GROUP_ROWS
from matrixos.storage.delta import DeltaStore, wait_for_maintenance
from matrixos.storage.options import StorageOptions

T0 = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)
HOSTS = [f"host_{i:03d}" for i in range(40)]


def batch(seed: int, n: int = 4_000) -> pa.Table:
    """``n`` points of random hosts at random times over two days, in no order."""
    rnd = random.Random(seed)
    times = [T0 + dt.timedelta(seconds=rnd.randrange(2 * 86_400)) for _ in range(n)]
    return pa.table(
        {
            "host": [rnd.choice(HOSTS) for _ in range(n)],
            "time": pa.array(times, pa.timestamp("us", tz="UTC")),
            "v": [rnd.random() for _ in range(n)],
            "day": pa.array([t.date() for t in times], pa.date32()),
        }
    )


def files_of(loc: str, opts: dict[str, str] | None) -> list[tuple[dict[str, Any], pa.Table]]:
    """Each data file of the table's latest version: its add action (flattened) and its rows."""
    delta = DeltaTable(loc, storage_options=opts)
    fs = StorageOptions.from_mapping(opts).to_pyarrow() if opts else None
    root = loc.split("://", 1)[-1].rstrip("/")
    out = []
    for a in pa.table(delta.get_add_actions(flatten=True)).to_pylist():
        path = f"{root}/{a['path']}"
        out.append((a, pq.read_table(path, filesystem=fs) if fs else pq.read_table(path)))
    return out


def series_keys(rows: pa.Table) -> list[tuple[Any, Any]]:
    return list(zip(rows.column("host").to_pylist(), rows.column("time").to_pylist(), strict=True))


def sort_key(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r["host"], r["time"], r["v"])


def test_optimize_writes_sorted_files_with_tight_statistics(lh: mx.Lakehouse) -> None:
    props = {"matrixos.sort_by": '["host", "time"]', "matrixos.targetFileBytes": "60000"}
    t = lh.create_table("s.points", batch(0), partition_by=["day"], properties=props)
    for seed in range(1, 6):
        t.append(batch(seed))
    loc = lh.service.catalog.get_table(TableIdent.parse("s.points")).location
    opts = lh.service.warehouse.delta_options(loc)
    before = sorted(t.to_arrow().to_pylist(), key=sort_key)
    assert len(files_of(loc, opts)) == 12  # six appends, two days each

    out = t.optimize()
    assert out["numFilesRemoved"] == 12 and out["numFilesAdded"] > 2  # cut at the target size
    assert sorted(t.to_arrow().to_pylist(), key=sort_key) == before  # the same rows
    h = DeltaTable(loc, storage_options=opts).history(1)[0]
    assert h["operation"] == "OPTIMIZE"
    assert json.loads(h["operationParameters"]["sortBy"]) == ["host", "time"]

    by_day: dict[Any, list[tuple[dict[str, Any], pa.Table]]] = {}
    for action, rows in files_of(loc, opts):
        keys = series_keys(rows)
        assert keys == sorted(keys)  # rows in (host, time) order
        # file statistics are the rows' own bounds (time rounded outward to milliseconds)
        assert action["min.host"] == min(rows.column("host").to_pylist())
        assert action["max.host"] == max(rows.column("host").to_pylist())
        lo, hi = min(k[1] for k in keys), max(k[1] for k in keys)
        assert lo - dt.timedelta(milliseconds=1) < action["min.time"] <= lo
        assert hi <= action["max.time"] < hi + dt.timedelta(milliseconds=1)
        by_day.setdefault(action["partition.day"], []).append((action, rows))
    for files in by_day.values():
        # each day's files hold consecutive ranges of the sort key: a query for one host
        # reads one file, or two where a file boundary falls inside its rows
        files.sort(key=lambda f: (f[0]["min.host"], f[0]["max.host"]))
        for (a, _), (b, _) in itertools.pairwise(files):
            assert a["max.host"] <= b["min.host"]
        assert (
            max(sum(f[0]["min.host"] <= h <= f[0]["max.host"] for f in files) for h in HOSTS) <= 2
        )

    # nothing small left twice in a partition: OPTIMIZE again rewrites nothing
    assert t.optimize()["numFilesRemoved"] == 0
    # new points make the day's partition be rewritten whole, still in order
    t.append(batch(9, 500))
    assert t.optimize()["numFilesAdded"] > 0
    assert sorted(t.to_arrow().to_pylist(), key=sort_key) == sorted(
        before + batch(9, 500).to_pylist(), key=sort_key
    )
    for _, rows in files_of(loc, opts):
        keys = series_keys(rows)
        assert keys == sorted(keys)


def test_sorted_files_have_row_groups_a_series_filter_skips(tmp_path: Any) -> None:
    loc = str(tmp_path / "rg")
    store = DeltaStore(loc, sort_by=["host", "time"], target_file_bytes=1 << 30)
    store.create(batch(0, 200_000))
    store.append(batch(1, 200_000))
    assert store.optimize()["numFilesAdded"] == 1
    [(action, _)] = files_of(loc, None)
    assert ".sorted-" in action["path"]  # marked: written in the table's order
    path = str(tmp_path / "rg" / action["path"])
    meta = pq.ParquetFile(path).metadata
    assert meta.num_rows == 400_000 and meta.row_group(0).num_rows == ROW_GROUP_ROWS
    col = meta.schema.to_arrow_schema().get_field_index("host")
    spans = [
        (meta.row_group(i).column(col).statistics.min, meta.row_group(i).column(col).statistics.max)
        for i in range(meta.num_row_groups)
    ]
    # one host's rows (~10,000) fall in one row group, or two at a boundary
    assert max(sum(lo <= h <= hi for lo, hi in spans) for h in HOSTS) <= 2


def test_auto_compaction_sorts_the_files_it_merges(tmp_path: Any) -> None:
    loc = str(tmp_path / "auto")
    store = DeltaStore(loc, sort_by=["host", "time"], auto_compact_min_files=4)
    store.create(batch(0, 300), partition_by=["day"])
    for seed in range(1, 8):
        store.append(batch(seed, 300))  # each ~150 rows a day; a tier of 4 files compacts
    wait_for_maintenance()  # auto-compaction runs off the commit path
    assert "OPTIMIZE" in [h["operation"] for h in DeltaTable(loc).history()]
    merged = [(a, rows) for a, rows in files_of(loc, None) if a["num_records"] > 300]
    assert merged
    for _, rows in merged:
        keys = series_keys(rows)
        assert keys == sorted(keys)
    got = sorted(DeltaTable(loc).to_pyarrow_table().to_pylist(), key=sort_key)
    want = pa.concat_tables([batch(s, 300) for s in range(8)]).to_pylist()
    assert got == sorted(want, key=sort_key)


def test_sort_order_names_it_cannot_use(tmp_path: Any, lh: mx.Lakehouse) -> None:
    with pytest.raises(ConfigError, match=r"matrixos\.sort_by"):
        lh.create_table("s.bad", batch(0, 10), properties={"matrixos.sort_by": "[1, 2]"})
    # columns the table lacks (or partition columns) are skipped: the rest still orders rows
    loc = str(tmp_path / "skip")
    store = DeltaStore(loc, sort_by=["day", "gone", "v"])
    store.create(batch(0, 100), partition_by=["day"])
    store.append(batch(1, 100))
    store.optimize()
    for _, rows in files_of(loc, None):
        assert rows.column("v").to_pylist() == sorted(rows.column("v").to_pylist())


class _StaleOnce(DeltaStore):
    """A store whose next write lets ``rival`` commit after it read its snapshot."""

    rival: Any = None

    def _writable(self) -> DeltaTable:
        got = super()._writable()
        rival, self.rival = self.rival, None
        if rival is not None:
            rival()
        return got


def test_two_sorted_compactions_of_one_snapshot_commit_once(tmp_path: Any) -> None:
    loc = str(tmp_path / "race")
    a = _StaleOnce(loc, sort_by=["host", "time"])
    b = DeltaStore(loc, sort_by=["host", "time"])
    b.create(batch(0, 500), partition_by=["day"])
    for seed in range(1, 4):
        b.append(batch(seed, 500))
    want = sorted(DeltaTable(loc).to_pyarrow_table().to_pylist(), key=sort_key)
    a.rival = b.optimize  # b compacts between a's read and a's commit
    with pytest.raises(ConcurrentWriteError, match="conflicted"):
        a.optimize(retries=0)
    assert sorted(DeltaTable(loc).to_pyarrow_table().to_pylist(), key=sort_key) == want
    ops = [x["operation"] for x in DeltaTable(loc).history()]
    assert ops.count("OPTIMIZE") == 1
    # an append racing a sorted compaction: both land, every row once
    a.rival = lambda: b.append(batch(7, 50))
    b.append(batch(8, 50))
    a.optimize(retries=0)
    extra = pa.concat_tables([batch(7, 50), batch(8, 50)]).to_pylist()
    got = sorted(DeltaTable(loc).to_pyarrow_table().to_pylist(), key=sort_key)
    assert got == sorted(want + extra, key=sort_key)
