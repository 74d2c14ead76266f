"""A rich progress bar with a rate column, shared by the batch pipelines (RAG, map_batches)."""

from __future__ import annotations

import sys
import time
from typing import Any


def interactive() -> bool:
    """Whether progress should show by default: a notebook kernel or a terminal on stderr."""
    if "ipykernel" in sys.modules:
        return True
    return bool(getattr(sys.stderr, "isatty", lambda: False)())


class RateBar:
    """``label ━━━━ [done/total] rate elapsed``; ``total=None`` for a stream of unknown length."""

    def __init__(self, label: str, total: int | None = None) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self.started = time.perf_counter()
        columns: list[Any] = [TextColumn(label), BarColumn()]
        if total is not None:
            columns.append(MofNCompleteColumn())
        columns += [TextColumn("{task.fields[rate]}"), TimeElapsedColumn()]
        self.progress = Progress(*columns, transient=False)
        self.task = self.progress.add_task(label, total=total, rate="")
        self.progress.start()

    @property
    def elapsed(self) -> float:
        return max(time.perf_counter() - self.started, 1e-9)

    def update(self, rate: str, *, advance: int = 0, completed: int | None = None) -> None:
        self.progress.update(self.task, advance=advance, completed=completed, rate=rate)

    def close(self) -> None:
        self.progress.stop()
