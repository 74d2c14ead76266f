"""Processes racing on one catalog: shared by the catalog tests of every backend."""

from __future__ import annotations

import multiprocessing as mp
import os
from typing import Any

import pyarrow as pa

import matrixos as mx
from matrixos.errors import MatrixOSError, TableExists

SPAWN = mp.get_context("spawn")


def own_machine(home: str) -> None:
    """Make this process a machine of its own: nothing of the parent's home is visible."""
    os.environ["HOME"] = home
    os.environ["MATRIXOS_HOME"] = os.path.join(home, ".matrixos")


def spawn_all(target: Any, args_per_process: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """Run ``target(*args, out)`` in one spawned process per ``args``; what each put on ``out``,
    ordered by its ``me``."""
    out = SPAWN.Queue()
    procs = [SPAWN.Process(target=target, args=(*args, out)) for args in args_per_process]
    for p in procs:
        p.start()
    results = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return sorted(results, key=lambda r: r.get("me", 0))


def _worker(
    warehouse: str,
    catalog_url: str | None,
    storage_options: dict[str, str] | None,
    me: int,
    barrier: Any,
    home: str | None,
    out: Any,
) -> None:
    """One process: read the parent's table, then race the others to create tables."""
    result: dict[str, Any] = {"me": me}
    try:
        if home is not None:
            own_machine(home)
        with mx.connect(warehouse, catalog_url=catalog_url, storage_options=storage_options) as lh:
            result["sees"] = (lh.tables("shared"), lh.table("shared.seed").version)
            barrier.wait(timeout=60)
            lh.create_table(f"shared.own_{me}", pa.table({"who": [me] * 3}))
            barrier.wait(timeout=60)
            try:
                lh.create_table("shared.same", pa.table({"who": [me] * 5}))
                result["same"] = "won"
            except TableExists:
                result["same"] = "exists"
            except MatrixOSError as e:
                result["same"] = f"{type(e).__name__}: {e}"
    except BaseException as e:
        result["error"] = f"{type(e).__name__}: {e}"
    out.put(result)


def run_workers(
    n: int,
    warehouse: str,
    catalog_url: str | None,
    storage_options: dict[str, str] | None,
    homes: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Run ``n`` spawned processes that each read ``shared.seed``, create ``shared.own_<i>``,
    then race to create ``shared.same``; their results, in order."""
    barrier = SPAWN.Barrier(n)
    args = [
        (warehouse, catalog_url, storage_options, i, barrier, homes[i] if homes else None)
        for i in range(n)
    ]
    return spawn_all(_worker, args)


def check_race(lh: mx.Lakehouse, results: list[dict[str, Any]], n: int) -> None:
    assert all("error" not in r for r in results), results
    # every process saw the parent's table, in the catalog and on storage
    assert [r["sees"] for r in results] == [(["main.shared.seed"], 0)] * n
    assert sorted(lh.tables("shared")) == sorted(
        ["main.shared.seed", "main.shared.same"] + [f"main.shared.own_{i}" for i in range(n)]
    )
    for i in range(n):
        assert lh.table(f"shared.own_{i}").to_arrow().column("who").to_pylist() == [i] * 3
    outcomes = [r["same"] for r in results]
    assert outcomes.count("won") == 1, outcomes
    assert outcomes.count("exists") == n - 1, outcomes
    winner = outcomes.index("won")
    same = lh.table("shared.same")
    assert same.version == 0
    # the catalog entry and the files agree: the winner's rows, nobody else's
    assert same.to_arrow().column("who").to_pylist() == [winner] * 5
    assert lh.sql("SELECT count(*), min(who), max(who) FROM shared.same").fetchall() == [
        (5, winner, winner)
    ]
