"""A finished statement's rows: cut into chunks, described by a manifest, and encoded as
JSON_ARRAY, ARROW_STREAM (Arrow IPC stream bytes) or CSV.

A result keeps at most ``row_limit`` rows and ``byte_limit`` bytes (Arrow in memory) and says
``truncated`` when it stopped early. Chunks hold at most ``chunk_rows`` rows and about
``chunk_bytes`` bytes each.

Example:
    >>> import pyarrow as pa
    >>> rows = ResultSet.collect(pa.table({"a": [1, 2, 3]}).to_reader(), chunk_rows=2)
    >>> rows.total_row_count, len(rows.chunks), rows.truncated
    (3, 2, False)
    >>> json_rows(rows.chunks[1])
    [['3']]
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv


class Format(StrEnum):
    JSON_ARRAY = "JSON_ARRAY"
    ARROW_STREAM = "ARROW_STREAM"
    CSV = "CSV"


MEDIA_TYPES = {
    Format.JSON_ARRAY: "application/json",
    Format.ARROW_STREAM: "application/vnd.apache.arrow.stream",
    Format.CSV: "text/csv",
}


@dataclass
class ResultSet:
    """The rows a statement kept, in chunks. While ``collect`` runs, the record batches kept so
    far are ``batches`` and ``follow()`` yields them as they come (a response streams the
    result while the query still produces it); ``complete`` once ``collect`` stopped."""

    schema: pa.Schema
    chunks: list[pa.Table] = field(default_factory=list)
    truncated: bool = False
    batches: list[pa.RecordBatch] = field(default_factory=list, repr=False)
    complete: bool = False
    #: Rows kept after the last chunk in ``chunks`` (the next chunk's, while ``collect`` runs).
    pending_rows: int = 0
    _cond: threading.Condition = field(default_factory=threading.Condition, repr=False)
    _offsets: list[int] = field(default_factory=list, repr=False)
    _nbytes: tuple[int, int] | None = field(default=None, repr=False)  # (chunks, bytes)

    @classmethod
    def collect(
        cls,
        reader: pa.RecordBatchReader,
        *,
        row_limit: int | None = None,
        byte_limit: int | None = None,
        chunk_rows: int = 65_536,
        chunk_bytes: int = 16 * 1024 * 1024,
        on_batch: Any = None,
        on_start: Callable[[ResultSet], None] | None = None,
        on_rows: Callable[[], None] | None = None,
    ) -> ResultSet:
        """Read ``reader`` up to the limits (``on_batch()`` runs before each batch is read: a
        cancel check). ``on_start(rs)`` gets the result as it begins (to ``follow`` it);
        ``on_rows()`` runs after each batch kept."""
        rs = cls(reader.schema)
        if on_start is not None:
            on_start(rs)
        try:
            rs._read(reader, row_limit, byte_limit, chunk_rows, chunk_bytes, on_batch, on_rows)
        finally:
            with rs._cond:
                rs.complete = True
                rs._cond.notify_all()
        return rs

    def _read(
        self,
        reader: pa.RecordBatchReader,
        row_limit: int | None,
        byte_limit: int | None,
        chunk_rows: int,
        chunk_bytes: int,
        on_batch: Any,
        on_rows: Callable[[], None] | None,
    ) -> None:
        rs = self
        pending: list[pa.RecordBatch] = []
        pending_rows = pending_bytes = rows = size = 0
        for batch in _batches(reader, on_batch):
            if row_limit is not None and rows + batch.num_rows > row_limit:
                batch = batch.slice(0, row_limit - rows)
                rs.truncated = True
            if byte_limit is not None and size + batch.nbytes > byte_limit:
                # Whole rows only: keep the share of the batch that fits.
                per_row = max(1, batch.nbytes // max(1, batch.num_rows))
                batch = batch.slice(0, max(0, (byte_limit - size) // per_row))
                rs.truncated = True
            rows += batch.num_rows
            size += batch.nbytes
            if batch.num_rows:
                with rs._cond:
                    rs.batches.append(batch)
                    rs._cond.notify_all()
                if on_rows is not None:
                    on_rows()
            while batch.num_rows:
                take = min(batch.num_rows, chunk_rows - pending_rows)
                part = batch.slice(0, take)
                pending.append(part)
                pending_rows += take
                pending_bytes += part.nbytes
                batch = batch.slice(take)
                if pending_rows >= chunk_rows or pending_bytes >= chunk_bytes:
                    sealed = pa.Table.from_batches(pending, rs.schema)
                    pending, pending_rows, pending_bytes = [], 0, 0
                    with rs._cond:
                        rs.chunks.append(sealed)
                        rs.pending_rows = 0
                        rs._cond.notify_all()
            if pending_rows != rs.pending_rows:
                with rs._cond:
                    rs.pending_rows = pending_rows
                    rs._cond.notify_all()
            if rs.truncated:
                break
        if pending or not rs.chunks:
            last = pa.Table.from_batches(pending, rs.schema)
            with rs._cond:
                rs.chunks.append(last)
                rs.pending_rows = 0

    def follow(self) -> Iterator[pa.RecordBatch]:
        """The kept record batches, each as soon as ``collect`` keeps it, until it stops."""
        i = 0
        while True:
            with self._cond:
                while i >= len(self.batches) and not self.complete:
                    self._cond.wait()
                new, complete = self.batches[i:], self.complete
            i += len(new)
            yield from new
            if complete and i >= len(self.batches):
                return

    def chunk_ready(self, index: int) -> bool:
        """Whether chunk ``index`` is final and whether another follows it is known (one
        follows when rows are kept past it), so that it can be answered with its next link
        while ``collect`` still runs."""
        with self._cond:
            return index < len(self.chunks) and (
                self.complete or index + 1 < len(self.chunks) or self.pending_rows > 0
            )

    def has_next(self, index: int) -> bool:
        """Whether a chunk follows chunk ``index`` (``chunk_ready(index)`` holds)."""
        with self._cond:
            return index + 1 < len(self.chunks) or (not self.complete and self.pending_rows > 0)

    def wait_chunk(self, index: int, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until chunk ``index`` is ready or ``collect``
        stopped; whether it is ready."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self.chunk_ready(index) and not self.complete:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return self.chunk_ready(index)

    @property
    def nbytes(self) -> int:
        """The bytes (Arrow, in memory) the chunks hold (summed once the chunks are final)."""
        if self._nbytes is None or self._nbytes[0] != len(self.chunks):
            self._nbytes = (len(self.chunks), sum(c.nbytes for c in self.chunks))
        return self._nbytes[1]

    @property
    def total_row_count(self) -> int:
        return sum(c.num_rows for c in self.chunks)

    def row_offset(self, index: int) -> int:
        """The row number chunk ``index`` starts at."""
        if len(self._offsets) != len(self.chunks):  # computed once the chunks are final
            self._offsets = [0]
            for c in self.chunks[:-1]:
                self._offsets.append(self._offsets[-1] + c.num_rows)
        return self._offsets[index]


def _batches(reader: pa.RecordBatchReader, on_batch: Any) -> Iterator[pa.RecordBatch]:
    while True:
        if on_batch is not None:
            on_batch()
        try:
            yield reader.read_next_batch()
        except StopIteration:
            return


def columns(schema: pa.Schema) -> list[dict[str, Any]]:
    """The manifest's column list: name, position and type (as Arrow and as SQL would say)."""
    return [
        {
            "name": f.name,
            "position": i,
            "type_name": _type_name(f.type),
            "type_text": str(f.type),
            "nullable": f.nullable,
        }
        for i, f in enumerate(schema)
    ]


def _type_name(t: pa.DataType) -> str:
    checks = [
        (pa.types.is_boolean, "BOOLEAN"),
        (pa.types.is_int8, "BYTE"),
        (pa.types.is_int16, "SHORT"),
        (pa.types.is_int32, "INT"),
        (pa.types.is_integer, "LONG"),
        (pa.types.is_float32, "FLOAT"),
        (pa.types.is_floating, "DOUBLE"),
        (pa.types.is_decimal, "DECIMAL"),
        (pa.types.is_date, "DATE"),
        (pa.types.is_timestamp, "TIMESTAMP"),
        (pa.types.is_string, "STRING"),
        (pa.types.is_large_string, "STRING"),
        (pa.types.is_binary, "BINARY"),
        (pa.types.is_large_binary, "BINARY"),
        (pa.types.is_list, "ARRAY"),
        (pa.types.is_large_list, "ARRAY"),
        (pa.types.is_fixed_size_list, "ARRAY"),
        (pa.types.is_struct, "STRUCT"),
        (pa.types.is_map, "MAP"),
        (pa.types.is_null, "NULL"),
    ]
    for check, name in checks:
        if check(t):
            return name
    return "STRING"


def _as_text(table: pa.Table) -> pa.Table:
    """Every column as strings (null stays null); nested values as JSON text."""
    return pa.table([_text(c) for c in table.columns], names=table.column_names)


def _is_binary(t: pa.DataType) -> bool:
    return bool(pa.types.is_binary(t) or pa.types.is_large_binary(t))


def _text(col: pa.ChunkedArray) -> pa.ChunkedArray | pa.Array:
    """A column as strings: cast when Arrow can, else JSON text (binary as hex)."""
    if not _is_binary(col.type):
        try:
            return col.cast(pa.string())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    return pa.array([_json_text(v) for v in col.to_pylist()], pa.string())


def _json_text(v: Any) -> str | None:
    if v is None:
        return None
    if isinstance(v, bytes):
        return v.hex()
    return json.dumps(v, default=str)


def json_rows(chunk: pa.Table) -> list[list[str | None]]:
    """A chunk as Databricks' ``data_array``: rows of strings (null as null)."""
    text = _as_text(chunk)
    cols = [c.to_pylist() for c in text.columns]
    return [list(r) for r in zip(*cols, strict=True)] if cols else []


def arrow_bytes(chunk: pa.Table) -> bytes:
    """A chunk as one Arrow IPC stream (schema, then its record batches), written once into a
    buffer of its exact size (measured by a dry run that copies nothing), then copied once
    into ``bytes``: a ``BytesIO`` grows by copying and copies again on ``getvalue`` (111 ms for
    1M rows x 4 columns, 31 MB, against 44 ms here on the loaded dev machine)."""
    dry = pa.MockOutputStream()
    with pa.ipc.new_stream(dry, chunk.schema) as writer:
        writer.write_table(chunk)
    out = pa.allocate_buffer(dry.size())
    with pa.ipc.new_stream(pa.FixedSizeBufferWriter(out), chunk.schema) as writer:
        writer.write_table(chunk)
    return out.to_pybytes()


def csv_bytes(chunk: pa.Table, *, header: bool) -> bytes:
    """A chunk as CSV (the header row only in the first chunk)."""
    sink = io.BytesIO()
    # Scalars as pyarrow writes them (numbers unquoted); nested and binary values as text.
    plain = [
        col if not pa.types.is_nested(col.type) and not _is_binary(col.type) else _text(col)
        for col in chunk.columns
    ]
    table = pa.table(plain, names=chunk.column_names)
    pacsv.write_csv(table, sink, pacsv.WriteOptions(include_header=header, quoting_style="needed"))
    return sink.getvalue()
