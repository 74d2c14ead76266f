"""What the Ray tasks of a query used, reported back to whoever meters the statement.

A distributed query's tasks (``engine.dist``) each measure their node, the CPUs Ray reserved
for them, their wall time and their worker process's CPU time (``task_usage``), and return it
with their rows; the driver hands the lot to the collector set in ``TASK_USAGE`` (the session's
statement meter sets one per metered statement), so a statement on the Ray pool is billed for
its workers' cores, not only for the driver's.

Example::

    tasks: list[TaskUsage] = []
    token = TASK_USAGE.set(tasks)
    try:
        lh.sql("SELECT ...", engine="ray")
    finally:
        TASK_USAGE.reset(token)
    sum(t.core_seconds for t in tasks)
"""

from __future__ import annotations

import contextlib
import time
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True)
class TaskUsage:
    """What one task used on its node: the CPUs Ray reserved for it (``cpus``) from ``start``
    to ``end`` (epoch seconds) and the CPU time its worker process really spent (``cpu_s``,
    DuckDB's threads included). ``core_seconds`` is what it is billed: the larger of the two."""

    node: str
    cpus: float
    start: float
    end: float
    cpu_s: float

    @property
    def core_seconds(self) -> float:
        """max(reserved CPUs x wall seconds, measured CPU seconds)."""
        return max(self.cpus * max(0.0, self.end - self.start), self.cpu_s)


#: Where the driver collects the ``TaskUsage`` of the Ray tasks a query ran: a list set by
#: whoever meters the statement (``None``: nobody is collecting).
TASK_USAGE: ContextVar[list[TaskUsage] | None] = ContextVar("matrixos_task_usage", default=None)


def task_clock() -> tuple[float, float]:
    """A task's start: (epoch seconds, process CPU seconds)."""
    return time.time(), time.process_time()


def task_usage(started: tuple[float, float]) -> TaskUsage:
    """The usage of the task that began at ``started`` (``task_clock``), on this Ray node."""
    import ray

    end, cpu = time.time(), time.process_time()
    cpus = 1.0
    with contextlib.suppress(Exception):
        cpus = float(ray.get_runtime_context().get_assigned_resources().get("CPU", cpus))
    node = "local"
    with contextlib.suppress(Exception):
        node = ray.util.get_node_ip_address()
    return TaskUsage(node, cpus, started[0], end, max(0.0, cpu - started[1]))


def report_usage(usages: list[TaskUsage]) -> None:
    """Hand the tasks' usage to the statement's collector (``TASK_USAGE``), if any."""
    sink = TASK_USAGE.get()
    if sink is not None:
        sink.extend(usages)


__all__ = ["TASK_USAGE", "TaskUsage", "report_usage", "task_clock", "task_usage"]
