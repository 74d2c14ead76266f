"""``system.access.audit``: who did what to accounts, grants and data, and how it went.

One row per event (a login, a statement, a grant change, a denial): when, which principal, from
which client address and protocol, the action and its object, the statement text with its
literals redacted, the outcome, rows and duration. The rows are a Delta table of the warehouse,
``system.access.audit``, owned by ``system``: admins read it with SQL like any table; others
see nothing of it unless granted.

Callers hand over text that holds no secret (``engine.sql.grants.redact_literals`` blanks every
literal of a statement); ``AuditLog`` never receives a password or a token.

Example:
    >>> import tempfile, matrixos as mx
    >>> lh = mx.connect(tempfile.mkdtemp())
    >>> AuditLog(lh.service).record(AuditEvent("alice", "GRANT", "main.sales", protocol="sql"))
    >>> lh.sql("SELECT principal, action FROM system.access.audit").fetchall()
    [('alice', 'GRANT')]
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import TYPE_CHECKING

import pyarrow as pa

from matrixos.catalog.base import now
from matrixos.catalog.systables import SYSTEM, SystemTable
from matrixos.errors import AccessDenied, MatrixOSError

if TYPE_CHECKING:
    from matrixos.catalog.service import TableService

log = logging.getLogger(__name__)

AUDIT_TABLE = "system.access.audit"
__all__ = ["AUDIT_TABLE", "SCHEMA", "SYSTEM", "AuditEvent", "AuditLog", "outcome_of"]
SCHEMA = pa.schema(
    [
        ("event_time", pa.timestamp("us", tz="UTC")),
        ("principal", pa.string()),
        ("client_address", pa.string()),
        ("protocol", pa.string()),
        ("action", pa.string()),
        ("object", pa.string()),
        ("statement", pa.string()),
        ("outcome", pa.string()),
        ("rows", pa.int64()),
        ("duration_ms", pa.float64()),
    ]
)


@dataclass(frozen=True)
class AuditEvent:
    """One audited event. ``outcome``: ``ok``, ``denied`` or ``failed: <error class>``;
    ``protocol``: ``sql`` (the SDK's and CLI's SQL), ``cli``, ``http``, ``pg``…"""

    principal: str
    action: str
    object: str | None = None
    outcome: str = "ok"
    protocol: str = "sdk"
    client_address: str | None = None
    statement: str | None = None
    rows: int | None = None
    duration_ms: float | None = None
    event_time: datetime = field(default_factory=now)


def outcome_of(error: BaseException | None) -> str:
    """``ok``, ``denied`` (an ``AccessDenied``) or ``failed: <error class>``."""
    if error is None:
        return "ok"
    return "denied" if isinstance(error, AccessDenied) else f"failed: {type(error).__name__}"


class AuditLog:
    """Appends events to ``system.access.audit`` (created on first use). Thread-safe.

    An event that cannot be written is logged (its action and object, no statement text) and
    dropped: an outage of the audit table does not stop the warehouse.
    """

    def __init__(self, service: TableService) -> None:
        self.service = service
        self.table = SystemTable(service, AUDIT_TABLE, SCHEMA)

    def record(self, *events: AuditEvent) -> None:
        """Append ``events`` in one commit."""
        if not events:
            return
        names = [f.name for f in fields(AuditEvent)]
        try:
            self.table.append([{n: getattr(e, n) for n in names} for e in events])
        except MatrixOSError as e:
            for ev in events:
                log.warning(
                    "audit event %s on %s by %s not written: %s",
                    ev.action,
                    ev.object,
                    ev.principal,
                    type(e).__name__,
                )
