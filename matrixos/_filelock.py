"""An exclusive lock on a file, shared by the processes of one machine (POSIX ``flock``)."""

from __future__ import annotations

import contextlib
import fcntl
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO


@contextlib.contextmanager
def locked(
    path: Path,
    *,
    timeout: float | None = None,
    on_wait: Callable[[], None] | None = None,
) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created if missing) for the ``with`` block; the lock
    goes with the process, so a crashed holder (even killed -9) never leaves it taken.

    ``timeout``: give up with ``TimeoutError`` after that many seconds of waiting (polled);
    ``on_wait`` is called once when the lock is found taken.
    """
    with open(path, "a") as f:
        if timeout is None and on_wait is None:
            fcntl.flock(f, fcntl.LOCK_EX)
        else:
            _poll(f, path, timeout, on_wait)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _poll(
    f: IO[str], path: Path, timeout: float | None, on_wait: Callable[[], None] | None
) -> None:
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 0.001
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            pass
        if on_wait is not None:
            on_wait()
            on_wait = None
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"{path} stayed locked for {timeout:g} s")
        time.sleep(delay)
        delay = min(delay * 2, 0.02)
