"""A background task run every so often on a daemon thread, stopped cleanly (the continuous
aggregates' refresher and the retention task use it)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)


class Periodic:
    """Runs ``fn`` every ``every`` seconds on a daemon thread until ``stop``.

    A failing run is logged and the next one comes as usual: one bad table must not stop the
    maintenance of the others.

    Example:
        >>> runs = []
        >>> task = Periodic("demo", 0.01, lambda: runs.append(1)).start()
        >>> task.wait_runs(2)
        True
        >>> task.stop()
    """

    def __init__(self, name: str, every: float, fn: Callable[[], object]) -> None:
        self.name = name
        self.every = every
        self._fn = fn
        self._stop = threading.Event()
        self._ran = threading.Condition()
        self.runs = 0
        self._thread: threading.Thread | None = None

    def start(self) -> Periodic:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the thread to stop and wait for a run in progress to end."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def wait_runs(self, n: int, timeout: float = 60.0) -> bool:
        """Wait until ``n`` runs have finished (tests and the notebook use it)."""
        with self._ran:
            return self._ran.wait_for(lambda: self.runs >= n, timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._fn()
            except Exception:  # logged; the next run retries
                log.exception("%s failed; retrying in %.0f s", self.name, self.every)
            with self._ran:
                self.runs += 1
                self._ran.notify_all()
            self._stop.wait(self.every)
