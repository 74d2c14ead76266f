"""The HTTP server reuses a checked token's principal for a moment (``http_auth.TokenCache``):
a revoked token, or a grant revoked through the server, still takes effect."""

from __future__ import annotations

import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import httpx

import matrixos as mx
from matrixos.catalog import open_catalog
from matrixos.catalog.accounts import Accounts
from matrixos.catalog.base import AccountInfo, TokenInfo
from matrixos.server.http_auth import TokenCache

try:
    from tests.server._serve import MatrixOSServer, ServedWarehouse
except ModuleNotFoundError:
    from _serve import MatrixOSServer, ServedWarehouse  # type: ignore[no-redef]

STATEMENTS = "/api/2.0/sql/statements"
CLIENT = "127.0.0.1"


def test_cache_keeps_a_checked_token_until_its_ttl_or_expiry(tmp_path: Path) -> None:
    with mx.connect(str(tmp_path / "wh")) as lh:
        accounts = Accounts(lh.catalog)
        accounts.create("ann")
        token = accounts.create_token("ann")
        # Long enough to be checked before it expires on a loaded machine.
        brief_made = time.monotonic()
        brief = accounts.create_token("ann", expires_in=5.0)
        cache = TokenCache(accounts, ttl_s=3600)
        assert cache.cached(token, CLIENT) is None  # nothing before the first check
        assert cache.authenticate_token(token, client=CLIENT).name == "ann"
        hit = cache.cached(token, CLIENT)
        assert hit is not None and hit.name == "ann"
        # Keyed by address too (a new address is a new login, its last use recorded).
        assert cache.cached(token, "127.0.0.2") is None
        assert cache.cached(token + "x", CLIENT) is None
        # Never past the token's own expiry, however long the TTL.
        assert cache.authenticate_token(brief, client=CLIENT).name == "ann"
        assert cache.cached(brief, CLIENT) is not None
        time.sleep(max(0.0, brief_made + 5.2 - time.monotonic()))
        assert cache.cached(brief, CLIENT) is None
        assert cache.cached(token, CLIENT) is not None
        cache.clear()
        assert cache.cached(token, CLIENT) is None
        # A change of the catalog's accounts, grants or tokens (any process) drops the cache;
        # a token's last use (written at each check) does not.
        assert cache.authenticate_token(token, client=CLIENT).name == "ann"
        assert cache.authenticate_token(token, client="127.0.0.2").name == "ann"
        assert cache.cached(token, CLIENT) is not None
        with mx.connect(str(tmp_path / "wh")) as other:
            Accounts(other.catalog).create("bob")
        assert cache.cached(token, CLIENT) is None
        assert cache.authenticate_token(token, client=CLIENT).name == "ann"
        with mx.connect(str(tmp_path / "wh")) as other:
            Accounts(other.catalog).revoke_token(brief.split("_")[1])
        assert cache.cached(token, CLIENT) is None
        # A TTL of 0 keeps nothing.
        none = TokenCache(accounts, ttl_s=0)
        none.authenticate_token(token, client=CLIENT)
        assert none.cached(token, CLIENT) is None


def _count(client: httpx.Client, table: str) -> httpx.Response:
    return client.post(
        STATEMENTS, json={"statement": f"SELECT count(*) FROM {table}", "wait_timeout": "10s"}
    )


def test_revocations_take_effect_through_the_cache(
    matrixos_server: MatrixOSServer, served_warehouse: ServedWarehouse
) -> None:
    url = matrixos_server.http_url
    with mx.connect(served_warehouse.uri) as lh:
        mine = Accounts(lh.catalog).create_token("alice")
    alice = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {mine}"}, timeout=30)
    admin_token = served_warehouse.tokens["admin"]
    admin = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin_token}"})
    for _ in range(3):  # checked once, then served from the cache
        assert _count(alice, "sales.orders").status_code == 200

    # A grant revoked over HTTP counts from alice's very next request.
    r = admin.post(STATEMENTS, json={"statement": "REVOKE SELECT ON SCHEMA main.sales FROM alice"})
    assert r.status_code == 200 and r.json()["status"]["state"] == "SUCCEEDED", r.text
    denied = _count(alice, "sales.orders")
    assert denied.status_code == 403 and "SELECT" in denied.json()["message"], denied.text
    r = admin.post(STATEMENTS, json={"statement": "GRANT SELECT ON SCHEMA main.sales TO alice"})
    assert r.status_code == 200, r.text
    assert _count(alice, "sales.orders").status_code == 200

    # A token revoked by another process (the CLI) stops working at its next request: the
    # catalog's change counter moved (no waiting out the TTL).
    assert _count(alice, "sales.orders").status_code == 200  # cached again
    with mx.connect(served_warehouse.uri) as lh:
        Accounts(lh.catalog).revoke_token(mine.split("_")[1])
    gone = _count(alice, "sales.orders")
    assert gone.status_code == 401 and gone.json()["error_code"] == "UNAUTHENTICATED"


def test_the_catalog_counter_moves_when_a_token_is_revoked_not_when_used(
    catalog_url: str,
) -> None:
    """Revision 0005 (SQLite and PostgreSQL): what lets ``TokenCache`` see another process's
    revocation at the next request, while the last use written at every check moves nothing."""
    cat = open_catalog(catalog_url)
    try:
        cat.create_account(AccountInfo("ann"))
        info = TokenInfo("t1", "ann", "hash")
        cat.create_token(info)
        n0 = cat.changes()
        used = replace(info, last_used_at=datetime.now(UTC), last_used_from="127.0.0.1")
        cat.update_token(used)
        assert cat.changes() == n0
        cat.update_token(replace(used, revoked_at=datetime.now(UTC)))
        n1 = cat.changes()
        assert n1 is not None and n0 is not None and n1 > n0
        cat.update_token(replace(used, expires_at=datetime.now(UTC)))
        assert cat.changes() != n1
    finally:
        cat.close()
