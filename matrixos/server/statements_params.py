"""A statement's named parameters and default catalog/schema, applied to its syntax tree.

Parameter values never become SQL text: each ``:name`` placeholder is replaced in sqlglot's tree
by a string literal (cast to the parameter's type when one is given), so a value such as
``x' OR '1'='1`` stays one string. Unqualified table names get the request's ``catalog`` and
``schema`` the same way (CTE names excepted).

Example:
    >>> bind("SELECT * FROM t WHERE name = :n", "duckdb", [Parameter("n", "x' OR 1=1 --")])
    "SELECT * FROM t WHERE name = 'x'' OR 1=1 --'"
    >>> bind("SELECT * FROM t", "duckdb", [], schema="sales")
    'SELECT * FROM main.sales.t'
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

from matrixos.catalog import DEFAULT_CATALOG, DEFAULT_SCHEMA
from matrixos.errors import SQLError

# A type name with an optional precision/scale: ``INT``, ``DECIMAL(10, 2)``, ``TIMESTAMP``.
_TYPE = re.compile(r"^[A-Za-z][A-Za-z0-9_ ]{0,40}(\(\s*\d{1,3}\s*(,\s*\d{1,3}\s*)?\))?$")
_STRING_TYPES = frozenset({"STRING", "VARCHAR", "TEXT", "CHAR"})


@dataclass(frozen=True)
class Parameter:
    """One named parameter: ``value`` is its text (``None`` is SQL NULL) and ``type`` a SQL
    type name (``STRING`` when not given), as in Databricks' statement API."""

    name: str
    value: str | None
    type: str | None = None


def bind(
    sql: str,
    dialect: str,
    parameters: Sequence[Parameter],
    *,
    catalog: str | None = None,
    schema: str | None = None,
) -> str:
    """``sql`` with ``parameters`` bound and unqualified tables qualified by ``catalog``/
    ``schema``; ``sql`` itself when there is nothing to do.

    Raises:
        SQLError: a placeholder with no parameter, a duplicate parameter, or a bad type.
    """
    if not parameters and not catalog and not schema and ":" not in sql:
        return sql  # nothing to bind (a ``:name`` with no value is an error, below)
    names = [p.name for p in parameters]
    if len(set(names)) != len(names):
        raise SQLError("a parameter is given twice", hint="give each :name once in `parameters`")
    try:
        statements = [s for s in sqlglot.parse(sql, read=dialect) if s is not None]
    except (SqlglotError, ValueError):
        # The engine parses it again and reports the syntax error (with its position) or
        # the unknown dialect.
        return sql
    values = {p.name: _literal(p, dialect) for p in parameters}
    for stmt in statements:
        for ph in list(stmt.find_all(exp.Placeholder)):
            name = ph.name
            if not name or name == "?":
                raise SQLError(
                    "positional parameters (?) are not supported",
                    hint="name them (:name) and pass `parameters`",
                )
            if name not in values:
                raise SQLError(
                    f"no value for parameter :{name}",
                    hint=f'add {{"name": "{name}", "value": …}} to `parameters`',
                    sqlstate="42P02",
                )
            ph.replace(values[name].copy())
        if catalog or schema:
            _qualify(stmt, catalog, schema)
    return ";\n".join(s.sql(dialect=dialect) for s in statements)


def _literal(p: Parameter, dialect: str) -> exp.Expr:
    type_name = (p.type or "STRING").strip()
    if not _TYPE.match(type_name):
        raise SQLError(
            f"parameter :{p.name} has an invalid type {type_name!r}",
            hint="use a SQL type name such as STRING, INT, DOUBLE, DATE or DECIMAL(10, 2)",
        )
    value: exp.Expr = exp.Null() if p.value is None else exp.Literal.string(p.value)
    if type_name.upper() in _STRING_TYPES:
        return value
    try:
        dtype = exp.DataType.build(type_name, dialect=dialect)
    except (SqlglotError, ValueError) as e:
        raise SQLError(
            f"parameter :{p.name} has an unknown type {type_name!r}",
            hint="use a SQL type name such as STRING, INT, DOUBLE, DATE or DECIMAL(10, 2)",
        ) from e
    return exp.cast(value, dtype)


def _qualify(stmt: exp.Expr, catalog: str | None, schema: str | None) -> None:
    ctes = {cte.alias_or_name for cte in stmt.find_all(exp.CTE)}
    for table in stmt.find_all(exp.Table):
        if not isinstance(table.this, exp.Identifier) or table.name in ctes:
            continue  # a table function (read_csv(…), vector_search(…)) or a CTE
        if not table.args.get("db"):
            table.set("db", exp.to_identifier(schema or DEFAULT_SCHEMA))
        if not table.args.get("catalog"):
            table.set("catalog", exp.to_identifier(catalog or DEFAULT_CATALOG))
