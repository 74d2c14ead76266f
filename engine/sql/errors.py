"""DuckDB's errors as MatrixOS errors, said about the statement the user wrote."""

from __future__ import annotations

import duckdb
from sqlglot import exp

from matrixos.errors import AccessDenied, MatrixOSError, SQLError, StatementCanceled


def engine_error(e: Exception, sql: str) -> MatrixOSError:
    """``e`` (a DuckDB error) as the ``MatrixOSError`` a caller sees, with a SQLSTATE.

    Example:
        >>> engine_error(duckdb.BinderException('column "x" not found'), "SELECT x").sqlstate
        '42703'
    """
    msg = str(e).strip()
    if isinstance(e, duckdb.InterruptException):
        return StatementCanceled("canceling statement due to user request")
    if isinstance(e, duckdb.PermissionException):
        return AccessDenied(f"not allowed: {msg}", sql=sql)
    if isinstance(e, duckdb.CatalogException | duckdb.BinderException):
        return SQLError(msg, sql=sql, sqlstate="42703")
    if isinstance(e, duckdb.ConversionException | duckdb.InvalidInputException):
        return SQLError(msg, sql=sql, sqlstate="22000")
    if isinstance(e, duckdb.OutOfMemoryException):
        # DuckDB's own advice (SET memory_limit/threads) is a statement user SQL may not run.
        return SQLError(
            msg.split("\n\nPossible solutions:", 1)[0],
            sql=sql,
            sqlstate="53200",
            hint="the engine's memory limit is the duckdb_memory_limit setting "
            "(MATRIXOS_DUCKDB_MEMORY_LIMIT, or mx.connect(..., duckdb_memory_limit='8GB')): "
            "raise it, lower duckdb_threads, or filter and project before joining or sorting",
        )
    return SQLError(msg, sql=sql)


def without_scan_excerpt(err: MatrixOSError) -> MatrixOSError:
    """Drop DuckDB's ``LINE n: …`` excerpt when it quotes an inlined scan (see
    ``local.LocalRunner.install``): it shows warehouse file paths and positions in the
    rewritten statement, not the user's."""
    cut = err.message.find("\n\nLINE ")
    if cut >= 0 and ("read_parquet(" in err.message[cut:] or "__mx_" in err.message[cut:]):
        err.message = err.message[:cut]
        err.args = (err.message,)
    return err


def user_statement(tree: exp.Expr) -> str:
    """The statement as written, for error messages: the scans' stand-ins put back."""
    for t in list(tree.find_all(exp.Table)):
        original = t.meta.get("mx_original")
        if original is not None:
            t.replace(original)
    return tree.sql(dialect="duckdb")
