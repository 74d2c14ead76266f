"""Scheduling policies: which queued jobs start now, on which nodes, and which running jobs to
preempt. Pure Python over :mod:`matrixos.jobs.specs`; no Ray, no I/O — the runtime and the
simulator (:mod:`matrixos.jobs.sim`) drive the same code.

One engine, four settings (``POLICIES``):

- ``fifo``: arrival order; the first job that does not fit blocks everything behind it.
- ``fifo_gang``: arrival order, gangs all-or-nothing, a job that does not fit is skipped (first
  fit, no reservation: big gangs can starve).
- ``easy_backfill``: arrival order; the first blocked job (the head) gets a reservation at the
  earliest time enough running jobs reach their hard end (its *shadow* time, on chosen nodes),
  and later jobs start only if they end by then or use capacity the head does not need.
- ``priority_preempt`` (the default): priority classes, fair share across accounts within a
  class, the same EASY backfill, and preemption of lower-priority jobs for a blocked head.

No starvation: a job queued longer than ``starve_after_s`` is *urgent*: urgent jobs go first in
arrival order, never get preempted, and the first one holds the EASY reservation, which the
backfill never delays. An urgent job therefore starts by the later of its becoming urgent and the
hard ends of the jobs ahead of it — the bound is ``starve_after_s`` plus the longest
``max_runtime_s`` per urgent job ahead of it. Jobs that end (by their limits) before an urgent
head's shadow still backfill its nodes: they cannot delay it. With ``drain=True`` nothing does:
its nodes drain as running jobs really end, so it may start before its shadow, at the cost of
the idle GPUs meanwhile (2.5 points of utilization on a simulated 10,000-GPU trace).

Example::

    policy = POLICIES["priority_preempt"]()
    d = policy.decide(now, queue, running, nodes, reservations)
    d.start    # [(job id, (node id per bundle, ...)), ...]
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from typing import Protocol

import numpy as np

from matrixos.errors import JobError
from matrixos.jobs.ordering import QueueIndex
from matrixos.jobs.placement import Cluster, Freeing, GpuKey
from matrixos.jobs.reservations import Holds, check_reservation, earliest_window
from matrixos.jobs.specs import (
    OBJECTIVES,
    STRATEGIES,
    Decision,
    JobSpec,
    NodeSpec,
    Reservation,
    RunningJob,
)
from matrixos.jobs.throughput import ThroughputModel

DEFAULT_RUNTIME_S = 3600.0


class Policy(Protocol):
    """A scheduling policy: one ``decide`` per scheduling round (a tick, a submit, a finish).
    ``throughput`` is where the runtime reports finished runs (``observe``) so placement learns.
    """

    name: str
    throughput: ThroughputModel

    def decide(
        self,
        now: float,
        queue: Sequence[JobSpec],
        running: Sequence[RunningJob],
        nodes: Sequence[NodeSpec],
        reservations: Sequence[Reservation] = (),
    ) -> Decision: ...


def _bad(job: JobSpec, field: str, msg: str, hint: str | None = None) -> JobError:
    return JobError(f"job {job.id}: {msg}", field=field, hint=hint)


#: The smallest CPU share a bundle may ask for (Ray counts resources in 1/10,000ths).
MIN_CPUS = 0.0001
#: The largest gang: bundles beyond this are refused at submit, whatever the cluster's size.
MAX_GANG = 65_536


def validate(job: JobSpec, nodes: Sequence[NodeSpec]) -> None:
    """Refuse a request this cluster can never run, naming the field at fault.

    Raises :class:`~matrixos.errors.JobError` (``.field`` set) for negative or non-finite
    amounts, an unknown strategy or objective, accelerator types the cluster lacks, constraints
    no node meets, a bundle larger than any node, and a gang larger than the whole cluster.

    Example: ``validate(JobSpec("j", "team-a", gpus=-1), nodes)`` raises with ``field="gpus"``.
    """
    if not job.account:
        raise _bad(job, "account", "no account named", "pass account=…")
    for f in ("cpus", "memory_gb", "min_gpu_memory_gb"):
        v = getattr(job, f)
        if not (isinstance(v, int | float) and math.isfinite(v) and v >= 0):
            raise _bad(job, f, f"{f} must be a number ≥ 0, got {v!r}")
    if 0 < job.cpus < MIN_CPUS:
        raise _bad(
            job, "cpus", f"cpus must be 0 or ≥ {MIN_CPUS} (Ray's resolution), got {job.cpus!r}"
        )
    if not isinstance(job.gpus, int) or isinstance(job.gpus, bool) or job.gpus < 0:
        raise _bad(job, "gpus", f"gpus must be a whole number ≥ 0, got {job.gpus!r}")
    if not isinstance(job.nodes, int) or not 1 <= job.nodes <= MAX_GANG:
        raise _bad(
            job, "nodes", f"nodes (the gang size) must be 1 to {MAX_GANG:,}, got {job.nodes!r}"
        )
    for f in ("max_runtime_s", "expected_runtime_s", "deadline_s"):
        v = getattr(job, f)
        if v is not None and not (isinstance(v, int | float) and v > 0):
            raise _bad(job, f, f"{f} must be > 0 seconds, got {v!r}")
    if job.strategy not in STRATEGIES:
        raise _bad(job, "strategy", f"unknown strategy {job.strategy!r}", ", ".join(STRATEGIES))
    if job.objective not in OBJECTIVES:
        raise _bad(job, "objective", f"unknown objective {job.objective!r}", "cost or latency")
    known = sorted({n.accelerator for n in nodes if n.accelerator and n.gpus > 0})
    for a in job.accelerators:
        if a not in known:
            raise _bad(
                job,
                "accelerators",
                f"unknown accelerator {a!r}",
                f"this cluster has: {', '.join(known) or 'no GPUs'}",
            )
    if job.accelerators and not job.gpus:
        raise _bad(job, "gpus", "accelerator types named but gpus=0", "ask for gpus=N")
    c = Cluster(nodes)
    types = acceptable_types(job, c)
    if job.gpus and not types:
        field = "min_gpu_memory_gb" if job.min_gpu_memory_gb else "bf16" if job.bf16 else "gpus"
        raise _bad(job, field, "no node of an acceptable type meets the GPU constraints")
    hosts = range(len(c.nodes)) if not job.gpus else [i for t in types for i in c.types[t]]
    if not any(c.bundles_on(i, _one(job)) for i in hosts):
        most = {
            "gpus": max((n.gpus for n in nodes), default=0),
            "cpus": max((n.cpus for n in nodes), default=0),
            "memory_gb": max((n.memory_gb for n in nodes), default=0),
        }
        field = next((f for f, m in most.items() if getattr(job, f) > m), "gpus")
        raise _bad(
            job,
            field,
            f"one bundle ({job.cpus} CPUs, {job.gpus} GPUs, {job.memory_gb} GB) fits no node",
            f"the largest node has {most[field]} {field}",
        )
    if not any(c.place(job, t) for t in types):
        raise _bad(
            job,
            "nodes",
            f"a gang of {job.nodes} bundles ({job.strategy}) is larger than the whole cluster",
            "ask for fewer nodes, or fewer resources per bundle",
        )


def _one(job: JobSpec) -> JobSpec:
    return JobSpec(
        job.id,
        job.account,
        cpus=job.cpus,
        gpus=job.gpus,
        memory_gb=job.memory_gb,
        min_gpu_memory_gb=job.min_gpu_memory_gb,
        bf16=job.bf16,
    )


def acceptable_types(job: JobSpec, cluster: Cluster) -> list[GpuKey]:
    """The accelerator types (in the job's order of preference) that could host its bundles."""
    if not job.gpus:
        return [None]
    names = job.accelerators or tuple(a for a in cluster.types if a is not None)
    out: list[GpuKey] = []
    for a in names:
        ix = cluster.types.get(a)
        if ix and any(
            cluster.nodes[i].gpu_memory_gb + 1e-9 >= job.min_gpu_memory_gb
            and (cluster.nodes[i].bf16 or not job.bf16)
            for i in ix
        ):
            out.append(a)
    return out


class QueuePolicy:
    """The scheduling engine behind every entry of ``POLICIES`` (see the module docstring).

    ``cost_of(accelerator)`` is the price of one GPU-hour in degrees (default 1.0 for all);
    ``throughput`` learns runtime factors per job kind and type (``ThroughputModel``). Keep one
    instance across rounds: it keeps the cluster index and applies only what changed.
    ``drain``: behind an urgent head, backfill nothing onto its nodes (see the module docstring).
    """

    name = "queue"
    ordering = "fifo"  # or "priority"
    blocked = "stop"  # "skip" (first fit) or "backfill" (EASY)
    preempts = False

    def __init__(
        self,
        *,
        cost_of: Callable[[str | None], float] | None = None,
        throughput: ThroughputModel | None = None,
        starve_after_s: float = 12 * 3600.0,
        backfill_depth: int = 512,
        grace_s: float = 30.0,
        preempt_after_s: float = 300.0,
        preempt_retry_s: float = 60.0,
        usage_half_life_s: float = 24 * 3600.0,
        default_runtime_s: float = DEFAULT_RUNTIME_S,
        drain: bool = False,
    ) -> None:
        self.cost_of = cost_of or (lambda _acc: 1.0)
        self.throughput = throughput or ThroughputModel()
        self.starve_after_s = starve_after_s
        self.backfill_depth = backfill_depth
        self.grace_s = grace_s
        self.preempt_after_s = preempt_after_s
        self.usage_half_life_s = usage_half_life_s
        self.default_runtime_s = default_runtime_s
        self.drain = drain
        self._cluster: Cluster | None = None
        self._nodes: Sequence[NodeSpec] | None = None
        self._types: dict[tuple, list[GpuKey]] = {}
        self._usage: dict[str, float] = {}  # decayed GPU-seconds per account
        self._last: float | None = None
        self._preempting: dict[str, float] = {}  # victim id -> when it was asked to stop
        self._ix = QueueIndex(default_runtime_s)
        self._tried: dict[str, float] = {}  # head id -> when preemption last found no victims
        self.preempt_retry_s = preempt_retry_s

    # --- the round ------------------------------------------------------------------------
    def decide(
        self,
        now: float,
        queue: Sequence[JobSpec],
        running: Sequence[RunningJob],
        nodes: Sequence[NodeSpec],
        reservations: Sequence[Reservation] = (),
    ) -> Decision:
        """Start what fits now (all bundles or none), preempt for a blocked high-priority head,
        and report every queued job's position and ETA."""
        self._account(now)  # usage since the last round, by what ran then
        c = self._sync(nodes, running)
        order, ids = self._order(now, queue, c)
        d = Decision(positions=dict(zip(ids, range(1, len(ids) + 1), strict=True)))
        holds = Holds(now, reservations, c)
        started: list[int] = []  # positions in ``order``
        head: int | None = None
        shadow = math.inf
        cap: dict[int, float] | None = None
        failed: set[tuple] = set()
        scanned = 0
        urgent = False
        specs, shape = self._ix.specs, self._ix.shape
        for pos, row in enumerate(order.tolist()):
            if failed:  # past the first job that did not fit: a bounded look further
                scanned += 1
                if scanned > self.backfill_depth:
                    break
            if c.free_cpu_total < 1e-9 and not any(c.free_by_type.values()):
                break
            job = specs[row]
            limit_end = now + job.max_runtime_s if job.max_runtime_s else math.inf
            # With ``drain``, behind an urgent (starving) head nothing jumps onto its nodes,
            # not even a job that would end in time: the nodes drain for it as running jobs
            # really end, rather than at the hard ends its shadow is computed from.
            short = head is not None and limit_end <= shadow and not (urgent and self.drain)
            # Same request, same outcome this round (holds are per account: key them so).
            key = (shape[row], short, job.account if holds else None)
            if key in failed:
                continue
            got = self._place(job, now, c, holds, cap if head is not None and not short else None)
            if got is None:
                failed.add(key)
                if head is not None or self.blocked == "skip":
                    continue
                head = pos
                urgent = self.ordering != "fifo" and job.submitted_at <= now - self.starve_after_s
                shadow, cap = self._reserve(job, now, c, reservations)
                if self.blocked == "stop":
                    break
                if (
                    self.preempts
                    and shadow > now + self.preempt_after_s
                    and self._tried.get(job.id, -math.inf) <= now - self.preempt_retry_s
                ):
                    d.preempt = self._preempt(job, now, c)
                    if not d.preempt:  # no victims now: look again a little later, not each round
                        self._tried = {job.id: now}
                    else:
                        shadow, cap = self._reserve(job, now, c, reservations)
                continue
            acc, idxs = got
            rj = RunningJob(job, c.ids(idxs), now, limit_end)
            c.add(rj)
            started.append(pos)
            holds.took(job, acc, limit_end)
            if cap is not None and not short:
                for i in idxs:
                    if i in cap:
                        cap[i] -= job.gpus
            d.start.append((job.id, rj.nodes))
        # ETAs: running jobs' remaining GPU-seconds, then the queued work ahead, over the GPUs.
        gpus = sum(v for a, v in c.total_gpus.items() if a is not None)
        ahead = max(0.0, c.busy_gpu_end - now * c.busy_gpus)
        mask = np.zeros(len(order), dtype=bool)
        mask[started] = True
        etas = self._ix.etas(order, now, ahead, gpus, mask, head, shadow)
        d.etas = dict(zip(ids, etas.tolist(), strict=True))
        for jid, _ in d.start:  # the index mirrors what the runtime reports, not our wishes
            c.remove(jid)
        return d

    # --- state ----------------------------------------------------------------------------
    def _sync(self, nodes: Sequence[NodeSpec], running: Sequence[RunningJob]) -> Cluster:
        c = self._cluster
        if c is None or (nodes is not self._nodes and tuple(nodes) != c.nodes):
            c = self._cluster = Cluster(nodes, self.default_runtime_s)
            self._types.clear()
        self._nodes = nodes
        c.sync(running)
        for jid in [j for j in self._preempting if j not in c.running]:
            del self._preempting[jid]
        return c

    def _account(self, now: float) -> None:
        """Decay each account's recent GPU usage and add what ran since the last round."""
        c = self._cluster
        if c is not None and self._last is not None and now > self._last:
            dt = now - self._last
            decay = 0.5 ** (dt / self.usage_half_life_s)
            for a in list(self._usage):
                self._usage[a] *= decay
            for a, g in c.account_gpus.items():
                if g:
                    self._usage[a] = self._usage.get(a, 0.0) + g * dt
        self._last = now if self._last is None else max(self._last, now)

    def _order(
        self, now: float, queue: Sequence[JobSpec], c: Cluster
    ) -> tuple[np.ndarray, list[str]]:
        rows = self._ix.rows(queue)
        if self.ordering == "fifo":
            order = self._ix.fifo(rows)
        else:
            total = sum(self._usage.values()) or 1.0
            share = {a: u / total for a, u in self._usage.items()}
            gpus = float(sum(v for a, v in c.total_gpus.items() if a is not None))
            order = self._ix.fair(rows, now, self.starve_after_s, share, gpus)
        return order, self._ix.ids_of(order)

    def _types_of(self, job: JobSpec, c: Cluster) -> list[GpuKey]:
        key = (job.gpus > 0, job.accelerators, job.min_gpu_memory_gb, job.bf16)
        got = self._types.get(key)
        if got is None:
            got = self._types[key] = acceptable_types(job, c)
        return got

    # --- placement ------------------------------------------------------------------------
    def runtime_on(self, job: JobSpec, acc: GpuKey) -> float:
        """Expected seconds of ``job`` on type ``acc`` (stated runtime times learned factor)."""
        base = job.expected_runtime_s or job.max_runtime_s or self.default_runtime_s
        return base * self.throughput.factor(job.kind, acc)

    def rank(self, job: JobSpec, now: float, types: Sequence[GpuKey]) -> list[GpuKey]:
        """Acceptable types, best first: the cheapest in degrees that meets the deadline
        (``objective="cost"``), or the fastest (``"latency"``); late ones by finish time."""
        units = job.gpus * job.nodes if job.gpus else job.cpus * job.nodes

        def key(acc: GpuKey) -> tuple[int, float, float]:
            rt = self.runtime_on(job, acc)
            finish = now + rt
            cost = rt / 3600.0 * units * self.cost_of(acc)
            late = job.deadline_s is not None and finish > job.submitted_at + job.deadline_s
            if job.objective == "latency" or late:
                return (int(late), finish, cost)
            return (0, cost, finish)

        return sorted(types, key=key)

    def _place(
        self,
        job: JobSpec,
        now: float,
        c: Cluster,
        holds: Holds,
        cap: dict[int, float] | None,
    ) -> tuple[GpuKey, list[int]] | None:
        limit_end = now + job.max_runtime_s if job.max_runtime_s else math.inf
        fits: list[GpuKey] = []
        for acc in self._types_of(job, c):
            held = holds.held(job, acc, limit_end, c.free_by_type.get(acc, 0)) if holds else 0
            if c.count(job, acc, held):
                fits.append(acc)
        if len(fits) > 1:
            fits = self.rank(job, now, fits)
        for acc in fits:
            idxs = c.place(job, acc, cap)
            if idxs is not None:
                return acc, idxs
        return None

    # --- the head's reservation -------------------------------------------------------------
    def _reserve(
        self, head: JobSpec, now: float, c: Cluster, reservations: Sequence[Reservation] = ()
    ) -> tuple[float, dict[int, float]]:
        """The head's shadow time and, per node it will use then, the GPUs a job running past
        the shadow may still take there (the slack). Booked windows the head would run into
        push its shadow past them."""
        best: tuple[float, dict[int, float]] = (math.inf, {})
        if not head.gpus:
            return self._reserve_cpu(head, now, c), {}
        need = head.nodes
        soon = [(now + self.grace_s, jid) for jid in self._preempting]
        for acc in self._types_of(head, c):
            if c.total_gpus.get(acc, 0) < head.total_gpus:
                continue
            f = Freeing(c, head, acc)
            when = now
            if f.have < need:
                when = math.inf
                for end, jid in itertools.chain(soon, c.ends):
                    if c.job_type.get(jid) != acc or jid not in c.running:
                        continue
                    f.release(c.running[jid])
                    if f.have >= need:
                        when = max(end, now)
                        break
            if reservations and math.isfinite(when):
                runs = list(c.running.values())
                limit = head.max_runtime_s or self.runtime_on(head, acc)
                gpus = head.total_gpus
                when = earliest_window(gpus, acc, limit, when, c.nodes, runs, reservations)
            if when >= best[0]:
                continue
            # The head's nodes at the shadow: those freeing up first, then free ones; the slack
            # on each is what stays free beyond the head's share.
            cap: dict[int, float] = {}
            left = need
            top, extra = f.top, f.extra
            for i in [*extra, *(i for k in range(top, f.g - 1, -1) for i in c.buckets[acc][k])]:
                if i in cap:
                    continue
                e = extra.get(i, 0)
                m = min(f.fit(i, e), left)
                if m <= 0:
                    continue
                # What stays free now beyond what the head needs there at its shadow.
                cap[i] = max(0, min(c.free_gpus[i], min(c.free_gpus[i] + e, top) - m * f.g))
                left -= m
                if not left:
                    break
            best = (when, cap)
        return best

    def _reserve_cpu(self, head: JobSpec, now: float, c: Cluster) -> float:
        need = head.cpus * head.nodes - c.free_cpu_total
        if need <= 0:
            return now
        for end, jid in c.ends:
            rj = c.running[jid]
            need -= rj.spec.cpus * len(rj.nodes)
            if need <= 0:
                return max(end, now)
        return math.inf

    # --- preemption -------------------------------------------------------------------------
    def _preempt(self, head: JobSpec, now: float, c: Cluster) -> list[str]:
        """The fewest lower-priority running jobs whose GPUs let ``head`` fit: lowest priority
        first, youngest first within a priority, then any victim not needed is spared."""
        if not head.gpus or not any(n for p, n in c.priority_count.items() if p < head.priority):
            return []
        need = head.nodes
        best: list[str] | None = None
        for acc in self._types_of(head, c):
            victims = sorted(
                (
                    rj
                    for jid, rj in c.running.items()
                    if c.job_type.get(jid) == acc
                    and rj.spec.priority < head.priority
                    and jid not in self._preempting
                    and rj.started_at - rj.spec.submitted_at < self.starve_after_s
                ),
                key=lambda r: (r.spec.priority, -r.started_at),
            )
            f = Freeing(c, head, acc)
            chosen: list[RunningJob] = []
            for rj in victims:
                if f.have >= need:
                    break
                f.release(rj)
                chosen.append(rj)
            if f.have < need:
                continue
            for rj in reversed(list(chosen)):  # spare every victim the head does not need
                f.release(rj, -1)
                if f.have >= need:
                    chosen.remove(rj)
                else:
                    f.release(rj)
            if best is None or sum(r.spec.total_gpus for r in chosen) < sum(
                c.running[j].spec.total_gpus for j in best
            ):
                best = [r.spec.id for r in chosen]
        for jid in best or ():
            self._preempting[jid] = now
        return best or []


class Fifo(QueuePolicy):
    """Arrival order; the first job that does not fit blocks all behind it (head-of-line)."""

    name = "fifo"


class FifoGang(QueuePolicy):
    """Arrival order, all-or-nothing gangs, skip what does not fit (first fit; no reservation,
    so a big gang can wait as long as smaller jobs keep arriving)."""

    name = "fifo_gang"
    blocked = "skip"


class EasyBackfill(QueuePolicy):
    """Arrival order with EASY backfilling: the head's start is reserved; later jobs jump ahead
    only if they do not delay it (or any reservation)."""

    name = "easy_backfill"
    blocked = "backfill"


class PriorityPreempt(QueuePolicy):
    """Priority classes, fair share across accounts, EASY backfilling, preemption of
    lower-priority jobs (youngest first, fewest needed) for a blocked head, starvation bound."""

    name = "priority_preempt"
    ordering = "priority"
    blocked = "backfill"
    preempts = True


POLICIES: dict[str, Callable[..., Policy]] = {
    "fifo": Fifo,
    "fifo_gang": FifoGang,
    "easy_backfill": EasyBackfill,
    "priority_preempt": PriorityPreempt,
}
DEFAULT_POLICY = "priority_preempt"

__all__ = [
    "DEFAULT_POLICY",
    "POLICIES",
    "Decision",
    "EasyBackfill",
    "Fifo",
    "FifoGang",
    "JobSpec",
    "NodeSpec",
    "Policy",
    "PriorityPreempt",
    "QueuePolicy",
    "Reservation",
    "RunningJob",
    "ThroughputModel",
    "acceptable_types",
    "check_reservation",
    "earliest_window",
    "validate",
]
