"""SQL through ``lh.sql``: dialects, DDL/DML on Delta, time travel, errors, and ``Result``.

Golden pairs live in ``tests/engine/golden/*.sql`` (query + expected rows, the format of
sqlglot's optimizer fixtures) and run against the tables of the ``lake`` fixture.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable

import matrixos as mx
from matrixos.engine.result import Result
from matrixos.errors import (
    AccessDenied,
    MatrixOSError,
    NotSupported,
    SQLError,
    TableExists,
    TableNotFound,
    VersionNotFound,
)

GOLDEN = Path(__file__).parent / "golden"
D = dt.date


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Iterator[mx.Lakehouse]:
    """Read-only tables shared by the query tests of this module (never written to)."""
    with mx.connect(str(tmp_path_factory.mktemp("lake") / "wh")) as lh:
        lh.create_table(
            "hr.people",
            pa.table(
                {
                    "id": pa.array([1, 2, 3, 4, 5, 6], pa.int64()),
                    "first_name": ["Ann", "Bo", "Cy", "Di", "Ed", "Fay"],
                    "last_name": ["Lee", "Park", "Ng", "Ruiz", "Oz", None],
                    "city": ["New York", "Newark", "Boston", "new haven", "Austin", None],
                    "born": [
                        D(1991, 5, 1),
                        D(1985, 1, 1),
                        D(1999, 2, 2),
                        D(1993, 3, 3),
                        D(2001, 4, 4),
                        D(1990, 1, 1),
                    ],
                    "score": [80.0, 75.0, 90.0, 66.0, 95.0, None],
                }
            ),
        )
        lh.create_table(
            "hr.visits",
            pa.table({"person_id": [1, 1, 3, 4, 4, 4, 9], "n": [1, 2, 3, 4, 5, 6, 7]}),
        )
        lh.create_table(
            "orders",
            pa.table(
                {
                    "id": [1, 2, 3, 4, 5],
                    "person_id": [1, 1, 3, 4, None],
                    "amount": pa.array(
                        [Decimal(x) for x in ("10.50", "20.00", "5.25", "100.00", "7.00")],
                        pa.decimal128(10, 2),
                    ),
                    "day": [D(2024, 1, d) for d in (1, 2, 2, 3, 3)],
                }
            ),
            partition_by=["day"],
        )
        lh.create_table(
            "big",
            pa.table({"i": pa.array(range(100_000), pa.int64())}).append_column(
                "s", pa.array([f"row {i}" for i in range(100_000)])
            ),
        )
        yield lh


# ``lh`` (tests/conftest.py) on the local folder only.
WAREHOUSES = ("local",)


def norm(value: Any) -> Any:
    """A result value as the JSON of a golden file spells it."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, dt.date):  # datetime too
        return value.isoformat()
    return value


def rows(res: Result) -> list[list[Any]]:
    return [[norm(v) for v in row] for row in res.fetchall()]


# ------------------------------------------------------------------------------ golden pairs
@dataclass
class Case:
    file: str
    name: str
    dialect: str
    sql: str
    columns: list[str] | None
    expect: list[list[Any]]


def load_cases() -> list[Case]:
    cases = []
    for path in sorted(GOLDEN.glob("*.sql")):
        for block in re.split(r"\n\s*\n", path.read_text(encoding="utf-8")):
            meta: dict[str, str] = {}
            sql: list[str] = []
            expect: list[list[Any]] = []
            in_expect = False
            for line in block.strip().splitlines():
                if m := re.match(r"--\s*(name|dialect|columns):\s*(.*)$", line):
                    meta[m.group(1)] = m.group(2).strip()
                elif line.strip() == "-- expect:":
                    in_expect = True
                elif in_expect:
                    expect.append(json.loads(line.removeprefix("--").strip()))
                elif not line.startswith("--"):
                    sql.append(line)
            if not sql:
                continue  # a comment-only block
            assert "name" in meta and in_expect, f"{path.name}: malformed case\n{block}"
            cols = meta.get("columns")
            cases.append(
                Case(
                    file=path.stem,
                    name=meta["name"],
                    dialect=meta.get("dialect", "duckdb"),
                    sql="\n".join(sql),
                    columns=[c.strip() for c in cols.split(",")] if cols else None,
                    expect=expect,
                )
            )
    return cases


CASES = load_cases()


def test_golden_files_hold_cases() -> None:
    # Guards the parser: a format slip must not silently drop the cases.
    assert len(CASES) >= 60
    assert {c.file for c in CASES} == {"dialects", "queries"}
    dialects = {c.dialect for c in CASES if c.file == "dialects"}
    assert {"duckdb", "postgres", "mysql", "databricks", "spark", "snowflake"} <= dialects
    assert {"bigquery", "trino", "tsql"} <= dialects


@pytest.mark.parametrize("case", CASES, ids=[f"{c.file}:{c.name}[{c.dialect}]" for c in CASES])
def test_golden(lake: mx.Lakehouse, case: Case) -> None:
    res = lake.sql(case.sql, dialect=case.dialect)
    if case.columns is not None:
        assert res.columns == case.columns
    assert rows(res) == case.expect


def test_each_dialect_variant_returns_the_same_table(lake: mx.Lakehouse) -> None:
    # Beyond matching the golden rows, variants of one logical query agree on names and row
    # count with each other (a variant that returned extra columns would fail here).
    by_name: dict[str, list[Case]] = {}
    for case in CASES:
        by_name.setdefault(case.name, []).append(case)
    compared = 0
    for variants in by_name.values():
        if len(variants) < 2:
            continue
        results = [lake.sql(c.sql, dialect=c.dialect) for c in variants]
        first = results[0]
        first_rows = rows(first)
        for case, res in zip(variants[1:], results[1:], strict=True):
            assert res.columns == first.columns, case.dialect
            assert rows(res) == first_rows, case.dialect
        compared += 1
    assert compared >= 5


# --------------------------------------------------------------------------------- schemas
def test_create_schema_and_if_not_exists(lh: mx.Lakehouse) -> None:
    lh.sql("CREATE SCHEMA sales")
    assert "main.sales" in lh.schemas()
    with pytest.raises(TableExists):
        lh.sql("CREATE SCHEMA sales")
    lh.sql("CREATE SCHEMA IF NOT EXISTS sales")
    lh.sql("CREATE DATABASE IF NOT EXISTS crm", dialect="databricks")
    shown = [r[0] for r in lh.sql("SHOW SCHEMAS").fetchall()]
    assert "main.sales" in shown and "main.crm" in shown
    lh.sql("DROP SCHEMA crm")
    assert "main.crm" not in lh.schemas()


# ----------------------------------------------------------------------------- CREATE TABLE
def test_delta_table_properties_are_honoured(lh: mx.Lakehouse) -> None:
    lh.sql(
        "CREATE TABLE audit (id BIGINT, what VARCHAR) "
        "TBLPROPERTIES ('delta.appendOnly' = 'true', 'team' = 'risk')"
    )
    t = lh.table("audit")
    # delta.* keys are the Delta table's own configuration, seen by every Delta engine;
    # the others are catalog properties.
    conf = DeltaTable(t.location, storage_options=lh.warehouse.options.to_delta()).metadata()
    assert conf.configuration == {"delta.appendOnly": "true"}
    assert t.describe()["properties"] == {"delta.appendOnly": "true", "team": "risk"}
    lh.sql("INSERT INTO audit VALUES (1, 'login'), (2, 'logout')")
    before = t.version
    for stmt in ("DELETE FROM audit WHERE id = 1", "UPDATE audit SET what = 'x'"):
        with pytest.raises(NotSupported, match="append-only"):
            lh.sql(stmt)
    assert t.version == before
    assert lh.sql("SELECT id FROM audit ORDER BY id").fetchall() == [(1,), (2,)]
    with pytest.raises(NotSupported, match="apply to Delta tables"):
        lh.sql("CREATE TABLE kb (id INT) USING lance TBLPROPERTIES ('delta.appendOnly' = 'true')")
    assert "main.default.kb" not in lh.tables()
    with pytest.raises(MatrixOSError, match=r"delta\.bogus"):
        lh.sql("CREATE TABLE bad (id INT) TBLPROPERTIES ('delta.bogus' = '1')")
    assert "main.default.bad" not in lh.tables()


def test_create_table_with_columns_partitioned_by(lh: mx.Lakehouse) -> None:
    create = (
        "CREATE TABLE sales.orders (id BIGINT NOT NULL, customer VARCHAR, amount DECIMAL(10, 2),"
        " day DATE) PARTITIONED BY (day)"
    )
    lh.sql(create)  # creates the schema, as create_table() and ingest do
    t = lh.table("sales.orders")
    assert t.partition_by == ["day"]
    assert t.schema == pa.schema(
        [
            pa.field("id", pa.int64(), nullable=False),
            ("customer", pa.string()),
            ("amount", pa.decimal128(10, 2)),
            ("day", pa.date32()),
        ]
    )
    assert t.to_arrow().num_rows == 0
    desc = lh.sql("DESCRIBE sales.orders").to_pylist()
    assert [(r["column_name"], r["partition"]) for r in desc] == [
        ("id", False),
        ("customer", False),
        ("amount", False),
        ("day", True),
    ]
    assert desc[0]["nullable"] is False


def test_create_table_partitioned_by_in_spark_syntax(lh: mx.Lakehouse) -> None:
    lh.sql(
        "CREATE TABLE events (id INT, kind STRING, day DATE) USING DELTA PARTITIONED BY (day)",
        dialect="databricks",
    )
    assert lh.table("events").partition_by == ["day"]
    lh.sql(
        "INSERT INTO events VALUES (1, 'a', DATE'2024-01-01'), (2, 'b', DATE'2024-01-02')",
        dialect="databricks",
    )
    assert lh.sql("SELECT kind FROM events WHERE day = '2024-01-02'").fetchall() == [("b",)]


def test_create_table_with_a_timestamptz_column(lh: mx.Lakehouse) -> None:
    # DuckDB names UTC "Etc/UTC", which Delta refuses; the engine must store plain UTC.
    lh.sql("CREATE TABLE ev (id INT, at TIMESTAMPTZ, local_at TIMESTAMP)")
    assert lh.table("ev").schema.field("at").type == pa.timestamp("us", "UTC")
    lh.sql(
        "INSERT INTO ev VALUES (1, TIMESTAMPTZ '2024-01-01 12:00:00+02', "
        "TIMESTAMP '2024-01-01 12:00:00')"
    )
    at, local_at = lh.sql("SELECT at, local_at FROM ev").fetchone()  # type: ignore[misc]
    assert at == dt.datetime(2024, 1, 1, 10, 0, tzinfo=dt.UTC)
    assert local_at == dt.datetime(2024, 1, 1, 12, 0)


def test_create_table_as_select_and_or_replace(lh: mx.Lakehouse) -> None:
    lh.create_table("src", pa.table({"id": [1, 2, 3], "v": ["a", "b", "c"]}))
    lh.sql("CREATE TABLE copy AS SELECT id, upper(v) AS v FROM src WHERE id > 1")
    assert lh.sql("SELECT * FROM copy ORDER BY id").fetchall() == [(2, "B"), (3, "C")]
    with pytest.raises(TableExists):
        lh.sql("CREATE TABLE copy AS SELECT 1 AS id")
    res = lh.sql("CREATE TABLE IF NOT EXISTS copy AS SELECT 1 AS id")
    assert res.to_pylist()[0]["skipped"] is True
    assert lh.table("copy").count() == 2
    version = lh.table("copy").version
    lh.sql("CREATE OR REPLACE TABLE copy AS SELECT id * 10 AS id, v, true AS flag FROM src")
    assert lh.sql("SELECT * FROM copy ORDER BY id").fetchall() == [
        (10, "a", True),
        (20, "b", True),
        (30, "c", True),
    ]
    assert lh.table("copy").version == version + 1  # replaced in place: history kept
    assert lh.sql("SELECT count(*) FROM copy VERSION AS OF 0").scalar() == 2


def test_create_table_refuses_what_it_cannot_honour(lh: mx.Lakehouse) -> None:
    with pytest.raises(NotSupported, match="USING csv"):
        lh.sql("CREATE TABLE x USING csv AS SELECT 1 AS a", dialect="databricks")
    with pytest.raises(NotSupported, match="TEMPORARY"):
        lh.sql("CREATE TEMP TABLE x AS SELECT 1 AS a")
    with pytest.raises(SQLError, match="column definitions or AS SELECT"):
        lh.sql("CREATE TABLE x", dialect="databricks")
    assert lh.tables() == []


# ------------------------------------------------------------------------------------ INSERT
@pytest.fixture
def items(lh: mx.Lakehouse) -> mx.Lakehouse:
    lh.sql("CREATE TABLE items (id INT, name TEXT, qty INT)")
    return lh


def contents(lh: mx.Lakehouse, table: str = "items") -> list[tuple[Any, ...]]:
    return lh.sql(f"SELECT * FROM {table} ORDER BY id").fetchall()


def test_insert_values_with_and_without_column_list(items: mx.Lakehouse) -> None:
    res = items.sql("INSERT INTO items VALUES (1, 'one', 10), (2, 'two', 20)")
    assert res.to_pylist()[0]["num_affected_rows"] == 2
    items.sql("INSERT INTO items (qty, id) VALUES (30, 3)")  # reordered, name missing → NULL
    items.sql("INSERT INTO items VALUES (4, 'four')")  # a prefix of the columns
    assert contents(items) == [
        (1, "one", 10),
        (2, "two", 20),
        (3, None, 30),
        (4, "four", None),
    ]
    with pytest.raises(SQLError, match="4 value column"):
        items.sql("INSERT INTO items VALUES (5, 'x', 1, 2)")
    with pytest.raises(MatrixOSError, match="nope"):
        items.sql("INSERT INTO items (id, nope) VALUES (5, 1)")
    with pytest.raises(MatrixOSError, match="id"):
        items.sql("INSERT INTO items VALUES ('not a number', 'x', 1)")
    assert len(contents(items)) == 4  # the refused inserts wrote nothing


def test_insert_select_with_and_without_column_list(items: mx.Lakehouse) -> None:
    items.sql("INSERT INTO items VALUES (1, 'one', 10)")
    items.sql("INSERT INTO items SELECT id + 1, name || '!', qty * 2 FROM items")
    items.sql("INSERT INTO items (name, id) SELECT 'x', max(id) + 1 FROM items")
    items.sql("INSERT INTO items BY NAME SELECT 9 AS qty, 4 AS id")
    assert contents(items) == [
        (1, "one", 10),
        (2, "one!", 20),
        (3, "x", None),
        (4, None, 9),
    ]


def test_insert_overwrite(items: mx.Lakehouse) -> None:
    items.sql("INSERT INTO items VALUES (1, 'one', 10), (2, 'two', 20)")
    items.sql("INSERT OVERWRITE items SELECT 7, 'seven', 70", dialect="databricks")
    assert contents(items) == [(7, "seven", 70)]
    items.sql("INSERT OVERWRITE TABLE items VALUES (8, 'eight', 80)", dialect="spark")
    assert contents(items) == [(8, "eight", 80)]
    assert items.sql("SELECT count(*) FROM items VERSION AS OF 1").scalar() == 2


# ------------------------------------------------------------------------- UPDATE / DELETE
def test_update_and_delete(items: mx.Lakehouse) -> None:
    items.sql("INSERT INTO items VALUES (1, 'one', 10), (2, 'two', 20), (3, NULL, 30)")
    res = items.sql("UPDATE items SET qty = qty + 1, name = upper(name) WHERE id <= 2")
    assert res.to_pylist()[0]["num_affected_rows"] == 2
    items.sql("UPDATE items AS i SET name = 'three' WHERE i.id = 3 AND i.name IS NULL")
    assert contents(items) == [(1, "ONE", 11), (2, "TWO", 21), (3, "three", 30)]
    res = items.sql("DELETE FROM items WHERE qty > 20")
    assert res.to_pylist()[0]["num_affected_rows"] == 2
    assert contents(items) == [(1, "ONE", 11)]
    items.sql("DELETE FROM items")
    assert contents(items) == []


def test_update_of_an_unknown_column_is_an_error_not_a_no_op(items: mx.Lakehouse) -> None:
    # delta-rs ignores SET targets that are not columns; the engine must not report success.
    items.sql("INSERT INTO items VALUES (1, 'one', 10)")
    version = items.table("items").version
    with pytest.raises(SQLError, match="nope") as info:
        items.sql("UPDATE items SET nope = 1 WHERE id = 1")
    assert info.value.sqlstate == "42703"
    assert items.table("items").version == version
    items.sql("UPDATE items SET QTY = 5")  # column names are case-insensitive
    assert contents(items) == [(1, "one", 5)]


def test_update_and_delete_refuse_subqueries(items: mx.Lakehouse) -> None:
    with pytest.raises(NotSupported, match="subqueries"):
        items.sql("DELETE FROM items WHERE id IN (SELECT 1)")
    with pytest.raises(NotSupported):
        items.sql("UPDATE items SET qty = 1 FROM items AS other WHERE items.id = other.id")


# ------------------------------------------------------------------------------------- MERGE
@pytest.fixture
def merge_tables(items: mx.Lakehouse) -> mx.Lakehouse:
    items.sql("INSERT INTO items VALUES (1, 'one', 10), (2, 'two', 20), (3, 'three', 30)")
    items.sql("CREATE TABLE updates (id INT, name TEXT, qty INT)")
    items.sql("INSERT INTO updates VALUES (2, 'TWO', 200), (3, 'THREE', 300), (4, 'four', 40)")
    return items


def test_merge_upsert_with_star(merge_tables: mx.Lakehouse) -> None:
    res = merge_tables.sql(
        "MERGE INTO items t USING updates s ON t.id = s.id "
        "WHEN MATCHED THEN UPDATE SET * WHEN NOT MATCHED THEN INSERT *",
        dialect="databricks",
    )
    assert res.to_pylist()[0]["num_affected_rows"] == 3
    assert contents(merge_tables) == [
        (1, "one", 10),
        (2, "TWO", 200),
        (3, "THREE", 300),
        (4, "four", 40),
    ]


def test_merge_with_conditions_delete_and_not_matched_by_source(
    merge_tables: mx.Lakehouse,
) -> None:
    merge_tables.sql(
        "MERGE INTO items AS t USING (SELECT * FROM updates WHERE id <> 4 OR qty > 0) AS s "
        "ON t.id = s.id "
        "WHEN MATCHED AND s.id = 3 THEN DELETE "
        "WHEN MATCHED THEN UPDATE SET qty = t.qty + s.qty, name = s.name "
        "WHEN NOT MATCHED AND s.qty > 100 THEN INSERT (id, name) VALUES (s.id, s.name) "
        "WHEN NOT MATCHED THEN INSERT (id, qty) VALUES (s.id, s.qty) "
        "WHEN NOT MATCHED BY SOURCE AND t.qty < 100 THEN UPDATE SET qty = -1",
        dialect="databricks",
    )
    # 1: only in target → qty -1; 2: matched → 20 + 200; 3: deleted; 4: second insert clause
    assert contents(merge_tables) == [(1, "one", -1), (2, "TWO", 220), (4, None, 40)]
    merge_tables.sql(
        "MERGE INTO items t USING updates s ON t.id = s.id WHEN NOT MATCHED BY SOURCE THEN DELETE",
        dialect="databricks",
    )
    assert [r[0] for r in contents(merge_tables)] == [2, 4]


def test_merge_in_postgres_syntax_with_subquery_source(merge_tables: mx.Lakehouse) -> None:
    merge_tables.sql(
        "MERGE INTO items AS t USING (SELECT id, qty FROM updates WHERE id = 2) AS s "
        "ON t.id = s.id WHEN MATCHED THEN UPDATE SET qty = s.qty "
        "WHEN NOT MATCHED THEN INSERT (id, qty) VALUES (s.id, s.qty)",
        dialect="postgres",
    )
    assert contents(merge_tables) == [(1, "one", 10), (2, "two", 200), (3, "three", 30)]


@pytest.mark.parametrize(
    ("source", "match"),
    [
        # two rows for a key already in the table: both would update row 2
        ("SELECT 2 AS id, 'x' AS name, 1 AS qty UNION ALL SELECT 2, 'y', 2", "merge key id=2"),
        # two rows for a new key: both were inserted
        ("SELECT 9 AS id, 'x' AS name, 1 AS qty UNION ALL SELECT 9, 'y', 2", "merge key id=9"),
        # a NULL key: inserted again on every run
        ("SELECT NULL::INT AS id, 'x' AS name, 1 AS qty", "'id' is NULL in source row 1"),
    ],
)
def test_merge_refuses_ambiguous_source_rows(
    merge_tables: mx.Lakehouse, source: str, match: str
) -> None:
    version = merge_tables.table("items").version
    before = contents(merge_tables)
    for whens in (
        "WHEN MATCHED THEN UPDATE SET * WHEN NOT MATCHED THEN INSERT *",
        "WHEN NOT MATCHED THEN INSERT (id, name) VALUES (s.id, s.name)",
    ):
        sql = f"MERGE INTO items t USING ({source}) s ON t.id = s.id {whens}"
        if "NULL" not in source or "INSERT" in whens:
            with pytest.raises(SQLError, match=match) as info:
                merge_tables.sql(sql, dialect="databricks")
            assert info.value.sqlstate == "21506"
    assert merge_tables.table("items").version == version
    assert contents(merge_tables) == before


def test_merge_null_keys_without_inserts_and_null_safe_keys(merge_tables: mx.Lakehouse) -> None:
    # Without an insert clause a NULL key matches nothing and changes nothing: allowed.
    merge_tables.sql(
        "MERGE INTO items t USING (SELECT NULL::INT AS id, 5 AS qty) s ON t.id = s.id "
        "WHEN MATCHED THEN UPDATE SET qty = s.qty"
    )
    # NULL-safe keys match NULL to NULL, so a second run updates what the first inserted.
    for qty in (1, 2):
        merge_tables.sql(
            f"MERGE INTO items t USING (SELECT NULL::INT AS id, 'n' AS name, {qty} AS qty) s "
            "ON t.id IS NOT DISTINCT FROM s.id "
            "WHEN MATCHED THEN UPDATE SET qty = s.qty WHEN NOT MATCHED THEN INSERT *",
            dialect="databricks",
        )
    assert merge_tables.sql("SELECT qty FROM items WHERE id IS NULL").fetchall() == [(2,)]


def test_merge_into_unknown_columns_is_an_error(merge_tables: mx.Lakehouse) -> None:
    version = merge_tables.table("items").version
    for sql in (
        "MERGE INTO items t USING updates s ON t.id = s.id "
        "WHEN MATCHED THEN UPDATE SET nope = s.qty",
        "MERGE INTO items t USING updates s ON t.id = s.id "
        "WHEN NOT MATCHED THEN INSERT (id, nope) VALUES (s.id, s.qty)",
    ):
        with pytest.raises(SQLError, match="nope"):
            merge_tables.sql(sql)
    assert merge_tables.table("items").version == version


# ------------------------------------------------------------------------------ DROP TABLE
def test_drop_table_and_if_exists(lh: mx.Lakehouse) -> None:
    t = lh.create_table("gone", pa.table({"a": [1]}))
    location = Path(t.location)
    assert location.exists()
    lh.sql("DROP TABLE gone")
    assert not location.exists()
    assert lh.tables() == []
    with pytest.raises(TableNotFound):
        lh.sql("DROP TABLE gone")
    lh.sql("DROP TABLE IF EXISTS gone")
    with pytest.raises(TableNotFound):
        lh.sql("SELECT * FROM gone")


# ------------------------------------------------------------------------------ time travel
def test_version_and_timestamp_as_of(items: mx.Lakehouse) -> None:
    items.sql("INSERT INTO items VALUES (1, 'one', 10)")  # version 1
    time.sleep(0.02)
    items.sql("INSERT INTO items VALUES (2, 'two', 20)")  # version 2
    time.sleep(0.02)
    items.sql("DELETE FROM items WHERE id = 1")  # version 3
    history = {h["version"]: h for h in items.table("items").history()}
    counts = {
        v: items.sql(f"SELECT count(*) FROM items VERSION AS OF {v}").scalar() for v in range(4)
    }
    assert counts == {0: 0, 1: 1, 2: 2, 3: 1}
    trino = items.sql("SELECT id FROM items FOR VERSION AS OF 2 ORDER BY id", dialect="trino")
    assert trino.fetchall() == [(1,), (2,)]
    assert items.sql("SELECT id FROM items VERSION AS OF 1", dialect="databricks").fetchall() == [
        (1,)
    ]
    at_v2 = dt.datetime.fromtimestamp(history[2]["timestamp"] / 1000, dt.UTC)
    iso = at_v2.strftime("%Y-%m-%d %H:%M:%S.%f")
    assert items.sql(
        f"SELECT id FROM items TIMESTAMP AS OF '{iso}' ORDER BY id", dialect="databricks"
    ).fetchall() == [(1,), (2,)]
    # a TIMESTAMPTZ constant (DuckDB's Python conversion of it needs pytz; the engine must not)
    assert items.sql(
        f"SELECT id FROM items TIMESTAMP AS OF TIMESTAMPTZ '{iso}+00' ORDER BY id"
    ).fetchall() == [(1,), (2,)]
    assert items.sql(
        f"SELECT id FROM items FOR SYSTEM_TIME AS OF TIMESTAMP '{iso}+00' ORDER BY id",
        dialect="bigquery",
    ).fetchall() == [(1,), (2,)]
    assert items.sql("SELECT id FROM items TIMESTAMP AS OF now()").fetchall() == [(2,)]
    latest = items.table("items").version
    with pytest.raises(VersionNotFound) as err:  # not delta-kernel's "LogSegment end version"
        items.sql("SELECT * FROM items VERSION AS OF 99")
    assert err.value.message == (
        f"table main.default.items has versions 0 to {latest}; there is no version 99"
    )
    assert err.value.hint is not None and "DESCRIBE HISTORY" in err.value.hint
    with pytest.raises(VersionNotFound, match="there is no version -1"):
        items.table("items").to_arrow(version=-1)
    with pytest.raises(SQLError, match="integer"):
        items.sql("SELECT * FROM items VERSION AS OF 'x'")


def test_time_travel_joins_two_versions_of_one_table(items: mx.Lakehouse) -> None:
    items.sql("INSERT INTO items VALUES (1, 'one', 10), (2, 'two', 20)")
    items.sql("UPDATE items SET qty = qty * 10")
    res = items.sql(
        "SELECT new.id, old.qty, new.qty FROM items new "
        "JOIN items VERSION AS OF 1 old ON old.id = new.id ORDER BY new.id"
    )
    assert res.fetchall() == [(1, 10, 100), (2, 20, 200)]


def test_snowflake_at_and_before_travel_in_time_or_are_refused(items: mx.Lakehouse) -> None:
    # sqlglot parses these into the table's ``when``; once dropped, the current rows came back.
    items.sql("INSERT INTO items VALUES (1, 'one', 10)")  # version 1
    time.sleep(1)  # room for the OFFSET below, computed a moment before the engine's clock
    items.sql("INSERT INTO items VALUES (2, 'two', 20)")  # version 2
    history = {h["version"]: h for h in items.table("items").history()}

    def ids(sql: str) -> list[int]:
        return [r[0] for r in items.sql(sql, dialect="snowflake").fetchall()]

    assert ids("SELECT id FROM items AT (VERSION => 0)") == []
    assert ids("SELECT id FROM items AT (VERSION => 1) ORDER BY id") == [1]
    assert ids("SELECT id FROM items BEFORE (VERSION => 2) ORDER BY id") == [1]
    assert ids("SELECT id FROM items AT (VERSION => 2) x ORDER BY x.id") == [1, 2]
    at_v1 = dt.datetime.fromtimestamp(history[1]["timestamp"] / 1000, dt.UTC)
    iso = at_v1.strftime("%Y-%m-%d %H:%M:%S.%f")
    assert ids(f"SELECT id FROM items AT (TIMESTAMP => '{iso}'::timestamp_ntz)") == [1]
    assert ids(f"SELECT id FROM items AT (TIMESTAMP => TO_TIMESTAMP_TZ('{iso}+00:00'))") == [1]
    assert ids("SELECT id FROM items AT (OFFSET => 0) ORDER BY id") == [1, 2]
    # An hour ago the table did not exist yet: an error, not today's rows.
    with pytest.raises(MatrixOSError, match="version"):
        ids("SELECT id FROM items AT (OFFSET => -3600)")
    seconds = (dt.datetime.now(dt.UTC) - at_v1).total_seconds()
    # 0.1 s after version 1, version 2 a second later: version 1's rows.
    assert ids(f"SELECT id FROM items AT (OFFSET => -{seconds - 0.1:.3f})") == [1]
    for sql in (
        "SELECT id FROM items BEFORE (STATEMENT => '8e5d0ca9-005e-44e6-b858-a8f5b37c5726')",
        "SELECT id FROM items AT (STATEMENT => '8e5d0ca9-005e-44e6-b858-a8f5b37c5726')",
        f"SELECT id FROM items BEFORE (TIMESTAMP => '{iso}'::timestamp_ntz)",
        "SELECT id FROM items BEFORE (OFFSET => -1)",
    ):
        with pytest.raises(NotSupported, match="time travel"):
            ids(sql)
    with pytest.raises(SQLError, match="integer"):
        ids("SELECT id FROM items AT (VERSION => 'x')")
    with pytest.raises(SQLError, match="no version before 0"):
        ids("SELECT id FROM items BEFORE (VERSION => 0)")
    with pytest.raises(SQLError, match="seconds"):
        ids("SELECT id FROM items AT (OFFSET => 'x')")
    with pytest.raises(NotSupported, match="CHANGES"):
        ids("SELECT * FROM items CHANGES (INFORMATION => DEFAULT) AT (VERSION => 1)")


def test_table_modifiers_apply_or_are_refused(items: mx.Lakehouse) -> None:
    # What follows a table name once vanished with it when the name became a scan.
    items.sql("INSERT INTO items VALUES (1, 'a', 10), (2, 'b', 20), (3, 'a', 30)")
    pivoted = items.sql("SELECT * FROM items PIVOT (sum(qty) FOR name IN ('a', 'b'))")
    assert sorted(pivoted.to_arrow().column_names) == ["a", "b", "id"]
    assert items.sql("SELECT count(*) FROM items TABLESAMPLE (0 PERCENT)").scalar() == 0
    assert items.sql("SELECT count(*) FROM items TABLESAMPLE (100 PERCENT)").scalar() == 3
    with pytest.raises(NotSupported, match="PARTITION"):
        items.sql("SELECT * FROM items PARTITION (p0)", dialect="mysql")
    hinted = items.sql("SELECT count(*) FROM items WITH (NOLOCK)", dialect="tsql")
    assert hinted.scalar() == 3  # a locking hint changes no result


def test_unparsable_table_names_in_commands_are_sql_errors(lh: mx.Lakehouse) -> None:
    # Found by the sandbox fuzzer: a raw sqlglot ParseError from OPTIMIZE's table name.
    for sql in ("OPTIMIZE ``))/--`", "DROP VOLUME ((", "VACUUM ))"):
        with pytest.raises(SQLError):
            lh.sql(sql, dialect="bigquery")


def test_deep_nesting_is_an_sql_error_not_a_recursion_error(lh: mx.Lakehouse) -> None:
    for sql in (
        "SELECT " + "(" * 300 + "1" + ")" * 300,
        "SELECT * FROM " + "(SELECT * FROM " * 150 + "(SELECT 1 AS a) x" + ") x" * 150,
        "SELECT 1 WHERE 1 IN " + "(SELECT 1 WHERE 1 IN " * 150 + "(SELECT 1)" + ")" * 150,
    ):
        with pytest.raises(SQLError, match="nested too deeply") as info:
            lh.sql(sql)
        assert isinstance(info.value.__cause__, RecursionError)
    assert lh.sql("SELECT " + "(" * 20 + "1" + ")" * 20).scalar() == 1


# ------------------------------------------------------------------------ DESCRIBE, HISTORY
def test_describe_and_describe_history(items: mx.Lakehouse) -> None:
    items.sql("INSERT INTO items VALUES (1, 'one', 10)")
    items.sql("UPDATE items SET qty = 11")
    for sql, dialect in (("DESCRIBE items", "duckdb"), ("DESCRIBE TABLE items", "databricks")):
        desc = items.sql(sql, dialect=dialect)
        assert desc.columns == ["column_name", "column_type", "nullable", "partition"]
        assert [r[0] for r in desc.fetchall()] == ["id", "name", "qty"]
    hist = items.sql("DESCRIBE HISTORY items", dialect="databricks").to_pylist()
    assert [h["version"] for h in hist] == [2, 1, 0]
    assert [h["operation"] for h in hist] == ["UPDATE", "WRITE", "CREATE TABLE"]
    assert all(isinstance(h["timestamp"], dt.datetime) for h in hist)
    assert hist[0]["timestamp"] >= hist[-1]["timestamp"]


# ------------------------------------------------------------------- OPTIMIZE, VACUUM, SHOW
def test_optimize_zorder_and_vacuum(items: mx.Lakehouse) -> None:
    for i in range(4):
        items.sql(f"INSERT INTO items VALUES ({i}, 'n{i}', {i * 10})")
    before = contents(items)
    files = items.table("items").describe()["num_files"]
    assert files == 4
    res = items.sql("OPTIMIZE items").to_pylist()[0]
    assert res["files_removed"] == 4 and res["files_added"] == 1
    assert items.table("items").describe()["num_files"] == 1
    assert contents(items) == before
    items.sql("INSERT INTO items VALUES (9, 'n9', 90)")
    res = items.sql("OPTIMIZE items ZORDER BY (qty, id)", dialect="databricks").to_pylist()[0]
    assert res["files_removed"] == 2
    assert len(contents(items)) == 5
    dry = items.sql("VACUUM items DRY RUN")
    assert dry.columns == ["path"]
    assert dry.num_rows == 0  # nothing is older than the default 7-day retention
    with pytest.raises(SQLError, match="retention"):
        items.sql("VACUUM items RETAIN 0 HOURS")
    assert len(contents(items)) == 5


def test_show_tables(lh: mx.Lakehouse) -> None:
    lh.create_table("a", pa.table({"x": [1]}))
    lh.create_table("s.b", pa.table({"x": [1]}))
    assert lh.sql("SHOW TABLES").fetchall() == [("main", "default", "a"), ("main", "s", "b")]
    for sql, dialect in (
        ("SHOW TABLES FROM s", "duckdb"),
        ("SHOW TABLES IN s", "databricks"),
        ("SHOW TABLES FROM s", "mysql"),
    ):
        assert lh.sql(sql, dialect=dialect).fetchall() == [("main", "s", "b")]


# ------------------------------------------------------------------------------------ EXPLAIN
def test_platform_commands_log_no_parser_warnings(
    lake: mx.Lakehouse, caplog: pytest.LogCaptureFixture
) -> None:
    # EXPLAIN, OPTIMIZE, DESCRIBE HISTORY reach the engine as sqlglot Commands on purpose;
    # sqlglot's "falling back to parsing as a Command" warning is noise for the user.
    with caplog.at_level(logging.WARNING):
        lake.sql("EXPLAIN SELECT id FROM hr.people WHERE id = 1").fetchall()
        lake.sql("DESCRIBE HISTORY hr.people").fetchall()
    assert not [r for r in caplog.records if r.name.startswith("sqlglot")]


def test_explain_shows_files_after_pruning(lake: mx.Lakehouse) -> None:
    plan = "\n".join(
        r[0] for r in lake.sql("EXPLAIN SELECT * FROM orders WHERE day = DATE '2024-01-02'")
    )
    assert "Scan main.default.orders" in plan
    assert "1 of 3 files after pruning" in plan
    plan = "\n".join(r[0] for r in lake.sql("EXPLAIN SELECT * FROM orders"))
    assert "3 of 3 files after pruning" in plan
    plan = "\n".join(
        r[0]
        for r in lake.sql(
            "EXPLAIN SELECT * FROM orders WHERE day BETWEEN DATE '2024-01-02' AND '2024-01-03'"
        )
    )
    assert "2 of 3 files after pruning" in plan
    # the pruned query returns exactly the rows an unpruned filter does
    assert lake.sql(
        "SELECT id FROM orders WHERE day = DATE '2024-01-02' ORDER BY id"
    ).fetchall() == [
        (2,),
        (3,),
    ]


# ------------------------------------------------------------------------------------ errors
def test_parse_error_has_line_and_column(lake: mx.Lakehouse) -> None:
    with pytest.raises(SQLError) as info:
        lake.sql("SELECT *\nFROM orders\nWHERE (id = 1")
    err = info.value
    assert (err.line, err.col) == (3, 13)
    assert "line 3" in str(err)
    assert err.sql is not None and "WHERE" in err.sql
    with pytest.raises(SQLError) as info:
        lake.sql("SELECT id FROM orders WHERE id = 1 AND")
    assert (info.value.line, info.value.col) == (1, 36)  # where AND starts
    # a refused keyword inside a string literal does not turn a typo into an access error
    with pytest.raises(SQLError) as info:
        lake.sql("SELECT 'a; EXPORT DATABASE' FROM")
    assert not isinstance(info.value, AccessDenied)
    assert info.value.line == 1 and info.value.col is not None


def test_unknown_table_is_table_not_found(lake: mx.Lakehouse) -> None:
    for sql in ("SELECT * FROM nope", "SELECT * FROM hr.nope", "SELECT * FROM orders, nope"):
        with pytest.raises(TableNotFound) as info:
            lake.sql(sql)
        assert isinstance(info.value, LookupError)
        assert isinstance(info.value, MatrixOSError)
        assert "nope" in str(info.value)
        assert info.value.sqlstate.startswith(("42P01", "3F000"))


def test_unknown_column_is_sql_error(lake: mx.Lakehouse) -> None:
    with pytest.raises(SQLError) as info:
        lake.sql("SELECT nope FROM orders")
    assert "nope" in str(info.value)
    assert info.value.sqlstate == "42703"
    assert not isinstance(info.value, TableNotFound)


@pytest.mark.parametrize(
    ("sql", "dialect", "error"),
    [
        ("", "duckdb", SQLError),
        ("SELECT 1", "no-such-dialect", SQLError),
        ("SELECT 'a'::INT", "duckdb", SQLError),
        ("SELECT amount FROM orders WHERE amount = 'abc'", "duckdb", SQLError),
        ("SELECT * FROM orders VERSION AS OF (SELECT 1)", "duckdb", SQLError),
        ("SHOW FUNCTIONS", "databricks", MatrixOSError),
        ("DESCRIBE SELECT 1", "duckdb", NotSupported),
    ],
)
def test_engine_errors_never_leak(
    lake: mx.Lakehouse, sql: str, dialect: str, error: type[Exception]
) -> None:
    with pytest.raises(error) as info:
        lake.sql(sql, dialect=dialect)
    assert isinstance(info.value, MatrixOSError)
    assert type(info.value).__module__ == "matrixos.errors"


# ------------------------------------------------------------------------------------ Result
def test_result_conversions(lake: mx.Lakehouse) -> None:
    sql = "SELECT id, first_name FROM hr.people WHERE id <= 2 ORDER BY id"
    expected = pa.table({"id": pa.array([1, 2], pa.int64()), "first_name": ["Ann", "Bo"]})
    assert lake.sql(sql).to_arrow().equals(expected)
    assert pa.table(lake.sql(sql)).equals(expected)  # via __arrow_c_stream__
    assert pl.DataFrame(lake.sql(sql)).equals(pl.from_arrow(expected))  # type: ignore[arg-type]
    assert lake.sql(sql).to_polars().equals(pl.from_arrow(expected))  # type: ignore[arg-type]
    pd.testing.assert_frame_equal(lake.sql(sql).to_pandas(), expected.to_pandas())
    res = lake.sql(sql)
    assert res.fetchall() == [(1, "Ann"), (2, "Bo")]
    assert res.fetchall() == [(1, "Ann"), (2, "Bo")]  # materialized once, reusable
    assert res.fetchone() == (1, "Ann")
    assert res.scalar() == 1
    assert len(res) == 2 and res.num_rows == 2
    assert res.columns == ["id", "first_name"]
    assert list(res) == [(1, "Ann"), (2, "Bo")]
    assert lake.sql("SELECT 1 AS x WHERE false").scalar() is None


def test_result_streams_in_batches(lake: mx.Lakehouse) -> None:
    reader = lake.sql("SELECT i FROM big").to_arrow_reader()
    assert isinstance(reader, pa.RecordBatchReader)
    sizes = [batch.num_rows for batch in reader]
    assert len(sizes) > 1
    assert sum(sizes) == 100_000
    assert max(sizes) < 100_000
    res = lake.sql("SELECT i FROM big")
    res.to_arrow_reader().read_next_batch()
    assert res.to_arrow_reader().read_all().num_rows == 100_000  # kept, then replayed
    res = lake.sql("SELECT i FROM big")
    res.to_arrow_reader(keep=False).read_all()  # streamed without keeping: gone
    with pytest.raises(RuntimeError, match="keep=False"):
        res.to_arrow_reader()


def test_result_repr_html_is_bounded(lake: mx.Lakehouse) -> None:
    res = lake.sql("SELECT * FROM big ORDER BY i")
    html = res._repr_html_()
    body = html.split("<tbody>", 1)[1].split("</tbody>", 1)[0]
    assert 0 < body.count("<tr>") <= 20
    assert "row 0" in body and "row 19" in body and "row 20" not in body
    assert "100,000 rows" in html
    assert len(html) < 10_000
    assert len(repr(res).splitlines()) < 30
    html = lake.sql("SELECT '<b>x</b>' AS s").to_arrow()  # escaped, not rendered
    assert "<b>" not in Result.from_table(html)._repr_html_()


def test_result_feeds_duckdb_and_create_table(lake: mx.Lakehouse, lh: mx.Lakehouse) -> None:
    # Anything that takes __arrow_c_stream__ takes a Result: DuckDB, and create_table itself.
    con = duckdb.connect()
    summed = con.from_arrow(lake.sql("SELECT n FROM hr.visits")).aggregate("sum(n)").fetchall()
    assert summed == [(28,)]
    t = lh.create_table("copy", lake.sql("SELECT * FROM hr.people ORDER BY id"))
    assert t.to_arrow().num_rows == 6
    assert lh.sql("SELECT first_name FROM copy WHERE id = 6").scalar() == "Fay"


def test_constructs_duckdb_cannot_express_are_errors_not_warnings(tmp_path: Any) -> None:
    with mx.connect(str(tmp_path)) as lh:
        lh.create_table("s.t", {"b": ["x", "y"]})
        with pytest.raises(SQLError, match="APPROX_TOP_K"):
            lh.sql("SELECT APPROX_TOP_K(b, 2) FROM s.t", dialect="bigquery")


@pytest.mark.parametrize(
    ("sql", "message", "line", "col", "hint"),
    [
        ("SELEC * FROM raw.events", "unknown statement 'SELEC'", 1, 1, "did you mean SELECT?"),
        ("SELECT 1;\n  DELET FROM t", "unknown statement 'DELET'", 2, 3, "did you mean DELETE?"),
        ("SELECT * FROM t\nWHERE x = = 1", "syntax error at or near '='", 2, 11, None),
        ("SELECT * FROM t WHERE", "the statement ends early, after 'WHERE'", 1, 17, None),
        ("SELECT (1", "syntax error at or near '1': expecting )", 1, 9, None),
    ],
)
def test_syntax_errors_name_the_word_and_its_position(
    lake: mx.Lakehouse, sql: str, message: str, line: int, col: int, hint: str | None
) -> None:
    with pytest.raises(SQLError) as err:
        lake.sql(sql)
    e = err.value
    assert message in e.message and (e.line, e.col) == (line, col)
    assert "sqlglot" not in str(e) and "<class" not in str(e) and "Required keyword" not in str(e)
    assert e.hint == hint


def test_lance_time_travel_names_the_versions(lh: mx.Lakehouse) -> None:
    t = lh.create_table("kb.docs", pa.table({"id": [1]}), format="lance")
    t.append(pa.table({"id": [2]}))
    with pytest.raises(
        VersionNotFound, match=r"table main\.kb\.docs has versions 1 to 2; there is no"
    ):
        lh.sql("SELECT * FROM kb.docs VERSION AS OF 99")
    assert lh.sql("SELECT count(*) FROM kb.docs VERSION AS OF 1").scalar() == 1


def test_create_table_in_sql_creates_its_schema(lh: mx.Lakehouse) -> None:
    lh.sql("CREATE TABLE sales.orders (id INT)")  # like create_table() and ingest
    assert "main.sales" in lh.schemas()
    lh.sql("INSERT INTO sales.orders VALUES (1)")
    assert lh.sql("SELECT count(*) FROM sales.orders").scalar() == 1
