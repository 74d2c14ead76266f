"""Turning what users hand us (Arrow, Polars, pandas, dicts, rows) into Arrow tables."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pyarrow as pa

from matrixos.errors import SchemaMismatch


def to_arrow_table(data: Any) -> pa.Table:
    """An Arrow table from anything tabular.

    Accepts ``pa.Table``/``RecordBatch``/``RecordBatchReader``, objects with
    ``__arrow_c_stream__`` (Polars, DuckDB, MatrixOS results), pandas frames, a dict of columns or a
    list of row dicts.

    Example:
        >>> to_arrow_table({"a": [1, 2]}).num_rows
        2
    """
    if isinstance(data, pa.Table):
        return data
    if isinstance(data, pa.RecordBatch):
        return pa.Table.from_batches([data])
    if isinstance(data, pa.RecordBatchReader):
        return data.read_all()
    if hasattr(data, "to_arrow") and type(data).__module__.startswith("polars"):
        return data.to_arrow()
    pandas = type(data).__module__.startswith("pandas")
    rows: list[Any] = []
    try:
        if hasattr(data, "__arrow_c_stream__"):  # pandas >= 2.2 frames too
            return pa.table(data)
        if pandas:
            return pa.Table.from_pandas(data, preserve_index=False)
        if isinstance(data, Mapping):
            _check_nesting(data.values())
            return pa.table(dict(data))
        if isinstance(data, Sequence) and not isinstance(data, str | bytes):
            rows = list(data)
            _check_nesting(rows)
            return pa.Table.from_pylist(rows)
    except SchemaMismatch:
        raise  # a TypeError too, and already says what is wrong
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError) as e:
        # pa.ArrowTypeError is a TypeError; a plain one comes from a row that is not a dict.
        if pandas:
            where = _bad_column({c: data[c].tolist() for c in data.columns})
        elif isinstance(data, Mapping):
            where = _bad_column(data)
        else:
            where = _bad_row_value(rows) if rows else None
        raise SchemaMismatch(
            f"the values do not make a table: {where or e}; nothing was written",
            hint="give each column values of one type (e.g. all integers, or all strings)",
        ) from e
    except RecursionError as e:
        raise SchemaMismatch("the values are nested too deeply to store") from e
    raise SchemaMismatch(f"cannot turn a {type(data).__name__} into a table")


#: Levels of nested dicts and lists Python values may have: pyarrow's type inference runs out
#: of memory (std::bad_alloc, the process dies) on a few thousand.
MAX_VALUE_NESTING = 64


def _check_nesting(values: Iterable[Any]) -> None:
    """Refuse Python values nested deeper than ``MAX_VALUE_NESTING`` (checked iteratively,
    before pyarrow sees them; scalars cost one type test)."""
    todo: list[tuple[Any, int]] = [(v, 1) for v in values if isinstance(v, dict | list | tuple)]
    while todo:
        value, depth = todo.pop()
        if depth > MAX_VALUE_NESTING:
            raise SchemaMismatch(
                f"the values are nested more than {MAX_VALUE_NESTING} levels deep; "
                "nothing was written",
                hint="store the deep part as a JSON string",
            )
        items = value.values() if isinstance(value, dict) else value
        todo += [(v, depth + 1) for v in items if isinstance(v, dict | list | tuple)]


def _bad_column(columns: Mapping[Any, Any]) -> str | None:
    """Which column of a dict of columns Arrow cannot type, and why."""
    for name, values in columns.items():
        try:
            pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
            return f"column {name!r}: {e}"
    return None


def _bad_row_value(rows: list[Any]) -> str | None:
    """The first row and column of a list of row dicts whose value differs in type from the
    rows before it."""
    first: dict[str, tuple[int, Any]] = {}
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            return f"row {i + 1} is a {type(row).__name__}, not a dict of column values"
        for key, value in row.items():
            if value is None:
                continue
            if key not in first:
                first[key] = (i, value)
                continue
            j, seen = first[key]
            try:
                pa.array([seen, value])
            except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
                return (
                    f"column {key!r} is {type(seen).__name__} in row {j + 1} but "
                    f"{type(value).__name__} ({value!r}) in row {i + 1}"
                )
    return None


def normalize_for_delta(table: pa.Table) -> pa.Table:
    """Types Delta can store: timestamps to microseconds, unsigned ints widened, views to plain.

    Delta has no unsigned integers, no nanosecond timestamps and no view types.
    """
    fields = []
    changed = False
    for f in table.schema:
        if _depth(f.type) > MAX_DELTA_NESTING:
            # delta-rs writes a deeper schema, then panics reading it back (its JSON decoder
            # stops at 128 levels, ~42 nested structs): a table nobody could open.
            raise SchemaMismatch(
                f"column {f.name!r} is nested more than {MAX_DELTA_NESTING} levels deep, more "
                "than a Delta table can hold; nothing was written",
                hint="store the deep part as a JSON string",
            )
        t = _delta_type(f.type)
        changed |= t != f.type
        fields.append(pa.field(f.name, t, f.nullable, f.metadata))
    if not changed:
        return table
    try:
        return table.cast(pa.schema(fields, table.schema.metadata))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
        raise SchemaMismatch(f"data does not fit a Delta type: {e}; nothing was written") from e


#: Struct/list/map levels a Delta column may have (delta-rs reads up to ~42 nested structs).
MAX_DELTA_NESTING = 32


def _depth(t: pa.DataType) -> int:
    """How many struct, list and map levels ``t`` has (iterative: any depth is measured)."""
    deepest, todo = 0, [(t, 0)]
    while todo:
        t, d = todo.pop()
        deepest = max(deepest, d)
        if pa.types.is_struct(t):
            todo += [(f.type, d + 1) for f in t]  # type: ignore[attr-defined]
        elif pa.types.is_map(t):
            todo += [(t.key_type, d + 1), (t.item_type, d + 1)]  # type: ignore[attr-defined]
        elif hasattr(t, "value_type"):  # list, large/fixed-size list, list view, dictionary
            todo.append((t.value_type, d + 1))
    return deepest


def _delta_type(t: pa.DataType) -> pa.DataType:
    if pa.types.is_timestamp(t) and t.unit != "us":
        return pa.timestamp("us", t.tz)
    if pa.types.is_time(t):
        return t
    if pa.types.is_uint8(t) or pa.types.is_uint16(t):
        return pa.int32()
    if pa.types.is_uint32(t):
        return pa.int64()
    if pa.types.is_uint64(t):
        return pa.int64()
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return pa.binary()
    if pa.types.is_dictionary(t):
        return _delta_type(t.value_type)
    if pa.types.is_float16(t):
        return pa.float32()
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_list_view(t):
        return pa.list_(_delta_type(t.value_type))
    if pa.types.is_struct(t):
        return pa.struct(
            [pa.field(f.name, _delta_type(f.type), f.nullable) for f in t]  # type: ignore[attr-defined]
        )
    return t
