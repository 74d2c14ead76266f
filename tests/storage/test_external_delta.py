"""Delta tables written by other writers (Spark, Databricks, delta-rs), read exactly as the Delta
protocol says: column mapping, checkpoints, deletion vectors, reader features MatrixOS does not
know, INT96 timestamps and every kind of partition value.

Logs that delta-rs cannot write are hand-crafted here, action by action, from the protocol
(https://github.com/delta-io/delta/blob/master/PROTOCOL.md).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import struct
import time
import uuid
import zlib
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable, write_deltalake

import matrixos as mx
from matrixos.errors import MatrixOSError, NotSupported

UTC = dt.UTC


# ------------------------------------------------------------------------------------ helpers
@pytest.fixture
def local_lh(tmp_path: Path) -> Iterator[mx.Lakehouse]:
    with mx.connect(str(tmp_path / "warehouse")) as lh:
        yield lh


def publish(lh: mx.Lakehouse, local: Path, name: str) -> str:
    """Put a table folder built on local disk where ``lh``'s warehouse lives; its location."""
    if not lh.warehouse.is_remote:
        return str(local)
    target = lh.warehouse.uri.rsplit("/", 1)[0] + "/external/" + name
    fs = lh.warehouse.fs
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        fs.put_file(str(path), target.split("://", 1)[1] + "/" + path.relative_to(local).as_posix())
    return target


def sorted_rows(table: pa.Table, key: str) -> list[dict[str, Any]]:
    return sorted(table.to_pylist(), key=lambda r: (r[key] is None, r[key]))


def field(name: str, type_: Any, **metadata: Any) -> dict[str, Any]:
    return {"name": name, "type": type_, "nullable": True, "metadata": metadata}


def commit(root: Path, version: int, *actions: dict[str, Any], operation: str = "WRITE") -> None:
    log = root / "_delta_log"
    log.mkdir(parents=True, exist_ok=True)
    info = {"commitInfo": {"timestamp": int(time.time() * 1000), "operation": operation}}
    lines = [json.dumps(a) for a in (info, *actions)]
    (log / f"{version:020d}.json").write_text("\n".join(lines) + "\n")


def protocol(reader: int = 1, writer: int = 2, features: list[str] | None = None) -> dict:
    p: dict[str, Any] = {"minReaderVersion": reader, "minWriterVersion": writer}
    if features is not None:
        p["readerFeatures"] = features
        p["writerFeatures"] = features
    return {"protocol": p}


def metadata(
    fields: list[dict[str, Any]],
    partition_columns: list[str] | None = None,
    configuration: dict[str, str] | None = None,
) -> dict:
    return {
        "metaData": {
            "id": str(uuid.uuid4()),
            "format": {"provider": "parquet", "options": {}},
            "schemaString": json.dumps({"type": "struct", "fields": fields}),
            "partitionColumns": partition_columns or [],
            "configuration": configuration or {},
            "createdTime": int(time.time() * 1000),
        }
    }


def add(
    root: Path,
    rel_path: str,
    table: pa.Table,
    partition_values: dict[str, str | None] | None = None,
    stats: dict[str, Any] | None = None,
    **extra: Any,
) -> dict:
    """Write ``table`` to ``root/rel_path`` and return the add action (path URI-encoded)."""
    target = root / rel_path
    target.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, target, **extra.pop("parquet", {}))
    action = {
        "path": quote(rel_path, safe="/="),
        "partitionValues": partition_values or {},
        "size": target.stat().st_size,
        "modificationTime": int(time.time() * 1000),
        "dataChange": True,
        "stats": json.dumps(stats or {"numRecords": table.num_rows}),
    }
    action.update(extra)
    return {"add": action}


# ---------------------------------------------------------------------------- column mapping
def test_column_mapping_written_by_delta_rs(lh: mx.Lakehouse, warehouse_root: Any) -> None:
    if warehouse_root.kind == "s3":
        location = warehouse_root.uri.rsplit("/", 1)[0] + "/external/mapped"
    else:
        location = str(Path(warehouse_root.uri).parent / "external" / "mapped")
    opts = lh.warehouse.delta_options(location)
    write_deltalake(
        location,
        pa.table({"Order Id": [1, 2, 3], "amount": [1.5, 2.5, 3.5], "day": ["a", "b", "a"]}),
        partition_by=["day"],
        configuration={"delta.columnMapping.mode": "name"},
        storage_options=opts,
    )
    write_deltalake(
        location,
        pa.table({"Order Id": [4], "amount": [4.5], "day": ["c"]}),
        mode="append",
        storage_options=opts,
    )
    # the files really carry physical names, so reading by logical name would fail
    plain = DeltaTable(location, storage_options=opts)
    fields = {f.name: f.metadata for f in plain.schema().fields}
    physical = fields["amount"]["delta.columnMapping.physicalName"]
    assert physical != "amount"
    a_file = plain.file_uris()[0]
    if warehouse_root.kind == "s3":
        names = pq.read_schema(
            a_file.split("://", 1)[1], filesystem=lh.warehouse.options.to_pyarrow()
        ).names
    else:
        names = pq.read_schema(a_file.removeprefix("file://")).names
    assert "amount" not in names and physical in names

    t = lh.register_table("ext.mapped", location)
    got = t.to_arrow()
    assert got.column_names == ["Order Id", "amount", "day"]
    assert sorted_rows(got, "Order Id") == [
        {"Order Id": 1, "amount": 1.5, "day": "a"},
        {"Order Id": 2, "amount": 2.5, "day": "b"},
        {"Order Id": 3, "amount": 3.5, "day": "a"},
        {"Order Id": 4, "amount": 4.5, "day": "c"},
    ]
    q = "SELECT \"Order Id\", amount FROM ext.mapped WHERE day = 'a' AND amount > 2"
    assert lh.sql(q).fetchall() == [(3, 3.5)]
    # statistics are keyed by physical name in the log: pruning still uses them
    plan = "\n".join(
        lh.sql("EXPLAIN SELECT * FROM ext.mapped WHERE amount > 4").to_arrow()["plan"].to_pylist()
    )
    assert "1 of 3 files after pruning" in plan
    assert lh.sql("SELECT sum(amount) FROM ext.mapped WHERE amount > 4").scalar() == 4.5
    assert t.to_arrow(columns=["amount"]).column_names == ["amount"]


def test_column_mapping_hand_crafted(lh: mx.Lakehouse, tmp_path: Path) -> None:
    """Physical names unrelated to the logical ones, a renamed column whose old name is still
    a (decoy) column in the file, a dropped column, and a mapped partition column."""
    root = tmp_path / "mapped"
    ids = {n: f"col-{uuid.uuid4()}" for n in ("id", "name", "price", "region")}
    fields = [
        field(
            n,
            t,
            **{"delta.columnMapping.id": i + 1, "delta.columnMapping.physicalName": ids[n]},
        )
        for i, (n, t) in enumerate(
            [("id", "long"), ("name", "string"), ("price", "double"), ("region", "string")]
        )
    ]

    def data_file(id_: list[int], name: list[str], price: list[float]) -> pa.Table:
        n = len(id_)
        return pa.table(
            {
                ids["id"]: pa.array(id_, pa.int64()),
                ids["name"]: name,
                ids["price"]: price,
                # decoys: a column literally named like a logical column, and a dropped one
                "name": ["WRONG"] * n,
                "col-dropped": [-1] * n,
            }
        )

    commit(
        root,
        0,
        protocol(2, 5),
        metadata(
            fields,
            partition_columns=["region"],
            configuration={
                "delta.columnMapping.mode": "name",
                "delta.columnMapping.maxColumnId": "5",
            },
        ),
        add(
            root,
            "r1/a.parquet",
            data_file([1, 2], ["ann", "bob"], [1.0, 2.0]),
            {ids["region"]: "eu"},
        ),
        add(root, "r2/b.parquet", data_file([3], ["cy"], [3.0]), {ids["region"]: None}),
    )
    location = publish(lh, root, "mapped_crafted")
    t = lh.register_table("ext.crafted", location)
    got = t.to_arrow()
    assert got.column_names == ["id", "name", "price", "region"]
    assert sorted_rows(got, "id") == [
        {"id": 1, "name": "ann", "price": 1.0, "region": "eu"},
        {"id": 2, "name": "bob", "price": 2.0, "region": "eu"},
        {"id": 3, "name": "cy", "price": 3.0, "region": None},
    ]
    assert lh.sql("SELECT name FROM ext.crafted WHERE region = 'eu' ORDER BY id").fetchall() == [
        ("ann",),
        ("bob",),
    ]
    assert lh.sql("SELECT id FROM ext.crafted WHERE region IS NULL").fetchall() == [(3,)]
    assert lh.sql("SELECT * FROM ext.crafted WHERE name = 'WRONG'").fetchall() == []
    assert "col-dropped" not in lh.sql("SELECT * FROM ext.crafted").columns


# ------------------------------------------------------------------------------- checkpoints
def test_checkpoint_then_more_commits(
    lh: mx.Lakehouse, warehouse_root: Any, tmp_path: Path
) -> None:
    if warehouse_root.kind == "s3":
        location = warehouse_root.uri.rsplit("/", 1)[0] + "/external/cp"
    else:
        location = str(tmp_path / "cp")
    opts = lh.warehouse.delta_options(location)
    write_deltalake(location, pa.table({"id": [0], "v": ["v0"]}), storage_options=opts)
    for i in range(1, 5):
        write_deltalake(
            location, pa.table({"id": [i], "v": [f"v{i}"]}), mode="append", storage_options=opts
        )
    dt_ = DeltaTable(location, storage_options=opts)
    dt_.delete("id = 0")  # version 5: a remove action the checkpoint must honour
    dt_.create_checkpoint()
    write_deltalake(
        location, pa.table({"id": [6], "v": ["v6"]}), mode="append", storage_options=opts
    )
    DeltaTable(location, storage_options=opts).update(
        updates={"v": "'changed'"}, predicate="id = 2"
    )
    fs = lh.warehouse.fs
    fs.invalidate_cache()
    log = (location.split("://", 1)[1] if "://" in location else location) + "/_delta_log"
    assert fs.exists(f"{log}/{5:020d}.checkpoint.parquet")
    assert fs.exists(f"{log}/_last_checkpoint")

    expected = {
        1: "v1",
        2: "changed",
        3: "v3",
        4: "v4",
        6: "v6",
    }
    t = lh.register_table("ext.cp", location)
    assert t.version == 7
    assert {r["id"]: r["v"] for r in t.to_arrow().to_pylist()} == expected
    assert lh.sql("SELECT count(*) FROM ext.cp").scalar() == 5
    assert sorted(t.to_arrow(version=3).column("id").to_pylist()) == [0, 1, 2, 3]
    assert sorted(t.to_arrow(version=5).column("id").to_pylist()) == [1, 2, 3, 4]

    # Drop the commits the checkpoint replaced: a reader that ignored the checkpoint and
    # replayed JSON from version 0 could no longer build the table.
    for v in range(6):
        fs.rm(f"{log}/{v:020d}.json")
    with mx.connect(warehouse_root.uri, storage_options=warehouse_root.storage_options) as fresh:
        t2 = fresh.table("ext.cp")
        assert {r["id"]: r["v"] for r in t2.to_arrow().to_pylist()} == expected
        assert fresh.sql("SELECT v FROM ext.cp WHERE id = 2").fetchall() == [("changed",)]
        t2.append(pa.table({"id": [7], "v": ["v7"]}))
        assert t2.version == 8
        assert fresh.sql("SELECT count(*) FROM ext.cp").scalar() == 6


# -------------------------------------------------------------------------- deletion vectors
_Z85 = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#"


def z85(data: bytes) -> str:
    """Z85 (ZeroMQ RFC 32), padding to a multiple of 4 bytes as Delta does."""
    data += b"\0" * (-len(data) % 4)
    out = []
    for i in range(0, len(data), 4):
        value = int.from_bytes(data[i : i + 4], "big")
        chunk = []
        for _ in range(5):
            value, digit = divmod(value, 85)
            chunk.append(_Z85[digit])
        out.extend(reversed(chunk))
    return "".join(out)


def roaring32(values: list[int]) -> bytes:
    """A 32-bit roaring bitmap in the portable serialization (array and bitmap containers)."""
    buckets: dict[int, list[int]] = {}
    for v in sorted(set(values)):
        buckets.setdefault(v >> 16, []).append(v & 0xFFFF)
    keys = sorted(buckets)
    head = struct.pack("<II", 12346, len(keys))  # SERIAL_COOKIE_NO_RUNCONTAINER
    head += b"".join(struct.pack("<HH", k, len(buckets[k]) - 1) for k in keys)
    bodies = []
    for k in keys:
        low = buckets[k]
        if len(low) <= 4096:
            bodies.append(struct.pack(f"<{len(low)}H", *low))
        else:
            words = [0] * 1024
            for v in low:
                words[v >> 6] |= 1 << (v & 63)
            bodies.append(struct.pack("<1024Q", *words))
    offset = len(head) + 4 * len(keys)
    for body in bodies:
        head += struct.pack("<I", offset)
        offset += len(body)
    return head + b"".join(bodies)


def roaring_array(values: list[int]) -> bytes:
    """Delta's RoaringBitmapArray: magic, then 64-bit portable roaring."""
    high: dict[int, list[int]] = {}
    for v in values:
        high.setdefault(v >> 32, []).append(v & 0xFFFFFFFF)
    out = struct.pack("<iq", 1681511377, len(high))
    for k in sorted(high):
        out += struct.pack("<I", k) + roaring32(high[k])
    return out


def test_z85_matches_the_reference() -> None:
    # the test vector of ZeroMQ RFC 32
    assert z85(bytes([0x86, 0x4F, 0xD2, 0x6F, 0xB5, 0x59, 0xF7, 0x5B])) == "HelloWorld"
    zmq_z85 = pytest.importorskip("zmq.utils.z85")
    blob = roaring_array([2, 5, 7, 65536, 69999])
    assert z85(blob) == zmq_z85.encode(blob + b"\0" * (-len(blob) % 4)).decode()


def inline_dv(deleted: list[int]) -> dict[str, Any]:
    blob = roaring_array(deleted)
    return {
        "storageType": "i",
        "pathOrInlineDv": z85(blob),
        "sizeInBytes": len(blob),
        "cardinality": len(set(deleted)),
    }


def file_dv(root: Path, deleted: list[int]) -> dict[str, Any]:
    """A deletion vector in its own file, referenced by UUID ("u"), as Spark writes them."""
    blob = roaring_array(deleted)
    dv_id = uuid.uuid4()
    prefix = "ab"
    payload = (
        bytes([1])
        + struct.pack(">i", len(blob))
        + blob
        + struct.pack(">I", zlib.crc32(blob) & 0xFFFFFFFF)
    )
    (root / prefix).mkdir(parents=True, exist_ok=True)
    (root / prefix / f"deletion_vector_{dv_id}.bin").write_bytes(payload)
    return {
        "storageType": "u",
        "pathOrInlineDv": prefix + z85(dv_id.bytes),
        "offset": 1,
        "sizeInBytes": len(blob),
        "cardinality": len(set(deleted)),
    }


def test_deletion_vectors_hide_deleted_rows(lh: mx.Lakehouse, tmp_path: Path) -> None:
    root = tmp_path / "dv"
    big = 70_000  # more than one roaring container (row indexes >= 65536)
    f1 = pa.table({"id": pa.array(range(big), pa.int64()), "part": ["x"] * big})
    f2 = pa.table({"id": pa.array(range(big, big + 10), pa.int64()), "part": ["y"] * 10})
    f3 = pa.table({"id": pa.array(range(100_000, 100_010), pa.int64()), "part": ["z"] * 10})
    first = [2, 5, 7, 65536, 69999]
    fields = [field("id", "long"), field("part", "string")]
    a1 = add(root, "f1.parquet", f1)
    a2 = add(root, "f2.parquet", f2)
    a3 = add(root, "f3.parquet", f3)
    a1["add"]["deletionVector"] = inline_dv(first)
    a3["add"]["deletionVector"] = file_dv(root, [0, 9])
    commit(
        root,
        0,
        protocol(3, 7, ["deletionVectors"]),
        metadata(fields, configuration={"delta.enableDeletionVectors": "true"}),
        a1,
        a2,
        a3,
    )
    # version 1: a DELETE by another writer replaces f1's vector and adds one to f2
    now = int(time.time() * 1000)
    more = [*first, 0, 40_000, 65535]
    b1 = dict(a1["add"], deletionVector=inline_dv(more), dataChange=True)
    b2 = dict(a2["add"], deletionVector=inline_dv([9]), dataChange=True)
    commit(
        root,
        1,
        {
            "remove": {
                "path": a1["add"]["path"],
                "deletionTimestamp": now,
                "dataChange": True,
                "deletionVector": a1["add"]["deletionVector"],
            }
        },
        {"remove": {"path": a2["add"]["path"], "deletionTimestamp": now, "dataChange": True}},
        {"add": b1},
        {"add": b2},
        operation="DELETE",
    )
    location = publish(lh, root, "dv")
    try:
        t = lh.register_table("ext.dv", location)
        latest = t.to_arrow()
    except NotSupported as e:  # refusing outright is also honest; wrong rows are not
        assert "deletionVectors" in str(e) or "deletion" in str(e).lower()
        return
    want_ids = set(range(big)) - set(more) | set(range(big, big + 9)) | set(range(100_001, 100_009))
    got_ids = latest.column("id").to_pylist()
    assert len(got_ids) == len(want_ids)
    assert set(got_ids) == want_ids
    assert lh.sql("SELECT count(*) FROM ext.dv").scalar() == len(want_ids)
    assert (
        lh.sql("SELECT count(*) FROM ext.dv WHERE id IN (2, 5, 7, 0, 65536, 69999)").scalar() == 0
    )
    assert lh.sql("SELECT id FROM ext.dv WHERE part = 'y' ORDER BY id DESC LIMIT 1").fetchall() == [
        (big + 8,)
    ]
    assert lh.sql("SELECT min(id), max(id) FROM ext.dv WHERE part = 'z'").fetchall() == [
        (100_001, 100_008)
    ]
    assert lh.sql(
        "SELECT id FROM ext.dv WHERE id BETWEEN 65534 AND 65537 ORDER BY id"
    ).fetchall() == [
        (65534,),
        (65537,),
    ]
    # version 0 has only the first vectors
    v0 = set(t.to_arrow(version=0).column("id").to_pylist())
    assert v0 == set(range(big)) - set(first) | set(range(big, big + 10)) | set(
        range(100_001, 100_009)
    )
    assert (
        lh.sql("SELECT count(*) FROM ext.dv VERSION AS OF 0 WHERE id IN (0, 40000)").scalar() == 2
    )


# ------------------------------------------------------------------ unknown reader features
def test_unknown_reader_feature_is_refused(local_lh: mx.Lakehouse, tmp_path: Path) -> None:
    lh = local_lh
    root = tmp_path / "future"
    commit(
        root,
        0,
        protocol(3, 7, ["someFutureFeature"]),
        metadata([field("id", "long")]),
        add(root, "a.parquet", pa.table({"id": [1, 2]})),
    )
    with pytest.raises(NotSupported, match="someFutureFeature"):
        lh.register_table("ext.future", str(root))
    assert lh.tables("ext") == []

    # a table that was readable when registered, upgraded later by another writer
    root2 = tmp_path / "upgraded"
    commit(
        root2,
        0,
        protocol(1, 2),
        metadata([field("id", "long")]),
        add(root2, "a.parquet", pa.table({"id": [1, 2]})),
    )
    t = lh.register_table("ext.upgraded", str(root2))
    assert lh.sql("SELECT count(*) FROM ext.upgraded").scalar() == 2
    commit(
        root2,
        1,
        protocol(3, 7, ["someFutureFeature", "deletionVectors"]),
        add(root2, "b.parquet", pa.table({"id": [3]})),
    )
    with pytest.raises(NotSupported, match="someFutureFeature"):
        lh.sql("SELECT count(*) FROM ext.upgraded")
    with pytest.raises(NotSupported, match="someFutureFeature"):
        t.to_arrow()
    with pytest.raises(MatrixOSError):
        t.append(pa.table({"id": [4]}))
    assert sorted(f.name for f in (root2 / "_delta_log").iterdir()) == [
        f"{0:020d}.json",
        f"{1:020d}.json",
    ]
    # the version from before the upgrade is still readable as it was
    assert lh.sql("SELECT count(*) FROM ext.upgraded VERSION AS OF 0").scalar() == 2


# ---------------------------------------------------------------------------- INT96 timestamps
def test_int96_timestamps(local_lh: mx.Lakehouse, tmp_path: Path) -> None:
    lh = local_lh
    root = tmp_path / "int96"
    values = [
        dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
        dt.datetime(1969, 7, 20, 20, 17, 40, tzinfo=UTC),
        dt.datetime(1900, 1, 1, tzinfo=UTC),
        None,
    ]
    data = pa.table({"id": [1, 2, 3, 4], "ts": pa.array(values, pa.timestamp("us", "UTC"))})
    a = add(root, "a.parquet", data, parquet={"use_deprecated_int96_timestamps": True})
    assert str(pq.read_metadata(root / "a.parquet").schema.column(1).physical_type) == "INT96"
    commit(root, 0, protocol(1, 2), metadata([field("id", "long"), field("ts", "timestamp")]), a)
    t = lh.register_table("ext.int96", str(root))
    got = sorted_rows(t.to_arrow(), "id")
    assert [r["ts"] for r in got] == values
    assert t.to_arrow().schema.field("ts").type == pa.timestamp("us", "UTC")
    q = "SELECT id FROM ext.int96 WHERE ts < TIMESTAMPTZ '1970-01-01 00:00:00+00' ORDER BY id"
    assert lh.sql(q).fetchall() == [(2,), (3,)]
    assert lh.sql("SELECT ts FROM ext.int96 WHERE id = 1").fetchall() == [(values[0],)]


# ------------------------------------------------------------------ partition values, all types
def hive_escape(value: str) -> str:
    """Spark/Hive's escaping of a partition value in a directory name."""
    special = set("\"#%'*/:=?\\\x7f{[]^")
    return "".join(f"%{ord(c):02X}" if c in special or ord(c) < 32 else c for c in value)


def test_every_partition_value_type(lh: mx.Lakehouse, tmp_path: Path) -> None:
    root = tmp_path / "parts"
    fields = [
        field("id", "long"),
        field("s", "string"),
        field("i", "integer"),
        field("d", "date"),
        field("ts", "timestamp"),
        field("ntz", "timestamp_ntz"),
        field("b", "boolean"),
        field("dec", "decimal(10,2)"),
    ]
    parts = ["s", "i", "d", "ts", "ntz", "b", "dec"]
    rows_by_file: list[tuple[int, dict[str, str | None]]] = [
        (
            1,
            {
                "s": "a b/c=d%",
                "i": "-7",
                "d": "2024-02-29",
                "ts": "2024-01-02 03:04:05.123456",
                "ntz": "2024-01-02 03:04:05",
                "b": "true",
                "dec": "12.34",
            },
        ),
        (
            2,
            {
                "s": "plain",
                "i": "2147483647",
                "d": "1970-01-01",
                "ts": "1970-01-01T00:00:00.000001Z",  # the ISO-8601 spelling
                "ntz": "1999-12-31 23:59:59.999999",
                "b": "false",
                "dec": "-0.50",
            },
        ),
        (3, {p: None for p in parts}),
        (4, {"s": "", "i": None, "d": None, "ts": None, "ntz": None, "b": None, "dec": "0.00"}),
    ]
    adds = []
    for id_, pv in rows_by_file:
        folder = "/".join(
            f"{p}={hive_escape(pv[p]) if pv[p] else '__HIVE_DEFAULT_PARTITION__'}" for p in parts
        )
        adds.append(add(root, f"{folder}/part-{id_}.parquet", pa.table({"id": [id_]}), pv))
    commit(root, 0, protocol(3, 7, ["timestampNtz"]), metadata(fields, parts), *adds)
    location = publish(lh, root, "parts")
    t = lh.register_table("ext.parts", location)
    assert t.partition_by == parts
    expected = [
        {
            "id": 1,
            "s": "a b/c=d%",
            "i": -7,
            "d": dt.date(2024, 2, 29),
            "ts": dt.datetime(2024, 1, 2, 3, 4, 5, 123456, tzinfo=UTC),
            "ntz": dt.datetime(2024, 1, 2, 3, 4, 5),
            "b": True,
            "dec": Decimal("12.34"),
        },
        {
            "id": 2,
            "s": "plain",
            "i": 2147483647,
            "d": dt.date(1970, 1, 1),
            "ts": dt.datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC),
            "ntz": dt.datetime(1999, 12, 31, 23, 59, 59, 999999),
            "b": False,
            "dec": Decimal("-0.50"),
        },
        {"id": 3, **{p: None for p in parts}},
        # an empty string partition value means NULL (protocol: "Partition Value Serialization")
        {
            "id": 4,
            "s": None,
            "i": None,
            "d": None,
            "ts": None,
            "ntz": None,
            "b": None,
            "dec": Decimal("0.00"),
        },
    ]
    assert sorted_rows(t.to_arrow(), "id") == expected
    sql_rows = lh.sql("SELECT * FROM ext.parts ORDER BY id").to_arrow()
    assert sql_rows.to_pylist() == expected
    schema = sql_rows.schema
    assert schema.field("i").type == pa.int32()
    assert schema.field("d").type == pa.date32()
    assert schema.field("ts").type.tz is not None
    assert schema.field("ntz").type.tz is None
    assert schema.field("b").type == pa.bool_()
    assert schema.field("dec").type == pa.decimal128(10, 2)

    def ids(where: str) -> list[int]:
        return [
            r[0] for r in lh.sql(f"SELECT id FROM ext.parts WHERE {where} ORDER BY id").fetchall()
        ]

    assert ids("s = 'a b/c=d%'") == [1]
    assert ids("s IS NULL") == [3, 4]
    assert ids("i < 0") == [1]
    assert ids("i = 2147483647") == [2]
    assert ids("d = DATE '2024-02-29'") == [1]
    assert ids("ts > TIMESTAMPTZ '1970-01-01 00:00:00+00'") == [1, 2]
    assert ids("ts = TIMESTAMPTZ '1970-01-01 00:00:00.000001+00'") == [2]
    assert ids("ntz = TIMESTAMP '2024-01-02 03:04:05'") == [1]
    assert ids("b") == [1]
    assert ids("NOT b") == [2]
    assert ids("dec = 12.34") == [1]
    assert ids("dec < 0") == [2]
    assert ids("dec = 0") == [4]
    assert ids("b IS NULL AND dec IS NULL") == [3]
    plan = "\n".join(
        lh.sql("EXPLAIN SELECT * FROM ext.parts WHERE s = 'a b/c=d%'")
        .to_arrow()["plan"]
        .to_pylist()
    )
    assert "1 of 4 files after pruning" in plan
    assert os.path.isdir(root / "s=a b%2Fc%3Dd%25")  # the layout really is Spark's
