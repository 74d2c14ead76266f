"""The remote SDK (``mx.connect("http://…", token=…)``), SIGTERM drain, and a property-based
run of the OpenAPI document, against real ``matrixos serve`` processes on 127.0.0.1."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pyarrow as pa
import pytest

import matrixos as mx
from matrixos.errors import AccessDenied, ConfigError, SQLError, TableNotFound

try:
    from tests.server._serve import MatrixOSServer, ServedWarehouse, make_served_warehouse
except ModuleNotFoundError:
    from _serve import (  # type: ignore[no-redef]
        MatrixOSServer,
        ServedWarehouse,
        make_served_warehouse,
    )

STATEMENTS = "/api/2.0/sql/statements"
# 8e12 row triples, no equality to hash on: runs until stopped.
ENDLESS_FROM = "big.nums a, big.nums b, big.nums c WHERE (a.n * b.n + c.n) % 7 = 3"


def test_remote_sql_returns_the_same_result_as_embedded(
    matrixos_server: MatrixOSServer, served_warehouse: ServedWarehouse
) -> None:
    query = "SELECT n, n % 7 AS r, 'x' || n AS s FROM big.nums WHERE n < 2500 ORDER BY n"
    with mx.connect(matrixos_server.http_url, token=served_warehouse.tokens["admin"]) as remote:
        res = remote.sql(query)  # 3 chunks of 1,000 rows, fetched as Arrow IPC
        got = res.to_arrow()
        assert pa.table(res).equals(got)  # a Result: read again, __arrow_c_stream__
    expected = mx.connect(served_warehouse.uri).sql(query).to_arrow()
    assert got.equals(expected)


def test_remote_parameters_tables_and_errors(
    matrixos_server: MatrixOSServer, served_warehouse: ServedWarehouse
) -> None:
    alice = mx.connect(matrixos_server.http_url, token=served_warehouse.tokens["alice"])
    n = alice.sql("SELECT count(*) FROM sales.customers WHERE name = :n", parameters={"n": "Ann"})
    assert n.scalar() == 1
    assert alice.tables() == ["main.sales.customers", "main.sales.orders"]
    assert alice.tables("hr") == []
    with pytest.raises(AccessDenied) as denied:
        alice.sql("SELECT * FROM hr.salaries")
    assert denied.value.sqlstate == "42501" and "GRANT" in (denied.value.hint or "")
    with pytest.raises(SQLError) as bad:
        alice.sql("SELECT id\nFROM sales.orders WHERE (id")
    assert (bad.value.line, bad.value.sqlstate) == (2, "42601")
    with pytest.raises(TableNotFound):
        mx.connect(matrixos_server.http_url, token=served_warehouse.tokens["admin"]).table(
            "sales.nope"
        )
    with pytest.raises(AccessDenied):
        mx.connect(matrixos_server.http_url, token="mxt_nope_nope").tables()


def test_remote_tables_time_travel_history_and_search(
    matrixos_server: MatrixOSServer, served_warehouse: ServedWarehouse
) -> None:
    admin = mx.connect(matrixos_server.http_url, token=served_warehouse.tokens["admin"])
    admin.sql("CREATE TABLE scratch.events AS SELECT 1 AS id, 'a' AS tag")
    admin.sql("INSERT INTO scratch.events VALUES (2, 'b')")
    t = admin.table("scratch.events")
    assert t.version == 1
    assert t.to_arrow(version=0).to_pylist() == [{"id": 1, "tag": "a"}]
    assert sorted(t.to_arrow()["id"].to_pylist()) == [1, 2]
    assert t.to_arrow(columns=["tag"]).column_names == ["tag"]
    assert [h["version"] for h in t.history()] == [1, 0]
    assert t.count() == 2
    hits = admin.search("kb.docs", "vacuum old files", k=1, mode="hybrid")
    assert hits.column("id").to_pylist() == [1] and "_score" in hits.columns
    hits = admin.search("kb.docs", "compacts", k=2, mode="text", columns=["id"])
    assert hits.to_arrow().column("id").to_pylist()[0] == 2
    bob = mx.connect(matrixos_server.http_url, token=served_warehouse.tokens["bob"])
    with pytest.raises(AccessDenied):
        bob.search("kb.docs", "vacuum", k=1)
    with pytest.raises(AccessDenied):
        bob.table("scratch.events")


def test_connect_to_a_server_needs_a_token() -> None:
    with pytest.raises(ConfigError, match="token"):
        mx.connect("http://127.0.0.1:9")
    with pytest.raises(ConfigError, match="storage"):
        mx.connect("http://127.0.0.1:9", token="t", storage="x")


def test_sigterm_drains_running_statements(tmp_path: Path) -> None:
    wh = make_served_warehouse(tmp_path / "warehouse")
    server = MatrixOSServer(wh.uri, tmp_path / "server.log", args=["--grace", "30"]).start()
    c = httpx.Client(
        base_url=server.http_url, headers={"Authorization": f"Bearer {wh.tokens['admin']}"}
    )
    try:
        # About a second of work: it is still running when the signal comes.
        slow = "SELECT count(*) FROM big.nums a, big.nums b WHERE (a.n * b.n) % 7 = 3"
        sid = c.post(STATEMENTS, json={"statement": slow, "wait_timeout": "0s"}).json()[
            "statement_id"
        ]
        server.terminate()
        # The signal is handled asynchronously: /healthz says when the server drains.
        while c.get("/healthz").status_code == 200:
            time.sleep(0.01)
        assert c.get("/healthz").json() == {"status": "draining"}
        refused = c.post(STATEMENTS, json={"statement": "SELECT 1"})
        assert refused.status_code == 503
        assert refused.json()["error_code"] == "TEMPORARILY_UNAVAILABLE"
        assert "shutting down" in refused.json()["message"]
        # The running statement finishes and its rows can be read while the server drains.
        body = c.get(f"{STATEMENTS}/{sid}").json()
        while body["status"]["state"] in ("PENDING", "RUNNING"):
            time.sleep(0.02)
            body = c.get(f"{STATEMENTS}/{sid}").json()
        assert body["status"]["state"] == "SUCCEEDED"
        assert body["result"]["data_array"] == [["48974694"]]
        assert server.wait(60) == 0
    finally:
        c.close()
        server.kill()
    assert "drained: every statement finished" in server.log()


def test_sigterm_cancels_what_outlives_the_grace(tmp_path: Path) -> None:
    wh = make_served_warehouse(tmp_path / "warehouse")
    server = MatrixOSServer(wh.uri, tmp_path / "server.log", args=["--grace", "1"]).start()
    c = httpx.Client(
        base_url=server.http_url, headers={"Authorization": f"Bearer {wh.tokens['admin']}"}
    )
    try:
        endless = f"SELECT count(*) FROM {ENDLESS_FROM}"
        c.post(STATEMENTS, json={"statement": endless, "wait_timeout": "0s"})
        before = mx.connect(wh.uri).table("sales.orders").version
        insert = f"INSERT INTO sales.orders SELECT a.n, 'x', 1.0 FROM {ENDLESS_FROM}"
        c.post(STATEMENTS, json={"statement": insert, "wait_timeout": "0s"})
        time.sleep(0.5)
        server.terminate()
        assert server.wait(60) == 0
    finally:
        c.close()
        server.kill()
    assert "some were canceled" in server.log()
    # The canceled write committed nothing.
    assert mx.connect(wh.uri).table("sales.orders").version == before


def test_openapi_property_run_finds_no_server_error(
    matrixos_server: MatrixOSServer, served_warehouse: ServedWarehouse, tmp_path: Path
) -> None:
    st = Path(sys.executable).with_name("schemathesis")
    cmd = [
        str(st), "run", f"{matrixos_server.http_url}/openapi.json",
        "--checks", "not_a_server_error",
        "--max-examples", "15",
        "--header", f"Authorization: Bearer {served_warehouse.tokens['bob']}",
        "--exclude-path-regex", "/cancel$",
        "--request-timeout", "60",
        "--workers", "1",
    ]  # fmt: skip
    # In tmp_path: schemathesis keeps a .schemathesis/ folder where it runs.
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]


def test_limits_timeout_concurrency_and_result_size(tmp_path: Path) -> None:
    wh = make_served_warehouse(tmp_path / "warehouse")
    args = ["--statement-timeout", "3", "--max-statements-per-user", "1"]
    args += ["--max-result-rows", "10"]
    server = MatrixOSServer(wh.uri, tmp_path / "server.log", args=args).start()
    c = httpx.Client(
        base_url=server.http_url, headers={"Authorization": f"Bearer {wh.tokens['admin']}"}
    )
    other = {"Authorization": f"Bearer {wh.tokens['alice']}"}
    try:
        # Warm: the server's first statement opens its engine, which is not what is timed out.
        assert c.post(STATEMENTS, json={"statement": "SELECT 1"}, headers=other).status_code == 200
        endless = f"SELECT count(*) FROM {ENDLESS_FROM}"
        sid = c.post(STATEMENTS, json={"statement": endless, "wait_timeout": "0s"}).json()[
            "statement_id"
        ]
        busy = c.post(STATEMENTS, json={"statement": "SELECT 1"})
        assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
        assert busy.json()["sqlstate"] == "53000"
        # Another user is not held back by admin's statement.
        alone = c.post(STATEMENTS, json={"statement": "SELECT 1"}, headers=other)
        assert alone.status_code == 200, alone.text
        body = c.get(f"{STATEMENTS}/{sid}").json()
        while body["status"]["state"] in ("PENDING", "RUNNING"):
            time.sleep(0.05)
            body = c.get(f"{STATEMENTS}/{sid}").json()
        assert body["status"]["state"] == "FAILED"
        assert body["status"]["error"]["sqlstate"] == "57014"
        assert "statement timeout" in body["status"]["error"]["message"]
        rows = c.post(STATEMENTS, json={"statement": "SELECT n FROM big.nums"}).json()
        assert rows["manifest"]["total_row_count"] == 10 and rows["manifest"]["truncated"]
    finally:
        c.close()
        server.stop()


def test_a_server_on_s3_with_a_postgres_catalog(
    tmp_path: Path, s3_server: Any, postgres_server: Any
) -> None:
    uri = f"s3://{s3_server.make_bucket()}/wh"
    catalog = postgres_server.url(postgres_server.create_database())
    wh = make_served_warehouse(uri, storage_options=s3_server.storage_options, catalog_url=catalog)
    server = MatrixOSServer(
        uri, tmp_path / "server.log", args=["--catalog-url", catalog],
        env=dict(s3_server.storage_options),
    ).start()  # fmt: skip
    try:
        alice = mx.connect(server.http_url, token=wh.tokens["alice"])
        assert alice.tables() == ["main.sales.customers", "main.sales.orders"]
        got = alice.sql(
            "SELECT sum(amount) AS s FROM sales.orders WHERE id > :i", parameters={"i": 2}
        )
        assert got.scalar() == 120.0
        admin = mx.connect(server.http_url, token=wh.tokens["admin"])
        admin.sql("INSERT INTO sales.orders VALUES (6, 'c0', 60.0)")
        assert admin.table("sales.orders").to_arrow(version=0).num_rows == 5
        assert alice.sql("SELECT count(*) FROM sales.orders").scalar() == 6
        with pytest.raises(AccessDenied):
            alice.sql("SELECT * FROM hr.salaries")
    finally:
        server.stop()
