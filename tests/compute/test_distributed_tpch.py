"""All 22 TPC-H queries distributed on the 3-node cluster give the local engine's answers.

TPC-H at scale 0.01, every table with more than 1,000 rows loaded as 3 files (so scans split
into fragments). Each query runs with ``engine="local"`` and ``engine="ray"``; the Arrow
results (names, types, values, order) must be equal. Two sessions: the default
``broadcast_max_bytes`` (at this scale every side is small: broadcast joins) and a tiny one that
makes lineitem, orders, partsupp, part and customer large (hash-partitioned joins, shuffled
aggregations, joins of large tables without a common key done pairwise).
"""

from __future__ import annotations

import pyarrow as pa
import pytest

import matrixos as mx
from matrixos import tpch as mx_tpch
from matrixos.compute import ComputePool

try:
    from tests.compute._cluster import RayCluster
except ModuleNotFoundError:
    from _cluster import RayCluster  # type: ignore[no-redef]
SCALE = 0.01
FILES = 3
SMALL = 4096  # broadcast_max_bytes of the "large tables" session
MEDIUM = 64 * 1024  # lineitem, orders (and partsupp) large; supplier, nation, part small


@pytest.fixture(scope="module")
def tpch() -> mx_tpch.TpchData:
    return mx_tpch.generate(mx_tpch.default_cache() / f"sf{SCALE:g}", SCALE)


@pytest.fixture(scope="module")
def modes_warehouse(
    ray_pool: ComputePool,
    ray_cluster: RayCluster,
    tpch: mx_tpch.TpchData,
    tmp_path_factory: pytest.TempPathFactory,
) -> str:
    uri = str(tmp_path_factory.mktemp("tpch"))
    with mx.connect(uri, compute=ray_cluster.address) as lh:
        mx_tpch.load_split(lh, tpch, FILES)
    return uri


def _plan(lh: mx.Lakehouse, sql: str, *, analyze: bool = False) -> list[str]:
    explain = "EXPLAIN ANALYZE " if analyze else "EXPLAIN "
    return [str(x) for x in lh.sql(explain + sql, engine="ray").to_arrow()["plan"].to_pylist()]


def _checked_plan(
    warehouse: str, ray_cluster: RayCluster, q: str, broadcast: int, *, analyze: bool = False
) -> list[str]:
    """``q``'s distributed plan (``EXPLAIN``: from estimates; ``EXPLAIN ANALYZE``: as run), its
    answer checked against the local engine's."""
    with mx.connect(warehouse, compute=ray_cluster.address, broadcast_max_bytes=broadcast) as lh:
        plan = _plan(lh, q, analyze=analyze)
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


@pytest.mark.parametrize("n", mx_tpch.QUERIES, ids=[f"q{n:02d}" for n in mx_tpch.QUERIES])
def test_tpch_query_equals_local(modes_lh: mx.Lakehouse, tpch: mx_tpch.TpchData, n: int) -> None:
    sql = tpch.query(n)
    local = modes_lh.sql(sql, engine="local").to_arrow()
    dist = modes_lh.sql(sql, engine="ray").to_arrow()
    _assert_same(local, dist, f"Q{n}")
    assert local.num_rows > 0
    first = _plan(modes_lh, sql)[0]
    assert first.startswith("Engine: ray (distributed"), f"Q{n}: {first}"


def test_broadcast_join_shows_in_explain(modes_warehouse: str, ray_cluster: RayCluster) -> None:
    q = (
        "SELECT n_name, count(*) AS n FROM customer JOIN nation ON c_nationkey = n_nationkey "
        "WHERE c_acctbal > 0 GROUP BY n_name ORDER BY n DESC, n_name"
    )
    # customer is large here, nation (25 rows) small: nation goes to every task.
    plan = _checked_plan(modes_warehouse, ray_cluster, q, SMALL)
    assert plan[0].startswith("Engine: ray")
    assert any("nation" in line and "broadcast" in line for line in plan), plan
    assert any("customer" in line and "fragment(s)" in line for line in plan), plan
    assert not any("shuffle" in line for line in plan), plan
    assert any(line.startswith("Scan main.default.customer") for line in plan)
    assert any("placement:" in line for line in plan), plan


def test_hash_partitioned_join_shows_in_explain(
    modes_warehouse: str, ray_cluster: RayCluster
) -> None:
    q = (
        "SELECT ps_availqty > 5000 AS a, count(*) AS n, sum(l_quantity) AS q FROM lineitem "
        "JOIN partsupp ON l_partkey = ps_partkey AND l_suppkey = ps_suppkey "
        "WHERE l_shipdate >= DATE '1995-01-01' GROUP BY a ORDER BY a"
    )
    plan = _checked_plan(modes_warehouse, ray_cluster, q, SMALL)
    assert any(
        line.startswith("Stage") and "shuffle lineitem on l_partkey" in line for line in plan
    )
    assert any("shuffle partsupp on ps_partkey" in line for line in plan), plan
    assert any("hash-partitioned into" in line for line in plan), plan
    # Pruning is shown per table: the ship-date range skips lineitem files.
    scan = next(line for line in plan if line.startswith("Scan main.default.lineitem"))
    assert f"of {FILES} files after pruning on l_shipdate" in scan


def _equal_to_local(lh: mx.Lakehouse, q: str) -> list[str]:
    """The query's EXPLAIN lines, once its distributed result is checked against local's."""
    local = lh.sql(q, engine="local").to_arrow()
    assert lh.sql(q, engine="ray").to_arrow().equals(local)
    return _plan(lh, q)


def test_global_window_over_a_join_runs_in_one_task(modes_lh: mx.Lakehouse) -> None:
    plan = _equal_to_local(
        modes_lh,
        "SELECT o_orderkey, rank() OVER (ORDER BY o_totalprice) AS r FROM orders JOIN customer "
        "ON o_custkey = c_custkey ORDER BY r, o_orderkey LIMIT 5",
    )
    assert plan[0].startswith("Engine: ray (distributed,"), plan[0]
    assert any(line.startswith("Window functions without a common PARTITION BY") for line in plan)


def test_queries_it_cannot_split_run_locally(modes_lh: mx.Lakehouse) -> None:
    plan = _equal_to_local(
        modes_lh,
        "SELECT c_mktsegment, count(o_orderkey) AS n FROM orders RIGHT JOIN customer "
        "ON o_custkey = c_custkey GROUP BY c_mktsegment ORDER BY c_mktsegment",
    )
    assert plan[0] == "Engine: local (not distributed: RIGHT joins)"


def test_partial_aggregate_and_ranges_show_in_explain(
    modes_warehouse: str, ray_cluster: RayCluster
) -> None:
    # lineitem and orders are loaded in o_orderkey order: their files' statistics split both
    # by the same key ranges (no shuffle); GROUP BY o_orderpriority aggregates per task first.
    q = (
        "SELECT o_orderpriority, count(*) AS n, sum(l_quantity) AS q, max(l_tax) AS t "
        "FROM lineitem JOIN orders ON l_orderkey = o_orderkey WHERE l_quantity > 10 "
        "GROUP BY o_orderpriority ORDER BY o_orderpriority"
    )
    plan = _checked_plan(modes_warehouse, ray_cluster, q, SMALL)
    assert any("by ranges of l_orderkey (file statistics)" in line for line in plan), plan
    assert any("by ranges of o_orderkey (file statistics)" in line for line in plan), plan
    assert not any("shuffle" in line for line in plan), plan
    assert any("partial aggregate, partition by GROUP BY" in line for line in plan), plan


def test_filtered_side_measured_small_is_broadcast(
    modes_warehouse: str, ray_cluster: RayCluster
) -> None:
    # customer is large by its files, but few rows pass its filter: once shuffled (and
    # measured) it is broadcast, and orders (not clustered on o_custkey) is not shuffled.
    q = (
        "SELECT c_mktsegment, count(*) AS n, sum(o_totalprice) AS p FROM customer "
        "JOIN orders ON c_custkey = o_custkey WHERE c_acctbal > 9950 "
        "GROUP BY c_mktsegment ORDER BY c_mktsegment"
    )
    plan = _checked_plan(modes_warehouse, ray_cluster, q, SMALL, analyze=True)
    assert plan[0].endswith("stages as run, sizes measured)"), plan[0]
    assert any("shuffle customer on c_custkey" in line for line in plan), plan
    assert any(
        "stage output (shuffle customer on c_custkey): broadcast" in line for line in plan
    ), plan
    assert not any("shuffle orders" in line for line in plan), plan


def test_semi_join_reduction_before_shuffle(modes_warehouse: str, ray_cluster: RayCluster) -> None:
    # part (filtered) is small: lineitem's rows without a matching part are dropped before
    # lineitem moves (an IN over the broadcast part in the shuffle stage).
    q = (
        "SELECT ps_suppkey, sum(l_quantity) AS q FROM lineitem JOIN part ON l_partkey = "
        "p_partkey JOIN partsupp ON ps_partkey = l_partkey AND ps_suppkey = l_suppkey "
        "WHERE p_size < 10 GROUP BY ps_suppkey ORDER BY ps_suppkey"
    )
    plan = _checked_plan(modes_warehouse, ray_cluster, q, 32 * 1024)
    shuffles = [line for line in plan if "per task" in line and "IN (SELECT" in line]
    assert shuffles, plan


def test_explain_plans_without_running(modes_warehouse: str, ray_cluster: RayCluster) -> None:
    # The cast fails on every row: EXPLAIN, which runs no stage, still shows the plan;
    # EXPLAIN ANALYZE runs the stages and fails as the query does.
    q = (
        "SELECT c_mktsegment, sum(CAST(c_name AS INTEGER)) AS s FROM customer JOIN orders "
        "ON c_custkey = o_custkey GROUP BY c_mktsegment"
    )
    with mx.connect(modes_warehouse, compute=ray_cluster.address, broadcast_max_bytes=SMALL) as lh:
        plan = _plan(lh, q)
        assert plan[0].startswith("Engine: ray (distributed"), plan[0]
        assert plan[0].endswith("planned from estimates, not run)"), plan[0]
        stages = [line for line in plan if line.startswith("Stage")]
        assert stages and all("estimated" in line for line in stages), plan
        with pytest.raises(mx.MatrixOSError, match=r"(?i)conversion|convert|cast"):
            _plan(lh, q, analyze=True)
        with pytest.raises(mx.MatrixOSError):
            lh.sql(q, engine="ray").to_arrow()


def test_kept_exists_runs_per_key_range(
    modes_warehouse: str, ray_cluster: RayCluster, tpch: mx_tpch.TpchData
) -> None:
    # Q21: EXISTS / NOT EXISTS correlated on l_orderkey stay in the per-task SQL (DuckDB's
    # semi and anti joins); their lineitem is split by the outer lineitem's key ranges
    # (supplier and nation broadcast).
    for broadcast in (MEDIUM, MEDIUM * 2):
        plan = _checked_plan(modes_warehouse, ray_cluster, tpch.query(21), broadcast)
        kept = [line for line in plan if line.startswith("Kept correlated subquery")]
        assert len(kept) == 2, plan
        assert not any("ARRAY_AGG" in line or "shuffle" in line for line in plan), plan
        assert sum("by ranges of l_orderkey" in line for line in plan) == 3, plan
        assert any("per task" in line and "NOT EXISTS(SELECT 1" in line for line in plan), plan
    # Q4: one EXISTS, orders and lineitem split by the same ranges.
    plan = _checked_plan(modes_warehouse, ray_cluster, tpch.query(4), SMALL)
    assert any("by ranges of o_orderkey" in line for line in plan), plan
    assert any("by ranges of l_orderkey" in line for line in plan), plan
    assert any("per task" in line and "EXISTS(SELECT 1" in line for line in plan), plan


def test_kept_scalar_subquery_shuffles_on_correlation_key(
    modes_warehouse: str, ray_cluster: RayCluster, tpch: mx_tpch.TpchData
) -> None:
    # Q17: the correlated avg stays in the per-task SQL. lineitem is not clustered on
    # l_partkey: both references are hash-partitioned on it, each reduced to the parts that
    # pass part's filters (part is broadcast) before it moves.
    plan = _checked_plan(modes_warehouse, ray_cluster, tpch.query(17), MEDIUM)
    assert any(line.startswith("Kept correlated subquery") for line in plan), plan
    shuffles = [line for line in plan if line.startswith("Stage") and "shuffle" in line]
    assert len(shuffles) == 2 and all("on l_partkey" in line for line in shuffles), plan
    reduced = [line for line in plan if "per task" in line and 'l_partkey" IN (SELECT' in line]
    assert len(reduced) == 2, plan
    assert any("per task" in line and "< (SELECT 0.2 * AVG(" in line for line in plan), plan
    # Broadcast-sized: the subquery's lineitem goes to every task, no shuffle.
    plan = _checked_plan(modes_warehouse, ray_cluster, tpch.query(17), 32 * 1024 * 1024)
    assert not any("shuffle" in line for line in plan), plan


def test_kept_subquery_without_common_key_is_unnested(
    modes_warehouse: str, ray_cluster: RayCluster
) -> None:
    # partsupp (large) correlates on l_partkey, but lineitem and orders join on the order
    # key: no key partitions all three, so the EXISTS is unnested as sqlglot does it.
    q = (
        "SELECT o_orderpriority, count(*) AS n FROM lineitem JOIN orders ON l_orderkey = "
        "o_orderkey WHERE l_quantity > 45 AND EXISTS (SELECT 1 FROM partsupp WHERE "
        "ps_partkey = l_partkey AND ps_availqty < 100) GROUP BY o_orderpriority "
        "ORDER BY o_orderpriority"
    )
    plan = _checked_plan(modes_warehouse, ray_cluster, q, SMALL)
    assert any(line.startswith("Correlated subqueries unnested") for line in plan), plan
    assert not any(line.startswith("Kept correlated subquery") for line in plan), plan


def test_small_subqueries_fold_into_their_readers(
    modes_warehouse: str, ray_cluster: RayCluster, tpch: mx_tpch.TpchData
) -> None:
    # Q16: NOT IN (SELECT s_suppkey FROM supplier …) stays in the per-task SQL (supplier is
    # broadcast), no stage of its own.
    plan = _checked_plan(modes_warehouse, ray_cluster, tpch.query(16), MEDIUM)
    assert any(line.startswith("Uncorrelated subquery kept") for line in plan), plan
    assert any("per task" in line and 'IN (SELECT "__mx_s' in line for line in plan), plan
    # Q22: the unnested avg over customer is a small derived table: folded into the FROM of
    # the stage that reads it (no stage of its own); the NOT EXISTS is kept, orders and
    # customer hash-partitioned on the customer key; the top block's aggregate over the
    # partial aggregates runs on the coordinator.
    plan = _checked_plan(modes_warehouse, ray_cluster, tpch.query(22), MEDIUM)
    assert any(line.startswith("Derived table folded into its readers") for line in plan), plan
    per_task = [line for line in plan if line.startswith("  per task")]
    assert any("CROSS JOIN (SELECT AVG(" in line for line in per_task), plan
    assert any("NOT EXISTS(SELECT 1" in line for line in per_task), plan
    assert not any("AVG(" in line and "shuffle" in line for line in plan), plan
    assert any(line.startswith("Coordinator: aggregate and project") for line in plan), plan


def test_explain_analyze_shows_measured_stages(
    modes_warehouse: str, ray_cluster: RayCluster
) -> None:
    q = (
        "SELECT o_orderpriority, count(*) AS n FROM lineitem JOIN orders ON l_orderkey = "
        "o_orderkey GROUP BY o_orderpriority ORDER BY o_orderpriority"
    )
    plan = _checked_plan(modes_warehouse, ray_cluster, q, SMALL, analyze=True)
    assert plan[0].endswith("stages as run, sizes measured)"), plan[0]
    stages = [line for line in plan if line.startswith("Stage")]
    assert stages and all(" rows, " in line and line.endswith(" ms") for line in stages), plan
    assert any(line.startswith("  tasks: setup up to") for line in plan), plan
    assert any(line.startswith("Final:") and " ms in all" in line for line in plan), plan
