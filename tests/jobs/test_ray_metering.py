"""Metering on the real 3-node loopback Ray cluster: a SQL statement run as Ray tasks is billed
for its workers' cores (each task's reserved CPUs x wall time, or its measured CPU time when
more), per node, beside the driver's own record; the ledger still balances exactly."""

from __future__ import annotations

import socket
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import matrixos as mx
from matrixos.compute import ComputePool

try:
    from tests.compute._cluster import RayCluster
except ModuleNotFoundError:
    from _cluster import RayCluster  # type: ignore[no-redef]

RAY_NODES = {"127.0.0.2", "127.0.0.3", "127.0.0.4"}
QUERY = "SELECT k % 7 AS g, count(*) AS n, sum(hash(v)) % 1000 AS h FROM t GROUP BY g ORDER BY g"


def test_a_statement_on_the_ray_pool_is_billed_for_its_workers_cores(
    ray_pool: ComputePool, ray_cluster: RayCluster, tmp_path: Path
) -> None:
    table = tmp_path / "degrees.json"
    table.write_text('{"CPU": 312}')  # a core-second is 1/3600 degree: visible amounts
    settings: dict[str, Any] = {
        "meter_statements": True,
        "duckdb_threads": 1,
        "degree_table": str(table),
    }
    with mx.connect(str(tmp_path / "wh"), compute=ray_cluster.address, **settings) as lh:
        for part in range(4):  # four files: four fragments
            rows = pa.table({"k": range(part * 50_000, (part + 1) * 50_000)})
            rows = rows.append_column("v", pa.array([f"row-{i}" for i in rows["k"].to_pylist()]))
            if part == 0:
                lh.create_table("t", rows)
            else:
                lh.table("t").append(rows)
        expected = lh.sql(QUERY, engine="local").to_arrow()
        t0 = time.time()
        got = lh.sql(QUERY, engine="ray").to_arrow()
        wall = time.time() - t0
        assert got.equals(expected)
        lh.usage()  # writes what is queued
        balance = lh.accounts.balance(lh.principal.name)
        records = lh.sql(
            "SELECT statement_id, node, quantity * seconds AS core_s, degrees, "
            'epoch(start) AS s, epoch("end") AS e FROM system.billing.usage'
        ).to_pylist()
    ids = {r["statement_id"] for r in records}
    # The Ray statement is the one with records on Ray nodes; each node one record.
    on_ray = [r for r in records if r["node"] in RAY_NODES]
    assert on_ray, records
    (sid,) = {r["statement_id"] for r in on_ray}
    mine = [r for r in records if r["statement_id"] == sid]
    assert len({r["node"] for r in on_ray}) == len(on_ray)
    assert {r["node"] for r in mine} - RAY_NODES == {socket.gethostname()}  # the driver's own
    for r in on_ray:
        # One CPU per node and one task at a time there: at most the statement's wall time
        # (plus what DuckDB's one thread and the worker's own threads spent beside it).
        assert 0 < r["core_s"] <= 2 * wall + 0.5, (r, wall)
        assert t0 - 1 <= r["s"] <= r["e"] <= t0 + wall + 1
    assert len(ids) == 2  # the local run was metered too, on the driver only
    # The ledger: every record's degrees charged, nothing else.
    total = sum((Decimal(str(r["degrees"])) for r in records), Decimal(0))
    assert total > 0 and balance == -total
    for r in records:
        assert float(r["degrees"]) == pytest.approx(r["core_s"] / 3600, abs=1e-8)
