"""The SQL front end: parse in any dialect, refuse what is never allowed, and check a
statement again as DuckDB will read it.

Also the small pieces every statement shares: table names as the user wrote them, the commands
sqlglot leaves unparsed (EXPLAIN, OPTIMIZE, VACUUM, SHOW, volume DDL), and the one-row status a
DDL or DML statement answers with.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import pyarrow as pa
import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, SqlglotError

from matrixos.catalog import TableIdent
from matrixos.engine import vector_literals
from matrixos.engine._syntax import statement_starts, syntax_error
from matrixos.engine.result import Result
from matrixos.engine.sandbox import check_query, check_table_name
from matrixos.errors import AccessDenied, SQLError

# Statements never allowed in user SQL, named even when sqlglot cannot parse them.
DENIED_STATEMENTS = frozenset(
    {
        "ATTACH", "CALL", "CHECKPOINT", "COPY", "DETACH", "EXPORT", "FORCE", "IMPORT",
        "INSTALL", "LOAD", "PRAGMA", "RESET", "SET", "UNLOAD", "UPDATE_EXTENSIONS", "USE",
    }
)  # fmt: skip


class _CommandFallback(logging.Filter):
    """Drops sqlglot's warning that a statement is parsed as a ``Command``: that is how
    EXPLAIN, OPTIMIZE, VACUUM, DESCRIBE HISTORY and the volume DDL arrive, on purpose; a
    command the engine does not know is refused with an error of its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Falling back to parsing as a 'Command'" not in record.getMessage()


# Installed once: the filter drops only that one message, and a per-parse add/remove would
# race between threads parsing at once.
logging.getLogger("sqlglot").addFilter(_CommandFallback())


def parse(sql: str, dialect: str) -> list[exp.Expr]:
    """The statements of ``sql`` in ``dialect``, with divisions as that dialect means them.

    Raises:
        SQLError: an unknown dialect, or a syntax error (with its line and column).
        AccessDenied: a never-allowed statement (``ATTACH``, ``SET``, …) sqlglot cannot parse.

    Example:
        >>> [t.sql("duckdb") for t in parse("SELECT 7 / 2", "postgres")]
        ['SELECT 7 // 2']
    """
    try:
        sqlglot.Dialect.get_or_raise(dialect)
    except (ValueError, SqlglotError) as e:
        raise SQLError(f"unknown SQL dialect {dialect!r}") from e
    try:
        trees = _vectors_lifted(sql, dialect) or sqlglot.parse(sql, read=dialect)
    except ParseError as e:
        denied = _denied_statement(sql, dialect)
        if denied:
            raise AccessDenied(f"{denied} statements are not allowed", sql=sql) from e
        raise syntax_error(e, sql, dialect) from e
    except SqlglotError as e:
        raise SQLError(f"cannot parse SQL: {e}", sql=sql) from e
    # A comment after the last ``;`` parses as an empty statement (exp.Semicolon): nothing to run.
    kept = [t for t in trees if t is not None and not isinstance(t, exp.Semicolon)]
    return [_integer_division(t) for t in kept]


def _vectors_lifted(sql: str, dialect: str) -> list[exp.Expr | None] | None:
    """The statements, parsed with long lists of numbers (query vectors) read without sqlglot
    (``engine.vector_literals``); None to parse the text as written: another dialect, no such
    list, or a parse error (reported against the text as written)."""
    if sqlglot.Dialect.get_or_raise(dialect) != sqlglot.Dialect.get_or_raise("duckdb"):
        return None
    text, lifted = vector_literals.lift(sql)
    if not lifted:
        return None
    try:
        trees = sqlglot.parse(text, read=dialect)
    except SqlglotError:
        return None
    return trees if vector_literals.restore([t for t in trees if t], lifted) else None


def _integer_division(tree: exp.Expr) -> exp.Expr:
    """``a / b`` as the statement's dialect means it.

    In PostgreSQL, Trino, Redshift and T-SQL an integer divided by an integer is an integer
    (truncated toward zero: ``7 / 2`` is 3, ``-7 / 2`` is -3) and dividing by zero is an error;
    DuckDB's ``/`` gives 3.5 and NULL. sqlglot marks such divisions ``typed``. DuckDB's ``//``
    does exactly what those dialects do for every operand type: integer division for
    integers, and for DECIMAL and floating-point operands the same value as ``/``.
    """
    for div in list(tree.find_all(exp.Div)):
        if not div.args.get("typed"):
            continue
        if isinstance(div.this, exp.Interval) or isinstance(div.expression, exp.Interval):
            continue  # interval / n: DuckDB's ``/`` already means what they mean
        div.replace(exp.IntDiv(this=div.this, expression=div.expression))
    return tree


def check_translation(stmt: exp.Expr, dialect: str) -> None:
    """Check each query of ``stmt`` again as DuckDB will read it.

    sqlglot's generator rewrites constructs of other dialects into DuckDB's (Snowflake's
    ``TABLE(GENERATOR(…))`` became ``range(n)``), so what runs is not exactly what
    ``check_query`` saw. Re-parsing costs ~2 ms a TPC-H query; statements written in DuckDB's
    own dialect are generated as parsed and skip it.
    """
    if sqlglot.Dialect.get_or_raise(dialect) == sqlglot.Dialect.get_or_raise("duckdb"):
        return
    queries = [stmt] if isinstance(stmt, exp.Query) else list(stmt.find_all(exp.Query))
    for query in queries:
        if query is not stmt and query.find_ancestor(exp.Query) is not None:
            continue  # checked with the query around it
        check_query(query)  # first as written, so a refusal names what the user wrote
        try:
            text = query.sql(dialect="duckdb")
            translated = sqlglot.parse_one(text, read="duckdb")
        except SqlglotError:
            # Not generated or not re-parsed: the statement's own checks and DuckDB's errors
            # still apply; nothing new can be refused here.
            continue
        check_query(translated)


def _denied_statement(sql: str, dialect: str) -> str | None:
    """The leading keyword of a never-allowed statement in ``sql``, if any."""
    for tok in statement_starts(sql, dialect):
        if tok.text.upper() in DENIED_STATEMENTS:
            return tok.text.upper()
    return None


def refused(stmt: exp.Expr, dialect: str) -> AccessDenied:
    """The error for a statement no handler takes, naming its keyword."""
    text = stmt.sql(dialect=dialect)
    # e.g. CHECKPOINT parses as a column: name the keyword, not the node type
    what = (
        text.split(None, 1)[0].upper()
        if isinstance(stmt, exp.Condition) and text
        else type(stmt).__name__.upper()
    )
    return AccessDenied(f"{what} statements are not allowed", sql=text)


# -- commands (statements sqlglot leaves as text) ---------------------------------------------
def command_parts(stmt: exp.Command) -> tuple[str, str]:
    """A command's keyword (upper case) and the rest of its text, without the ``;``."""
    rest = (
        stmt.expression.name
        if isinstance(stmt.expression, exp.Expr)
        else str(stmt.expression or "")
    )
    return str(stmt.this).upper(), rest.strip().rstrip(";")


def explain_target(rest: str) -> tuple[bool, str]:
    """``EXPLAIN [ANALYZE | VERBOSE | …] query``: whether ANALYZE was asked, and the query."""
    analyze = re.match(r"^ANALYZE\s", rest, flags=re.I) is not None
    return analyze, re.sub(r"^(ANALYZE|VERBOSE|EXTENDED|FORMATTED)\s+", "", rest, flags=re.I)


def refused_command(cmd: str, rest: str) -> AccessDenied:
    """The error for a command no handler takes (``CREATE MACRO``, ``ALTER TABLE``, …)."""
    what = cmd
    if cmd in ("CREATE", "ALTER", "DROP"):
        modifiers = {"OR", "REPLACE", "PERSISTENT", "TEMP", "TEMPORARY", "IF", "NOT", "EXISTS"}
        kind = next((w for w in rest.upper().split() if w not in modifiers), "")
        what = f"{cmd} {kind}".strip()
    return AccessDenied(f"{what} statements are not allowed", sql=f"{cmd} {rest}")


# -- names and answers -------------------------------------------------------------------------
def ident_of(node: exp.Expr) -> TableIdent:
    """The catalog name of a table reference; refused unless it is a plain checked name."""
    if not isinstance(node, exp.Table) or not isinstance(node.this, exp.Identifier):
        raise SQLError(f"expected a table name, got {node.sql()}")
    check_table_name(node)
    return TableIdent.from_parts(node.catalog or None, node.db or None, node.name)


def table_name(text: str, dialect: str) -> str:
    """The full name of the table ``text`` names (a command's argument), e.g. ``main.s.t``."""
    try:
        node = sqlglot.parse_one(text, read=dialect, into=exp.Table)
    except SqlglotError as e:
        raise SQLError(f"{text!r} is not a table name", sql=text) from e
    return str(ident_of(node))


def ok(message: str, **cols: Any) -> Result:
    """The one-row answer of a DDL or DML statement: ``status`` plus ``cols``."""
    data = {"status": [message], **{k: [v] for k, v in cols.items()}}
    return Result.from_table(pa.table(data), statement=message.split()[0], message=message)
