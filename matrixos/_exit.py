"""Work a process must finish before the interpreter shuts down.

A daemon thread still inside deltalake's or Lance's native code when the interpreter exits
takes the process down with SIGSEGV: their runtimes are torn down under the running call (a
thread appending to a Delta table in a loop crashed 40 exits in 40 here). So a background
thread that writes tables is finished or stopped by a hook registered here, not left to die
with the interpreter.

``before_exit`` hooks run when the main thread ends, before ``atexit`` handlers and before
``concurrent.futures`` refuses new work (the libraries' own S3 calls use its pools): an
``atexit`` handler would run after that, and an S3 write in it failed ("cannot schedule new
futures after shutdown"). They run newest first, those marked ``last`` after the others.
"""

from __future__ import annotations

import atexit
import concurrent.futures.thread  # noqa: F401 - its exit hook must run after ours
import logging
import threading
from collections.abc import Callable

__all__ = ["before_exit"]

_hooks: list[Callable[[], object]] = []
_last: list[Callable[[], object]] = []


def before_exit(hook: Callable[[], object], *, last: bool = False) -> None:
    """Run ``hook`` when the main thread ends, before the interpreter shuts down. ``last``:
    after every other hook (table upkeep, which the other hooks' final writes may ask for)."""
    (_last if last else _hooks).append(hook)


def _run_hooks() -> None:
    for hook in [*reversed(_hooks), *reversed(_last)]:
        try:
            hook()
        except Exception:  # one failing hook must not keep the others from running
            logging.getLogger(__name__).exception("exit hook %r failed", hook)


_register = getattr(threading, "_register_atexit", None)
if _register is not None:
    _register(_run_hooks)
else:  # pragma: no cover - every CPython since 3.9 has it
    atexit.register(_run_hooks)
