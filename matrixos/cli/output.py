"""How the CLI prints: rich tables on a terminal, CSV and JSON for pipes and scripts.

pyarrow and rich are imported inside the functions: ``matrixos --help`` never loads them.
"""

from __future__ import annotations

import base64
import json
import math
import os
import sys
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa
    from rich.console import Console

    from matrixos.engine.result import Result


class OutputFormat(StrEnum):
    """The ``--format`` of the commands that print rows."""

    table = "table"
    csv = "csv"
    json = "json"


def console(stderr: bool = False) -> Console:
    """A rich console on stdout (as wide as the rows need when piped) or on stderr."""
    from rich.console import Console

    if stderr:
        # Messages are not wrapped: a log or a test sees each one on one line.
        return Console(stderr=True, soft_wrap=True)
    out = Console()
    if not out.is_terminal and "COLUMNS" not in os.environ:
        # Piped to a file or a pager: let the table take the width it needs instead of
        # folding every cell into 80 columns.
        out = Console(width=4096)
    return out


def emit_result(result: Result, format: OutputFormat, limit: int) -> None:
    """A query's rows (at most ``limit`` of them in a table), or its status message."""
    out = sys.stdout
    if format is OutputFormat.table:
        if result.message is not None:
            console().print(result.message, markup=False, highlight=False)
        else:
            print_table(result.to_arrow_reader(keep=False), limit)
    elif format is OutputFormat.csv:
        write_csv(result.to_arrow_reader(keep=False), out)
    else:
        write_json(result.to_arrow_reader(keep=False), out)
    out.flush()


def emit_table(rows: pa.Table, format: OutputFormat, *, empty: str) -> None:
    """All of ``rows`` in ``format``; an empty table prints ``(<empty>)``."""
    import pyarrow as pa

    reader = pa.RecordBatchReader.from_batches(rows.schema, rows.to_batches())
    if format is OutputFormat.table and rows.num_rows == 0:
        console().print(f"({empty})", style="dim", highlight=False)
    elif format is OutputFormat.table:
        print_table(reader, limit=None)
    elif format is OutputFormat.csv:
        write_csv(reader, sys.stdout)
    else:
        write_json(reader, sys.stdout)


def print_table(reader: pa.RecordBatchReader, limit: int | None) -> None:
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
                *(Text("NULL", style="dim") if v is None else Text(text(v)) for v in row.values())
            )
    c = console()
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


def write_csv(reader: pa.RecordBatchReader, out: IO[str]) -> None:
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
    return v if isinstance(v, str) else text(v)


def write_json(reader: pa.RecordBatchReader, out: IO[str]) -> None:
    """One JSON array of objects, streamed; dates, decimals and bytes become strings."""
    out.write("[")
    first = True
    for batch in reader:
        for row in batch.to_pylist():
            out.write("" if first else ",\n")
            out.write(json.dumps(jsonable(row), ensure_ascii=False))
            first = False
    out.write("]\n")


def jsonable(v: Any) -> Any:
    """``v`` with what JSON cannot hold (dates, decimals, bytes, NaN) as strings.

    Example:
        >>> jsonable({"d": date(2026, 1, 2), "x": float("nan"), "b": b"hi"})
        {'d': '2026-01-02', 'x': 'nan', 'b': 'aGk='}
    """
    if v is None or isinstance(v, bool | int | str):
        return v
    if isinstance(v, float):
        return v if math.isfinite(v) else str(v)  # NaN/inf are not JSON
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        # Arrow maps come back as lists of (key, value) tuples.
        return [jsonable(x) for x in v]
    return text(v)


def text(v: Any) -> str:
    """One cell as text: ISO dates, base64 bytes, nested values as JSON."""
    if isinstance(v, datetime | date | time):
        return v.isoformat()
    if isinstance(v, bytes):
        return base64.b64encode(v).decode("ascii")
    if isinstance(v, timedelta | Decimal):
        return str(v)
    if isinstance(v, dict | list):
        return json.dumps(jsonable(v), ensure_ascii=False)
    return str(v)
