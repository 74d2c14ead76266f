"""Small job functions for the Ray tests: a light module (a job's process imports it)."""

from __future__ import annotations

import os
import time


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
