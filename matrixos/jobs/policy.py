"""Scheduling policies: which queued jobs start now, on which nodes, and what to preempt.

First version (FIFO only); the backfilling, priority and fair-share policies follow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from matrixos.jobs.placement import Cluster
from matrixos.jobs.reservations import check_reservation, earliest_window
from matrixos.jobs.specs import Decision, JobSpec, NodeSpec, Reservation, RunningJob
from matrixos.jobs.throughput import ThroughputModel


class Policy(Protocol):
    """A scheduling policy: one ``decide`` per scheduling round."""

    name: str

    def decide(
        self,
        now: float,
        queue: Sequence[JobSpec],
        running: Sequence[RunningJob],
        nodes: Sequence[NodeSpec],
        reservations: Sequence[Reservation] = (),
    ) -> Decision: ...


class Fifo:
    """Strict arrival order; the first job that does not fit blocks the rest."""

    name = "fifo"

    def decide(
        self,
        now: float,
        queue: Sequence[JobSpec],
        running: Sequence[RunningJob],
        nodes: Sequence[NodeSpec],
        reservations: Sequence[Reservation] = (),
    ) -> Decision:
        c = Cluster(nodes)
        c.sync(running)
        order = sorted(queue, key=lambda j: j.submitted_at)
        d = Decision(positions={j.id: k for k, j in enumerate(order, 1)})
        for job in order:
            types = [None] if not job.gpus else list(job.accelerators or c.types)
            got = next((p for t in types if t in c.types and (p := c.place(job, t))), None)
            if got is None:
                break
            rj = RunningJob(job, c.ids(got), now, now + (job.max_runtime_s or float("inf")))
            c.add(rj)
            d.start.append((job.id, rj.nodes))
            d.etas[job.id] = now
        return d


POLICIES: dict[str, Callable[..., Policy]] = {"fifo": Fifo}

__all__ = [
    "POLICIES",
    "Decision",
    "Fifo",
    "JobSpec",
    "NodeSpec",
    "Policy",
    "Reservation",
    "RunningJob",
    "ThroughputModel",
    "check_reservation",
    "earliest_window",
]
