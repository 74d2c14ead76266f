"""``matrixos serve`` meters every statement to the user who ran it, and refuses the statements
of a user whose prepaid credit is used up (HTTP 402); the server's usage and ledger agree."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path

import httpx

import matrixos as mx
from matrixos.catalog.accounts import Accounts
from matrixos.catalog.billing import Billing
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
        for name in ("alice", "bob"):
            accounts.create(name)
            tokens[name] = accounts.create_token(name)
        accounts.grant("USE CATALOG", "main", "alice")
        accounts.grant("USE SCHEMA", "main.sales", "alice")
        accounts.grant("SELECT", "main.sales", "alice")
        lh.accounts.credit("alice", "0.000000001")
    server = MatrixOSServer(
        uri, tmp_path / "server.log", env={"MATRIXOS_DEGREE_TABLE": str(degrees)}
    ).start()
    try:
        alice, bob = (
            httpx.Client(
                base_url=server.http_url,
                headers={"Authorization": f"Bearer {tokens[name]}"},
                timeout=60,
            )
            for name in ("alice", "bob")
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
        assert billing.balance("alice") == Decimal("0.000000001") - by_account["alice"][4]
