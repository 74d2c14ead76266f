"""The compute OS's jobs: a queue in the catalog database, a scheduler, gangs on Ray.

``lh.jobs`` (``matrixos.jobs.service.Jobs``) submits, lists, cancels jobs and books
reservations; ``open_jobs`` builds the ``JobService`` a session or server shares. See
``docs/compute-os.md``.

The names are imported on first use (PEP 562): a job's Ray worker imports
``matrixos.jobs.runner`` without the service, the catalog or the metering behind it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matrixos.jobs.service import Job as Job
    from matrixos.jobs.service import Jobs as Jobs
    from matrixos.jobs.service import JobService as JobService
    from matrixos.jobs.store import JobInfo as JobInfo
    from matrixos.jobs.store import ReservationRow as ReservationRow
    from matrixos.jobs.wiring import BillingMeter as BillingMeter
    from matrixos.jobs.wiring import open_jobs as open_jobs

_WHERE = {
    "BillingMeter": "matrixos.jobs.wiring",
    "Job": "matrixos.jobs.service",
    "JobService": "matrixos.jobs.service",
    "Jobs": "matrixos.jobs.service",
    "open_jobs": "matrixos.jobs.wiring",
    "JobInfo": "matrixos.jobs.store",
    "ReservationRow": "matrixos.jobs.store",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'matrixos.jobs' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
