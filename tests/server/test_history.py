"""``system.query.history``: every statement of a server, admins see all rows, users their own.

The first tests write history rows in-process (``AuditWriter`` with a ``QueryHistory``) and
read them through SQL as different principals; the last one runs a real ``matrixos serve``
and checks the rows its HTTP API, PostgreSQL wire and remote SDK left.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

import matrixos as mx
from matrixos.catalog.access import Principal
from matrixos.catalog.audit import AuditLog
from matrixos.catalog.history import HISTORY_TABLE, QueryHistory
from matrixos.errors import AccessDenied, SQLError
from matrixos.server.audit import AuditWriter, scrub

try:
    from tests.server._serve import MatrixOSServer, ServedWarehouse
except ModuleNotFoundError:
    from _serve import MatrixOSServer, ServedWarehouse  # type: ignore[no-redef]

ALICE = Principal("alice", frozenset())
BOB = Principal("bob", frozenset())
STATEMENTS = "/api/2.0/sql/statements"
LAST_ANSWER: list[Any] = []
COLUMNS = "statement_id, principal, protocol, statement, state, rows, error_sqlstate"


@pytest.fixture
def lh(tmp_path) -> Iterator[mx.Lakehouse]:
    with mx.connect(str(tmp_path / "wh")) as session:
        yield session


def written(lh: mx.Lakehouse) -> AuditWriter:
    """A writer whose statements land in ``lh``'s audit and history (flushed by the test)."""
    return AuditWriter(AuditLog(lh.service), history=QueryHistory(lh.service), interval_s=60)


def record(writer: AuditWriter, who: str, sid: str, sql: str, **kw) -> None:
    fields = {"error": None, "rows": 1, "seconds": 0.002, "client_address": "127.0.0.1"}
    writer.statement(who, sql, "duckdb", protocol="http", statement_id=sid, **{**fields, **kw})


def test_admins_read_every_row_users_only_their_own(lh: mx.Lakehouse) -> None:
    writer = written(lh)
    record(writer, "alice", "a1", "SELECT * FROM t WHERE pw = 'hunter2'", nbytes=64)
    record(writer, "bob", "b1", "SELECT 1")
    failure = SQLError("could not convert 'secret-value' to INT", sqlstate="22018")
    sql = "SELECT x::INT FROM t WHERE x = 'secret-value'"
    record(writer, "alice", "a2", sql, error=failure, rows=None)
    writer.close()

    everyone = lh.sql(f"SELECT {COLUMNS} FROM {HISTORY_TABLE} ORDER BY statement_id").fetchall()
    assert [(r[0], r[1]) for r in everyone] == [("a1", "alice"), ("a2", "alice"), ("b1", "bob")]
    a1, a2 = everyone[0], everyone[1]
    assert a1[2:6] == ("http", "SELECT * FROM t WHERE pw = ?", "SUCCEEDED", 1)
    assert a2[4] == "FAILED" and a2[6] == "22018"
    # no literal of the statement survives, in its text or its error message
    text = str(lh.sql(f"SELECT * FROM {HISTORY_TABLE}").fetchall())
    assert "hunter2" not in text and "secret-value" not in text
    row = lh.sql(
        f"SELECT client_address, bytes, duration_ms, end_time >= start_time, statement_type "
        f"FROM {HISTORY_TABLE} WHERE statement_id = 'a1'"
    ).fetchall()
    assert row == [("127.0.0.1", 64, pytest.approx(2.0), True, "SELECT")]

    alice, bob = lh.with_principal(ALICE), lh.with_principal(BOB)
    mine = f"SELECT statement_id FROM {HISTORY_TABLE} ORDER BY statement_id"
    assert alice.sql(mine).fetchall() == [("a1",), ("a2",)]
    assert bob.sql(mine).fetchall() == [("b1",)]
    # no predicate, join, aggregate or time travel reaches another principal's rows
    assert bob.sql(
        f"SELECT count(*) FROM {HISTORY_TABLE} WHERE principal = 'alice'"
    ).fetchall() == [(0,)]
    assert bob.sql(
        f"SELECT count(*) FROM {HISTORY_TABLE} a JOIN {HISTORY_TABLE} b USING (statement_id)"
    ).fetchall() == [(1,)]
    assert bob.sql(f"SELECT count(*) FROM {HISTORY_TABLE} VERSION AS OF 1").fetchall() == [(1,)]
    # queried by name; not listed (a user without grants lists no table at all)
    assert bob.tables() == []
    # the table itself is not bob's: its files, history and other tables of system stay closed
    with pytest.raises(AccessDenied):
        bob.table(HISTORY_TABLE).to_arrow()
    with pytest.raises(AccessDenied):
        bob.sql("SELECT * FROM system.access.audit")
    with pytest.raises(AccessDenied):
        bob.sql(f"INSERT INTO {HISTORY_TABLE} (statement_id, principal) VALUES ('x', 'bob')")


def test_a_grantee_reads_all_rows(lh: mx.Lakehouse) -> None:
    writer = written(lh)
    record(writer, "alice", "a1", "SELECT 1")
    record(writer, "bob", "b1", "SELECT 2")
    writer.close()
    auditor = Principal("carol", frozenset({
        "USE CATALOG ON CATALOG system", "USE SCHEMA ON SCHEMA system.query",
        "SELECT ON TABLE system.query.history"}))  # fmt: skip
    rows = lh.with_principal(auditor).sql(f"SELECT principal FROM {HISTORY_TABLE} ORDER BY 1")
    assert rows.fetchall() == [("alice",), ("bob",)]


def test_a_table_of_that_name_made_by_someone_else_gets_no_rows(lh: mx.Lakehouse) -> None:
    lh.sql("CREATE TABLE system.query.history (statement_id VARCHAR, principal VARCHAR)")
    writer = written(lh)
    record(writer, "alice", "a1", "SELECT 1")
    writer.close()
    assert lh.sql(f"SELECT count(*) FROM {HISTORY_TABLE}").fetchall() == [(0,)]
    # and it is an ordinary table: no one but its owner (and admins) reads it
    with pytest.raises(AccessDenied):
        lh.with_principal(ALICE).sql(f"SELECT * FROM {HISTORY_TABLE}")


def test_scrub_blanks_the_literals_an_error_repeats() -> None:
    assert (
        scrub("bad value 'abc' near 'x'", "SELECT 'abc', 'x'", "duckdb") == "bad value '?' near '?'"
    )
    assert scrub("plain", "SELECT 'unterminated", "duckdb").startswith("<error message not")


# -- a real server: HTTP, the wire and the remote SDK leave rows -------------------------------
def history_of(
    client: httpx.Client, want: int = 0, timeout: float = 60, until: Any = None
) -> list[list[str]]:
    """The caller's history rows, once at least ``want`` are written (and ``until(rows)``)."""
    deadline = time.monotonic() + timeout
    while True:
        sql = (
            "SELECT principal, protocol, statement_type, state, error_sqlstate, statement "
            f"FROM {HISTORY_TABLE} ORDER BY start_time"
        )
        r = client.post("/api/2.0/sql/statements", json={"statement": sql, "wait_timeout": "30s"})
        body = r.json()
        rows = body.get("result", {}).get("data_array", []) if r.status_code == 200 else []
        done = len(rows) >= want and (until is None or until(rows))
        LAST_ANSWER[:] = [r.status_code, body]  # what a failed wait last saw
        if done or time.monotonic() > deadline:
            return rows
        time.sleep(0.3)


def test_every_server_path_is_recorded(
    matrixos_server: MatrixOSServer, served_warehouse: ServedWarehouse
) -> None:
    tokens = served_warehouse.tokens
    http = {
        n: httpx.Client(base_url=matrixos_server.http_url, timeout=60,
                        headers={"Authorization": f"Bearer {tokens[n]}"})
        for n in ("alice", "bob", "admin")
    }  # fmt: skip
    statements = "/api/2.0/sql/statements"
    http["alice"].post(statements, json={"statement": "SELECT id FROM sales.orders WHERE id = 2"})
    http["alice"].post(statements, json={"statement": "SELECT * FROM hr.salaries"})  # denied
    http["bob"].post(statements, json={"statement": "SELECT 42"})
    with psycopg.connect(
        host="127.0.0.1", port=matrixos_server.pg_port, dbname="main", user="alice",
        password=served_warehouse.passwords["alice"], autocommit=True,
    ) as conn:  # fmt: skip
        conn.execute("SELECT count(*) FROM sales.orders WHERE amount > %s", (15.0,)).fetchall()
    with mx.connect(matrixos_server.http_url, token=tokens["alice"]) as remote:
        assert remote.table("sales.orders").to_arrow().num_rows == 5
        assert remote.sql("SELECT count(*) FROM sales.customers").scalar() == 2

    rows = history_of(http["alice"], want=5)  # each of the five paths above
    assert {r[0] for r in rows} == {"alice"}, rows
    kinds = [(r[1], r[2], r[3], r[4]) for r in rows]
    assert ("http", "SELECT", "SUCCEEDED", None) in kinds
    assert ("http", "SELECT", "FAILED", "42501") in kinds
    assert ("pg", "SELECT", "SUCCEEDED", None) in kinds
    assert ("sdk", "READ", "SUCCEEDED", None) in kinds
    assert ("sdk", "SELECT", "SUCCEEDED", None) in kinds  # the SDK's lh.sql
    assert any(r[5] == "SELECT count(*) FROM sales.orders WHERE amount > $?" for r in rows), rows
    assert any(r[5] == "SELECT id FROM sales.orders WHERE id = ?" for r in rows), rows

    assert [r[0] for r in history_of(http["bob"], want=1)] == ["bob"]
    # a canceled statement ends CANCELED in the history
    endless = "SELECT count(*) FROM big.nums a, big.nums b, big.nums c WHERE (a.n * b.n) % 7 = 3"
    sid = http["admin"].post(statements, json={"statement": endless, "wait_timeout": "0s"})
    at = f"{statements}/{sid.json()['statement_id']}"
    http["admin"].post(f"{at}/cancel")  # at once: the interrupt is repeated until it lands
    deadline = time.monotonic() + 60
    while http["admin"].get(at).json()["status"]["state"] in ("PENDING", "RUNNING"):
        assert time.monotonic() < deadline, "the cancel did not stop the statement"
        time.sleep(0.1)
    canceled = ["admin", "http", "SELECT", "CANCELED"]
    everyone = history_of(http["admin"], until=lambda rows: canceled in [r[:4] for r in rows])
    assert {"alice", "bob", "admin"} <= {r[0] for r in everyone}
    assert canceled in [r[:4] for r in everyone], everyone
    for c in http.values():
        c.close()


def test_a_failure_while_rows_stream_over_the_wire_is_recorded(
    matrixos_server: MatrixOSServer, served_warehouse: ServedWarehouse
) -> None:
    # big.nums holds 0…19,999: the cast fails at row 19,000, long after the first rows were
    # read and sent (the statement itself started fine).
    late = (
        "SELECT CASE WHEN n < 19000 THEN n ELSE CAST('x' || n::text AS INTEGER) END FROM big.nums"
    )
    with psycopg.connect(
        host="127.0.0.1", port=matrixos_server.pg_port, dbname="main", user="admin",
        password=served_warehouse.passwords["admin"], autocommit=True,
    ) as conn:  # fmt: skip
        with pytest.raises(psycopg.Error, match="Could not convert string"):
            conn.execute(late).fetchall()  # the simple protocol, text rows
        with (
            pytest.raises(psycopg.Error, match="Could not convert string"),
            conn.cursor(binary=True) as cur,  # the extended protocol, binary rows
        ):
            cur.execute(late + " LIMIT %s", (20_000,)).fetchall()
        assert conn.execute("SELECT 1").fetchone() == (1,)  # the session goes on
    admin = httpx.Client(
        base_url=matrixos_server.http_url, timeout=60,
        headers={"Authorization": f"Bearer {served_warehouse.tokens['admin']}"},
    )  # fmt: skip

    def failed(rows: list[list[str]]) -> list[list[str]]:
        return [r for r in rows if r[1] == "pg" and "CAST(? || n" in r[5]]

    rows = failed(history_of(admin, until=lambda rows: len(failed(rows)) >= 2))
    # (a full run once found no rows after 60 s and a server that never drained: the stacks
    # say what its statements were doing)
    assert [(r[0], r[2], r[3]) for r in rows] == [("admin", "SELECT", "FAILED")] * 2, (
        rows,
        str(LAST_ANSWER)[:3000],
        matrixos_server.stacks()[-20000:],
    )
    assert all(r[4] and r[4] != "00000" for r in rows), rows
    sql = (
        "SELECT outcome FROM system.access.audit "
        "WHERE protocol = 'pg' AND statement LIKE '%CAST(? || n%'"
    )
    deadline = time.monotonic() + 60  # the audit's writer runs beside the history's
    while True:
        audit = admin.post(STATEMENTS, json={"statement": sql, "wait_timeout": "30s"}).json()
        outcomes = audit["result"]["data_array"]
        if len(outcomes) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert len(outcomes) == 2 and all(o[0].startswith("failed") for o in outcomes), outcomes
    admin.close()
