-- Query semantics on catalog tables (duckdb dialect unless a case says otherwise): CTE scoping,
-- self-joins, subqueries, windows, set operations. Same format as dialects.sql.

-- name: cte_shadows_table
-- columns: id
WITH orders AS (SELECT 42 AS id) SELECT id FROM orders
-- expect:
-- [42]

-- In standard SQL a non-recursive CTE's own body does not see the CTE: ``orders`` inside it
-- is the catalog table.
-- name: cte_body_reads_the_table_it_shadows
WITH orders AS (SELECT id * 10 AS id FROM orders) SELECT id FROM orders ORDER BY id
-- expect:
-- [10]
-- [20]
-- [30]
-- [40]
-- [50]

-- name: earlier_cte_reads_the_table_a_later_cte_shadows
WITH big AS (SELECT id FROM orders WHERE amount > 10), orders AS (SELECT id FROM big)
SELECT count(*) FROM orders
-- expect:
-- [3]

-- name: cte_scope_is_its_own_subquery
SELECT (WITH orders AS (SELECT 1 AS x) SELECT count(*) FROM orders) AS inner_n,
  (SELECT count(*) FROM orders) AS outer_n
-- expect:
-- [1, 5]

-- name: qualified_name_is_the_table_not_the_cte
WITH orders AS (SELECT 1 AS id) SELECT count(*) FROM main.default.orders
-- expect:
-- [5]

-- name: cte_shadowing_in_postgres
-- dialect: postgres
WITH people AS (SELECT first_name FROM hr.people WHERE score > 85)
SELECT p.first_name FROM people AS p ORDER BY 1
-- expect:
-- ["Cy"]
-- ["Ed"]

-- name: recursive_cte
WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 5)
SELECT sum(n) FROM r
-- expect:
-- [15]

-- name: self_join_with_aliases
SELECT a.id, b.id FROM orders a JOIN orders b ON a.person_id = b.person_id AND a.id < b.id
ORDER BY 1, 2
-- expect:
-- [1, 2]

-- name: self_join_same_table_three_times
SELECT a.id, b.id, c.id FROM orders a, orders AS b, main.default.orders c
WHERE b.id = a.id + 1 AND c.id = b.id + 1 AND a.day = DATE '2024-01-01'
-- expect:
-- [1, 2, 3]

-- name: left_join_counts_zero
SELECT p.first_name, count(v.n) AS visits FROM hr.people p
LEFT JOIN hr.visits v ON v.person_id = p.id GROUP BY p.first_name ORDER BY 2 DESC, 1
-- expect:
-- ["Di", 3]
-- ["Ann", 2]
-- ["Cy", 1]
-- ["Bo", 0]
-- ["Ed", 0]
-- ["Fay", 0]

-- name: anti_join_not_exists
SELECT v.n FROM hr.visits v
WHERE NOT EXISTS (SELECT 1 FROM hr.people p WHERE p.id = v.person_id)
-- expect:
-- [7]

-- name: in_subquery
SELECT first_name FROM hr.people
WHERE id IN (SELECT person_id FROM orders WHERE amount >= 20) ORDER BY 1
-- expect:
-- ["Ann"]
-- ["Di"]

-- name: correlated_scalar_subquery
SELECT p.id, (SELECT sum(amount) FROM orders o WHERE o.person_id = p.id) AS total
FROM hr.people p WHERE p.id <= 4 ORDER BY p.id
-- expect:
-- [1, 30.5]
-- [2, null]
-- [3, 5.25]
-- [4, 100.0]

-- name: derived_table_with_alias
SELECT d.day, d.n FROM (SELECT day, count(*) AS n FROM orders GROUP BY day) AS d
WHERE d.n > 1 ORDER BY d.day
-- expect:
-- ["2024-01-02", 2]
-- ["2024-01-03", 2]

-- name: window_running_sum
SELECT id, sum(amount) OVER (PARTITION BY day ORDER BY id) AS running FROM orders ORDER BY id
-- expect:
-- [1, 10.5]
-- [2, 20.0]
-- [3, 25.25]
-- [4, 100.0]
-- [5, 107.0]

-- name: qualify_top_per_partition
SELECT id, day FROM orders
QUALIFY row_number() OVER (PARTITION BY day ORDER BY amount DESC) = 1 ORDER BY day
-- expect:
-- [1, "2024-01-01"]
-- [2, "2024-01-02"]
-- [4, "2024-01-03"]

-- name: intersect
SELECT person_id FROM orders WHERE person_id IS NOT NULL
INTERSECT SELECT person_id FROM hr.visits ORDER BY 1
-- expect:
-- [1]
-- [3]
-- [4]

-- name: except
SELECT person_id FROM hr.visits EXCEPT SELECT id FROM hr.people
-- expect:
-- [9]

-- name: partition_filter_counts_nulls
SELECT count(*), count(person_id) FROM orders WHERE day = DATE '2024-01-03'
-- expect:
-- [2, 1]

-- name: filter_on_partition_and_data_columns
SELECT id FROM orders WHERE day BETWEEN DATE '2024-01-02' AND DATE '2024-01-03' AND amount < 50
ORDER BY id
-- expect:
-- [2]
-- [3]
-- [5]

-- name: or_across_partitions_is_not_pruned_away
SELECT id FROM orders WHERE day = DATE '2024-01-01' OR amount > 50 ORDER BY id
-- expect:
-- [1]
-- [4]

-- name: values_left_join
SELECT v.label, count(o.id) FROM (VALUES (1, 'one'), (4, 'four'), (7, 'seven')) AS v(pid, label)
LEFT JOIN orders o ON o.person_id = v.pid GROUP BY v.label ORDER BY v.label
-- expect:
-- ["four", 1]
-- ["one", 2]
-- ["seven", 0]

-- name: unquoted_names_are_case_insensitive
SELECT ID, First_Name FROM HR.PEOPLE WHERE Id = 2
-- expect:
-- [2, "Bo"]

-- name: group_by_all_with_filter_clause
SELECT day, count(*) FILTER (WHERE amount > 10) AS big FROM orders GROUP BY ALL ORDER BY day
-- expect:
-- ["2024-01-01", 1]
-- ["2024-01-02", 1]
-- ["2024-01-03", 1]

-- name: select_without_tables
SELECT 1 + 1 AS two, 'x' || 'y' AS xy, NULL IS NULL AS n
-- expect:
-- [2, "xy", true]
