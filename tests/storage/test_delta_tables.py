"""Managed Delta tables end to end, on a local folder and on S3 (moto): every write path,
schema evolution, time travel, maintenance and file pruning, checked against the files."""

from __future__ import annotations

import datetime as dt
import itertools
import re
import time
from decimal import Decimal
from typing import Any

import pandas as pd
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable, write_deltalake

import matrixos as mx
from matrixos.errors import MatrixOSError, SchemaMismatch, TableExists, TableNotFound
from matrixos.storage.delta import wait_for_maintenance

UTC = dt.UTC


# ------------------------------------------------------------------------------------ helpers
def parquet_files(lh: mx.Lakehouse, location: str) -> set[str]:
    """Data files under a table folder, as the storage itself lists them (not the Delta log)."""
    fs = lh.warehouse.fs
    fs.invalidate_cache()
    path = location.split("://", 1)[1] if "://" in location else location
    if not fs.exists(path):
        return set()
    return {p for p in fs.find(path) if p.endswith(".parquet") and "/_delta_log/" not in p}


def rows(t: Any, key: str = "id") -> list[dict[str, Any]]:
    table = t if isinstance(t, pa.Table) else t.to_arrow()
    return sorted(table.to_pylist(), key=lambda r: (r[key] is None, r[key]))


def plan(lh: mx.Lakehouse, sql: str) -> str:
    return "\n".join(lh.sql("EXPLAIN " + sql).to_arrow().column("plan").to_pylist())


def files_after_pruning(lh: mx.Lakehouse, sql: str) -> tuple[int, int]:
    m = re.search(r"(\d+) of (\d+) files after pruning", plan(lh, sql))
    assert m, plan(lh, sql)
    return int(m.group(1)), int(m.group(2))


def active_files(t: Any) -> int:
    return int(t.describe()["num_files"])


# ----------------------------------------------------------------------------------- creating
def test_create_from_every_kind_of_input(lh: mx.Lakehouse) -> None:
    expected = [
        {"id": 1, "name": "a", "score": 1.5},
        {"id": 2, "name": "b", "score": None},
    ]
    arrow = pa.table(
        {"id": [1, 2], "name": ["a", "b"], "score": [1.5, None]},
        schema=pa.schema([("id", pa.int64()), ("name", pa.string()), ("score", pa.float64())]),
    )
    inputs: dict[str, Any] = {
        "arrow": arrow,
        "batch": arrow.to_batches()[0],
        "polars": pl.DataFrame({"id": [1, 2], "name": ["a", "b"], "score": [1.5, None]}),
        "pandas": pd.DataFrame({"id": [1, 2], "name": ["a", "b"], "score": [1.5, None]}),
        "rows": expected,
        "columns": {"id": [1, 2], "name": ["a", "b"], "score": [1.5, None]},
    }
    for kind, data in inputs.items():
        t = lh.create_table(f"inputs.from_{kind}", data)
        assert t.version == 0, kind
        assert rows(t) == expected, kind
        assert t.schema.field("id").type == pa.int64(), kind
        assert t.schema.field("score").type == pa.float64(), kind
        assert pa.types.is_string(t.schema.field("name").type), kind
        # plain deltalake reads what MatrixOS wrote (open formats only)
        plain = DeltaTable(t.location, storage_options=lh.warehouse.delta_options(t.location))
        assert sorted(plain.to_pyarrow_table().column("id").to_pylist()) == [1, 2], kind
    assert lh.tables("inputs") == [f"main.inputs.from_{k}" for k in sorted(inputs)]


def test_create_from_a_schema_then_write(lh: mx.Lakehouse) -> None:
    schema = pa.schema(
        [
            ("id", pa.int64()),
            ("day", pa.date32()),
            ("ts", pa.timestamp("ns", "UTC")),  # Delta stores microseconds
            ("n", pa.uint16()),  # Delta has no unsigned ints
            ("amount", pa.decimal128(10, 2)),
        ]
    )
    t = lh.create_table("s.empty", schema=schema, partition_by=["day"])
    assert t.version == 0
    assert t.to_arrow().num_rows == 0
    assert t.partition_by == ["day"]
    assert t.schema.field("ts").type == pa.timestamp("us", "UTC")
    assert t.schema.field("n").type == pa.int32()
    assert t.schema.field("amount").type == pa.decimal128(10, 2)
    assert lh.sql("SELECT count(*) FROM s.empty").scalar() == 0
    t.append(
        [
            {
                "id": 1,
                "day": dt.date(2024, 1, 2),
                "ts": dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
                "n": 7,
                "amount": Decimal("12.34"),
            }
        ]
    )
    assert t.version == 1
    assert t.to_arrow().to_pylist() == [
        {
            "id": 1,
            "day": dt.date(2024, 1, 2),
            "ts": dt.datetime(2024, 1, 2, 3, 4, 5, 6, tzinfo=UTC),
            "n": 7,
            "amount": Decimal("12.34"),
        }
    ]
    with pytest.raises(TableExists):
        lh.create_table("s.empty", schema=schema)
    with pytest.raises(SchemaMismatch, match="partition"):
        lh.create_table("s.bad_partition", schema=schema, partition_by=["nope"])
    assert lh.tables("s") == ["main.s.empty"]


# -------------------------------------------------------------------------------- partitions
def test_partitioned_table_is_laid_out_and_pruned_by_partition(lh: mx.Lakehouse) -> None:
    data = pa.table(
        {
            "id": list(range(9)),
            "day": ["2024-01-01"] * 3 + ["2024-01-02"] * 3 + ["2024-01-03"] * 3,
            "v": [i * 10 for i in range(9)],
        }
    )
    t = lh.create_table("iot.readings", data, partition_by=["day"])
    files = parquet_files(lh, t.location)
    assert len(files) == 3
    assert {re.search(r"day=([^/]+)/", f).group(1) for f in files} == {  # type: ignore[union-attr]
        "2024-01-01",
        "2024-01-02",
        "2024-01-03",
    }
    q = "SELECT id, v FROM iot.readings WHERE day = '2024-01-02' ORDER BY id"
    assert files_after_pruning(lh, q) == (1, 3)
    assert lh.sql(q).fetchall() == [(3, 30), (4, 40), (5, 50)]
    q_in = "SELECT count(*) FROM iot.readings WHERE day IN ('2024-01-01', '2024-01-03')"
    assert files_after_pruning(lh, q_in) == (2, 3)
    assert lh.sql(q_in).scalar() == 6
    assert files_after_pruning(lh, "SELECT * FROM iot.readings WHERE day = '2023-12-31'") == (
        0,
        3,
    )
    assert lh.sql("SELECT count(*) FROM iot.readings WHERE day = '2023-12-31'").scalar() == 0
    # no predicate on the partition column: nothing pruned
    assert files_after_pruning(lh, "SELECT * FROM iot.readings WHERE v > 0") == (3, 3)


def test_partition_values_that_need_escaping_read_back_through_a_native_filesystem(
    lh: mx.Lakehouse,
) -> None:
    # The pyarrow dataset of a table (count, lineage, RAG) reads through pyarrow's own
    # filesystem: deltalake's default one is Python, and a prefetched read completing while
    # the interpreter shut down aborted CLI commands at exit.
    from pyarrow import fs as pafs

    data = pa.table({"id": [1, 2, 3, 4, 5], "p": ["a b/c", "x%y", "é=1", None, "a b/c"]})
    t = lh.create_table("s.escaped", data, partition_by=["p"])
    dataset = t.store.dataset()
    assert not isinstance(dataset.filesystem, pafs.PyFileSystem)
    assert rows(dataset.to_table()) == rows(data)
    assert dataset.to_table(filter=pa.compute.field("p") == "a b/c")["id"].to_pylist() == [1, 5]
    assert t.count() == 5


# ------------------------------------------------------------------------------------ writing
def test_append_overwrite_merge_delete_update(lh: mx.Lakehouse) -> None:
    t = lh.create_table(
        "sales.orders",
        pa.table({"id": [1, 2, 3], "status": ["new", "new", "new"], "amount": [10, -5, 30]}),
    )
    assert t.append([{"id": 4, "status": "new", "amount": 40}]).version == 1
    assert [r["id"] for r in rows(t)] == [1, 2, 3, 4]

    res = t.merge(
        [{"id": 2, "status": "paid", "amount": 20}, {"id": 5, "status": "new", "amount": 50}],
        on=["id"],
    )
    assert res.version == 2
    assert rows(t) == [
        {"id": 1, "status": "new", "amount": 10},
        {"id": 2, "status": "paid", "amount": 20},
        {"id": 3, "status": "new", "amount": 30},
        {"id": 4, "status": "new", "amount": 40},
        {"id": 5, "status": "new", "amount": 50},
    ]
    assert res.metrics["num_target_rows_updated"] == 1
    assert res.metrics["num_target_rows_inserted"] == 1

    # merge that only inserts: matched rows untouched
    t.merge(
        [{"id": 1, "status": "CHANGED", "amount": 0}, {"id": 6, "status": "new", "amount": 60}],
        on=["id"],
        when_matched="ignore",
    )
    assert {r["id"]: r["status"] for r in rows(t)}[1] == "new"
    assert [r["id"] for r in rows(t)] == [1, 2, 3, 4, 5, 6]

    res = t.delete("amount >= 50")
    assert res.version == 4
    assert [r["id"] for r in rows(t)] == [1, 2, 3, 4]

    res = t.update({"status": "'done'", "amount": "amount + 1"}, where="id IN (1, 3)")
    assert res.version == 5
    assert rows(t) == [
        {"id": 1, "status": "done", "amount": 11},
        {"id": 2, "status": "paid", "amount": 20},
        {"id": 3, "status": "done", "amount": 31},
        {"id": 4, "status": "new", "amount": 40},
    ]

    t.overwrite(pa.table({"id": [7], "status": ["x"], "amount": [70]}))
    assert rows(t) == [{"id": 7, "status": "x", "amount": 70}]
    assert t.version == 6
    t.delete()
    assert t.to_arrow().num_rows == 0
    assert t.version == 7
    # the past is still there
    assert [r["id"] for r in rows(t.to_arrow(version=5))] == [1, 2, 3, 4]


def test_overwrite_with_predicate_and_sql_dml(lh: mx.Lakehouse) -> None:
    t = lh.create_table(
        "s.events",
        pa.table({"id": [1, 2, 3, 4], "day": ["d1", "d1", "d2", "d2"]}),
        partition_by=["day"],
    )
    t.overwrite(pa.table({"id": [10], "day": ["d2"]}), where="day = 'd2'")
    assert rows(t) == [{"id": 1, "day": "d1"}, {"id": 2, "day": "d1"}, {"id": 10, "day": "d2"}]
    lh.sql("INSERT INTO s.events VALUES (11, 'd3')")
    lh.sql("UPDATE s.events SET id = id + 100 WHERE day = 'd1'")
    lh.sql("DELETE FROM s.events WHERE id = 10")
    lh.sql(
        "MERGE INTO s.events AS t USING (SELECT 11 AS id, 'd3' AS day UNION ALL "
        "SELECT 12, 'd3') AS s ON t.id = s.id "
        "WHEN MATCHED THEN UPDATE SET day = 'd4' WHEN NOT MATCHED THEN INSERT *"
    )
    assert lh.sql("SELECT id, day FROM s.events ORDER BY id").fetchall() == [
        (11, "d4"),
        (12, "d3"),
        (101, "d1"),
        (102, "d1"),
    ]


# ---------------------------------------------------------------------------- schema evolution
def test_append_with_new_column_needs_evolve(lh: mx.Lakehouse) -> None:
    t = lh.create_table(
        "s.evolving",
        pa.table({"id": [1, 2], "day": ["a", "b"]}),
        partition_by=["day"],
    )
    before_files = parquet_files(lh, t.location)
    with pytest.raises(SchemaMismatch, match="extra"):
        t.append(pa.table({"id": [3], "day": ["c"], "extra": [1.5]}))
    assert t.version == 0
    assert t.schema.names == ["id", "day"]
    assert rows(t) == [{"id": 1, "day": "a"}, {"id": 2, "day": "b"}]
    assert parquet_files(lh, t.location) == before_files  # nothing half-written

    assert t.append(pa.table({"id": [3], "day": ["c"], "extra": [1.5]}), evolve=True).version == 1
    assert t.schema.names == ["id", "day", "extra"]
    assert rows(t) == [
        {"id": 1, "day": "a", "extra": None},
        {"id": 2, "day": "b", "extra": None},
        {"id": 3, "day": "c", "extra": 1.5},
    ]
    # partitions whose files all predate the column, alone and after pruning
    assert lh.sql("SELECT id, extra FROM s.evolving WHERE day = 'a'").fetchall() == [(1, None)]
    assert lh.sql("SELECT count(*) FROM s.evolving WHERE extra IS NULL").scalar() == 2
    assert lh.sql("SELECT id FROM s.evolving WHERE extra > 1").fetchall() == [(3,)]
    # data lacking a column: filled with NULL, no evolve needed
    t.append(pa.table({"id": [4], "day": ["a"]}))
    assert rows(t)[-1] == {"id": 4, "day": "a", "extra": None}


def test_unpartitioned_evolution_reads_old_files_after_pruning(lh: mx.Lakehouse) -> None:
    t = lh.create_table("s.flat", pa.table({"id": [1, 2, 3]}))
    t.append(pa.table({"id": [100], "tag": ["new"]}), evolve=True)
    # statistics prune the only file that has `tag`
    assert files_after_pruning(lh, "SELECT * FROM s.flat WHERE id < 10") == (1, 2)
    assert lh.sql("SELECT id, tag FROM s.flat WHERE id < 10 ORDER BY id").fetchall() == [
        (1, None),
        (2, None),
        (3, None),
    ]
    assert lh.sql("SELECT id, tag FROM s.flat WHERE id > 10").fetchall() == [(100, "new")]


def test_merge_with_new_column_and_evolve(lh: mx.Lakehouse) -> None:
    t = lh.create_table("s.customers", pa.table({"id": [1, 2], "name": ["ann", "bob"]}))
    update = pa.table({"id": [2, 3], "name": ["bobby", "cy"], "tier": ["gold", "silver"]})
    with pytest.raises(SchemaMismatch, match="tier"):
        t.merge(update, on=["id"])
    assert t.version == 0
    assert t.schema.names == ["id", "name"]
    t.merge(update, on=["id"], evolve=True)
    assert t.version == 1
    assert rows(t) == [
        {"id": 1, "name": "ann", "tier": None},
        {"id": 2, "name": "bobby", "tier": "gold"},
        {"id": 3, "name": "cy", "tier": "silver"},
    ]
    with pytest.raises(SchemaMismatch, match="nope"):
        t.merge(update, on=["nope"])


def test_type_conflicts_write_nothing(lh: mx.Lakehouse) -> None:
    t = lh.create_table(
        "s.typed",
        pa.table({"id": pa.array([1, 2], pa.int64()), "ts": pa.array([1, 2], pa.timestamp("us"))}),
    )
    files = parquet_files(lh, t.location)
    before = rows(t)
    bad: list[tuple[str, Any]] = [
        ("append", lambda: t.append(pa.table({"id": ["three"]}))),
        ("append numeric text", lambda: t.append(pa.table({"id": ["3"]}))),
        ("append ts", lambda: t.append(pa.table({"id": [3], "ts": ["not a time"]}))),
        ("merge", lambda: t.merge(pa.table({"id": ["1"]}), on=["id"])),
        ("overwrite", lambda: t.overwrite(pa.table({"id": ["x"]}))),
        ("overflow", lambda: t.append(pa.table({"id": pa.array([2**64 - 1], pa.uint64())}))),
    ]
    for what, write in bad:
        with pytest.raises(SchemaMismatch):
            write()
        assert t.version == 0, what
        assert rows(t) == before, what
        assert parquet_files(lh, t.location) == files, what
    # a safe widening cast is fine
    t.append(pa.table({"id": pa.array([3], pa.int32())}))
    assert t.schema.field("id").type == pa.int64()
    assert [r["id"] for r in rows(t)] == [1, 2, 3]


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        (pa.array([7], pa.int64()), "int64"),
        (pa.array([7.5]), "double"),
        (pa.array([True]), "bool"),
        (pa.array([dt.date(2024, 1, 1)]), "date32"),
        (pa.array([Decimal("1.5")]), "decimal"),
    ],
)
def test_values_are_never_silently_turned_into_text(
    lh: mx.Lakehouse, value: pa.Array, kind: str
) -> None:
    # Arrow casts 7 to '7'; the table would then hold text the writer never wrote.
    t = lh.create_table("s.texts", pa.table({"id": [1], "s": ["a"]}))
    for write in (
        lambda: t.append(pa.table({"id": [2], "s": value})),
        lambda: t.merge(pa.table({"id": [2], "s": value}), on=["id"]),
        lambda: t.overwrite(pa.table({"id": [2], "s": value})),
    ):
        with pytest.raises(SchemaMismatch, match=r"'s' is string in the table but " + kind):
            write()
    assert t.version == 0 and rows(t) == [{"id": 1, "s": "a"}]
    t.append(pa.table({"id": [3], "s": pa.nulls(1)}))  # nulls fit any column
    assert rows(t)[-1] == {"id": 3, "s": None}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([{"id": 11}, {"id": "12"}], r"column 'id' is int in row 1 but str \('12'\) in row 2"),
        ({"id": [11, "12"]}, r"column 'id'"),
        ([{"id": 11}, 12], r"row 2 is a int"),
        (pd.DataFrame({"id": [11, "12"]}), r"column 'id'"),
    ],
)
def test_values_that_make_no_table_are_a_schema_mismatch(
    lh: mx.Lakehouse, data: Any, message: str
) -> None:
    # Once a raw pyarrow.ArrowInvalid / TypeError.
    t = lh.create_table("s.mixed", pa.table({"id": [1]}))
    with pytest.raises(SchemaMismatch, match=message):
        t.append(data)
    with pytest.raises(SchemaMismatch, match=message):
        lh.create_table("s.mixed2", data)
    assert t.version == 0 and rows(t) == [{"id": 1}]


def test_deeply_nested_values_are_a_schema_mismatch(lh: mx.Lakehouse) -> None:
    # delta-rs wrote a schema 45 structs deep and then panicked (a raw PanicException, a
    # BaseException) reading it back; a few thousand levels made pyarrow abort the process.
    def nested(depth: int, leaf: Any, wrap: Any) -> Any:
        for _ in range(depth):
            leaf = wrap(leaf)
        return leaf

    ok = lh.create_table("s.nest32", [{"a": nested(32, 1, lambda v: {"b": v})}])
    assert ok.count() == 1
    for depth, wrap, match in (
        (33, lambda v: {"b": v}, "more than 32 levels deep"),
        (45, lambda v: [v], "more than 32 levels deep"),
        (5000, lambda v: {"b": v}, "more than 64 levels deep"),
        (5000, lambda v: [v], "more than 64 levels deep"),
    ):
        with pytest.raises(SchemaMismatch, match=match):
            lh.create_table("s.nest", [{"a": nested(depth, 1, wrap)}])
        with pytest.raises(SchemaMismatch, match=match):
            ok.append([{"a": nested(depth, 1, wrap)}])
    assert "main.s.nest" not in lh.tables() and ok.count() == 1


def test_merge_refuses_ambiguous_source_keys(lh: mx.Lakehouse) -> None:
    t = lh.create_table("s.upsert", pa.table({"id": [1, 2], "v": ["a", "b"]}))
    for source, match in (
        ({"id": [1, 1], "v": ["x", "y"]}, r"2 source rows have the same merge key id=1"),
        ({"id": [3, 3], "v": ["x", "y"]}, r"same merge key id=3"),  # a new key: 2 inserts
        ({"id": [3, 3, 4, 4], "v": list("wxyz")}, r"and 1 more repeated keys"),
        ({"id": [5, None], "v": ["x", "y"]}, r"'id' is NULL in source row 2"),
    ):
        with pytest.raises(MatrixOSError, match=match) as info:
            t.merge(pa.table(source), on=["id"])
        assert isinstance(info.value, ValueError) and info.value.sqlstate == "21506"
    assert t.version == 0 and rows(t) == [{"id": 1, "v": "a"}, {"id": 2, "v": "b"}]
    # Without inserts a NULL key changes nothing, so it is no error; keys over two columns.
    t.merge(pa.table({"id": [None, 2], "v": ["x", "B"]}), on=["id"], when_not_matched="ignore")
    t.merge(pa.table({"id": [2, 2], "v": ["B", "C"]}), on=["id", "v"])
    assert sorted(t.to_arrow().to_pylist(), key=lambda r: (r["id"], r["v"])) == [
        {"id": 1, "v": "a"},
        {"id": 2, "v": "B"},
        {"id": 2, "v": "C"},
    ]


# -------------------------------------------------------------------------------- time travel
def test_time_travel_by_version_and_timestamp(lh: mx.Lakehouse) -> None:
    t = lh.create_table("s.tt", pa.table({"id": [1]}))
    # Commits close together, as a busy writer makes them: the commit times shown by history()
    # must name their versions even though S3 (moto) keeps Last-Modified in whole seconds.
    time.sleep(0.01)
    t.append(pa.table({"id": [2]}))
    time.sleep(0.01)
    t.delete("id = 1")
    stamps = {h["version"]: h["timestamp"] for h in t.history()}
    assert sorted(stamps) == [0, 1, 2]

    expected = {0: [1], 1: [1, 2], 2: [2]}
    for v, ids in expected.items():
        assert sorted(t.to_arrow(version=v).column("id").to_pylist()) == ids
        assert (
            sorted(r[0] for r in lh.sql(f"SELECT id FROM s.tt VERSION AS OF {v}").fetchall()) == ids
        )
        when = dt.datetime.fromtimestamp(stamps[v] / 1000, UTC)
        assert sorted(t.to_arrow(timestamp=when).column("id").to_pylist()) == ids, v
        iso = when.strftime("%Y-%m-%d %H:%M:%S.%f")
        got = lh.sql(f"SELECT id FROM s.tt TIMESTAMP AS OF '{iso}' ORDER BY id").fetchall()
        assert [r[0] for r in got] == ids, (v, iso)
    # the latest is untouched by reading the past
    assert t.to_arrow().column("id").to_pylist() == [2]
    with pytest.raises(MatrixOSError):
        t.to_arrow(version=99)
    with pytest.raises(MatrixOSError):
        t.to_arrow(timestamp=dt.datetime(2000, 1, 1, tzinfo=UTC))


def test_history(lh: mx.Lakehouse) -> None:
    t = lh.create_table("s.h", pa.table({"id": [1, 2]}))
    t.append(pa.table({"id": [3]}))
    t.merge(pa.table({"id": [3, 4]}), on=["id"])
    t.update({"id": "id * 10"}, where="id = 4")
    t.delete("id = 1")
    h = t.history()
    assert [r["version"] for r in h] == [4, 3, 2, 1, 0]
    assert [r["operation"] for r in h] == ["DELETE", "UPDATE", "MERGE", "WRITE", "WRITE"]
    assert [r["version"] for r in t.history(limit=2)] == [4, 3]
    assert all(a["timestamp"] >= b["timestamp"] for a, b in itertools.pairwise(h))
    sql = lh.sql("DESCRIBE HISTORY s.h").to_arrow()
    assert sql.column("version").to_pylist() == [4, 3, 2, 1, 0]
    assert sql.column("operation").to_pylist()[0] == "DELETE"


# -------------------------------------------------------------------------------- maintenance
def test_optimize_compacts_and_zorders(lh: mx.Lakehouse) -> None:
    t = lh.create_table("s.small", pa.table({"id": [0], "g": [0]}))
    for i in range(1, 6):
        t.append(pa.table({"id": [i * 10 + j for j in range(3)], "g": [i % 2] * 3}))
    want = rows(t)
    assert active_files(t) == 6
    v = t.version
    metrics = t.optimize()
    assert metrics["numFilesRemoved"] == 6
    assert metrics["numFilesAdded"] == 1
    assert t.version == v + 1
    assert active_files(t) == 1
    assert rows(t) == want
    assert t.history(limit=1)[0]["operation"] == "OPTIMIZE"
    # the compacted-away files are still on storage (time travel needs them) until vacuum
    assert len(parquet_files(lh, t.location)) == 7
    assert rows(t.to_arrow(version=v)) == want

    t.append(pa.table({"id": [1000, 1001], "g": [1, 0]}))
    z = t.optimize(zorder_by=["g", "id"])
    assert z["numFilesAdded"] >= 1
    assert active_files(t) == 1
    assert [r["id"] for r in rows(t)] == [r["id"] for r in want] + [1000, 1001]
    assert t.history(limit=1)[0]["operation"] == "OPTIMIZE"
    res = lh.sql("OPTIMIZE s.small").to_arrow()
    assert res.column("files_removed").to_pylist() == [0]  # nothing left to compact
    # compacted files are Snappy like written ones (delta-rs's own default, ZSTD, scans slower)
    (uri,) = DeltaTable(
        t.location, storage_options=lh.warehouse.delta_options(t.location)
    ).file_uris()
    lh.warehouse.fs.invalidate_cache()
    with lh.warehouse.fs.open(uri.split("://", 1)[-1] if "://" in uri else uri, "rb") as f:
        meta = pq.ParquetFile(f).metadata
    assert {meta.row_group(0).column(i).compression for i in range(2)} == {"SNAPPY"}


def test_vacuum_removes_unreferenced_files(lh: mx.Lakehouse) -> None:
    t = lh.create_table("s.vac", pa.table({"id": [1, 2, 3]}))
    old_files = parquet_files(lh, t.location)
    t.overwrite(pa.table({"id": [9]}))
    assert parquet_files(lh, t.location) > old_files
    assert sorted(t.to_arrow(version=0).column("id").to_pylist()) == [1, 2, 3]

    assert t.vacuum(0, dry_run=True, enforce=False)  # lists, deletes nothing
    assert old_files <= parquet_files(lh, t.location)
    with pytest.raises(MatrixOSError):  # retention below the table's minimum
        t.vacuum(0)
    removed = t.vacuum(0, enforce=False)
    assert len(removed) == len(old_files)
    left = parquet_files(lh, t.location)
    assert not (left & old_files)
    assert len(left) == 1
    assert t.to_arrow().column("id").to_pylist() == [9]
    assert lh.sql("SELECT id FROM s.vac").fetchall() == [(9,)]
    with pytest.raises(MatrixOSError):  # the old version's files are gone
        t.to_arrow(version=0)


def test_auto_compaction(warehouse_root: Any) -> None:
    with mx.connect(
        warehouse_root.uri,
        storage_options=warehouse_root.storage_options,
        auto_compact_min_files=10,
    ) as lh:
        t = lh.create_table("s.auto", pa.table({"id": [0]}))
        for i in range(1, 9):
            t.append(pa.table({"id": [i]}))
        # 9 small files: below the threshold, nothing compacted yet (nor asked for)
        wait_for_maintenance()
        assert "OPTIMIZE" not in [h["operation"] for h in t.history()]
        assert active_files(t) == 9
        t.append(pa.table({"id": [9]}))
        # the 10th file asks for a compaction, which runs off the commit path
        wait_for_maintenance()
        ops = [h["operation"] for h in t.history()]
        assert ops[:2] == ["OPTIMIZE", "WRITE"]  # right after the append of id 9
        assert active_files(t) == 1
        for i in range(10, 13):
            t.append(pa.table({"id": [i]}))
        wait_for_maintenance()
        ops = [h["operation"] for h in t.history()]
        assert ops.count("OPTIMIZE") == 1
        assert active_files(t) == 4  # the compacted file + the three later appends
        assert sorted(t.to_arrow().column("id").to_pylist()) == list(range(13))
        assert lh.sql("SELECT count(*), sum(id) FROM s.auto").fetchall() == [(13, 78)]


def test_statistics_prune_files(lh: mx.Lakehouse) -> None:
    t = lh.create_table("s.ranges", pa.table({"id": list(range(0, 100)), "k": ["a"] * 100}))
    for start in (100, 200, 300):
        t.append(pa.table({"id": list(range(start, start + 100)), "k": ["b"] * 100}))
    assert active_files(t) == 4
    q = "SELECT count(*), min(id), max(id) FROM s.ranges WHERE id > 250"
    assert files_after_pruning(lh, q) == (2, 4)
    assert lh.sql(q).fetchall() == [(149, 251, 399)]
    q = "SELECT count(*) FROM s.ranges WHERE id > 399"
    assert files_after_pruning(lh, q) == (0, 4)
    assert lh.sql(q).scalar() == 0
    q = "SELECT id FROM s.ranges WHERE id = 150"
    assert files_after_pruning(lh, q) == (1, 4)
    assert lh.sql(q).fetchall() == [(150,)]
    q = "SELECT count(*) FROM s.ranges WHERE id BETWEEN 95 AND 105"
    assert files_after_pruning(lh, q) == (2, 4)
    assert lh.sql(q).scalar() == 11
    q = "SELECT count(*) FROM s.ranges WHERE 120 > id"  # constant on the left
    assert files_after_pruning(lh, q) == (2, 4)
    assert lh.sql(q).scalar() == 120
    q = "SELECT count(*) FROM s.ranges WHERE id > 250 OR k = 'a'"  # not prunable
    assert files_after_pruning(lh, q) == (4, 4)
    assert lh.sql(q).scalar() == 249


# ------------------------------------------------------------------------ drop and register
def test_drop_table_removes_managed_files(lh: mx.Lakehouse) -> None:
    t = lh.create_table("s.doomed", pa.table({"id": [1, 2], "v": [3, 4]}), partition_by=["id"])
    location = t.location
    assert location.startswith(lh.warehouse.join("main", "s", "doomed-"))
    assert len(parquet_files(lh, location)) == 2
    assert DeltaTable.is_deltatable(location, lh.warehouse.delta_options(location))
    lh.drop_table("s.doomed")
    assert parquet_files(lh, location) == set()
    assert not DeltaTable.is_deltatable(location, lh.warehouse.delta_options(location))
    with pytest.raises(TableNotFound):
        lh.table("s.doomed")
    with pytest.raises(TableNotFound):
        lh.drop_table("s.doomed")
    lh.drop_table("s.doomed", if_exists=True)
    # the name can be used again, with a new schema
    t2 = lh.create_table("s.doomed", pa.table({"other": ["x"]}))
    assert t2.to_arrow().to_pylist() == [{"other": "x"}]
    assert t2.location != location  # a folder of its own: nothing of the old table is reused


def test_register_external_table_and_drop_keeps_files(
    lh: mx.Lakehouse, warehouse_root: Any, tmp_path: Any
) -> None:
    if warehouse_root.kind == "s3":
        ext = warehouse_root.uri.rsplit("/", 1)[0] + "/elsewhere/trips"
    else:
        ext = str(tmp_path / "elsewhere" / "trips")
    opts = lh.warehouse.delta_options(ext)
    write_deltalake(
        ext,
        pa.table({"trip": [1, 2, 3], "city": ["ny", "sf", "ny"]}),
        partition_by=["city"],
        storage_options=opts,
    )
    write_deltalake(
        ext, pa.table({"trip": [4], "city": ["la"]}), mode="append", storage_options=opts
    )
    t = lh.register_table("ext.trips", ext, comment="from another writer")
    assert t.info.external
    assert t.version == 1
    assert rows(t, "trip") == [
        {"trip": 1, "city": "ny"},
        {"trip": 2, "city": "sf"},
        {"trip": 3, "city": "ny"},
        {"trip": 4, "city": "la"},
    ]
    assert lh.sql("SELECT count(*) FROM ext.trips WHERE city = 'ny'").scalar() == 2
    assert files_after_pruning(lh, "SELECT * FROM ext.trips WHERE city = 'ny'") == (1, 3)
    # writes through MatrixOS land in the external table, readable by plain deltalake
    t.append(pa.table({"trip": [5], "city": ["sf"]}))
    assert DeltaTable(ext, storage_options=opts).version() == 2
    files = parquet_files(lh, ext)
    assert len(files) == 4
    lh.drop_table("ext.trips")
    assert parquet_files(lh, ext) == files
    assert sorted(
        DeltaTable(ext, storage_options=opts).to_pyarrow_table().column("trip").to_pylist()
    ) == [1, 2, 3, 4, 5]
    with pytest.raises(TableNotFound):
        lh.register_table("ext.missing", ext + "_nothing_here")
    with pytest.raises(TableExists):
        lh.register_table("ext.again", ext) and lh.register_table("ext.again", ext)


# -------------------------------------------------------------------------- partition types
def test_partition_types_and_nulls_round_trip(lh: mx.Lakehouse) -> None:
    ts1 = dt.datetime(2024, 3, 1, 12, 30, 0, 123456, tzinfo=UTC)
    ts2 = dt.datetime(2024, 3, 2, 0, 0, tzinfo=UTC)
    data = pa.table(
        {
            "id": [1, 2, 3, 4],
            "p_int": pa.array([1, 2, None, 1], pa.int32()),
            "p_date": pa.array([dt.date(2024, 1, 1), None, dt.date(2024, 1, 2), None]),
            "p_str": ["a b", None, "x=y/z", "a b"],
            "p_bool": [True, False, None, True],
            "p_ts": pa.array([ts1, ts2, None, ts1], pa.timestamp("us", "UTC")),
        }
    )
    parts = ["p_int", "p_date", "p_str", "p_bool", "p_ts"]
    t = lh.create_table("s.parts", data, partition_by=parts)
    assert t.partition_by == parts
    schema = t.schema
    assert schema.field("p_int").type == pa.int32()
    assert schema.field("p_date").type == pa.date32()
    assert schema.field("p_bool").type == pa.bool_()
    assert schema.field("p_ts").type == pa.timestamp("us", "UTC")
    assert rows(t) == rows(data)
    got = lh.sql("SELECT * FROM s.parts ORDER BY id").to_arrow()
    assert got.to_pylist() == rows(data)
    assert got.schema.field("p_date").type == pa.date32()

    def ids(where: str) -> list[int]:
        return [
            r[0] for r in lh.sql(f"SELECT id FROM s.parts WHERE {where} ORDER BY id").fetchall()
        ]

    assert ids("p_int = 1") == [1, 4]
    assert ids("p_int IS NULL") == [3]
    assert ids("p_date = DATE '2024-01-02'") == [3]
    assert ids("p_date IS NULL") == [2, 4]
    assert ids("p_str = 'x=y/z'") == [3]
    assert ids("p_str = 'a b'") == [1, 4]
    assert ids("p_str IS NULL") == [2]
    assert ids("p_bool") == [1, 4]
    assert ids("NOT p_bool") == [2]
    assert ids("p_bool IS NULL") == [3]
    assert ids("p_ts = TIMESTAMPTZ '2024-03-01 12:30:00.123456+00'") == [1, 4]
    assert ids("p_ts > TIMESTAMPTZ '2024-03-01 13:00:00+00'") == [2]
    assert ids("p_ts IS NULL") == [3]
    # rows 1 and 4 differ only in p_date: four partitions
    assert files_after_pruning(lh, "SELECT * FROM s.parts WHERE p_int IS NULL") == (1, 4)
    assert files_after_pruning(lh, "SELECT * FROM s.parts WHERE p_str = 'a b'") == (2, 4)
    # plain deltalake agrees on every value
    plain = DeltaTable(t.location, storage_options=lh.warehouse.delta_options(t.location))
    assert rows(plain.to_pyarrow_table()) == rows(data)


def test_timestamps_with_and_without_time_zone(lh: mx.Lakehouse) -> None:
    paris = dt.timezone(dt.timedelta(hours=1))
    data = pa.table(
        {
            "id": [1, 2, 3],
            # an instant: stored as UTC whatever zone it was written in
            "at": pa.array(
                [
                    dt.datetime(2024, 1, 1, 12, 0, tzinfo=UTC),
                    dt.datetime(2024, 1, 1, 13, 0, tzinfo=paris),  # = 12:00 UTC
                    None,
                ],
                pa.timestamp("ns", "Europe/Paris"),
            ),
            # wall-clock time: no zone, never shifted
            "local": pa.array(
                [
                    dt.datetime(2024, 1, 1, 12, 0),
                    dt.datetime(1969, 12, 31, 23, 59, 59, 999999),
                    None,
                ],
                pa.timestamp("us"),
            ),
        }
    )
    t = lh.create_table("s.times", data)
    assert pa.types.is_timestamp(t.schema.field("at").type)
    assert t.schema.field("at").type.tz is not None
    assert t.schema.field("local").type == pa.timestamp("us")
    got = rows(t)
    noon = dt.datetime(2024, 1, 1, 12, 0, tzinfo=UTC)
    assert got[0]["at"] == noon and got[1]["at"] == noon and got[2]["at"] is None
    assert [r["local"] for r in got] == [
        dt.datetime(2024, 1, 1, 12, 0),
        dt.datetime(1969, 12, 31, 23, 59, 59, 999999),
        None,
    ]
    assert got[0]["local"].tzinfo is None
    q = "SELECT id FROM s.times WHERE at = TIMESTAMPTZ '2024-01-01 13:00:00+01' ORDER BY id"
    assert lh.sql(q).fetchall() == [(1,), (2,)]
    q = "SELECT id FROM s.times WHERE local < TIMESTAMP '2000-01-01 00:00:00'"
    assert lh.sql(q).fetchall() == [(2,)]
    assert (
        files_after_pruning(lh, "SELECT id FROM s.times WHERE local > TIMESTAMP '2030-01-01'")[0]
        == 0
    )
    res = lh.sql("SELECT at, local FROM s.times WHERE id = 1").to_arrow()
    assert res.schema.field("at").type.tz is not None
    assert res.schema.field("local").type.tz is None
    assert res.to_pylist()[0]["at"] == noon


def test_bad_autocompact_property_is_refused_before_anything_is_written(lh: mx.Lakehouse) -> None:
    with pytest.raises(mx.errors.ConfigError, match=r"minFiles='many'.*not an integer"):
        lh.create_table("s.t", {"a": [1]}, properties={"matrixos.autoCompact.minFiles": "many"})
    assert "main.s.t" not in lh.tables()
    t = lh.create_table("s.t", {"a": [1]}, properties={"matrixos.autoCompact.minFiles": "2"})
    t.append({"a": [2]})
    t.append({"a": [3]})
    wait_for_maintenance()  # auto-compaction runs off the commit path
    assert t.history()[0]["operation"] == "OPTIMIZE"  # compacted at 2 small files
