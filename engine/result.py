"""Query results: an Arrow stream with conveniences for Arrow, Polars, pandas and notebooks."""

from __future__ import annotations

import html
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pyarrow as pa

if TYPE_CHECKING:
    import pandas as pd
    import polars as pl

_PREVIEW_ROWS = 20


class Result:
    """The rows of one statement, streamed as Arrow record batches.

    A result streams once; ``to_arrow()`` materializes (and keeps) all rows so the conveniences
    can be called repeatedly. It implements ``__arrow_c_stream__``, so ``pa.table(res)``,
    ``pl.DataFrame(res)`` and DuckDB take it without copies.

    Example:
        >>> r = Result.from_table(pa.table({"a": [1, 2]}))
        >>> r.fetchall()
        [(1,), (2,)]
    """

    def __init__(
        self,
        reader: pa.RecordBatchReader,
        *,
        statement: str = "SELECT",
        on_close: Callable[[], None] | None = None,
        message: str | None = None,
    ) -> None:
        self._reader: pa.RecordBatchReader | None = reader
        self._table: pa.Table | None = None
        self._on_close = on_close
        self.statement = statement
        self.message = message
        self.schema: pa.Schema = reader.schema
        # How the statement ran, when the engine reports it: a distributed query's
        # ``cache_hits``, ``cache_misses``, ``bytes_local``, ``bytes_remote``,
        # ``remote_fraction`` and per-fragment ``fragments`` (see engine/filecache.py).
        self.stats: dict[str, Any] = {}

    @classmethod
    def from_table(
        cls, table: pa.Table, *, statement: str = "SELECT", message: str | None = None
    ) -> Result:
        res = cls(pa.RecordBatchReader.from_batches(table.schema, []), statement=statement)
        res._reader = None
        res._table = table
        res.message = message
        return res

    @property
    def columns(self) -> list[str]:
        return list(self.schema.names)

    def _close(self) -> None:
        if self._on_close is not None:
            self._on_close()
            self._on_close = None

    def to_arrow(self) -> pa.Table:
        """All rows as a ``pyarrow.Table``."""
        if self._table is None:
            assert self._reader is not None
            try:
                self._table = self._reader.read_all()
            finally:
                self._reader = None
                self._close()
        return self._table

    def to_arrow_reader(self) -> pa.RecordBatchReader:
        """The rows as a stream of record batches (consumes a result not yet materialized)."""
        if self._table is not None:
            return pa.RecordBatchReader.from_batches(self.schema, self._table.to_batches())
        reader, self._reader = self._reader, None
        if reader is None:
            raise RuntimeError("this result was already consumed")
        return _closing_reader(reader, self._close)

    def __arrow_c_stream__(self, requested_schema: Any = None) -> Any:
        return self.to_arrow_reader().__arrow_c_stream__(requested_schema)

    def to_polars(self) -> pl.DataFrame:
        import polars as pl

        return pl.from_arrow(self.to_arrow())  # type: ignore[return-value]

    def to_pandas(self) -> pd.DataFrame:
        return self.to_arrow().to_pandas()

    def to_pylist(self) -> list[dict[str, Any]]:
        return self.to_arrow().to_pylist()

    def fetchall(self) -> list[tuple[Any, ...]]:
        """All rows as tuples (DB-API style)."""
        t = self.to_arrow()
        cols = [c.to_pylist() for c in t.columns]
        return list(zip(*cols, strict=True)) if cols else []

    def fetchone(self) -> tuple[Any, ...] | None:
        rows = self.fetchall()
        return rows[0] if rows else None

    def scalar(self) -> Any:
        """The first column of the first row."""
        row = self.fetchone()
        return row[0] if row else None

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self.fetchall())

    def __len__(self) -> int:
        return self.to_arrow().num_rows

    @property
    def num_rows(self) -> int:
        return self.to_arrow().num_rows

    def __repr__(self) -> str:
        t = self.to_arrow()
        head = t.slice(0, _PREVIEW_ROWS)
        body = head.to_pandas().to_string(index=False) if t.num_columns else ""
        more = f"\n… {t.num_rows - _PREVIEW_ROWS} more rows" if t.num_rows > _PREVIEW_ROWS else ""
        return f"{body}{more}\n({t.num_rows} rows)" if t.num_columns else (self.message or "OK")

    def _repr_html_(self) -> str:
        """A bounded preview for notebooks: at most 20 rows, however large the result."""
        t = self.to_arrow()
        head = t.slice(0, _PREVIEW_ROWS)
        th = "".join(
            f"<th>{html.escape(f.name)}<br><small>{html.escape(str(f.type))}</small></th>"
            for f in t.schema
        )
        rows = []
        for rec in head.to_pylist():
            tds = "".join(f"<td>{html.escape(_short(v))}</td>" for v in rec.values())
            rows.append(f"<tr>{tds}</tr>")
        note = f"<p>{t.num_rows:,} rows, {t.num_columns} columns"
        if t.num_rows > _PREVIEW_ROWS:
            note += f" (showing first {_PREVIEW_ROWS})"
        return (
            f"<table><thead><tr>{th}</tr></thead><tbody>{''.join(rows)}</tbody></table>{note}</p>"
        )


def _short(v: Any, limit: int = 200) -> str:
    s = "NULL" if v is None else str(v)
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _closing_reader(
    reader: pa.RecordBatchReader, close: Callable[[], None]
) -> pa.RecordBatchReader:
    def batches() -> Iterator[pa.RecordBatch]:
        try:
            yield from reader
        finally:
            close()

    return pa.RecordBatchReader.from_batches(reader.schema, batches())
