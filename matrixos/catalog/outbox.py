"""An outbox in the catalog database for rows bound for a system Delta table.

A usage record is charged to the credit ledger and written to ``system.billing.usage``: two
stores, and a process killed between the two writes would leave the ledger and the usage table
disagreeing. So the charge's transaction also inserts the record here (``Billing.charge_many``
takes the rows), and a writer moves the rows on to Delta afterwards:

1. ``claim(owner)`` takes the rows ``owner`` inserted, and those whose owner has not touched
   them for ``stale_s`` seconds (it died), marking the latter ``reclaimed``;
2. the writer appends its own rows and *merges* reclaimed ones on their id (insert if absent:
   the dead owner may have appended them before it could delete them here);
3. ``clear(ids)`` deletes what was written.

Rows are never lost (a crash leaves them here for the next writer) and never written twice.

Example:
    >>> from matrixos.catalog import open_catalog
    >>> box = Outbox(open_catalog("sqlite://").engine)
    >>> with box.engine.begin() as conn:
    ...     box.insert(conn, "writer-1", [("r1", {"x": 1})])
    >>> [(r.id, r.payload, r.reclaimed) for r in box.claim("writer-2", stale_s=0)]
    [('r1', {'x': 1}, True)]
    >>> box.clear("writer-2", ["r1"]); box.claim("writer-2", stale_s=0)
    []
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError

from matrixos.catalog.base import now
from matrixos.catalog.store import METADATA
from matrixos.errors import StorageError

__all__ = ["Outbox", "OutboxRow"]

_outbox = sa.Table(
    "mx_usage_outbox",
    METADATA,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("payload", sa.Text, nullable=False),  # the row, JSON
    sa.Column("owner", sa.String(64), nullable=False),
    sa.Column("touched_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("reclaimed", sa.Boolean, nullable=False),
)


@dataclass(frozen=True)
class OutboxRow:
    """A row waiting for its table; ``reclaimed``: it may already be there (merge it)."""

    id: str
    payload: dict[str, Any]
    reclaimed: bool


class Outbox:
    """The ``mx_usage_outbox`` table of one catalog database (made if missing)."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        with contextlib.suppress(IntegrityError, OperationalError, sa.exc.ProgrammingError):
            _outbox.create(engine, checkfirst=True)  # another process may make it first

    def insert(
        self, conn: sa.Connection, owner: str, rows: Sequence[tuple[str, dict[str, Any]]]
    ) -> None:
        """Insert ``(id, row)`` pairs for ``owner`` inside the caller's transaction."""
        if rows:
            at = now()
            conn.execute(
                _outbox.insert(),
                [
                    {
                        "id": rid,
                        "payload": json.dumps(row, default=str),
                        "owner": owner,
                        "touched_at": at,
                        "reclaimed": False,
                    }
                    for rid, row in rows
                ],
            )

    def claim(self, owner: str, *, stale_s: float, limit: int = 10_000) -> list[OutboxRow]:
        """``owner``'s rows and the stale rows of others (now ``owner``'s, ``reclaimed``)."""
        at = now()
        c = _outbox.c
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    _outbox.update()
                    .where(sa.or_(c.owner == owner, c.touched_at < at - timedelta(seconds=stale_s)))
                    .values(
                        reclaimed=sa.or_(c.reclaimed, c.owner != owner),
                        owner=owner,
                        touched_at=at,
                    )
                )
                rows = conn.execute(
                    sa.select(c.id, c.payload, c.reclaimed)
                    .where(c.owner == owner)
                    .order_by(c.id)
                    .limit(limit)
                ).all()
        except OperationalError as e:
            raise StorageError(f"the usage outbox could not be read: {e.orig}") from e
        return [OutboxRow(r.id, json.loads(r.payload), bool(r.reclaimed)) for r in rows]

    def mark_reclaimed(self, owner: str, ids: Sequence[str]) -> None:
        """``ids`` may be half-written (a write failed): merge them next time."""
        c = _outbox.c
        with self.engine.begin() as conn:
            conn.execute(
                _outbox.update().where(c.owner == owner, c.id.in_(list(ids))).values(reclaimed=True)
            )

    def clear(self, owner: str, ids: Sequence[str]) -> None:
        """Delete ``ids`` (written to their table) if ``owner`` still holds them."""
        c = _outbox.c
        with self.engine.begin() as conn:
            conn.execute(_outbox.delete().where(c.owner == owner, c.id.in_(list(ids))))

    def count(self) -> int:
        """Rows waiting."""
        with self.engine.connect() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(_outbox)).scalar_one())
