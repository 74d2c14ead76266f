"""``matrixos ingest``, ``tables``, ``history`` and ``describe``: loading files into tables
and reading the catalog."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any

import typer

from matrixos.cli.common import connect, fail, split_values
from matrixos.cli.output import OutputFormat, console, emit_table


class IngestMode(StrEnum):
    """``matrixos ingest --mode``."""

    append = "append"
    overwrite = "overwrite"
    merge = "merge"


class SourceFormat(StrEnum):
    """``matrixos ingest --format``."""

    csv = "csv"
    json = "json"
    ndjson = "ndjson"
    parquet = "parquet"
    media = "media"


def ingest(
    ctx: typer.Context,
    paths: Annotated[list[str], typer.Argument(help="Files, folders or globs (local or s3://).")],
    table: Annotated[
        str, typer.Option("--table", "-t", help="Target table: [catalog.]schema.table.")
    ],
    mode: Annotated[IngestMode, typer.Option("--mode", "-m")] = IngestMode.append,
    on: Annotated[
        list[str] | None,
        typer.Option("--on", help="Key column(s) for --mode merge (repeat or comma-separate)."),
    ] = None,
    format: Annotated[
        SourceFormat | None,
        typer.Option("--format", "-f", help="Source format (default: from the extension)."),
    ] = None,
    evolve: Annotated[
        bool, typer.Option("--evolve", help="Add new columns to the table's schema.")
    ] = False,
    partition_by: Annotated[
        list[str] | None,
        typer.Option("--partition-by", help="Partition column(s) of a new table."),
    ] = None,
) -> None:
    """Load CSV, JSON/NDJSON or Parquet files into a table in one atomic commit.

    Images, audio and documents (--format media, or paths with no tabular files) become one row
    per file, their bytes copied to a volume; re-running adds only new or changed files.
    """
    # Imported here: the connectors load pyarrow and fsspec, which --help does without.
    from matrixos.connectors.media import has_tabular_files
    from matrixos.storage._errors import source_errors

    with connect(ctx, create=True) as lh:
        with source_errors(paths, lh.warehouse.options):
            media = format is SourceFormat.media or (
                format is None and not has_tabular_files(paths, lh.warehouse.options)
            )
        if media:
            if mode is not IngestMode.append or on or evolve or partition_by:
                fail("--mode, --on, --evolve and --partition-by do not apply to media files")
            typer.echo(str(lh.ingest_media(paths, table)))
            return
        summary = lh.ingest(
            paths,
            table,
            mode=mode.value,  # type: ignore[arg-type]
            on=split_values(on),
            format=format.value if format else None,
            evolve=evolve,
            partition_by=split_values(partition_by),
        )
    typer.echo(str(summary))


def tables(
    ctx: typer.Context,
    schema: Annotated[
        str | None, typer.Argument(help="Only this [catalog.]schema.", show_default=False)
    ] = None,
    format: Annotated[OutputFormat, typer.Option("--format", "-f")] = OutputFormat.table,
) -> None:
    """List the tables: name, format, location and whether they are external."""
    import pyarrow as pa

    from matrixos.catalog import parse_schema

    with connect(ctx) as lh:
        if schema:
            catalog, name = parse_schema(schema)
            infos = lh.catalog.list_tables(catalog, name)
        else:
            infos = lh.catalog.list_tables()
    rows = pa.table(
        {
            "name": pa.array([i.name for i in infos], pa.string()),
            "format": pa.array([i.format for i in infos], pa.string()),
            "location": pa.array([i.location for i in infos], pa.string()),
            "external": pa.array([i.external for i in infos], pa.bool_()),
        }
    )
    emit_table(rows, format, empty="no tables")


def history(
    ctx: typer.Context,
    table: Annotated[str, typer.Argument(help="[catalog.]schema.table")],
    limit: Annotated[int | None, typer.Option("--limit", "-n", min=1)] = None,
    format: Annotated[OutputFormat, typer.Option("--format", "-f")] = OutputFormat.table,
) -> None:
    """A table's commits, newest first."""
    import pyarrow as pa

    with connect(ctx) as lh:
        commits = lh.table(table).history(limit)
    rows = pa.table(
        {
            "version": pa.array([c.get("version") for c in commits], pa.int64()),
            "timestamp": pa.array(
                [_millis(c.get("timestamp")) for c in commits], pa.timestamp("ms", "UTC")
            ),
            "operation": pa.array([c.get("operation") for c in commits], pa.string()),
            "parameters": pa.array(
                [_compact(c.get("operationParameters")) for c in commits], pa.string()
            ),
        }
    )
    emit_table(rows, format, empty="no commits")


def _millis(ms: Any) -> datetime | None:
    return datetime.fromtimestamp(ms / 1000, UTC) if isinstance(ms, int | float) else None


def _compact(params: Any) -> str | None:
    if not params:
        return None
    return json.dumps(params, default=str, sort_keys=True)


def describe(
    ctx: typer.Context,
    table: Annotated[str, typer.Argument(help="[catalog.]schema.table")],
    format: Annotated[OutputFormat, typer.Option("--format", "-f")] = OutputFormat.table,
) -> None:
    """A table's columns, plus its location, format and version."""
    import pyarrow as pa

    with connect(ctx) as lh:
        t = lh.table(table)
        schema, parts, version = t.schema, set(t.partition_by), t.version
    rows = pa.table(
        {
            "column": pa.array([f.name for f in schema], pa.string()),
            "type": pa.array([str(f.type) for f in schema], pa.string()),
            "nullable": pa.array([f.nullable for f in schema], pa.bool_()),
            "partition": pa.array([f.name in parts for f in schema], pa.bool_()),
        }
    )
    if format is OutputFormat.table:
        kind = "external" if t.info.external else "managed"
        c = console()
        c.print(f"[bold]{t.name}[/bold]  ({t.info.format}, {kind}, version {version})")
        c.print(f"location: {t.location}", markup=False, highlight=False)
        if t.info.comment:
            c.print(f"comment:  {t.info.comment}", markup=False, highlight=False)
    emit_table(rows, format, empty="no columns")
