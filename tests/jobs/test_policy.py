"""The scheduling policies on hand-built clusters: gang fits, backfilling, preemption, fair
share, reservations, heterogeneous placement and learning — pure Python, milliseconds each —
plus a short simulator run that checks the policies' ordering on one trace."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from matrixos.errors import JobError, MatrixOSError
from matrixos.jobs.policy import (
    POLICIES,
    EasyBackfill,
    FifoGang,
    JobSpec,
    NodeSpec,
    PriorityPreempt,
    Reservation,
    RunningJob,
    ThroughputModel,
    check_reservation,
    earliest_window,
    validate,
)
from matrixos.jobs.sim import cluster, simulate, synthetic_trace


def nodes(kind: str = "H100", n: int = 4, gpus: int = 8, **kw: object) -> list[NodeSpec]:
    mem = float(kw.pop("gpu_memory_gb", 80))  # type: ignore[arg-type]
    return [
        NodeSpec(f"{kind.lower()}-{i}", 64, gpus, 512, kind, mem, True, **kw)  # type: ignore[arg-type]
        for i in range(n)
    ]


def job(jid: str, **kw: object) -> JobSpec:
    kw.setdefault("account", "a")
    return JobSpec(jid, **kw)  # type: ignore[arg-type]


def run(spec: JobSpec, where: tuple[str, ...], start: float = 0.0) -> RunningJob:
    end = start + spec.max_runtime_s if spec.max_runtime_s else math.inf
    return RunningJob(spec, where, start, end)


def started(d: object) -> dict[str, tuple[str, ...]]:
    return dict(d.start)  # type: ignore[attr-defined]


# --- gangs ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(POLICIES))
def test_gang_gets_all_bundles_or_none(name: str) -> None:
    ns = nodes(n=4)
    busy = run(job("r", gpus=4, max_runtime_s=100), ("h100-0",))
    q = [job("g", gpus=8, nodes=4, submitted_at=1, max_runtime_s=50)]
    d = POLICIES[name]().decide(0, q, [busy], ns)
    assert d.start == []  # only 3 whole nodes free: nothing of the gang starts
    d = POLICIES[name]().decide(0, q, [], ns)
    assert sorted(started(d)["g"]) == [f"h100-{i}" for i in range(4)]


def test_strategies_place_bundles_as_asked() -> None:
    ns = nodes(n=3)
    p = FifoGang()
    pack = started(p.decide(0, [job("p", gpus=2, nodes=3)], [], ns))["p"]
    assert len(set(pack)) == 1  # PACK: one node holds the whole gang
    spread = started(p.decide(0, [job("s", gpus=2, nodes=3, strategy="STRICT_SPREAD")], [], ns))
    assert len(set(spread["s"])) == 3
    four = p.decide(0, [job("t", gpus=1, nodes=4, strategy="STRICT_SPREAD")], [], ns)
    assert four.start == []  # four distinct nodes do not exist
    soft = started(p.decide(0, [job("u", gpus=1, nodes=4, strategy="SPREAD")], [], ns))["u"]
    assert len(soft) == 4 and len(set(soft)) == 3  # SPREAD shares a node rather than wait


def test_two_big_gangs_never_deadlock() -> None:
    """Each gang needs 3 of 4 nodes: one runs whole, the other waits whole, then runs."""
    ns = nodes(n=4)
    a = job("a", gpus=8, nodes=3, submitted_at=1, max_runtime_s=100)
    b = job("b", gpus=8, nodes=3, submitted_at=2, max_runtime_s=100)
    p = EasyBackfill()
    d = p.decide(0, [a, b], [], ns)
    assert list(started(d)) == ["a"] and d.etas["b"] == 100
    d = p.decide(1, [b], [run(a, started(d)["a"])], ns)
    assert d.start == []
    d = p.decide(100, [b], [], ns)  # a ended
    assert list(started(d)) == ["b"]


# --- backfill ---------------------------------------------------------------------------------
def test_backfill_never_delays_the_head() -> None:
    ns = nodes(n=2)
    # h100-0 busy until 100, h100-1 half busy until 500: the 2-node head can start at 500.
    r0 = run(job("r0", gpus=8, max_runtime_s=100), ("h100-0",))
    r1 = run(job("r1", gpus=4, max_runtime_s=500), ("h100-1",))
    head = job("head", gpus=8, nodes=2, submitted_at=1, max_runtime_s=50)
    long = job("long", gpus=4, submitted_at=2, max_runtime_s=1000)
    short = job("short", gpus=4, submitted_at=3, max_runtime_s=400)
    d = EasyBackfill().decide(0, [head, long, short], [r0, r1], ns)
    assert list(started(d)) == ["short"]  # ends by 400 < 500; "long" would delay the head
    assert d.etas["head"] == 500 and d.positions == {"head": 1, "long": 2, "short": 3}
    # With a third node the head starts at 100 on h100-0 and h100-2; a long job may still use
    # what it does not need: the free half of h100-1.
    ns3 = nodes(n=3)
    d = EasyBackfill().decide(0, [head, long], [r0, r1], ns3)
    assert started(d) == {"long": ("h100-1",)} and d.etas["head"] == 100


def test_plain_fifo_blocks_behind_the_head() -> None:
    ns = nodes(n=2)
    r0 = run(job("r0", gpus=8, max_runtime_s=100), ("h100-0",))
    head = job("head", gpus=8, nodes=2, submitted_at=1, max_runtime_s=50)
    small = job("small", gpus=1, submitted_at=2, max_runtime_s=10)
    assert POLICIES["fifo"]().decide(0, [head, small], [r0], ns).start == []
    assert list(started(FifoGang().decide(0, [head, small], [r0], ns))) == ["small"]


def test_backfill_keeps_out_of_a_reservation() -> None:
    ns = nodes(n=2)
    res = Reservation("r", "other", gpus=16, accelerator="H100", start=1000, end=2000)
    long = job("long", gpus=8, submitted_at=1, max_runtime_s=5000)
    short = job("short", gpus=8, submitted_at=2, max_runtime_s=900)
    d = EasyBackfill().decide(0, [long, short], [], ns, [res])
    assert list(started(d)) == ["short"]  # "long" would run into the booked window
    mine = job("mine", account="other", gpus=8, submitted_at=3, max_runtime_s=500)
    d = EasyBackfill().decide(1500, [long, mine], [], ns, [res])
    assert list(started(d)) == ["mine"]  # inside the window only the owner's jobs run


# --- priorities, preemption, fair share, starvation ---------------------------------------------
def test_preemption_picks_lowest_priority_youngest_and_fewest() -> None:
    ns = nodes(n=2)
    lows = [
        run(job("old-low", gpus=4, priority=0, max_runtime_s=9000), ("h100-0",), start=0),
        run(job("young-low", gpus=4, priority=0, max_runtime_s=9000), ("h100-0",), start=50),
        run(job("mid", gpus=4, priority=1, max_runtime_s=9000), ("h100-1",), start=60),
        run(job("mid2", gpus=4, priority=1, max_runtime_s=9000), ("h100-1",), start=70),
    ]
    urgent = job("hi", gpus=4, priority=5, submitted_at=100, max_runtime_s=60)
    p = PriorityPreempt()
    d = p.decide(100, [urgent], lows, ns)
    assert d.preempt == ["young-low"] and d.start == []
    d = p.decide(110, [urgent], lows, ns)
    assert d.preempt == []  # already stopping: no second victim while it drains
    rest = [r for r in lows if r.spec.id != "young-low"]
    assert started(p.decide(130, [urgent], rest, ns)) == {"hi": ("h100-0",)}
    # No lower priority running: nothing is preempted.
    same = job("same", gpus=8, priority=0, submitted_at=100, max_runtime_s=60)
    only_low = [r for r in lows if r.spec.priority == 0]
    assert PriorityPreempt().decide(100, [same], only_low + rest[1:], ns).preempt == []


def test_preemption_of_a_gang_frees_whole_nodes() -> None:
    ns = nodes(n=4)
    lows = [
        run(job(f"l{i}", gpus=8, priority=0, max_runtime_s=9000), (f"h100-{i}",), start=i)
        for i in range(4)
    ]
    big = job("big", gpus=8, nodes=2, priority=2, submitted_at=10, max_runtime_s=60)
    d = PriorityPreempt().decide(10, [big], lows, ns)
    assert sorted(d.preempt) == ["l2", "l3"]  # the two youngest, no more


def test_higher_priority_goes_first() -> None:
    ns = nodes(n=1)
    q = [job("lo", gpus=8, submitted_at=1), job("hi", gpus=8, priority=3, submitted_at=2)]
    d = PriorityPreempt().decide(10, q, [], ns)
    assert list(started(d)) == ["hi"] and d.positions == {"hi": 1, "lo": 2}


def test_fair_share_interleaves_accounts() -> None:
    ns = nodes(n=1)
    p = PriorityPreempt()
    # Account "heavy" has used the cluster; "light" has not.
    heavy_run = run(job("h0", account="heavy", gpus=8, max_runtime_s=100), ("h100-0",))
    p.decide(0, [], [heavy_run], ns)
    p.decide(100, [], [], ns)
    q = [job(f"h{i}", account="heavy", gpus=1, submitted_at=i) for i in range(1, 4)]
    q += [job(f"l{i}", account="light", gpus=1, submitted_at=10 + i) for i in range(3)]
    d = p.decide(101, q, [], ns)
    order = sorted(d.positions, key=d.positions.__getitem__)
    assert order[:3] == ["l0", "l1", "l2"]  # heavy used the whole cluster: light goes first
    # Equal usage: an account that queued many jobs first does not drain before the other.
    q2 = [job(f"a{i}", account="a", gpus=1, submitted_at=i) for i in range(4)]
    q2 += [job(f"b{i}", account="b", gpus=1, submitted_at=10 + i) for i in range(4)]
    d2 = PriorityPreempt().decide(20, q2, [], ns)
    order2 = sorted(d2.positions, key=d2.positions.__getitem__)
    assert order2 == ["a0", "b0", "a1", "b1", "a2", "b2", "a3", "b3"]
    # Plain arrival order for the FIFO family.
    d = EasyBackfill().decide(101, q, [], ns)
    assert sorted(d.positions, key=d.positions.__getitem__)[0] == "h1"


def test_a_starving_job_goes_first_and_is_not_preempted() -> None:
    ns = nodes(n=1)
    p = PriorityPreempt(starve_after_s=1000)
    old = job("old", gpus=8, priority=0, submitted_at=0, max_runtime_s=100)
    new = job("new", gpus=8, priority=9, submitted_at=1500, max_runtime_s=100)
    d = p.decide(1600, [new, old], [], ns)
    assert list(started(d)) == ["old"] and d.positions["old"] == 1
    # Started after starving: a higher priority head does not preempt it.
    d = p.decide(1700, [new], [run(old, ("h100-0",), start=1600)], ns)
    assert d.preempt == [] and d.etas["new"] == 1700


def test_a_starving_head_is_never_delayed_and_drains_when_asked() -> None:
    ns = nodes(n=2)
    r0 = run(job("r0", gpus=8, max_runtime_s=5000), ("h100-0",))
    head = job("head", gpus=8, nodes=2, submitted_at=0, max_runtime_s=100)
    short = job("short", gpus=8, submitted_at=900, max_runtime_s=1000)
    # Not yet starving: the short job backfills the free node (it ends before the shadow).
    d = PriorityPreempt(starve_after_s=3600).decide(1000, [head, short], [r0], ns)
    assert list(started(d)) == ["short"]
    # Starving: the short job still backfills (it ends before the head's shadow, r0's limit)…
    d = PriorityPreempt(starve_after_s=600).decide(1000, [head, short], [r0], ns)
    assert list(started(d)) == ["short"] and d.positions["head"] == 1
    # …but one that would end after the shadow does not take the head's free node.
    late = job("late", gpus=8, submitted_at=900, max_runtime_s=9000)
    d = PriorityPreempt(starve_after_s=600).decide(1000, [head, late], [r0], ns)
    assert d.start == [] and d.positions["head"] == 1
    # drain=True: the free node stays free for the head until r0 really ends.
    d = PriorityPreempt(starve_after_s=600, drain=True).decide(1000, [head, short], [r0], ns)
    assert d.start == [] and d.positions["head"] == 1


# --- validation --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"gpus": -1}, "gpus"),
        ({"cpus": -2}, "cpus"),
        ({"nodes": 0}, "nodes"),
        ({"nodes": 8_749_721_787, "cpus": 1}, "nodes"),  # found by the server's schemathesis run
        ({"nodes": 2, "cpus": 9.68e-158}, "cpus"),  # each bundle next to nothing: no endless fit
        ({"gpus": 1, "accelerators": ("TPU",)}, "accelerators"),
        ({"gpus": 8, "nodes": 5, "strategy": "STRICT_SPREAD"}, "nodes"),
        ({"gpus": 8, "nodes": 40}, "nodes"),
        ({"gpus": 16}, "gpus"),
        ({"memory_gb": 4096}, "memory_gb"),
        ({"gpus": 1, "min_gpu_memory_gb": 200}, "min_gpu_memory_gb"),
        ({"max_runtime_s": -5}, "max_runtime_s"),
        ({"strategy": "RANDOM"}, "strategy"),
        ({"account": ""}, "account"),
    ],
)
def test_validate_names_the_field(kw: dict[str, object], field: str) -> None:
    with pytest.raises(JobError) as e:
        validate(job("bad", **kw), nodes(n=4))
    assert e.value.field == field and isinstance(e.value, MatrixOSError)
    assert "bad" in str(e.value)


def test_validate_accepts_what_fits() -> None:
    validate(job("ok", gpus=8, nodes=4, accelerators=("H100",)), nodes(n=4))
    validate(job("cpu", cpus=8, nodes=2), nodes(n=4))


# --- reservations ------------------------------------------------------------------------------
def test_earliest_window_and_refusal() -> None:
    ns = nodes(n=2)  # 16 H100
    r0 = run(job("r0", gpus=8, max_runtime_s=100), ("h100-0",))
    assert earliest_window(8, "H100", 50, 0, ns, [r0]) == 0  # h100-1 is free now
    assert earliest_window(16, "H100", 50, 0, ns, [r0]) == 100
    booked = Reservation("b1", "x", gpus=16, accelerator="H100", start=100, end=200)
    assert earliest_window(16, "H100", 50, 0, ns, [r0], [booked]) == 200
    assert earliest_window(8, "H100", 500, 0, ns, [r0], [booked]) == 200
    clash = Reservation("b2", "y", gpus=16, accelerator="H100", start=150, end=160)
    with pytest.raises(JobError) as e:
        check_reservation(clash, ns, [r0], [booked])
    assert e.value.field == "start" and e.value.earliest == 200
    check_reservation(Reservation("b3", "y", 16, "H100", 200, 300), ns, [r0], [booked])
    with pytest.raises(JobError) as e:
        check_reservation(Reservation("b4", "y", 1, "TPU", 0, 10), ns, [], [])
    assert e.value.field == "accelerator"


# --- heterogeneous placement and learning -----------------------------------------------------
def test_cheapest_type_that_meets_the_deadline() -> None:
    ns = nodes("H100", 1) + nodes("A100", 1) + nodes("L4", 1, gpu_memory_gb=24)
    peak = {"H100": 989.0, "A100": 312.0, "L4": 121.0}
    tm = ThroughputModel()
    for _ in range(3):  # learned: this kind is memory-bound, barely faster on an H100
        tm.observe("serve", "A100", 10.0)
        tm.observe("serve", "H100", 8.0)
        tm.observe("serve", "L4", 12.0)
    p = FifoGang(cost_of=lambda a: peak[a or ""] / 312, throughput=tm)
    any_type = job("j", gpus=1, kind="serve", expected_runtime_s=3600)
    assert started(p.decide(0, [any_type], [], ns))["j"] == ("l4-0",)  # cheapest degrees
    tight = job("t", gpus=1, kind="serve", expected_runtime_s=3600, deadline_s=3700)
    assert started(p.decide(0, [tight], [], ns))["t"] == ("a100-0",)  # L4 misses the deadline
    fast = job("f", gpus=1, kind="serve", expected_runtime_s=3600, objective="latency")
    assert started(p.decide(0, [fast], [], ns))["f"] == ("h100-0",)


def test_throughput_model_learns_factors() -> None:
    prior = {"H100": 312 / 989, "A100": 1.0}
    tm = ThroughputModel(alpha=0.5, prior=lambda a: prior.get(a or "", 1.0))
    assert tm.factor("train", "H100") == pytest.approx(312 / 989)  # the prior before data
    tm.observe("train", "A100", 100.0)
    tm.observe("train", "H100", 50.0)
    assert tm.factor("train", "H100") == pytest.approx(0.5)
    tm.observe("train", "H100", 30.0)  # EWMA: halfway to the new observation
    assert tm.factor("train", "H100") == pytest.approx(0.4)
    assert tm.factor("other", "H100") == pytest.approx(312 / 989)
    assert tm.observations("train", "H100") == 2


# --- simulator --------------------------------------------------------------------------------
def test_simulator_backfill_beats_fifo_on_the_same_trace() -> None:
    ns = cluster(h100=6, a100=6, l4=2)
    gpus = sum(n.gpus for n in ns)
    trace = synthetic_trace(600, gpus=gpus, load=1.5, seed=3, max_gang=64)
    results = {}
    for name in ("fifo", "easy_backfill", "priority_preempt"):
        p = POLICIES[name]()
        results[name] = simulate(p, trace, ns, learn=p.throughput.observe)
    for r in results.values():
        # Every job this cluster can run started and finished exactly once.
        assert r.rejected < len(trace) // 20 and len(r.waits) == len(trace) - r.rejected
        assert len(r.jcts) == len(r.waits)
        assert r.degrees > 0 and 0 < r.utilization <= 1.0 + 1e-9
    assert results["easy_backfill"].utilization > results["fifo"].utilization + 0.05
    assert results["priority_preempt"].utilization > results["fifo"].utilization + 0.05
    assert results["easy_backfill"].pct(results["easy_backfill"].waits, 0.5) <= results["fifo"].pct(
        results["fifo"].waits, 0.5
    )


def test_benchmark_quick_mode_reports_and_plots(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the repo root: benchmarks/
    from benchmarks import scheduler

    out = tmp_path / "plots"
    scheduler.main(["--quick", "--plots", str(out), "--json", str(tmp_path / "r.json")])
    text = capsys.readouterr().out
    for name in POLICIES:
        assert name in text
    assert sorted(p.name for p in out.glob("*.png")) == [
        "scheduler_decisions.png",
        "scheduler_utilization.png",
        "scheduler_wait_cdf.png",
    ]
    data = json.loads((tmp_path / "r.json").read_text())
    util = {r["policy"]: r["utilization"] for r in data["policies"]}
    assert util["easy_backfill"] > util["fifo"]
    assert set(data["decisions"]) == set(POLICIES)
