"""The server's audit trail: statements and logins of every client, written to
``system.access.audit`` in batches.

A server writes many events a second; one Delta commit each would slow every statement down.
``AuditWriter`` queues events and a background thread appends them together every
``interval_s`` seconds (or once ``batch`` are waiting); ``close()`` writes what is left. The
statement text is recorded with its literals blanked (``redact_literals``), a token by its id
only: no secret reaches the audit table or the log.

Example:
    >>> import tempfile, matrixos as mx
    >>> from matrixos.catalog.audit import AuditLog
    >>> lh = mx.connect(tempfile.mkdtemp())
    >>> writer = AuditWriter(AuditLog(lh.service), interval_s=0.1)
    >>> writer.statement("alice", "SELECT * FROM t WHERE pw = 'x'", "duckdb", protocol="http",
    ...                  client_address="127.0.0.1", error=None, rows=1, seconds=0.01)
    >>> writer.close()
    >>> lh.sql("SELECT principal, action, statement FROM system.access.audit").fetchall()
    [('alice', 'SELECT', 'SELECT * FROM t WHERE pw = ?')]
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from sqlglot import Dialect
from sqlglot.errors import SqlglotError
from sqlglot.tokens import TokenType

from matrixos.catalog.audit import AuditEvent, AuditLog, outcome_of
from matrixos.catalog.history import QueryHistory, QueryRecord
from matrixos.catalog.systables import BatchWriter
from matrixos.engine.sql.grants import redact_literals
from matrixos.errors import MatrixOSError

log = logging.getLogger(__name__)

_STRINGS = {
    TokenType.STRING,
    TokenType.NATIONAL_STRING,
    TokenType.RAW_STRING,
    TokenType.HEREDOC_STRING,
}

# Leading comments and whitespace, then the statement's first word.
_FIRST_WORD = re.compile(r"^(?:\s+|--[^\n]*\n?|/\*.*?\*/)*([A-Za-z]+)", re.S)


def statement_action(sql: str) -> str:
    """The statement's first keyword, upper-cased (``SELECT``, ``INSERT``…; ``SQL`` if none).

    Example:
        >>> statement_action("-- note\\n  insert into t values (1)")
        'INSERT'
    """
    m = _FIRST_WORD.match(sql)
    return m.group(1).upper() if m else "SQL"


class AuditWriter:
    """Queues audit events and appends them to ``system.access.audit`` in the background."""

    def __init__(
        self,
        audit: AuditLog,
        *,
        history: QueryHistory | None = None,
        interval_s: float = 1.0,
        batch: int = 1000,
    ) -> None:
        """``history``: where statements also get their ``system.query.history`` row (the
        statements that name a ``statement_id``)."""
        self._writer: BatchWriter[AuditEvent] = BatchWriter(
            lambda events: audit.record(*events),
            interval_s=interval_s,
            batch=batch,
            what="audit events",
        )
        self._history: BatchWriter[QueryRecord] | None = None
        if history is not None:
            self._history = BatchWriter(
                lambda records: history.record(*records),
                interval_s=interval_s,
                batch=batch,
                what="query history rows",
            )
        self._on_statement: list[Callable[[str], None]] = []

    def on_statement(self, listener: Callable[[str], None]) -> None:
        """Call ``listener(sql)`` for each statement recorded (HTTP and wire alike), after it
        ended: how a server notices the account and grant changes it made itself."""
        self._on_statement.append(listener)

    def record(self, event: AuditEvent) -> None:
        """Queue ``event`` (written within ``interval_s``)."""
        self._writer.put(event)

    def statement(
        self,
        principal: str,
        sql: str,
        dialect: str,
        *,
        protocol: str,
        client_address: str | None,
        error: BaseException | None,
        rows: int | None,
        seconds: float | None,
        outcome: str | None = None,
        statement_id: str | None = None,
        started: float | None = None,
        nbytes: int | None = None,
    ) -> None:
        """Queue a statement's event: its first keyword as the action, its text redacted.
        With a ``statement_id`` (and a history), also its ``system.query.history`` row:
        ``started`` is its start (``time.time()``), ``nbytes`` the bytes of its result."""
        for listener in self._on_statement:
            listener(sql)
        text = redact_literals(sql, dialect) or "<not tokenizable: not recorded>"
        action = statement_action(sql)
        outcome = outcome or outcome_of(error)
        self.record(
            AuditEvent(
                principal,
                action,
                outcome=outcome,
                protocol=protocol,
                client_address=client_address,
                statement=text,
                rows=rows,
                duration_ms=None if seconds is None else seconds * 1000.0,
            )
        )
        if self._history is None or statement_id is None:
            return
        end = time.time()
        start = started if started is not None else end - (seconds or 0.0)
        message = None
        if error is not None:
            message = scrub(error.message if isinstance(error, MatrixOSError) else "", sql, dialect)
        state = "CANCELED" if outcome == "canceled" else "FAILED" if error else "SUCCEEDED"
        self._history.put(
            QueryRecord(
                statement_id,
                principal,
                text,
                state=state,
                protocol=protocol,
                client_address=client_address,
                statement_type=action,
                # the end as the start plus the duration: two timestamps each rounded to the
                # microsecond made 2 ms read back as 2.001
                start_time=(begun := datetime.fromtimestamp(start, UTC)),
                end_time=begun + timedelta(seconds=seconds or end - start),
                rows=rows,
                bytes=nbytes,
                error_sqlstate=getattr(error, "sqlstate", None) if error else None,
                error_message=message,
            )
        )

    def flush(self) -> None:
        """Write what is queued now (audit events and history rows)."""
        self._writer.flush()
        if self._history is not None:
            self._history.flush()

    def close(self) -> None:
        """Write what is queued and stop the threads."""
        self._writer.close()
        if self._history is not None:
            self._history.close()


def scrub(message: str, sql: str, dialect: str) -> str:
    """``message`` with every string literal of ``sql`` that it repeats blanked (``?``): an
    error may quote a value (``could not convert 'secret' to INTEGER``).

    Example:
        >>> scrub("could not convert 'hunter2' to INT", "SELECT 'hunter2'::INT", "duckdb")
        "could not convert '?' to INT"
    """
    try:
        tokens = Dialect.get_or_raise(dialect).tokenize(sql)
    except SqlglotError:
        return "<error message not recorded: the statement could not be tokenized>"
    for text in sorted({t.text for t in tokens if t.token_type in _STRINGS}, key=len, reverse=True):
        if text:
            message = message.replace(text, "?")
    return message
