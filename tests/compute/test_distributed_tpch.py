"""All 22 TPC-H queries distributed on the 3-node cluster give the local engine's answers.

TPC-H at scale 0.01, every table with more than 1,000 rows loaded as 3 files (so scans split
into fragments). Each query runs with ``engine="local"`` and ``engine="ray"``; the Arrow
results (names, types, values, order) must be equal. Two sessions: the default
``broadcast_max_bytes`` (at this scale every side is small: broadcast joins) and a tiny one that
makes lineitem, orders, partsupp, part and customer large (hash-partitioned joins, shuffled
aggregations, joins of large tables without a common key done pairwise).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pytest

import matrixos as mx
from matrixos import _tpch
from matrixos.compute import ComputePool

RayCluster = Any  # tests/compute/conftest.py
SCALE = 0.01
FILES = 3
SMALL = 4096  # broadcast_max_bytes of the "large tables" session


@pytest.fixture(scope="module")
def tpch() -> _tpch.TpchData:
    return _tpch.generate(_tpch.default_cache() / f"sf{SCALE:g}", SCALE)


@pytest.fixture(scope="module")
def warehouse(
    ray_pool: ComputePool,
    ray_cluster: RayCluster,
    tpch: _tpch.TpchData,
    tmp_path_factory: pytest.TempPathFactory,
) -> str:
    uri = str(tmp_path_factory.mktemp("tpch"))
    with mx.connect(uri, compute=ray_cluster.address) as lh:
        _tpch.load_split(lh, tpch, FILES)
    return uri


@pytest.fixture(scope="module", params=["broadcast", "partitioned"])
def lh(
    request: pytest.FixtureRequest, warehouse: str, ray_cluster: RayCluster
) -> Iterator[mx.Lakehouse]:
    settings: dict[str, Any] = {"compute": ray_cluster.address}
    if request.param == "partitioned":
        settings["broadcast_max_bytes"] = SMALL
    with mx.connect(warehouse, **settings) as lh:
        yield lh


def _plan(lh: mx.Lakehouse, sql: str) -> list[str]:
    return [str(x) for x in lh.sql("EXPLAIN " + sql, engine="ray").to_arrow()["plan"].to_pylist()]


def _checked_plan(warehouse: str, ray_cluster: RayCluster, q: str, broadcast: int) -> list[str]:
    """``q``'s distributed plan, its answer checked against the local engine's."""
    with mx.connect(warehouse, compute=ray_cluster.address, broadcast_max_bytes=broadcast) as lh:
        plan = _plan(lh, q)
        _assert_same(lh.sql(q, engine="local").to_arrow(), lh.sql(q, engine="ray").to_arrow(), q)
    return plan


def _assert_same(local: pa.Table, dist: pa.Table, what: str) -> None:
    assert dist.schema == local.schema, what
    if dist.equals(local):
        return
    # Floating-point sums may differ in the last bits (the order of additions differs).
    assert dist.num_rows == local.num_rows, what
    for name in local.column_names:
        a, b = local[name].to_pylist(), dist[name].to_pylist()
        if pa.types.is_floating(local.schema.field(name).type):
            assert b == pytest.approx(a, rel=1e-9), f"{what}: {name}"
        else:
            assert b == a, f"{what}: {name}"


@pytest.mark.parametrize("n", _tpch.QUERIES, ids=[f"q{n:02d}" for n in _tpch.QUERIES])
def test_tpch_query_equals_local(lh: mx.Lakehouse, tpch: _tpch.TpchData, n: int) -> None:
    sql = tpch.query(n)
    local = lh.sql(sql, engine="local").to_arrow()
    dist = lh.sql(sql, engine="ray").to_arrow()
    _assert_same(local, dist, f"Q{n}")
    assert local.num_rows > 0
    first = _plan(lh, sql)[0]
    assert first.startswith("Engine: ray (distributed"), f"Q{n}: {first}"


def test_broadcast_join_shows_in_explain(warehouse: str, ray_cluster: RayCluster) -> None:
    q = (
        "SELECT n_name, count(*) AS n FROM customer JOIN nation ON c_nationkey = n_nationkey "
        "WHERE c_acctbal > 0 GROUP BY n_name ORDER BY n DESC, n_name"
    )
    # customer is large here, nation (25 rows) small: nation goes to every task.
    plan = _checked_plan(warehouse, ray_cluster, q, SMALL)
    assert plan[0].startswith("Engine: ray")
    assert any("nation" in line and "broadcast" in line for line in plan), plan
    assert any("customer" in line and "fragment(s)" in line for line in plan), plan
    assert not any("shuffle" in line for line in plan), plan
    assert any(line.startswith("Scan main.default.customer") for line in plan)
    assert any("placement:" in line for line in plan), plan


def test_hash_partitioned_join_shows_in_explain(warehouse: str, ray_cluster: RayCluster) -> None:
    q = (
        "SELECT ps_availqty > 5000 AS a, count(*) AS n, sum(l_quantity) AS q FROM lineitem "
        "JOIN partsupp ON l_partkey = ps_partkey AND l_suppkey = ps_suppkey "
        "WHERE l_shipdate >= DATE '1995-01-01' GROUP BY a ORDER BY a"
    )
    plan = _checked_plan(warehouse, ray_cluster, q, SMALL)
    assert any(
        line.startswith("Stage") and "shuffle lineitem on l_partkey" in line for line in plan
    )
    assert any("shuffle partsupp on ps_partkey" in line for line in plan), plan
    assert any("hash-partitioned into" in line for line in plan), plan
    # Pruning is shown per table: the ship-date range skips lineitem files.
    scan = next(line for line in plan if line.startswith("Scan main.default.lineitem"))
    assert f"of {FILES} files after pruning on l_shipdate" in scan


def test_queries_it_cannot_split_run_locally(lh: mx.Lakehouse) -> None:
    q = (
        "SELECT o_orderkey, rank() OVER (ORDER BY o_totalprice) AS r FROM orders JOIN customer "
        "ON o_custkey = c_custkey ORDER BY r, o_orderkey LIMIT 5"
    )
    local = lh.sql(q, engine="local").to_arrow()
    assert lh.sql(q, engine="ray").to_arrow().equals(local)
    assert _plan(lh, q)[0] == "Engine: local (not distributed: window functions)"


def test_partial_aggregate_and_ranges_show_in_explain(
    warehouse: str, ray_cluster: RayCluster
) -> None:
    # lineitem and orders are loaded in o_orderkey order: their files' statistics split both
    # by the same key ranges (no shuffle); GROUP BY o_orderpriority aggregates per task first.
    q = (
        "SELECT o_orderpriority, count(*) AS n, sum(l_quantity) AS q, max(l_tax) AS t "
        "FROM lineitem JOIN orders ON l_orderkey = o_orderkey WHERE l_quantity > 10 "
        "GROUP BY o_orderpriority ORDER BY o_orderpriority"
    )
    plan = _checked_plan(warehouse, ray_cluster, q, SMALL)
    assert any("by ranges of l_orderkey (file statistics)" in line for line in plan), plan
    assert any("by ranges of o_orderkey (file statistics)" in line for line in plan), plan
    assert not any("shuffle" in line for line in plan), plan
    assert any("partial aggregate, partition by GROUP BY" in line for line in plan), plan


def test_filtered_side_measured_small_is_broadcast(warehouse: str, ray_cluster: RayCluster) -> None:
    # customer is large by its files, but few rows pass its filter: once shuffled (and
    # measured) it is broadcast, and orders (not clustered on o_custkey) is not shuffled.
    q = (
        "SELECT c_mktsegment, count(*) AS n, sum(o_totalprice) AS p FROM customer "
        "JOIN orders ON c_custkey = o_custkey WHERE c_acctbal > 9950 "
        "GROUP BY c_mktsegment ORDER BY c_mktsegment"
    )
    plan = _checked_plan(warehouse, ray_cluster, q, SMALL)
    assert any("shuffle customer on c_custkey" in line for line in plan), plan
    assert any(
        "stage output (shuffle customer on c_custkey): broadcast" in line for line in plan
    ), plan
    assert not any("shuffle orders" in line for line in plan), plan


def test_semi_join_reduction_before_shuffle(warehouse: str, ray_cluster: RayCluster) -> None:
    # part (filtered) is small: lineitem's rows without a matching part are dropped before
    # lineitem moves (an IN over the broadcast part in the shuffle stage).
    q = (
        "SELECT ps_suppkey, sum(l_quantity) AS q FROM lineitem JOIN part ON l_partkey = "
        "p_partkey JOIN partsupp ON ps_partkey = l_partkey AND ps_suppkey = l_suppkey "
        "WHERE p_size < 10 GROUP BY ps_suppkey ORDER BY ps_suppkey"
    )
    plan = _checked_plan(warehouse, ray_cluster, q, 32 * 1024)
    shuffles = [line for line in plan if "per task" in line and "IN (SELECT" in line]
    assert shuffles, plan
