"""A query's rows from DuckDB as a stream of Arrow batches, in one parse, bind and run.

``cursor.sql(text)`` makes a lazy relation: DuckDB's Python layer parses and binds the text to
describe it, and ``to_arrow_reader()`` then parses, binds and runs it again. A point query on
a 1M-row table spent ~0.9 ms of its ~4.6 ms in that first bind (``benchmarks/point_query.py``;
binding ``read_parquet`` opens the files). DuckDB 2's Python layer runs a statement once, as a
stream, through ``duckdb._seam.submit`` (what ``to_arrow_reader`` itself calls); where a DuckDB
release lacks it, the relation is used as before. ``cursor.execute`` is no substitute: its
Arrow output holds the whole result in memory first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import duckdb
import pyarrow as pa

#: Rows per Arrow batch of a whole-table read (DuckDB's own default).
BATCH_ROWS = 128 * 1024

try:  # DuckDB >= 2.0's Python layer
    from duckdb import _seam

    _submit: Callable[..., Any] | None = getattr(_seam, "submit", None)
except ImportError:  # pragma: no cover - DuckDB 1.x
    _submit = None


def stream(
    cur: duckdb.DuckDBPyConnection, sql: str, batch_rows: int
) -> tuple[pa.RecordBatchReader, list[str]]:
    """The rows of the query ``sql`` on ``cur`` as a reader of ``batch_rows``-row batches (it
    holds the cursor until read out or closed), and its columns' DuckDB type names."""
    if _submit is not None:
        result = _submit(cur, sql, None, "stream", batch_rows)
        if not result.description:  # it returned no rows (every query does): none
            result.close()
            return pa.RecordBatchReader.from_batches(pa.schema([]), []), []
        types = [str(d[1]) for d in result.description]  # (the reader takes the result)
        return result.arrow_reader(), types
    rel = cur.sql(sql)
    return rel.to_arrow_reader(batch_rows), [str(t) for t in rel.types]


def table(cur: duckdb.DuckDBPyConnection, sql: str) -> pa.Table:
    """All rows of the query ``sql`` on ``cur`` as one Arrow table (parsed and bound once)."""
    if _submit is not None:
        result = _submit(cur, sql, None, "arrow", BATCH_ROWS)
        if not result.description:
            result.close()
            return pa.table({})
        return result.arrow_table()
    return cur.sql(sql).to_arrow_table()
