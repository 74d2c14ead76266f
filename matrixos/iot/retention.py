"""Retention: a table property ``matrixos.retention = '30 days'`` and the task that keeps it.

``ALTER TABLE iot.readings SET TBLPROPERTIES ('matrixos.retention' = '30 days')`` (checked by
the SQL engine: a duration, and a table partitioned by day). ``enforce_retention`` deletes, in
every table that has the property, the day partitions that end before ``now - retention``: a
Delta delete whose predicate names only the partition column, so whole files are removed and
nothing is rewritten (no commit at all when no partition is that old). ``RetentionTask`` runs it
in the background: ``matrixos serve`` starts one, an embedded session once
``lh.start_maintenance()`` is called (setting the property alone deletes nothing).
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from matrixos.engine.timeseries import RETENTION, day_partition, parse_duration
from matrixos.errors import MatrixOSError
from matrixos.iot.periodic import Periodic

if TYPE_CHECKING:
    from matrixos.catalog.access import Principal
    from matrixos.catalog.service import TableService

log = logging.getLogger(__name__)

DEFAULT_EVERY = 3600.0  # seconds between passes: a day partition ages once a day


def retention_predicate(column: str, retention: timedelta, now: datetime) -> str:
    """The Delta predicate selecting the day partitions wholly older than ``now - retention``:
    day ``d`` covers ``[d, d + 1 day)``, so it goes when ``d + 1 day <= bound``.

    Example:
        >>> retention_predicate("day", timedelta(days=30), datetime(2024, 3, 1, 12))
        '"day" <= \\'2024-01-30\\''
    """
    last_day = (now - retention - timedelta(days=1)).date()
    quoted = '"' + column.replace('"', '""') + '"'
    return f"{quoted} <= '{last_day.isoformat()}'"


def enforce_retention(
    service: TableService, principal: Principal, *, now: datetime | None = None
) -> dict[str, int]:
    """Delete the expired day partitions of every table with ``matrixos.retention``; the rows
    deleted per table name (tables with nothing expired are left out)."""
    now = now or datetime.now(UTC).replace(tzinfo=None)
    deleted: dict[str, int] = {}
    for info in service.tables(principal):
        text = info.properties.get(RETENTION)
        if not text:
            continue
        try:
            handle = service.table(principal, info.ident)
            column = day_partition(handle.schema, handle.partition_by)
            result = handle.delete(retention_predicate(column, parse_duration(text), now))
        except MatrixOSError:
            # one table whose property no longer fits (re-partitioned, dropped meanwhile)
            # must not keep the others' old data
            log.exception("retention of %s skipped", info.name)
            continue
        rows = int(result.metrics.get("num_deleted_rows") or 0)
        if rows:
            log.info("retention: %d rows of %s older than %s deleted", rows, info.name, text)
            deleted[info.name] = rows
    return deleted


class RetentionTask(Periodic):
    """``enforce_retention`` every ``every`` seconds on a daemon thread."""

    def __init__(
        self, service: TableService, principal: Principal, every: float = DEFAULT_EVERY
    ) -> None:
        super().__init__("matrixos-retention", every, lambda: enforce_retention(service, principal))
