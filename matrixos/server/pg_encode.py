"""Arrow record batches as PostgreSQL ``DataRow`` messages in text format, a batch at a time.

Encoding row by row in Python cost ~25 µs a row (25 s for a million rows of four columns);
here each column becomes PostgreSQL's text form with Arrow compute (Python only for the types
Arrow cannot render that way: bytea, intervals, arrays, json, time zones), and each row's
message is joined by Arrow from fixed parts built with numpy: ``'D'``, the length, the column
count, then per column the value's big-endian length (-1 for NULL) and bytes (0.56 s for the
same million rows).

Example:
    >>> import pyarrow as pa
    >>> batch = pa.record_batch({"a": [1, None], "b": ["x", "yz"]})
    >>> data_rows(batch, [20, 25])
    b'D\\x00\\x00\\x00\\x10\\x00\\x02\\x00\\x00\\x00\\x011\\x00\\x00\\x00\\x01xD\\x00\\x00\\x00\\x10\\x00\\x02\\xff\\xff\\xff\\xff\\x00\\x00\\x00\\x02yz'
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pg_mimic.types import encode_value

from matrixos.server.pg_types import BOOL, FLOAT4, FLOAT8, JSON, json_text


def column_text(arr: pa.Array, oid: int) -> pa.Array:
    """``arr`` as a (large) string array of PostgreSQL's text output, nulls kept."""
    t = arr.type
    if pa.types.is_dictionary(t):
        arr = arr.dictionary_decode()
        t = arr.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return arr
    if pa.types.is_integer(t) or pa.types.is_decimal(t) or pa.types.is_date(t):
        return pc.cast(arr, pa.string())
    if oid == BOOL:
        return pc.if_else(arr, "t", "f")
    if oid in (FLOAT4, FLOAT8):
        text = pc.cast(arr, pa.string())
        for arrow, pg in (("nan", "NaN"), ("inf", "Infinity"), ("-inf", "-Infinity")):
            text = pc.if_else(pc.equal(text, arrow), pg, text)
        return text
    if pa.types.is_timestamp(t) and t.tz is None:
        # Arrow writes every fraction digit ("…12:30:00.000000"); PostgreSQL drops a zero one.
        text = pc.cast(arr, pa.string())
        return pc.replace_substring_regex(text, r"\.0+$", "")
    if oid == JSON:
        return pa.array([None if v is None else json_text(v) for v in arr.to_pylist()], pa.string())
    return pa.array(
        [None if v is None else encode_value(oid, v) for v in arr.to_pylist()], pa.string()
    )


def data_rows(batch: pa.RecordBatch, oids: list[int]) -> bytes:
    """Every row of ``batch`` as ``DataRow`` messages (text format), one bytes object."""
    m = batch.num_rows
    if m == 0:
        return b""
    parts: list[pa.Array] = []
    payload = np.full(m, 4 + 2, np.int64)  # the length field counts itself
    for arr, oid in zip(batch.columns, oids, strict=True):
        text = column_text(arr, oid).cast(pa.large_binary())
        lengths = pc.binary_length(text).to_numpy(zero_copy_only=False)
        lengths = np.where(np.isnan(lengths.astype(float)), -1, lengths).astype(np.int64)
        payload += 4 + np.maximum(lengths, 0)
        parts += [_ints(lengths, ">i4"), text]
    header = np.empty(m, dtype=[("tag", "S1"), ("len", ">i4"), ("cols", ">i2")])
    header["tag"], header["len"], header["cols"] = b"D", payload, batch.num_columns
    head = pa.FixedSizeBinaryArray.from_buffers(pa.binary(7), m, [None, pa.py_buffer(header)])
    joined = pc.binary_join_element_wise(
        head.cast(pa.large_binary()),
        *parts,
        pa.scalar(b"", pa.large_binary()),
        null_handling="replace",
        null_replacement="",
    )
    offsets = np.frombuffer(joined.buffers()[1], np.int64)
    data = joined.buffers()[2]
    assert data is not None
    start, end = int(offsets[joined.offset]), int(offsets[joined.offset + m])
    return data.slice(start, end - start).to_pybytes()


def _ints(values: np.ndarray, dtype: str) -> pa.Array:
    """``values`` as fixed-width binary of their ``dtype`` bytes (e.g. big-endian int32)."""
    raw = values.astype(dtype)
    size = raw.dtype.itemsize
    fixed = pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(size), len(raw), [None, pa.py_buffer(raw.tobytes())]
    )
    return fixed.cast(pa.large_binary())


def text_only(format_codes: list[int] | Any) -> bool:
    """Whether a Bind's result format codes ask for text throughout."""
    return not format_codes or all(code == 0 for code in format_codes)
