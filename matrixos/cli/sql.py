"""``matrixos sql`` (SQL from the shell) and ``matrixos serve`` (SQL over the network)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from matrixos.cli.common import connect, options
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
    ctx: typer.Context,
    host: Annotated[
        str, typer.Option("--host", help="Address to listen on (all interfaces: 0.0.0.0).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="HTTP port.")] = 8080,
    pg_port: Annotated[
        int,
        typer.Option("--pg-port", min=-1, max=65535, help="PostgreSQL wire port (-1: none)."),
    ] = 5433,
    compute: Annotated[
        str | None,
        typer.Option("--compute", envvar="MATRIXOS_COMPUTE", help="local, ray or ray://host:port."),
    ] = None,
    workers: Annotated[
        int, typer.Option("--workers", min=1, help="Statements run at once (others queue).")
    ] = 8,
    grace: Annotated[
        float,
        typer.Option("--grace", min=0, help="Seconds running statements get to finish on SIGTERM."),
    ] = 30.0,
    chunk_rows: Annotated[
        int | None,
        typer.Option(
            "--chunk-rows",
            min=1,
            help="Rows per result chunk (default 65,536 for JSON, 1,048,576 for Arrow and CSV).",
            show_default=False,
        ),
    ] = None,
    stream_after: Annotated[
        float,
        typer.Option(
            "--stream-after",
            min=0,
            help="Seconds an Arrow result waits, after its first rows, for the rest before "
            "it streams (0: always streams).",
        ),
    ] = 0.05,
    statement_timeout: Annotated[
        float,
        typer.Option(
            "--statement-timeout", min=0, help="Seconds a statement may run (0: no limit)."
        ),
    ] = 0.0,
    max_statements: Annotated[
        int,
        typer.Option(
            "--max-statements-per-user",
            min=0,
            help="Statements one user may have running or queued (0: no limit).",
        ),
    ] = 16,
    max_result_rows: Annotated[
        int, typer.Option("--max-result-rows", min=0, help="Rows a result keeps (0: all).")
    ] = 0,
    max_result_bytes: Annotated[
        int,
        typer.Option("--max-result-bytes", min=0, help="Bytes (Arrow) a result keeps (0: all)."),
    ] = 0,
    result_memory: Annotated[
        int,
        typer.Option(
            "--result-memory-mb",
            min=1,
            help="MiB of results kept for clients to read; past it the oldest are released.",
        ),
    ] = 4096,
    meter: Annotated[
        bool,
        typer.Option(
            "--meter/--no-meter",
            help="Record each statement's core-seconds in system.billing.usage and charge "
            "its user's credit.",
        ),
    ] = True,
    mqtt: Annotated[
        str | None,
        typer.Option("--mqtt", help="IoT: subscribe to this MQTT broker (mqtt://host:1883)."),
    ] = None,
    route: Annotated[
        list[str] | None,
        typer.Option(
            "--route",
            help="IoT: MQTT topic filter to table, 'sensors/{site}/#=iot.readings' (repeatable).",
        ),
    ] = None,
    watch: Annotated[
        list[str] | None,
        typer.Option(
            "--watch", help="IoT: file-drop folder to table, '/drops=iot.t' (repeatable)."
        ),
    ] = None,
    wal_dir: Annotated[
        str | None,
        typer.Option("--wal-dir", help="IoT: the write-ahead log's folder (local disk)."),
    ] = None,
    flush_interval: Annotated[
        float,
        typer.Option("--flush-interval", min=0.01, help="IoT: seconds between Delta commits."),
    ] = 1.0,
    iot_max_pending: Annotated[
        int,
        typer.Option(
            "--iot-max-pending-mb",
            min=1,
            help="IoT: MiB of acknowledged points awaiting their commit (beyond: 429).",
        ),
    ] = 512,
) -> None:
    """Serve the HTTP statement API and the PostgreSQL wire protocol (SIGTERM drains)."""
    import logging

    from matrixos.iot.runtime import IotOptions
    from matrixos.server.serve import ServeOptions
    from matrixos.server.serve import serve as run_server
    from matrixos.server.statements import Limits
    from matrixos.session import connect as open_session

    logging.basicConfig(level=logging.INFO, format="%(levelname)s:     %(name)s: %(message)s")
    opts = options(ctx)
    lh = open_session(
        opts.warehouse, catalog_url=opts.catalog_url, compute=compute, meter_statements=meter
    )
    with lh:
        run_server(
            lh,
            ServeOptions(
                host=host,
                port=port,
                pg_port=None if pg_port < 0 else pg_port,
                workers=workers,
                grace_s=grace,
                chunk_rows=chunk_rows,
                stream_after_s=stream_after,
                retained_bytes=result_memory * 1024 * 1024,
                iot=IotOptions(
                    wal_dir=wal_dir,
                    flush_interval=flush_interval,
                    max_pending_mb=iot_max_pending,
                    mqtt=mqtt,
                    routes=tuple(route or ()),
                    watch=tuple(watch or ()),
                ),
                limits=Limits(
                    statement_timeout_s=statement_timeout or None,
                    max_active_per_principal=max_statements or None,
                    max_result_rows=max_result_rows or None,
                    max_result_bytes=max_result_bytes or None,
                ),
            ),
        )
