"""Syntax errors in the user's words: what is wrong, where (line and column), no sqlglot
internals.

sqlglot reports ``SELEC * FROM t`` as "Required keyword: 'expression' missing for <class
'sqlglot.expressions.core.Mul'>" (it read ``SELEC * FROM`` as a multiplication); users get
"unknown statement 'SELEC' (line 1, column 1)" and "did you mean SELECT?".
"""

from __future__ import annotations

import difflib

from sqlglot import Dialect
from sqlglot.errors import ParseError, SqlglotError
from sqlglot.tokens import Token, TokenType

from matrixos.errors import SQLError

# Words a statement can start with, in any dialect we take (plus MatrixOS's own).
STATEMENT_WORDS = (
    "ALTER",
    "ANALYZE",
    "BEGIN",
    "CACHE",
    "CALL",
    "COMMENT",
    "COMMIT",
    "COPY",
    "CREATE",
    "DELETE",
    "DESCRIBE",
    "DROP",
    "EXPLAIN",
    "FROM",
    "GRANT",
    "INSERT",
    "MERGE",
    "OPTIMIZE",
    "PIVOT",
    "REFRESH",
    "REPLACE",
    "REVOKE",
    "ROLLBACK",
    "SELECT",
    "SET",
    "SHOW",
    "SUMMARIZE",
    "TABLE",
    "TRUNCATE",
    "UNPIVOT",
    "UPDATE",
    "USE",
    "VACUUM",
    "VALUES",
    "WITH",
)
# sqlglot descriptions that name its internals or say nothing more than "syntax error".
_OPAQUE = ("<class", "Required keyword", "Invalid expression", "Unexpected token")


def syntax_error(e: ParseError, sql: str, dialect: str) -> SQLError:
    """The ``SQLError`` for sqlglot's ``ParseError`` ``e`` on ``sql``.

    Example:
        >>> import sqlglot
        >>> try:
        ...     sqlglot.parse("SELEC * FROM raw.events")
        ... except ParseError as e:
        ...     print(syntax_error(e, "SELEC * FROM raw.events", "duckdb"))
        unknown statement 'SELEC' (line 1, column 1)
        Hint: did you mean SELECT?
    """
    unknown = _unknown_statement(sql, dialect)
    if unknown is not None:
        return unknown
    err = e.errors[0] if e.errors else {}
    highlight = str(err.get("highlight") or "")
    description = str(err.get("description") or "")
    line, col = err.get("line"), err.get("col")
    if isinstance(col, int) and highlight and "\n" not in highlight:
        col = max(1, col - len(highlight) + 1)  # sqlglot points at the token's last character
    detail = "" if any(o in description for o in _OPAQUE) else f": {description[:1].lower()}"
    detail += description[1:] if detail else ""
    if highlight and not str(err.get("end_context") or "").strip() and not detail:
        message = f"syntax error: the statement ends early, after {highlight!r}"
    elif highlight:
        message = f"syntax error at or near {highlight!r}{detail}"
    else:
        message = f"syntax error{detail or ': ' + str(e)}"
    return SQLError(
        message,
        sql=sql,
        line=line if isinstance(line, int) else None,
        col=col if isinstance(col, int) else None,
    )


def statement_starts(sql: str, dialect: str) -> list[Token]:
    """The first token of each statement in ``sql`` (none when it does not tokenize)."""
    try:
        tokens = Dialect.get_or_raise(dialect).tokenize(sql)
    except SqlglotError:
        return []
    starts: list[Token] = []
    at_start = True
    for tok in tokens:
        if tok.token_type == TokenType.SEMICOLON:
            at_start = True
        elif at_start:
            starts.append(tok)
            at_start = False
    return starts


def _unknown_statement(sql: str, dialect: str) -> SQLError | None:
    """An error for the first statement that starts with a word no statement starts with."""
    for tok in statement_starts(sql, dialect):
        if tok.token_type == TokenType.VAR and tok.text.upper() not in STATEMENT_WORDS:
            line, col = _position(sql, tok)
            close = difflib.get_close_matches(tok.text.upper(), STATEMENT_WORDS, n=1)
            return SQLError(
                f"unknown statement {tok.text!r}",
                sql=sql,
                line=line,
                col=col,
                hint=f"did you mean {close[0]}?"
                if close
                else "a statement starts with SELECT, INSERT, CREATE, …",
            )
    return None


def _position(sql: str, tok: Token) -> tuple[int, int]:
    """1-based line and column of the token's first character."""
    line = sql.count("\n", 0, tok.start) + 1
    col = tok.start - (sql.rfind("\n", 0, tok.start) + 1) + 1
    return line, col
