"""``ingest``: load files into a table in one atomic commit.

Every file is read and checked before anything is written, so a malformed file is refused
(``IngestError`` with its file, line and column) and the table stays at its previous version.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import pyarrow as pa

from matrixos.catalog import TableIdent
from matrixos.connectors.files import list_files, normalize_format, read_files
from matrixos.errors import SchemaMismatch
from matrixos.storage.delta import conform
from matrixos.storage.warehouse import filesystem_for

if TYPE_CHECKING:
    from matrixos.session import Lakehouse


@dataclass(frozen=True)
class IngestSummary:
    """What an ingest did."""

    table: str
    mode: str
    files: int
    rows: int
    version: int
    seconds: float

    def __str__(self) -> str:
        return (
            f"{self.mode} {self.rows:,} rows from {self.files} file(s) into {self.table} "
            f"(version {self.version}, {self.seconds:.2f}s)"
        )


def ingest(
    lh: Lakehouse,
    paths: Sequence[str],
    table: str,
    *,
    mode: Literal["append", "overwrite", "merge"] = "append",
    on: Sequence[str] | None = None,
    format: str | None = None,
    evolve: bool = False,
    partition_by: Sequence[str] | None = None,
) -> IngestSummary:
    """Read ``paths`` (files, folders, globs; local or s3://) and write them to ``table``.

    A new table is created from the inferred schema; an existing table's schema guides parsing,
    so a value that does not fit its column is reported with its line and column.
    """
    if mode not in ("append", "overwrite", "merge"):
        raise SchemaMismatch(f"unknown ingest mode {mode!r}: use append, overwrite or merge")
    if mode == "merge" and not on:
        raise SchemaMismatch("merge mode needs key columns (--on id)")
    if format is not None:
        format = normalize_format(format)  # an unknown one fails before any file is listed
    start = time.perf_counter()
    fs = filesystem_for(paths[0], lh.warehouse.options)
    files = list_files(list(paths), fs)
    ident = TableIdent.parse(table)
    existing = lh.catalog.find_table(ident)
    data = read_files(files, format=format, filesystem=fs)
    if existing is not None and mode != "overwrite":
        schema = lh.table(ident).schema
        try:
            conform(data, schema, evolve=evolve, overwrite=False)
        except SchemaMismatch as e:
            # Re-read guided by the table's types to say which file, line and column is wrong.
            extra = [f for f in data.schema if f.name not in schema.names]
            guided = pa.schema([*schema, *extra])
            read_files(files, format=format, filesystem=fs, schema=guided)
            raise e
    if existing is None:
        t = lh.create_table(str(ident), data, partition_by=partition_by)
    else:
        t = lh.table(ident)
        if mode == "append":
            t.append(data, evolve=evolve)
        elif mode == "overwrite":
            t.overwrite(data, evolve=evolve)
        else:
            t.merge(data, on=list(on or []), evolve=evolve)
    return IngestSummary(
        table=str(ident),
        mode=mode if existing is not None else "create",
        files=len(files),
        rows=data.num_rows,
        version=t.version,
        seconds=time.perf_counter() - start,
    )
