"""The scheduler loop: a thread in the process that owns the queue (the server, or an SDK
session), the one whose lease in the catalog database is current.

Each round (on submit, when a job ends, and every ``tick_s``) it reads the queue and the
running jobs from the database, asks the policy (``matrixos.jobs.policy``) what to start and
what to preempt, starts gangs through the pool (``matrixos.jobs.runner``), and records every
state change in the database. Between rounds it watches the jobs it started (every
``watch_s``): their output goes to their log files, their ends are recorded, jobs past their
``max_runtime`` are stopped, usage is metered every ``meter_interval_s`` (≤ 10 s), and the jobs
of an account whose balance reaches zero are stopped (OUT_OF_CREDIT). Stopping is SIGTERM, a
grace period, then SIGKILL; whatever a job held is released when it ends, for any reason.

When a process takes the lease over (the previous holder was killed or closed), it reconciles
first: jobs the old holder had started are requeued (their Ray resources died with that
process) or failed once they have used up ``max_attempts``, and ``mx-job-`` placement groups
and actors that no job of this scheduler owns are removed.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

from matrixos.jobs.runner import NAME_PREFIX, Bundle, LaunchSpec, Outcome, Pool, Run, python_argv
from matrixos.jobs.specs import JobSpec, NodeSpec, Reservation, RunningJob
from matrixos.jobs.store import ACTIVE, JobInfo, JobStore

__all__ = ["Metering", "Scheduler", "job_spec"]

log = logging.getLogger(__name__)
#: Each scheduler's heartbeat is a lease named ``alive:<holder>`` in ``mx_job_leases``.
ALIVE_PREFIX = "alive:"


class Metering(Protocol):
    """Charges usage: ``charge`` records what ``job`` used on ``nodes`` (one per bundle) from
    ``start`` to ``end`` and returns ``(degrees of that interval, the account's balance
    after)``; the balance is ``None`` for an account that is not metered."""

    def charge(
        self, job: JobInfo, nodes: Sequence[NodeSpec], start: float, end: float
    ) -> tuple[float, Decimal | float | None]: ...


def job_spec(row: JobInfo) -> JobSpec:
    """The policy's view of a job row."""
    req = dict(row.spec.get("request", {}))
    req["accelerators"] = tuple(req.get("accelerators", ()))
    return JobSpec(
        id=row.id,
        account=row.account,
        priority=row.priority,
        submitted_at=row.submitted_at,
        # Jobs of one kind: the same callable, script or statement (the policy learns their
        # speed per accelerator type).
        kind=f"{row.kind}:{row.name}",
        **req,
    )


@dataclass
class _Active:
    """A job this scheduler started."""

    run: Run
    row: JobInfo
    nodes: tuple[NodeSpec, ...]
    started: float
    metered_to: float
    stop: tuple[str, str] | None = None  # (end state, why) once asked to stop
    preempted: bool = False


class Scheduler:
    """Starts, watches and stops the jobs of one queue (see the module's docs)."""

    def __init__(
        self,
        store: JobStore,
        pool: Pool,
        policy: Any,
        *,
        log_dir: str,
        metering: Metering | None = None,
        tick_s: float = 1.0,
        watch_s: float = 0.05,
        grace_s: float = 10.0,
        meter_interval_s: float = 5.0,
        lease_ttl_s: float = 10.0,
        max_attempts: int = 3,
        nodes_ttl_s: float = 5.0,
        drain_s: float = 30.0,
    ) -> None:
        self.store = store
        self.pool = pool
        self.policy = policy
        self.log_dir = log_dir
        self.metering = metering
        self.tick_s = tick_s
        self.watch_s = watch_s
        self.grace_s = grace_s
        self.meter_interval_s = min(meter_interval_s, 10.0)
        self.lease_ttl_s = lease_ttl_s
        self.max_attempts = max_attempts
        self.nodes_ttl_s = nodes_ttl_s
        self.drain_s = drain_s
        self.holder = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._alive = ALIVE_PREFIX + self.holder
        self.leader = False
        self.active: dict[str, _Active] = {}
        self.releasing: list[Run] = []  # ended runs whose resources are being given back
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.RLock()
        self._nodes: tuple[float, list[NodeSpec]] = (0.0, [])
        self._last_round = 0.0
        self._last_meter = 0.0
        self.error: BaseException | None = None  # the last round's failure, for status

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="matrixos-jobs-scheduler", daemon=True
                )
                self._thread.start()

    def wake(self) -> None:
        """Run a scheduling round now (a job was submitted or canceled)."""
        self._wake.set()

    def close(self) -> None:
        """Stop the loop: start nothing more and give the lease up at once (another process
        may schedule), let the jobs this process runs finish for up to ``drain_s`` seconds,
        then stop the rest (SIGTERM, no grace) and queue them again."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(60)
        with self._lock:
            if self.leader:
                self.store.release_lease(self.holder)
                self.leader = False
            deadline = time.monotonic() + self.drain_s
            while self.active and time.monotonic() < deadline:
                self.store.acquire_lease(self.holder, self.lease_ttl_s, name=self._alive)
                self._cancels()
                self.watch()
                time.sleep(self.watch_s)
            for job_id, act in list(self.active.items()):
                act.run.terminate(0)
                act.run.release()
                self.releasing.append(act.run)
                self.store.transition(
                    job_id,
                    ACTIVE,
                    "QUEUED",
                    nodes=[],
                    placement_group=None,
                    scheduler=None,
                    error="its scheduler stopped while it ran; queued again",
                )
                del self.active[job_id]
            deadline = time.monotonic() + 15
            while self.releasing and time.monotonic() < deadline:
                self._released()
                time.sleep(0.05)
            self.store.release_lease(self.holder, name=self._alive)

    # -- the loop ----------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.watch()
                now = time.time()
                if self._wake.is_set() or now - self._last_round >= self.tick_s:
                    self._wake.clear()
                    self.round()
                    self._last_round = now
                self.error = None
            except Exception as e:  # a database or Ray hiccup: log it, try again next tick
                self.error = e
                log.exception("job scheduler round failed")
                self._stop.wait(self.tick_s)
            self._wake.wait(self.watch_s if self.active or self.releasing else self.tick_s)

    def round(self) -> None:
        """One scheduling round (when this process holds the lease)."""
        with self._lock:
            # Every scheduler says it is alive, leader or not: the jobs it runs are its own
            # until that stops (then the leader queues them again).
            self.store.acquire_lease(self.holder, self.lease_ttl_s, name=self._alive)
            prev = self.store.acquire_lease(self.holder, self.lease_ttl_s)
            if prev is None:
                self.leader = False
                return
            alive = self.store.live_holders(ALIVE_PREFIX)
            if not self.leader:
                self.leader = True
                self.reconcile(prev, alive)
            else:
                self._requeue_orphaned(alive)
            self._cancels()
            self._schedule(time.time())

    def reconcile(self, previous: str, alive: set[str]) -> None:
        """Requeue (or fail) the jobs of schedulers that stopped, and remove Ray resources
        no live scheduler's job owns."""
        keep = self._requeue_orphaned(alive, previous)
        removed = self.pool.orphans(keep)
        if removed:
            log.warning("removed %d orphaned job placement groups/actors", removed)

    def _requeue_orphaned(self, alive: set[str], previous: str = "") -> set[str]:
        """Requeue the active jobs whose scheduler is no longer alive; the ids of the active
        jobs that stay (this scheduler's and live ones')."""
        keep = set(self.active)
        for row in self.store.list(states=ACTIVE):
            if row.id in self.active or row.scheduler == self.holder or row.scheduler in alive:
                keep.add(row.id)
            else:
                self._requeue_lost(row, f"its scheduler ({row.scheduler or previous}) stopped")
        return keep

    def _requeue_lost(self, row: JobInfo, why: str) -> None:
        if row.state == "PREEMPTED" or row.attempts < self.max_attempts:
            self.store.transition(
                row.id,
                {row.state},
                "QUEUED",
                nodes=[],
                placement_group=None,
                scheduler=None,
                error=f"{why} (attempt {row.attempts}); queued again",
            )
        else:
            self.store.transition(
                row.id,
                {row.state},
                "FAILED",
                ended_at=time.time(),
                error=f"{why} (attempt {row.attempts} of {self.max_attempts}); not retried",
            )

    # -- watching what runs ------------------------------------------------------------------
    def _released(self) -> None:
        still = []
        for run in self.releasing:
            try:
                if not run.released():
                    still.append(run)
            except Exception:
                log.exception("releasing job %s", run.job_id)
        self.releasing = still

    def watch(self) -> None:
        """Advance every job this process started (output, ends, limits, metering) and
        finish releasing what ended ones held."""
        if self.releasing:
            with self._lock:
                self._released()
        if not self.active:
            return
        with self._lock:
            now = time.time()
            meter = now - self._last_meter >= self.meter_interval_s
            ended = False
            for job_id, act in list(self.active.items()):
                was_running = act.run.running
                try:
                    outcome = act.run.step()
                except Exception as e:
                    outcome = Outcome(
                        None, f"watching it failed: {type(e).__name__}: {e}", lost=True
                    )
                if act.run.running and not was_running:
                    act.started = act.metered_to = time.time()
                    self.store.transition(job_id, {"STARTING"}, "RUNNING", started_at=act.started)
                if outcome is not None:
                    self._finish(act, outcome)
                    ended = True
                    continue
                limit = act.row.spec.get("request", {}).get("max_runtime_s")
                if act.run.running and limit and act.stop is None and now - act.started > limit:
                    self._stop_job(act, "FAILED", f"ran longer than its max_runtime ({limit:g} s)")
                if meter and act.run.running:
                    self._meter(act, now)
            if meter:
                self._last_meter = now
            if ended:
                self._wake.set()

    def _meter(self, act: _Active, now: float) -> None:
        if self.metering is None or now <= act.metered_to:
            return
        start, act.metered_to = act.metered_to, now
        degrees, balance = self.metering.charge(act.row, act.nodes, start, now)
        act.row.degrees += degrees
        self.store.update(act.row.id, degrees=act.row.degrees)
        if act.stop is not None:
            return
        cap = act.row.spec.get("max_degrees")
        if balance is not None and balance <= 0:
            why = f"account {act.row.account}'s balance reached {float(balance):.6f} degrees"
            for other in self.active.values():
                if other.row.account == act.row.account and other.stop is None:
                    self._stop_job(other, "OUT_OF_CREDIT", why)
        elif cap is not None and act.row.degrees >= cap:
            self._stop_job(
                act,
                "OUT_OF_CREDIT",
                f"used {act.row.degrees:.6f} degrees, its cost cap max_degrees={cap:g}",
            )

    def _stop_job(
        self, act: _Active, state: str, why: str, *, grace_s: float | None = None
    ) -> None:
        act.stop = (state, why)
        act.run.terminate(self.grace_s if grace_s is None else grace_s)

    def _finish(self, act: _Active, outcome: Outcome) -> None:
        job_id = act.row.id
        now = time.time()
        if act.run.running:
            with contextlib.suppress(Exception):  # the last interval is charged too
                self._meter(act, now)
        try:
            act.run.release()
            self.releasing.append(act.run)
        except Exception:
            log.exception("releasing job %s", job_id)
        del self.active[job_id]
        row = act.row
        if act.preempted:
            self.store.transition(
                job_id,
                {"PREEMPTED"},
                "QUEUED",
                nodes=[],
                placement_group=None,
                scheduler=None,
                error=f"preempted (attempt {row.attempts}); queued again",
            )
        elif act.stop is not None:
            state, why = act.stop
            self.store.transition(
                job_id, ACTIVE, state, ended_at=now, exit_code=outcome.exit_code, error=why
            )
        elif outcome.lost:
            if outcome.node:
                self.pool.suspect(outcome.node)  # not placed there again until known alive
                self._nodes = (0.0, [])  # the next round asks the pool again
            self._requeue_lost(replace(row, state=self._state(job_id)), outcome.error or "lost")
        elif outcome.exit_code == 0:
            self.store.transition(
                job_id, ACTIVE, "SUCCEEDED", ended_at=now, exit_code=0, result=outcome.result
            )
            self._learn(act, now)
        else:
            self.store.transition(
                job_id,
                ACTIVE,
                "FAILED",
                ended_at=now,
                exit_code=outcome.exit_code,
                error=outcome.error,
            )

    def _learn(self, act: _Active, now: float) -> None:
        """Teach the policy how fast this kind of job ran on its accelerator type (its
        ``ThroughputModel``): later jobs of the kind are placed and estimated with it."""
        model = getattr(self.policy, "throughput", None)
        if model is None or not act.nodes:
            return
        model.observe(
            job_spec(act.row).kind, act.nodes[0].accelerator, max(now - act.started, 1e-3)
        )

    def _state(self, job_id: str) -> str:
        row = self.store.get(job_id)
        return row.state if row is not None else "RUNNING"

    # -- a scheduling round ------------------------------------------------------------------
    def nodes(self) -> list[NodeSpec]:
        at, nodes = self._nodes
        if time.time() - at > self.nodes_ttl_s or not nodes:
            nodes = self.pool.nodes()
            self._nodes = (time.time(), nodes)
        return nodes

    def _cancels(self) -> None:
        for row in self.store.list(states=ACTIVE):
            act = self.active.get(row.id)
            if row.cancel_requested and act is not None and act.stop is None:
                self._stop_job(act, "CANCELED", "canceled")

    def _schedule(self, now: float) -> None:
        queued = self.store.list(states={"QUEUED"})
        queued.sort(key=lambda r: (r.submitted_at, r.id))
        active = self.store.list(states=ACTIVE)
        running = []
        for r in active:
            spec = job_spec(r)
            started = r.started_at or now
            limit = spec.max_runtime_s
            running.append(
                RunningJob(spec, tuple(r.nodes), started, started + limit if limit else math.inf)
            )
        if not queued:
            return
        reservations = [
            Reservation(x.id, x.account, x.gpus, x.accelerator, x.start, x.end, x.cpus)
            for x in self.store.reservations(after=now)
        ]
        nodes = self.nodes()
        decision = self.policy.decide(
            now, [job_spec(r) for r in queued], running, nodes, reservations
        )
        by_id = {r.id: r for r in queued}
        for job_id in decision.preempt:
            act = self.active.get(job_id)
            if (
                act is not None
                and act.stop is None
                and not act.preempted
                and self.store.transition(job_id, {"RUNNING", "STARTING"}, "PREEMPTED")
            ):
                act.preempted = True
                act.run.terminate(self.grace_s)
        node_by_id = {n.id: n for n in nodes}
        for job_id, placed in decision.start:
            row = by_id.get(job_id)
            if row is not None:
                self._start(row, placed, node_by_id)
        self.store.set_positions(
            {
                r.id: (decision.positions.get(r.id), decision.etas.get(r.id))
                for r in queued
                if r.id not in dict(decision.start)
                and (decision.positions.get(r.id), decision.etas.get(r.id)) != (r.position, r.eta)
            }
        )

    def _start(self, row: JobInfo, placed: Sequence[str], nodes: dict[str, NodeSpec]) -> None:
        log_path = str(Path(self.log_dir) / f"{row.id}.log")
        attempts = row.attempts + 1
        if not self.store.transition(
            row.id,
            {"QUEUED"},
            "STARTING",
            nodes=list(placed),
            scheduler=self.holder,
            attempts=attempts,
            log_path=log_path,
            placement_group=f"{NAME_PREFIX}{row.id}-{attempts}",
            position=None,
            eta=None,
            started_at=None,
        ):
            return  # canceled meanwhile
        row = replace(
            row, state="STARTING", attempts=attempts, nodes=list(placed), log_path=log_path
        )
        req = row.spec.get("request", {})
        bundles = tuple(
            Bundle(
                n,
                float(req.get("cpus", 1)),
                int(req.get("gpus", 0)),
                float(req.get("memory_gb", 0)),
            )
            for n in placed
        )
        entry = row.spec.get("entry", {})
        if row.kind == "entrypoint":
            argv = [sys.executable, *entry["argv"]]
            payload = None
        else:
            argv = python_argv()
            payload = self.store.payload(row.id)
        env = {k: str(v) for k, v in (entry.get("env") or {}).items()}
        spec = LaunchSpec(
            job_id=row.id,
            argv=argv,
            env=env,
            bundles=bundles,
            log_path=log_path,
            payload=payload,
            cwd=entry.get("cwd"),
            strategy=req.get("strategy", "PACK"),
            attempt=attempts,
        )
        if attempts > 1:
            with contextlib.suppress(OSError), open(log_path, "ab") as f:
                f.write(b"--- attempt %d ---\n" % attempts)
        try:
            run = self.pool.launch(spec)
        except Exception as e:
            self.store.transition(
                row.id,
                {"STARTING"},
                "FAILED",
                ended_at=time.time(),
                error=f"could not start: {type(e).__name__}: {e}",
            )
            return
        now = time.time()
        used = tuple(nodes.get(n, NodeSpec(n, 0, 0, 0)) for n in placed)
        self.active[row.id] = _Active(run, row, used, now, now)
        if run.running:  # a local run starts at once
            self.store.transition(row.id, {"STARTING"}, "RUNNING", started_at=now)


def wait_for(check: Callable[[], bool], timeout: float | None, step: float = 0.1) -> bool:
    """Poll ``check`` until it is true or ``timeout`` seconds pass; whether it became true."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while not check():
        if deadline is not None and time.monotonic() >= deadline:
            return False
        time.sleep(step)
    return True
