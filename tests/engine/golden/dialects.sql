-- The same logical query written in each dialect's own syntax returns the same rows.
-- Tables: see the ``lake`` fixture in tests/engine/test_sql.py.
-- Format: one case per blank-line-separated block: ``-- name:``, ``-- dialect:``,
-- optional ``-- columns:``, the SQL, then ``-- expect:`` and one JSON array per row.

-- name: filter_concat_cast_limit
-- dialect: duckdb
-- columns: id, full_name, s
SELECT id, first_name || ' ' || last_name AS full_name, score::INTEGER AS s
FROM hr.people WHERE city ILIKE 'new%' AND born >= DATE '1990-01-01' ORDER BY id LIMIT 2
-- expect:
-- [1, "Ann Lee", 80]
-- [4, "Di Ruiz", 66]

-- name: filter_concat_cast_limit
-- dialect: postgres
-- columns: id, full_name, s
SELECT "id", first_name || ' ' || last_name AS full_name, CAST(score AS INT) AS s
FROM "hr"."people" WHERE city ILIKE 'new%' AND born >= '1990-01-01'::date
ORDER BY id FETCH FIRST 2 ROWS ONLY
-- expect:
-- [1, "Ann Lee", 80]
-- [4, "Di Ruiz", 66]

-- name: filter_concat_cast_limit
-- dialect: mysql
-- columns: id, full_name, s
SELECT `id`, CONCAT(first_name, ' ', last_name) AS full_name, CAST(score AS SIGNED) AS s
FROM `hr`.`people` WHERE LOWER(city) LIKE 'new%' AND born >= DATE('1990-01-01')
ORDER BY id LIMIT 2
-- expect:
-- [1, "Ann Lee", 80]
-- [4, "Di Ruiz", 66]

-- name: filter_concat_cast_limit
-- dialect: databricks
-- columns: id, full_name, s
SELECT `id`, concat(first_name, ' ', last_name) AS full_name, CAST(score AS INT) AS s
FROM hr.people WHERE city ILIKE 'new%' AND born >= DATE'1990-01-01' ORDER BY id LIMIT 2
-- expect:
-- [1, "Ann Lee", 80]
-- [4, "Di Ruiz", 66]

-- name: filter_concat_cast_limit
-- dialect: spark
-- columns: id, full_name, s
SELECT `id`, concat_ws(' ', first_name, last_name) AS full_name, INT(score) AS s
FROM `hr`.`people` WHERE lower(city) LIKE 'new%' AND born >= to_date('1990-01-01')
ORDER BY id LIMIT 2
-- expect:
-- [1, "Ann Lee", 80]
-- [4, "Di Ruiz", 66]

-- name: filter_concat_cast_limit
-- dialect: snowflake
-- columns: id, full_name, s
SELECT id, first_name || ' ' || last_name AS full_name, score::NUMBER(10, 0) AS s
FROM hr.people WHERE city ILIKE 'new%' AND born >= TO_DATE('1990-01-01') ORDER BY id LIMIT 2
-- expect:
-- [1, "Ann Lee", 80]
-- [4, "Di Ruiz", 66]

-- name: filter_concat_cast_limit
-- dialect: bigquery
-- columns: id, full_name, s
SELECT id, CONCAT(first_name, ' ', last_name) AS full_name, CAST(score AS INT64) AS s
FROM `hr.people` WHERE LOWER(city) LIKE 'new%' AND born >= DATE '1990-01-01'
ORDER BY id LIMIT 2
-- expect:
-- [1, "Ann Lee", 80]
-- [4, "Di Ruiz", 66]

-- name: filter_concat_cast_limit
-- dialect: trino
-- columns: id, full_name, s
SELECT "id", first_name || ' ' || last_name AS full_name, CAST(score AS INTEGER) AS s
FROM hr.people WHERE lower(city) LIKE 'new%' AND born >= DATE '1990-01-01'
ORDER BY id LIMIT 2
-- expect:
-- [1, "Ann Lee", 80]
-- [4, "Di Ruiz", 66]

-- name: filter_concat_cast_limit
-- dialect: tsql
-- columns: id, full_name, s
SELECT TOP 2 [id], CONCAT(first_name, ' ', last_name) AS full_name, CAST(score AS INT) AS s
FROM [hr].[people] WHERE LOWER(city) LIKE 'new%' AND born >= CAST('1990-01-01' AS DATE)
ORDER BY id
-- expect:
-- [1, "Ann Lee", 80]
-- [4, "Di Ruiz", 66]

-- name: join_group_having
-- dialect: duckdb
-- columns: id, n
SELECT p.id, count(*) AS n FROM hr.people p JOIN hr.visits v ON v.person_id = p.id
GROUP BY p.id HAVING count(*) > 1 ORDER BY n DESC
-- expect:
-- [4, 3]
-- [1, 2]

-- name: join_group_having
-- dialect: postgres
-- columns: id, n
SELECT p.id, COUNT(*) AS n FROM hr.people AS p INNER JOIN hr.visits AS v ON v.person_id = p.id
GROUP BY 1 HAVING COUNT(*) > 1 ORDER BY 2 DESC
-- expect:
-- [4, 3]
-- [1, 2]

-- name: join_group_having
-- dialect: tsql
-- columns: id, n
SELECT p.id, COUNT(*) AS n FROM hr.people AS p INNER JOIN hr.visits AS v ON v.person_id = p.id
GROUP BY p.id HAVING COUNT(*) > 1 ORDER BY COUNT(*) DESC
-- expect:
-- [4, 3]
-- [1, 2]

-- name: join_group_having
-- dialect: snowflake
-- columns: id, n
SELECT p.id, COUNT_IF(TRUE) AS n FROM hr.people p JOIN hr.visits v ON v.person_id = p.id
GROUP BY ALL HAVING n > 1 ORDER BY n DESC
-- expect:
-- [4, 3]
-- [1, 2]

-- name: join_group_having
-- dialect: bigquery
-- columns: id, n
SELECT p.id, COUNT(*) AS n FROM `hr.people` p JOIN `hr`.visits v ON v.person_id = p.id
GROUP BY p.id HAVING n > 1 ORDER BY n DESC
-- expect:
-- [4, 3]
-- [1, 2]

-- name: join_group_having
-- dialect: databricks
-- columns: id, n
SELECT p.id, count(1) AS n FROM hr.people p LEFT SEMI JOIN hr.visits v ON v.person_id = p.id
JOIN hr.visits w ON w.person_id = p.id GROUP BY p.id HAVING count(1) > 1 ORDER BY n DESC
-- expect:
-- [4, 3]
-- [1, 2]

-- name: conditional_null_date_functions
-- dialect: duckdb
-- columns: id, band, last, y
SELECT id, CASE WHEN score >= 80 THEN 'high' ELSE 'low' END AS band,
  COALESCE(last_name, '?') AS last, EXTRACT(YEAR FROM born) AS y
FROM hr.people WHERE id IN (1, 4, 6) ORDER BY id
-- expect:
-- [1, "high", "Lee", 1991]
-- [4, "low", "Ruiz", 1993]
-- [6, "low", "?", 1990]

-- name: conditional_null_date_functions
-- dialect: postgres
-- columns: id, band, last, y
SELECT id, CASE WHEN score >= 80 THEN 'high' ELSE 'low' END AS band,
  COALESCE(last_name, '?') AS last, DATE_PART('year', born)::INT AS y
FROM hr.people WHERE id IN (1, 4, 6) ORDER BY id
-- expect:
-- [1, "high", "Lee", 1991]
-- [4, "low", "Ruiz", 1993]
-- [6, "low", "?", 1990]

-- name: conditional_null_date_functions
-- dialect: mysql
-- columns: id, band, last, y
SELECT id, IF(score >= 80, 'high', 'low') AS band, IFNULL(last_name, '?') AS last,
  YEAR(born) AS y
FROM hr.people WHERE id IN (1, 4, 6) ORDER BY id
-- expect:
-- [1, "high", "Lee", 1991]
-- [4, "low", "Ruiz", 1993]
-- [6, "low", "?", 1990]

-- name: conditional_null_date_functions
-- dialect: databricks
-- columns: id, band, last, y
SELECT id, IF(score >= 80, 'high', 'low') AS band, NVL(last_name, '?') AS last, YEAR(born) AS y
FROM hr.people WHERE id IN (1, 4, 6) ORDER BY id
-- expect:
-- [1, "high", "Lee", 1991]
-- [4, "low", "Ruiz", 1993]
-- [6, "low", "?", 1990]

-- name: conditional_null_date_functions
-- dialect: snowflake
-- columns: id, band, last, y
SELECT id, IFF(score >= 80, 'high', 'low') AS band, NVL(last_name, '?') AS last, YEAR(born) AS y
FROM hr.people WHERE id IN (1, 4, 6) ORDER BY id
-- expect:
-- [1, "high", "Lee", 1991]
-- [4, "low", "Ruiz", 1993]
-- [6, "low", "?", 1990]

-- name: conditional_null_date_functions
-- dialect: bigquery
-- columns: id, band, last, y
SELECT id, IF(score >= 80, 'high', 'low') AS band, IFNULL(last_name, '?') AS last,
  EXTRACT(YEAR FROM born) AS y
FROM `hr.people` WHERE id IN (1, 4, 6) ORDER BY id
-- expect:
-- [1, "high", "Lee", 1991]
-- [4, "low", "Ruiz", 1993]
-- [6, "low", "?", 1990]

-- name: conditional_null_date_functions
-- dialect: trino
-- columns: id, band, last, y
SELECT id, IF(score >= 80, 'high', 'low') AS band, COALESCE(last_name, '?') AS last,
  year(born) AS y
FROM hr.people WHERE id IN (1, 4, 6) ORDER BY id
-- expect:
-- [1, "high", "Lee", 1991]
-- [4, "low", "Ruiz", 1993]
-- [6, "low", "?", 1990]

-- name: conditional_null_date_functions
-- dialect: tsql
-- columns: id, band, last, y
SELECT id, IIF(score >= 80, 'high', 'low') AS band, ISNULL(last_name, '?') AS last,
  YEAR(born) AS y
FROM hr.people WHERE id IN (1, 4, 6) ORDER BY id
-- expect:
-- [1, "high", "Lee", 1991]
-- [4, "low", "Ruiz", 1993]
-- [6, "low", "?", 1990]

-- Date arithmetic: each dialect's own function returns a DATE there. Transpiled without type
-- information most of them become ``date + INTERVAL`` (a TIMESTAMP in DuckDB), hence the casts.
-- name: date_add_and_string_functions
-- dialect: duckdb
-- columns: id, next_day, ini, len
SELECT id, born + 1 AS next_day, upper(substring(first_name, 1, 2)) AS ini,
  length(city) AS len
FROM hr.people WHERE id = 1
-- expect:
-- [1, "1991-05-02", "AN", 8]

-- name: date_add_and_string_functions
-- dialect: postgres
-- columns: id, next_day, ini, len
SELECT id, born + 1 AS next_day, UPPER(SUBSTRING(first_name FROM 1 FOR 2)) AS ini,
  LENGTH(city) AS len
FROM hr.people WHERE id = 1
-- expect:
-- [1, "1991-05-02", "AN", 8]

-- name: date_add_and_string_functions
-- dialect: mysql
-- columns: id, next_day, ini, len
SELECT id, CAST(DATE_ADD(born, INTERVAL 1 DAY) AS DATE) AS next_day,
  UPPER(LEFT(first_name, 2)) AS ini, CHAR_LENGTH(city) AS len
FROM hr.people WHERE id = 1
-- expect:
-- [1, "1991-05-02", "AN", 8]

-- name: date_add_and_string_functions
-- dialect: spark
-- columns: id, next_day, ini, len
SELECT id, CAST(date_add(born, 1) AS DATE) AS next_day, upper(substr(first_name, 1, 2)) AS ini,
  length(city) AS len
FROM hr.people WHERE id = 1
-- expect:
-- [1, "1991-05-02", "AN", 8]

-- name: date_add_and_string_functions
-- dialect: snowflake
-- columns: id, next_day, ini, len
SELECT id, DATEADD(day, 1, born)::DATE AS next_day, UPPER(LEFT(first_name, 2)) AS ini,
  LENGTH(city) AS len
FROM hr.people WHERE id = 1
-- expect:
-- [1, "1991-05-02", "AN", 8]

-- name: date_add_and_string_functions
-- dialect: bigquery
-- columns: id, next_day, ini, len
SELECT id, CAST(DATE_ADD(born, INTERVAL 1 DAY) AS DATE) AS next_day,
  UPPER(SUBSTR(first_name, 1, 2)) AS ini, LENGTH(city) AS len
FROM hr.people WHERE id = 1
-- expect:
-- [1, "1991-05-02", "AN", 8]

-- name: date_add_and_string_functions
-- dialect: trino
-- columns: id, next_day, ini, len
SELECT id, CAST(date_add('day', 1, born) AS DATE) AS next_day,
  upper(substr(first_name, 1, 2)) AS ini, length(city) AS len
FROM hr.people WHERE id = 1
-- expect:
-- [1, "1991-05-02", "AN", 8]

-- name: date_add_and_string_functions
-- dialect: tsql
-- columns: id, next_day, ini, len
SELECT id, CAST(DATEADD(day, 1, born) AS DATE) AS next_day, UPPER(LEFT(first_name, 2)) AS ini,
  LEN(city) AS len
FROM hr.people WHERE id = 1
-- expect:
-- [1, "1991-05-02", "AN", 8]

-- The same text, different meanings: where NULLs sort by default is the dialect's, and the
-- transpiled query must keep it (Fay has a NULL score).
-- name: null_ordering_desc_nulls_high
-- dialect: postgres
SELECT first_name FROM hr.people ORDER BY score DESC LIMIT 2
-- expect:
-- ["Fay"]
-- ["Ed"]

-- name: null_ordering_desc_nulls_high
-- dialect: snowflake
SELECT first_name FROM hr.people ORDER BY score DESC LIMIT 2
-- expect:
-- ["Fay"]
-- ["Ed"]

-- name: null_ordering_desc_nulls_high
-- dialect: oracle
SELECT first_name FROM hr.people ORDER BY score DESC FETCH FIRST 2 ROWS ONLY
-- expect:
-- ["Fay"]
-- ["Ed"]

-- name: null_ordering_desc_nulls_low
-- dialect: mysql
SELECT first_name FROM hr.people ORDER BY score DESC LIMIT 2
-- expect:
-- ["Ed"]
-- ["Cy"]

-- name: null_ordering_desc_nulls_low
-- dialect: tsql
SELECT TOP 2 first_name FROM hr.people ORDER BY score DESC
-- expect:
-- ["Ed"]
-- ["Cy"]

-- name: null_ordering_desc_nulls_low
-- dialect: spark
SELECT first_name FROM hr.people ORDER BY score DESC LIMIT 2
-- expect:
-- ["Ed"]
-- ["Cy"]

-- name: null_ordering_desc_nulls_low
-- dialect: bigquery
SELECT first_name FROM hr.people ORDER BY score DESC LIMIT 2
-- expect:
-- ["Ed"]
-- ["Cy"]

-- name: null_ordering_nulls_last_always
-- dialect: duckdb
SELECT first_name FROM hr.people ORDER BY score ASC LIMIT 2
-- expect:
-- ["Di"]
-- ["Bo"]

-- name: null_ordering_nulls_last_always
-- dialect: trino
SELECT first_name FROM hr.people ORDER BY score ASC LIMIT 2
-- expect:
-- ["Di"]
-- ["Bo"]

-- name: null_ordering_asc_nulls_first
-- dialect: mysql
SELECT first_name FROM hr.people ORDER BY score ASC LIMIT 2
-- expect:
-- ["Fay"]
-- ["Di"]

-- name: null_ordering_asc_nulls_first
-- dialect: databricks
SELECT first_name FROM hr.people ORDER BY score ASC LIMIT 2
-- expect:
-- ["Fay"]
-- ["Di"]

-- name: null_ordering_explicit
-- dialect: postgres
SELECT first_name FROM hr.people ORDER BY score DESC NULLS LAST LIMIT 2
-- expect:
-- ["Ed"]
-- ["Cy"]

-- name: null_ordering_explicit
-- dialect: snowflake
SELECT first_name FROM hr.people ORDER BY score DESC NULLS LAST LIMIT 2
-- expect:
-- ["Ed"]
-- ["Cy"]

-- name: integer_division
-- dialect: postgres
-- columns: id, q, neg, frac
SELECT id, (id + 5) / 3 AS q, -(id + 5) / 3 AS neg, (id + 5) / 2.0 AS frac
FROM hr.people WHERE id <= 2 ORDER BY id
-- expect:
-- [1, 2, -2, 3.0]
-- [2, 2, -2, 3.5]

-- name: integer_division
-- dialect: trino
-- columns: id, q, neg, frac
SELECT id, (id + 5) / 3 AS q, -(id + 5) / 3 AS neg, (id + 5) / 2.0 AS frac
FROM hr.people WHERE id <= 2 ORDER BY id
-- expect:
-- [1, 2, -2, 3.0]
-- [2, 2, -2, 3.5]

-- name: integer_division
-- dialect: tsql
-- columns: id, q, neg, frac
SELECT TOP 2 id, (id + 5) / 3 AS q, -(id + 5) / 3 AS neg, (id + 5) / 2.0 AS frac
FROM hr.people ORDER BY id
-- expect:
-- [1, 2, -2, 3.0]
-- [2, 2, -2, 3.5]

-- name: integer_division
-- dialect: duckdb
-- columns: id, q, neg, frac
SELECT id, (id + 5) // 3 AS q, -(id + 5) // 3 AS neg, (id + 5) / 2.0 AS frac
FROM hr.people WHERE id <= 2 ORDER BY id
-- expect:
-- [1, 2, -2, 3.0]
-- [2, 2, -2, 3.5]

-- name: integer_division
-- dialect: mysql
-- columns: id, q, neg, frac
SELECT id, (id + 5) DIV 3 AS q, -(id + 5) DIV 3 AS neg, (id + 5) / 2.0 AS frac
FROM hr.people WHERE id <= 2 ORDER BY id
-- expect:
-- [1, 2, -2, 3.0]
-- [2, 2, -2, 3.5]
