"""The PostgreSQL wire server with real clients: psql (Debian's postgresql-client), psycopg 3
(simple and extended protocol, prepared statements, cancel), asyncpg, over loopback.

One server per module (a thread of this process, a random port), SCRAM-SHA-256 against real
accounts in the warehouse's catalog: alice may read ``sales``, bob holds no grant, and
``secret.salaries`` is visible to nobody but the admin.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
import pytest

import matrixos as mx
from matrixos.catalog.accounts import Accounts
from matrixos.engine.interrupt import Interrupt, interruptible
from matrixos.errors import StatementCanceled
from matrixos.server.pgwire import PgServerHandle, start_pg_server

PASSWORDS = {"alice": "alice-pw", "bob": "bob-pw", "root": "root-pw", "carol": "carol-pw"}


@pytest.fixture(scope="module")
def lh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[mx.Lakehouse]:
    lh = mx.connect(str(tmp_path_factory.mktemp("pgwire") / "wh"))
    orders = pa.table(
        {
            "id": pa.array([1, 2, 3], pa.int64()),
            "name": ["ann", "bo'b", None],
            "amount": pa.array([Decimal("1.50"), Decimal("2.25"), None], pa.decimal128(10, 2)),
            "paid": [True, False, None],
            "day": [dt.date(2026, 1, 1), dt.date(2026, 1, 2), None],
            "at": pa.array([dt.datetime(2026, 1, 1, 12, 30), None, None], pa.timestamp("us")),
            "ratio": [0.5, 1.25, None],
            "tags": [["a", "b"], [], None],
        }
    )
    lh.create_table("sales.orders", orders)
    lh.create_table("sales.nums", pa.table({"n": pa.array(range(3000), pa.int64())}))
    lh.create_table("secret.salaries", [{"who": "ceo", "pay": 1}])
    accounts = Accounts(lh.catalog)
    for name, pw in PASSWORDS.items():
        accounts.create(name, password=pw, admin=name == "root")
    for privilege, on in [
        ("USE CATALOG", "main"),
        ("USE SCHEMA", "main.sales"),
        ("SELECT", "main.sales"),
        ("MODIFY", "main.sales"),
        ("CREATE", "main.sales"),
    ]:
        accounts.grant(privilege, on, "alice")
    yield lh
    lh.close()


# The server runs in its own process, as `matrixos serve` would: a client's blocking calls
# (psycopg's conn.cancel() holds the GIL while it waits) cannot stall it.
SERVE = """
import json, ssl, sys
import matrixos as mx
from matrixos.server.pgwire import start_pg_server
from matrixos.server.statements import Limits
from matrixos.server.audit import AuditWriter
from matrixos.catalog.audit import AuditLog
cfg = json.loads(sys.argv[1])
ctx = None
if cfg.get("cert"):
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cfg["cert"], cfg["key"])
lh = mx.connect(cfg["warehouse"], create=False)
limits = Limits(
    statement_timeout_s=cfg.get("timeout"), max_active_per_principal=cfg.get("max_active")
)
audit = AuditWriter(AuditLog(lh.service), interval_s=0.1)
handle = start_pg_server(
    lh, port=0, auth=cfg.get("auth", "scram-sha-256"), ssl_context=ctx, limits=limits, audit=audit
)
print(handle.port, flush=True)
sys.stdin.read()  # until the test closes stdin
handle.stop()
audit.close()
"""


@dataclass
class Served:
    port: int
    process: subprocess.Popen[str]


@contextmanager
def serve(lh: mx.Lakehouse, **cfg: str | float) -> Iterator[Served]:
    config = json.dumps({"warehouse": lh.warehouse.uri, **cfg})
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVE, config],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = proc.stdout.readline().strip()
        assert port.isdigit(), "the server did not start"
        yield Served(int(port), proc)
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            # Its exit writes the audit and runs the table upkeep its appends asked for: at a
            # load of 16 on 2 cores that took over 30 s.
            proc.wait(180)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def server(lh: mx.Lakehouse) -> Iterator[Served]:
    with serve(lh) as served:
        yield served


def connect(
    server: Served | PgServerHandle, user: str = "alice", **kw: Any
) -> psycopg.Connection[Any]:
    return psycopg.connect(
        host="127.0.0.1",
        port=server.port,
        user=user,
        password=kw.pop("password", PASSWORDS.get(user, "x")),
        dbname="main",
        autocommit=True,
        connect_timeout=10,
        **kw,
    )


def psql(server: Served, user: str, *commands: str) -> subprocess.CompletedProcess[str]:
    args = ["psql", "-h", "127.0.0.1", "-p", str(server.port), "-U", user, "-d", "main", "-X"]
    for c in commands:
        args += ["-c", c]
    env = {**os.environ, "PGPASSWORD": PASSWORDS.get(user, "wrong"), "PGCONNECT_TIMEOUT": "10"}
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=60)


# -- psql ----------------------------------------------------------------------------------
def test_psql_queries_and_describes_tables(server: Served) -> None:
    out = psql(
        server,
        "alice",
        "SELECT id, name FROM sales.orders ORDER BY id",
        r"\dt *.*",
        r"\dn",
        r"\d sales.orders",
        r"\l",
        r"\d+ sales.nums",
        "SELECT pg_catalog.set_config('search_path', '', false)",
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert " main | alice | UTF8 " in text  # \l
    assert " n      | bigint |           |          |         | plain " in text  # \d+
    assert " 2 | bo'b" in text and "(3 rows)" in text
    # \dt: alice's two tables, not the secret one; \dn: only the schema she may use
    assert "sales  | orders | table" in text and "sales  | nums   | table" in text
    assert "salaries" not in text and "secret" not in text
    assert 'Table "sales.orders"' in text
    for column, type_ in [
        ("id", "bigint"),
        ("name", "text"),
        ("amount", "numeric"),
        ("paid", "boolean"),
        ("day", "date"),
        ("at", "timestamp without time zone"),
        ("ratio", "double precision"),
        ("tags", "text[]"),
    ]:
        assert any(
            line.split("|")[0].strip() == column and line.split("|")[1].strip() == type_
            for line in text.splitlines()
            if line.count("|") >= 2
        ), (column, text)


def test_psql_user_without_grants_sees_nothing(server: Served) -> None:
    out = psql(
        server,
        "bob",
        r"\dt *.*",
        r"\dn",
        "SELECT count(*) FROM information_schema.tables",
        "SELECT * FROM sales.orders",
    )
    assert "Did not find any relation" in out.stderr
    for name in ("orders", "nums", "salaries", "sales", "secret"):
        assert name not in out.stdout
    assert " count \n-------\n     0\n" in out.stdout
    assert "ERROR:  bob has no" in out.stderr


def test_psql_wrong_password_is_refused(server: Served) -> None:
    for user in ("alice", "nobody"):
        env = {**os.environ, "PGPASSWORD": "guess", "PGCONNECT_TIMEOUT": "10"}
        args = ["psql", "-h", "127.0.0.1", "-p", str(server.port), "-U", user, "-c", "SELECT 1"]
        out = subprocess.run(args, capture_output=True, text=True, env=env, timeout=60)
        assert out.returncode != 0
        assert f'password authentication failed for user "{user}"' in out.stderr


def test_psql_settings_accepted_engine_settings_refused(server: Served) -> None:
    out = psql(
        server,
        "alice",
        "SET application_name = 'report'",
        "SHOW application_name",
        "SET TIME ZONE 'UTC'",
        "SET memory_limit = '1TB'",
        "SHOW TABLES",
    )
    assert "SET\n" in out.stdout and " report\n" in out.stdout
    assert "setting 'memory_limit' may not be changed" in out.stderr
    assert "orders" in out.stdout and "salaries" not in out.stdout


def test_psql_fetch_count_reads_through_a_cursor(server: Served) -> None:
    out = psql(
        server, "alice", r"\set FETCH_COUNT 2", "SELECT n FROM sales.nums WHERE n < 5 ORDER BY n"
    )
    assert out.returncode == 0, out.stderr
    assert [line.strip() for line in out.stdout.splitlines()[2:7]] == ["0", "1", "2", "3", "4"]
    assert "(5 rows)" in out.stdout


# -- psycopg: extended and simple protocol ---------------------------------------------------
def test_psycopg_parameters_types_and_oids(server: Served) -> None:
    with connect(server) as conn:
        cur = conn.execute("SELECT * FROM sales.orders WHERE id = %s", (1,))
        assert cur.description is not None
        assert [d.type_code for d in cur.description] == [20, 25, 1700, 16, 1082, 1114, 701, 1009]
        row = cur.fetchone()
        assert row == (
            1,
            "ann",
            Decimal("1.50"),
            True,
            dt.date(2026, 1, 1),
            dt.datetime(2026, 1, 1, 12, 30),
            0.5,
            ["a", "b"],
        )
        assert cur.statusmessage == "SELECT 1"
        # a parameter is a value, never SQL
        hostile = "x' OR '1'='1"
        assert (
            conn.execute("SELECT id FROM sales.orders WHERE name = %s", (hostile,)).fetchall() == []
        )
        assert conn.execute(
            "SELECT id FROM sales.orders WHERE name = %s", ("bo'b",)
        ).fetchall() == [(2,)]
        nulls = conn.execute(
            "SELECT %s::int IS NULL, %s::date, %s", (None, dt.date(2026, 5, 1), True)
        )
        assert nulls.fetchone() == (True, dt.date(2026, 5, 1), True)
        # EXPLAIN of a statement with parameters (sqlglot keeps EXPLAIN as text)
        plan = conn.execute("EXPLAIN SELECT id FROM sales.orders WHERE id = %s", (1,)).fetchall()
        assert plan and "sales.orders" in "\n".join(str(r[0]) for r in plan)


def test_psycopg_prepared_statements_and_portals(server: Served) -> None:
    with connect(server) as conn:
        conn.prepare_threshold = 0  # prepare on first use: named Parse, then Bind/Execute
        for i in (1, 2, 3):
            got = conn.execute("SELECT n * 2 FROM sales.nums WHERE n = %s", (i,)).fetchall()
            assert got == [(i * 2,)]
        # a server-side cursor: DECLARE, then FETCH FORWARD in steps, CLOSE
        with conn.transaction(), conn.cursor(name="big") as cur:
            cur.itersize = 100
            cur.execute("SELECT n FROM sales.nums WHERE n < %s ORDER BY n", (2500,))
            assert cur.description is not None and cur.description[0].name == "n"
            assert [r[0] for r in cur] == list(range(2500))
        # a whole result larger than what is read with the statement
        all_rows = conn.execute("SELECT n FROM sales.nums ORDER BY n").fetchall()
        assert [r[0] for r in all_rows] == list(range(3000))


def test_psycopg_simple_protocol_and_command_tags(server: Served) -> None:
    with connect(server, cursor_factory=psycopg.ClientCursor) as conn:
        cur = conn.cursor()
        cur.execute("CREATE TABLE sales.events (id BIGINT, what TEXT)")
        assert cur.statusmessage == "CREATE TABLE"
        cur.execute("INSERT INTO sales.events VALUES (%s, %s), (%s, %s)", (1, "a';--", 2, "b"))
        assert cur.statusmessage == "INSERT 0 2" and cur.rowcount == 2
        cur.execute("UPDATE sales.events SET what = 'c' WHERE id = 2")
        assert cur.statusmessage == "UPDATE 1"
        cur.execute("SELECT what FROM sales.events ORDER BY id")
        assert cur.fetchall() == [("a';--",), ("c",)]
        cur.execute("SELECT 1; SELECT 2 AS two")  # one Query message, two results
        assert cur.fetchall() == [(1,)]
        assert cur.nextset() and cur.fetchall() == [(2,)]
        assert cur.description is not None and cur.description[0].name == "two"
        cur.execute("DROP TABLE sales.events")
        assert cur.statusmessage == "DROP TABLE"


def test_psycopg_errors_carry_sqlstate_and_position(server: Served) -> None:
    with connect(server) as conn:
        with pytest.raises(psycopg.errors.SyntaxError) as syntax:
            conn.execute("SELECT id FROM sales.orders WHERE")
        assert syntax.value.sqlstate == "42601"
        with pytest.raises(psycopg.Error) as e:
            conn.execute("SELECT nope FROM sales.orders")
        assert e.value.sqlstate == "42703"
        assert e.value.diag.statement_position == "8"
        with pytest.raises(psycopg.errors.UndefinedTable):
            conn.execute("SELECT * FROM sales.missing")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM secret.salaries")
        # the connection is still good after errors
        assert conn.execute("SELECT count(*) FROM sales.orders").fetchone() == (3,)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM '/etc/passwd'",
        "COPY sales.orders TO '/tmp/x.csv'",
        "ATTACH '/tmp/other.db' AS o",
        "SET enable_external_access = true",
        "SELECT current_setting('memory_limit') || pg_read_file('/etc/passwd')",
    ],
)
def test_hostile_sql_is_refused(server: Served, sql: str) -> None:
    with connect(server) as conn:
        with pytest.raises(psycopg.Error) as e:
            conn.execute(sql)
        assert e.value.sqlstate in ("42501", "42601", "0A000", "42883"), e.value
        assert "root:" not in str(e.value)


def test_wrong_password_refused_over_psycopg(server: Served) -> None:
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(server, "alice", password="guess")


def test_repeated_failed_logins_are_throttled(server: Served) -> None:
    for _ in range(5):
        with pytest.raises(psycopg.OperationalError):
            connect(server, "carol", password="guess")
    # locked out from this address: even the right password is refused for now
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        connect(server, "carol")
    with connect(server, "bob") as conn:  # other accounts are not affected
        assert conn.execute("SELECT 1").fetchone() == (1,)


LONG_QUERY = (
    "SELECT count(*) FROM sales.nums a, sales.nums b, sales.nums c "
    "WHERE (a.n * b.n + c.n) % 7919 = 1"
)


def in_background(
    conn: psycopg.Connection[Any], sql: str
) -> tuple[threading.Thread, list[BaseException]]:
    """Run ``sql`` on ``conn`` in a thread; the errors it raised (once joined)."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            conn.execute(sql)
        except BaseException as e:
            errors.append(e)

    worker = threading.Thread(target=run)
    worker.start()
    return worker, errors


def test_cancel_stops_a_long_query(server: Served) -> None:
    with connect(server) as conn:
        worker, errors = in_background(conn, LONG_QUERY)
        # cancel until the statement is gone (a cancel before it starts is a no-op)
        while worker.is_alive():
            conn.cancel()
            worker.join(0.5)
        assert len(errors) == 1 and isinstance(errors[0], psycopg.errors.QueryCanceled)
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_statement_timeout(lh: mx.Lakehouse) -> None:
    with serve(lh, timeout=1.0) as limited, connect(limited) as conn:
        with pytest.raises(psycopg.errors.QueryCanceled, match="statement timeout"):
            conn.execute(LONG_QUERY)
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_statements_per_principal(lh: mx.Lakehouse) -> None:
    with serve(lh, max_active=1) as limited, connect(limited) as first, connect(limited) as second:
        refused: list[psycopg.Error] = []
        while not refused:
            worker, errors = in_background(first, LONG_QUERY)
            while worker.is_alive() and not refused:  # until the long statement counts
                try:
                    second.execute("SELECT 1")
                except psycopg.Error as e:
                    refused.append(e)
            if not refused:  # a SELECT 1 held the slot as the long one came: again
                worker.join()
                assert [getattr(e, "sqlstate", None) for e in errors] == ["53000"], errors
        first.cancel()
        worker.join()
        assert [e.sqlstate for e in refused] == ["53000"], (refused, errors)
        assert "alice has 1 statements running" in str(refused[0])
        assert isinstance(errors[0], psycopg.errors.QueryCanceled), errors
        assert second.execute("SELECT 1").fetchone() == (1,)  # the slot is free again


def test_drain_refuses_new_statements_and_stops_running_ones(lh: mx.Lakehouse) -> None:
    handle = start_pg_server(lh, port=0, auth="trust")
    try:
        with connect(handle, "admin") as busy, connect(handle, "admin") as idle:
            worker, errors = in_background(busy, LONG_QUERY)
            while worker.is_alive() and not handle.server.active():  # until it runs
                worker.join(0.05)
            assert handle.drain(0.5) is False  # it did not finish: interrupted
            worker.join()
            assert isinstance(errors[0], psycopg.errors.QueryCanceled)
            with pytest.raises(psycopg.errors.CannotConnectNow, match="shutting down"):
                idle.execute("SELECT 1")
    finally:
        handle.stop()


def test_interrupt_stops_the_engine_statement(lh: mx.Lakehouse) -> None:
    handle = Interrupt()
    timer = threading.Timer(0.5, handle.interrupt)
    timer.start()
    with pytest.raises(StatementCanceled), interruptible(handle):
        lh.sql(LONG_QUERY).fetchall()
    # an interrupt that came first refuses the next cursor at once
    with pytest.raises(StatementCanceled), interruptible(handle):
        lh.sql("SELECT n FROM sales.nums").fetchall()


# -- asyncpg ---------------------------------------------------------------------------------
def test_asyncpg_prepared_statement(server: Served) -> None:
    asyncpg = pytest.importorskip("asyncpg")

    async def main() -> list[tuple[object, ...]]:
        conn = await asyncpg.connect(
            host="127.0.0.1", port=server.port, user="alice", password="alice-pw", database="main"
        )
        try:
            stmt = await conn.prepare(
                "SELECT id, name FROM sales.orders WHERE id >= $1 ORDER BY id"
            )
            assert [a.name for a in stmt.get_attributes()] == ["id", "name"]
            rows = await stmt.fetch(2)
            # a cursor: one portal drained in steps of 100 rows (Execute limits, PortalSuspended)
            async with conn.transaction():
                seen = [
                    r["n"]
                    async for r in conn.cursor(
                        "SELECT n FROM sales.nums WHERE n < $1 ORDER BY n", 250, prefetch=100
                    )
                ]
            assert seen == list(range(250))
            return [tuple(r) for r in rows]
        finally:
            await conn.close()

    assert asyncio.run(main()) == [(2, "bo'b"), (3, None)]


# -- TLS -------------------------------------------------------------------------------------
def _self_signed(tmp: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    (tmp / "c.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / "k.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def test_tls_when_a_certificate_is_configured(
    lh: mx.Lakehouse, server: Served, tmp_path: Path
) -> None:
    _self_signed(tmp_path)
    with (
        serve(lh, cert=str(tmp_path / "c.pem"), key=str(tmp_path / "k.pem")) as tls,
        connect(tls, sslmode="require") as conn,
    ):
        assert conn.pgconn.ssl_in_use
        assert conn.execute("SELECT count(*) FROM sales.orders").fetchone() == (3,)
    # without a certificate: SSLRequest is answered N, so `require` fails and `prefer` is plain
    with pytest.raises(psycopg.OperationalError):
        connect(server, sslmode="require")
    with connect(server, sslmode="prefer") as conn:
        assert not conn.pgconn.ssl_in_use


def test_password_auth_accepts_a_token(lh: mx.Lakehouse) -> None:
    accounts = Accounts(lh.catalog)
    token = accounts.create_token("alice")
    with serve(lh, auth="password") as handle:
        with connect(handle, password=token) as conn:
            assert conn.execute("SELECT current_user").fetchone() == ("alice",)
        with connect(handle, password="alice-pw") as conn:
            assert conn.execute("SELECT count(*) FROM sales.orders").fetchone() == (3,)
        with pytest.raises(psycopg.OperationalError):
            connect(handle, "bob", password=token)  # alice's token is not bob's password


# -- BI tools' metadata queries (pgjdbc/DBeaver shapes) ---------------------------------------
JDBC_TABLES = """
SELECT NULL AS TABLE_CAT, n.nspname AS TABLE_SCHEM, c.relname AS TABLE_NAME,
  CASE n.nspname ~ '^pg_' OR n.nspname = 'information_schema'
    WHEN true THEN CASE WHEN n.nspname = 'pg_catalog' OR n.nspname = 'information_schema'
      THEN CASE c.relkind WHEN 'r' THEN 'SYSTEM TABLE' ELSE NULL END ELSE NULL END
    WHEN false THEN CASE c.relkind WHEN 'r' THEN 'TABLE' ELSE NULL END
    ELSE NULL END AS TABLE_TYPE, d.description AS REMARKS
FROM pg_catalog.pg_namespace n, pg_catalog.pg_class c
LEFT JOIN pg_catalog.pg_description d
  ON (c.oid = d.objoid AND d.objsubid = 0 AND d.classoid = 'pg_class'::regclass)
WHERE c.relnamespace = n.oid AND c.relname LIKE %s
ORDER BY TABLE_TYPE, TABLE_SCHEM, TABLE_NAME
"""


def test_bi_tool_metadata_queries(server: Served) -> None:
    with connect(server) as conn:
        tables = conn.execute(JDBC_TABLES, ("%",)).fetchall()
        assert [(r[1], r[2], r[3]) for r in tables] == [
            ("sales", "nums", "TABLE"),
            ("sales", "orders", "TABLE"),
        ]
        namespaces = conn.execute(
            "SELECT n.oid, n.nspname FROM pg_catalog.pg_namespace n "
            "WHERE n.nspname NOT LIKE 'pg_%%' AND n.nspname <> 'information_schema'"
        ).fetchall()
        assert [r[1] for r in namespaces] == ["sales"]
        (sales_oid,) = [r[0] for r in namespaces]
        in_sales = conn.execute(
            "SELECT c.relname FROM pg_catalog.pg_class c WHERE c.relnamespace = %s "
            "ORDER BY c.relname",
            (sales_oid,),
        ).fetchall()
        assert in_sales == [("nums",), ("orders",)]
        columns = conn.execute(
            "SELECT column_name, data_type, is_nullable FROM information_schema.columns "
            "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
            ("sales", "orders"),
        ).fetchall()
        assert columns[0] == ("id", "bigint", "YES") and columns[2] == ("amount", "numeric", "YES")
        assert conn.execute("SELECT datname FROM pg_catalog.pg_database").fetchall() == [("main",)]
    with connect(server, "bob") as conn:
        assert conn.execute(JDBC_TABLES, ("%",)).fetchall() == []
        assert conn.execute("SELECT table_name FROM information_schema.columns").fetchall() == []


def test_logins_and_statements_are_audited(lh: mx.Lakehouse, server: Served) -> None:
    with pytest.raises(psycopg.OperationalError):
        connect(server, "bob", password="not-bobs-password")
    with connect(server) as conn:
        conn.execute("SELECT id FROM sales.orders WHERE name = %s", ("secret-literal",))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM secret.salaries WHERE who = 'ceo'")
        conn.execute("INSERT INTO sales.orders (id, name) VALUES (99, 'hidden')")
        conn.execute("DELETE FROM sales.orders WHERE id = 99")
    sql = (
        "SELECT principal, action, outcome, statement, rows, client_address, protocol "
        "FROM system.access.audit WHERE protocol = 'pg' ORDER BY event_time"
    )
    wanted = {
        ("bob", "LOGIN", "denied", None, None),
        ("alice", "LOGIN", "ok", None, None),
        ("alice", "SELECT", "ok", "SELECT id FROM sales.orders WHERE name = $?", 0),
        ("alice", "SELECT", "denied", "SELECT * FROM secret.salaries WHERE who = ?", None),
        ("alice", "INSERT", "ok", "INSERT INTO sales.orders (id, name) VALUES (?, ?)", 1),
        ("alice", "DELETE", "ok", "DELETE FROM sales.orders WHERE id = ?", 1),
    }
    for _ in range(100):  # the writer appends in the background, every 0.1 s
        rows = lh.sql(sql).fetchall()
        if wanted <= {r[:5] for r in rows}:
            break
        threading.Event().wait(0.1)
    assert wanted <= {r[:5] for r in rows}, [r[:5] for r in rows]
    assert all(r[5] == "127.0.0.1" and r[6] == "pg" for r in rows)
    text = str(lh.sql("SELECT * FROM system.access.audit").fetchall())
    for secret in ("not-bobs-password", "secret-literal", "hidden", *PASSWORDS.values()):
        assert secret not in text


def test_oversized_startup_packet_is_refused(server: Served) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall((1 << 30).to_bytes(4, "big") + (196608).to_bytes(4, "big"))
        assert sock.recv(1) == b""  # closed without reading a gigabyte first
    with connect(server) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_gss_then_tls_requests_are_declined_then_startup_proceeds(server: Served) -> None:
    def packet(code: int, body: bytes = b"") -> bytes:
        return (8 + len(body)).to_bytes(4, "big") + code.to_bytes(4, "big") + body

    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(packet(80877104))  # GSSENCRequest
        assert sock.recv(1) == b"N"
        sock.sendall(packet(80877103))  # SSLRequest (no certificate configured)
        assert sock.recv(1) == b"N"
        sock.sendall(packet(196608, b"user\0alice\0database\0main\0\0"))
        assert sock.recv(1) == b"R"  # the SCRAM challenge: startup went on
