"""Batch encoding of DataRow messages (server/pg_encode.py) against pg-mimic's row-by-row
encoder: the same bytes for every type, NULLs, special floats, unicode and empty strings."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pyarrow as pa
from pg_mimic import messages
from pg_mimic.results import ResultColumn, encode_row

from matrixos.server.pg_encode import data_rows
from matrixos.server.pg_types import oid_for, rows


def row_by_row(batch: pa.RecordBatch) -> bytes:
    cols = [ResultColumn(f.name, oid_for(f.type)) for f in batch.schema]
    return b"".join(
        messages.make_data_row(encode_row(r, cols)) for r in rows(batch.schema, iter([batch]))
    )


def test_batch_encoding_matches_row_encoding() -> None:
    batch = pa.record_batch(
        {
            "i8": pa.array([1, None, -(2**63), 2**63 - 1, 0], pa.int64()),
            "i2": pa.array([1, 2, None, -3, 4], pa.int16()),
            "f": [0.5, float("nan"), float("inf"), float("-inf"), None],
            "f32": pa.array([1.5, None, 2.25, -1.75, 0.125], pa.float32()),
            "b": [True, False, None, True, False],
            "s": ["", "ünï\u00e7ode ☃", None, "a'b\"c", "x" * 300],
            "d": [dt.date(2026, 1, 1), None, dt.date(1, 1, 1), dt.date(9999, 12, 31), None],
            "ts": pa.array(
                [
                    dt.datetime(2026, 1, 1, 12, 30),
                    dt.datetime(2026, 1, 1, 0, 0, 0, 123456),
                    None,
                    dt.datetime(1970, 1, 1),
                    dt.datetime(2000, 2, 29, 23, 59, 59, 500000),
                ],
                pa.timestamp("us"),
            ),
            "tz": pa.array(
                [dt.datetime(2026, 1, 1, tzinfo=dt.UTC), None, None, None, None],
                pa.timestamp("us", "UTC"),
            ),
            "dec": pa.array(
                [Decimal("1.50"), None, Decimal("-0.01"), Decimal("123456.78"), Decimal(0)],
                pa.decimal128(10, 2),
            ),
            "bin": [b"\x00\xff", None, b"", b"ab", None],
            "tags": [["a", "b"], [], None, ["c"], None],
            "obj": [{"x": 1}, None, {"x": None}, {"x": 3}, None],
            "u64": pa.array([2**64 - 1, 0, None, 1, 2], pa.uint64()),
        }
    )
    oids = [oid_for(f.type) for f in batch.schema]
    assert data_rows(batch, oids) == row_by_row(batch)
    # a slice (non-zero offsets into the buffers) and an empty batch
    part = batch.slice(2, 2)
    assert data_rows(part, oids) == row_by_row(part)
    assert data_rows(batch.slice(0, 0), oids) == b""


def test_integral_floats_as_postgresql_writes_them() -> None:
    batch = pa.record_batch({"f": [3.0, -0.0, 1e20]})
    encoded = data_rows(batch, [701])
    assert b"\x00\x00\x00\x013D" in encoded
    assert b"\x00\x00\x00\x02-0" in encoded and b"\x00\x00\x00\x051e+20" in encoded
