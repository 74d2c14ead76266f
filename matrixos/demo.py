"""``matrixos demo``: a five-minute analyst tour on TPC-H sample data in a local warehouse.

It creates (or reuses) a warehouse, generates TPC-H at a small scale, loads the eight tables into
schema ``tpch`` and walks through a join, an aggregation, a MERGE upsert, time travel, the table
history and Polars interop. Re-running it on the same warehouse works: the tables are reloaded
(a new version each), so every step starts from the same data.

The sample data is generated once and cached under ``~/.cache/matrixos/tpch`` (or
``$MATRIXOS_TPCH_DIR``); see ``matrixos.tpch``. Only that first run needs the package index.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matrixos as mx
from matrixos import tpch
from matrixos.config import resolve_settings
from matrixos.errors import ConfigError

if TYPE_CHECKING:
    import pyarrow as pa
    from rich.console import Console

    from matrixos.session import Lakehouse

SCHEMA = "tpch"

REVENUE_BY_NATION = f"""\
SELECT n.n_name AS nation,
       count(DISTINCT o.o_orderkey) AS orders,
       sum(l.l_extendedprice * (1 - l.l_discount)) AS revenue
FROM {SCHEMA}.lineitem AS l
JOIN {SCHEMA}.orders   AS o ON l.l_orderkey = o.o_orderkey
JOIN {SCHEMA}.customer AS c ON o.o_custkey = c.c_custkey
JOIN {SCHEMA}.nation   AS n ON c.c_nationkey = n.n_nationkey
GROUP BY n.n_name
ORDER BY revenue DESC
LIMIT 5"""

PRICING_SUMMARY = f"""\
SELECT l_returnflag AS flag, l_linestatus AS status,
       sum(l_quantity) AS qty,
       sum(l_extendedprice * (1 - l_discount) * (1 + l_tax)) AS charge,
       avg(l_discount) AS avg_disc,
       count(*) AS items
FROM {SCHEMA}.lineitem
WHERE l_shipdate <= DATE '1998-12-01' - INTERVAL 90 DAY
GROUP BY l_returnflag, l_linestatus
ORDER BY l_returnflag, l_linestatus"""

# Customers 1-3 get a credit and move segment; two new customers are added after the last key.
UPSERT = f"""\
MERGE INTO {SCHEMA}.customer AS t
USING (
    SELECT c_custkey, c_name, c_address, c_nationkey, c_phone,
           CAST(c_acctbal + 1000 AS DECIMAL(15, 2)) AS c_acctbal,
           'AUTOMOBILE' AS c_mktsegment, c_comment
    FROM {SCHEMA}.customer WHERE c_custkey <= 3
    UNION ALL
    SELECT (SELECT max(c_custkey) FROM {SCHEMA}.customer) + c_custkey,
           'Customer#new-' || c_custkey, c_address, c_nationkey, c_phone,
           CAST(0 AS DECIMAL(15, 2)), 'HOUSEHOLD', 'added by the demo'
    FROM {SCHEMA}.customer WHERE c_custkey <= 2
) AS s
ON t.c_custkey = s.c_custkey
WHEN MATCHED THEN
    UPDATE SET c_acctbal = s.c_acctbal, c_mktsegment = s.c_mktsegment
WHEN NOT MATCHED THEN INSERT *"""

POLARS_CODE = f"""\
df = lh.sql("SELECT o_orderpriority, o_totalprice FROM {SCHEMA}.orders").to_polars()
df.group_by("o_orderpriority").agg(
    pl.len().alias("orders"), pl.col("o_totalprice").mean().alias("avg_price")
).sort("o_orderpriority")"""


def run_demo(
    warehouse: str | None = None, scale: float = 0.01, console: Console | None = None
) -> None:
    """Create a warehouse, load TPC-H at ``scale`` and print a short tour of MatrixOS.

    Args:
        warehouse: where the warehouse lives (created if missing); default
            ``$MATRIXOS_WAREHOUSE`` or ``./warehouse``.
        scale: the TPC-H scale factor (0.01 is about 87,000 rows in all).
        console: a ``rich.console.Console`` to print to (default: standard output).

    Raises:
        ConfigError: ``scale`` is not positive.
        matrixos.errors.TpchError: the TPC-H data could not be generated (the first run needs
            the package index, to install ``duckdb==1.4.4`` and ``duckdb-ext-tpch`` into the
            generator's own venv in the cache).

    Example:
        >>> from matrixos.demo import run_demo
        >>> run_demo("/tmp/demo-wh")  # doctest: +SKIP
    """
    import polars as pl
    from rich.console import Console
    from rich.markup import escape

    if not scale > 0:
        raise ConfigError(f"scale must be a positive TPC-H scale factor, got {scale!r}")
    con = console if console is not None else Console()
    root = resolve_settings(warehouse=warehouse).warehouse  # or $MATRIXOS_WAREHOUSE, ./warehouse
    if "://" not in root:
        root = str(Path(root).resolve())
    con.rule("[bold]MatrixOS demo")
    con.print(f"warehouse [bold]{root}[/], TPC-H scale factor {scale:g}")

    with _step(con, "1. Sample data", "TPC-H, generated once and cached"):
        data = tpch.cached(scale, log=lambda m: con.print(f"[dim]{escape(m)}[/]"))
        con.print(f"[dim]{data.root}[/]")

    lh = mx.connect(root)
    try:
        with _step(con, "2. Load", f"eight tables into schema {SCHEMA!r} with lh.create_table"):
            rows = tpch.load(lh, data, SCHEMA, replace=True)
            _print_rows(
                con,
                ["table", "rows", "version"],
                [[f"{SCHEMA}.{t}", n, lh.table(f"{SCHEMA}.{t}").version] for t, n in rows.items()],
            )

        with _step(con, "3. A join", "revenue by nation, top 5"):
            _show(con, lh, REVENUE_BY_NATION)

        with _step(con, "4. An aggregation", "TPC-H Q1, the pricing summary report"):
            _show(con, lh, PRICING_SUMMARY)

        customers = lh.table(f"{SCHEMA}.customer")
        before = customers.version
        watch = (
            f"SELECT c_custkey, c_name, c_acctbal, c_mktsegment\n"
            f"FROM {SCHEMA}.customer{{v}}\n"
            f"WHERE c_custkey <= 3 OR c_comment = 'added by the demo'\n"
            f"ORDER BY c_custkey"
        )
        with _step(con, "5. MERGE", "upsert three changed and two new customers"):
            con.print("[dim]before:[/]")
            _show(con, lh, watch.format(v=""), echo=False)
            _show(con, lh, UPSERT)
            con.print("[dim]after:[/]")
            _show(con, lh, watch.format(v=""), echo=False)
        after = customers.version

        with _step(con, "6. Time travel", f"the customers before (v{before}) and after (v{after})"):
            _show(
                con,
                lh,
                f"SELECT 'v{before}' AS version, count(*) AS customers, "
                f"sum(c_acctbal) AS total_balance\n"
                f"FROM {SCHEMA}.customer VERSION AS OF {before}\n"
                f"UNION ALL\n"
                f"SELECT 'v{after}', count(*), sum(c_acctbal) FROM {SCHEMA}.customer\n"
                f"ORDER BY version",
            )
            _show(con, lh, watch.format(v=f" VERSION AS OF {before}"))

        with _step(con, "7. History", "every commit is a version"):
            _show(
                con,
                lh,
                f"DESCRIBE HISTORY {SCHEMA}.customer",
                columns=["version", "timestamp", "operation"],
                limit=5,
            )

        with _step(con, "8. Polars", "results are Arrow: Polars, pandas and DuckDB take them"):
            _echo(con, POLARS_CODE, "python")
            df = (
                lh.sql(f"SELECT o_orderpriority, o_totalprice FROM {SCHEMA}.orders")
                .to_polars()
                .group_by("o_orderpriority")
                .agg(
                    pl.len().alias("orders"),
                    pl.col("o_totalprice").mean().alias("avg_price"),
                )
                .sort("o_orderpriority")
            )
            _print_arrow(con, df.to_arrow())
    finally:
        lh.close()
    con.rule("[bold]done")
    con.print("Next, in Python or on the command line:")
    for line in next_steps(root):
        # soft_wrap: a long path runs past the edge instead of being broken inside the code
        con.print(f"  [cyan]{escape(line)}[/]", soft_wrap=True)


def next_steps(root: str) -> list[str]:
    """The code lines the demo ends with: the same warehouse from Python and from the CLI."""
    import shlex

    query = f"SELECT o_orderpriority, count(*) FROM {SCHEMA}.orders GROUP BY 1"
    return [
        f"import matrixos as mx; lh = mx.connect({root!r})",
        f"lh.sql({query!r}).to_polars()",
        f"matrixos --warehouse {shlex.quote(root)} sql {shlex.quote(query)}",
    ]


@contextmanager
def _step(con: Console, title: str, what: str) -> Iterator[None]:
    con.print()
    con.rule(f"[bold]{title}[/] — {what}", align="left")
    t0 = time.perf_counter()
    yield
    con.print(f"[dim]({(time.perf_counter() - t0) * 1000:,.0f} ms)[/]")


def _show(
    con: Console,
    lh: Lakehouse,
    sql: str,
    *,
    echo: bool = True,
    columns: list[str] | None = None,
    limit: int | None = None,
) -> None:
    if echo:
        _echo(con, sql, "sql")
    table = lh.sql(sql).to_arrow()
    if columns is not None:
        table = table.select(columns)
    if limit is not None:
        table = table.slice(0, limit)
    _print_arrow(con, table)


def _echo(con: Console, code: str, lexer: str) -> None:
    from rich.syntax import Syntax

    con.print(Syntax(code, lexer, theme="ansi_dark", background_color="default", word_wrap=True))


def _print_arrow(con: Console, table: pa.Table) -> None:
    cols = [c.to_pylist() for c in table.columns]
    _print_rows(con, table.column_names, [list(r) for r in zip(*cols, strict=True)])


def _print_rows(con: Console, names: list[str], rows: list[list[Any]]) -> None:
    from rich.table import Table

    t = Table(show_edge=False, header_style="bold")
    numeric = [bool(rows) and all(_is_number(r[i]) for r in rows) for i in range(len(names))]
    for name, num in zip(names, numeric, strict=True):
        t.add_column(name, justify="right" if num else "left", no_wrap=True)
    for r in rows:
        t.add_row(*(_fmt(v) for v in r))
    con.print(t)


def _is_number(v: Any) -> bool:
    return v is None or (isinstance(v, int | float | Decimal) and not isinstance(v, bool))


def _fmt(v: Any) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, Decimal):
        return f"{v:,.2f}"
    if isinstance(v, float):
        return f"{v:,.4f}" if abs(v) < 1 else f"{v:,.2f}"
    if isinstance(v, datetime):
        return v.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(v, date):
        return v.isoformat()
    return str(v)
