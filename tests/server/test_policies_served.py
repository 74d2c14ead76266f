"""Row filters and column masks over a real ``matrixos serve``: defined over the PostgreSQL
wire by an admin, and holding for alice over the wire (psycopg), the HTTP statement API, and the
remote SDK's table reads and search."""

from __future__ import annotations

from typing import Any

import psycopg
import pytest

import matrixos as mx

try:
    from tests.server._serve import MatrixOSServer, ServedWarehouse
except ModuleNotFoundError:
    from _serve import MatrixOSServer, ServedWarehouse  # type: ignore[no-redef]

# sales.orders: ids 1…5, customer c1 for odd ids, c0 for even ones, amount 10 * id
C0 = [2, 4]


def connect(server: MatrixOSServer, wh: ServedWarehouse, user: str) -> psycopg.Connection[Any]:
    return psycopg.connect(
        host="127.0.0.1",
        port=server.pg_port,
        user=user,
        password=wh.passwords[user],
        dbname="main",
        autocommit=True,
        connect_timeout=10,
    )


@pytest.fixture(scope="module")
def policies(matrixos_server: MatrixOSServer, served_warehouse: ServedWarehouse) -> None:
    with connect(matrixos_server, served_warehouse, "admin") as conn:
        for sql in (
            "ALTER TABLE sales.orders SET ROW FILTER 'customer = ''c0''' FOR alice",
            "ALTER TABLE sales.orders ALTER COLUMN amount SET MASK '0' FOR alice",
            "GRANT USE SCHEMA ON SCHEMA main.kb TO alice",
            "GRANT SELECT ON TABLE main.kb.docs TO alice",
            "ALTER TABLE kb.docs SET ROW FILTER 'id = 2' FOR alice",
        ):
            conn.execute(sql)


def test_psycopg_sees_filtered_masked_rows(
    policies: None, matrixos_server: MatrixOSServer, served_warehouse: ServedWarehouse
) -> None:
    with connect(matrixos_server, served_warehouse, "alice") as conn:
        rows = conn.execute("SELECT id, amount FROM sales.orders ORDER BY id").fetchall()
        assert rows == [(2, 0.0), (4, 0.0)]
        joined = conn.execute(
            "SELECT DISTINCT o.id FROM sales.orders o JOIN sales.customers c ON c.id = o.customer "
            "WHERE o.id IN (SELECT id FROM sales.orders) ORDER BY 1"
        ).fetchall()
        assert [r[0] for r in joined] == C0
        # a parameter compared with the masked column finds nothing of the real values
        got = conn.execute("SELECT id FROM sales.orders WHERE amount = %s", (20.0,)).fetchall()
        assert got == []
        shown = conn.execute("SHOW ROW FILTERS ON sales.orders").fetchall()
        assert [r[3] for r in shown] == ["alice"]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("ALTER TABLE sales.orders DROP ROW FILTER FOR alice")
    with connect(matrixos_server, served_warehouse, "admin") as conn:
        assert len(conn.execute("SELECT id FROM sales.orders").fetchall()) == 5


def test_http_and_remote_sdk_see_filtered_masked_rows(
    policies: None, matrixos_server: MatrixOSServer, served_warehouse: ServedWarehouse
) -> None:
    with mx.connect(matrixos_server.http_url, token=served_warehouse.tokens["alice"]) as alice:
        got = alice.sql("SELECT id, amount FROM sales.orders ORDER BY id").to_arrow()
        assert got.column("id").to_pylist() == C0
        assert set(got.column("amount").to_pylist()) == {0.0}
        rows = alice.table("sales.orders").to_arrow().sort_by("id")
        assert rows.column("id").to_pylist() == C0
        assert set(rows.column("amount").to_pylist()) == {0.0}
        hits = alice.search("kb.docs", "vacuum old files", k=2, mode="hybrid")
        assert hits.column("id").to_pylist() == [2]
        sql_hits = alice.sql("SELECT id FROM vector_search(kb.docs, 'vacuum', k => 2)")
        assert sql_hits.fetchall() == [(2,)]
    with mx.connect(matrixos_server.http_url, token=served_warehouse.tokens["admin"]) as admin:
        assert admin.table("sales.orders").to_arrow().num_rows == 5
