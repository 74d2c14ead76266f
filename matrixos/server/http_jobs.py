"""Job routes of ``matrixos serve``: submit, list, read, cancel jobs and book reservations,
as the authenticated principal. The server's process runs the scheduler (``lh.jobs``).

```
POST /api/2.0/jobs                    {"sql": "…"} | {"entrypoint": ["train.py", "--x"]}, resources…
GET  /api/2.0/jobs[?state=&account=&limit=]
GET  /api/2.0/jobs/{id}
GET  /api/2.0/jobs/{id}/logs[?tail=N]     text/plain
POST /api/2.0/jobs/{id}/cancel
POST /api/2.0/reservations            {"gpus", "accelerator", "start", "duration", "account"}
```

A bad request is ``400`` naming the field (``"field": "gpus"``); an account that cannot pay,
``402`` with the numbers; an unknown job, ``404``. SQL jobs run as the principal (sandboxed,
its grants checked); an entrypoint is a program run on the pool as the server's OS user, so
only admins may submit one. Python callables travel only through the SDK (a pickle is code).
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations (the
# principal dependency is a local of jobs_router).
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Query
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, Field

from matrixos.errors import AccessDenied, JobError
from matrixos.jobs.store import JobInfo

if TYPE_CHECKING:
    from matrixos.jobs.service import Jobs
    from matrixos.session import Lakehouse


class JobRequest(BaseModel):
    """A job to queue: ``sql`` or ``entrypoint`` (a script or ``-m module`` and its
    arguments), with the resources and limits of ``lh.jobs.submit``."""

    sql: str | None = None
    entrypoint: list[str] | None = None
    dialect: str | None = None
    env: dict[str, str] = Field(default_factory=dict)
    working_dir: str | None = None
    name: str | None = None
    cpus: float = 1
    gpus: int = 0
    memory: float = 0
    nodes: int = 1
    accelerators: list[str] = Field(default_factory=list)
    min_gpu_memory: float = 0
    bf16: bool = False
    account: str | None = None
    priority: int | str = 0
    max_runtime: str | float | None = None
    max_degrees: float | None = None
    strategy: str = "PACK"


class ReservationRequest(BaseModel):
    gpus: int
    start: str | float
    duration: str | float
    accelerator: str | None = None
    cpus: float = 0
    account: str | None = None


def job_json(info: JobInfo) -> dict[str, Any]:
    """A job as the API shows it (times in epoch seconds)."""
    out = info.as_dict()
    out.pop("cancel_requested", None)
    out.pop("scheduler", None)
    return out


def jobs_router(lakehouse: "Lakehouse", user: Any) -> APIRouter:
    """The job routes over ``lakehouse``'s queue (``user``: create_app's authenticated-principal
    dependency)."""
    router = APIRouter(tags=["jobs"])

    def jobs(principal: Any) -> "Jobs":
        return lakehouse.with_principal(principal).jobs

    @router.post("/api/2.0/jobs")
    def submit(body: JobRequest, principal: user) -> dict[str, Any]:  # type: ignore[valid-type]
        """Queue a SQL statement or an entrypoint; the job as queued."""
        if (body.sql is None) == (body.entrypoint is None):
            raise JobError("give either sql or entrypoint", field="sql")
        if body.entrypoint is not None and not principal.is_admin:
            # An entrypoint is a program run on the pool's machines as the server's OS user.
            raise AccessDenied(
                f"{principal.name} may not run entrypoints: only admins may",
                hint="submit a SQL job, or ask an admin",
            )
        target: Any = body.sql if body.sql is not None else body.entrypoint
        job = jobs(principal).submit(
            target,
            kind="sql" if body.sql is not None else "entrypoint",
            dialect=body.dialect,
            env=body.env,
            working_dir=body.working_dir,
            name=body.name,
            cpus=body.cpus,
            gpus=body.gpus,
            memory=body.memory,
            nodes=body.nodes,
            accelerators=body.accelerators,
            min_gpu_memory=body.min_gpu_memory,
            bf16=body.bf16,
            account=body.account,
            priority=body.priority,
            max_runtime=body.max_runtime,
            max_degrees=body.max_degrees,
            strategy=body.strategy,
        )
        return job_json(job.info())

    @router.get("/api/2.0/jobs")
    def list_jobs(
        principal: user,  # type: ignore[valid-type]
        state: str | None = Query(None),
        account: str | None = Query(None),
        limit: int = Query(100, ge=1, le=10_000),
    ) -> dict[str, Any]:
        """The jobs the caller may see, newest first."""
        rows = jobs(principal).list(state=state, account=account, limit=limit)
        return {"jobs": [job_json(r) for r in rows]}

    @router.get("/api/2.0/jobs/{job_id}")
    def get(job_id: str, principal: user) -> dict[str, Any]:  # type: ignore[valid-type]
        return job_json(jobs(principal).get(job_id).info())

    @router.get("/api/2.0/jobs/{job_id}/logs", response_class=PlainTextResponse)
    def logs(
        job_id: str,
        principal: user,  # type: ignore[valid-type]
        tail: int | None = Query(None, ge=1),
    ) -> str:
        """The job's output so far."""
        return jobs(principal).get(job_id).logs(tail=tail)

    @router.post("/api/2.0/jobs/{job_id}/cancel")
    def cancel(job_id: str, principal: user) -> dict[str, Any]:  # type: ignore[valid-type]
        """Cancel the job (queued: at once; running: SIGTERM, grace, SIGKILL)."""
        api = jobs(principal)
        api.cancel(job_id)
        return job_json(api.get(job_id).info())

    @router.post("/api/2.0/reservations")
    def reserve(body: ReservationRequest, principal: user) -> dict[str, Any]:  # type: ignore[valid-type]
        """Book GPUs for a window; 400 with ``earliest`` when it is not free."""
        r = jobs(principal).reserve(
            gpus=body.gpus,
            start=body.start,
            duration=body.duration,
            accelerator=body.accelerator,
            cpus=body.cpus,
            account=body.account,
        )
        return {f: getattr(r, f) for f in r.__dataclass_fields__}

    return router
