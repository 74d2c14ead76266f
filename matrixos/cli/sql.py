"""``matrixos sql`` (SQL from the shell) and ``matrixos serve`` (SQL over the network)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from matrixos.cli.common import connect, fail
from matrixos.cli.output import OutputFormat, emit_result


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
    with connect(ctx, create=_creates(text, dialect)) as lh:
        result = lh.sql(text, dialect=dialect)
        emit_result(result, format, limit)


def _creates(sql: str, dialect: str | None) -> bool:
    """True when ``sql`` holds a CREATE statement: only those may make a new warehouse."""
    # Imported here: it loads sqlglot, which `matrixos --help` does without.
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


def serve(
    host: Annotated[str, typer.Option("--host")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port")] = 8080,
    pg_port: Annotated[int, typer.Option("--pg-port")] = 5433,
) -> None:
    """Serve the HTTP statement API and the PostgreSQL wire protocol (not available yet)."""
    fail(
        "matrixos serve is not available yet: the server arrives with the HTTP/pg-wire issue",
        hint="use `matrixos sql` or the Python SDK meanwhile",
        code=2,
    )
