"""Round trips: random Arrow tables written with ``lh.create_table`` read back unchanged.

Read back two ways, through SQL (``SELECT *``) and ``Table.to_arrow()``, both of which scan the
Delta table's Parquet files with DuckDB. Documented normalizations (everything else must be
equal, value for value):

- unsigned integers widen to the next signed type (uint8/uint16 → int32, uint32/uint64 →
  int64; a uint64 above 2**63-1 is refused rather than wrapped);
- timestamps are stored in microseconds (ns/ms/s → us; ns values must be whole microseconds);
- time-zoned timestamps are stored in UTC (the same instants; DuckDB names the zone
  ``Etc/UTC``);
- large_string/string_view → string, large_binary → binary, date64 → date32.

NaN is a value like any other: it must come back as NaN (not NULL), in floats and in filters.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import matrixos as mx

UTC = dt.UTC
SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
_NAMES = itertools.count()


@pytest.fixture(scope="module")
def shared_lh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[mx.Lakehouse]:
    with mx.connect(str(tmp_path_factory.mktemp("roundtrip") / "wh")) as lake:
        yield lake


def _ns_datetimes() -> st.SearchStrategy[dt.datetime]:
    # the range a signed 64-bit nanosecond count covers
    return st.datetimes(min_value=dt.datetime(1678, 1, 1), max_value=dt.datetime(2261, 12, 31))


def _decimals(precision: int, scale: int) -> st.SearchStrategy[Decimal]:
    # From the unscaled integer, parsed rather than computed: arithmetic in the default decimal
    # context (st.decimals too) rounds at 28 digits and can step outside the precision.
    top = 10**precision - 1
    return st.integers(-top, top).map(lambda i: Decimal(f"{i}e-{scale}"))


# name → (input Arrow type, value strategy, type it reads back as)
TYPES: dict[str, tuple[pa.DataType, st.SearchStrategy[Any], pa.DataType]] = {
    "int8": (pa.int8(), st.integers(-(2**7), 2**7 - 1), pa.int8()),
    "int16": (pa.int16(), st.integers(-(2**15), 2**15 - 1), pa.int16()),
    "int32": (pa.int32(), st.integers(-(2**31), 2**31 - 1), pa.int32()),
    "int64": (pa.int64(), st.integers(-(2**63), 2**63 - 1), pa.int64()),
    "uint8": (pa.uint8(), st.integers(0, 2**8 - 1), pa.int32()),
    "uint16": (pa.uint16(), st.integers(0, 2**16 - 1), pa.int32()),
    "uint32": (pa.uint32(), st.integers(0, 2**32 - 1), pa.int64()),
    "uint64": (pa.uint64(), st.integers(0, 2**63 - 1), pa.int64()),
    "float32": (pa.float32(), st.floats(width=32), pa.float32()),
    "float64": (pa.float64(), st.floats(), pa.float64()),
    "bool": (pa.bool_(), st.booleans(), pa.bool_()),
    "string": (pa.string(), st.text(max_size=20), pa.string()),
    "large_string": (pa.large_string(), st.text(max_size=20), pa.string()),
    # long, prefix-sharing strings: Delta truncates string statistics at 32 characters
    "long_string": (pa.string(), st.text(alphabet="ab\u00e9\U0001f600", max_size=40), pa.string()),
    "binary": (pa.binary(), st.binary(max_size=20), pa.binary()),
    "date32": (pa.date32(), st.dates(), pa.date32()),
    "ts_us": (pa.timestamp("us"), st.datetimes(), pa.timestamp("us")),
    "ts_ms": (
        pa.timestamp("ms"),
        st.datetimes().map(lambda d: d.replace(microsecond=d.microsecond // 1000 * 1000)),
        pa.timestamp("us"),
    ),
    "ts_ns": (pa.timestamp("ns"), _ns_datetimes(), pa.timestamp("us")),
    "ts_utc": (
        pa.timestamp("us", "UTC"),
        st.datetimes(
            min_value=dt.datetime(1, 1, 2),
            max_value=dt.datetime(9999, 12, 30),
            timezones=st.just(UTC),
        ),
        pa.timestamp("us", "UTC"),
    ),
    "ts_tokyo": (
        pa.timestamp("us", "Asia/Tokyo"),
        st.datetimes(
            min_value=dt.datetime(1900, 1, 1),
            max_value=dt.datetime(2200, 1, 1),
            timezones=st.just(UTC),
        ),
        pa.timestamp("us", "UTC"),
    ),
    "decimal_10_2": (pa.decimal128(10, 2), _decimals(10, 2), pa.decimal128(10, 2)),
    "decimal_38_10": (pa.decimal128(38, 10), _decimals(38, 10), pa.decimal128(38, 10)),
    "decimal_5_0": (pa.decimal128(5, 0), _decimals(5, 0), pa.decimal128(5, 0)),
}


@st.composite
def tables(draw: st.DrawFn, max_rows: int = 8) -> tuple[pa.Table, pa.Schema]:
    """A random table (``rid`` = row order first) and the schema it must read back with."""
    kinds = draw(st.lists(st.sampled_from(sorted(TYPES)), min_size=1, max_size=6, unique=True))
    n = draw(st.integers(0, max_rows))
    cols: dict[str, pa.Array] = {"rid": pa.array(range(n), pa.int64())}
    fields = [pa.field("rid", pa.int64())]
    for i, kind in enumerate(kinds):
        typ, values, back = TYPES[kind]
        data = draw(st.lists(st.none() | values, min_size=n, max_size=n))
        name = f"c{i}_{kind}"
        cols[name] = pa.array(data, typ)
        fields.append(pa.field(name, back))
    return pa.table(cols), pa.schema(fields)


def _zone(t: pa.DataType) -> pa.DataType:
    if pa.types.is_timestamp(t) and t.tz in ("UTC", "Etc/UTC"):  # type: ignore[attr-defined]
        return pa.timestamp(t.unit, "UTC")  # type: ignore[attr-defined]
    return t


def _plain(value: Any) -> Any:
    """NaN equal to NaN, and -0.0 told apart from 0.0, for comparing rows."""
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if value == 0.0:
            return ("zero", math.copysign(1.0, value))
    return value


def assert_same(got: pa.Table, expected: pa.Table, schema: pa.Schema) -> None:
    assert [f.name for f in got.schema] == schema.names
    assert [_zone(f.type) for f in got.schema] == [_zone(f.type) for f in schema]
    want = expected.cast(pa.schema([pa.field(f.name, _zone(f.type)) for f in schema]))
    for name in schema.names:
        a = [_plain(v) for v in got.column(name).to_pylist()]
        b = [_plain(v) for v in want.column(name).to_pylist()]
        assert a == b, name


@SETTINGS
@given(case=tables())
def test_create_table_round_trip(shared_lh: mx.Lakehouse, case: tuple[pa.Table, pa.Schema]) -> None:
    data, schema = case
    name = f"rt.t{next(_NAMES)}"
    t = shared_lh.create_table(name, data)
    assert [_zone(f.type) for f in t.schema] == [_zone(f.type) for f in schema]
    via_sql = shared_lh.sql(f"SELECT * FROM {name} ORDER BY rid").to_arrow()
    assert_same(via_sql, data, schema)
    via_table = t.to_arrow().sort_by("rid")
    assert_same(via_table, data, schema)
    assert t.count() == data.num_rows


# A predicate on one column, checked against pyarrow's evaluation of the same predicate on the
# input. The table is written in several commits (several files) and partitioned on some runs,
# so file pruning by statistics and partition values is on the path.
FILTERABLE = ["int16", "int64", "uint32", "float64", "string", "long_string", "date32"]
FILTERABLE += ["ts_us", "ts_utc"]
FILTERABLE += ["decimal_10_2", "bool"]


def _literal(value: Any, typ: pa.DataType) -> str:
    if pa.types.is_boolean(typ):
        return "true" if value else "false"
    if pa.types.is_floating(typ):
        if math.isnan(value):
            return "'NaN'::DOUBLE"
        if math.isinf(value):
            return "'Infinity'::DOUBLE" if value > 0 else "'-Infinity'::DOUBLE"
        return f"{value!r}::DOUBLE"
    if pa.types.is_string(typ):
        return "'" + value.replace("'", "''") + "'"
    if pa.types.is_date(typ):
        return f"DATE '{value.isoformat()}'"
    if pa.types.is_timestamp(typ):
        if typ.tz:  # type: ignore[attr-defined]
            return f"TIMESTAMPTZ '{value.isoformat()}'"
        return f"TIMESTAMP '{value.isoformat()}'"
    if pa.types.is_decimal(typ):
        return f"CAST('{value}' AS DECIMAL({typ.precision}, {typ.scale}))"  # type: ignore[attr-defined]
    return str(value)


_OPS = {"=": pc.equal, "<": pc.less, "<=": pc.less_equal, ">": pc.greater, ">=": pc.greater_equal}


@SETTINGS
@given(
    kind=st.sampled_from(FILTERABLE),
    chunks=st.integers(1, 3),
    partitioned=st.booleans(),
    op=st.sampled_from(sorted(_OPS)),
    data=st.data(),
)
def test_filtered_reads_match_pyarrow(
    shared_lh: mx.Lakehouse, kind: str, chunks: int, partitioned: bool, op: str, data: st.DataObject
) -> None:
    typ, values, back = TYPES[kind]
    pool = data.draw(st.lists(values, min_size=1, max_size=4), label="pool")
    parts = [
        data.draw(st.lists(st.none() | st.sampled_from(pool), min_size=1, max_size=5))
        for _ in range(chunks)
    ]
    probe = data.draw(st.sampled_from(pool) | values, label="probe")
    rid = itertools.count()
    batches = [
        pa.table({"rid": pa.array([next(rid) for _ in p], pa.int64()), "v": pa.array(p, typ)})
        for p in parts
    ]
    # decimals: see test_partition_by_negative_fractional_decimal
    use_partition = partitioned and not (pa.types.is_floating(typ) or pa.types.is_decimal(typ))
    name = f"rt.f{next(_NAMES)}"
    t = shared_lh.create_table(name, batches[0], partition_by=["v"] if use_partition else None)
    for b in batches[1:]:
        t.append(b)
    whole = pa.concat_tables(batches)
    if use_partition and pa.types.is_string(typ):
        # Delta (like Hive and Spark) writes an empty-string partition value as NULL.
        v = pc.if_else(pc.equal(whole.column("v"), ""), pa.scalar(None, typ), whole.column("v"))
        whole = whole.set_column(1, "v", v)
    mask = _duckdb_comparison(whole.column("v"), op, probe, typ)
    expected = sorted(whole.filter(pc.fill_null(mask, False)).column("rid").to_pylist())
    got = shared_lh.sql(
        f"SELECT rid FROM {name} WHERE v {op} {_literal(probe, back)} ORDER BY rid"
    ).fetchall()
    assert [r[0] for r in got] == expected


def _duckdb_comparison(column: pa.ChunkedArray, op: str, probe: Any, typ: pa.DataType) -> Any:
    """``column op probe`` as DuckDB evaluates it (NULL where either side is NULL)."""
    if not pa.types.is_floating(typ):
        return _OPS[op](column, pa.scalar(probe, typ))
    # DuckDB (like Postgres) orders NaN above every other value and equal to itself.
    is_nan = pc.is_nan(column)
    if math.isnan(probe):
        nothing = pa.array([False] * len(column), pa.bool_())
        return {
            "=": is_nan,
            ">=": is_nan,
            "<=": pc.is_valid(column),
            "<": pc.invert(is_nan),
            ">": nothing,
        }[op]
    base = _OPS[op](column, pa.scalar(probe, typ))
    return pc.or_(base, is_nan) if op in (">", ">=") else base


def test_uint64_beyond_int64_is_refused_not_wrapped(tmp_path: Path) -> None:
    with mx.connect(str(tmp_path / "wh")) as lh:
        with pytest.raises(mx.MatrixOSError):
            lh.create_table("u", pa.table({"a": pa.array([2**63 + 5], pa.uint64())}))
        assert lh.tables() == []


def test_nanoseconds_that_are_not_whole_microseconds_are_refused(tmp_path: Path) -> None:
    with mx.connect(str(tmp_path / "wh")) as lh:
        with pytest.raises(mx.MatrixOSError):
            lh.create_table("ns", pa.table({"a": pa.array([1_001], pa.timestamp("ns"))}))
        assert lh.tables() == []


def test_partition_by_negative_fractional_decimal_is_refused_cleanly(tmp_path: Path) -> None:
    # delta-rs serializes such partition values wrongly (Decimal('-1.50') as '-1.-50') and
    # refuses the write; until that is fixed upstream MatrixOS must raise its own error and
    # leave no table behind (test_filtered_reads_match_pyarrow does not partition decimals).
    with mx.connect(str(tmp_path / "wh")) as lh:
        values = pa.array(
            [Decimal("-1.50"), Decimal("-0.01"), Decimal("2.00")], pa.decimal128(10, 2)
        )
        data = pa.table({"rid": [0, 1, 2], "v": values})
        with pytest.raises(mx.MatrixOSError):
            lh.create_table("d", data, partition_by=["v"])
        assert lh.tables() == []
