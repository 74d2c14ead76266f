"""A discrete-event simulator that drives the real scheduling policies (``POLICIES``, not a
copy) over a job trace, and a synthetic trace shaped like published GPU-cluster traces.

The trace follows the shapes reported for Microsoft Philly (Jeon et al., ATC'19) and SenseTime
Helios (Hu et al., SC'21): most jobs take 1-8 GPUs with a heavy tail of gangs up to 2,048 GPUs,
log-normal runtimes (minutes to days; bigger gangs run longer), users' time limits well above
the real runtime, and bursty arrivals (a diurnal cycle plus sweeps of many jobs at once) from a
few accounts of very different sizes.

Example::

    nodes = cluster(h100=16, a100=16, l4=8)
    trace = synthetic_trace(400, gpus=320, seed=1)
    result = simulate(POLICIES["easy_backfill"](), trace, nodes)
    result.utilization
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from matrixos.errors import JobError
from matrixos.jobs.policy import Policy, validate
from matrixos.jobs.specs import JobSpec, NodeSpec, RunningJob

DAY = 86400.0
# The dense BF16 peaks of the degree table, used when none is given (``metering.PEAK_TFLOPS``
# is the configurable one; the benchmark passes it in).
PEAKS: dict[str, float] = {"H100": 989.0, "A100": 312.0, "L4": 121.0}
# The real speed of each kind of work on each type, relative to an A100 (what the scheduler's
# ThroughputModel has to learn; its prior, 312 / peak, is right only for pure-compute work).
TRUE_FACTORS: dict[str, dict[str, float]] = {
    "train": {"H100": 0.45, "A100": 1.0, "L4": 2.6},
    "finetune": {"H100": 0.55, "A100": 1.0, "L4": 2.2},
    "inference": {"H100": 0.7, "A100": 1.0, "L4": 1.3},  # memory-bound: the L4 is nearly as good
}


@dataclass(frozen=True)
class SimJob:
    """A trace entry: the request and its true runtime on an A100 (the reference)."""

    spec: JobSpec
    runtime_s: float


def cluster(h100: int, a100: int, l4: int, gpus_per_node: int = 8) -> list[NodeSpec]:
    """8-GPU nodes of three types (H100 80 GB, A100 80 GB, L4 24 GB), all BF16."""
    out: list[NodeSpec] = []
    for kind, count, mem in (("H100", h100, 80), ("A100", a100, 80), ("L4", l4, 24)):
        for k in range(count):
            out.append(NodeSpec(f"{kind.lower()}-{k}", 96, gpus_per_node, 1024, kind, mem, True))
    return out


_SIZES = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048]
_PINS: list[tuple[str, ...]] = [("H100", "A100"), ("H100",), ("A100",), ()]
# Gang sizes 1, 2, 4, ... 2,048 GPUs: about half the jobs on one GPU, most of the GPU time in
# multi-node gangs (16-512 GPUs common, 1,024-2,048 rare), as Helios (SC'21) and Philly
# (ATC'19) report — shaped after them, not fitted to their released logs.
_WEIGHTS = [0.45, 0.07, 0.08, 0.16, 0.07, 0.06, 0.045, 0.03, 0.017, 0.009, 0.004, 0.0015]


def synthetic_trace(
    n: int,
    *,
    gpus: int,
    load: float = 1.0,
    seed: int = 0,
    accounts: int = 8,
    max_gang: int = 2048,
    sigma: float = 1.5,
    inference: float = 0.25,
    gang_weights: Sequence[float] | None = None,
) -> list[SimJob]:
    """``n`` jobs whose GPU-seconds (at A100 speed) offer ``load`` * ``gpus`` over the trace.

    Gang sizes 1-``max_gang`` GPUs (about half single-GPU, most GPU time in multi-node gangs,
    a tail to 2,048; ``gang_weights``: one weight per size 1, 2, 4, ...), log-normal runtimes,
    time limits 1.2-6x the runtime, arrivals diurnal with sweeps of 10-60 jobs, accounts of
    Zipf-like sizes, priorities 0 (most), 1 and 2.
    """
    rnd = random.Random(seed)
    sizes = [s for s in _SIZES if s <= max_gang]
    weights = list(gang_weights or _WEIGHTS)[: len(sizes)]
    acct_w = [1 / (k + 1) for k in range(accounts)]
    raw: list[tuple[int, float, str, tuple[str, ...], int, str]] = []
    while len(raw) < n:
        size = rnd.choices(sizes, weights)[0]
        account = f"team-{rnd.choices(range(accounts), acct_w)[0]}"
        burst = rnd.random() < 0.04 and size <= 8
        for _ in range(rnd.randint(10, 60) if burst else 1):
            median = 600.0 * (1 + math.log2(size))  # bigger gangs run longer (Helios)
            runtime = min(3 * DAY, max(30.0, rnd.lognormvariate(math.log(median), sigma)))
            # Many users pin a type (FP8 wants an H100, a tuned recipe an A100): a pinned head
            # idles the other pools under plain FIFO.
            if size <= 8:
                r = rnd.random()
                kind = "inference" if r < inference else "finetune" if r < 0.65 else "train"
                if kind == "inference":
                    accs: tuple[str, ...] = ("L4",) if rnd.random() < 0.7 else ()
                else:
                    accs = rnd.choices(_PINS, [0.35, 0.25, 0.15, 0.25])[0]
            else:
                kind = "train"
                accs = rnd.choices(_PINS[:3], [0.2, 0.5, 0.3])[0]
            prio = rnd.choices([0, 1, 2], [0.75, 0.2, 0.05])[0]
            raw.append((size, runtime, account, accs, prio, kind))
    raw = raw[:n]
    work = sum(s * r for s, r, *_ in raw)
    span = work / (gpus * load)
    # Arrival times: a diurnal rate (peak twice the trough), bursts arriving together.
    times = sorted(_diurnal(rnd, span) for _ in range(n))
    jobs: list[SimJob] = []
    k = 0
    while k < n:
        size, runtime, account, accs, prio, kind = raw[k]
        t = times[k]
        limit = runtime * rnd.uniform(1.2, 6.0)
        bundle = min(size, 8)
        spec = JobSpec(
            id=f"j{k}",
            account=account,
            cpus=2 * bundle,
            gpus=bundle,
            memory_gb=16 * bundle,
            nodes=max(1, size // 8),
            accelerators=accs,
            priority=prio,
            submitted_at=t,
            max_runtime_s=math.ceil(limit / 60) * 60,
            expected_runtime_s=runtime,
            kind=kind,
        )
        jobs.append(SimJob(spec, runtime))
        k += 1
    return jobs


def _diurnal(rnd: random.Random, span: float) -> float:
    while True:  # thinning: rate ∝ 1 + 0.5·sin(2πt/day)
        t = rnd.uniform(0, span)
        if rnd.random() * 1.5 <= 1 + 0.5 * math.sin(2 * math.pi * t / DAY):
            return t


def _unrunnable(trace: Sequence[SimJob], nodes: Sequence[NodeSpec]) -> set[str]:
    """Ids of the jobs the runtime would refuse at submit (``validate``), by request shape."""
    verdict: dict[tuple, bool] = {}
    out: set[str] = set()
    for j in trace:
        s = j.spec
        key = (s.gpus, s.nodes, s.cpus, s.memory_gb, s.accelerators, s.strategy)
        ok = verdict.get(key)
        if ok is None:
            try:
                validate(s, nodes)
                ok = True
            except JobError:
                ok = False
            verdict[key] = ok
        if not ok:
            out.add(s.id)
    return out


@dataclass
class SimResult:
    """What one simulated run measured."""

    policy: str
    gpus: int
    utilization: float  # busy GPU-seconds / (GPUs * the arrival window)
    waits: list[float]  # per job: first start - submit
    jcts: list[float]  # per job: finish - submit
    degrees: float  # Σ GPU-hours * peak / 312 over every run, preempted ones included
    decisions: list[tuple[int, float]]  # (queued jobs, seconds) per decide call
    preemptions: int
    makespan: float
    rejected: int = 0  # jobs ``validate`` refuses on this cluster (never queued)
    waits_by_size: dict[int, list[float]] = field(default_factory=dict)
    timeline: list[tuple[float, int, int]] = field(default_factory=list)  # (t, busy GPUs, queued)
    utilization_by_type: dict[str, float] = field(default_factory=dict)

    def pct(self, values: Sequence[float], q: float) -> float:
        """The q-quantile (0-1) of ``values`` (nearest rank)."""
        if not values:
            return 0.0
        s = sorted(values)
        return s[min(len(s) - 1, max(0, math.ceil(q * len(s)) - 1))]


def simulate(
    policy: Policy,
    trace: Sequence[SimJob],
    nodes: Sequence[NodeSpec],
    *,
    tick_s: float = 10.0,
    idle_tick_s: float = 600.0,
    grace_s: float = 30.0,
    factors: Mapping[str, Mapping[str, float]] = TRUE_FACTORS,
    peaks: Mapping[str, float] = PEAKS,
    learn: Callable[[str, str | None, float], None] | None = None,
) -> SimResult:
    """Run ``trace`` on ``nodes`` under ``policy`` until every job has finished.

    The clock jumps from event to event (arrivals, ends, preemptions taking effect after
    ``grace_s``); the policy decides at most once per ``tick_s`` when something changed, and
    every ``idle_tick_s`` while jobs wait. A job runs ``runtime_s * factors[kind][type]`` (capped
    by its time limit); a preempted job is requeued and restarts. ``learn(kind, type, factor)``
    is called as each job finishes (pass ``policy.throughput.observe`` to let it learn).
    """
    node_acc = {n.id: n.accelerator for n in nodes}
    total = sum(n.gpus for n in nodes)
    by_id = {j.spec.id: j for j in trace}
    events: list[tuple[float, int, str, str]] = []
    seq = 0

    def push(t: float, kind: str, jid: str) -> None:
        nonlocal seq
        seq += 1
        heapq.heappush(events, (t, seq, kind, jid))

    rejected = _unrunnable(trace, nodes)
    for j in trace:
        if j.spec.id not in rejected:
            push(j.spec.submitted_at, "arrive", j.spec.id)
    queue: dict[str, JobSpec] = {}
    running: dict[str, RunningJob] = {}
    ends: dict[str, float] = {}  # job id -> its scheduled end (stale end events are ignored)
    first_start: dict[str, float] = {}
    finish: dict[str, float] = {}
    stopping: set[str] = set()
    busy = 0
    busy_area = 0.0
    busy_by: dict[str, int] = {}
    area_by: dict[str, float] = {}
    last_t = 0.0
    degrees = 0.0
    preemptions = 0
    decisions: list[tuple[int, float]] = []
    timeline: list[tuple[float, int, int]] = []
    window_end = max((j.spec.submitted_at for j in trace), default=0.0)
    window_start = min((j.spec.submitted_at for j in trace), default=0.0)
    dirty = False
    next_idle = math.inf

    def advance(t: float) -> None:
        nonlocal busy_area, last_t
        lo, hi = max(last_t, window_start), min(t, window_end)
        if hi > lo:
            busy_area += busy * (hi - lo)
            for a, b in busy_by.items():
                area_by[a] = area_by.get(a, 0.0) + b * (hi - lo)
        last_t = t

    def stop(jid: str, t: float) -> RunningJob:
        nonlocal busy, degrees
        rj = running.pop(jid)
        ends.pop(jid, None)
        g = rj.spec.gpus * len(rj.nodes)
        busy -= g
        acc = node_acc.get(rj.nodes[0]) if rj.nodes else None
        busy_by[acc or ""] -= g
        degrees += g * (t - rj.started_at) / 3600 * peaks.get(acc or "", 0.0) / 312
        return rj

    while events:
        t = events[0][0]
        decide_at = math.ceil(t / tick_s) * tick_s if tick_s else t
        while events and events[0][0] <= decide_at:
            et, _, kind, jid = heapq.heappop(events)
            advance(et)
            if kind == "arrive":
                queue[jid] = by_id[jid].spec
                dirty = True
            elif kind == "end" and jid in running and ends.get(jid) == et:
                rj = stop(jid, et)
                finish[jid] = et
                acc = node_acc.get(rj.nodes[0])
                if learn is not None and acc is not None:
                    learn(rj.spec.kind, acc, (et - rj.started_at) / by_id[jid].runtime_s)
                dirty = True
            elif kind == "stop" and jid in running:
                stop(jid, et)
                stopping.discard(jid)
                queue[jid] = by_id[jid].spec  # requeued with its first submit time
                dirty = True
            elif kind == "idle":
                dirty = dirty or bool(queue)
        advance(decide_at)
        if dirty and queue:
            q = list(queue.values())
            t0 = time.perf_counter()
            d = policy.decide(decide_at, q, list(running.values()), nodes)
            decisions.append((len(q), time.perf_counter() - t0))
            for jid, placed in d.start:
                spec = queue.pop(jid)
                acc = node_acc.get(placed[0])
                f = factors.get(spec.kind, {}).get(acc or "", 1.0)
                run = by_id[jid].runtime_s * f
                limit = spec.max_runtime_s or math.inf
                end = decide_at + min(run, limit)
                running[jid] = RunningJob(spec, placed, decide_at, decide_at + limit)
                ends[jid] = end
                busy += spec.gpus * len(placed)
                busy_by[acc or ""] = busy_by.get(acc or "", 0) + spec.gpus * len(placed)
                first_start.setdefault(jid, decide_at)
                push(end, "end", jid)
            for jid in d.preempt:
                if jid in running and jid not in stopping:
                    stopping.add(jid)
                    preemptions += 1
                    push(decide_at + grace_s, "stop", jid)
            timeline.append((decide_at, busy, len(queue)))
        dirty = False
        if queue and (next_idle <= decide_at or math.isinf(next_idle)):
            next_idle = decide_at + idle_tick_s
            push(next_idle, "idle", "")
        elif not queue:
            next_idle = math.inf
    waits = [
        first_start[j.spec.id] - j.spec.submitted_at for j in trace if j.spec.id in first_start
    ]
    by_size: dict[int, list[float]] = {}
    for j in trace:
        if j.spec.id in first_start:
            by_size.setdefault(j.spec.total_gpus, []).append(
                first_start[j.spec.id] - j.spec.submitted_at
            )
    span = max(window_end - window_start, 1e-9)
    per_type: dict[str, int] = {}
    for n in nodes:
        per_type[n.accelerator or ""] = per_type.get(n.accelerator or "", 0) + n.gpus
    return SimResult(
        policy=getattr(policy, "name", type(policy).__name__),
        gpus=total,
        utilization=busy_area / (total * span),
        waits=waits,
        jcts=[finish[j] - by_id[j].spec.submitted_at for j in finish],
        degrees=degrees,
        decisions=decisions,
        preemptions=preemptions,
        makespan=max(finish.values(), default=0.0) - window_start,
        waits_by_size=by_size,
        timeline=timeline,
        rejected=len(rejected),
        utilization_by_type={
            a: area_by.get(a, 0.0) / (per_type[a] * span) for a in sorted(per_type) if per_type[a]
        },
    )
