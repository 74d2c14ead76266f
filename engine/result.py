"""Query results: an Arrow stream with conveniences for Arrow, Polars, pandas and notebooks."""

from __future__ import annotations

import html
import threading
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from matrixos.engine.interrupt import canceled
from matrixos.errors import MatrixOSError, ResultConsumed, SQLError, StatementCanceled

if TYPE_CHECKING:
    import pandas as pd
    import polars as pl

_PREVIEW_ROWS = 20


class Result:
    """The rows of one statement, streamed as Arrow record batches.

    A result can be read any number of times, like a DataFrame: the batches are kept as they
    stream past the first reader, so ``pa.table(res)`` followed by ``res.to_polars()`` works.
    ``to_arrow_reader(keep=False)`` streams a result larger than memory without keeping it;
    only such a result cannot be read again (``ResultConsumed``). It implements
    ``__arrow_c_stream__``, so ``pa.table(res)``, ``pl.DataFrame(res)`` and DuckDB take it
    without copies.

    Example:
        >>> r = Result.from_table(pa.table({"a": [1, 2]}))
        >>> r.fetchall()
        [(1,), (2,)]
        >>> pa.table(r).num_rows, r.to_pylist()
        (2, [{'a': 1}, {'a': 2}])
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
        self._batches: list[pa.RecordBatch] = []  # what streamed past so far
        self._done = False  # the stream ended: _batches holds every row
        self._dropped = False  # streamed with keep=False: rows are gone
        self._error: MatrixOSError | None = None  # the stream failed: raised to every reader
        self._table: pa.Table | None = None
        self._lock = threading.Lock()
        self._on_close = on_close
        self.statement = statement
        self.message = message
        self.schema: pa.Schema = reader.schema
        # How the statement ran, when the engine reports it: a distributed query's
        # ``cache_hits``, ``cache_misses``, ``bytes_local``, ``bytes_remote``,
        # ``remote_fraction`` and per-fragment ``fragments`` (see engine/filecache.py).
        self.stats: dict[str, Any] = {}
        #: Each column's DuckDB type name (``UUID``, ``JSON``, ``INTEGER[][]``…) when DuckDB
        #: ran the statement itself: what Arrow loses (a UUID or JSON is a string there);
        #: the PostgreSQL wire sends those columns as their own types.
        self.sql_types: list[str] | None = None

    @classmethod
    def from_table(
        cls, table: pa.Table, *, statement: str = "SELECT", message: str | None = None
    ) -> Result:
        res = cls(pa.RecordBatchReader.from_batches(table.schema, []), statement=statement)
        res._reader = None
        res._done = True
        res._table = table
        res._batches = table.to_batches()
        res.message = message
        return res

    @property
    def columns(self) -> list[str]:
        return list(self.schema.names)

    def on_end(self, fn: Callable[[], None]) -> None:
        """Call ``fn`` once the stream has ended (read to its end or failed), or now if it
        has already (a metered statement's wall time ends there)."""
        with self._lock:
            if not (self._done or self._reader is None):
                before = self._on_close

                def both() -> None:
                    if before is not None:
                        before()
                    fn()

                self._on_close = both
                return
        fn()

    # -- the stream -------------------------------------------------------------------------
    def _close(self) -> None:
        self._reader = None
        if self._on_close is not None:
            on_close, self._on_close = self._on_close, None
            on_close()

    def _next(self, keep: bool) -> pa.RecordBatch | None:
        """The stream's next batch (None at its end); called with ``_lock`` held."""
        if self._error is not None:
            raise self._error
        if self._done or self._reader is None:
            self._done = True
            return None
        try:
            batch = self._reader.read_next_batch()
        except StopIteration:
            self._done = True
            self._close()
            return None
        except Exception as e:
            self._error = _stream_error(e)
            self._close()
            raise self._error from e
        if keep:
            self._batches.append(batch)
        return batch

    def _check_replayable(self) -> None:
        if self._dropped:
            raise ResultConsumed(
                "this result was streamed with keep=False and its rows are gone",
                hint="run the statement again, or read it with the default keep=True",
            )

    def _replay(self) -> Iterator[pa.RecordBatch]:
        """Every batch: the kept ones, then the rest of the stream (kept as they pass)."""
        i = 0
        while True:
            with self._lock:
                self._check_replayable()
                if i < len(self._batches):
                    batch: pa.RecordBatch | None = self._batches[i]
                else:
                    batch = self._next(keep=True)
            if batch is None:
                return
            i += 1
            yield batch

    def _drain(self) -> Iterator[pa.RecordBatch]:
        """The stream without keeping it (after any batches already kept)."""
        with self._lock:
            self._check_replayable()
            kept, complete = list(self._batches), self._done
        yield from kept
        while not complete:  # a result already held whole stays whole
            with self._lock:
                self._dropped = True
                self._batches = []
                batch = self._next(keep=False)
            if batch is None:
                return
            yield batch

    def to_arrow_reader(self, *, keep: bool = True) -> pa.RecordBatchReader:
        """The rows as a stream of record batches.

        ``keep=False`` does not keep the batches that stream past, for results larger than
        memory; the result cannot be read again afterwards.
        """
        batches = self._replay() if keep else self._drain()
        if keep:
            with self._lock:
                self._check_replayable()
        return pa.RecordBatchReader.from_batches(self.schema, batches)

    def __arrow_c_stream__(self, requested_schema: Any = None) -> Any:
        return self.to_arrow_reader().__arrow_c_stream__(requested_schema)

    def to_arrow(self) -> pa.Table:
        """All rows as a ``pyarrow.Table``."""
        if self._table is None:
            batches = list(self._replay())
            self._table = pa.Table.from_batches(batches, self.schema)
        return self._table

    # -- conveniences -----------------------------------------------------------------------
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

    def column(self, name: str | int) -> pa.ChunkedArray:
        """One column of all rows (as ``pyarrow.Table.column``)."""
        return self.to_arrow().column(name)

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        return iter(self.fetchall())

    def __len__(self) -> int:
        return self.to_arrow().num_rows

    @property
    def num_rows(self) -> int:
        return self.to_arrow().num_rows

    # -- previews ---------------------------------------------------------------------------
    def __repr__(self) -> str:
        """At most 20 rows as text, rendered from Arrow: NULL is ``NULL`` and integers stay
        integers (pandas made them ``NaN`` and ``64.0``)."""
        if not self.schema.names:
            return self.message or "OK"
        t = self.to_arrow()
        body = text_table(t.slice(0, _PREVIEW_ROWS))
        more = f"\n… {t.num_rows - _PREVIEW_ROWS:,} more rows" if t.num_rows > _PREVIEW_ROWS else ""
        if self.statement == "EXPLAIN":  # a plan, one line per row: no count
            return body + more
        return f"{body}{more}\n({_rows(t.num_rows)})"

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
        note = f"<p>{_rows(t.num_rows)}, {t.num_columns} column{'s' if t.num_columns != 1 else ''}"
        if t.num_rows > _PREVIEW_ROWS:
            note += f" (showing first {_PREVIEW_ROWS})"
        return (
            f"<table><thead><tr>{th}</tr></thead><tbody>{''.join(rows)}</tbody></table>{note}</p>"
        )


def text_table(t: pa.Table) -> str:
    """``t`` as aligned text: numbers right-aligned, everything else left-aligned, NULL as
    ``NULL``; no trailing spaces (an EXPLAIN plan reads as it was written).

    Example:
        >>> print(text_table(pa.table({"n": pa.array([64, None]), "s": ["a", "bc"]})))
           n  s
          64  a
        NULL  bc
    """
    right = [
        pa.types.is_integer(f.type) or pa.types.is_floating(f.type) or pa.types.is_decimal(f.type)
        for f in t.schema
    ]
    rows = [list(t.schema.names)]
    cells = [[_short(v) for v in col.to_pylist()] for col in t.columns]
    rows += [list(r) for r in zip(*cells, strict=True)] if cells else []
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r in rows:
        parts = [
            c.rjust(w) if num else c.ljust(w) for c, w, num in zip(r, widths, right, strict=True)
        ]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def _rows(n: int) -> str:
    return f"{n:,} row{'s' if n != 1 else ''}"


def _short(v: Any, limit: int = 200) -> str:
    """One cell on one line: NULL, and embedded newlines shown as ⏎."""
    s = "NULL" if v is None else str(v).replace("\n", "⏎")
    return s if len(s) <= limit else s[: limit - 1] + "…"


def _stream_error(e: Exception) -> MatrixOSError:
    """The error every later reader of a failed stream gets (the engine's, when it is ours)."""
    if isinstance(e, MatrixOSError):
        return e
    if canceled(e):
        return StatementCanceled("canceling statement due to user request")
    return SQLError(f"reading the result failed: {e}", hint="the statement can be run again")
