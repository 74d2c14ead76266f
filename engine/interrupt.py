"""Stopping a running statement from another thread: a server's cancel request.

A caller that may need to stop a statement runs it inside ``interruptible(handle)``; every
DuckDB cursor the engine opens for it meanwhile is tracked by ``handle``, and
``handle.interrupt()`` (from any thread) interrupts them: the statement (or the stream of its
rows, read later) fails with ``StatementCanceled``. A cursor opened after the request refuses
at once, so a cancel that arrives while a statement is still being bound is not lost.

Example:
    >>> import threading
    >>> handle = Interrupt()
    >>> with interruptible(handle):
    ...     pass  # lh.sql(...) here: its cursors are tracked
    >>> handle.interrupt(); handle.requested
    True
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from contextvars import ContextVar
from typing import Any

import duckdb

from matrixos.errors import StatementCanceled


class Interrupt:
    """A handle that stops the statements run under ``interruptible(handle)``. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cursors: list[Any] = []
        self.requested = False

    def interrupt(self) -> None:
        """Interrupt every tracked cursor, and every cursor opened from now on."""
        with self._lock:
            self.requested = True
            cursors = list(self._cursors)
        for cur in cursors:
            with suppress(Exception):  # a cursor already closed has nothing to stop
                cur.interrupt()

    def track(self, cursor: Any) -> None:
        """Track ``cursor`` (a DuckDB connection or cursor); ``StatementCanceled`` when the
        interrupt came first."""
        with self._lock:
            if self.requested:
                raise StatementCanceled("canceling statement due to user request")
            self._cursors.append(cursor)


_CURRENT: ContextVar[Interrupt | None] = ContextVar("matrixos_interrupt", default=None)


@contextmanager
def interruptible(handle: Interrupt) -> Iterator[Interrupt]:
    """Track the cursors opened in this context (this thread) with ``handle``."""
    token = _CURRENT.set(handle)
    try:
        yield handle
    finally:
        _CURRENT.reset(token)


def track(cursor: Any) -> Any:
    """Track ``cursor`` with the current context's handle, if any; returns ``cursor``."""
    handle = _CURRENT.get()
    if handle is not None:
        handle.track(cursor)
    return cursor


def canceled(e: BaseException) -> bool:
    """Whether ``e`` is DuckDB's answer to an interrupt."""
    return isinstance(e, duckdb.InterruptException)
