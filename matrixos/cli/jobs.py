"""``matrixos jobs submit|list|show|cancel|logs`` and ``matrixos reserve``: jobs on the compute
pool from the shell.

A command submits to, reads or cancels in the warehouse's queue (its catalog database); the
jobs run where a scheduler runs (``matrixos serve``, or an SDK session). ``submit --wait``
schedules in this process until the job ends, then prints its output.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated, Any

import typer

from matrixos.cli.common import fail, options
from matrixos.cli.output import OutputFormat, emit_table, jsonable

if TYPE_CHECKING:
    from matrixos.jobs.service import Jobs

#: ``matrixos jobs``: its sub-commands.
jobs_app = typer.Typer(
    help="Jobs on the compute pool: submit, list, show, cancel, logs.", no_args_is_help=True
)

_COLUMNS = (
    "id",
    "name",
    "kind",
    "state",
    "account",
    "principal",
    "priority",
    "position",
    "attempts",
)
_Format = Annotated[OutputFormat, typer.Option("--format", "-f", help="Output format.")]
_Compute = Annotated[
    str | None,
    typer.Option(
        "--compute",
        "-c",
        help="local, ray, ray://host:port or host:port (default: $MATRIXOS_COMPUTE).",
    ),
]


@contextlib.contextmanager
def _jobs(ctx: typer.Context, compute: str | None, *, schedule: bool) -> Iterator[Jobs]:
    """The queue as the CLI's user; ``schedule``: this process also runs the scheduler."""
    from matrixos.jobs.wiring import open_jobs
    from matrixos.session import connect as open_session

    opts = options(ctx)
    with open_session(
        opts.warehouse, catalog_url=opts.catalog_url, compute=compute, create=schedule
    ) as lh:
        svc = open_jobs(
            lh.service,
            ray=lh.compute.is_ray,
            connect={"warehouse": lh.settings.warehouse, "catalog_url": lh.settings.catalog_url},
            schedule=schedule,
        )
        try:
            yield svc.for_principal(lh.principal)
        finally:
            svc.close()


@jobs_app.command("submit")
def submit(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(help="A script (.py) or, with --sql, a SQL statement.")],
    args: Annotated[list[str] | None, typer.Argument(help="The script's arguments.")] = None,
    sql: Annotated[bool, typer.Option("--sql", help="TARGET is a SQL statement.")] = False,
    module: Annotated[
        bool, typer.Option("--module", "-m", help="TARGET is a module to run (python -m).")
    ] = False,
    cpus: Annotated[float, typer.Option(help="CPUs per node.")] = 1,
    gpus: Annotated[int, typer.Option(help="GPUs per node.")] = 0,
    memory: Annotated[float, typer.Option(help="Memory per node, GB.")] = 0,
    nodes: Annotated[int, typer.Option(help="Nodes (the gang: all start together or none).")] = 1,
    accelerator: Annotated[
        list[str] | None, typer.Option("--accelerator", "-a", help="An acceptable type (repeat).")
    ] = None,
    account: Annotated[str | None, typer.Option(help="Who pays (default: you).")] = None,
    priority: Annotated[
        str, typer.Option(help="low, normal, high, urgent or an integer.")
    ] = "normal",
    max_runtime: Annotated[str | None, typer.Option(help="e.g. 90s, 2h.")] = None,
    max_degrees: Annotated[float | None, typer.Option(help="Cost cap in degrees.")] = None,
    strategy: Annotated[str, typer.Option(help="PACK, SPREAD or STRICT_SPREAD.")] = "PACK",
    name: Annotated[str | None, typer.Option(help="A name to show.")] = None,
    env: Annotated[
        list[str] | None, typer.Option("--env", "-e", help="KEY=VALUE (repeat).")
    ] = None,
    working_dir: Annotated[str | None, typer.Option(help="The folder the script runs in.")] = None,
    wait: Annotated[
        bool, typer.Option("--wait", "-w", help="Schedule here until it ends; print its output.")
    ] = False,
    compute: _Compute = None,
) -> None:
    """Queue a job: a Python script with its arguments, a module (-m) or a SQL statement (--sql).

    Example: ``matrixos jobs submit train.py --epochs 3 --gpus 8 --nodes 2 -a H100``
    """
    variables = {}
    for item in env or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--env {item!r}: write KEY=VALUE")
        variables[key] = value
    prio: int | str = int(priority) if priority.lstrip("-").isdigit() else priority
    what: Any = target if not module else ["-m", target]
    with _jobs(ctx, compute, schedule=wait) as jobs:
        job = jobs.submit(
            what,
            *(args or []),
            kind="sql" if sql else "entrypoint",
            cpus=cpus,
            gpus=gpus,
            memory=memory,
            nodes=nodes,
            accelerators=accelerator or (),
            account=account,
            priority=prio,
            max_runtime=max_runtime,
            max_degrees=max_degrees,
            strategy=strategy,
            name=name,
            env=variables,
            working_dir=working_dir,
        )
        if not wait:
            typer.echo(f"{job.id} QUEUED")
            return
        state = job.wait()
        sys.stdout.write(job.logs())
        typer.echo(f"{job.id} {state}" + (f": {job.error}" if job.error else ""))
        if state != "SUCCEEDED":
            raise typer.Exit(1)


@jobs_app.command("list")
def list_jobs(
    ctx: typer.Context,
    state: Annotated[str | None, typer.Option(help="Only jobs in this state.")] = None,
    account: Annotated[str | None, typer.Option(help="Only this account's jobs.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
    format: _Format = OutputFormat.table,
) -> None:
    """List jobs (yours and your groups'; an admin sees all), newest first."""
    import pyarrow as pa

    with _jobs(ctx, "local", schedule=False) as jobs:
        rows = jobs.list(state=state.upper() if state else None, account=account, limit=limit)
    table = pa.table({c: [getattr(r, c) for r in rows] for c in _COLUMNS})
    emit_table(table, format, empty="no jobs")


@jobs_app.command("show")
def show(ctx: typer.Context, job_id: str, format: _Format = OutputFormat.table) -> None:
    """One job: its request, state, times, exit code, error, nodes and degrees."""
    with _jobs(ctx, "local", schedule=False) as jobs:
        info = jobs.get(job_id).info()
    data = {k: jsonable(v) for k, v in info.as_dict().items()}
    for k in ("submitted_at", "started_at", "ended_at", "eta"):
        if data.get(k) is not None:
            data[k] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(data[k])) + " UTC"
    if format is OutputFormat.json:
        typer.echo(json.dumps(data, default=str))
        return
    width = max(map(len, data))
    for k, v in data.items():
        typer.echo(f"{k:<{width}}  {json.dumps(v) if isinstance(v, dict | list) else v}")


@jobs_app.command("cancel")
def cancel(ctx: typer.Context, job_id: str) -> None:
    """Cancel a job: a queued one at once, a running one by SIGTERM, grace, SIGKILL."""
    with _jobs(ctx, "local", schedule=False) as jobs:
        done = jobs.cancel(job_id)
        state = jobs.get(job_id).status
    typer.echo(f"{job_id} {'cancel requested' if done and state != 'CANCELED' else state}")


@jobs_app.command("logs")
def logs(
    ctx: typer.Context,
    job_id: str,
    tail: Annotated[int | None, typer.Option(help="Only the last N lines.")] = None,
) -> None:
    """A job's output (stdout and stderr; ranks prefixed for gangs)."""
    with _jobs(ctx, "local", schedule=False) as jobs:
        sys.stdout.write(jobs.get(job_id).logs(tail=tail))


def reserve(
    ctx: typer.Context,
    gpus: Annotated[int, typer.Option(help="How many GPUs.")],
    start: Annotated[
        str, typer.Option(help="ISO time (UTC unless it says), e.g. 2026-12-06T08:00.")
    ],
    duration: Annotated[str, typer.Option(help="e.g. 2h, 90m.")],
    accelerator: Annotated[str | None, typer.Option(help="Their type, e.g. H100.")] = None,
    account: Annotated[str | None, typer.Option(help="Who it is for (default: you).")] = None,
    compute: _Compute = None,
) -> None:
    """Book GPUs for a future window; refused with the earliest free window when none fits.

    Example: ``matrixos reserve --gpus 8 --accelerator H100 --start 2026-12-06T08:00 --duration 2h``
    """
    with _jobs(ctx, compute, schedule=False) as jobs:
        r = jobs.reserve(
            gpus=gpus, accelerator=accelerator, start=start, duration=duration, account=account
        )
    fmt = "%Y-%m-%d %H:%M:%S UTC"
    typer.echo(
        f"reservation {r.id}: {r.gpus} {r.accelerator or 'GPU'}(s) for {r.account}, "
        f"{time.strftime(fmt, time.gmtime(r.start))} to {time.strftime(fmt, time.gmtime(r.end))}"
    )
