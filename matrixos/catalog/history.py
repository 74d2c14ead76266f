"""``system.query.history``: one row per statement a server ran, for admins and for its author.

Every statement that reaches ``matrixos serve`` (the HTTP statement API, the PostgreSQL wire, the
remote SDK's table reads and searches) gets a row: its id, the principal, the client's address
and protocol, the statement text with every literal blanked, when it started and ended, its
duration, final state, rows and bytes returned, and for a failure its SQLSTATE and message.

Who reads what: the table is owned by ``system``. An admin (or an account granted ``SELECT`` on
it) reads every row; any other principal may query it too and reads only its own rows — the
``TableService`` resolves it for them as a view of their own partition (the table is
partitioned by ``principal``, and the binder keeps only that partition's files), so no filter
in the query can widen it, time travel included.

Statements of the embedded ``mx.connect()`` are not recorded: that session is the warehouse's
single owning user, and a Delta commit per ``lh.sql`` would cost more than the small queries
themselves.

Example:
    >>> import tempfile, matrixos as mx
    >>> lh = mx.connect(tempfile.mkdtemp())
    >>> QueryHistory(lh.service).record(QueryRecord("s1", "alice", "SELECT ?", state="SUCCEEDED"))
    >>> lh.sql("SELECT statement_id, principal, state FROM system.query.history").fetchall()
    [('s1', 'alice', 'SUCCEEDED')]
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

import pyarrow as pa

from matrixos.catalog.base import now
from matrixos.catalog.service import OWN_ROWS
from matrixos.catalog.systables import SystemTable
from matrixos.errors import MatrixOSError

if TYPE_CHECKING:
    from matrixos.catalog.service import TableService

log = logging.getLogger(__name__)

HISTORY_TABLE = "system.query.history"
#: The column each principal's own rows are told by (the table's partition column).
PRINCIPAL_COLUMN = OWN_ROWS[HISTORY_TABLE]
SCHEMA = pa.schema(
    [
        ("statement_id", pa.string()),
        ("principal", pa.string()),
        ("client_address", pa.string()),
        ("protocol", pa.string()),
        ("statement_type", pa.string()),
        ("statement", pa.string()),
        ("start_time", pa.timestamp("us", tz="UTC")),
        ("end_time", pa.timestamp("us", tz="UTC")),
        ("duration_ms", pa.float64()),
        ("state", pa.string()),
        ("rows", pa.int64()),
        ("bytes", pa.int64()),
        ("error_sqlstate", pa.string()),
        ("error_message", pa.string()),
    ]
)


@dataclass(frozen=True)
class QueryRecord:
    """One statement as ``system.query.history`` keeps it. ``statement`` holds no literal
    (the caller blanks them); ``state``: ``SUCCEEDED``, ``FAILED`` or ``CANCELED``;
    ``protocol``: ``http``, ``pg`` or ``sdk``; ``bytes``: what the result held (Arrow in
    memory over HTTP, the rows' wire encoding over the PostgreSQL protocol)."""

    statement_id: str
    principal: str
    statement: str
    state: str = "SUCCEEDED"
    protocol: str = "http"
    client_address: str | None = None
    statement_type: str | None = None
    start_time: datetime = field(default_factory=now)
    end_time: datetime = field(default_factory=now)
    rows: int | None = None
    bytes: int | None = None
    error_sqlstate: str | None = None
    error_message: str | None = None

    @property
    def duration_ms(self) -> float:
        return (self.end_time - self.start_time).total_seconds() * 1000.0


class QueryHistory:
    """Appends ``QueryRecord``s to ``system.query.history`` (made on first use). Records that
    cannot be written are logged by id and dropped: history never stops a statement."""

    def __init__(self, service: TableService) -> None:
        self.table = SystemTable(service, HISTORY_TABLE, SCHEMA, partition_by=[PRINCIPAL_COLUMN])

    def record(self, *records: QueryRecord) -> None:
        """Append ``records`` in one commit."""
        if not records:
            return
        try:
            self.table.append([{**asdict(r), "duration_ms": r.duration_ms} for r in records])
        except MatrixOSError as e:
            log.warning(
                "%d query history rows not written (%s): %s",
                len(records),
                type(e).__name__,
                ", ".join(r.statement_id for r in records[:10]),
            )
