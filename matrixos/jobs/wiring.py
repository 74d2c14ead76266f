"""How a session or a server builds its ``JobService``: the queue in its catalog database, the
pool (this machine or Ray), and metering through ``matrixos.metering.Meter``
(``BillingMeter``: each job's cores, GPUs and memory per bundle as usage records, charged to its
account).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from matrixos.catalog.access import Principal
from matrixos.catalog.accounts import Accounts
from matrixos.jobs.runner import LocalPool, Pool, RayPool
from matrixos.jobs.service import JOBS_VIEW, JobService, jobs_table
from matrixos.jobs.specs import JobSpec, NodeSpec
from matrixos.jobs.store import JobInfo, JobStore, jobs_engine
from matrixos.metering import Meter, UsageRecord, degrees

if TYPE_CHECKING:
    from matrixos.catalog.service import TableService

__all__ = ["BillingMeter", "open_jobs", "register_jobs_view"]


class BillingMeter:
    """``Metering`` through ``matrixos.metering.Meter``: a job's cores, GPUs and memory per
    bundle as usage records (``system.billing.usage``), charged to its account. A GPU of no
    known type is priced as the unit's A100. The balance is reported only for an account that
    holds a prepaid package (was ever credited): the jobs of accounts billed afterwards are not
    stopped."""

    def __init__(self, meter: Meter) -> None:
        self.meter = meter

    def charge(
        self, job: JobInfo, nodes: Sequence[NodeSpec], start: float, end: float
    ) -> tuple[float, Decimal | float | None]:
        req = job.spec.get("request", {})
        cpus, gpus, mem = (
            float(req.get("cpus", 1)),
            int(req.get("gpus", 0)),
            float(req.get("memory_gb", 0)),
        )
        records = []

        def record(resource: str, quantity: float, node: str, accel: str | None = None) -> None:
            records.append(
                UsageRecord(
                    job.account,
                    job.principal,
                    resource=resource,
                    quantity=quantity,
                    start=start,
                    end=end,
                    accelerator=accel,
                    job_id=job.id,
                    node=node,
                )
            )

        for node in nodes:
            if cpus:
                record("cpu", cpus, node.id)
            if gpus:
                record("gpu", gpus, node.id, node.accelerator or "A100")
            if mem:
                record("memory", mem, node.id)
        if not records:
            return 0.0, None
        priced = [r.priced(self.meter.table) for r in records]
        balance = self.meter.record(priced)
        summary = self.meter.billing.summary(job.account)
        used = sum(r.degrees or 0.0 for r in priced)
        return used, (balance if summary.credited > 0 else None)

    def check_credit(self, account: str, degrees: float) -> None:
        """``OutOfCredit`` when ``account`` holds a prepaid package that cannot pay
        ``degrees`` (or is used up)."""
        if self.meter.billing.summary(account).credited > 0:
            self.meter.billing.check_affordable(account, degrees)

    def estimate(self, spec: JobSpec, nodes: Sequence[NodeSpec], seconds: float) -> float:
        """The most ``spec`` can cost in ``seconds`` on the dearest acceptable node type."""
        ok = [
            n for n in nodes if not spec.accelerators or (n.accelerator or "") in spec.accelerators
        ]
        gpu = 0.0
        if spec.gpus:
            gpu = max(
                (
                    degrees(
                        "gpu", n.accelerator or "A100", spec.gpus, seconds, table=self.meter.table
                    )
                    for n in ok
                    if n.gpus
                ),
                default=0.0,
            )
        cpu = degrees("cpu", None, spec.cpus, seconds, table=self.meter.table)
        mem = degrees("memory", None, spec.memory_gb, seconds, table=self.meter.table)
        return (gpu + cpu + mem) * spec.nodes


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
    own = meter is None  # a meter made here is stopped with the service
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
        on_close=[billing.meter.close] if own else [],
        **options,
    )


def register_jobs_view(service: TableService) -> None:
    """Make ``system.compute.jobs`` readable in SQL on ``service``: the jobs of the asking
    principal and of its groups' accounts (an admin: all), read from the queue when a query
    binds it."""
    store: list[JobStore] = []

    def rows(principal: Principal) -> pa.Table:
        if not store:
            store.append(JobStore(jobs_engine(service.catalog, service.settings.home)))
        return jobs_table(store[0], principal)

    service.register_view(JOBS_VIEW, rows)
