"""Making rows fit a table: casts by name, schema checks on write, merge-source checks.

Shared by the Delta and Lance stores (and connectors that write through them).
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc

from matrixos.errors import SchemaMismatch, SQLError

__all__ = ["cast_to", "check_merge_source", "conform"]


def cast_to(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Cast ``table``'s columns to ``schema`` by name; a value that does not fit is an error."""
    cols = []
    for f in schema:
        if f.name not in table.column_names:
            cols.append(pa.nulls(table.num_rows, f.type))
            continue
        col = table.column(f.name)
        if col.type != f.type:
            try:
                col = col.cast(f.type, safe=True)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise SchemaMismatch(
                    f"column {f.name!r}: data of type {col.type} does not fit the table's "
                    f"type {f.type} ({e}); nothing was written"
                ) from e
        cols.append(col)
    return pa.Table.from_arrays(cols, schema=schema)


def conform(table: pa.Table, schema: pa.Schema, *, evolve: bool, overwrite: bool) -> pa.Table:
    """Make ``table`` fit the table ``schema``: cast what safely casts, refuse type conflicts,
    add new columns only with ``evolve``, fill columns the data lacks with nulls."""
    lower = {n.lower(): n for n in schema.names}
    renamed = {c: lower.get(c.lower(), c) for c in table.column_names}
    if any(k != v for k, v in renamed.items()):
        table = table.rename_columns([renamed[c] for c in table.column_names])
    new = [c for c in table.column_names if c not in schema.names]
    if new and not evolve:
        raise SchemaMismatch(
            f"column(s) {new} are not in the table's schema {schema.names}; nothing was written",
            hint="pass evolve=True (SDK) or --evolve (CLI) to add them",
        )
    if overwrite and evolve:
        return table
    conflicts = []
    for f in schema:
        if f.name in table.column_names:
            have = table.schema.field(f.name).type
            if have != f.type and not _castable(table.column(f.name), f.type):
                conflicts.append(
                    f"{f.name!r} is {f.type} in the table but {have} in the data"
                    + (" (never converted to text)" if _is_text(f.type) else "")
                )
    if conflicts:
        raise SchemaMismatch(
            "type conflict: " + "; ".join(conflicts) + "; nothing was written",
            hint="cast the data to the table's types, or overwrite with evolve=True",
        )
    fields = list(schema) + [table.schema.field(c) for c in new]
    return cast_to(table, pa.schema(fields))


def check_merge_source(source: pa.Table, keys: Sequence[str], *, inserts: bool) -> None:
    """Refuse a merge source whose rows are ambiguous on the key columns ``keys``.

    As Databricks does: two source rows with one key would both update (or delete) the same
    target row, or both be inserted, so the result would depend on row order. A NULL key
    matches no row, so with inserts it would add a new row on every run of the same merge.
    Raises ``SQLError`` (SQLSTATE 21506, "cardinality violation") naming the key and rows.
    """
    if not keys or source.num_rows == 0:
        return
    if inserts:
        for k in keys:
            col = source.column(k)
            if col.null_count:
                row = pc.index(pc.is_null(col), True).as_py()
                raise SQLError(
                    f"merge key {k!r} is NULL in source row {row + 1}: a NULL key matches no "
                    "row, so the row would be inserted again on every run",
                    sqlstate="21506",
                    hint=f"filter the source on {k} IS NOT NULL, or append such rows",
                )
    if source.num_rows < 2:
        return
    counts = source.select(list(keys)).group_by(list(keys)).aggregate([([], "count_all")])
    dup = counts.filter(pc.greater(counts.column("count_all"), 1))
    if dup.num_rows:
        first = dup.slice(0, 1).to_pylist()[0]
        n = first.pop("count_all")
        key = ", ".join(f"{k}={v!r}" for k, v in first.items())
        more = f" (and {dup.num_rows - 1} more repeated keys)" if dup.num_rows > 1 else ""
        raise SQLError(
            f"{n} source rows have the same merge key {key}{more}: each target row may be "
            "matched, and each key inserted, by one source row only",
            sqlstate="21506",
            hint="deduplicate the source first (e.g. keep the latest row per key)",
        )


def _castable(col: pa.ChunkedArray, target: pa.DataType) -> bool:
    # Never silently turn text into numbers or numbers (dates, booleans…) into text: Arrow
    # casts both ways, and 7 appended to a string column would be stored as '7'. A column
    # of nulls only (type null) fits anything.
    have = col.type
    if not pa.types.is_null(have) and _is_text(have) != _is_text(target):
        return False
    try:
        col.cast(target, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
        return False
    return True


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)
