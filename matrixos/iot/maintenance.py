"""A session's background upkeep of its time series: the continuous aggregates' refresher
and the retention task, started together and stopped with the session."""

from __future__ import annotations

from typing import TYPE_CHECKING

from matrixos.iot.cagg import TICK, ViewRefresher
from matrixos.iot.retention import DEFAULT_EVERY, RetentionTask

if TYPE_CHECKING:
    from matrixos.catalog.access import Principal
    from matrixos.catalog.service import TableService
    from matrixos.engine.sql.matviews import MaterializedViews


class Maintenance:
    """The refresher (``refresher``) and the retention task (``retention``) of one session."""

    def __init__(
        self,
        service: TableService,
        views: MaterializedViews,
        principal: Principal,
        *,
        tick: float = TICK,
        retention_every: float = DEFAULT_EVERY,
    ) -> None:
        self.refresher = ViewRefresher(views, principal, tick)
        self.retention = RetentionTask(service, principal, retention_every)

    def start(self) -> Maintenance:
        self.refresher.start()
        self.retention.start()
        return self

    def stop(self) -> None:
        self.refresher.stop()
        self.retention.stop()
