"""Grants are enforced in one place (the table service) for SQL, the SDK, search functions,
time travel, EXPLAIN and DESCRIBE HISTORY alike."""

from __future__ import annotations

import pytest

import matrixos as mx
from matrixos.catalog.access import EMBEDDED_USER, Principal
from matrixos.errors import AccessDenied


@pytest.fixture
def lh(tmp_path):
    with mx.connect(str(tmp_path / "wh")) as lh:
        lh.create_table("sales.orders", [{"id": 1, "amount": 10.0}, {"id": 2, "amount": 5.0}])
        lh.table("sales.orders").append([{"id": 3, "amount": 1.0}])
        lh.create_table("hr.salaries", [{"name": "ann", "salary": 100}])
        kb = lh.create_table(
            "kb.docs",
            [{"id": 1, "text": "vacuum removes files"}, {"id": 2, "text": "optimize compacts"}],
            format="lance",
        )
        kb.set_embedding("text", embedder="hash")
        yield lh


# Unity Catalog's rule: nothing inside a catalog or schema without USE CATALOG and USE SCHEMA.
USE = ("USE CATALOG ON main", "USE SCHEMA ON CATALOG main")


def reader(lh, *grants: str) -> mx.Lakehouse:
    return lh.with_principal(Principal("bob", frozenset({*USE, *grants})))


def test_the_embedded_user_owns_everything(lh) -> None:
    assert EMBEDDED_USER.is_admin and lh.principal.is_admin
    assert lh.sql("SELECT count(*) FROM hr.salaries").scalar() == 1


DENIED_READS = [
    "SELECT * FROM hr.salaries",
    "SELECT s.name FROM sales.orders o JOIN hr.salaries s ON o.id = 1",
    "SELECT * FROM sales.orders WHERE id IN (SELECT salary FROM hr.salaries)",
    "WITH x AS (SELECT * FROM hr.salaries) SELECT * FROM x",
    "SELECT * FROM hr.salaries VERSION AS OF 0",
    "EXPLAIN SELECT * FROM hr.salaries",
    "DESCRIBE HISTORY hr.salaries",
    "DESCRIBE hr.salaries",
    "SELECT * FROM vector_search('kb.docs', 'vacuum', 1)",
    "SELECT * FROM text_search('kb.docs', 'vacuum', 1)",
]


@pytest.mark.parametrize("sql", DENIED_READS)
def test_reads_need_select(lh, sql) -> None:
    bob = reader(lh, "SELECT ON main.sales.orders")
    with pytest.raises(AccessDenied, match=r"bob has no SELECT privilege on main\.(hr|kb)"):
        bob.sql(sql)


def test_granted_reads_work_and_time_travel_is_a_read(lh) -> None:
    bob = reader(lh, "SELECT ON main.sales.*", "SELECT ON main.kb.docs")
    assert bob.sql("SELECT count(*) FROM sales.orders").scalar() == 3
    assert bob.sql("SELECT count(*) FROM sales.orders VERSION AS OF 0").scalar() == 2
    assert bob.sql("DESCRIBE HISTORY sales.orders").to_arrow().num_rows == 2
    assert bob.table("sales.orders").to_arrow(version=0).num_rows == 2
    assert bob.search("kb.docs", "vacuum", k=1).to_pylist()[0]["id"] == 1
    assert bob.sql("SELECT id FROM vector_search('kb.docs', 'vacuum', 1)").scalar() == 1


def test_sdk_reads_and_listing(lh) -> None:
    bob = reader(lh, "SELECT ON main.sales.orders")
    assert bob.tables() == ["main.sales.orders"]
    assert set(lh.tables()) >= {"main.sales.orders", "main.hr.salaries", "main.kb.docs"}
    t = bob.table("hr.salaries")
    for read in (t.to_arrow, t.count, t.history, t.describe, lambda: t.version):
        with pytest.raises(AccessDenied):
            read()
    with pytest.raises(AccessDenied):
        bob.search("kb.docs", "vacuum", k=1)
    names = bob.sql("SHOW TABLES").column("table").to_pylist()
    assert names == ["orders"]


WRITES = [
    "INSERT INTO sales.orders VALUES (9, 9.0)",
    "UPDATE sales.orders SET amount = 0",
    "DELETE FROM sales.orders",
    "MERGE INTO sales.orders t USING (SELECT 1 AS id, 0.0 AS amount) s ON t.id = s.id "
    "WHEN MATCHED THEN UPDATE SET amount = s.amount",
    "OPTIMIZE sales.orders",
    "DROP TABLE sales.orders",
    "CREATE TABLE sales.copy AS SELECT * FROM sales.orders",
]


@pytest.mark.parametrize("sql", WRITES)
def test_writes_need_their_privilege_and_change_nothing(lh, sql) -> None:
    bob = reader(lh, "SELECT ON main.sales.*")
    before = lh.table("sales.orders").version
    with pytest.raises(AccessDenied, match=r"bob has no (MODIFY|MANAGE|CREATE) privilege"):
        bob.sql(sql)
    assert lh.table("sales.orders").version == before
    assert lh.sql("SELECT count(*) FROM sales.orders").scalar() == 3
    assert "main.sales.copy" not in lh.tables()


def test_sdk_writes_need_modify(lh) -> None:
    bob = reader(lh, "SELECT ON main.sales.*")
    t = bob.table("sales.orders")
    with pytest.raises(AccessDenied):
        t.append([{"id": 9, "amount": 9.0}])
    with pytest.raises(AccessDenied):
        bob.drop_table("sales.orders")
    assert lh.table("sales.orders").count() == 3


def test_modify_and_create_grants(lh) -> None:
    carol = lh.with_principal(
        Principal(
            "carol", frozenset({*USE, "MODIFY ON main.sales.orders", "CREATE ON main.scratch"})
        )
    )
    carol.sql("INSERT INTO sales.orders VALUES (4, 2.0)")
    assert lh.table("sales.orders").count() == 4
    carol.create_table("scratch.mine", [{"x": 1}])
    # the creator owns what it creates: every privilege on it, without a grant
    assert carol.sql("SELECT x FROM scratch.mine").scalar() == 1
    assert lh.table("scratch.mine").info.owner == "carol"
    carol.drop_table("scratch.mine")
    with pytest.raises(AccessDenied, match=r"CREATE privilege on schema main\.sales"):
        carol.create_table("sales.other", [{"x": 1}])
