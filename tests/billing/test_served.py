"""``matrixos serve`` meters every statement to the user who ran it, and refuses the statements
of a user whose prepaid credit is used up (HTTP 402); the server's usage and ledger agree."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path

import httpx
import pyarrow as pa
import pytest

import matrixos as mx
from matrixos.catalog.accounts import Accounts
from matrixos.catalog.billing import Billing
from matrixos.errors import AccessDenied, OutOfCredit
from tests.server._serve import MatrixOSServer

STATEMENTS = "/api/2.0/sql/statements"


def test_served_statements_are_metered_and_stopped_at_zero(tmp_path: Path) -> None:
    uri = str(tmp_path / "wh")
    degrees = tmp_path / "degrees.json"
    degrees.write_text('{"CPU": 312}')  # a core-second is 1/3600 degree: costs show at once
    with mx.connect(uri) as lh:
        lh.create_table("sales.orders", [{"id": i} for i in range(5)])
        accounts = Accounts(lh.catalog)
        tokens = {}
        for name in ("alice", "bob", "admin"):
            accounts.create(name, admin=name == "admin")
            tokens[name] = accounts.create_token(name)
        accounts.grant("USE CATALOG", "main", "alice")
        accounts.grant("USE SCHEMA", "main.sales", "alice")
        accounts.grant("SELECT", "main.sales", "alice")
        lh.accounts.credit("alice", "0.000000001")
    server = MatrixOSServer(
        uri, tmp_path / "server.log", env={"MATRIXOS_DEGREE_TABLE": str(degrees)}
    ).start()
    try:
        alice, bob, admin = (
            httpx.Client(
                base_url=server.http_url,
                headers={"Authorization": f"Bearer {tokens[name]}"},
                timeout=60,
            )
            for name in ("alice", "bob", "admin")
        )
        for _ in range(2):  # bob was never credited: billed, not stopped
            r = bob.post(STATEMENTS, json={"statement": "SELECT 1 AS one"})
            assert r.status_code == 200 and r.json()["status"]["state"] == "SUCCEEDED"
        first = alice.post(STATEMENTS, json={"statement": "SELECT count(*) FROM sales.orders"})
        assert first.json()["result"]["data_array"] == [["5"]]
        # The statement's charge is booked within a second; then alice is refused.
        deadline = time.monotonic() + 60
        while True:
            r = alice.post(STATEMENTS, json={"statement": "SELECT 1"})
            if r.status_code != 200 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert r.status_code == 402, r.text
        body = r.json()
        assert "alice has -0." in body["message"] and "statements are stopped" in body["message"]

        # The billing routes: alice reads her own credit, alerts and usage, nobody else's.
        mine = alice.get("/api/2.0/billing/accounts/alice").json()
        assert Decimal(mine["balance"]) < 0 and mine["credited"] == "0.000000001"
        assert [a["threshold"] for a in mine["alerts"]] == [50, 75, 90]
        assert alice.get("/api/2.0/billing/accounts/bob").status_code == 403
        assert [
            a["account"] for a in alice.get("/api/2.0/billing/accounts").json()["accounts"]
        ] == ["alice"]
        kinds = [
            e["kind"] for e in alice.get("/api/2.0/billing/accounts/alice/ledger").json()["entries"]
        ]
        assert kinds[0] == "credit" and set(kinds[1:]) == {"charge"}
        used = alice.get("/api/2.0/billing/usage", params={"by": "job"}).json()["rows"]
        assert {r["account"] for r in used} == {"alice"} and used[0]["job"] == "sql"
        assert alice.get("/api/2.0/billing/usage", params={"account": "bob"}).status_code == 403
        assert alice.get("/api/2.0/billing/usage", params={"by": "week"}).status_code in (400, 422)
        everyone = admin.get("/api/2.0/billing/usage").json()["rows"]
        assert {"alice", "bob"} <= {r["account"] for r in everyone}
        # The remote SDK: the same usage as Arrow, and the refusal as OutOfCredit.
        with mx.connect(server.http_url, token=tokens["alice"]) as remote:
            table = remote.usage(by="job")
            assert set(table.column("account").to_pylist()) == {"alice"}
            assert table.schema.field("degrees").type == pa.decimal128(38, 9)
            with pytest.raises(OutOfCredit, match="statements are stopped"):
                remote.sql("SELECT 1")
            assert remote.accounts.balance("alice") < 0
            assert remote.accounts.ledger("alice", limit=1)[0]["kind"] == "charge"
            with pytest.raises(AccessDenied):
                remote.accounts.credit("alice", 1)
            with pytest.raises(AccessDenied):
                remote.accounts.balance("bob")
        # Only an admin credits; then alice's statements run again.
        r = alice.post("/api/2.0/billing/accounts/alice/credit", json={"degrees": "5"})
        assert r.status_code == 403
        r = admin.post(
            "/api/2.0/billing/accounts/alice/credit", json={"degrees": "5", "note": "top-up"}
        )
        assert r.status_code == 200 and Decimal(r.json()["balance"]) > 4
        r = alice.post(STATEMENTS, json={"statement": "SELECT 2 AS two"})
        assert r.status_code == 200 and r.json()["result"]["data_array"] == [["2"]]
        assert (
            admin.post("/api/2.0/billing/accounts/nobody/credit", json={"degrees": 1}).status_code
            == 404
        )
    finally:
        assert server.stop() == 0  # SIGTERM: the meter writes what it holds
    with mx.connect(uri) as lh:
        rows = lh.sql(
            "SELECT account, principal, count(*), count(statement_id), sum(degrees) "
            "FROM system.billing.usage WHERE resource = 'cpu' GROUP BY ALL ORDER BY account"
        ).fetchall()
        by_account = {r[0]: r for r in rows}
        assert by_account["bob"][1:4] == ("bob", 2, 2)
        assert by_account["alice"][1] == "alice" and by_account["alice"][2] >= 2
        billing = Billing(lh.catalog)
        for account, *_, used in rows:
            s = billing.summary(account)
            assert s.consumed == used  # every statement row charged, nothing else
            assert s.balance == s.credited - used
        assert billing.balance("alice") == Decimal("5.000000001") - by_account["alice"][4]
