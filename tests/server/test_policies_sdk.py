"""The remote SDK defines row filters and column masks with the embedded ``Table``'s calls
(``set_row_filter``, ``set_mask``, ``drop_*``, ``policies``) over HTTP: an admin's hold for
alice's reads at once; a user who does not own the table is refused."""

from __future__ import annotations

import pytest

import matrixos as mx
from matrixos.catalog.policies import Policy
from matrixos.errors import AccessDenied

try:
    from tests.server._serve import MatrixOSServer, ServedWarehouse
except ModuleNotFoundError:
    from _serve import MatrixOSServer, ServedWarehouse  # type: ignore[no-redef]


def test_remote_sdk_sets_lists_and_drops_policies(
    matrixos_server: MatrixOSServer, served_warehouse: ServedWarehouse
) -> None:
    url, tokens = matrixos_server.http_url, served_warehouse.tokens
    with (
        mx.connect(url, token=tokens["admin"]) as admin,
        mx.connect(url, token=tokens["alice"]) as alice,
        mx.connect(url, token=tokens["bob"]) as bob,
    ):
        orders = admin.table("sales.orders")
        orders.set_row_filter("customer = 'c1'", account="alice")
        orders.set_mask("amount", "-1", account="alice")
        got = orders.policies()
        assert all(isinstance(p, Policy) for p in got)
        assert sorted((p.kind, p.account, p.column, p.expression) for p in got) == [
            ("mask", "alice", "amount", "-1"),
            ("row filter", "alice", "", "customer = 'c1'"),
        ]
        rows = alice.table("sales.orders").to_arrow().sort_by("id").to_pylist()
        assert [(r["id"], r["amount"]) for r in rows] == [(1, -1.0), (3, -1.0), (5, -1.0)]
        assert alice.sql("SELECT count(*) FROM sales.orders").scalar() == 3
        # alice sees the policies that apply to her; she may not change them
        assert len(alice.table("sales.orders").policies()) == 2
        with pytest.raises(AccessDenied):
            alice.table("sales.orders").drop_row_filter(account="alice")
        with pytest.raises(AccessDenied):
            bob.table("sales.orders").set_row_filter("true", account="bob")

        assert orders.drop_row_filter(account="alice") is True
        assert orders.drop_row_filter(account="alice") is False
        assert orders.drop_mask("amount", account="alice") is True
        assert orders.policies() == []
        assert alice.sql("SELECT sum(amount) FROM sales.orders").scalar() == 150.0
