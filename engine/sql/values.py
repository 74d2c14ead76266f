"""``INSERT INTO t [(columns)] VALUES (…), (…), …`` of plain literals, without sqlglot.

sqlglot builds a tree of every value and the engine used to copy it twice more: a 20,000-row
INSERT took about a minute before DuckDB saw it. A statement that is only such a list is
recognized here instead: its head (``INSERT INTO t (a, b) VALUES``) is parsed by sqlglot as any
statement is, and its rows are checked by one regular expression to hold nothing but literals
(numbers, strings, NULL, TRUE, FALSE, ``DATE|TIME|TIMESTAMP '…'``), parentheses and commas.
Nothing else passes (no function, no name, no operator, no comment, no second statement), so
DuckDB can be handed the rows as they were written, on the planning connection, which may touch
no file: ``SELECT * FROM (VALUES …)``. Anything that does not match goes the usual way.

Only dialects whose strings are ``'…'`` with ``''`` for a quote (no backslash escapes, no
double-quoted strings) take this path; their literals mean in DuckDB what they meant there.

Example:
    >>> rows = ", ".join(f"({i}, 'x')" for i in range(300))
    >>> head, text = bulk_insert(f"INSERT INTO s.t (a, b) VALUES {rows};", "postgres")
    >>> head.sql(), text[:20]
    ('INSERT INTO s.t (a, b) VALUES (NULL)', "(0, 'x'), (1, 'x'), ")
    >>> bulk_insert(f"INSERT INTO s.t VALUES {rows}, (1, now())", "duckdb") is None
    True
"""

from __future__ import annotations

import re

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError

# Dialects whose single-quoted strings DuckDB reads the same way.
DIALECTS = frozenset({"duckdb", "postgres", "trino", "presto", "sqlite"})
# Below this size the usual path is as fast and says more about errors.
MIN_CHARS = 2_000

_HEAD = re.compile(r"\A\s*INSERT\s[^;']*?\bVALUES\s*(?=\()", re.I)
_STRING = r"'(?:[^']|'')*'"
_VALUE = (
    rf"(?:{_STRING}|[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"
    rf"|(?:NULL|TRUE|FALSE)\b|(?:DATE|TIMESTAMP|TIME)\s+{_STRING})"
)
_ROW = rf"\(\s*{_VALUE}(?:\s*,\s*{_VALUE})*\s*\)"
_ROWS = re.compile(rf"\s*({_ROW}(?:\s*,\s*{_ROW})*)\s*;?\s*", re.I)
_LITERAL = re.compile(rf"{_STRING}|(?<![A-Za-z_0-9])[0-9]+\.?[0-9]*(?:[eE][-+]?[0-9]+)?")


def bulk_insert(sql: str, dialect: str) -> tuple[exp.Insert, str] | None:
    """``(head, rows)`` when ``sql`` is one ``INSERT … VALUES`` of plain literal rows:
    ``head`` the statement parsed with a one-``NULL`` row in place of its rows, ``rows`` the
    text of the rows (``(…), (…)``) to hand DuckDB; None for anything else."""
    if len(sql) < MIN_CHARS or dialect.lower() not in DIALECTS:
        return None
    m = _HEAD.match(sql)
    if m is None:
        return None
    body = _ROWS.fullmatch(sql, m.end())
    if body is None:
        return None
    try:
        head = sqlglot.parse(sql[: m.end()] + "(NULL)", read=dialect)
    except SqlglotError:
        return None  # the usual path reports it
    if len(head) != 1 or not isinstance(head[0], exp.Insert):
        return None
    stmt = head[0]
    source = stmt.expression
    if not isinstance(source, exp.Values) or len(source.expressions) != 1:
        return None
    # Anything but the target, its columns and OVERWRITE / BY NAME: the usual path decides.
    extra = set(stmt.args) - {"this", "expression", "overwrite", "by_name", "into", "table"}
    if any(stmt.args.get(k) for k in extra):
        return None
    return stmt, body.group(1)


def redacted(head: exp.Insert, rows: str, dialect: str) -> str:
    """The statement as lineage records it: every literal of its rows replaced by ``?``."""
    text = head.sql(dialect=dialect)
    return text[: text.rfind("(NULL)")] + _LITERAL.sub("?", rows)
