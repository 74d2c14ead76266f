"""Long ``INSERT … VALUES`` statements of literals (engine/sql/values.py): fast, the same rows
as the usual path, and nothing but literals ever reaches DuckDB that way."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import pytest

import matrixos as mx
from matrixos.engine.sql.values import bulk_insert, redacted
from matrixos.errors import AccessDenied, MatrixOSError, SQLError


@pytest.fixture
def lh(tmp_path: Path) -> mx.Lakehouse:
    lh = mx.connect(str(tmp_path / "wh"))
    lh.sql("CREATE TABLE s.t (id BIGINT, name VARCHAR, v DECIMAL(10, 2), d DATE, ok BOOLEAN)")
    return lh


def _rows(n: int, start: int = 0) -> str:
    return ", ".join(
        f"({i}, 'it''s {i}', {i}.25, DATE '2026-01-{1 + i % 28:02d}', {('NULL', 'TRUE')[i % 2]})"
        for i in range(start, start + n)
    )


@pytest.mark.parametrize("dialect", ["duckdb", "postgres"])
def test_twenty_thousand_rows_in_one_statement(lh: mx.Lakehouse, dialect: str) -> None:
    sql = f"INSERT INTO s.t (id, name, v, d, ok) VALUES {_rows(20_000)};"
    assert bulk_insert(sql, dialect) is not None  # the fast path takes it
    res = lh.sql(sql, dialect=dialect).to_arrow().to_pylist()
    assert res[0]["num_affected_rows"] == 20_000
    got = lh.sql("SELECT count(*), sum(id), min(name), max(v) FROM s.t").fetchall()
    assert got == [(20_000, 199_990_000, "it's 0", Decimal("19999.25"))]
    row = lh.sql("SELECT * FROM s.t WHERE id = 12345").to_arrow().to_pylist()
    assert row == [
        {"id": 12345, "name": "it's 12345", "v": Decimal("12345.25"), "d": dt.date(2026, 1, 26)}
        | {"ok": True}
    ]
    assert lh.sql("SELECT count(*) FROM s.t WHERE ok IS NULL").scalar() == 10_000


def test_the_same_rows_as_the_usual_path(lh: mx.Lakehouse) -> None:
    big = f"INSERT INTO s.t VALUES {_rows(300)}"
    assert bulk_insert(big, "duckdb") is not None
    lh.sql(big)
    lh.sql("CREATE TABLE s.u (id BIGINT, name VARCHAR, v DECIMAL(10, 2), d DATE, ok BOOLEAN)")
    for start in range(0, 300, 10):  # short statements: sqlglot's path
        small = f"INSERT INTO s.u VALUES {_rows(10, start)}"
        assert bulk_insert(small, "duckdb") is None
        lh.sql(small)
    order = " ORDER BY id"
    assert (
        lh.sql("SELECT * FROM s.t" + order).fetchall()
        == lh.sql("SELECT * FROM s.u" + order).fetchall()
    )


@pytest.mark.parametrize(
    "tail",
    [
        ", (1, read_csv('/etc/passwd'), 1, NULL, NULL)",  # a function
        ", (1, (SELECT 'x'), 1, NULL, NULL)",  # a subquery
        ", (1, 'x', 1, NULL, NULL); COPY s.t TO '/tmp/x.csv'",  # a second statement
        " -- a comment\n, (1, 'x', 1, NULL, NULL)",
        ", (1, 'x' || 'y', 1, NULL, NULL)",  # an operator
    ],
)
def test_anything_but_literals_goes_the_usual_way(lh: mx.Lakehouse, tail: str) -> None:
    sql = f"INSERT INTO s.t VALUES {_rows(100)}{tail}"
    assert bulk_insert(sql, "duckdb") is None
    try:
        lh.sql(sql)
    except (AccessDenied, SQLError):
        pass  # the sandbox and the usual checks decide, as for any statement
    else:
        assert "read_csv" not in tail and "COPY" not in tail


def test_errors_and_other_dialects(lh: mx.Lakehouse) -> None:
    uneven = f"INSERT INTO s.t VALUES {_rows(100)}, (1, 'x')"
    assert bulk_insert(uneven, "duckdb") is not None
    with pytest.raises(MatrixOSError):
        lh.sql(uneven)
    assert lh.sql("SELECT count(*) FROM s.t").scalar() == 0  # nothing half-written
    # MySQL strings may hold backslash escapes: the usual path reads them
    values = ", ".join(f"({i}, 'a{i}')" for i in range(400))
    mysql = f"INSERT INTO s.t (id, name) VALUES {values}"
    assert bulk_insert(mysql, "mysql") is None
    assert lh.sql(mysql, dialect="mysql").to_arrow().to_pylist()[0]["num_affected_rows"] == 400
    # INSERT … SELECT … and ON CONFLICT-like tails are not lists of rows
    assert bulk_insert("INSERT INTO s.t SELECT * FROM s.t" + " " * 3000, "duckdb") is None


def test_lineage_text_has_no_literals() -> None:
    sql = f"INSERT INTO s.t (id, name, v, d, ok) VALUES {_rows(100)}"
    found = bulk_insert(sql, "duckdb")
    assert found is not None
    text = redacted(*found, "duckdb")
    assert text.startswith("INSERT INTO s.t (id, name, v, d, ok) VALUES (?, ?, ?, DATE ?, NULL)")
    assert "it" not in text and "2026" not in text


def test_the_writer_needs_modify(lh: mx.Lakehouse) -> None:
    from matrixos.catalog.accounts import Accounts

    for stmt in (
        "CREATE USER bob",
        "GRANT USE CATALOG ON CATALOG main TO bob",
        "GRANT USE SCHEMA, SELECT ON SCHEMA main.s TO bob",
    ):
        lh.sql(stmt)
    sql = f"INSERT INTO s.t VALUES {_rows(100)}"
    assert bulk_insert(sql, "duckdb") is not None

    def bob() -> mx.Lakehouse:
        return lh.with_principal(Accounts(lh.catalog).principal("bob"))

    with pytest.raises(AccessDenied, match="MODIFY"):
        bob().sql(sql)
    lh.sql("GRANT MODIFY ON TABLE s.t TO bob")
    assert bob().sql(sql).to_arrow().to_pylist()[0]["num_affected_rows"] == 100
