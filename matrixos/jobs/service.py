"""Jobs on the compute pool: ``lh.jobs.submit(…)``, their handles, the queue, reservations.

A job is a SQL statement, a Python callable (with its arguments: pipelines such as
``map_batches``, ``rag.index`` or an ingest are callables too) or a Python entrypoint (a script
or ``-m module`` with arguments, environment variables and a working folder). It asks for CPUs,
memory and GPUs per node, a number of nodes (the gang: all start together or none does),
acceptable accelerator types or constraints (GPU memory, BF16), a priority, the account that
pays, a max runtime and a cost cap in degrees. Bad requests are refused at submit with a
``JobError`` naming the field; an account that cannot pay, with ``OutOfCredit``.

States: QUEUED (with position and ETA) → STARTING → RUNNING → SUCCEEDED / FAILED / CANCELED /
OUT_OF_CREDIT; PREEMPTED while a higher-priority job takes its place (then QUEUED again). The
queue lives in the catalog database (``matrixos.jobs.store``), so any process of the
warehouse may submit, watch and cancel; the scheduler runs in one of them
(``matrixos.jobs.scheduler``). Each job's output is kept in ``$MATRIXOS_HOME/jobs/<id>.log``.

Example:
    >>> import tempfile, matrixos as mx
    >>> lh = mx.connect(tempfile.mkdtemp())
    >>> job = lh.jobs.submit(sum, [1, 2, 3], cpus=1)
    >>> job.wait(timeout=60), job.result()
    ('SUCCEEDED', 6)
    >>> lh.close()
"""

from __future__ import annotations

import builtins
import contextlib
import math
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa

from matrixos.catalog.access import Principal
from matrixos.catalog.accounts import Accounts, parse_duration
from matrixos.errors import AccessDenied, AccountNotFound, ConfigError, JobError, JobNotFound
from matrixos.jobs.policy import POLICIES, earliest_window, validate
from matrixos.jobs.runner import Pool
from matrixos.jobs.scheduler import Metering, Scheduler, job_spec, wait_for
from matrixos.jobs.specs import STRATEGIES, JobSpec, NodeSpec, Reservation, RunningJob
from matrixos.jobs.store import ACTIVE, ENDED, JobInfo, JobStore, ReservationRow

__all__ = ["JOBS_SCHEMA", "JOBS_VIEW", "PRIORITIES", "Job", "JobService", "Jobs", "jobs_table"]

#: Named priorities (any integer works too; higher runs first and may preempt lower).
PRIORITIES = {"low": -10, "normal": 0, "high": 10, "urgent": 20}
#: The SQL name of the jobs a principal may see.
JOBS_VIEW = "system.compute.jobs"
#: The columns of ``system.compute.jobs``.
JOBS_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("name", pa.string()),
        ("kind", pa.string()),
        ("state", pa.string()),
        ("account", pa.string()),
        ("principal", pa.string()),
        ("priority", pa.int64()),
        ("cpus", pa.float64()),
        ("gpus", pa.int64()),
        ("nodes", pa.int64()),
        ("accelerators", pa.list_(pa.string())),
        ("submitted_at", pa.timestamp("us", tz="UTC")),
        ("started_at", pa.timestamp("us", tz="UTC")),
        ("ended_at", pa.timestamp("us", tz="UTC")),
        ("position", pa.int64()),
        ("eta", pa.timestamp("us", tz="UTC")),
        ("exit_code", pa.int64()),
        ("error", pa.string()),
        ("attempts", pa.int64()),
        ("placed_on", pa.list_(pa.string())),
        ("degrees", pa.float64()),
    ]
)


def jobs_table(store: JobStore, principal: Principal) -> pa.Table:
    """``system.compute.jobs`` as ``principal`` sees it: their own jobs, and their groups'
    accounts' (an admin sees every job)."""
    rows = (
        store.list()
        if principal.is_admin
        else [
            r
            for r in store.list()
            if r.principal == principal.name or r.account in principal.groups
        ]
    )
    out = []
    for r in rows:
        req = r.spec.get("request", {})
        out.append(
            {
                "id": r.id,
                "name": r.name,
                "kind": r.kind,
                "state": r.state,
                "account": r.account,
                "principal": r.principal,
                "priority": r.priority,
                "cpus": float(req.get("cpus", 1)),
                "gpus": int(req.get("gpus", 0)),
                "nodes": int(req.get("nodes", 1)),
                "accelerators": list(req.get("accelerators", [])),
                "submitted_at": _ts(r.submitted_at),
                "started_at": _ts(r.started_at),
                "ended_at": _ts(r.ended_at),
                "position": r.position if r.state == "QUEUED" else None,
                "eta": _ts(r.eta) if r.state == "QUEUED" else None,
                "exit_code": r.exit_code,
                "error": r.error,
                "attempts": r.attempts,
                "placed_on": list(r.nodes),
                "degrees": r.degrees,
            }
        )
    return pa.Table.from_pylist(out, schema=JOBS_SCHEMA)


def _ts(t: float | None) -> datetime | None:
    return datetime.fromtimestamp(t, UTC) if t is not None else None


class Job:
    """A handle on one job; every property reads its current row."""

    def __init__(self, jobs: Jobs, job_id: str) -> None:
        self._jobs = jobs
        self.id = job_id

    def __repr__(self) -> str:
        return f"Job({self.id!r}, {self.status})"

    def info(self) -> JobInfo:
        """The job's row (state, times, exit code, error, attempts, nodes, degrees…)."""
        return self._jobs._row(self.id)

    @property
    def status(self) -> str:
        return self.info().state

    @property
    def position(self) -> int | None:
        """Its place in the queue (1: next to start) while QUEUED, else None."""
        row = self.info()
        return row.position if row.state == "QUEUED" else None

    @property
    def eta(self) -> datetime | None:
        """When it is expected to start, while QUEUED."""
        row = self.info()
        return _ts(row.eta) if row.state == "QUEUED" else None

    @property
    def exit_code(self) -> int | None:
        return self.info().exit_code

    @property
    def error(self) -> str | None:
        return self.info().error

    def logs(self, tail: int | None = None) -> str:
        """Its output so far (the last ``tail`` lines when given)."""
        row = self.info()
        text = ""
        if row.log_path:
            with contextlib.suppress(FileNotFoundError):
                text = Path(row.log_path).read_text(errors="replace")
        if tail is not None:
            text = "".join(text.splitlines(keepends=True)[-tail:])
        return text

    def wait(self, timeout: float | None = None) -> str:
        """Wait until it ends; its final state. ``JobError`` after ``timeout`` seconds."""
        self._jobs.service.ensure_scheduler()
        if not wait_for(lambda: self.status in ENDED, timeout):
            raise JobError(
                f"job {self.id} is still {self.status} after {timeout:g} s",
                hint="wait longer, or job.cancel()",
            )
        return self.status

    def cancel(self) -> bool:
        """Cancel it: a queued job at once, a running one by SIGTERM, a grace period and
        SIGKILL. False when it had already ended."""
        return self._jobs.cancel(self.id)

    def result(self) -> Any:
        """What a Python job returned (a SQL job: its rows as an Arrow table). ``JobError``
        unless it SUCCEEDED."""
        row = self.info()
        if row.state != "SUCCEEDED":
            why = f": {row.error}" if row.error else ""
            raise JobError(f"job {self.id} is {row.state}{why}", hint="job.wait() first")
        data = self._jobs.service.store.result(self.id)
        if data is None:
            return None
        import cloudpickle

        return cloudpickle.loads(data)


class JobService:
    """The queue and scheduler of one warehouse (``lh.jobs`` is a view of it for a principal).

    ``pool``: where jobs run (``LocalPool`` or ``RayPool``); ``connect``: ``mx.connect``
    arguments for a SQL job's process; ``check_credit(account, degrees)`` raises
    ``OutOfCredit`` when an account cannot pay; ``metering`` charges usage while jobs run.
    ``schedule=False``: this process only submits and reads (a CLI command); another runs
    the queue. ``on_close``: what ``close`` also stops (a meter made for this service).
    ``policy_options`` go to the policy (e.g. ``preempt_after_s``); scheduler options
    (``tick_s``, ``grace_s``, ``meter_interval_s``, ``max_attempts``…) to ``Scheduler``.
    """

    def __init__(
        self,
        store: JobStore,
        pool: Pool,
        *,
        accounts: Accounts,
        log_dir: str,
        connect: Mapping[str, Any],
        policy: str = "priority_preempt",
        policy_options: Mapping[str, Any] | None = None,
        metering: Metering | None = None,
        check_credit: Callable[[str, float], None] | None = None,
        degrees_of: Callable[[JobSpec, Sequence[NodeSpec], float], float] | None = None,
        schedule: bool = True,
        on_close: Sequence[Callable[[], object]] = (),
        **scheduler: Any,
    ) -> None:
        if policy not in POLICIES:
            raise ConfigError(f"unknown scheduling policy {policy!r}", hint=", ".join(POLICIES))
        self.store = store
        self.pool = pool
        self.accounts = accounts
        self.connect = dict(connect)
        self.check_credit = check_credit
        self.degrees_of = degrees_of
        # The policy plans with the grace period the scheduler gives preempted jobs.
        options = {"grace_s": scheduler.get("grace_s", 10.0), **(policy_options or {})}
        self.scheduler = Scheduler(
            store,
            pool,
            POLICIES[policy](**options),
            log_dir=log_dir,
            metering=metering,
            **scheduler,
        )
        self.schedule = schedule
        self.on_close = list(on_close)
        self._started = False
        self._lock = threading.Lock()

    def ensure_scheduler(self) -> None:
        """Start this process's scheduler loop (it schedules while it holds the lease)."""
        if not self._started and self.schedule:
            with self._lock:
                if not self._started:
                    self.scheduler.start()
                    self._started = True

    def close(self) -> None:
        """Stop this process's scheduler (its running jobs are queued again for the next
        one), then what ``on_close`` names."""
        if self._started:
            self.scheduler.close()
            self._started = False
        closing, self.on_close = self.on_close, []
        for stop in closing:
            stop()

    def for_principal(self, principal: Principal) -> Jobs:
        return Jobs(self, principal)

    def jobs_table(self, principal: Principal) -> pa.Table:
        """``system.compute.jobs`` as ``principal`` sees it (see ``jobs_table``)."""
        return jobs_table(self.store, principal)


class Jobs:
    """``lh.jobs``: submit, list, get and cancel jobs and book reservations, as one principal."""

    def __init__(self, service: JobService, principal: Principal) -> None:
        self.service = service
        self.principal = principal

    def __repr__(self) -> str:
        return f"Jobs(principal={self.principal.name!r})"

    # -- submit -----------------------------------------------------------------------------
    def submit(
        self,
        target: Callable[..., Any] | str | Sequence[str],
        *args: Any,
        cpus: float = 1,
        gpus: int = 0,
        memory: float = 0,
        nodes: int = 1,
        accelerators: Sequence[str] | str = (),
        min_gpu_memory: float = 0,
        bf16: bool = False,
        account: str | None = None,
        priority: int | str = 0,
        max_runtime: str | float | timedelta | None = None,
        expected_runtime: str | float | timedelta | None = None,
        max_degrees: float | None = None,
        strategy: str = "PACK",
        objective: str = "cost",
        deadline: str | float | timedelta | None = None,
        name: str | None = None,
        kind: str | None = None,
        kwargs: Mapping[str, Any] | None = None,
        env: Mapping[str, str] | None = None,
        working_dir: str | None = None,
        dialect: str | None = None,
    ) -> Job:
        """Queue a job and return its handle.

        ``target``: a callable (run with ``*args`` and ``kwargs``), a SQL statement, or an
        entrypoint: a script path ending in ``.py`` (``*args`` are its arguments) or an argv
        list (``["train.py", "--epochs", "3"]``, ``["-m", "pkg.train"]``); ``kind`` forces
        ``python``, ``sql`` or ``entrypoint``. Resources are per node: ``cpus``, ``gpus``,
        ``memory`` (GB); ``nodes`` is the gang size and ``strategy`` ``PACK``, ``SPREAD`` or
        ``STRICT_SPREAD``. ``accelerators``: acceptable types (``["H100", "A100"]``), or
        constraints ``min_gpu_memory`` (GB) and ``bf16``. ``priority``: an integer or
        ``low``/``normal``/``high``/``urgent``. ``account``: who pays (default: the
        principal's own name). ``max_runtime``: ``"2h"``, ``"90s"`` or seconds (the job is
        stopped past it); ``max_degrees``: its cost cap.

        Raises:
            JobError: a bad request, naming the field (``e.field``).
            AccessDenied: ``account`` is a group the principal is not a member of.
            OutOfCredit: the account's balance cannot pay the job's cap or estimate.
        """
        svc = self.service
        kind, entry, payload = self._what(target, args, kind, kwargs, env, working_dir, dialect)
        account = account or self.principal.name
        self._check_account(account)
        req = _request(
            cpus=cpus,
            gpus=gpus,
            memory=memory,
            nodes=nodes,
            accelerators=accelerators,
            min_gpu_memory=min_gpu_memory,
            bf16=bf16,
            max_runtime=max_runtime,
            expected_runtime=expected_runtime,
            strategy=strategy,
            objective=objective,
            deadline=deadline,
        )
        prio = _priority(priority)
        if max_degrees is not None and not max_degrees > 0:
            raise JobError(
                f"max_degrees must be positive, not {max_degrees!r}", field="max_degrees"
            )
        job_id = uuid.uuid4().hex[:16]
        now = time.time()
        spec = JobSpec(
            id=job_id, account=account, priority=prio, submitted_at=now, kind=kind, **req
        )
        pool_nodes = svc.scheduler.nodes()
        _validate(spec, pool_nodes)
        if svc.check_credit is not None:
            estimate = max_degrees
            if estimate is None and svc.degrees_of is not None and spec.max_runtime_s:
                estimate = svc.degrees_of(spec, pool_nodes, spec.max_runtime_s)
            svc.check_credit(account, float(estimate or 0.0))
        row = JobInfo(
            id=job_id,
            name=name or _default_name(target, kind, entry),
            kind=kind,
            account=account,
            principal=self.principal.name,
            spec={
                "request": {**req, "accelerators": list(req["accelerators"])},
                "entry": entry,
                "max_degrees": max_degrees,
            },
            priority=prio,
            submitted_at=now,
        )
        svc.store.insert(row, payload)
        svc.ensure_scheduler()
        svc.scheduler.wake()
        return Job(self, job_id)

    def _what(
        self,
        target: Any,
        args: tuple[Any, ...],
        kind: str | None,
        kwargs: Mapping[str, Any] | None,
        env: Mapping[str, str] | None,
        working_dir: str | None,
        dialect: str | None,
    ) -> tuple[str, dict[str, Any], bytes | None]:
        import cloudpickle

        entry: dict[str, Any] = {"env": dict(env or {}), "cwd": working_dir}
        if working_dir is not None and not Path(working_dir).is_dir():
            raise JobError(f"working_dir {working_dir!r} is not a folder", field="working_dir")
        if kind is None:
            if callable(target):
                kind = "python"
            elif isinstance(target, str) and not target.strip().endswith(".py"):
                kind = "sql"
            else:
                kind = "entrypoint"
        if kind == "python":
            if not callable(target):
                raise JobError(
                    f"a python job needs a callable, not {type(target).__name__}", field="target"
                )
            # The submitter's import path, so the worker finds the callable's module.
            paths = [p for p in sys.path if p and os.path.isdir(p)]
            entry["env"].setdefault("PYTHONPATH", os.pathsep.join(paths))
            try:
                payload = cloudpickle.dumps(
                    {"kind": "python", "fn": target, "args": args, "kwargs": dict(kwargs or {})}
                )
            except Exception as e:
                raise JobError(
                    f"the callable or its arguments cannot be pickled: {type(e).__name__}: {e}",
                    field="target",
                ) from e
            return kind, entry, payload
        if kind == "sql":
            if not isinstance(target, str) or not target.strip():
                raise JobError("a sql job needs the statement's text", field="target")
            if args or kwargs:
                raise JobError("a sql job takes no arguments", field="args")
            p = self.principal
            payload = cloudpickle.dumps(
                {
                    "kind": "sql",
                    "sql": target,
                    "dialect": dialect,
                    "connect": self.service.connect,
                    "principal": {
                        "name": p.name,
                        "grants": sorted(p.grants),
                        "groups": sorted(p.groups),
                    },
                }
            )
            entry["sql"] = target
            return kind, entry, payload
        if kind != "entrypoint":
            raise JobError(
                f"unknown job kind {kind!r}", field="kind", hint="python, sql or entrypoint"
            )
        argv = (
            [target, *map(str, args)]
            if isinstance(target, str)
            else [*map(str, target), *map(str, args)]
        )
        if not argv:
            raise JobError("an entrypoint job needs a script or -m module", field="target")
        if argv[0] == "-m":
            if len(argv) < 2:
                raise JobError("'-m' needs a module name", field="target")
        else:
            base = Path(working_dir or ".")
            script = Path(argv[0]) if Path(argv[0]).is_absolute() else base / argv[0]
            if not script.is_file():
                raise JobError(f"no script at {script}", field="target")
            argv[0] = str(script.resolve())
        entry["argv"] = argv
        return kind, entry, None

    def _check_account(self, account: str) -> None:
        p = self.principal
        if account == p.name:
            return
        try:
            self.service.accounts.get(account)
        except AccountNotFound:
            raise JobError(
                f"unknown account {account!r}",
                field="account",
                hint="create it (matrixos accounts create) or name an existing one",
            ) from None
        if not p.is_admin and account not in p.groups:
            raise AccessDenied(
                f"{p.name} may not charge account {account!r}: not a member of it",
                hint="ask an admin to add you to the group",
            )

    # -- reading ----------------------------------------------------------------------------
    def _row(self, job_id: str) -> JobInfo:
        row = self.service.store.get(job_id)
        if row is None or not self._visible(row):
            raise JobNotFound(f"no job {job_id!r}", field="id", hint="matrixos jobs list")
        return row

    def _visible(self, row: JobInfo) -> bool:
        p = self.principal
        return p.is_admin or row.principal == p.name or row.account in p.groups

    def get(self, job_id: str) -> Job:
        """The job ``job_id`` (yours, your groups', or any for an admin); ``JobError``."""
        self._row(job_id)
        self.service.ensure_scheduler()
        return Job(self, job_id)

    def list(
        self,
        *,
        state: str | Sequence[str] | None = None,
        account: str | None = None,
        limit: int | None = None,
    ) -> list[JobInfo]:
        """Jobs you may see, newest first (only in ``state``, of ``account`` when given)."""
        states = [state] if isinstance(state, str) else state
        rows = self.service.store.list(states=states, account=account)
        out = [r for r in rows if self._visible(r)]
        return out[:limit] if limit is not None else out

    def cancel(self, job_id: str) -> bool:
        """Cancel job ``job_id`` (see ``Job.cancel``)."""
        row = self._row(job_id)
        store = self.service.store
        if row.state in ENDED:
            return False
        if store.transition(job_id, {"QUEUED"}, "CANCELED", ended_at=time.time(), error="canceled"):
            return True
        store.update(job_id, cancel_requested=True)
        self.service.ensure_scheduler()
        self.service.scheduler.wake()
        return True

    # -- reservations -----------------------------------------------------------------------
    def reserve(
        self,
        *,
        gpus: int,
        start: str | float | datetime,
        duration: str | float | timedelta,
        accelerator: str | None = None,
        cpus: float = 0,
        account: str | None = None,
    ) -> ReservationRow:
        """Book ``gpus`` of ``accelerator`` from ``start`` (ISO time, datetime or epoch
        seconds) for ``duration``. Refused with ``JobError`` (``e.earliest``: the earliest
        start that fits) when the window is not free."""
        if not isinstance(gpus, int) or gpus <= 0:
            raise JobError(f"gpus must be a positive integer, not {gpus!r}", field="gpus")
        account = account or self.principal.name
        self._check_account(account)
        begin = _when(start)
        try:
            length = parse_duration(duration).total_seconds()
        except ConfigError as e:
            raise JobError(e.message, field="duration", hint=e.hint) from None
        try:
            _ts(begin + length)
        except (OverflowError, ValueError, OSError):
            raise JobError(
                f"a reservation of {length:g} s from {start!r} ends after the year 9999",
                field="duration",
            ) from None
        if isinstance(cpus, bool) or not isinstance(cpus, int | float) or not 0 <= cpus < math.inf:
            raise JobError(f"cpus must be a finite number ≥ 0, not {cpus!r}", field="cpus")
        svc = self.service
        nodes = svc.scheduler.nodes()
        probe = JobSpec(
            id="reservation",
            account=account,
            cpus=0,
            gpus=gpus,
            accelerators=(accelerator,) if accelerator else (),
        )
        _validate(probe, nodes)
        now = time.time()
        running = [
            RunningJob(job_spec(r), tuple(r.nodes), r.started_at or now, _ends_by(r, now))
            for r in svc.store.list(states=ACTIVE)
        ]
        booked = [
            Reservation(x.id, x.account, x.gpus, x.accelerator, x.start, x.end, x.cpus)
            for x in svc.store.reservations(after=now)
        ]
        earliest = earliest_window(
            gpus, accelerator, length, max(begin, now), nodes, running, booked
        )
        if earliest == float("inf"):
            raise JobError(
                f"the pool never has {gpus} {accelerator or 'GPU'}s free for {length:g} s",
                field="gpus",
                hint="ask for fewer GPUs",
            )
        if earliest > max(begin, now) + 1e-6:
            when = _ts(earliest)
            raise JobError(
                f"{gpus} {accelerator or 'GPU'}s are not free for {length:g} s from "
                f"{_ts(begin):%Y-%m-%d %H:%M:%S} UTC; the earliest window starts "
                f"{when:%Y-%m-%d %H:%M:%S} UTC",
                field="start",
                earliest=earliest,
                hint="reserve from the earliest start, or fewer GPUs",
            )
        row = ReservationRow(
            id=uuid.uuid4().hex[:16],
            account=account,
            principal=self.principal.name,
            gpus=gpus,
            accelerator=accelerator,
            start=begin,
            end=begin + length,
            cpus=float(cpus),
            created_at=now,
        )
        svc.store.add_reservation(row)
        svc.scheduler.wake()
        return row

    def reservations(self) -> builtins.list[ReservationRow]:
        """Reservations not over yet."""
        return self.service.store.reservations(after=time.time())


# -- request checks -----------------------------------------------------------------------------
def _seconds(value: str | float | timedelta | None, field: str) -> float | None:
    if value is None:
        return None
    try:
        return parse_duration(value).total_seconds()
    except ConfigError as e:
        raise JobError(f"{field}: {e.message}", field=field, hint=e.hint) from None


def _request(**r: Any) -> dict[str, Any]:
    """The policy's request fields, each checked (``JobError`` naming the field)."""
    cpus, gpus, memory, nodes = r["cpus"], r["gpus"], r["memory"], r["nodes"]
    if isinstance(cpus, bool) or not isinstance(cpus, int | float) or cpus < 0:
        raise JobError(f"cpus must be a number ≥ 0, not {cpus!r}", field="cpus")
    if isinstance(gpus, bool) or not isinstance(gpus, int) or gpus < 0:
        raise JobError(f"gpus must be a whole number ≥ 0, not {gpus!r}", field="gpus")
    if isinstance(memory, bool) or not isinstance(memory, int | float) or memory < 0:
        raise JobError(f"memory must be a number of GB ≥ 0, not {memory!r}", field="memory")
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
        raise JobError(f"nodes must be a whole number ≥ 1, not {nodes!r}", field="nodes")
    if cpus == 0 and gpus == 0:
        raise JobError("a job needs at least one CPU or GPU", field="cpus")
    accels = (
        (r["accelerators"],) if isinstance(r["accelerators"], str) else tuple(r["accelerators"])
    )
    if r["strategy"] not in STRATEGIES:
        raise JobError(
            f"unknown strategy {r['strategy']!r}", field="strategy", hint=", ".join(STRATEGIES)
        )
    if r["objective"] not in ("cost", "latency"):
        raise JobError(
            f"unknown objective {r['objective']!r}", field="objective", hint="cost or latency"
        )
    if r["min_gpu_memory"] < 0:
        raise JobError("min_gpu_memory must be ≥ 0", field="min_gpu_memory")
    return {
        "cpus": float(cpus),
        "gpus": gpus,
        "memory_gb": float(memory),
        "nodes": nodes,
        "accelerators": accels,
        "min_gpu_memory_gb": float(r["min_gpu_memory"]),
        "bf16": bool(r["bf16"]),
        "max_runtime_s": _seconds(r["max_runtime"], "max_runtime"),
        "expected_runtime_s": _seconds(r["expected_runtime"], "expected_runtime"),
        "strategy": r["strategy"],
        "objective": r["objective"],
        "deadline_s": _seconds(r["deadline"], "deadline"),
    }


def _validate(spec: JobSpec, nodes: Sequence[NodeSpec]) -> None:
    """The policy's checks of a request against the pool (``JobError`` naming the field)."""
    try:
        validate(spec, nodes)
    except JobError as e:  # the policy names the job; a refused request has no id yet
        raise JobError(
            e.message.removeprefix(f"job {spec.id}: "), field=e.field, hint=e.hint
        ) from None


def _priority(value: int | str) -> int:
    if isinstance(value, str):
        if value.lower() not in PRIORITIES:
            raise JobError(
                f"unknown priority {value!r}", field="priority", hint=", ".join(PRIORITIES)
            )
        return PRIORITIES[value.lower()]
    if isinstance(value, bool) or not isinstance(value, int):
        raise JobError(f"priority must be an integer or a name, not {value!r}", field="priority")
    if not -_PRIORITY_LIMIT <= value <= _PRIORITY_LIMIT:
        raise JobError(
            f"priority must be between -{_PRIORITY_LIMIT} and {_PRIORITY_LIMIT}, not {value}",
            field="priority",
        )
    return value


#: The largest priority magnitude (a 32-bit integer: stored, compared and aged safely).
_PRIORITY_LIMIT = 2**31 - 1


def _when(value: str | float | datetime) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:  # NaN, ±inf and times datetime cannot show (before year 1, after 9999) are refused
            datetime.fromtimestamp(value, UTC)
        except (OverflowError, ValueError, OSError):
            raise JobError(
                f"start {value!r} is not a time (epoch seconds between years 1 and 9999)",
                field="start",
                hint="2026-12-06T08:00, or epoch seconds",
            ) from None
        return float(value)
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            raise JobError(
                f"start {value!r} is not an ISO time", field="start", hint="2026-12-06T08:00"
            ) from None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.timestamp()
    raise JobError(f"start must be a time, not {value!r}", field="start")


def _ends_by(row: JobInfo, now: float) -> float:
    limit = row.spec.get("request", {}).get("max_runtime_s")
    return (row.started_at or now) + limit if limit else float("inf")


def _default_name(target: Any, kind: str, entry: Mapping[str, Any]) -> str:
    if kind == "python":
        return str(getattr(target, "__qualname__", None) or getattr(target, "__name__", "python"))
    if kind == "sql":
        return " ".join(str(target).split())[:60]
    argv = list(entry["argv"])
    if argv[0] != "-m":
        argv[0] = Path(argv[0]).name  # the script, not the folder it is in
    return " ".join(argv)[:60]
