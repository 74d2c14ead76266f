"""Transaction statements over the PostgreSQL wire, answered honestly: MatrixOS autocommits.

Every statement commits on its own (a Delta or Lance commit per statement); there are no
multi-statement transactions. Drivers still send ``BEGIN`` (psycopg does before the first
statement of each transaction unless ``autocommit=True``), ``COMMIT`` and ``ROLLBACK``, so
these are accepted — the connection's transaction status moves as the driver expects, so it
keeps working — and the client is told what they mean:

* the first ``BEGIN`` of a connection sends a NOTICE saying statements are not grouped;
* a ``ROLLBACK`` (or ``ROLLBACK TO SAVEPOINT``) after a statement that wrote since the
  ``BEGIN`` (or the savepoint) sends a WARNING (SQLSTATE 01000) saying those writes are
  committed and stay: nothing pretends to undo them;
* ``SAVEPOINT`` / ``RELEASE SAVEPOINT`` are accepted as markers for the above.

Example (psycopg, ``autocommit=False``)::

    conn.execute("INSERT INTO t VALUES (1)")   # BEGIN sent first: a NOTICE
    conn.rollback()                            # a WARNING: the INSERT stays committed
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from pg_mimic import messages
from pg_mimic.session import StaticStatement

if TYPE_CHECKING:
    from pg_mimic import Statement
    from pg_mimic.middleware import MiddlewareContext

_BEGIN = re.compile(r"^\s*(BEGIN|START\s+TRANSACTION)\b", re.IGNORECASE)
_COMMIT = re.compile(r"^\s*(COMMIT|END)\b", re.IGNORECASE)
_ROLLBACK_TO = re.compile(r"^\s*ROLLBACK\s+(WORK\s+|TRANSACTION\s+)?TO\b", re.IGNORECASE)
_ROLLBACK = re.compile(r"^\s*ROLLBACK\b", re.IGNORECASE)
_SAVEPOINT = re.compile(r"^\s*SAVEPOINT\b", re.IGNORECASE)
_RELEASE = re.compile(r"^\s*RELEASE\b", re.IGNORECASE)

AUTOCOMMIT = (
    "MatrixOS runs each statement in its own transaction (autocommit): statements between "
    "BEGIN and COMMIT are not grouped, and ROLLBACK cannot undo a write"
)


async def transactions(ctx: MiddlewareContext) -> Statement | None:
    """BEGIN / START TRANSACTION, COMMIT / END, ROLLBACK [TO SAVEPOINT], SAVEPOINT, RELEASE."""
    sql, conn = ctx.sql, ctx.connection
    session: Any = conn.session  # MxSession: counts the statements that wrote (``writes``)
    if _BEGIN.match(sql):
        return _static("BEGIN", lambda: _begin(conn, session))
    if _COMMIT.match(sql):
        return _static("COMMIT", lambda: _end(conn))
    if _ROLLBACK_TO.match(sql):
        return _static("ROLLBACK", lambda: _undo(conn, session, "ROLLBACK TO SAVEPOINT"))
    if _ROLLBACK.match(sql):
        return _static("ROLLBACK", lambda: _undo(conn, session, "ROLLBACK", end=True))
    if _SAVEPOINT.match(sql):
        return _static("SAVEPOINT", lambda: _mark(session))
    if _RELEASE.match(sql):
        return _static("RELEASE", lambda: None)
    return None


def _static(tag: str, on_execute: Any) -> Statement:
    return StaticStatement(tag, None, [], on_execute)


def _begin(conn: Any, session: Any) -> None:
    if not getattr(session, "told_autocommit", False):
        session.told_autocommit = True
        _notice(conn, "NOTICE", "00000", AUTOCOMMIT)
    conn.tx_status = b"T"
    _mark(session)


def _mark(session: Any) -> None:
    session.writes_at_mark = getattr(session, "writes", 0)


def _end(conn: Any) -> None:
    conn.tx_status = b"I"


def _undo(conn: Any, session: Any, what: str, *, end: bool = False) -> None:
    wrote = getattr(session, "writes", 0) - getattr(session, "writes_at_mark", 0)
    if wrote > 0 and conn.tx_status != b"I":
        _notice(
            conn,
            "WARNING",
            "01000",
            f"{what} undid nothing: {wrote} statement(s) since BEGIN wrote, and each committed "
            "on its own",
            hint="MatrixOS autocommits every statement: to revert, write the opposite change "
            "(or read the table's earlier version with VERSION AS OF n and write that back)",
        )
    _mark(session)
    if end:
        conn.tx_status = b"I"


def _notice(conn: Any, severity: str, code: str, message: str, hint: str | None = None) -> None:
    fields = {"S": severity, "V": severity, "C": code, "M": message}
    if hint:
        fields["H"] = hint
    conn.stream.write(messages.make_notice_response(fields))
