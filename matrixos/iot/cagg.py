"""The continuous aggregates' background refresher: every materialized view with
``WITH (refresh = '…')`` is refreshed (incrementally, see ``engine/sql/matviews.py``) at that
interval, on a daemon thread.

A view is refreshed as its owner (the account that created it, with its grants, row filters
and column masks), so a view never holds rows its owner may not read; a view whose owner is
not an account is refreshed as the session's principal only when that principal is its owner
(the embedded user), and skipped otherwise.

Example:
    >>> import tempfile, datetime as dt, matrixos as mx
    >>> lh = mx.connect(tempfile.mkdtemp())
    >>> _ = lh.create_table("iot.cpu", [{"time": dt.datetime(2024, 1, 1), "usage": 1.0}])
    >>> _ = lh.sql("CREATE MATERIALIZED VIEW iot.m AS SELECT time_bucket('1 minute', time) AS b, "
    ...            "avg(usage) AS u FROM iot.cpu GROUP BY 1 WITH (refresh = '1 second')")
    >>> lh.maintenance.refresher.run_once()   # what the thread does each tick
    []
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from matrixos.catalog.accounts import Accounts
from matrixos.engine.sql.matviews import REFRESH
from matrixos.engine.timeseries import parse_duration
from matrixos.errors import MatrixOSError
from matrixos.iot.periodic import Periodic

if TYPE_CHECKING:
    from matrixos.catalog import TableInfo
    from matrixos.catalog.access import Principal
    from matrixos.engine.sql.matviews import MaterializedViews

log = logging.getLogger(__name__)

TICK = 1.0  # seconds between looks at the views' schedules


class ViewRefresher(Periodic):
    """Refreshes each view with a refresh interval when it is due (first on the first tick)."""

    def __init__(self, views: MaterializedViews, principal: Principal, tick: float = TICK):
        super().__init__("matrixos-view-refresh", tick, self.run_once)
        self._views = views
        self._principal = principal
        self._accounts = Accounts(views.service.catalog)
        self._last: dict[str, float] = {}

    def run_once(self, now: float | None = None) -> list[str]:
        """Refresh the views that are due; their names."""
        now = time.monotonic() if now is None else now
        done = []
        for info in self._views.views(self._principal):
            text = info.properties.get(REFRESH)
            if not text:
                continue
            last = self._last.get(info.name)
            try:
                every = parse_duration(text, "refresh").total_seconds()
                if last is not None and now - last < every:
                    continue
                self._last[info.name] = now
                owner = self._owner(info)
                if owner is None:
                    log.warning(
                        "%s: its owner %r is no account; not refreshed", info.name, info.owner
                    )
                    continue
                result = self._views.refresh(owner, info.name)
            except MatrixOSError:
                # its source dropped, a grant revoked…: the other views still refresh
                log.exception("refresh of %s failed", info.name)
                continue
            if result["buckets"]:
                done.append(info.name)
        return done

    def _owner(self, info: TableInfo) -> Principal | None:
        """Who refreshes ``info``: its owner's principal (None when the owner is unknown)."""
        if info.owner is None or info.owner == self._principal.name:
            return self._principal
        try:
            return self._accounts.principal(info.owner)
        except MatrixOSError:
            return None
