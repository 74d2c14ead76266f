"""The queue's order, positions and ETAs for thousands of queued jobs in a few milliseconds.

Each job's fixed numbers (arrival, priority, account, size, expected work) are kept in numpy
arrays the first time it is seen, by job id, so a scheduling round costs one pass of C-level
lookups plus a vectorized sort — not a Python loop over every queued job. A queued job's request
must not change under the same id (a resubmission with other numbers takes a new id).
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence

import numpy as np

from matrixos.jobs.specs import JobSpec

_ID = operator.attrgetter("id")


class QueueIndex:
    """Per-job numbers by row, and the orders computed from them.

    Example::

        ix = QueueIndex(default_runtime_s=3600)
        rows = ix.rows(queue)
        order = ix.fifo(rows)           # rows in arrival order
        ix.ids_of(order)                # their job ids
    """

    def __init__(self, default_runtime_s: float) -> None:
        self.default_runtime_s = default_runtime_s
        self.row: dict[str, int] = {}
        self.specs: list[JobSpec] = []
        self.shape: list[int] = []  # rows asking for the same thing share a number
        self._shapes: dict[tuple, int] = {}
        self.ids: list[str] = []
        self.accounts: dict[str, int] = {}
        self.account_names: list[str] = []
        n = 1024
        self.submitted = np.zeros(n)
        self.priority = np.zeros(n)
        self.account = np.zeros(n, dtype=np.int64)
        self.demand = np.zeros(n)  # GPUs of the whole gang (≥ 1: a CPU job counts as one)
        self.work = np.zeros(n)  # GPU-seconds expected (CPU jobs: 0)
        self.id_array = np.zeros(n, dtype=object)  # ids by row, for fancy indexing

    def rows(self, queue: Sequence[JobSpec]) -> np.ndarray:
        """Row numbers of ``queue``'s jobs (new ones are added); forgets jobs long gone."""
        n = len(queue)
        if len(self.row) > 4 * n + 4096:  # mostly departed jobs: start afresh
            self.__init__(self.default_runtime_s)  # type: ignore[misc]
        got = list(map(self.row.get, map(_ID, queue)))
        if None in got:  # new jobs: give them rows
            for k, j in enumerate(queue):
                if got[k] is None:
                    got[k] = self.row.get(j.id)
                    if got[k] is None:
                        got[k] = self._add(j)
        return np.array(got, dtype=np.int64)

    def _add(self, j: JobSpec) -> int:
        r = len(self.ids)
        if r == len(self.submitted):
            for name in ("submitted", "priority", "account", "demand", "work", "id_array"):
                old = getattr(self, name)
                grown = np.zeros(2 * len(old), dtype=old.dtype)
                grown[: len(old)] = old
                setattr(self, name, grown)
        a = self.accounts.get(j.account)
        if a is None:
            a = self.accounts[j.account] = len(self.account_names)
            self.account_names.append(j.account)
        g = j.gpus * j.nodes
        self.row[j.id] = r
        self.ids.append(j.id)
        self.id_array[r] = j.id
        self.specs.append(j)
        key = (
            j.gpus,
            j.nodes,
            j.cpus,
            j.memory_gb,
            j.accelerators,
            j.min_gpu_memory_gb,
            j.bf16,
            j.strategy,
        )
        self.shape.append(self._shapes.setdefault(key, len(self._shapes)))
        self.submitted[r] = j.submitted_at
        self.priority[r] = j.priority
        self.account[r] = a
        self.demand[r] = max(g, 1)
        self.work[r] = g * (j.expected_runtime_s or j.max_runtime_s or self.default_runtime_s)
        return r

    def fifo(self, rows: np.ndarray) -> np.ndarray:
        """``rows`` in arrival order (ties: queue order)."""
        return rows[np.argsort(self.submitted[rows], kind="stable")]

    def fair(
        self,
        rows: np.ndarray,
        now: float,
        starve_after_s: float,
        share: Mapping[str, float],
        cluster_gpus: float,
    ) -> np.ndarray:
        """Urgent (queued ≥ ``starve_after_s``) first by arrival; then by priority, highest
        first; within a priority by fair-share tag — the account's usage ``share`` plus the
        cluster fraction its earlier queued jobs ask for — then arrival."""
        arrival = self.fifo(rows)
        n = len(arrival)
        if not n:
            return arrival
        acct = self.account[arrival]
        frac = self.demand[arrival] / max(cluster_gpus, 1.0)
        # Exclusive running sum of frac per account, in arrival order.
        by_acct = np.lexsort((np.arange(n), acct))
        cs = np.cumsum(frac[by_acct])
        starts = np.r_[True, acct[by_acct][1:] != acct[by_acct][:-1]]
        base = np.maximum.accumulate(np.where(starts, cs - frac[by_acct], 0.0))
        before = np.empty(n)
        before[by_acct] = cs - frac[by_acct] - base
        shares = np.array([share.get(a, 0.0) for a in self.account_names])
        tag = shares[acct] + before
        urgent = self.submitted[arrival] <= now - starve_after_s
        prio = np.where(urgent, 0.0, -self.priority[arrival])
        tag = np.where(urgent, 0.0, tag)
        key = np.lexsort((np.arange(n), tag, prio, ~urgent))
        return arrival[key]

    def ids_of(self, rows: np.ndarray) -> list[str]:
        """Job ids of ``rows``, in order."""
        return self.id_array[rows].tolist()  # type: ignore[no-any-return]

    def etas(
        self,
        order: np.ndarray,
        now: float,
        ahead: float,
        gpus: float,
        started: np.ndarray,
        head: int | None,
        shadow: float,
    ) -> np.ndarray:
        """Estimated starts for ``order``: ``now`` for jobs starting (``started`` mask); the
        ``shadow`` for the head (its position ``head``) and no earlier for those behind it;
        else now plus the GPU-seconds ahead (``ahead`` running, then queued) over ``gpus``."""
        work = np.where(started, 0.0, self.work[order])
        before = np.cumsum(work) - work
        eta = now + (ahead + before) / max(gpus, 1.0)
        if head is not None:
            if np.isfinite(shadow):
                eta[head] = shadow
            eta[head:] = np.maximum(eta[head:], eta[head])
        eta[started] = now
        return eta
