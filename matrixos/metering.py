"""Metering in compute degrees: what every job and SQL statement used, in one standard unit.

**1 degree = 312 TFLOPS x 1 hour**, the A100's dense BF16 peak for an hour. A resource used for
some seconds costs ``quantity x seconds x peak TFLOPS(type) / 312 / 3600`` degrees, with the
peaks of ``PEAK_TFLOPS``:

======== ============ =====================================================================
type     TFLOPS       what
======== ============ =====================================================================
A100     312          dense BF16 (the unit)
H100     989          dense BF16, SXM
H200     989          dense BF16 (an H100 with more memory)
B200     2250         dense BF16
L40S     362          dense BF16
L4       121          dense BF16
A10      125          dense BF16
V100     125          dense FP16 tensor (no BF16)
T4       65           dense FP16 tensor (no BF16)
CPU      0.1          one core: 2 FMA units x 8 FP32 lanes (AVX2) x 2 flops x 3 GHz = 96 GFLOPS
MEMORY   0            one GB of memory: recorded (GB-seconds), free by default
======== ============ =====================================================================

So an H100 for an hour is 989 / 312 = 3.17 degrees, a CPU core for an hour 0.00032 degrees.
The table is configurable: ``MATRIXOS_DEGREE_TABLE`` (``Settings.degree_table``) names a JSON
file ``{"H100": 989, "CPU": 0.2, "MEMORY": 0.001, "MI300X": 1307}`` whose entries replace or
extend these.

Usage records go to the Delta table ``system.billing.usage`` (one row per resource, job or
statement, and metering interval; joinable in SQL like any table) in batches, and each record's
degrees are charged to its account's prepaid credit (``matrixos.catalog.billing``).

SQL statements (with ``Settings.meter_statements``; ``matrixos serve`` turns it on) are metered
as core-seconds: the statement's wall time, from its start to the end of its rows, times the
cores the engine may use (``duckdb_threads``, default this machine's CPUs), charged to the
account of the principal that ran it (the user's own; a group's credit is drawn on by jobs,
which name their account). A statement that runs as tasks on the Ray pool (``engine="ray"``) also
gets one record per Ray node that ran its tasks: their core-seconds (each task's reserved CPUs x
its wall time, or its worker's measured CPU time when more; ``matrixos.engine.usage``).
Statements of an account that holds a prepaid package (was ever credited) are refused with
``OutOfCredit`` once its balance is <= 0; accounts never credited
are billed afterwards (their balance goes below zero) and not stopped.

Example:
    >>> round(degrees("gpu", "H100", 8, 3600), 4)  # 8 H100s for an hour
    25.359
    >>> degrees("cpu", None, 312, 3600 * 10)  # 312 cores for 10 h: 312 x 0.1 x 10 / 312
    1.0
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa

from matrixos.catalog.access import Principal
from matrixos.catalog.billing import Billing, from_nano, may_see, to_nano
from matrixos.catalog.outbox import Outbox
from matrixos.catalog.systables import BatchWriter, SystemTable
from matrixos.errors import AccessDenied, ConfigError, OutOfCredit

if TYPE_CHECKING:
    from matrixos.catalog.service import TableService
    from matrixos.config import Settings
    from matrixos.engine.usage import TaskUsage

__all__ = [
    "DEGREE_TFLOPS",
    "PEAK_TFLOPS",
    "STATEMENT_INTERVAL_S",
    "USAGE_READER",
    "USAGE_SCHEMA",
    "USAGE_TABLE",
    "Meter",
    "RunningStatement",
    "StatementMeter",
    "UsageRecord",
    "degree_table",
    "degrees",
    "empty_usage",
    "peak_tflops",
    "usage_query",
]

log = logging.getLogger(__name__)

#: TFLOPS of one degree-hour: the A100's dense BF16 peak.
DEGREE_TFLOPS = 312.0
#: Peak TFLOPS per accelerator type, per CPU core (``CPU``) and per GB of memory (``MEMORY``).
PEAK_TFLOPS: dict[str, float] = {
    "A100": 312.0,
    "H100": 989.0,
    "H200": 989.0,
    "B200": 2250.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10": 125.0,
    "V100": 125.0,
    "T4": 65.0,
    "CPU": 0.1,
    "MEMORY": 0.0,
}
USAGE_TABLE = "system.billing.usage"
USAGE_SCHEMA = pa.schema(
    [
        ("record_id", pa.string()),
        ("account", pa.string()),
        ("principal", pa.string()),
        ("job_id", pa.string()),
        ("statement_id", pa.string()),
        ("node", pa.string()),
        ("resource", pa.string()),  # cpu | gpu | memory
        ("accelerator", pa.string()),
        ("quantity", pa.float64()),  # cores, GPUs or GB
        ("start", pa.timestamp("us", tz="UTC")),
        ("end", pa.timestamp("us", tz="UTC")),
        ("seconds", pa.float64()),
        ("degrees", pa.decimal128(18, 9)),  # exactly what the ledger was charged
    ]
)
RESOURCES = ("cpu", "gpu", "memory")
#: Who reads ``system.billing.usage`` for ``lh.usage``: the rows a caller sees are filtered by
#: account in ``usage_query``, not by grants (the table itself is granted to no one).
USAGE_READER = Principal("system", frozenset({"*"}))


def degree_table(settings: Settings | None = None) -> dict[str, float]:
    """``PEAK_TFLOPS`` with the entries of ``settings.degree_table`` (or
    ``$MATRIXOS_DEGREE_TABLE``), a JSON file of ``{type: TFLOPS}``.

    Raises:
        ConfigError: the file is missing, not JSON, or holds a non-number or a negative one.
    """
    path = settings.degree_table if settings is not None else None
    path = path or os.environ.get("MATRIXOS_DEGREE_TABLE")
    table = dict(PEAK_TFLOPS)
    if not path:
        return table
    try:
        with open(path) as f:
            extra = json.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read the degree table {path}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise ConfigError(
            f"the degree table {path} is not JSON (line {e.lineno}, column {e.colno})",
            hint='write e.g. {"H100": 989, "CPU": 0.1}',
        ) from None
    if not isinstance(extra, dict):
        raise ConfigError(f"the degree table {path} must be a JSON object of type: TFLOPS")
    for name, value in extra.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ConfigError(
                f"the degree table {path}: {name!r} must be a number >= 0, not {value!r}"
            )
        table[str(name).upper()] = float(value)
    return table


def peak_tflops(
    resource: str, accelerator: str | None, table: Mapping[str, float] | None = None
) -> float:
    """The TFLOPS one unit of ``resource`` is worth: a GPU of type ``accelerator``, a CPU
    core, or a GB of memory. Accelerator names match case-insensitively, also with a suffix
    (``A100-80G``, ``nvidia h100 80gb``).

    Raises:
        ConfigError: an unknown resource, a GPU without a type, or an unknown type.

    Example:
        >>> peak_tflops("gpu", "A100-80G"), peak_tflops("cpu", None)
        (312.0, 0.1)
    """
    table = PEAK_TFLOPS if table is None else table
    if resource == "cpu":
        return table["CPU"]
    if resource == "memory":
        return table["MEMORY"]
    if resource != "gpu":
        raise ConfigError(f"unknown resource {resource!r}", hint="cpu, gpu or memory")
    if not accelerator:
        raise ConfigError("a GPU's usage needs its accelerator type", hint="e.g. H100, A100, L4")
    name = accelerator.strip().upper().replace("_", " ").replace("-", " ")
    for prefix in ("NVIDIA ", "TESLA "):
        name = name.removeprefix(prefix)
    first = name.split(" ")[0]
    for key in (accelerator.upper(), name, first):
        if key in table:
            return table[key]
    known = ", ".join(k for k in table if k not in ("CPU", "MEMORY"))
    raise ConfigError(
        f"unknown accelerator {accelerator!r}: no peak TFLOPS for it",
        hint=f"known: {known}; add it to the JSON file in MATRIXOS_DEGREE_TABLE",
    )


def degrees(
    resource: str,
    accelerator: str | None,
    quantity: float,
    seconds: float,
    *,
    table: Mapping[str, float] | None = None,
) -> float:
    """Degrees of ``quantity`` units of ``resource`` used for ``seconds``:
    ``quantity x seconds x peak / 312 / 3600``.

    Example:
        >>> degrees("gpu", "A100", 1, 3600)
        1.0
    """
    if quantity < 0 or seconds < 0:
        raise ConfigError(f"usage cannot be negative (quantity {quantity}, seconds {seconds})")
    peak = peak_tflops(resource, accelerator, table)
    return quantity * seconds * peak / DEGREE_TFLOPS / 3600.0


def _utc(value: datetime | float) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromtimestamp(value, UTC)


@dataclass(frozen=True)
class UsageRecord:
    """What one account used of one resource on one node between ``start`` and ``end``.

    ``quantity``: cores, GPUs or GB; ``seconds``: how long (``end - start`` unless given);
    ``degrees``: what it costs (computed from the degree table unless given). ``start`` and
    ``end`` take a ``datetime`` or epoch seconds.

    Example:
        >>> r = UsageRecord("team-a", "alice", resource="gpu", accelerator="H100",
        ...                 quantity=2, start=0.0, end=3600.0, job_id="j1")
        >>> r.seconds, round(r.priced().degrees, 3)
        (3600.0, 6.34)
    """

    account: str
    principal: str
    resource: Literal["cpu", "gpu", "memory"] | str
    quantity: float
    start: datetime | float
    end: datetime | float
    accelerator: str | None = None
    job_id: str | None = None
    statement_id: str | None = None
    node: str | None = None
    seconds: float | None = None  # None: end - start
    degrees: float | None = None  # None: from the degree table, when priced
    record_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def __post_init__(self) -> None:
        if self.resource not in RESOURCES:
            raise ConfigError(f"unknown resource {self.resource!r}", hint="cpu, gpu or memory")
        if self.resource == "gpu" and not self.accelerator:
            raise ConfigError("a GPU's usage needs its accelerator type")
        start, end = _utc(self.start), _utc(self.end)
        seconds = self.seconds
        if seconds is None:
            seconds = max(0.0, (end - start).total_seconds())
        if seconds < 0 or self.quantity < 0 or (self.degrees or 0) < 0:
            raise ConfigError(
                f"usage cannot be negative (quantity {self.quantity}, seconds {seconds}, "
                f"degrees {self.degrees})"
            )
        object.__setattr__(self, "start", start)
        object.__setattr__(self, "end", end)
        object.__setattr__(self, "seconds", float(seconds))

    def priced(self, table: Mapping[str, float] | None = None) -> UsageRecord:
        """This record with ``degrees`` filled in from ``table`` (default ``PEAK_TFLOPS``)
        unless it has them."""
        if self.degrees is not None:
            return self
        cost = degrees(
            self.resource, self.accelerator, self.quantity, self.seconds or 0.0, table=table
        )
        return _replace(self, degrees=cost)

    def row(self) -> dict[str, Any]:
        """The record as a ``system.billing.usage`` row (priced first)."""
        return row_of(self.payload())

    def payload(self) -> dict[str, Any]:
        """The row as JSON-ready values (times in ISO 8601, degrees a decimal string)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["start"] = _utc(self.start).isoformat()
        out["end"] = _utc(self.end).isoformat()
        out["degrees"] = str(from_nano(to_nano(self.priced().degrees or 0.0)))
        return out


def _replace(record: UsageRecord, **changes: Any) -> UsageRecord:
    values = {f.name: getattr(record, f.name) for f in fields(record)}
    values.update(changes)
    return UsageRecord(**values)


class Meter:
    """Writes usage records to ``system.billing.usage`` and charges accounts' credit.

    ``record`` (the job runtime, every metering interval) charges at once and returns the
    balance, so the caller can stop a job whose account reached zero. ``statement`` (the SQL
    engine's statements) queues a record that is charged with others, once per
    ``interval_s``. Either way the charge's transaction also puts the rows in the catalog's
    outbox (``catalog/outbox.py``), and a background thread moves them to the Delta table, one
    commit per ``interval_s`` for all jobs together: a process killed at any point leaves the
    ledger and the usage table agreeing once the next meter (any process) has run for
    ``stale_s`` seconds. ``flush`` writes what is queued; ``close`` also stops the thread.
    Thread-safe.
    """

    def __init__(
        self,
        service: TableService,
        *,
        billing: Billing | None = None,
        interval_s: float = 1.0,
        stale_s: float = 60.0,
    ) -> None:
        self.service = service
        self.billing = billing or Billing(service.catalog)
        self.outbox = Outbox(self.billing.engine)
        self.table = degree_table(service.settings)
        self.usage = SystemTable(service, USAGE_TABLE, USAGE_SCHEMA)
        self.owner = uuid.uuid4().hex  # this meter's rows in the outbox
        self.stale_s = stale_s
        self._admitted: dict[str, float] = {}  # account -> until when its pass holds
        # Statements still to be charged; None: only move the outbox on.
        self._writer: BatchWriter[UsageRecord | None] = BatchWriter(
            self._write, interval_s=interval_s, what="usage records"
        )
        self._writer.put(None)  # rows a dead meter left behind go out at the first interval

    def record(self, records: Sequence[UsageRecord]) -> float:
        """Charge ``records`` to their accounts now and queue their rows; the balance after
        of the (last) account charged, in degrees (0.0 when ``records`` is empty)."""
        priced = [r.priced(self.table) for r in records]
        if not priced:
            return 0.0
        balances = self._charge(priced)
        self._writer.put(None)
        return float(balances[priced[-1].account])

    def admit(self, account: str) -> None:
        """Refuse a statement of ``account`` when it holds a prepaid package and its balance
        is <= 0 (``OutOfCredit``); accounts never credited pass. A pass is remembered for
        ``ADMIT_TTL_S`` (one balance read a second, not one per statement) and forgotten at
        once when this meter charges the account; a refusal is never remembered."""
        if time.monotonic() < self._admitted.get(account, 0.0):
            return
        summary = self.billing.summary(account)
        if summary.credited > 0 and summary.balance <= 0:
            raise OutOfCredit(
                f"{account} has {summary.balance:f} degrees left: statements are stopped",
                account=account,
                balance=summary.balance,
                asked=Decimal(0),
                hint=f"ask an admin for credit: matrixos accounts credit {account} --degrees N",
            )
        if len(self._admitted) >= 10_000:
            self._admitted.clear()
        self._admitted[account] = time.monotonic() + ADMIT_TTL_S

    def statement(
        self,
        principal: str,
        statement_id: str,
        start: float,
        end: float,
        cores: float,
        *,
        node: str | None = None,
        seconds: float | None = None,
    ) -> UsageRecord:
        """Queue one statement's core-seconds (``cores`` x ``seconds``, default ``end -
        start``) on ``node``, charged to ``principal``'s own account."""
        record = UsageRecord(
            principal,
            principal,
            resource="cpu",
            quantity=cores,
            start=start,
            end=end,
            statement_id=statement_id,
            node=node,
            seconds=seconds,
        ).priced(self.table)
        self._writer.put(record)
        return record

    def flush(self) -> None:
        """Charge and write everything queued before returning."""
        self._writer.put(None)
        self._writer.flush()

    def close(self) -> None:
        """Write what is queued and stop the background thread."""
        self._writer.put(None)
        self._writer.close()

    def _charge(self, records: list[UsageRecord]) -> dict[str, Decimal]:
        rows = [(r.record_id, r.payload()) for r in records]
        try:
            return self.billing.charge_many(
                [(r.account, _cost(r), r.job_id or r.statement_id) for r in records],
                also=lambda conn: self.outbox.insert(conn, self.owner, rows),
            )
        finally:  # the next statement of a charged account reads its balance again
            for r in records:
                self._admitted.pop(r.account, None)

    def _write(self, items: list[UsageRecord | None]) -> None:
        due = [r for r in items if r is not None]
        if due:
            self._charge(due)
        while True:
            claimed = self.outbox.claim(self.owner, stale_s=self.stale_s)
            if not claimed:
                return
            fresh = [r for r in claimed if not r.reclaimed]
            again = [r for r in claimed if r.reclaimed]
            try:
                if fresh:
                    self.usage.append([row_of(r.payload) for r in fresh])
                if again:  # perhaps written before their owner died: insert if absent
                    self.usage.merge_new([row_of(r.payload) for r in again], on=["record_id"])
            except Exception:
                self.outbox.mark_reclaimed(self.owner, [r.id for r in fresh])
                raise
            self.outbox.clear(self.owner, [r.id for r in claimed])
            if len(claimed) < OUTBOX_BATCH:
                return


OUTBOX_BATCH = 10_000


def _cost(record: UsageRecord) -> Decimal:
    return from_nano(to_nano(record.degrees or 0.0))


def row_of(payload: Mapping[str, Any]) -> dict[str, Any]:
    """A ``system.billing.usage`` row from ``UsageRecord.payload()``."""
    row = dict(payload)
    row["start"] = datetime.fromisoformat(row["start"])
    row["end"] = datetime.fromisoformat(row["end"])
    row["degrees"] = Decimal(row["degrees"])
    return row


def usage_query(
    principal: Principal,
    *,
    account: str | None = None,
    by: Literal["hour", "day", "job"] = "day",
    since: datetime | str | None = None,
    until: datetime | str | None = None,
) -> str:
    """The SQL (DuckDB dialect) that sums ``system.billing.usage`` per period (``by``
    ``hour``/``day``) or per job, for the accounts ``principal`` may see.

    Raises:
        AccessDenied: ``account`` is one ``principal`` may not see.
        ConfigError: a bad ``by``, ``since`` or ``until``.
    """
    from sqlglot import exp

    if by not in ("hour", "day", "job"):
        raise ConfigError(f"by={by!r}: usage is summed by hour, day or job")
    conds: list[exp.Expression] = []
    if account is not None:
        if not may_see(principal, account):
            raise AccessDenied(
                f"{principal.name} may not read the usage of {account}",
                hint="usage is visible to the account's members and to admins",
            )
        conds.append(exp.column("account").eq(exp.Literal.string(account)))
    elif not principal.is_admin:
        mine = sorted({principal.name, *principal.groups})
        conds.append(exp.column("account").isin(*[exp.Literal.string(a) for a in mine]))
    for name, value, op in (("since", since, exp.GTE), ("until", until, exp.LT)):
        if value is None:
            continue
        stamp = _utc(value) if isinstance(value, datetime) else _parse_time(name, value)
        lit = exp.cast(exp.Literal.string(stamp.isoformat()), "TIMESTAMPTZ")
        conds.append(op(this=exp.column("start"), expression=lit))
    where = f" WHERE {exp.and_(*conds).sql('duckdb')}" if conds else ""
    sums = (
        "sum(quantity * seconds) AS quantity_seconds, sum(seconds) AS seconds, "
        "sum(degrees) AS degrees, count(*) AS records"
    )
    if by == "job":
        key = "coalesce(job_id, 'sql') AS job"
        return (
            f"SELECT {key}, account, resource, accelerator, min(start) AS start, "
            f'max("end") AS "end", {sums} FROM {USAGE_TABLE}{where} '
            "GROUP BY ALL ORDER BY start, job, resource"
        )
    return (
        f"SELECT date_trunc('{by}', start) AS period, account, resource, accelerator, {sums} "
        f"FROM {USAGE_TABLE}{where} GROUP BY ALL ORDER BY period, account, resource"
    )


def _parse_time(name: str, value: str) -> datetime:
    try:
        return _utc(datetime.fromisoformat(value))
    except ValueError:
        raise ConfigError(
            f"{name}={value!r} is not a time", hint="write e.g. 2026-12-05 or 2026-12-05T08:00"
        ) from None


def empty_usage(by: str) -> pa.Table:
    """The (empty) answer of ``usage_query`` before any usage is recorded."""
    key = [("job", pa.string())] if by == "job" else [("period", pa.timestamp("us", tz="UTC"))]
    rest = [
        ("account", pa.string()),
        ("resource", pa.string()),
        ("accelerator", pa.string()),
        ("quantity_seconds", pa.float64()),
        ("seconds", pa.float64()),
        ("degrees", pa.decimal128(38, 9)),
        ("records", pa.int64()),
    ]
    return pa.schema(key + rest).empty_table()


#: The node a statement's records name: the host it ran on (the engine runs in this process).
NODE = socket.gethostname()
#: Seconds between a running statement's usage records (the issue's "<= 10 s apart").
STATEMENT_INTERVAL_S = 10.0
#: How long an account's admission (credit left, or never credited) holds before its balance
#: is read again (seconds).
ADMIT_TTL_S = 1.0


@dataclass
class RunningStatement:
    """A statement being metered: its id, principal and the end of its last record."""

    principal: str
    statement_id: str
    mark: float


class StatementMeter:
    """Meters a session's SQL statements (``Settings.meter_statements``): one ``Meter`` per
    session root, made on first use. A statement running longer than ``interval_s`` gets a
    record every ``interval_s`` while it runs (same ``statement_id``, back to back), then one
    for the rest when it ends."""

    def __init__(self, service: TableService, *, interval_s: float = STATEMENT_INTERVAL_S) -> None:
        self.service = service
        self.interval_s = interval_s
        self._meter: Meter | None = None
        self._lock = threading.Lock()
        self._running: dict[str, RunningStatement] = {}
        # Statements ended and not yet recorded, with when they ended. ``end_later`` only adds
        # here (no lock): a garbage collection may run it in a thread holding the lock.
        self._ended: deque[tuple[RunningStatement, float]] = deque()
        self._unavailable = False
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None
        threads = service.settings.duckdb_threads
        self.cores = float(threads or os.cpu_count() or 1)

    @property
    def meter(self) -> Meter | None:
        """The meter (None where the catalog keeps no ledger: an object-store catalog)."""
        if self._meter is None and not self._unavailable:
            with self._lock:
                if self._meter is None and not self._unavailable:
                    try:
                        self._meter = Meter(self.service)
                    except ConfigError as e:
                        log.warning("SQL statements are not metered: %s", e.message)
                        self._unavailable = True
                        return None
                    self._ticker = threading.Thread(
                        target=self._tick, name="mx-statement-meter", daemon=True
                    )
                    self._ticker.start()
        return self._meter

    def begin(self, principal: Principal) -> RunningStatement | None:
        """Check ``principal`` may run a statement (``OutOfCredit``) and start metering it
        (None: not metered)."""
        meter = self.meter
        if meter is None:
            return None
        meter.admit(principal.name)
        running = RunningStatement(principal.name, uuid.uuid4().hex, time.time())
        with self._lock:
            self._settle()
            self._running[running.statement_id] = running
        return running

    def end(self, running: RunningStatement) -> None:
        """The statement ended now: queue its last record."""
        self._ended.append((running, time.time()))
        with self._lock:
            self._settle()

    def end_later(self, running: RunningStatement) -> None:
        """The statement ended now; its record is queued by the meter's next call (or tick).
        Never blocks: for finalizers, which a garbage collection runs in whatever thread it
        interrupts (one inside ``end`` with the lock held deadlocked a server)."""
        self._ended.append((running, time.time()))

    def _settle(self) -> None:
        """Record the statements ended so far (called with the lock held)."""
        while self._ended:
            running, at = self._ended.popleft()
            if self._running.pop(running.statement_id, None) is not None:  # else ended already
                self._record(running, max(at, running.mark))  # a tick may have passed `at`

    def tasks(self, running: RunningStatement, usages: Sequence[TaskUsage]) -> None:
        """Queue what the statement's Ray tasks used (``engine.usage``), one record per node:
        its core-seconds (reserved CPUs x wall time, or the CPU time measured when more) over
        the span from its first task's start to its last one's end."""
        meter = self._meter
        if meter is None or not usages:
            return
        by_node: dict[str, list[TaskUsage]] = {}
        for u in usages:
            by_node.setdefault(u.node, []).append(u)
        for node, tasks in sorted(by_node.items()):
            used = sum(u.core_seconds for u in tasks)
            start, end = min(u.start for u in tasks), max(u.end for u in tasks)
            span = max(end - start, 1e-3)
            if used > 0:
                meter.statement(
                    running.principal,
                    running.statement_id,
                    start,
                    start + span,
                    used / span,
                    node=node,
                    seconds=span,
                )

    def _record(self, running: RunningStatement, now: float) -> None:
        """Queue ``running``'s use from its mark to ``now`` (called with the lock held)."""
        assert self._meter is not None
        self._meter.statement(
            running.principal, running.statement_id, running.mark, now, self.cores, node=NODE
        )
        running.mark = now

    def _tick(self) -> None:
        while not self._stop.wait(self.interval_s):
            now = time.time()
            with self._lock:
                self._settle()
                for running in self._running.values():
                    if now - running.mark >= self.interval_s:
                        self._record(running, now)

    def flush(self) -> None:
        """Charge and write the statements queued so far."""
        if self._meter is not None:
            with self._lock:
                self._settle()
            self._meter.flush()

    def close(self) -> None:
        """Write what is queued and stop the meter's threads."""
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        if self._meter is not None:
            with self._lock:
                self._settle()
            self._meter.close()
