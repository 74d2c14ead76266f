"""``python -m benchmarks.scheduler [--quick] [--jobs N] [--gpus N] [--load X] [--plots DIR]``

The scheduling policies on a simulated GPU cluster (issue 12 §8): the real
``matrixos.jobs.policy`` code driven by ``matrixos.jobs.sim``'s discrete-event clock over a
synthetic trace shaped like Microsoft Philly (ATC'19) and SenseTime Helios (SC'21) — gangs of
1-2,048 GPUs, log-normal runtimes, bursty diurnal arrivals, several accounts and priorities — on
8-GPU nodes of H100, A100 and L4 (10,000 GPUs by default). Prints, per policy: GPU utilization
over the arrival window, queue wait p50/p99/max, job completion time p50/p99, degrees consumed
(GPU-hours x peak TFLOPS / 312) and preemptions; then one decision's time with 10,000 jobs
queued on the full cluster (cold: a fresh policy; warm: rounds where a few jobs end and
arrive). Writes PNG plots (utilization over time, wait CDF, decision time) to ``--plots``.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

from matrixos.jobs.policy import POLICIES, Policy, ThroughputModel
from matrixos.jobs.sim import PEAKS, SimResult, cluster, simulate, synthetic_trace
from matrixos.jobs.specs import JobSpec, NodeSpec, RunningJob

try:
    from matrixos.metering import PEAK_TFLOPS as _TABLE  # the configurable degree table

    TABLE = {k: float(_TABLE.get(k, v)) for k, v in PEAKS.items()}
except ImportError:  # pragma: no cover - metering not installed
    TABLE = dict(PEAKS)

HOUR = 3600.0
SIZE_CLASSES = [("1-8", 1, 8), ("16-128", 16, 128), ("256-2048", 256, 2048)]


def make_policy(name: str) -> Policy:
    """A policy priced in degrees per GPU-hour, learning from a 312/peak prior."""
    prior = ThroughputModel(prior=lambda a: 312.0 / TABLE.get(a or "", 312.0))
    return POLICIES[name](cost_of=lambda a: TABLE.get(a or "", 0.0) / 312.0, throughput=prior)


def run_trace(args: argparse.Namespace, nodes: list[NodeSpec]) -> dict[str, SimResult]:
    gpus = sum(n.gpus for n in nodes)
    trace = synthetic_trace(
        args.jobs,
        gpus=gpus,
        load=args.load,
        seed=args.seed,
        max_gang=min(2048, gpus // 4),
        sigma=args.sigma,
        inference=args.inference,
        gang_weights=[float(x) for x in args.gangs.split(",")] if args.gangs else None,
    )
    sizes = [j.spec.total_gpus for j in trace]
    work = [s * j.runtime_s for s, j in zip(sizes, trace, strict=True)]
    big = sum(w for s, w in zip(sizes, work, strict=True) if s > 8) / max(sum(work), 1e-9)
    print(
        f"trace: {len(trace)} jobs, {gpus} GPUs ({len(nodes)} nodes), offered load {args.load}, "
        f"runtime sigma {args.sigma}, "
        f"gangs 1-{max(sizes)} GPUs ({sum(s == 1 for s in sizes) / len(sizes):.0%} single-GPU, "
        f"{sum(s <= 8 for s in sizes) / len(sizes):.0%} <= 8; gangs > 8 GPUs hold {big:.0%} "
        f"of the GPU time), arrivals over {max(j.spec.submitted_at for j in trace) / HOUR:.1f} h"
    )
    out: dict[str, SimResult] = {}
    for name in POLICIES:
        p = make_policy(name)
        t0 = time.perf_counter()
        r = simulate(p, trace, nodes, peaks=TABLE, learn=p.throughput.observe)
        out[name] = r
        print(
            f"  {name}: simulated in {time.perf_counter() - t0:.1f} s"
            f" ({r.rejected} jobs refused by validate: larger than their pinned pool)",
            flush=True,
        )
    return out


def decision_bench(
    name: str, nodes: list[NodeSpec], queued: int, rounds: int, seed: int
) -> dict[str, float]:
    """One ``decide`` with ``queued`` jobs waiting on a full cluster: the first call of a fresh
    policy (cold) and ``rounds`` later ones (warm) where a few jobs end and arrive between."""
    gpus = sum(n.gpus for n in nodes)
    trace = synthetic_trace(int(queued * 1.6), gpus=gpus, load=2.0, seed=seed)
    specs = [j.spec for j in trace]
    rnd = random.Random(seed)
    filler = make_policy(name)
    by_id = {s.id: s for s in specs}
    running: list[RunningJob] = []
    waiting = specs
    for _ in range(100):  # fill the cluster: rounds until one starts nothing
        d = filler.decide(0.0, waiting, running, nodes)
        if not d.start:
            break
        running += [_running(by_id[j], placed, 0.0) for j, placed in d.start]
        started = {j for j, _ in d.start}
        waiting = [s for s in waiting if s.id not in started]
    queue, spare = waiting[:queued], waiting[queued:]
    starts = 0
    p = make_policy(name)
    cpu: list[float] = []
    wall: list[float] = []
    now = 10.0
    for k in range(rounds + 1):
        if k:
            for _ in range(3):  # a few ends and arrivals between rounds
                if running:
                    running.pop(rnd.randrange(len(running)))
                if spare:
                    queue.append(spare.pop())
        c0, w0 = time.thread_time(), time.perf_counter()
        d = p.decide(now, queue, running, nodes)
        cpu.append(time.thread_time() - c0)
        wall.append(time.perf_counter() - w0)
        gone = {j for j, _ in d.start}
        starts += len(gone) if k else 0
        running += [_running(by_id[j], placed, now) for j, placed in d.start]
        queue = [s for s in queue if s.id not in gone]
        now += 10.0
    warm_cpu, warm_wall = sorted(cpu[1:]), sorted(wall[1:])
    return {
        "queued": float(queued),
        "running": float(len(running)),
        "starts_per_round": starts / max(rounds, 1),
        "cold_ms": cpu[0] * 1e3,
        "cpu_p50_ms": _q(warm_cpu, 0.5) * 1e3,
        "cpu_p99_ms": _q(warm_cpu, 0.99) * 1e3,
        "cpu_max_ms": warm_cpu[-1] * 1e3,
        "wall_p50_ms": _q(warm_wall, 0.5) * 1e3,
        "wall_p99_ms": _q(warm_wall, 0.99) * 1e3,
    }


def _running(spec: JobSpec, placed: tuple[str, ...], now: float) -> RunningJob:
    return RunningJob(spec, placed, now, now + (spec.max_runtime_s or 1e9))


def _q(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def report(results: dict[str, SimResult], bound_h: float) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    print(
        f"\n{'policy':<17} {'util':>6} {'wait p50':>9} {'p99':>9} {'max':>9} "
        f"{'JCT p50':>9} {'p99':>9} {'degrees':>10} {'preempt':>7} {'decide p50/max ms':>18}"
    )
    for name, r in results.items():
        ds = sorted(d for _, d in r.decisions)
        row: dict[str, Any] = {
            "policy": name,
            "utilization": r.utilization,
            "wait_p50_h": r.pct(r.waits, 0.5) / HOUR,
            "wait_p99_h": r.pct(r.waits, 0.99) / HOUR,
            "wait_max_h": max(r.waits, default=0.0) / HOUR,
            "jct_p50_h": r.pct(r.jcts, 0.5) / HOUR,
            "jct_p99_h": r.pct(r.jcts, 0.99) / HOUR,
            "degrees": r.degrees,
            "preemptions": r.preemptions,
            "decide_p50_ms": _q(ds, 0.5) * 1e3,
            "decide_max_ms": (ds[-1] if ds else 0.0) * 1e3,
            "max_queued": max((q for q, _ in r.decisions), default=0),
            "utilization_by_type": r.utilization_by_type,
        }
        rows.append(row)
        print(
            f"{name:<17} {row['utilization']:>6.1%} {row['wait_p50_h']:>8.2f}h "
            f"{row['wait_p99_h']:>8.2f}h {row['wait_max_h']:>8.2f}h {row['jct_p50_h']:>8.2f}h "
            f"{row['jct_p99_h']:>8.2f}h {row['degrees']:>10,.0f} {row['preemptions']:>7} "
            f"{row['decide_p50_ms']:>8.2f}/{row['decide_max_ms']:<8.1f}"
        )
    for row, r in zip(rows, results.values(), strict=True):
        by = ", ".join(f"{a} {u:.1%}" for a, u in row["utilization_by_type"].items())
        waits = {
            label: max((w for s, ws in r.waits_by_size.items() if lo <= s <= hi for w in ws),
                       default=0.0) / HOUR
            for label, lo, hi in SIZE_CLASSES
        }  # fmt: skip
        row["wait_max_by_size_h"] = waits
        most = ", ".join(f"{k} GPUs {v:.1f} h" for k, v in waits.items())
        print(f"  {row['policy']}: {by}; longest wait: {most}")
    print(
        f"(utilization: busy GPU-seconds / (GPUs x arrival window); decide: wall time inside the "
        f"simulation, queue up to {max(r['max_queued'] for r in rows)} jobs)\n"
        f"starvation bound (priority_preempt): urgent after {bound_h:g} h queued, then first in "
        f"line and never preempted"
    )
    return rows


def plots(results: dict[str, SimResult], bench: dict[str, dict[str, float]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(9, 4))
    for name, r in results.items():
        if r.timeline:
            t = [x[0] / HOUR for x in r.timeline]
            ax.plot(t, [x[1] / r.gpus for x in r.timeline], label=name, lw=0.8)
    ax.set(xlabel="hours", ylabel="GPUs busy", title="Utilization over time", ylim=(0, 1.05))
    _save(plt, fig, ax, out / "scheduler_utilization.png")
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, r in results.items():
        w = sorted(max(x, 1.0) for x in r.waits)
        ax.plot(w, [(k + 1) / len(w) for k in range(len(w))], label=name)
    ax.set(xscale="log", xlabel="queue wait (s)", ylabel="fraction of jobs", title="Queue wait CDF")
    _save(plt, fig, ax, out / "scheduler_wait_cdf.png")
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, r in results.items():
        ax.scatter([q for q, _ in r.decisions], [d * 1e3 for _, d in r.decisions], s=2, label=name)
    ax.set(xlabel="queued jobs", ylabel="decide (ms, wall)", title="Decision time vs queue")
    _save(plt, fig, ax, out / "scheduler_decisions.png")
    print(f"plots written to {out}/scheduler_*.png")


def _save(plt: Any, fig: Any, ax: Any, path: Path) -> None:
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a small cluster and trace (seconds)")
    ap.add_argument("--jobs", type=int, default=15000)
    ap.add_argument("--gpus", type=int, default=10000, help="cluster size (8-GPU nodes)")
    ap.add_argument("--load", type=float, default=2.4, help="offered A100 GPU-seconds / capacity")
    ap.add_argument("--sigma", type=float, default=2.2, help="log-normal runtime spread")
    ap.add_argument("--mix", default="40,40,20", help="H100,A100,L4 shares of the nodes")
    ap.add_argument("--inference", type=float, default=0.45, help="share of small inference jobs")
    ap.add_argument(
        "--gangs",
        default="",
        help="weights of gang sizes 1,2,4,...,2048 GPUs (default: matrixos.jobs.sim's mix)",
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--queued", type=int, default=10000, help="queue for the decision timing")
    ap.add_argument("--rounds", type=int, default=200, help="0: no decision timing")
    ap.add_argument("--plots", type=Path, default=Path("benchmarks/out"))
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.quick:
        args.jobs, args.gpus, args.queued, args.rounds = 600, 112, 1000, 20
    nodes_per = max(1, args.gpus // 8)
    share = [float(x) for x in args.mix.split(",")]
    h100, a100 = (round(nodes_per * x / sum(share)) for x in share[:2])
    nodes = cluster(h100=h100, a100=a100, l4=max(1, nodes_per - h100 - a100))
    results = run_trace(args, nodes)
    bound_h = make_policy("priority_preempt").starve_after_s / HOUR  # type: ignore[attr-defined]
    rows = report(results, bound_h)
    total = sum(n.gpus for n in nodes)
    bench: dict[str, dict[str, float]] = {}
    if args.rounds <= 0:
        _finish(args, results, rows, bench)
        return
    print(f"\ndecision time, {args.queued} queued on the full {total}-GPU cluster")
    print("(CPU time of the deciding thread; wall time on this shared machine beside it)")
    for name in POLICIES:
        b = bench[name] = decision_bench(name, nodes, args.queued, args.rounds, args.seed)
        print(
            f"  {name:<17} cold {b['cold_ms']:6.1f} ms   warm p50 {b['cpu_p50_ms']:5.2f} "
            f"p99 {b['cpu_p99_ms']:5.2f} max {b['cpu_max_ms']:5.2f} ms   "
            f"(wall p50 {b['wall_p50_ms']:5.2f} p99 {b['wall_p99_ms']:5.2f}; "
            f"{b['running']:.0f} running)"
        )
    _finish(args, results, rows, bench)


def _finish(
    args: argparse.Namespace,
    results: dict[str, SimResult],
    rows: list[dict[str, Any]],
    bench: dict[str, dict[str, float]],
) -> None:
    if not args.no_plots:
        plots(results, bench, args.plots)
    if args.json:
        args.json.write_text(json.dumps({"policies": rows, "decisions": bench}, indent=2))


if __name__ == "__main__":
    main()
