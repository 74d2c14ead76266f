"""The compute OS's jobs: a queue in the catalog database, a scheduler, gangs on Ray.

``lh.jobs`` (``matrixos.jobs.service.Jobs``) submits, lists, cancels jobs and books
reservations; ``open_jobs`` builds the ``JobService`` a session or server shares. See
``docs/compute-os.md``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from matrixos.catalog.accounts import Accounts
from matrixos.jobs.runner import LocalPool, Pool, RayPool
from matrixos.jobs.service import BillingMeter, Job, Jobs, JobService
from matrixos.jobs.store import JobInfo, JobStore, ReservationRow, jobs_engine
from matrixos.metering import Meter

if TYPE_CHECKING:
    from matrixos.catalog.service import TableService

__all__ = [
    "BillingMeter",
    "Job",
    "JobInfo",
    "JobService",
    "Jobs",
    "ReservationRow",
    "open_jobs",
]


def open_jobs(
    service: TableService,
    *,
    ray: bool,
    connect: Mapping[str, Any],
    pool: Pool | None = None,
    meter: Meter | None = None,
    **options: Any,
) -> JobService:
    """The job service of a warehouse: its queue in ``service``'s catalog database, jobs run on
    Ray (``ray``, this process must be connected) or on this machine, usage charged through
    ``meter`` (a ``Meter`` of ``service`` by default). ``connect``: ``mx.connect`` arguments
    for SQL jobs' processes; ``options`` go to ``JobService`` (``policy``, ``tick_s``,
    ``grace_s``, ``meter_interval_s``, ``max_attempts``…)."""
    settings = service.settings
    store = JobStore(jobs_engine(service.catalog, settings.home))
    billing = BillingMeter(meter or Meter(service))
    return JobService(
        store,
        pool or (RayPool() if ray else LocalPool()),
        accounts=Accounts(service.catalog),
        log_dir=str(Path(settings.home).expanduser() / "jobs"),
        connect=connect,
        metering=billing,
        check_credit=billing.check_credit,
        degrees_of=billing.estimate,
        **options,
    )
