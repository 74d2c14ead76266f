"""The PostgreSQL wire of a real ``matrixos serve`` process: SCRAM logins against its
accounts, the catalog as each user sees it, limits shared with HTTP, and SIGTERM draining
the wire's statements."""

from __future__ import annotations

import os
import subprocess
import threading
from pathlib import Path

import psycopg
import pytest

try:
    from tests.server._serve import MatrixOSServer, ServedWarehouse
except ModuleNotFoundError:
    from _serve import MatrixOSServer, ServedWarehouse  # type: ignore[no-redef]


def pg(server: MatrixOSServer, wh: ServedWarehouse, user: str) -> psycopg.Connection:
    return psycopg.connect(
        host="127.0.0.1",
        port=server.pg_port,
        user=user,
        password=wh.passwords[user],
        dbname="main",
        autocommit=True,
        connect_timeout=10,
    )


def test_psql_against_matrixos_serve(
    matrixos_server: MatrixOSServer, served_warehouse: ServedWarehouse
) -> None:
    env = {**os.environ, "PGPASSWORD": served_warehouse.passwords["alice"]}
    args = ["psql", "-h", "127.0.0.1", "-p", str(matrixos_server.pg_port), "-U", "alice", "-X"]
    out = subprocess.run(
        [*args, "-d", "main", "-c", "SELECT count(*) FROM sales.orders", "-c", r"\dt *.*"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert "     5\n" in out.stdout
    assert "customers" in out.stdout and "orders" in out.stdout
    assert "salaries" not in out.stdout and "nums" not in out.stdout
    # the password is never in the server's log
    assert served_warehouse.passwords["alice"] not in matrixos_server.log()


def test_wire_and_http_see_the_same_tables(
    matrixos_server: MatrixOSServer, served_warehouse: ServedWarehouse
) -> None:
    with pg(matrixos_server, served_warehouse, "bob") as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM sales.orders")
        assert conn.execute("SELECT table_name FROM information_schema.tables").fetchall() == []
    with pg(matrixos_server, served_warehouse, "admin") as conn:
        names = conn.execute(
            "SELECT table_schema || '.' || table_name FROM information_schema.tables ORDER BY 1"
        ).fetchall()
        assert ("hr.salaries",) in names and ("sales.orders",) in names


def _run_for_hours(conn: psycopg.Connection) -> tuple[threading.Thread, list[BaseException]]:
    """Start a statement on ``conn`` that would run for hours, in a thread; its error lands in
    the list. Returns once it has run for a second."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            conn.execute("SELECT count(*) FROM big.nums a, big.nums b, big.nums c")
        except BaseException as e:
            errors.append(e)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(1.0)
    return worker, errors


def test_sigterm_drains_the_wire(served_warehouse: ServedWarehouse, tmp_path: Path) -> None:
    server = MatrixOSServer(
        served_warehouse.uri, tmp_path / "serve.log", pg=True, args=["--grace", "1"]
    ).start()
    try:
        conn = pg(server, served_warehouse, "admin")
        worker, errors = _run_for_hours(conn)
        server.terminate()
        worker.join(60)
        assert not worker.is_alive()
        # canceled at the end of the grace period (or cut off as the server stopped)
        assert errors and isinstance(
            errors[0], psycopg.errors.QueryCanceled | psycopg.OperationalError
        )
        assert server.wait(60) == 0
        assert "some were canceled" in server.log()
    finally:
        server.kill()


def test_sigusr1_writes_every_threads_stack_and_the_server_goes_on(
    served_warehouse: ServedWarehouse, tmp_path: Path
) -> None:
    server = MatrixOSServer(
        served_warehouse.uri, tmp_path / "serve.log", pg=True, args=["--grace", "1"]
    ).start()
    try:
        busy = pg(server, served_warehouse, "admin")
        worker, errors = _run_for_hours(busy)
        stacks = server.stacks()
        assert "Current thread" in stacks or "Thread 0x" in stacks, stacks[-3000:]
        # the running statement's thread is there, inside the engine's call
        assert "engine/" in stacks and "matrixos/server/" in stacks, stacks[-3000:]
        with pg(server, served_warehouse, "admin") as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
        busy.cancel()
        worker.join(60)
        assert not worker.is_alive() and isinstance(errors[0], psycopg.errors.QueryCanceled)
        server.terminate()
        assert server.wait(60) == 0
    finally:
        server.kill()
