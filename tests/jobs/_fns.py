"""Small job functions for the Ray tests: a light module (a job's process imports it)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable


def interval(path: str, tag: str, seconds: float) -> str:
    """Sleep ``seconds``; append ``tag rank start end`` to ``path``."""
    start = time.time()
    time.sleep(seconds)
    with open(path, "a") as f:
        f.write(f"{tag} {os.environ.get('MATRIXOS_JOB_RANK')} {start} {time.time()}\n")
    print(f"{tag} done")
    return tag


def first_attempt_hangs(marker: str, seconds: float = 120.0) -> str:
    """The first run prints its pid and its supervisor's and sleeps; a later run returns."""
    if os.path.exists(marker):
        return "again"
    with open(marker, "w") as f:
        f.write(f"{os.getpid()} {os.getppid()}")
    print(f"pid {os.getpid()} parent {os.getppid()}", flush=True)
    time.sleep(seconds)
    return "first"


def rank_waits(folder: str, seconds: float = 120.0) -> str:
    """Until ``<folder>/go`` exists, each rank writes ``<folder>/<rank>-<pid>`` (holding its
    node's id) and sleeps; once it exists, returns at once."""
    if os.path.exists(os.path.join(folder, "go")):
        return "again"
    rank = int(os.environ["MATRIXOS_JOB_RANK"])
    node = os.environ["MATRIXOS_JOB_NODES"].split(",")[rank]
    with open(os.path.join(folder, f"{rank}-{os.getpid()}"), "w") as f:
        f.write(node)
    time.sleep(seconds)
    return "first"


def until(check: Callable[[], bool], timeout: float = 30.0) -> bool:
    """Poll ``check`` every 0.1 s until it holds (True) or ``timeout`` seconds pass (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False
