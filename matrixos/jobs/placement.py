"""The cluster's free capacity, indexed for gang fits, kept in step with the running jobs.

Nodes are grouped by accelerator type; within a type, nodes sit in buckets by free GPU count, so
"can a gang of n bundles of g GPUs fit on H100s?" is a sum over at most a few buckets
(``count``), and placing it (``place``) walks only nodes that have room — never the whole
cluster. ``sync`` applies only what changed since the last round (jobs started or ended), so a
scheduling round costs what changed, not the cluster's size.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence

from matrixos.jobs.specs import JobSpec, NodeSpec, RunningJob

_EPS = 1e-9
GpuKey = str | None  # an accelerator type; None for CPU-only nodes


def expected_end(rj: RunningJob, default_runtime_s: float) -> float:
    """The hard end when there is one, else the start plus the expected runtime."""
    if math.isfinite(rj.ends_by):
        return rj.ends_by
    spec = rj.spec
    return rj.started_at + (spec.expected_runtime_s or spec.max_runtime_s or default_runtime_s)


class Cluster:
    """Free CPUs, GPUs and memory of every node, bucketed by free GPUs per accelerator type.

    Example::

        c = Cluster([NodeSpec("a", 8, 8, 64, "H100")])
        c.sync([])
        c.place(JobSpec("j", "acct", gpus=4, nodes=2), "H100")  # -> [0, 0]
    """

    def __init__(self, nodes: Sequence[NodeSpec], default_runtime_s: float = 3600.0) -> None:
        self.nodes: tuple[NodeSpec, ...] = tuple(nodes)
        self.default_runtime_s = default_runtime_s
        self.index = {n.id: i for i, n in enumerate(self.nodes)}
        self.acc: list[GpuKey] = [n.accelerator if n.gpus > 0 else None for n in self.nodes]
        self.free_gpus = [n.gpus for n in self.nodes]
        self.free_cpus = [float(n.cpus) for n in self.nodes]
        self.free_mem = [float(n.memory_gb) for n in self.nodes]
        self.types: dict[GpuKey, list[int]] = {}
        for i, a in enumerate(self.acc):
            self.types.setdefault(a, []).append(i)
        self.max_gpus = {a: max(self.nodes[i].gpus for i in ix) for a, ix in self.types.items()}
        self.total_gpus = {a: sum(self.nodes[i].gpus for i in ix) for a, ix in self.types.items()}
        self.buckets: dict[GpuKey, list[set[int]]] = {
            a: [set() for _ in range(self.max_gpus[a] + 1)] for a in self.types
        }
        for i, a in enumerate(self.acc):
            self.buckets[a][self.free_gpus[i]].add(i)
        self.free_by_type: dict[GpuKey, int] = dict(self.total_gpus)
        self.free_cpu_total = sum(self.free_cpus)
        self.running: dict[str, RunningJob] = {}
        self.job_type: dict[str, GpuKey] = {}
        # (hard or expected end, job id), sorted: the order in which capacity comes back.
        self.ends: list[tuple[float, str]] = []
        self.account_gpus: dict[str, int] = {}
        self.priority_count: dict[int, int] = {}
        # Σ gpus and Σ gpus * expected end of running GPU jobs: the work still to run, in O(1).
        self.busy_gpus = 0
        self.busy_gpu_end = 0.0

    # --- keeping in step with the running jobs -------------------------------------------
    def sync(self, running: Iterable[RunningJob]) -> None:
        """Make the free capacity match ``running``: release what left, take what arrived."""
        new = {r.spec.id: r for r in running}
        old = self.running
        for jid in [k for k in old if k not in new]:
            self.remove(jid)
        for jid, r in new.items():
            o = old.get(jid)
            if o is r:
                continue
            if o is not None:
                if o.nodes == r.nodes and o.started_at == r.started_at:
                    continue
                self.remove(jid)
            self.add(r)

    def add(self, r: RunningJob) -> None:
        """Take a running job's bundles off its nodes' free capacity."""
        spec = r.spec
        acc: GpuKey = None
        for nid in r.nodes:
            i = self.index.get(nid)
            if i is None:  # a node that left the pool: nothing of ours to take
                continue
            acc = self.acc[i]
            self._take(i, spec.cpus, spec.gpus, spec.memory_gb)
        jid = spec.id
        self.running[jid] = r
        self.job_type[jid] = acc
        end = expected_end(r, self.default_runtime_s)
        bisect.insort(self.ends, (end, jid))
        g = spec.gpus * len(r.nodes)
        self.account_gpus[spec.account] = self.account_gpus.get(spec.account, 0) + g
        self.priority_count[spec.priority] = self.priority_count.get(spec.priority, 0) + 1
        if g and math.isfinite(end):
            self.busy_gpus += g
            self.busy_gpu_end += g * end

    def remove(self, jid: str) -> None:
        """Give a running job's bundles back to its nodes."""
        r = self.running.pop(jid)
        spec = r.spec
        for nid in r.nodes:
            i = self.index.get(nid)
            if i is not None:
                self._take(i, -spec.cpus, -spec.gpus, -spec.memory_gb)
        self.job_type.pop(jid, None)
        end = expected_end(r, self.default_runtime_s)
        k = bisect.bisect_left(self.ends, (end, jid))
        if k < len(self.ends) and self.ends[k] == (end, jid):
            del self.ends[k]
        g = spec.gpus * len(r.nodes)
        self.account_gpus[spec.account] -= g
        self.priority_count[spec.priority] -= 1
        if g and math.isfinite(end):
            self.busy_gpus -= g
            self.busy_gpu_end -= g * end

    def _take(self, i: int, cpus: float, gpus: int, mem: float) -> None:
        if gpus:
            a = self.acc[i]
            b = self.buckets[a]
            top = len(b) - 1  # over-commitment reported by the runtime clamps to the ends
            b[max(0, min(self.free_gpus[i], top))].discard(i)
            self.free_gpus[i] -= gpus
            b[max(0, min(self.free_gpus[i], top))].add(i)
            self.free_by_type[a] -= gpus
        self.free_cpus[i] -= cpus
        self.free_cpu_total -= cpus
        self.free_mem[i] -= mem

    # --- fitting gangs ----------------------------------------------------------------------
    def bundles_on(self, i: int, job: JobSpec, gpus_free: float | None = None) -> int:
        """How many of ``job``'s bundles node ``i`` can hold now (``gpus_free`` overrides)."""
        n = self.nodes[i]
        if job.gpus and (
            n.gpu_memory_gb + _EPS < job.min_gpu_memory_gb or (job.bf16 and not n.bf16)
        ):
            return 0
        fit = job.nodes
        g = self.free_gpus[i] if gpus_free is None else gpus_free
        if job.gpus:
            fit = min(fit, int(g // job.gpus))
        if job.cpus > 0:
            fit = min(fit, int((self.free_cpus[i] + _EPS) // job.cpus))
        if job.memory_gb > 0:
            fit = min(fit, int((self.free_mem[i] + _EPS) // job.memory_gb))
        return max(fit, 0)

    def count(self, job: JobSpec, acc: GpuKey, held: int = 0) -> bool:
        """Whether type ``acc`` has GPU room for the gang at all (a cheap upper bound:
        bucket sizes only; ``held`` GPUs of the type are not usable)."""
        if not job.gpus:
            return self.free_cpu_total + _EPS >= job.cpus * job.nodes
        if self.free_by_type.get(acc, 0) - held < job.total_gpus:
            return False
        b = self.buckets.get(acc)
        if b is None:
            return False
        g, need, have = job.gpus, job.nodes, 0
        per = 1 if job.strategy == "STRICT_SPREAD" else 0
        for k in range(len(b) - 1, g - 1, -1):
            if b[k]:
                have += len(b[k]) * (per or k // g)
                if have >= need:
                    return True
        return False

    def place(
        self, job: JobSpec, acc: GpuKey, cap: Mapping[int, float] | None = None
    ) -> list[int] | None:
        """Node index per bundle for the whole gang on type ``acc``, or None (all or nothing).

        PACK puts the gang on one node when one has room, else fills the fullest nodes that
        still fit (best fit, least fragmentation); SPREAD puts one bundle per node while it can;
        STRICT_SPREAD demands distinct nodes. ``cap`` limits the GPUs usable per node (the
        backfill's slack on nodes a blocked job has reserved). Nothing is taken: see ``take``.
        """
        need = job.nodes
        if not job.gpus:
            return self._place_cpu(job)
        b = self.buckets.get(acc)
        if b is None:
            return None
        g = job.gpus
        top = len(b) - 1
        per_node = 1 if job.strategy != "PACK" else need
        if job.strategy == "PACK" and need > 1 and g * need <= top:
            for k in range(g * need, top + 1):
                for i in b[k]:
                    if cap and cap.get(i, top) < g * need:
                        continue
                    if self._fits(i, job, cap) >= need:
                        return [i] * need
        out: list[int] = []
        for k in range(g, top + 1):
            for i in b[k]:
                if cap and cap.get(i, g) < g:  # reserved for a blocked head: skip it cheaply
                    continue
                m = min(self._fits(i, job, cap), per_node, need - len(out))
                if m > 0:
                    out.extend([i] * m)
                    if len(out) == need:
                        return out
        if job.strategy == "SPREAD":  # best effort: share nodes rather than not run
            used = {i: out.count(i) for i in set(out)}
            for k in range(g, top + 1):
                for i in b[k]:
                    m = min(self._fits(i, job, cap) - used.get(i, 0), need - len(out))
                    if m > 0:
                        out.extend([i] * m)
                        if len(out) == need:
                            return out
        return None

    def _fits(self, i: int, job: JobSpec, cap: Mapping[int, float] | None) -> int:
        if cap is not None and i in cap:
            return self.bundles_on(i, job, min(self.free_gpus[i], cap[i]))
        return self.bundles_on(i, job)

    def _place_cpu(self, job: JobSpec) -> list[int] | None:
        out: list[int] = []
        per_node = 1 if job.strategy != "PACK" else job.nodes
        # CPU-only nodes first, so CPU work leaves accelerator hosts to GPU work.
        order = [*self.types.get(None, ()), *(i for a, ix in self.types.items() if a for i in ix)]
        for i in order:
            m = min(self.bundles_on(i, job), per_node, job.nodes - len(out))
            if m > 0:
                out.extend([i] * m)
                if len(out) == job.nodes:
                    return out
        return None

    def ids(self, placement: Sequence[int]) -> tuple[str, ...]:
        """Node ids for a placement of node indexes."""
        return tuple(self.nodes[i].id for i in placement)


class Freeing:
    """How many of a gang's bundles fit on one accelerator type as running jobs are released
    (hypothetically): the EASY shadow walks jobs by end time, preemption by victim order.

    Counts GPUs only (CPUs and memory of GPU nodes rarely bind); ``extra`` is the GPUs each node
    would get back.
    """

    def __init__(self, cluster: Cluster, job: JobSpec, acc: GpuKey) -> None:
        self.c = cluster
        self.g = job.gpus
        self.strict = job.strategy == "STRICT_SPREAD"
        self.top = cluster.max_gpus[acc]
        self.extra: dict[int, int] = {}
        self.have = sum(
            len(b) * (1 if self.strict else k // self.g)
            for k, b in enumerate(cluster.buckets[acc])
            if k >= self.g
        )

    def fit(self, i: int, extra: int) -> int:
        """Bundles node ``i`` would hold with ``extra`` GPUs given back."""
        f = min(self.c.free_gpus[i] + extra, self.top) // self.g
        return min(f, 1) if self.strict else f

    def release(self, rj: RunningJob, sign: int = 1) -> None:
        """Give ``rj``'s GPUs back (``sign=-1`` takes them again) and update ``have``."""
        # fit() inlined: this runs for every job the EASY shadow walks past, every round.
        free, index, extra = self.c.free_gpus, self.c.index, self.extra
        g, top, strict = self.g, self.top, self.strict
        add = sign * rj.spec.gpus
        have = self.have
        for nid in rj.nodes:
            i = index.get(nid)
            if i is None:
                continue
            e = extra.get(i, 0)
            f = free[i]
            before = min(f + e, top) // g
            after = min(f + e + add, top) // g
            if strict:
                before, after = min(before, 1), min(after, 1)
            extra[i] = e + add
            have += after - before
        self.have = have
