"""Every path of ``matrixos serve`` under the same rules: the remote SDK's table reads and search
under the statement limits (one count of running statements per principal across HTTP, SDK and
the wire), the client address of a token's last use, failed wire logins
throttled, and the wire's honest answer to BEGIN/COMMIT/ROLLBACK (MatrixOS autocommits).

One server for the module: at most 1 statement per user, results of at most 10 rows.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

import matrixos as mx
from matrixos.catalog.accounts import Accounts
from matrixos.errors import SQLError, TooManyStatements

try:
    from tests.server._serve import MatrixOSServer, ServedWarehouse
except ModuleNotFoundError:
    from _serve import MatrixOSServer, ServedWarehouse  # type: ignore[no-redef]

STATEMENTS = "/api/2.0/sql/statements"
ENDLESS = "SELECT count(*) FROM big.nums a, big.nums b, big.nums c WHERE (a.n * b.n + c.n) % 7 = 3"


@pytest.fixture(scope="module")
def server(served_warehouse: ServedWarehouse, tmp_path_factory) -> Iterator[MatrixOSServer]:
    log = tmp_path_factory.mktemp("paths") / "server.log"
    args = ["--max-statements-per-user", "1", "--max-result-rows", "10"]
    srv = MatrixOSServer(served_warehouse.uri, log, pg=True, args=args).start()
    try:
        yield srv
    finally:
        srv.stop()


def client(server: MatrixOSServer, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=server.http_url, headers={"Authorization": f"Bearer {token}"}, timeout=60
    )


def pg(server: MatrixOSServer, wh: ServedWarehouse, user: str, **kw: Any) -> psycopg.Connection:
    return psycopg.connect(
        host="127.0.0.1", port=server.pg_port, dbname="main", user=user,
        password=kw.pop("password", wh.passwords.get(user, "x")), connect_timeout=10, **kw,
    )  # fmt: skip


def test_table_reads_and_search_obey_the_statement_limits(
    server: MatrixOSServer, served_warehouse: ServedWarehouse
) -> None:
    admin = client(server, served_warehouse.tokens["admin"])
    remote = mx.connect(server.http_url, token=served_warehouse.tokens["admin"])
    sid = admin.post(STATEMENTS, json={"statement": ENDLESS, "wait_timeout": "0s"}).json()[
        "statement_id"
    ]
    try:
        # admin's one statement runs: a table read and a search are one too many
        busy = admin.get("/api/2.0/matrixos/tables/sales.orders/arrow")
        assert busy.status_code == 429, busy.text
        assert busy.headers["retry-after"] == "1" and busy.json()["sqlstate"] == "53000"
        found = admin.post("/api/2.0/matrixos/search", json={"table": "kb.docs", "query": "x"})
        assert found.status_code == 429
        with pytest.raises(TooManyStatements):
            remote.table("sales.orders").to_arrow()
        # one count per principal across protocols: the wire is refused too (53000)
        with (
            pg(server, served_warehouse, "admin", autocommit=True) as conn,
            pytest.raises(psycopg.errors.InsufficientResources),
        ):
            conn.execute("SELECT count(*) FROM sales.orders")
    finally:
        admin.post(f"{STATEMENTS}/{sid}/cancel")
    deadline = time.monotonic() + 60
    while admin.get(f"{STATEMENTS}/{sid}").json()["status"]["state"] in ("PENDING", "RUNNING"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert remote.table("sales.orders").to_arrow().num_rows == 5
    assert remote.search("kb.docs", "compacts files", k=2, mode="text").to_arrow().num_rows <= 2
    # 20,000 rows are more than a result may hold: an error, never 10 rows that look whole
    with pytest.raises(SQLError) as e:
        remote.table("big.nums").to_arrow()
    assert e.value.sqlstate == "54000" and "10 rows" in str(e.value)
    remote.close()
    admin.close()


def test_a_token_records_the_address_it_was_last_used_from(
    server: MatrixOSServer, served_warehouse: ServedWarehouse
) -> None:
    bob = client(server, served_warehouse.tokens["bob"])
    assert bob.get("/api/2.0/matrixos/tables").status_code == 200
    with mx.connect(served_warehouse.uri) as lh:
        (token,) = Accounts(lh.catalog).tokens("bob")
    assert token.last_used_from == "127.0.0.1" and token.last_used_at is not None
    bob.close()


def test_failed_wire_logins_are_throttled_by_serve(
    server: MatrixOSServer, served_warehouse: ServedWarehouse
) -> None:
    for _ in range(5):
        with pytest.raises(psycopg.OperationalError):
            pg(server, served_warehouse, "bob", password="guess")
    # locked out from this address, even with the right password; other users are not
    with pytest.raises(psycopg.OperationalError):
        pg(server, served_warehouse, "bob")
    with pg(server, served_warehouse, "alice", autocommit=True) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_begin_commit_rollback_tell_the_truth(
    server: MatrixOSServer, served_warehouse: ServedWarehouse
) -> None:
    notices: list[tuple[str, str, str]] = []
    with pg(server, served_warehouse, "admin") as conn:  # autocommit off: psycopg sends BEGIN
        conn.add_notice_handler(
            lambda d: notices.append((d.severity_nonlocalized, d.sqlstate, d.message_primary))
        )
        conn.execute("CREATE TABLE scratch.tx (id INT)")
        conn.commit()
        assert [n[0] for n in notices] == ["NOTICE"] and "autocommit" in notices[0][2]
        # a read-only transaction rolls back without a word
        assert conn.execute("SELECT count(*) FROM scratch.tx").fetchone() == (0,)
        conn.rollback()
        assert len(notices) == 1
        # a ROLLBACK after a write says it undid nothing; the row stays
        conn.execute("INSERT INTO scratch.tx VALUES (1)")
        conn.rollback()
        assert notices[-1][:2] == ("WARNING", "01000"), notices
        assert "undid nothing" in notices[-1][2] and "committed on its own" in notices[-1][2]
        assert conn.execute("SELECT count(*) FROM scratch.tx").fetchone() == (1,)
        conn.commit()
        # savepoints (psycopg's nested transactions) work as markers
        with conn.transaction():
            conn.execute("INSERT INTO scratch.tx VALUES (2)")
            with conn.transaction():
                conn.execute("SELECT 1")
        assert conn.execute("SELECT count(*) FROM scratch.tx").fetchone() == (2,)
        # a failed statement aborts the transaction as in PostgreSQL; ROLLBACK recovers it
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("SELECT * FROM scratch.missing")
        conn.rollback()
        assert conn.execute("SELECT 1").fetchone() == (1,)
