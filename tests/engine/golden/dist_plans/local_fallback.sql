-- Golden plans of the distributed planner (tests/engine/test_dist_plans.py): statistics + SQL in,
-- EXPLAIN text out. Regenerate with MATRIXOS_UPDATE_GOLDEN=1 and review the diff.

-- RIGHT JOIN is not distributed: the query runs locally and EXPLAIN says why.
-- name: right_join_local
-- cpus: 4
-- table: orders files=4 rows=1500000 bytes=200MiB
--   o_orderkey BIGINT 1..6000000 clustered
--   o_custkey BIGINT 1..150000
--   o_totalprice DOUBLE
--   o_orderpriority VARCHAR
-- table: customer files=2 rows=150000 bytes=64MiB
--   c_custkey BIGINT 1..150000
--   c_nationkey BIGINT 0..24
--   c_name VARCHAR
--   c_acctbal DOUBLE
SELECT c_name, o_totalprice FROM orders RIGHT JOIN customer ON o_custkey = c_custkey
-- plan:
-- Engine: local (not distributed: RIGHT joins)

-- FULL JOIN likewise.
-- name: full_join_local
-- cpus: 4
-- table: orders files=4 rows=1500000 bytes=200MiB
--   o_orderkey BIGINT 1..6000000 clustered
--   o_custkey BIGINT 1..150000
--   o_totalprice DOUBLE
--   o_orderpriority VARCHAR
-- table: customer files=2 rows=150000 bytes=64MiB
--   c_custkey BIGINT 1..150000
--   c_nationkey BIGINT 0..24
--   c_name VARCHAR
--   c_acctbal DOUBLE
SELECT c_name, o_totalprice FROM orders FULL JOIN customer ON o_custkey = c_custkey
-- plan:
-- Engine: local (not distributed: FULL joins)

-- QUALIFY is not distributed.
-- name: qualify_local
-- cpus: 4
-- table: events files=6 rows=3000000 bytes=300MiB
--   e_id BIGINT 1..3000000 clustered
--   e_user BIGINT 1..50000
--   e_value DOUBLE
SELECT e_user, e_value FROM events QUALIFY row_number() OVER (PARTITION BY e_user ORDER BY e_value) = 1
-- plan:
-- Engine: local (not distributed: QUALIFY clauses)
