"""The coordinator's merge of fragment results: the final aggregate, ``avg`` finalized bit for
bit as DuckDB's own avg aggregate, then the query's projections, HAVING, ORDER BY and LIMIT."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa

from matrixos.engine import duck

if TYPE_CHECKING:
    import duckdb

    from matrixos.engine.dist.plan import FragmentPlan


def avg_kind(arg_type: str) -> Literal["double", "long double", "float"] | None:
    """How DuckDB's avg aggregate divides for values of ``arg_type`` (see its avg.cpp)."""
    t = arg_type.upper()
    m = re.fullmatch(r"DECIMAL\((\d+),\s*(\d+)\)", t)
    if m:
        return "double" if int(m.group(1)) <= 4 else "long double"
    if t in ("TINYINT", "SMALLINT"):
        return "double"
    if t in ("INTEGER", "BIGINT", "HUGEINT"):
        return "long double"
    if t in ("DOUBLE", "FLOAT"):
        return "float"
    return None


def finalize_avg(total: pa.Array, count: pa.Array, arg_type: str) -> pa.Array:
    """``avg`` from a group's exact sum and count, bit for bit as DuckDB's avg aggregate:
    ``(long double) sum / ((long double) count * 10^scale)`` for INTEGER, BIGINT, HUGEINT and
    DECIMAL wider than 4 digits, the same in double for narrower types, ``sum / count`` for
    DOUBLE. NULL where the count is 0."""
    import numpy as np

    kind = avg_kind(arg_type)
    m = re.fullmatch(r"DECIMAL\((\d+),\s*(\d+)\)", arg_type.upper())
    scale = 10.0 ** int(m.group(2)) if m else 1.0
    n = count.to_numpy(zero_copy_only=False).astype(np.uint64)
    empty = n == 0
    if kind == "float":
        values = total.fill_null(0).to_numpy(zero_copy_only=False).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = values / n.astype(np.float64)
    else:
        exact = _as_longdouble(total)
        if kind == "long double":
            with np.errstate(divide="ignore", invalid="ignore"):
                out = (exact / (n.astype(np.longdouble) * np.longdouble(scale))).astype(np.float64)
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                out = exact.astype(np.int64).astype(np.float64) / (n.astype(np.float64) * scale)
    return pa.array(out, pa.float64(), mask=empty)


def _as_longdouble(values: pa.Array) -> Any:
    """An exact integer sum column (DECIMAL(38, s) by its unscaled value, or any integer type)
    as numpy long doubles, converted as DuckDB's ``Hugeint::Cast<long double>``."""
    import numpy as np

    values = values.fill_null(0)
    if len(values) == 0:
        return np.zeros(0, dtype=np.longdouble)
    if pa.types.is_decimal(values.type):
        words = np.frombuffer(values.buffers()[1], dtype=np.uint64)
        words = words[2 * values.offset : 2 * (values.offset + len(values))].reshape(-1, 2)
        upper = words[:, 1].view(np.int64).astype(np.longdouble)
        return upper * np.longdouble(2.0**64) + words[:, 0].astype(np.longdouble)
    return values.to_numpy(zero_copy_only=False).astype(np.longdouble)


def merge(cur: duckdb.DuckDBPyConnection, plan: FragmentPlan, partials: pa.Table) -> pa.Table:
    """The coordinator's stage: final aggregate (avg finalized as DuckDB does), then the
    query's own projections, HAVING, ORDER BY and LIMIT, over the fragments' results."""
    cur.register("__mx_partials", partials)
    if plan.merge_sql is not None:
        merged = duck.table(cur, plan.merge_sql)
        for avg in plan.avgs:
            merged = merged.append_column(
                avg.column,
                finalize_avg(
                    merged[avg.column + "_sum"].combine_chunks(),
                    merged[avg.column + "_count"].combine_chunks(),
                    avg.arg_type,
                ),
            )
        cur.register("__mx_merged", merged)
    return duck.table(cur, plan.final_sql)
