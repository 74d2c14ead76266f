"""The job queue in the catalog database: ``mx_jobs``, ``mx_reservations`` and the scheduler's
lease (``mx_job_leases``), on SQLite or PostgreSQL.

Every state change of a job is one short transaction, conditional on the state it leaves
(``transition(id, {"QUEUED"}, "STARTING", …)`` changes nothing when another scheduler or a
cancel got there first), so several processes may submit, cancel and schedule at once and a job
is started at most once per attempt. The lease names the one process whose scheduler loop
starts and stops jobs; a lease not renewed for ``ttl`` seconds may be taken over (its holder
was killed), and the new holder reconciles what the old one left running.

A warehouse whose catalog is not a database (an object-store catalog) keeps its queue in a
SQLite file under ``$MATRIXOS_HOME/jobs/``: then only processes of this machine share it (give
the sessions a ``catalog_url`` to share a queue between machines).

Example:
    >>> import sqlalchemy as sa
    >>> store = JobStore(sa.create_engine("sqlite://"))
    >>> store.insert(JobInfo(id="j1", kind="python", account="a", principal="p", spec={}))
    >>> store.transition("j1", {"QUEUED"}, "STARTING")
    True
    >>> store.transition("j1", {"QUEUED"}, "STARTING")  # already left QUEUED
    False
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import json
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError

from matrixos.catalog.store import METADATA

__all__ = [
    "ACTIVE",
    "ENDED",
    "STATES",
    "JobInfo",
    "JobStore",
    "ReservationRow",
    "jobs_engine",
]

#: Every state a job can be in. QUEUED → STARTING → RUNNING → one of the ended states;
#: PREEMPTED lasts from SIGTERM to the release of its resources, then the job is QUEUED again.
STATES = (
    "QUEUED",
    "STARTING",
    "RUNNING",
    "PREEMPTED",
    "SUCCEEDED",
    "FAILED",
    "CANCELED",
    "OUT_OF_CREDIT",
)
#: States in which a job holds (or is about to hold) resources of the pool.
ACTIVE = frozenset({"STARTING", "RUNNING", "PREEMPTED"})
ENDED = frozenset({"SUCCEEDED", "FAILED", "CANCELED", "OUT_OF_CREDIT"})

_jobs = sa.Table(
    "mx_jobs",
    METADATA,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("name", sa.String(256)),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("spec", sa.Text, nullable=False),  # JSON: the request (resources, limits, …)
    sa.Column("payload", sa.LargeBinary),  # what to run (cloudpickle), never shown
    sa.Column("account", sa.String(256), nullable=False, index=True),
    sa.Column("principal", sa.String(256), nullable=False, index=True),
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("priority", sa.Integer, nullable=False, default=0),
    sa.Column("submitted_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float),
    sa.Column("ended_at", sa.Float),
    sa.Column("exit_code", sa.Integer),
    sa.Column("error", sa.Text),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("nodes", sa.Text),  # JSON list: the node of each bundle
    sa.Column("placement_group", sa.String(128)),
    sa.Column("log_path", sa.Text),
    sa.Column("position", sa.Integer),
    sa.Column("eta", sa.Float),
    sa.Column("degrees", sa.Float, nullable=False, default=0.0),
    sa.Column("scheduler", sa.String(64)),  # the scheduler that started it
    sa.Column("cancel_requested", sa.Boolean, nullable=False, default=False),
    sa.Column("result", sa.LargeBinary),
    sa.Column("updated_at", sa.Float, nullable=False),
)
_reservations = sa.Table(
    "mx_reservations",
    METADATA,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("account", sa.String(256), nullable=False),
    sa.Column("principal", sa.String(256), nullable=False),
    sa.Column("gpus", sa.Integer, nullable=False),
    sa.Column("cpus", sa.Float, nullable=False, default=0.0),
    sa.Column("accelerator", sa.String(64)),
    sa.Column("start", sa.Float, nullable=False),
    sa.Column("end", sa.Float, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)
_leases = sa.Table(
    "mx_job_leases",
    METADATA,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("holder", sa.String(64), nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
)
_TABLES = (_jobs, _reservations, _leases)
_LIST_COLUMNS = [c for c in _jobs.c if c.name not in ("payload", "result")]


@dataclass
class JobInfo:
    """One job as the database keeps it (``payload`` and ``result`` are loaded on demand)."""

    id: str
    kind: str
    account: str
    principal: str
    spec: dict[str, Any]
    name: str | None = None
    state: str = "QUEUED"
    priority: int = 0
    submitted_at: float = field(default_factory=time.time)
    started_at: float | None = None
    ended_at: float | None = None
    exit_code: int | None = None
    error: str | None = None
    attempts: int = 0
    nodes: list[str] = field(default_factory=list)
    placement_group: str | None = None
    log_path: str | None = None
    position: int | None = None
    eta: float | None = None
    degrees: float = 0.0
    scheduler: str | None = None
    cancel_requested: bool = False
    updated_at: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """The row as plain values (JSON-ready)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class ReservationRow:
    """A booked window: ``gpus`` (and ``cpus``) of ``accelerator`` from ``start`` to ``end``
    (epoch seconds) for ``account``."""

    id: str
    account: str
    principal: str
    gpus: int
    accelerator: str | None
    start: float
    end: float
    cpus: float = 0.0
    created_at: float = 0.0


def _row(r: Any) -> JobInfo:
    return JobInfo(
        id=r.id,
        name=r.name,
        kind=r.kind,
        account=r.account,
        principal=r.principal,
        spec=json.loads(r.spec),
        state=r.state,
        priority=r.priority,
        submitted_at=r.submitted_at,
        started_at=r.started_at,
        ended_at=r.ended_at,
        exit_code=r.exit_code,
        error=r.error,
        attempts=r.attempts,
        nodes=json.loads(r.nodes) if r.nodes else [],
        placement_group=r.placement_group,
        log_path=r.log_path,
        position=r.position,
        eta=r.eta,
        degrees=r.degrees or 0.0,
        scheduler=r.scheduler,
        cancel_requested=bool(r.cancel_requested),
        updated_at=r.updated_at,
    )


def jobs_engine(catalog: Any, home: str) -> sa.Engine:
    """The database engine of a catalog (``catalog.engine``), or for a catalog that is not a
    database a SQLite file under ``home``/jobs named after the catalog."""
    engine = getattr(catalog, "engine", None)
    if isinstance(engine, sa.Engine):
        return engine
    key = hashlib.sha256(repr(catalog).encode()).hexdigest()[:16]
    folder = Path(home).expanduser() / "jobs"
    folder.mkdir(parents=True, exist_ok=True)
    eng = sa.create_engine(f"sqlite:///{folder / key}.db", connect_args={"timeout": 30})

    @sa.event.listens_for(eng, "connect")
    def _wal(dbapi_conn: Any, _: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.close()

    return eng


class JobStore:
    """Jobs, reservations and the scheduler lease in one database. Thread-safe."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        for table in _TABLES:
            # Two processes creating the tables at one moment: the loser's CREATE fails.
            with contextlib.suppress(IntegrityError, OperationalError):
                table.create(engine, checkfirst=True)
        if not sa.inspect(engine).has_table("mx_jobs"):
            _jobs.create(engine, checkfirst=True)  # the race's loser: now it is there

    # -- jobs -------------------------------------------------------------------------------
    def insert(self, job: JobInfo, payload: bytes | None = None) -> None:
        """Add a new job (``state`` as given, normally QUEUED)."""
        values = job.as_dict()
        values.update(
            spec=json.dumps(job.spec),
            nodes=json.dumps(job.nodes),
            payload=payload,
            updated_at=time.time(),
        )
        with self.engine.begin() as conn:
            conn.execute(_jobs.insert().values(**values))

    def get(self, job_id: str) -> JobInfo | None:
        with self.engine.connect() as conn:
            r = conn.execute(sa.select(*_LIST_COLUMNS).where(_jobs.c.id == job_id)).first()
        return _row(r) if r is not None else None

    def payload(self, job_id: str) -> bytes | None:
        with self.engine.connect() as conn:
            return conn.execute(  # type: ignore[no-any-return]
                sa.select(_jobs.c.payload).where(_jobs.c.id == job_id)
            ).scalar()

    def result(self, job_id: str) -> bytes | None:
        with self.engine.connect() as conn:
            return conn.execute(  # type: ignore[no-any-return]
                sa.select(_jobs.c.result).where(_jobs.c.id == job_id)
            ).scalar()

    def list(
        self,
        *,
        states: Collection[str] | None = None,
        principal: str | None = None,
        account: str | None = None,
        limit: int | None = None,
    ) -> list[JobInfo]:
        """Jobs (newest first unless ``states`` asks for queued ones, which come in submit
        order), optionally only in ``states``, of ``principal`` or of ``account``."""
        q = sa.select(*_LIST_COLUMNS)
        if states is not None:
            q = q.where(_jobs.c.state.in_(list(states)))
        if principal is not None:
            q = q.where(_jobs.c.principal == principal)
        if account is not None:
            q = q.where(_jobs.c.account == account)
        q = q.order_by(_jobs.c.submitted_at.desc(), _jobs.c.id)
        if limit is not None:
            q = q.limit(limit)
        with self.engine.connect() as conn:
            return [_row(r) for r in conn.execute(q)]

    def transition(self, job_id: str, expect: Collection[str], state: str, **values: Any) -> bool:
        """Move job ``job_id`` to ``state`` (with ``values``) if it is in one of ``expect``;
        whether it moved."""
        if "nodes" in values and not isinstance(values["nodes"], str):
            values["nodes"] = json.dumps(list(values["nodes"]))
        q = (
            _jobs.update()
            .where(_jobs.c.id == job_id, _jobs.c.state.in_(list(expect)))
            .values(state=state, updated_at=time.time(), **values)
        )
        with self.engine.begin() as conn:
            return bool(conn.execute(q).rowcount)

    def update(self, job_id: str, **values: Any) -> None:
        """Set ``values`` on job ``job_id`` whatever its state (metering, logs, cancel flag)."""
        with self.engine.begin() as conn:
            conn.execute(
                _jobs.update().where(_jobs.c.id == job_id).values(updated_at=time.time(), **values)
            )

    def set_positions(self, positions: Mapping[str, tuple[int | None, float | None]]) -> None:
        """Record queued jobs' ``(position, eta)`` in one transaction."""
        if not positions:
            return
        q = (
            _jobs.update()
            .where(_jobs.c.id == sa.bindparam("_id"), _jobs.c.state == "QUEUED")
            .values(position=sa.bindparam("_pos"), eta=sa.bindparam("_eta"))
        )
        rows = [{"_id": k, "_pos": p, "_eta": e} for k, (p, e) in positions.items()]
        with self.engine.begin() as conn:
            conn.execute(q, rows)

    # -- reservations -----------------------------------------------------------------------
    def add_reservation(self, r: ReservationRow) -> None:
        values = {f.name: getattr(r, f.name) for f in fields(r)}
        values["created_at"] = r.created_at or time.time()
        with self.engine.begin() as conn:
            conn.execute(_reservations.insert().values(**values))

    def reservations(self, *, after: float | None = None) -> builtins.list[ReservationRow]:
        """Reservations that end after ``after`` (all when None), by start."""
        q = sa.select(_reservations).order_by(_reservations.c.start)
        if after is not None:
            q = q.where(_reservations.c.end > after)
        with self.engine.connect() as conn:
            return [ReservationRow(**r._mapping) for r in conn.execute(q)]

    # -- the scheduler lease ----------------------------------------------------------------
    def acquire_lease(self, holder: str, ttl: float, name: str = "scheduler") -> str | None:
        """Take or renew lease ``name`` for ``holder`` for ``ttl`` seconds. Returns the previous
        holder when ``holder`` now holds it (itself when renewed, ``""`` when it was free), or
        None when another live holder has it."""
        now = time.time()
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(_leases).where(_leases.c.name == name)).first()
            if row is None:
                try:
                    with conn.begin_nested():
                        conn.execute(
                            _leases.insert().values(name=name, holder=holder, expires_at=now + ttl)
                        )
                except IntegrityError:
                    return None  # another process took it at this moment
                return ""
            if row.holder != holder and row.expires_at > now:
                return None
            done = conn.execute(
                _leases.update()
                .where(
                    _leases.c.name == name,
                    _leases.c.holder == row.holder,
                    _leases.c.expires_at == row.expires_at,
                )
                .values(holder=holder, expires_at=now + ttl)
            ).rowcount
            return str(row.holder) if done else None

    def release_lease(self, holder: str, name: str = "scheduler") -> None:
        with self.engine.begin() as conn:
            conn.execute(_leases.delete().where(_leases.c.name == name, _leases.c.holder == holder))

    def live_holders(self, prefix: str) -> set[str]:
        """Holders of the unexpired leases whose names start with ``prefix``."""
        q = sa.select(_leases.c.holder).where(
            _leases.c.name.startswith(prefix, autoescape=True), _leases.c.expires_at > time.time()
        )
        with self.engine.connect() as conn:
            return {r.holder for r in conn.execute(q)}

    def lease_holder(self, name: str = "scheduler") -> tuple[str, float] | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(_leases).where(_leases.c.name == name)).first()
        return (row.holder, row.expires_at) if row is not None else None
