"""``ingest``: load files into a table in one atomic commit.

Every file is read and checked before anything is written, so a malformed file is refused
(``IngestError`` with its file, line and column) and the table stays at its previous version.

The table is resolved and authorized through the ``TableService`` for the ``Principal`` who
asks, before any file is read: an existing table needs ``MODIFY``, a new one ``CREATE`` on its
schema (its creator owns it). Rows are written through the table's ``TableStore``; a table
whose properties name an embedding gets the vectors of rows that lack them (``embed_rows``).

Example:
    >>> import tempfile, matrixos as mx
    >>> lh = mx.connect(tempfile.mkdtemp())
    >>> with open("prices.csv", "w") as f:
    ...     _ = f.write("id,price\\n1,9.5\\n2,3.25\\n")
    >>> print(ingest(lh.service, lh.principal, ["prices.csv"], "shop.prices"))
    create 2 rows from 1 file(s) into main.shop.prices (version 0, ...s)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa

from matrixos.ai.embed import embed_rows
from matrixos.catalog import TableIdent, TableInfo, lineage, lineage_runs
from matrixos.catalog.access import Principal
from matrixos.catalog.service import TableService
from matrixos.connectors.files import list_files, normalize_format, read_files
from matrixos.errors import IngestError, SchemaMismatch, TableNotFound
from matrixos.storage.delta import conform
from matrixos.storage.warehouse import filesystem_for


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


def target_table(
    service: TableService, principal: Principal, ident: TableIdent, privilege: str, *more: str
) -> TableInfo | None:
    """The catalog entry of the table a write goes to, checked for ``privilege`` and ``more``;
    None when there is no such table yet, once ``principal`` is known to hold ``CREATE`` on its
    schema. Raises ``AccessDenied`` otherwise.

    Example:
        >>> import tempfile, matrixos as mx
        >>> from matrixos.catalog.access import Principal
        >>> lh = mx.connect(tempfile.mkdtemp())
        >>> bob = Principal("bob", frozenset({"USE CATALOG ON main", "USE SCHEMA ON main.raw",
        ...                                   "CREATE ON main.raw"}))
        >>> print(target_table(lh.service, bob, TableIdent.parse("raw.new"), "MODIFY"))
        None
        >>> target_table(lh.service, bob, TableIdent.parse("other.t"), "MODIFY")
        Traceback (most recent call last):
        matrixos.errors.AccessDenied: bob has no CREATE privilege on main.other ...
    """
    try:
        info = service.resolve(principal, ident, privilege)
    except TableNotFound:
        principal.check("CREATE", f"{ident.catalog}.{ident.schema}")
        return None
    for other in more:
        service.authorize(principal, other, info)
    return info


def table_schema(service: TableService, info: TableInfo) -> pa.Schema:
    """The schema of the table's latest version; a managed table without data says why."""
    try:
        return service.store(info).schema()
    except TableNotFound as e:
        if info.external:
            raise
        raise service.no_data(info) from e


def ingest(
    service: TableService,
    principal: Principal,
    paths: Sequence[str],
    table: str,
    **options: Any,
) -> IngestSummary:
    """Read ``paths`` into ``table`` as ``principal`` (see ``ingest_files``), recording the
    paths read as the write's inputs in ``system.lineage.events``."""
    with lineage.run(
        service,
        "ingest",
        principal=principal.name,
        statement=f"ingest {' '.join(paths)} into {table}",
        always=True,
    ):
        for p in paths:
            lineage_runs.read_source(lineage_runs.file_dataset(p))
        return ingest_files(service, principal, paths, table, **options)


def ingest_files(
    service: TableService,
    principal: Principal,
    paths: Sequence[str],
    table: str,
    *,
    mode: Literal["append", "overwrite", "merge"] = "append",
    on: Sequence[str] | None = None,
    format: str | None = None,
    evolve: bool = False,
    partition_by: Sequence[str] | None = None,
) -> IngestSummary:
    """Read ``paths`` (files, folders, globs; local or s3://) and write them to ``table``,
    acting as ``principal``.

    A new table is created from the inferred schema; an existing table's schema guides parsing,
    so a value that does not fit its column is reported with its line and column.

    Raises:
        AccessDenied: ``principal`` may not write the table (``MODIFY``) or create it
            (``CREATE`` on its schema); no file was read.
        IngestError: a file is malformed (file, line, column); nothing was written.
        SchemaMismatch: the data does not fit the table; nothing was written.
    """
    if not paths:
        raise IngestError("no paths given", path="")
    if mode not in ("append", "overwrite", "merge"):
        raise SchemaMismatch(f"unknown ingest mode {mode!r}: use append, overwrite or merge")
    if mode == "merge" and not on:
        raise SchemaMismatch("merge mode needs key columns (--on id)")
    if format is not None:
        format = normalize_format(format)  # an unknown one fails before any file is listed
    start = time.perf_counter()
    ident = TableIdent.parse(table)
    existing = target_table(service, principal, ident, "MODIFY")
    fs = filesystem_for(paths[0], service.warehouse.options)
    files = list_files(list(paths), fs)
    data = read_files(files, format=format, filesystem=fs)
    if existing is None:
        info = service.create_table(principal, ident, data, partition_by=partition_by)
        version = service.store(info).version()
    else:
        if mode != "overwrite":
            schema = table_schema(service, existing)
            try:
                conform(data, schema, evolve=evolve, overwrite=False)
            except SchemaMismatch as e:
                # Re-read guided by the table's types to say which file, line and column is wrong.
                extra = [f for f in data.schema if f.name not in schema.names]
                guided = pa.schema([*schema, *extra])
                read_files(files, format=format, filesystem=fs, schema=guided)
                raise e
        data = embed_rows(existing.properties, data)
        store = service.store(existing)
        if mode == "append":
            result = store.append(data, evolve=evolve)
        elif mode == "overwrite":
            result = store.overwrite(data, evolve=evolve)
        else:
            result = store.merge(data, list(on or []), evolve=evolve)
        service.touch(existing)
        version = result.version
    return IngestSummary(
        table=str(ident),
        mode=mode if existing is not None else "create",
        files=len(files),
        rows=data.num_rows,
        version=version,
        seconds=time.perf_counter() - start,
    )
