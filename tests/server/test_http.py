"""The HTTP statement API against a real ``matrixos serve`` process on 127.0.0.1.

The server (tests/server/conftest.py) serves a warehouse with three accounts: ``admin``,
``alice`` (reads schema ``sales``) and ``bob`` (nothing). Its chunks hold 1,000 rows.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

try:
    from tests.server._serve import MatrixOSServer, ServedWarehouse
except ModuleNotFoundError:
    from _serve import MatrixOSServer, ServedWarehouse  # type: ignore[no-redef]

STATEMENTS = "/api/2.0/sql/statements"
FINAL = {"SUCCEEDED", "FAILED", "CANCELED", "CLOSED"}
ENDLESS = "SELECT count(*) FROM big.nums a, big.nums b, big.nums c WHERE (a.n * b.n + c.n) % 7 = 3"
# About 160,000 rows found over 1.2 billion pairs: rows keep coming for seconds.
SLOW_ROWS = (
    "SELECT a.n, b.n AS m FROM big.nums a, big.nums b, (SELECT n FROM big.nums WHERE n < 3) c "
    "WHERE (a.n * b.n + c.n) % 3000 = 1"
)


@pytest.fixture(scope="module")
def clients(
    matrixos_server: MatrixOSServer, served_warehouse: ServedWarehouse
) -> Iterator[dict[str, httpx.Client]]:
    out = {
        name: httpx.Client(
            base_url=matrixos_server.http_url,
            headers={"Authorization": f"Bearer {token}"},
            timeout=120,
        )
        for name, token in served_warehouse.tokens.items()
    }
    out["anonymous"] = httpx.Client(base_url=matrixos_server.http_url, timeout=30)
    yield out
    for c in out.values():
        c.close()


def submit(client: httpx.Client, statement: str, **fields: Any) -> httpx.Response:
    return client.post(STATEMENTS, json={"statement": statement, **fields})


def poll(client: httpx.Client, statement_id: str, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(f"{STATEMENTS}/{statement_id}").json()
        if body["status"]["state"] in FINAL or time.monotonic() > deadline:
            return body
        time.sleep(0.05)


def wait_running(client: httpx.Client, statement_id: str) -> None:
    deadline = time.monotonic() + 120
    while client.get(f"{STATEMENTS}/{statement_id}").json()["status"]["state"] == "PENDING":
        assert time.monotonic() < deadline, "the statement never started"
        time.sleep(0.02)


# -- lifecycle, chunks, formats ------------------------------------------------------------
def test_a_statement_answers_inline_when_it_ends_within_the_wait(clients: dict) -> None:
    r = submit(clients["alice"], "SELECT id, customer, amount FROM sales.orders ORDER BY id")
    assert r.status_code == 200
    body = r.json()
    assert body["status"]["state"] == "SUCCEEDED"
    cols = body["manifest"]["schema"]["columns"]
    assert [(c["name"], c["type_name"]) for c in cols] == [
        ("id", "LONG"), ("customer", "STRING"), ("amount", "DOUBLE")
    ]  # fmt: skip
    assert body["manifest"]["total_row_count"] == 5
    # Databricks' JSON_ARRAY: every value as text.
    assert body["result"]["data_array"][0] == ["1", "c1", "10"]


def test_wait_timeout_0s_returns_at_once_and_the_client_polls(clients: dict) -> None:
    r = submit(
        clients["alice"],
        "SELECT count(*) AS c FROM sales.orders a, sales.orders b",
        wait_timeout="0s",
    )
    assert r.status_code == 200
    first = r.json()
    assert first["status"]["state"] in {"PENDING", "RUNNING", "SUCCEEDED"}
    done = poll(clients["alice"], first["statement_id"])
    assert done["status"]["state"] == "SUCCEEDED"
    assert done["result"]["data_array"] == [["25"]]


def test_a_large_result_comes_in_chunks(clients: dict) -> None:
    alice_admin = clients["admin"]
    body = submit(alice_admin, "SELECT n FROM big.nums WHERE n < 2500 ORDER BY n").json()
    m = body["manifest"]
    assert m["total_row_count"] == 2500 and m["total_chunk_count"] == 3
    assert [c["row_offset"] for c in m["chunks"]] == [0, 1000, 2000]
    assert body["result"]["next_chunk_index"] == 1
    rows = list(body["result"]["data_array"])
    link = body["result"]["next_chunk_internal_link"]
    while link:
        chunk = alice_admin.get(link).json()
        rows += chunk["data_array"]
        link = chunk.get("next_chunk_internal_link")
    assert [int(r[0]) for r in rows] == list(range(2500))
    bad = alice_admin.get(f"{STATEMENTS}/{body['statement_id']}/result/chunks/3")
    assert bad.status_code == 400 and "no chunk 3" in bad.json()["message"]


def test_arrow_stream_chunks_are_arrow_ipc(clients: dict) -> None:
    c = clients["admin"]
    body = submit(c, "SELECT n, n * 2 AS m FROM big.nums WHERE n < 1500", format="ARROW_STREAM")
    body = body.json()
    assert body["manifest"]["format"] == "ARROW_STREAM"
    links = [body["result"]["external_links"][0]["external_link"]]
    links.append(c.get(f"{STATEMENTS}/{body['statement_id']}/result/chunks/1").json()[
        "external_links"][0]["external_link"])  # fmt: skip
    tables = []
    for link in links:
        r = c.get(link)
        assert r.headers["content-type"] == "application/vnd.apache.arrow.stream"
        tables.append(pa.ipc.open_stream(io.BytesIO(r.content)).read_all())
    t = pa.concat_tables(tables).sort_by("n")
    assert t.schema.field("m").type == pa.int64()
    assert t.column("m").to_pylist() == [2 * i for i in range(1500)]


def test_csv_chunks_carry_the_header_once(clients: dict) -> None:
    c = clients["admin"]
    body = submit(c, "SELECT n FROM big.nums WHERE n < 1200 ORDER BY n", format="CSV").json()
    sid = body["statement_id"]
    first = c.get(f"{STATEMENTS}/{sid}/result/chunks/0/data")
    second = c.get(f"{STATEMENTS}/{sid}/result/chunks/1/data")
    assert first.headers["content-type"].startswith("text/csv")
    assert first.text.splitlines()[:2] == ['"n"', "0"] and second.text.splitlines()[0] == "1000"
    whole = pacsv.read_csv(io.BytesIO(first.content + second.content))
    assert whole.column("n").to_pylist() == list(range(1200))


def test_inline_disposition_is_for_json_only(clients: dict) -> None:
    r = submit(clients["alice"], "SELECT 1", format="CSV", disposition="INLINE")
    assert r.status_code == 400 and "EXTERNAL_LINKS" in r.json()["message"]


def test_row_and_byte_limits_truncate(clients: dict) -> None:
    c = clients["admin"]
    body = submit(c, "SELECT n FROM big.nums ORDER BY n", row_limit=7).json()
    assert body["manifest"]["total_row_count"] == 7 and body["manifest"]["truncated"] is True
    body = submit(c, "SELECT n FROM big.nums ORDER BY n", byte_limit=800).json()
    assert 0 < body["manifest"]["total_row_count"] <= 100 and body["manifest"]["truncated"]
    full = submit(c, "SELECT n FROM big.nums WHERE n < 3", row_limit=10).json()
    assert full["manifest"]["truncated"] is False


def test_nulls_and_nested_values_in_json(clients: dict) -> None:
    body = submit(
        clients["alice"], "SELECT NULL::INT AS a, [1, 2] AS b, {'k': 'v'} AS c, 'x' AS d"
    ).json()
    assert body["result"]["data_array"] == [[None, "[1, 2]", '{"k": "v"}', "x"]]


# -- parameters and defaults ---------------------------------------------------------------
def test_parameters_bind_as_literals(clients: dict) -> None:
    c = clients["alice"]
    body = submit(
        c,
        "SELECT name FROM sales.customers WHERE name = :name",
        parameters=[{"name": "name", "value": "O'Hara"}],
    ).json()
    assert body["result"]["data_array"] == [["O'Hara"]]
    # An injection attempt stays one string: no row is named like that.
    body = submit(
        c,
        "SELECT count(*) FROM sales.customers WHERE name = :name",
        parameters=[{"name": "name", "value": "x' OR '1'='1"}],
    ).json()
    assert body["result"]["data_array"] == [["0"]]
    body = submit(
        c,
        "SELECT count(*) FROM sales.orders WHERE amount > :a AND id <> :skip",
        parameters=[{"name": "a", "value": "15", "type": "DOUBLE"},
                    {"name": "skip", "value": "5", "type": "INT"}],
    ).json()  # fmt: skip
    assert body["result"]["data_array"] == [["3"]]


def test_parameter_errors(clients: dict) -> None:
    c = clients["alice"]
    missing = submit(c, "SELECT id FROM sales.orders WHERE id = :x")
    assert missing.status_code == 400 and missing.json()["sqlstate"] == "42P02"
    one_is = "SELECT 1 WHERE 1 = :x"
    bad_type = submit(c, one_is, parameters=[{"name": "x", "value": "1", "type": "INT); --"}])
    assert bad_type.status_code == 400 and "invalid type" in bad_type.json()["message"]
    wrong_value = submit(c, one_is, parameters=[{"name": "x", "value": "abc", "type": "INT"}])
    assert wrong_value.status_code == 400 and wrong_value.json()["sqlstate"].startswith("22")


def test_catalog_and_schema_default_unqualified_names(clients: dict) -> None:
    body = submit(
        clients["alice"],
        "WITH o AS (SELECT * FROM orders) SELECT count(*) FROM o JOIN customers c "
        "ON o.customer = c.id",
        catalog="main",
        schema="sales",
    ).json()
    assert body["status"]["state"] == "SUCCEEDED", body
    assert body["result"]["data_array"] == [["5"]]


# -- cancel --------------------------------------------------------------------------------
def test_cancel_stops_a_long_query(clients: dict) -> None:
    c = clients["admin"]
    sid = submit(c, ENDLESS, wait_timeout="0s").json()["statement_id"]
    wait_running(c, sid)
    assert c.post(f"{STATEMENTS}/{sid}/cancel").status_code == 200
    assert poll(c, sid, timeout=120)["status"]["state"] == "CANCELED"
    # The server keeps serving.
    assert submit(c, "SELECT 1 AS one").json()["result"]["data_array"] == [["1"]]


def test_on_wait_timeout_cancel(clients: dict) -> None:
    r = submit(clients["admin"], ENDLESS, wait_timeout="5s", on_wait_timeout="CANCEL")
    assert r.status_code == 200 and r.json()["status"]["state"] == "CANCELED"


def test_close_releases_the_rows(clients: dict) -> None:
    c = clients["alice"]
    sid = submit(c, "SELECT * FROM sales.orders").json()["statement_id"]
    assert c.delete(f"{STATEMENTS}/{sid}").status_code == 200
    assert c.get(f"{STATEMENTS}/{sid}").json()["status"]["state"] == "CLOSED"
    r = c.get(f"{STATEMENTS}/{sid}/result/chunks/0")
    assert r.status_code == 400 and "CLOSED" in r.json()["message"]


# -- errors --------------------------------------------------------------------------------
def test_sql_errors_carry_sqlstate_and_position(clients: dict) -> None:
    r = submit(clients["alice"], "SELECT id\nFROM sales.orders WHERE (id")
    assert r.status_code == 400
    body = r.json()
    assert body["status"]["state"] == "FAILED"
    err = body["status"]["error"]
    assert err["sqlstate"] == "42601" and err["line"] == 2 and err["column"] > 1
    assert body["error_code"] == "INVALID_PARAMETER_VALUE"


def test_missing_table_is_404(clients: dict) -> None:
    r = submit(clients["admin"], "SELECT * FROM sales.nope")
    assert r.status_code == 404 and r.json()["sqlstate"] == "42P01"


def test_request_mistakes_are_400_not_500(clients: dict) -> None:
    c = clients["alice"]
    for bad in (
        {"statement": "SELECT 1", "wait_timeout": "3s"},
        {"statement": "SELECT 1", "wait_timeout": "ten"},
        {"statement": "SELECT 1", "format": "XML"},
        {"statement": ""},
        {"statement": "SELECT 1", "row_limit": -1},
        {"statement": "SELECT 1", "surprise": True},
    ):
        r = c.post(STATEMENTS, json=bad)
        assert r.status_code == 400, (bad, r.text)
        assert r.json()["error_code"] == "INVALID_PARAMETER_VALUE"
    r = c.post(STATEMENTS, content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert c.get(f"{STATEMENTS}/does-not-exist").status_code == 404


# -- who may do what -----------------------------------------------------------------------
def test_no_token_or_a_bad_token_is_401(clients: dict, served_warehouse: ServedWarehouse) -> None:
    anonymous = clients["anonymous"]
    r = submit(anonymous, "SELECT 1")
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    for token in ("nonsense", served_warehouse.tokens["alice"] + "x", "mxt_abc_def"):
        r = anonymous.post(
            STATEMENTS, json={"statement": "SELECT 1"}, headers={"Authorization": f"Bearer {token}"}
        )
        assert r.status_code == 401, token
    assert anonymous.get("/api/2.0/matrixos/tables").status_code == 401


def test_repeated_failed_logins_are_throttled(clients: dict) -> None:
    anonymous = clients["anonymous"]
    guess = {"Authorization": "Bearer mxt_0123456789abcdef_guess"}
    tables = "/api/2.0/matrixos/tables"
    codes = [anonymous.get(tables, headers=guess).status_code for _ in range(12)]
    assert codes[:10] == [401] * 10 and codes[10:] == [429, 429]
    r = anonymous.get(tables, headers=guess)
    assert int(r.headers["retry-after"]) > 0 and r.json()["sqlstate"] == "53000"
    # Other tokens from the same address are not held back.
    assert clients["alice"].get(tables).status_code == 200


def test_a_user_without_grants_reads_nothing(clients: dict) -> None:
    bob = clients["bob"]
    r = submit(bob, "SELECT * FROM sales.orders")
    assert r.status_code == 403 and r.json()["sqlstate"] == "42501"
    assert bob.get("/api/2.0/matrixos/tables").json() == {"tables": []}
    assert bob.get("/api/2.0/matrixos/tables/sales.orders").status_code == 403
    alice_tables = clients["alice"].get("/api/2.0/matrixos/tables").json()["tables"]
    assert alice_tables == ["main.sales.customers", "main.sales.orders"]
    assert submit(clients["alice"], "SELECT * FROM hr.salaries").status_code == 403


def test_statements_are_private_to_their_owner(clients: dict) -> None:
    sid = submit(clients["alice"], "SELECT * FROM sales.orders").json()["statement_id"]
    for other in ("bob", "admin"):
        assert clients[other].get(f"{STATEMENTS}/{sid}").status_code == 404
        assert clients[other].get(f"{STATEMENTS}/{sid}/result/chunks/0/data").status_code == 404


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM read_csv('/etc/passwd')",
        "SELECT * FROM '/etc/passwd'",
        "COPY sales.orders TO '/tmp/out.csv'",
        "ATTACH '/tmp/x.db' AS x",
        "INSTALL httpfs",
        "SET threads = 1",
        "SELECT * FROM read_parquet('s3://bucket/x.parquet')",
    ],
)
def test_the_sandbox_holds_over_http(clients: dict, sql: str) -> None:
    r = submit(clients["admin"], sql)
    assert r.status_code == 403, r.text
    assert r.json()["sqlstate"] == "42501"


def test_writes_need_grants(clients: dict) -> None:
    r = submit(clients["alice"], "INSERT INTO sales.orders VALUES (9, 'c9', 1.0)")
    assert r.status_code == 403
    r = submit(clients["alice"], "CREATE TABLE sales.mine AS SELECT 1 AS x")
    assert r.status_code == 403
    assert submit(clients["admin"], "SELECT count(*) FROM sales.orders").json()["result"][
        "data_array"] == [["5"]]  # fmt: skip


# -- the server ----------------------------------------------------------------------------
def test_health_metrics_and_openapi(clients: dict) -> None:
    anonymous = clients["anonymous"]
    assert anonymous.get("/healthz").json() == {"status": "ok"}
    submit(clients["alice"], "SELECT 1")
    text = anonymous.get("/metrics").text
    assert 'matrixos_statements_finished_total{state="SUCCEEDED"}' in text
    assert "matrixos_statement_duration_seconds_bucket" in text
    assert 'matrixos_statements{state="RUNNING"}' in text
    spec = anonymous.get("/openapi.json").json()
    assert {"/api/2.0/sql/statements", "/api/2.0/sql/statements/{statement_id}/cancel"} <= set(
        spec["paths"]
    )


def test_tokens_never_reach_the_log(
    clients: dict, matrixos_server: MatrixOSServer, served_warehouse: ServedWarehouse
) -> None:
    for name in ("alice", "bob"):
        submit(clients[name], "SELECT 1")
    submit(clients["anonymous"], "SELECT 1")  # a 401
    log = matrixos_server.log()
    assert "POST /api/2.0/sql/statements" in log  # the log is the one the server writes
    for token in served_warehouse.tokens.values():
        assert token not in log
        assert token.split("_", 2)[2] not in log  # nor the secret part alone


def test_an_arrow_client_gets_every_row_streamed_in_the_answer(clients: dict) -> None:
    c = clients["admin"]
    arrow = {"Accept": "application/vnd.apache.arrow.stream"}
    r = c.post(
        STATEMENTS,
        json={"statement": "SELECT n FROM big.nums WHERE n < 1500 ORDER BY n",
              "format": "ARROW_STREAM"},
        headers=arrow,
    )  # fmt: skip
    assert r.headers["content-type"] == "application/vnd.apache.arrow.stream"
    # All 1,500 rows (two chunks of the result) in one Arrow IPC stream, ended properly.
    assert r.content.endswith(b"\xff\xff\xff\xff\x00\x00\x00\x00")
    table = pa.ipc.open_stream(io.BytesIO(r.content)).read_all()
    assert table.column("n").to_pylist() == list(range(1500))
    # A result whole soon after its first rows goes as one body of known length.
    assert int(r.headers["content-length"]) == len(r.content)
    assert "transfer-encoding" not in r.headers
    # A result streamed whole is released at its end.
    sid = r.headers["x-matrixos-statement-id"]
    assert c.get(f"{STATEMENTS}/{sid}").json()["status"]["state"] == "CLOSED"
    # A failure before any row is still JSON, with its HTTP status.
    bad = c.post(
        STATEMENTS, json={"statement": "SELECT * FROM sales.nope", "format": "ARROW_STREAM"},
        headers=arrow,
    )  # fmt: skip
    assert bad.status_code == 404 and bad.json()["sqlstate"] == "42P01"
    # One that fails after its first rows went out breaks the stream (no end-of-stream
    # marker: no reader takes the rows for the whole result); the statement says why.
    broken = c.post(
        STATEMENTS,
        json={"statement": "SELECT CASE WHEN a.n < 19000 THEN a.n ELSE error('boom') END AS n "
                           "FROM big.nums a, (SELECT n FROM big.nums WHERE n < 100) b",
              "format": "ARROW_STREAM"},
        headers=arrow,
    )  # fmt: skip
    assert broken.status_code == 200, broken.text
    assert broken.headers["content-type"] == "application/vnd.apache.arrow.stream"
    assert not broken.content.endswith(b"\xff\xff\xff\xff\x00\x00\x00\x00")
    with pytest.raises((pa.ArrowInvalid, OSError)):
        pa.ipc.open_stream(io.BytesIO(broken.content)).read_all()
    state = c.get(f"{STATEMENTS}/{broken.headers['x-matrixos-statement-id']}").json()
    assert state["status"]["state"] == "FAILED" and "boom" in state["status"]["error"]["message"]


def test_a_long_arrow_result_streams_from_its_first_rows(clients: dict) -> None:
    """A statement still producing rows streams them (chunked, no length) while it runs; a
    client that goes away midway stops it."""
    c = clients["admin"]
    body = {
        "statement": "SELECT a.n, b.n AS m FROM big.nums a, big.nums b",
        "format": "ARROW_STREAM",
    }
    with c.stream(
        "POST", STATEMENTS, json=body, headers={"Accept": "application/vnd.apache.arrow.stream"}
    ) as r:
        assert r.status_code == 200
        assert r.headers.get("transfer-encoding") == "chunked"
        assert "content-length" not in r.headers
        sid = r.headers["x-matrixos-statement-id"]
        pieces = r.iter_bytes()
        got = b""
        while len(got) < 500_000:  # its first record batch
            got += next(pieces)
        # Rows arrived while the statement still runs.
        assert c.get(f"{STATEMENTS}/{sid}").json()["status"]["state"] == "RUNNING"
        assert got.startswith(b"\xff\xff\xff\xff")  # an Arrow IPC stream's first message
    state = poll(c, sid, timeout=60)["status"]["state"]
    assert state in ("CANCELED", "CLOSED")  # stopped once its client went away


def test_chunks_can_be_followed_while_the_statement_runs(clients: dict) -> None:
    """A plain Databricks-style client: POST with wait_timeout 0s, poll until the manifest
    shows a first chunk, then follow ``next_chunk_internal_link`` from chunk 0 while the
    statement still produces rows (a chunk not final yet is waited for) to the last chunk."""
    c = clients["admin"]
    sid = submit(c, SLOW_ROWS, wait_timeout="0s").json()["statement_id"]
    deadline = time.monotonic() + 120
    while "manifest" not in (body := c.get(f"{STATEMENTS}/{sid}").json()):
        assert body["status"]["state"] in ("PENDING", "RUNNING"), body
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert body["status"]["state"] == "RUNNING"
    assert "total_chunk_count" not in body["manifest"]  # not known yet
    assert body["manifest"]["chunks"][0] == {
        "chunk_index": 0, "row_offset": 0, "row_count": 1000,
        "byte_count": body["manifest"]["chunks"][0]["byte_count"],
    }  # fmt: skip
    link: str | None = f"{STATEMENTS}/{sid}/result/chunks/0"
    rows: list[list[str]] = []
    states = []
    while link is not None:
        chunk = c.get(link)
        assert chunk.status_code == 200, chunk.text
        part = chunk.json()
        assert part["row_offset"] == len(rows) and part["row_count"] == len(part["data_array"])
        rows += part["data_array"]
        if len(states) < 3:
            states.append(c.get(f"{STATEMENTS}/{sid}").json()["status"]["state"])
        link = part.get("next_chunk_internal_link")
        assert (link is None) == ("next_chunk_index" not in part)
    assert states[0] == "RUNNING"  # read while the statement still produced rows
    done = poll(c, sid)
    assert done["status"]["state"] == "SUCCEEDED"
    assert done["manifest"]["total_row_count"] == len(rows) > 100_000
    assert done["manifest"]["total_chunk_count"] == len(done["manifest"]["chunks"])
    assert len(rows) == len({(a, b) for a, b in rows})  # each row once
    # A running statement's chunk past its end is not there once it ends.
    assert c.get(f"{STATEMENTS}/{sid}/result/chunks/{len(rows)}").status_code == 400


def test_statements_and_logins_are_audited(clients: dict) -> None:
    alice = clients["alice"]
    submit(alice, "SELECT * FROM sales.customers WHERE name = 'Secret-Literal'")
    submit(alice, "SELECT * FROM hr.salaries")  # denied
    clients["anonymous"].get(
        "/api/2.0/matrixos/tables", headers={"Authorization": "Bearer mxt_feedface_nope"}
    )
    query = (
        "SELECT principal, action, outcome, protocol, client_address, statement, object "
        "FROM system.access.audit WHERE protocol = 'http'"
    )
    redacted = "SELECT * FROM sales.customers WHERE name = ?"
    deadline = time.monotonic() + 60
    while True:  # the server writes its audit rows in batches, about once a second
        r = submit(clients["admin"], query)
        rows = r.json()["result"]["data_array"] if r.status_code == 200 else []
        if any(row[5] == redacted for row in rows) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert ["alice", "SELECT", "ok", "http", "127.0.0.1", redacted] in [row[:6] for row in rows]
    assert any(row[0] == "alice" and row[2] == "denied" for row in rows)
    assert any(row[:2] == ["alice", "LOGIN"] and row[2] == "ok" for row in rows)
    failed = [row for row in rows if row[:2] == ["unknown", "LOGIN"] and "feedface" in row[6]]
    assert failed and failed[0][2] == "denied" and failed[0][6] == "token feedface"
    leaks = [row for row in rows if "Secret-Literal" in str(row) or "_nope" in str(row)]
    assert leaks == []
    assert submit(alice, query).status_code == 403  # the audit is for admins
