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
import threading

from matrixos.catalog.audit import AuditEvent, AuditLog, outcome_of
from matrixos.engine.sql.grants import redact_literals

log = logging.getLogger(__name__)

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

    def __init__(self, audit: AuditLog, *, interval_s: float = 1.0, batch: int = 1000) -> None:
        self._audit = audit
        self._interval = interval_s
        self._batch = batch
        self._events: list[AuditEvent] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="mx-audit", daemon=True)
        self._thread.start()

    def record(self, event: AuditEvent) -> None:
        """Queue ``event`` (written within ``interval_s``)."""
        with self._cond:
            self._events.append(event)
            if len(self._events) >= self._batch:
                self._cond.notify()

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
    ) -> None:
        """Queue a statement's event: its first keyword as the action, its text redacted."""
        self.record(
            AuditEvent(
                principal,
                statement_action(sql),
                outcome=outcome or outcome_of(error),
                protocol=protocol,
                client_address=client_address,
                statement=redact_literals(sql, dialect) or "<not tokenizable: not recorded>",
                rows=rows,
                duration_ms=None if seconds is None else seconds * 1000.0,
            )
        )

    def close(self) -> None:
        """Write what is queued and stop the thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._cond:
                if not self._closed and len(self._events) < self._batch:
                    self._cond.wait(self._interval)
                events, self._events = self._events, []
                closed = self._closed
            if events:
                try:
                    self._audit.record(*events)
                except Exception:  # the audit must never take the server down
                    log.exception("%d audit events not written", len(events))
            if closed:
                with self._cond:
                    if not self._events:
                        return
