"""Booked windows of accelerators: finding the earliest free one, refusing a booking that
collides, and the holds a scheduling round keeps so no started job runs into a reservation.

Reservations count GPUs per accelerator type (not particular nodes): a window fits when, at every
moment of it, the type's GPUs minus those held by running jobs (until their hard end) and by
other reservations leave enough. ``accelerator=None`` on a reservation means "any GPU type" and is
held against every type (conservative).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from datetime import UTC, datetime

from matrixos.errors import JobError
from matrixos.jobs.placement import Cluster, GpuKey
from matrixos.jobs.specs import JobSpec, NodeSpec, Reservation, RunningJob


def _matches(res_acc: str | None, acc: GpuKey) -> bool:
    return res_acc is None or res_acc == acc


def earliest_window(
    gpus: int,
    accelerator: str | None,
    duration_s: float,
    after: float,
    nodes: Sequence[NodeSpec],
    running: Sequence[RunningJob],
    reservations: Sequence[Reservation] = (),
) -> float:
    """The earliest start ≥ ``after`` of a ``duration_s`` window with ``gpus`` free GPUs of type
    ``accelerator`` (``None``: all GPU types together), or ``inf`` when none ever frees.

    Running jobs hold their GPUs until ``ends_by``; queued jobs do not count (a booking goes
    ahead of the queue, and the backfill keeps queued jobs out of it).

    Example: ``earliest_window(8, "H100", 7200, now, nodes, running, reservations)``.
    """
    node_acc = {n.id: (n.accelerator if n.gpus > 0 else None) for n in nodes}
    total = sum(n.gpus for n in nodes if n.gpus > 0 and _matches(accelerator, n.accelerator))
    if gpus > total:
        raise JobError(
            f"{gpus} GPUs of type {accelerator or 'any'} asked; the cluster has {total}",
            field="gpus",
        )
    ends: list[float] = []
    weights: list[int] = []
    for rj in sorted(running, key=lambda r: r.ends_by):
        held = sum(rj.spec.gpus for nid in rj.nodes if _matches(accelerator, node_acc.get(nid)))
        if held and rj.ends_by > after:
            ends.append(rj.ends_by)
            weights.append(held)
    # suffix[k]: GPUs still held by the running jobs ending at ends[k] or later.
    suffix = [0] * (len(ends) + 1)
    for k in range(len(ends) - 1, -1, -1):
        suffix[k] = suffix[k + 1] + weights[k]
    res = [
        r
        for r in reservations
        if r.end > after and (accelerator is None or _matches(r.accelerator, accelerator))
    ]

    def used(t: float) -> int:
        run = suffix[bisect.bisect_right(ends, t)]
        return run + sum(r.gpus for r in res if r.start <= t < r.end)

    def fits(t: float) -> bool:
        points = [t, *(r.start for r in res if t < r.start < t + duration_s)]
        return all(used(p) + gpus <= total for p in points)

    candidates = sorted({after, *(e for e in ends if e > after), *(r.end for r in res)})
    for t in candidates:
        if t >= after and math.isfinite(t) and fits(t):
            return t
    return math.inf


def check_reservation(
    r: Reservation,
    nodes: Sequence[NodeSpec],
    running: Sequence[RunningJob],
    reservations: Sequence[Reservation] = (),
) -> None:
    """Refuse a booking that does not fit, naming the earliest window that would.

    Raises :class:`~matrixos.errors.JobError` (``field`` and ``earliest`` set) for a bad window,
    an unknown accelerator, or a collision with running jobs or other reservations.
    """
    if not r.end > r.start:
        raise JobError("a reservation must end after it starts", field="duration")
    if r.gpus < 0:
        raise JobError(f"gpus must be ≥ 0, got {r.gpus}", field="gpus")
    known = sorted({n.accelerator for n in nodes if n.accelerator and n.gpus > 0})
    if r.accelerator is not None and r.accelerator not in known:
        raise JobError(
            f"unknown accelerator {r.accelerator!r}",
            field="accelerator",
            hint=f"this cluster has: {', '.join(known) or 'no GPUs'}",
        )
    others = [o for o in reservations if o.id != r.id]
    t = earliest_window(r.gpus, r.accelerator, r.end - r.start, r.start, nodes, running, others)
    if t != r.start:
        when = (
            "no window: running jobs without a time limit hold the GPUs"
            if math.isinf(t)
            else f"the earliest free window starts at {_iso(t)}"
        )
        raise JobError(
            f"{r.gpus} x {r.accelerator or 'GPU'} are not free for the whole window; {when}",
            field="start",
            earliest=None if math.isinf(t) else t,
            hint="book the earliest window, or fewer GPUs",
        )


def _iso(t: float) -> str:
    return f"{datetime.fromtimestamp(t, UTC):%Y-%m-%dT%H:%M:%SZ}"


class Holds:
    """What a scheduling round must leave free for the reservations: GPUs of active windows not
    yet used by their account, and room before future windows a job would run into."""

    def __init__(self, now: float, reservations: Sequence[Reservation], cluster: Cluster) -> None:
        self.active: list[list] = []  # [accelerator, account, GPUs still held]
        self.future: list[list] = []  # [accelerator, start, room]
        for r in reservations:
            if r.end <= now or not r.gpus:
                continue
            if r.start <= now:
                used = sum(
                    rj.spec.gpus * len(rj.nodes)
                    for jid, rj in cluster.running.items()
                    if rj.spec.account == r.account
                    and _matches(r.accelerator, cluster.job_type.get(jid))
                )
                if r.gpus > used:
                    self.active.append([r.accelerator, r.account, r.gpus - used])
        for r in reservations:
            if r.start > now and r.gpus:
                for acc in cluster.types:
                    if acc is not None and _matches(r.accelerator, acc):
                        freed = sum(
                            cluster.running[jid].spec.gpus * len(cluster.running[jid].nodes)
                            for end, jid in cluster.ends
                            if end <= r.start and cluster.job_type.get(jid) == acc
                        )
                        held = sum(h[2] for h in self.active if _matches(h[0], acc))
                        room = cluster.free_by_type[acc] + freed - held - r.gpus
                        self.future.append([acc, r.start, room])

    def __bool__(self) -> bool:
        return bool(self.active or self.future)

    def held(self, job: JobSpec, acc: GpuKey, limit_end: float, free: int) -> int:
        """GPUs of type ``acc`` that ``job`` (running until ``limit_end``) may not use now."""
        h = sum(x[2] for x in self.active if x[1] != job.account and _matches(x[0], acc))
        for f in self.future:
            if f[0] == acc and limit_end > f[1]:
                h = max(h, free - max(f[2], 0))
        return h

    def took(self, job: JobSpec, acc: GpuKey, limit_end: float) -> None:
        """Account for ``job`` having started on type ``acc``."""
        g = job.total_gpus
        for x in self.active:
            if x[1] == job.account and _matches(x[0], acc):
                used = min(x[2], g)
                x[2] -= used
                g -= used
        for f in self.future:
            if f[0] == acc and limit_end > f[1]:
                f[2] -= job.total_gpus
