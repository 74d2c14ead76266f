"""The ``matrixos`` command line: SQL, ingest and catalog listings over one warehouse.

Every ``MatrixOSError`` becomes ``error: <message>`` on stderr and exit status 1, never a
traceback; usage errors exit 2. Heavy modules (pyarrow, the engine, rich) are imported inside
the commands so that ``matrixos --help`` stays quick.

Example:
    $ matrixos --warehouse ./wh sql "SELECT 1 AS one" --format json
    [{"one": 1}]
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import sys
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import IO, TYPE_CHECKING, Annotated, Any, NoReturn

import typer

if TYPE_CHECKING:
    import pyarrow as pa
    from rich.console import Console

    from matrixos.engine.result import Result
    from matrixos.session import Lakehouse

app = typer.Typer(
    name="matrixos",
    help="MatrixOS: a lakehouse of Delta tables you query with SQL in any dialect.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


class OutputFormat(StrEnum):
    table = "table"
    csv = "csv"
    json = "json"


class IngestMode(StrEnum):
    append = "append"
    overwrite = "overwrite"
    merge = "merge"


class SourceFormat(StrEnum):
    csv = "csv"
    json = "json"
    ndjson = "ndjson"
    parquet = "parquet"
    media = "media"


@dataclass
class _Options:
    warehouse: str | None
    catalog_url: str | None


# -- global options ---------------------------------------------------------------------------
def _version(value: bool) -> None:
    if value:
        from matrixos import __version__

        typer.echo(f"matrixos {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    warehouse: Annotated[
        str | None,
        typer.Option(
            "--warehouse",
            "-w",
            envvar="MATRIXOS_WAREHOUSE",
            show_envvar=True,
            help="Warehouse root: a folder or s3://bucket/prefix. Default: ./warehouse. "
            "May also follow the command.",
        ),
    ] = None,
    catalog_url: Annotated[
        str | None,
        typer.Option(
            "--catalog-url",
            envvar="MATRIXOS_CATALOG_URL",
            show_envvar=True,
            # The URL may hold a password: never echo its value in --help.
            show_default=False,
            help="Catalog URL (sqlite:///…, postgresql://…, s3://…). Default: the warehouse's "
            "own (SQLite in a local one, a commit log in <warehouse>/_catalog/ in a bucket).",
        ),
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """MatrixOS: a lakehouse of Delta tables you query with SQL in any dialect."""
    ctx.obj = _Options(warehouse=warehouse, catalog_url=catalog_url)


def _connect(ctx: typer.Context, *, create: bool = False) -> Lakehouse:
    """A session on the warehouse of the global options. Only commands that write pass
    ``create=True``: a reading command on a mistyped ``--warehouse`` says that no warehouse
    is there instead of creating an empty one and listing its "(no tables)"."""
    from matrixos.session import connect

    opts: _Options = ctx.obj or _Options(None, None)
    return connect(opts.warehouse, catalog_url=opts.catalog_url, create=create)


# The global options are also taken after the sub-command (`matrixos tables --warehouse X`, as
# the README's examples read): they are moved in front of it before parsing, keeping their
# order, so the last one given wins as usual.
_GLOBAL_FLAGS = ("--warehouse", "-w", "--catalog-url")


def _hoist_global_options(argv: list[str]) -> list[str]:
    """``argv`` with every global option (and its value) moved to the front.

    Example:
        >>> _hoist_global_options(["tables", "--warehouse", "wh", "-f", "json"])
        ['--warehouse', 'wh', 'tables', '-f', 'json']
    """
    front: list[str] = []
    rest: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":  # what follows is positional
            rest += argv[i:]
            break
        if arg in _GLOBAL_FLAGS and i + 1 < len(argv):
            front += argv[i : i + 2]
            i += 2
            continue
        if arg.startswith(("--warehouse=", "--catalog-url=")):
            front.append(arg)
        else:
            rest.append(arg)
        i += 1
    return front + rest


# -- sql --------------------------------------------------------------------------------------
@app.command()
def sql(
    ctx: typer.Context,
    query: Annotated[
        str | None,
        typer.Argument(
            help="SQL text (several statements allowed; the last one's rows are shown). "
            "Omit it, or pass '-', to read the SQL from stdin.",
            show_default=False,
        ),
    ] = None,
    dialect: Annotated[
        str | None,
        typer.Option("--dialect", "-d", help="Any sqlglot dialect (postgres, spark, …)."),
    ] = None,
    format: Annotated[
        OutputFormat, typer.Option("--format", "-f", help="Output format.")
    ] = OutputFormat.table,
    limit: Annotated[
        int,
        typer.Option("--limit", "-n", min=0, help="Rows shown by --format table."),
    ] = 1000,
) -> None:
    """Run SQL and print its rows (a table, CSV or JSON) or its status."""
    text = _read_sql(query)
    with _connect(ctx, create=_creates(text, dialect)) as lh:
        result = lh.sql(text, dialect=dialect)
        _emit(result, format, limit)


def _creates(sql: str, dialect: str | None) -> bool:
    """True when ``sql`` holds a CREATE statement: only those may make a new warehouse."""
    from matrixos.engine._syntax import statement_starts

    return any(t.text.upper() == "CREATE" for t in statement_starts(sql, dialect or "duckdb"))


def _read_sql(query: str | None) -> str:
    if query is not None and query != "-":
        return query
    if query is None and sys.stdin.isatty():
        raise typer.BadParameter("give the SQL as an argument, or pipe it on stdin")
    text = sys.stdin.read()
    if not text.strip():
        raise typer.BadParameter("no SQL on stdin")
    return text


def _emit(result: Result, format: OutputFormat, limit: int) -> None:
    out = sys.stdout
    if format is OutputFormat.table:
        if result.message is not None:
            _console().print(result.message, markup=False, highlight=False)
        else:
            _print_table(result.to_arrow_reader(keep=False), limit)
    elif format is OutputFormat.csv:
        _write_csv(result.to_arrow_reader(keep=False), out)
    else:
        _write_json(result.to_arrow_reader(keep=False), out)
    out.flush()


# -- ingest -----------------------------------------------------------------------------------
@app.command()
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
    from matrixos.connectors.media import has_tabular_files
    from matrixos.storage._errors import source_errors

    with _connect(ctx, create=True) as lh:
        with source_errors(paths, lh.warehouse.options):
            media = format is SourceFormat.media or (
                format is None and not has_tabular_files(paths, lh.warehouse.options)
            )
        if media:
            if mode is not IngestMode.append or on or evolve or partition_by:
                _fail("--mode, --on, --evolve and --partition-by do not apply to media files")
            typer.echo(str(lh.ingest_media(paths, table)))
            return
        summary = lh.ingest(
            paths,
            table,
            mode=mode.value,  # type: ignore[arg-type]
            on=_split(on),
            format=format.value if format else None,
            evolve=evolve,
            partition_by=_split(partition_by),
        )
    typer.echo(str(summary))


def _split(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


# -- catalog ----------------------------------------------------------------------------------
@app.command()
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

    with _connect(ctx) as lh:
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
    _emit_table(rows, format, empty="no tables")


@app.command()
def history(
    ctx: typer.Context,
    table: Annotated[str, typer.Argument(help="[catalog.]schema.table")],
    limit: Annotated[int | None, typer.Option("--limit", "-n", min=1)] = None,
    format: Annotated[OutputFormat, typer.Option("--format", "-f")] = OutputFormat.table,
) -> None:
    """A table's commits, newest first."""
    import pyarrow as pa

    with _connect(ctx) as lh:
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
    _emit_table(rows, format, empty="no commits")


@app.command()
def describe(
    ctx: typer.Context,
    table: Annotated[str, typer.Argument(help="[catalog.]schema.table")],
    format: Annotated[OutputFormat, typer.Option("--format", "-f")] = OutputFormat.table,
) -> None:
    """A table's columns, plus its location, format and version."""
    import pyarrow as pa

    with _connect(ctx) as lh:
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
        c = _console()
        c.print(f"[bold]{t.name}[/bold]  ({t.info.format}, {kind}, version {version})")
        c.print(f"location: {t.location}", markup=False, highlight=False)
        if t.info.comment:
            c.print(f"comment:  {t.info.comment}", markup=False, highlight=False)
    _emit_table(rows, format, empty="no columns")


# -- demo and server --------------------------------------------------------------------------
@app.command()
def demo(
    ctx: typer.Context,
    scale: Annotated[
        float,
        typer.Option(
            "--scale",
            min=0.0,
            help="TPC-H scale factor: 0.01 is about 87,000 rows (seconds), 1 about 8.7 million.",
        ),
    ] = 0.01,
) -> None:
    """Load TPC-H sample data into the warehouse and tour it: joins, MERGE, time travel.

    The data is generated once and cached in ~/.cache/matrixos/tpch (MATRIXOS_TPCH_DIR).
    """
    try:
        from matrixos.demo import run_demo
    except ModuleNotFoundError as e:
        if e.name != "matrixos.demo":
            raise
        from matrixos.errors import NotSupported

        raise NotSupported("the demo is not part of this installation") from e
    opts: _Options = ctx.obj or _Options(None, None)
    run_demo(opts.warehouse, scale)


@app.command()
def serve(
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8080,
    pg_port: Annotated[int, typer.Option("--pg-port")] = 5433,
) -> None:
    """Serve the HTTP statement API and the PostgreSQL wire protocol (not available yet)."""
    _fail(
        "matrixos serve is not available yet: the server arrives with the HTTP/pg-wire issue",
        hint="use `matrixos sql` or the Python SDK meanwhile",
        code=2,
    )


# -- output -----------------------------------------------------------------------------------
def _console(stderr: bool = False) -> Console:
    from rich.console import Console

    if stderr:
        # Messages are not wrapped: a log or a test sees each one on one line.
        return Console(stderr=True, soft_wrap=True)
    console = Console()
    if not console.is_terminal and "COLUMNS" not in os.environ:
        # Piped to a file or a pager: let the table take the width it needs instead of
        # folding every cell into 80 columns.
        console = Console(width=4096)
    return console


def _emit_table(rows: pa.Table, format: OutputFormat, *, empty: str) -> None:
    import pyarrow as pa

    reader = pa.RecordBatchReader.from_batches(rows.schema, rows.to_batches())
    if format is OutputFormat.table and rows.num_rows == 0:
        _console().print(f"({empty})", style="dim", highlight=False)
    elif format is OutputFormat.table:
        _print_table(reader, limit=None)
    elif format is OutputFormat.csv:
        _write_csv(reader, sys.stdout)
    else:
        _write_json(reader, sys.stdout)


def _print_table(reader: pa.RecordBatchReader, limit: int | None) -> None:
    """A rich table of the first ``limit`` rows; the rest are counted, not kept."""
    import pyarrow as pa
    from rich.table import Table
    from rich.text import Text

    shown: list[pa.RecordBatch] = []
    kept = total = 0
    for batch in reader:
        total += batch.num_rows
        if limit is None or kept < limit:
            take = batch if limit is None else batch.slice(0, limit - kept)
            shown.append(take)
            kept += take.num_rows
    schema = reader.schema
    table = Table(show_header=True, header_style="bold", show_lines=False)
    numeric = [
        pa.types.is_integer(f.type) or pa.types.is_floating(f.type) or pa.types.is_decimal(f.type)
        for f in schema
    ]
    for f, num in zip(schema, numeric, strict=True):
        table.add_column(f.name, justify="right" if num else "left", overflow="fold")
    for batch in shown:
        for row in batch.to_pylist():
            table.add_row(
                *(Text("NULL", style="dim") if v is None else Text(_text(v)) for v in row.values())
            )
    c = _console()
    c.print(table)
    more = total - kept
    rows = f"{total:,} row{'s' if total != 1 else ''}"
    c.print(
        f"({rows}, showing the first {kept:,}; {more:,} more — raise --limit)"
        if more
        else f"({rows})",
        style="dim",
        highlight=False,
    )


def _write_csv(reader: pa.RecordBatchReader, out: IO[str]) -> None:
    """Header + rows, quoted only where needed; NULL is the empty field, nested values JSON."""
    import csv

    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(reader.schema.names)
    for batch in reader:
        writer.writerows([_csv_value(v) for v in row.values()] for row in batch.to_pylist())


def _csv_value(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    return v if isinstance(v, str) else _text(v)


def _write_json(reader: pa.RecordBatchReader, out: IO[str]) -> None:
    """One JSON array of objects, streamed; dates, decimals and bytes become strings."""
    out.write("[")
    first = True
    for batch in reader:
        for row in batch.to_pylist():
            out.write("" if first else ",\n")
            out.write(json.dumps(_jsonable(row), ensure_ascii=False))
            first = False
    out.write("]\n")


def _jsonable(v: Any) -> Any:
    if v is None or isinstance(v, bool | int | str):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)  # NaN/inf are not JSON
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        # Arrow maps come back as lists of (key, value) tuples.
        return [_jsonable(x) for x in v]
    return _text(v)


def _text(v: Any) -> str:
    if isinstance(v, datetime | date | time):
        return v.isoformat()
    if isinstance(v, bytes):
        return base64.b64encode(v).decode("ascii")
    if isinstance(v, timedelta | Decimal):
        return str(v)
    if isinstance(v, dict | list):
        return json.dumps(_jsonable(v), ensure_ascii=False)
    return str(v)


def _millis(ms: Any) -> datetime | None:
    from datetime import UTC

    return datetime.fromtimestamp(ms / 1000, UTC) if isinstance(ms, int | float) else None


def _compact(params: Any) -> str | None:
    if not params:
        return None
    return json.dumps(params, default=str, sort_keys=True)


# -- errors -----------------------------------------------------------------------------------
# user:password@ in URLs (catalog URLs, endpoints) that an error message might quote.
_SECRET_IN_URL = re.compile(r"(?P<scheme>[A-Za-z][\w+.-]*://[^/\s:@]*):[^@\s/]+@")


def _redact(text: str) -> str:
    return _SECRET_IN_URL.sub(r"\g<scheme>:***@", text)


def _fail(message: str, *, hint: str | None = None, code: int = 1) -> NoReturn:
    from rich.markup import escape

    err = _console(stderr=True)
    err.print(f"[bold red]error:[/bold red] [red]{escape(_redact(message))}[/red]", highlight=False)
    if hint:
        err.print(f"[dim]hint: {escape(_redact(hint))}[/dim]", highlight=False)
    raise SystemExit(code)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``matrixos`` script."""
    import matrixos.cli_ai  # noqa: F401  (registers `rag` and `search`)
    from matrixos import cli_compute  # noqa: F401  (registers `compute`)
    from matrixos.errors import MatrixOSError

    args = _hoist_global_options(sys.argv[1:] if argv is None else list(argv))
    try:
        app(args=args, prog_name="matrixos")
    except MatrixOSError as e:
        _fail(e.message, hint=e.hint)
    except BrokenPipeError:
        # The reader went away (`matrixos sql … | head`): stop quietly.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        raise SystemExit(130) from None
    except Exception as e:
        # A bug, not a user error: say so plainly; the traceback is one variable away.
        if os.environ.get("MATRIXOS_DEBUG"):
            raise
        _fail(
            f"internal error: {type(e).__name__}: {e}",
            hint="this is a bug in MatrixOS; rerun with MATRIXOS_DEBUG=1 for the traceback",
        )


if __name__ == "__main__":
    # Run as `python -m matrixos.cli`: use the importable module, on whose app the sub-command
    # modules (rag, search, compute) register themselves.
    from matrixos.cli import main as _main

    _main()
