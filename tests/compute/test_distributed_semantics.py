"""SQL's sharp edges distributed: NULLs in IN / NOT IN, duplicates under semi-joins, correlated
subqueries, outer joins, DISTINCT aggregates, ordering with NULLs, empty inputs.

Each query runs with ``engine="local"`` and ``engine="ray"`` on the 3-node cluster, in two
sessions: every table small (broadcast joins) and every table "large" (``broadcast_max_bytes``
of 1 byte: hash-partitioned joins and shuffled aggregations). Results must be equal: names,
types, values and order (for queries with a total ORDER BY) or the same multiset of rows.
"""

from __future__ import annotations

import pyarrow as pa
import pytest

import matrixos as mx
from matrixos.compute import ComputePool

try:
    from tests.compute._cluster import RayCluster
except ModuleNotFoundError:
    from _cluster import RayCluster  # type: ignore[no-redef]
N = 3000
SMALL = 1  # broadcast_max_bytes of the "partitioned" session: every table is large


def _facts(n: int, seed: int) -> pa.Table:
    # Deterministic, with NULL keys, duplicate keys and NULL values.
    keys = [None if i % 97 == 0 else (i * seed) % 211 for i in range(n)]
    return pa.table(
        {
            "k": pa.array(keys, pa.int64()),
            "g": pa.array([f"g{i % 7}" if i % 13 else None for i in range(n)]),
            "v": pa.array([None if i % 11 == 0 else float((i * 37) % 1000) / 10 for i in range(n)]),
            "d": pa.array([i % 5 for i in range(n)], pa.int32()),
        }
    )


@pytest.fixture(scope="module")
def modes_warehouse(
    ray_pool: ComputePool, ray_cluster: RayCluster, tmp_path_factory: pytest.TempPathFactory
) -> str:
    uri = str(tmp_path_factory.mktemp("edges"))
    with mx.connect(uri, compute=ray_cluster.address) as lh:
        for name, seed in (("a", 3), ("b", 7)):
            rows = _facts(N, seed)
            third = N // 3
            t = lh.create_table(name, rows.slice(0, third))
            t.append(rows.slice(third, third))
            t.append(rows.slice(2 * third))
        # b's keys include NULL (so NOT IN over it is never true) and many duplicates.
        lh.create_table("b_nonull", lh.sql("SELECT * FROM b WHERE k IS NOT NULL").to_arrow())
        lh.create_table("empty", _facts(0, 1))
    return uri


QUERIES = {
    "not_in_with_null": "SELECT count(*) AS n FROM a WHERE k NOT IN (SELECT k FROM b)",
    "not_in_without_null": (
        "SELECT k, count(*) AS n FROM a WHERE k NOT IN (SELECT k FROM b_nonull WHERE d = 1) "
        "GROUP BY k ORDER BY k NULLS FIRST"
    ),
    "in_with_duplicates": (
        "SELECT a.k, a.d, a.v FROM a WHERE a.k IN (SELECT k FROM b WHERE d < 3) "
        "ORDER BY a.k, a.d, a.v NULLS LAST"
    ),
    "exists_correlated": (
        "SELECT d, count(*) AS n FROM a WHERE EXISTS (SELECT 1 FROM b WHERE b.k = a.k "
        "AND b.d = a.d) GROUP BY d ORDER BY d"
    ),
    "not_exists_correlated": (
        "SELECT d, count(*) AS n FROM a WHERE NOT EXISTS (SELECT 1 FROM b WHERE b.k = a.k "
        "AND b.v > a.v) GROUP BY d ORDER BY d"
    ),
    "scalar_subquery_correlated": (
        "SELECT a.k, a.d, (SELECT max(b.v) FROM b WHERE b.k = a.k) AS bmax FROM a "
        "WHERE a.d = 2 ORDER BY a.k NULLS FIRST, bmax NULLS FIRST"
    ),
    "left_join_null_keys": (
        "SELECT a.g, count(b.k) AS matched, count(*) AS n FROM a LEFT JOIN b "
        "ON a.k = b.k AND b.d = 0 GROUP BY a.g ORDER BY a.g NULLS FIRST"
    ),
    "left_join_filter_in_where": (
        "SELECT a.d, count(*) AS n FROM a LEFT JOIN b ON a.k = b.k AND a.d = b.d "
        "WHERE b.k IS NULL GROUP BY a.d ORDER BY a.d"
    ),
    "distinct_aggregates": (
        "SELECT g, count(DISTINCT k) AS dk, count(v) AS nv, avg(v) AS av, sum(DISTINCT d) AS sd "
        "FROM a GROUP BY g ORDER BY g NULLS LAST"
    ),
    "global_aggregates_over_join": (
        "SELECT count(*) AS n, count(DISTINCT a.k) AS dk, min(b.v) AS lo, max(a.v) AS hi "
        "FROM a JOIN b ON a.k = b.k AND a.d = b.d"
    ),
    "group_by_null_key_having": (
        "SELECT k, sum(d) AS s, count(v) AS nv FROM a GROUP BY k HAVING count(*) > 10 "
        "ORDER BY s DESC NULLS LAST, "
        "k NULLS FIRST"
    ),
    "order_limit_offset_nulls": (
        "SELECT k, d, v FROM a ORDER BY v DESC NULLS FIRST, k NULLS LAST, d LIMIT 25 OFFSET 5"
    ),
    "self_join": (
        "SELECT x.d, count(*) AS n FROM a x JOIN a y ON x.k = y.k AND x.d < y.d "
        "GROUP BY x.d ORDER BY x.d"
    ),
    "join_empty_table": ("SELECT count(*) AS n, sum(a.v) AS s FROM a JOIN empty e ON a.k = e.k"),
    # set operations: types unified as locally, NULLs equal, duplicates kept or not
    "union_all_int_widths": (
        "SELECT k AS x, g FROM a WHERE d = 1 UNION ALL SELECT d, g FROM b WHERE k < 20"
    ),
    "union_nulls_duplicates": (
        "SELECT g, d FROM a UNION SELECT g, d FROM b WHERE v IS NULL OR k IS NULL "
        "ORDER BY g NULLS FIRST, d"
    ),
    "intersect": "SELECT k, g FROM a INTERSECT SELECT k, g FROM b",
    "except": "SELECT k, d FROM a EXCEPT SELECT k, d FROM b WHERE d < 3 ORDER BY k NULLS LAST, d",
    "except_all": "SELECT g, d FROM a EXCEPT ALL SELECT g, d FROM b WHERE k % 2 = 0",
    "intersect_all_nested": (
        "SELECT g FROM a INTERSECT ALL (SELECT g FROM b UNION ALL SELECT g FROM b_nonull) "
        "ORDER BY 1 NULLS FIRST LIMIT 7"
    ),
    "union_in_cte_then_aggregate": (
        "WITH u AS (SELECT k, d FROM a UNION SELECT k, d FROM b) "
        "SELECT d, count(*) AS n, count(k) AS nk FROM u GROUP BY d ORDER BY d"
    ),
    # window functions: per PARTITION BY bucket, or gathered for a global window
    "window_partition_by_g": (
        "SELECT g, k, d, v, row_number() OVER (PARTITION BY g ORDER BY k NULLS FIRST, d, v) AS rn, "
        "sum(v) OVER (PARTITION BY g) AS s, "
        "lag(v) OVER (PARTITION BY g ORDER BY k NULLS FIRST, d, v) AS prev FROM a "
        "ORDER BY g NULLS FIRST, rn"
    ),
    "window_two_keys": (
        "SELECT g, d, k, count(*) OVER (PARTITION BY g, d) AS n, "
        "rank() OVER (PARTITION BY d, g ORDER BY k DESC NULLS LAST) AS r, "
        "max(v) OVER (PARTITION BY d) AS mx FROM b WHERE k < 100 "
        "ORDER BY g NULLS FIRST, d, k NULLS FIRST"
    ),
    "window_over_group_by": (
        "SELECT g, d, count(*) AS n, "
        "rank() OVER (PARTITION BY d ORDER BY count(*) DESC, g NULLS FIRST) AS r, "
        "sum(count(*)) OVER (PARTITION BY d) AS nd FROM a GROUP BY g, d "
        "ORDER BY d, r, g NULLS FIRST"
    ),
    "window_over_join_limit": (
        "SELECT a.k, a.d, b.d AS bd, dense_rank() OVER (PARTITION BY a.k ORDER BY b.d) AS r "
        "FROM a JOIN b ON a.k = b.k WHERE a.d = 1 ORDER BY a.k, a.d, bd, r LIMIT 40"
    ),
    "window_global": (
        "SELECT k, d, v, row_number() OVER (ORDER BY v NULLS FIRST, k NULLS FIRST, d) AS rn, "
        "sum(d) OVER () AS total FROM a WHERE d < 2 ORDER BY rn"
    ),
    "window_in_cte_filtered": (
        "WITH w AS (SELECT k, g, d, row_number() OVER (PARTITION BY g, k ORDER BY d DESC, v) AS rn "
        "FROM b) SELECT g, count(*) AS n, sum(d) AS sd FROM w WHERE rn = 1 "
        "GROUP BY g ORDER BY g NULLS FIRST"
    ),
    "window_frames_filter_distinct": (
        "SELECT DISTINCT g, d, count(v) FILTER (WHERE v > 50) OVER (PARTITION BY g, d) AS nv, "
        "ntile(3) OVER (PARTITION BY g, d ORDER BY k NULLS FIRST, v NULLS FIRST) AS t3, "
        "lag(d, 2, -1) OVER (PARTITION BY d, g ORDER BY k NULLS FIRST, v NULLS FIRST) AS l2, "
        "sum(d) OVER (PARTITION BY g, d ORDER BY k NULLS FIRST, v NULLS FIRST "
        "ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) AS run FROM a WHERE k < 30 "
        "ORDER BY g NULLS FIRST, d, nv, t3, l2, run"
    ),
    "union_mixed_types_aggregates": (
        "SELECT d AS x, count(*) AS n FROM a GROUP BY d UNION "
        "SELECT k, sum(d) FROM b WHERE k < 10 GROUP BY k ORDER BY x NULLS FIRST, n"
    ),
    "multi_key_join_with_nulls": (
        "SELECT a.d, count(*) AS n FROM a JOIN b ON a.k = b.k AND a.g = b.g "
        "GROUP BY a.d ORDER BY a.d"
    ),
}


@pytest.mark.parametrize("name", sorted(QUERIES))
def test_distributed_equals_local(modes_lh: mx.Lakehouse, name: str) -> None:
    sql = QUERIES[name]
    local = modes_lh.sql(sql, engine="local").to_arrow()
    dist = modes_lh.sql(sql, engine="ray").to_arrow()
    assert dist.schema == local.schema, name
    if "ORDER BY" in sql:
        rows_l, rows_d = local.to_pylist(), dist.to_pylist()
    else:
        rows_l = sorted(map(repr, local.to_pylist()))
        rows_d = sorted(map(repr, dist.to_pylist()))
    if rows_l != rows_d:  # floating sums may differ in the last bits
        assert len(rows_d) == len(rows_l), name
        for x, y in zip(rows_l, rows_d, strict=True):
            if isinstance(x, dict) and isinstance(y, dict):
                for col, value in x.items():
                    if isinstance(value, float):
                        assert y[col] == pytest.approx(value, rel=1e-9), (name, col)
                    else:
                        assert y[col] == value, (name, col)
            else:
                assert x == y, name
    if name == "not_in_with_null":
        assert local.column("n").to_pylist() == [0]  # the NULL in b makes NOT IN never true


def _plan(lh: mx.Lakehouse, sql: str) -> list[str]:
    return [str(x) for x in lh.sql("EXPLAIN " + sql, engine="ray").to_arrow()["plan"].to_pylist()]


@pytest.mark.parametrize("name", sorted(QUERIES))
def test_every_query_is_distributed(modes_lh: mx.Lakehouse, name: str) -> None:
    first = _plan(modes_lh, QUERIES[name])[0]
    assert first.startswith("Engine: ray (distributed,"), (name, first)


STAGE_SHAPES = {  # in the partitioned session: what EXPLAIN shows of each shape's stages
    "intersect": [
        "Stage 3: shuffle INTERSECT side 1 on all columns: ",
        "Stage 4: shuffle INTERSECT side 2 on all columns: ",
        "Stage 5: INTERSECT per partition: ",
    ],
    "except_all": ["shuffle EXCEPT ALL side 1 on all columns", "EXCEPT ALL per partition"],
    "union_all_int_widths": ["Stage 3: UNION ALL per partition: ", 'CAST("d" AS BIGINT) AS "x"'],
    "window_partition_by_g": [  # the stage that makes the rows hash-partitions them
        'Window functions partitioned by "a"."g": their rows hash-partitioned on it by the stage',
        "Stage 1: project: ",
        'buckets on hash("__mx_e0") % ',
        "Stage 2: window functions: ",
    ],
    "window_two_keys": [  # the keys every window shares: d
        'Window functions partitioned by "b"."d": their rows hash-partitioned',
        'buckets on hash("__mx_e1") % ',
    ],
    "window_over_join_limit": ["Stage 3: project: ", "Stage 4: window functions: "],
    "window_global": [
        "Window functions without a common PARTITION BY: their rows gathered into one task",
        "Stage 2: window functions: 1 task(s), output gathered into 1 partition",
    ],
}


@pytest.mark.parametrize("name", sorted(STAGE_SHAPES))
def test_explain_shows_set_operation_and_window_stages(
    modes_warehouse: str, ray_cluster: RayCluster, name: str
) -> None:
    # The partitioned session's plans (a broadcast session runs small final steps on the
    # coordinator, so its plans show fewer stages).
    with mx.connect(modes_warehouse, compute=ray_cluster.address, broadcast_max_bytes=SMALL) as lh:
        text = "\n".join(_plan(lh, QUERIES[name]))
    for part in STAGE_SHAPES[name]:
        assert part in text, (part, text)
