"""Row filters and column masks on the distributed path: a query run with ``engine="ray"`` on
the 3-node cluster returns what the local engine returns for the same principal (the policies
are in the tree the planner receives), never the hidden rows or real values."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import matrixos as mx
from matrixos.catalog.accounts import Accounts
from matrixos.compute import ComputePool

try:
    from tests.compute._cluster import RayCluster
except ModuleNotFoundError:
    from _cluster import RayCluster  # type: ignore[no-redef]


@pytest.fixture(scope="module")
def bob(
    ray_pool: ComputePool, ray_cluster: RayCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[mx.Lakehouse]:
    wh = str(tmp_path_factory.mktemp("wh"))
    # distributed_min_bytes=0: engine="auto" would distribute too; "ray" is asked below
    with mx.connect(wh, compute=ray_cluster.address, distributed_min_bytes=0) as lh:
        rows = [{"id": i, "region": ("EU", "US")[i % 2], "email": f"u{i}@x"} for i in range(2000)]
        people = lh.create_table("s.people", rows[0::4])
        for part in range(1, 4):  # several files, so that scans are split across tasks
            people.append(rows[part::4])
        orders = [{"person": i % 2000, "amount": float(i)} for i in range(4000)]
        lh.create_table("s.orders", orders)
        for stmt in (
            "CREATE USER bob",
            "GRANT USE CATALOG ON CATALOG main TO bob",
            "GRANT USE SCHEMA ON SCHEMA main.s TO bob",
            "GRANT SELECT ON SCHEMA main.s TO bob",
            "ALTER TABLE s.people SET ROW FILTER 'region = ''EU''' FOR bob",
            "ALTER TABLE s.people ALTER COLUMN email SET MASK '''***''' FOR bob",
        ):
            lh.sql(stmt)
        yield lh.with_principal(Accounts(lh.catalog).principal("bob"))


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT count(*), count(DISTINCT email), min(id % 2), max(id % 2) FROM s.people",
        "SELECT p.region, count(*), sum(o.amount) FROM s.orders o JOIN s.people p "
        "ON o.person = p.id GROUP BY p.region",
        "SELECT count(*) FROM s.orders WHERE person IN (SELECT id FROM s.people)",
        "SELECT count(*) FROM s.people WHERE email = 'u2@x'",
    ],
)
def test_distributed_queries_hold_the_policies(bob: mx.Lakehouse, sql: str) -> None:
    local = bob.sql(sql, engine="local").fetchall()
    plan = [r[0] for r in bob.sql("EXPLAIN " + sql, engine="ray").fetchall()]
    assert plan[0].startswith("Engine: ray (distributed"), plan[0]
    assert bob.sql(sql, engine="ray").fetchall() == local
    if "count(DISTINCT email)" in sql:
        assert local == [(1000, 1, 0, 0)]  # EU rows only (even ids), one masked e-mail
    if "GROUP BY p.region" in sql:
        assert [r[0] for r in local] == ["EU"]
    if "WHERE email" in sql:
        assert local == [(0,)]
