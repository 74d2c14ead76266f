"""``GET /api/2.0/lineage`` on a real ``matrixos serve``: a table's edges as the token's
principal may see them (403 for a table it may not read)."""

from __future__ import annotations

import os
from pathlib import Path

import httpx

import matrixos as mx
from matrixos.catalog.accounts import Accounts

try:
    from tests.server._serve import MatrixOSServer
except ModuleNotFoundError:
    from _serve import MatrixOSServer  # type: ignore[no-redef]


def _chain(lh: mx.Lakehouse) -> None:
    lh.create_table("s.a", [{"id": 1}])
    lh.sql("CREATE TABLE s.b AS SELECT * FROM s.a")
    lh.sql("CREATE TABLE s.c AS SELECT * FROM s.b")
    lh.sql("CREATE TABLE s.d AS SELECT * FROM s.c")


def test_http_route_answers_as_the_token_principal(tmp_path: Path) -> None:
    uri = str(tmp_path / "wh")
    with mx.connect(uri) as lh:
        _chain(lh)
        accounts = Accounts(lh.catalog)
        accounts.create("admin", admin=True)
        accounts.create("bob")
        tokens = {n: accounts.create_token(n) for n in ("admin", "bob")}
    server = MatrixOSServer(uri, tmp_path / "server.log").start()
    try:
        for name, want in (("admin", 200), ("bob", 403)):
            r = httpx.get(
                f"{server.http_url}/api/2.0/lineage",
                params={"table": "s.b", "direction": "up"},
                headers={"Authorization": f"Bearer {tokens[name]}"},
                timeout=60,
            )
            assert r.status_code == want, r.text
        body = httpx.get(
            f"{server.http_url}/api/2.0/lineage",
            params={"table": "s.b"},
            headers={"Authorization": f"Bearer {tokens['admin']}"},
            timeout=60,
        ).json()
        assert body["table"] == "main.s.b"
        assert {
            (e["direction"], e["source"]["name"], e["target"]["name"]) for e in body["edges"]
        } == {
            ("up", "main.s.a", "main.s.b"),
            ("down", "main.s.b", "main.s.c"),
            ("down", "main.s.c", "main.s.d"),
        }
    finally:
        server.stop()
    assert os.path.exists(uri)
