"""What the scheduler reasons about: nodes, job requests, running jobs, reservations, decisions.

Plain frozen dataclasses with no I/O, shared by the policies (:mod:`matrixos.jobs.policy`), the
placement index (:mod:`matrixos.jobs.placement`), the simulator and the Ray runtime. Times are
seconds on one clock (epoch seconds in the runtime, simulated seconds in the simulator).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Strategy = Literal["PACK", "SPREAD", "STRICT_SPREAD"]
Objective = Literal["cost", "latency"]
STRATEGIES: tuple[str, ...] = ("PACK", "SPREAD", "STRICT_SPREAD")
OBJECTIVES: tuple[str, ...] = ("cost", "latency")


@dataclass(frozen=True)
class NodeSpec:
    """One machine of the pool: its CPUs, GPUs, memory and accelerator type (``None``: CPU only).

    Example: ``NodeSpec("n1", cpus=96, gpus=8, memory_gb=1024, accelerator="H100",
    gpu_memory_gb=80, bf16=True)``.
    """

    id: str
    cpus: float
    gpus: int
    memory_gb: float
    accelerator: str | None = None
    gpu_memory_gb: float = 0
    bf16: bool = False


@dataclass(frozen=True)
class JobSpec:
    """A job request: ``nodes`` bundles (the gang), each of ``cpus``/``gpus``/``memory_gb`` each.

    All bundles start together or none does. ``accelerators`` lists acceptable types (empty: any
    type meeting ``min_gpu_memory_gb`` and ``bf16``). ``max_runtime_s`` is the hard limit the
    backfill guarantees rest on; ``expected_runtime_s`` (on an A100-class reference) feeds ETAs
    and the placement choice. ``deadline_s`` is seconds after ``submitted_at`` by which the job
    should finish; ``objective`` picks the cheapest type in degrees (``"cost"``) or the fastest
    (``"latency"``).

    Example: ``JobSpec("j1", account="team-a", gpus=8, nodes=2, accelerators=("H100", "A100"))``.
    """

    id: str
    account: str
    cpus: float = 1
    gpus: int = 0
    memory_gb: float = 0
    nodes: int = 1
    accelerators: tuple[str, ...] = ()
    min_gpu_memory_gb: float = 0
    bf16: bool = False
    priority: int = 0
    submitted_at: float = 0.0
    max_runtime_s: float | None = None
    expected_runtime_s: float | None = None
    strategy: Strategy = "PACK"
    kind: str = "python"
    objective: Objective = "cost"
    deadline_s: float | None = None

    @property
    def total_gpus(self) -> int:
        """GPUs over the whole gang (``gpus * nodes``)."""
        return self.gpus * self.nodes


@dataclass(frozen=True)
class RunningJob:
    """A started job: ``nodes`` holds the node id of each bundle; ``ends_by`` its hard end
    (``started_at + max_runtime_s``; ``inf`` without a limit)."""

    spec: JobSpec
    nodes: tuple[str, ...]
    started_at: float
    ends_by: float


@dataclass(frozen=True)
class Reservation:
    """A booked window of ``gpus`` accelerators of one type (``None``: any GPU type) for an
    account, from ``start`` to ``end``; queued jobs never run into it."""

    id: str
    account: str
    gpus: int
    accelerator: str | None
    start: float
    end: float
    cpus: float = 0


@dataclass
class Decision:
    """What one scheduling round decided.

    ``start``: (job id, node id per bundle) to start now; ``preempt``: running job ids to stop
    (SIGTERM, grace, kill) and requeue; ``positions``: queued job id → place in the queue (1 is
    the next to run); ``etas``: queued job id → estimated start (same clock as ``now``).
    """

    start: list[tuple[str, tuple[str, ...]]] = field(default_factory=list)
    preempt: list[str] = field(default_factory=list)
    positions: dict[str, int] = field(default_factory=dict)
    etas: dict[str, float] = field(default_factory=dict)
