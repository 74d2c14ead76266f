"""Work a process must finish before the interpreter shuts down.

A daemon thread still inside deltalake's or Lance's native code when the interpreter exits
takes the process down with SIGSEGV: their runtimes are torn down under the running call (a
thread appending to a Delta table in a loop crashed 40 exits in 40 here). So a background
thread that writes tables is finished or stopped by a hook registered here, not left to die
with the interpreter.

``before_exit`` hooks run when the main thread ends, before ``atexit`` handlers and before
``concurrent.futures`` refuses new work (the libraries' own S3 calls use its pools): an
``atexit`` handler would run after that, and an S3 write in it failed ("cannot schedule new
futures after shutdown"). They run stage by stage, newest first within a stage:

1. ``SERVICES``: services a program built itself and left open (an IoT ingest service's last
   flush goes through its session, so before the sessions);
2. ``SESSIONS``: root sessions left open (their ingest service, meters, scheduler, Ray);
3. ``WRITERS``: background writers of system tables (usage, audit), fed by the stages above;
4. ``UPKEEP``: table upkeep (checkpoints, auto-compaction) the writes above may have asked for.

``OpenAtExit`` is the usual way in: a set of objects, each closed at its stage unless closed
before (the set holds them weakly, so it keeps nothing alive).
"""

from __future__ import annotations

import atexit
import concurrent.futures.thread  # noqa: F401 - its exit hook must run after ours
import logging
import threading
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["SERVICES", "SESSIONS", "UPKEEP", "WRITERS", "OpenAtExit", "before_exit"]

SERVICES, SESSIONS, WRITERS, UPKEEP = range(4)

T = TypeVar("T")
log = logging.getLogger(__name__)
_hooks: list[list[Callable[[], object]]] = [[] for _ in range(UPKEEP + 1)]


def before_exit(hook: Callable[[], object], *, stage: int = SESSIONS) -> None:
    """Run ``hook`` when the main thread ends, before the interpreter shuts down, at ``stage``
    (see the module's docstring)."""
    _hooks[stage].append(hook)


class OpenAtExit(Generic[T]):
    """Objects to close at ``stage`` when the program ends with them still open: ``add`` one
    when it starts its thread, ``discard`` it when it is closed."""

    def __init__(self, close: Callable[[T], object], *, stage: int) -> None:
        self._close = close
        self._open: weakref.WeakSet[T] = weakref.WeakSet()  # type: ignore[type-var]
        before_exit(self.close_all, stage=stage)

    def add(self, obj: T) -> None:
        self._open.add(obj)  # type: ignore[type-var]

    def discard(self, obj: T) -> None:
        self._open.discard(obj)  # type: ignore[type-var]

    def close_all(self) -> None:
        for obj in list(self._open):
            try:
                self._close(obj)
            except Exception:  # the others are still closed
                log.warning("closing %r at exit failed", obj, exc_info=True)


def _run_hooks() -> None:
    for stage in _hooks:
        for hook in reversed(stage):
            try:
                hook()
            except Exception:  # one failing hook must not keep the others from running
                log.exception("exit hook %r failed", hook)


_register = getattr(threading, "_register_atexit", None)
if _register is not None:
    _register(_run_hooks)
else:  # pragma: no cover - every CPython since 3.9 has it
    atexit.register(_run_hooks)
