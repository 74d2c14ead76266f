"""UUID and JSON columns of a result the Ray pool computed go over the PostgreSQL wire as uuid
(2950) and json (114), as a local result's do: the rows come back as Arrow strings, and the
result carries the DuckDB type names the query has when bound locally (``Result.sql_types``).

A real ``matrixos serve --compute`` on the shared 3-node Ray cluster (127.0.0.2-4) and psycopg.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

import matrixos as mx
from matrixos.catalog.accounts import Accounts
from matrixos.compute import ComputePool
from tests.server._serve import MatrixOSServer

try:
    from tests.compute._cluster import RayCluster
except ModuleNotFoundError:
    from _cluster import RayCluster  # type: ignore[no-redef]

IDS = [uuid.UUID(int=i * 7919) for i in range(200)]
PASSWORD = "pw-admin-Secret1"


@pytest.fixture(scope="module")
def served(
    ray_pool: ComputePool, ray_cluster: RayCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[MatrixOSServer]:
    root: Path = tmp_path_factory.mktemp("pg-ray")
    wh = str(root / "warehouse")
    with mx.connect(wh) as lh:
        rows = [{"id": i, "u": str(u), "doc": f'{{"k": {i}}}'} for i, u in enumerate(IDS)]
        t = lh.create_table("s.things", rows[0::2])
        t.append(rows[1::2])  # two files: the scan splits across tasks
        Accounts(lh.catalog).create("admin", admin=True, password=PASSWORD)
    server = MatrixOSServer(
        wh, root / "server.log", pg=True, args=["--compute", ray_cluster.address],
        env={"MATRIXOS_DISTRIBUTED_MIN_BYTES": "0", "MATRIXOS_RAY_STAGE_MS": "0"},
    ).start()  # fmt: skip
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("binary", [False, True])
def test_uuid_and_json_from_the_ray_pool_keep_their_wire_types(
    served: MatrixOSServer, binary: bool
) -> None:
    with psycopg.connect(
        host="127.0.0.1", port=served.pg_port, dbname="main", user="admin", password=PASSWORD,
        autocommit=True,
    ) as conn, conn.cursor(binary=binary) as cur:  # fmt: skip
        cur.execute(
            "SELECT id, CAST(u AS UUID) AS u, CAST(doc AS JSON) AS doc FROM s.things WHERE id < %s",
            (50,),
        )
        assert [d.type_code for d in cur.description] == [20, 2950, 114]
        got: list[tuple[Any, ...]] = sorted(cur.fetchall())
        assert got == [(i, IDS[i], {"k": i}) for i in range(50)]
        # It ran on the pool, not here: the statement's plan says so.
        cur.execute("EXPLAIN SELECT id, CAST(u AS UUID) AS u FROM s.things WHERE id < 50")
        plan = "\n".join(str(r[0]) for r in cur.fetchall())
        assert "ray" in plan.lower(), plan
