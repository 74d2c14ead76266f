"""Syntax errors in the user's words: what is wrong, where (line and column), no sqlglot
internals.

sqlglot reports ``SELEC * FROM t`` as "Required keyword: 'expression' missing for <class
'sqlglot.expressions.core.Mul'>" (it read ``SELEC * FROM`` as a multiplication); users get
"unknown statement 'SELEC' (line 1, column 1)" and "did you mean SELECT?".
"""

from __future__ import annotations

import difflib
import re

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
            line, col = _position(sql, tok.start)
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


def _position(sql: str, offset: int) -> tuple[int, int]:
    """1-based line and column of the character at ``offset`` of ``sql``."""
    line = sql.count("\n", 0, offset) + 1
    col = offset - (sql.rfind("\n", 0, offset) + 1) + 1
    return line, col


# Names DuckDB's binder and catalog errors quote: (pattern, the name is a function).
_NAMED = (
    (re.compile(r'Referenced column "([^"]+)" not found'), False),
    (re.compile(r'does not have a column named "([^"]+)"'), False),
    (re.compile(r'Referenced table "([^"]+)" not found'), False),
    (re.compile(r'column "([^"]+)" must appear in the GROUP BY clause'), False),
    (re.compile(r"(?:Scalar|Aggregate|Table) Function with name (\S+) does not exist"), True),
    (re.compile(r"No function matches the given name and argument types '([^'(]+)\("), True),
)
# DuckDB's excerpt of the statement it ran: "LINE n: <text>" and a caret line under it.
_EXCERPT = re.compile(r"\n\nLINE (\d+): (?P<text>[^\n]*)\n(?P<pad> *)\^[^\n]*")
_CUT = "..."  # DuckDB's mark for an excerpt cut short
_LITERALS = frozenset(t for t in TokenType if t.name.endswith("STRING")) | {TokenType.NUMBER}


def locate_engine_error(err: SQLError, sql: str, dialect: str) -> SQLError:
    """Put the user's line and column on an engine error, where they can be known faithfully.

    DuckDB runs a translation of the user's statement (tables inlined as scans of their files,
    functions expanded), so its ``LINE n:`` excerpt and caret are positions in that text, not
    the user's. Two faithful mappings: the identifier the error names (an unknown column, table
    or function) occurs exactly once in the user's ``sql`` (string literals and comments are
    not searched), or DuckDB's excerpt is the user's own text, found once. Otherwise no
    position is set. An excerpt that is not the user's text is dropped (it would show the
    translation: file paths of the scans). Returns ``err``, changed in place.

    Example:
        >>> err = SQLError('Binder Error: Referenced column "nme" not found in FROM clause!')
        >>> print(locate_engine_error(err, "SELECT id,\\n  nme FROM t WHERE id > 'nme'", "duckdb"))
        Binder Error: Referenced column "nme" not found in FROM clause! (line 2, column 3)
        >>> (err.line, err.col)
        (2, 3)
    """
    if err.line is not None:
        return err
    message, offset = err.message, None
    excerpt = _EXCERPT.search(message)
    if excerpt is not None:
        message = message[: excerpt.start()] + message[excerpt.end() :]
        offset = _excerpt_offset(excerpt, sql)
    start = _named_offset(message, sql, dialect)
    if start is None:
        start = offset
    if start is None:
        if excerpt is not None and offset is None and _excerpt_text(excerpt) not in sql:
            err.message = message  # the translation's text: not shown
            err.args = (message,)
        return err
    line, col = _position(sql, start)
    err.message = f"{message} (line {line}, column {col})"
    err.args = (err.message,)
    err.line, err.col, err.sql = line, col, sql
    return err


def _named_offset(message: str, sql: str, dialect: str) -> int | None:
    """Where the identifier the message names is in ``sql``, when it occurs there once."""
    named = next(((m, f) for p, f in _NAMED if (m := p.search(message))), None)
    if named is None:
        return None
    found, function = named
    name = found.group(1)
    try:
        tokens = Dialect.get_or_raise(dialect).tokenize(sql)
    except SqlglotError:
        return None
    hits = [
        tok
        for i, tok in enumerate(tokens)
        if (
            tok.text == name
            if tok.token_type == TokenType.IDENTIFIER
            else tok.text.lower() == name.lower() and tok.token_type not in _LITERALS
        )
        and (
            not function or (i + 1 < len(tokens) and tokens[i + 1].token_type == TokenType.L_PAREN)
        )
    ]
    return hits[0].start if len(hits) == 1 else None


def _excerpt_text(excerpt: re.Match[str]) -> str:
    text = excerpt.group("text")
    text = text[len(_CUT) :] if text.startswith(_CUT) else text
    return text[: -len(_CUT)] if text.endswith(_CUT) else text


def _excerpt_offset(excerpt: re.Match[str], sql: str) -> int | None:
    """The caret's offset in ``sql`` when DuckDB's excerpt is the user's text, found once."""
    text = _excerpt_text(excerpt)
    at = sql.find(text) if text.strip() else -1
    if at < 0 or sql.find(text, at + 1) >= 0:
        return None
    # The caret line is indented past "LINE n: " and any leading cut mark.
    lead = len(f"LINE {excerpt.group(1)}: ")
    lead += len(_CUT) if excerpt.group("text").startswith(_CUT) else 0
    caret = len(excerpt.group("pad")) - lead
    return at + caret if 0 <= caret <= len(text) else None
