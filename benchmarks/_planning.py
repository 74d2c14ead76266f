"""How long ``lh.sql`` plans before DuckDB gets the statement: a breakdown beside the public
call's time, never instead of it.

``PlanningClock`` wraps the two places where the local engine hands DuckDB its SQL (a planned
statement's ``LocalRunner._install`` returning, a cached plan's ``LocalRunner.run_sql``
starting) and records the time since the ``lh.sql`` call began.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from matrixos.engine.sql.local import LocalRunner


class PlanningClock:
    """``clock.call(fn)`` runs ``fn`` (which calls ``lh.sql`` once) and returns ``(its result,
    total ms, planning ms)``; planning is NaN when no local plan was handed to DuckDB (a query
    that ran on Ray, a statement that is not a query)."""

    def __init__(self) -> None:
        self._handed: float | None = None

    @contextmanager
    def installed(self) -> Iterator[PlanningClock]:
        install, run_sql = LocalRunner._install, LocalRunner.run_sql
        clock = self

        def timed_install(runner: LocalRunner, *args: Any, **kwargs: Any) -> Any:
            out = install(runner, *args, **kwargs)
            clock._handed = time.perf_counter()
            return out

        def timed_run_sql(runner: LocalRunner, *args: Any, **kwargs: Any) -> Any:
            clock._handed = time.perf_counter()
            return run_sql(runner, *args, **kwargs)

        LocalRunner._install = timed_install  # type: ignore[method-assign]
        LocalRunner.run_sql = timed_run_sql  # type: ignore[method-assign]
        try:
            yield self
        finally:
            LocalRunner._install = install  # type: ignore[method-assign]
            LocalRunner.run_sql = run_sql  # type: ignore[method-assign]

    def call(self, fn: Callable[[], Any]) -> tuple[Any, float, float]:
        self._handed = None
        t0 = time.perf_counter()
        out = fn()
        t1 = time.perf_counter()
        planning = (self._handed - t0) * 1000.0 if self._handed is not None else float("nan")
        return out, (t1 - t0) * 1000.0, planning
