"""The sandbox for user SQL: what a statement may reference, and a locked DuckDB connection.

Two layers, either of which alone would stop the listed escapes:

1. ``check_query`` walks the parsed statement: only catalog tables (and the query's own CTEs),
   no table functions but the platform's search functions, no file paths or URIs in place of
   table names, no functions that touch files, settings, secrets or extensions, no statement
   nested in a query (``SELECT … INTO``, data-modifying CTEs). It runs before anything in the
   statement is evaluated (the platform functions' arguments included), and again on the
   DuckDB translation of a statement written in another dialect.
2. ``locked_connection`` gives DuckDB no way out: external access off (with the warehouse as the
   only allowed directory, set first), Python replacement scans off, extension autoload off, and
   the configuration locked so SQL cannot turn any of it back on. Every connection user text
   reaches is made by it, and the one that folds constants has no directory at all.

User text never becomes SQL by concatenation: names are quoted and values written as literals
by sqlglot, or statements are built as trees (``tests/engine/test_sandbox_fuzz.py`` and
``python -m benchmarks.sandbox_fuzz`` attack both layers through ``lh.sql``).
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence

import duckdb
from sqlglot import exp

from matrixos.errors import AccessDenied

# Functions that read or write files, reveal settings or secrets, or reach other databases.
_DENIED_FUNCTIONS = re.compile(
    r"""^(
        read_.* | .*_scan | .*_scan_.* | glob | sniff_csv | parquet_.* | iceberg_.* | delta_.*
      | query | query_table | getenv | current_setting | duckdb_.* | pragma_.* | which_secret
      | load_extension | install_extension | sqlite_.* | postgres_.* | mysql_.* | ducklake_.*
      | checkpoint | force_checkpoint | enable_.* | disable_.* | json_execute_serialized_sql
      | python_.* | arrow_.* | tpch.* | tpcds.* | dbgen | dsdgen
      | from_substrait.* | get_substrait.* | test_.* | icu_.* | create_sort_key
    )$""",
    re.VERBOSE,
)

# sqlglot parses some file readers into typed nodes rather than anonymous functions.
_FILE_NODES: tuple[type[exp.Expr], ...] = tuple(
    getattr(exp, n) for n in ("ReadCSV", "ReadParquet", "ReadJSON") if hasattr(exp, n)
)

_PATHLIKE = re.compile(r"[/\\:]|\.\.|^~|\.(csv|tsv|parquet|json|ndjson|jsonl|txt|db|gz)$", re.I)

# Table functions MatrixOS evaluates itself (``engine.functions``), after this check: their
# arguments are checked like any other expression before anything is evaluated.
PLATFORM_TABLE_FUNCTIONS: frozenset[str] = frozenset(
    {"vector_search", "text_search", "hybrid_search"}
)

# Statements nested in a query (``SELECT … INTO``, data-modifying CTEs, …) would create or
# change objects in the engine's own DuckDB database, outside the catalog.
_STATEMENT_NODES: tuple[type[exp.Expr], ...] = tuple(
    getattr(exp, n)
    for n in (
        "Create", "Drop", "Alter", "Insert", "Update", "Delete", "Merge", "TruncateTable",
        "Command", "Copy", "Set", "Pragma", "Attach", "Detach", "Use", "Install", "Export",
        "Transaction", "Commit", "Rollback", "Analyze", "Describe", "Show", "Summarize",
        "Grant", "Revoke", "Comment", "Kill", "LoadData", "Refresh", "Cache", "Uncache",
        "Declare", "Execute", "Put", "Get",
    )
    if hasattr(exp, n)
)  # fmt: skip


def function_name(node: exp.Expr) -> str:
    if isinstance(node, exp.Anonymous):
        return str(node.name).lower()
    if isinstance(node, exp.Func):
        return node.sql_name().lower()
    return type(node).__name__.lower()


def check_query(tree: exp.Expr) -> list[exp.Table]:
    """Refuse anything but catalog reads; return the table references to resolve.

    Raises ``AccessDenied`` naming what is not allowed.
    """
    tables: list[exp.Table] = []
    for node in tree.walk():
        if isinstance(node, exp.Into):
            raise AccessDenied(
                "SELECT … INTO is not allowed in user SQL: it would create a table in the "
                "engine's own database, outside the catalog",
                sql=node.sql(),
                hint="create a catalog table with CREATE TABLE name AS SELECT …",
            )
        if isinstance(node, _STATEMENT_NODES) and node is not tree:
            word = str(node.this) if isinstance(node, exp.Command) else type(node).__name__
            raise AccessDenied(
                f"a {word.upper()} statement inside a query is not allowed in user SQL",
                sql=node.sql(),
            )
        if isinstance(node, exp.TableFromRows):
            # Snowflake's TABLE(GENERATOR(…)): a table function under another node type.
            inner = node.this
            name = function_name(inner) if isinstance(inner, exp.Expr) else "table"
            raise AccessDenied(
                f"table function {name}() is not allowed; user SQL may read only catalog tables",
                sql=node.sql(),
            )
        if isinstance(node, _FILE_NODES):
            raise AccessDenied(
                f"{function_name(node)}() reads files; user SQL may read only catalog tables",
                sql=node.sql(),
            )
        if isinstance(node, exp.Table):
            target = node.this
            if isinstance(target, exp.Func | exp.Anonymous) or not isinstance(
                target, exp.Identifier
            ):
                name = function_name(target) if isinstance(target, exp.Expr) else str(target)
                if name not in PLATFORM_TABLE_FUNCTIONS:
                    raise AccessDenied(
                        f"table function {name}() is not allowed; user SQL may read only "
                        "catalog tables",
                        sql=node.sql(),
                    )
                continue
            check_table_name(node)
            if is_cte_reference(node):
                continue
            tables.append(node)
        elif isinstance(node, exp.Func):
            name = function_name(node)
            if _DENIED_FUNCTIONS.match(name):
                raise AccessDenied(
                    f"function {name}() is not allowed in user SQL (it reaches files, settings "
                    "or other databases)",
                    sql=node.sql(),
                )
    return tables


def check_table_name(node: exp.Table) -> None:
    """Refuse a table name any part of which looks like a file path or URI."""
    for part in node.parts:
        if isinstance(part, exp.Identifier) and _PATHLIKE.search(part.name):
            raise AccessDenied(
                f"{part.name!r} looks like a file path or URI; user SQL may name only "
                "catalog tables",
                sql=node.sql(),
            )


def is_cte_reference(node: exp.Table) -> bool:
    """Whether ``node`` names a CTE in scope rather than a catalog table.

    Scoping follows standard SQL: a query's body sees all its CTEs, a CTE's own body sees only
    the CTEs before it (and itself under ``WITH RECURSIVE``), so in
    ``WITH t AS (SELECT * FROM t) …`` the inner ``t`` is the catalog table.
    """
    if node.args.get("db") or node.args.get("catalog"):
        return False
    name = node.name.lower()
    child: exp.Expr = node
    parent = node.parent
    while parent is not None:
        if isinstance(parent, exp.With):
            ctes = list(parent.expressions)
            idx = next((i for i, c in enumerate(ctes) if c is child), len(ctes))
            visible = ctes[: idx + 1] if parent.args.get("recursive") else ctes[:idx]
            if any(c.alias_or_name.lower() == name for c in visible):
                return True
            # The query owning this WITH: its body is not in scope from inside a CTE.
            child = parent.parent if parent.parent is not None else parent
            parent = child.parent
            continue
        with_ = parent.args.get("with_")
        if (
            isinstance(with_, exp.With)
            and child is not with_
            and any(c.alias_or_name.lower() == name for c in with_.expressions)
        ):
            return True
        child, parent = parent, parent.parent
    return False


def spill_directory() -> str:
    """This user's folder for DuckDB's spill files (owner-only), created on first use."""
    path = os.path.join(tempfile.gettempdir(), f"matrixos-spill-{os.getuid()}")
    os.makedirs(path, mode=0o700, exist_ok=True)
    return path


def locked_connection(
    allowed_directories: Sequence[str],
    *,
    threads: int | None = None,
    memory_limit: str | None = None,
    spill: bool = True,
) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection that SQL cannot use to leave the sandbox.

    Every connection user text can reach is made here. DuckDB lets a locked connection write
    its spill folder, so a connection that never needs to spill (``spill=False``: constant
    folding, planning over empty inputs) gets none and can touch no file at all.
    """
    con = duckdb.connect(":memory:")
    settings: list[tuple[str, object]] = [
        ("TimeZone", "UTC"),
        ("autoinstall_known_extensions", False),
        ("autoload_known_extensions", False),
        ("python_enable_replacements", False),
        ("allow_community_extensions", False),
        ("allowed_directories", list(allowed_directories)),
    ]
    # Spill files of larger-than-memory sorts, joins and aggregates: a private folder, not
    # DuckDB's default ``.tmp`` in whatever directory the process happens to run in.
    settings.append(("temp_directory", spill_directory() if spill else ""))
    if threads:
        settings.append(("threads", threads))
    if memory_limit:
        settings.append(("memory_limit", memory_limit))
    # GLOBAL: TimeZone and python_enable_replacements are connection-local settings, and each
    # statement runs on a cursor (a new connection) that would otherwise get the defaults
    # (the machine's time zone, replacement scans on) and, once locked, could not change them.
    for name, value in settings:
        con.execute(f"SET GLOBAL {name} = ?", [value])
    # Order matters: external access off only after the allowed directories are set, and the
    # lock last so no statement can undo either.
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con
