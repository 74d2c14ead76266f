"""Grants from the catalog, enforced for SQL and the SDK alike: Unity Catalog's model (inherited
downward, deny by default, USE CATALOG + USE SCHEMA to reach inside), group grants, owners and
admins, on a local warehouse and on S3 (its catalog the commit log in the bucket)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import matrixos as mx
from matrixos.catalog.accounts import Accounts
from matrixos.errors import AccessDenied

try:
    from tests._servers import S3Server, WarehouseTarget
except ModuleNotFoundError:
    from _servers import S3Server, WarehouseTarget  # type: ignore[no-redef]


@pytest.fixture
def wh(lh: mx.Lakehouse) -> Iterator[tuple[mx.Lakehouse, Accounts]]:
    lh.create_table("sales.orders", [{"id": 1, "amount": 10.0}, {"id": 2, "amount": 5.0}])
    lh.create_table("sales.items", [{"sku": "a"}])
    lh.create_table("hr.salaries", [{"name": "ann", "salary": 100}])
    lh.create_volume("raw.docs").put(b"%PDF-1.4", "a.pdf")
    accounts = Accounts(lh.catalog)
    accounts.create("bob")
    accounts.create("analysts", kind="group")
    yield lh, accounts


def as_(lh: mx.Lakehouse, accounts: Accounts, name: str) -> mx.Lakehouse:
    return lh.with_principal(accounts.principal(name))


def test_deny_by_default(wh) -> None:
    lh, accounts = wh
    bob = as_(lh, accounts, "bob")
    assert bob.tables() == [] and bob.volumes() == []
    with pytest.raises(AccessDenied, match=r"bob has no SELECT privilege on main\.sales\.orders"):
        bob.sql("SELECT * FROM sales.orders")
    with pytest.raises(AccessDenied):
        bob.table("sales.orders").to_arrow()
    with pytest.raises(AccessDenied):
        bob.volume("raw.docs")
    with pytest.raises(AccessDenied):
        bob.create_table("sales.mine", [{"x": 1}])


def test_group_grants_inherit_downward(wh) -> None:
    lh, accounts = wh
    for privilege, on in (
        ("USE CATALOG", "main"),
        ("USE SCHEMA", "main.sales"),
        ("SELECT", "main.sales"),
    ):
        accounts.grant(privilege, on, "analysts")
    assert not as_(lh, accounts, "bob").tables()  # not a member yet
    accounts.add_member("analysts", "bob")
    bob = as_(lh, accounts, "bob")
    # a schema grant covers every table in it, SQL and SDK alike
    assert bob.tables() == ["main.sales.items", "main.sales.orders"]
    assert bob.sql("SELECT sum(amount) FROM sales.orders").scalar() == 15.0
    assert bob.sql("SELECT count(*) FROM sales.items i, sales.orders o").scalar() == 2
    assert bob.table("sales.items").to_arrow().num_rows == 1
    assert sorted(bob.sql("SHOW TABLES").column("table").to_pylist()) == ["items", "orders"]
    for denied in (
        lambda: bob.sql("SELECT * FROM hr.salaries"),
        lambda: bob.sql("SELECT * FROM sales.orders o JOIN hr.salaries s ON true"),
        lambda: bob.sql("INSERT INTO sales.orders VALUES (3, 1.0)"),
        lambda: bob.table("sales.orders").append([{"id": 3, "amount": 1.0}]),
        lambda: bob.drop_table("sales.items"),
    ):
        with pytest.raises(AccessDenied):
            denied()
    assert lh.table("sales.orders").count() == 2
    # taking bob out of the group takes the group's grants away
    accounts.remove_member("analysts", "bob")
    assert as_(lh, accounts, "bob").tables() == []


def test_use_catalog_and_use_schema_are_needed(wh) -> None:
    lh, accounts = wh
    accounts.grant("SELECT", "main.hr.salaries", "bob")
    with pytest.raises(AccessDenied, match=r"bob has no USE CATALOG privilege on main"):
        as_(lh, accounts, "bob").sql("SELECT * FROM hr.salaries")
    accounts.grant("USE CATALOG", "main", "bob")
    with pytest.raises(AccessDenied, match=r"bob has no USE SCHEMA privilege on main\.hr") as e:
        as_(lh, accounts, "bob").sql("SELECT * FROM hr.salaries")
    assert "GRANT USE SCHEMA ON SCHEMA main.hr TO bob" in str(e.value)
    accounts.grant("USE SCHEMA", "main.hr", "bob")
    assert as_(lh, accounts, "bob").sql("SELECT name FROM hr.salaries").scalar() == "ann"
    assert as_(lh, accounts, "bob").tables() == ["main.hr.salaries"]  # the table, not its schema
    accounts.revoke("USE CATALOG", "main", "bob")
    assert as_(lh, accounts, "bob").tables() == []


def test_modify_create_and_volume_privileges(wh) -> None:
    lh, accounts = wh
    accounts.grant("USE CATALOG", "main", "bob")
    accounts.grant("USE SCHEMA", "main", "bob")  # on the catalog: every schema in it
    accounts.grant("MODIFY", "main.sales.orders", "bob")
    bob = as_(lh, accounts, "bob")
    bob.sql("INSERT INTO sales.orders VALUES (3, 1.0)")
    assert lh.table("sales.orders").count() == 3
    with pytest.raises(AccessDenied, match=r"no MODIFY privilege on main\.sales\.items"):
        bob.sql("DELETE FROM sales.items")

    accounts.grant("READ VOLUME", "main.raw.docs", "bob")
    docs = as_(lh, accounts, "bob").volume("raw.docs")
    assert docs.read_bytes("a.pdf") == b"%PDF-1.4"
    with pytest.raises(AccessDenied, match=r"no MODIFY privilege on main\.raw\.docs"):
        docs.put(b"x", "b.txt")
    accounts.grant("WRITE VOLUME", "main.raw", "bob")  # on the schema: its volumes
    as_(lh, accounts, "bob").volume("raw.docs").put(b"x", "b.txt")
    assert sorted(f.name for f in lh.volume("raw.docs").list()) == ["a.pdf", "b.txt"]
    # a volume's grant is taken back by its name alone, as it was given
    assert accounts.revoke("READ VOLUME", "main.raw.docs", "bob")
    assert accounts.revoke("WRITE VOLUME", "main.raw", "bob")
    with pytest.raises(AccessDenied):
        as_(lh, accounts, "bob").volume("raw.docs")

    accounts.grant("CREATE", "main.sales", "bob")
    bob = as_(lh, accounts, "bob")
    bob.create_table("sales.bobs", [{"x": 1}])
    assert lh.table("sales.bobs").info.owner == "bob"
    assert bob.sql("SELECT x FROM sales.bobs").scalar() == 1  # owners need no grant
    bob.drop_table("sales.bobs")


def test_all_privileges_on_a_catalog_and_admins(wh) -> None:
    lh, accounts = wh
    accounts.create("carol")
    accounts.grant("ALL PRIVILEGES", "main", "carol")
    carol = as_(lh, accounts, "carol")
    assert set(carol.tables()) == {"main.sales.orders", "main.sales.items", "main.hr.salaries"}
    carol.sql("DELETE FROM hr.salaries")
    carol.drop_table("sales.items")
    accounts.create("root", admin=True)
    root = as_(lh, accounts, "root")
    assert root.principal.is_admin and root.volumes() == ["main.raw.docs"]


def test_a_dropped_tables_grants_go_with_it(wh) -> None:
    lh, accounts = wh
    for privilege, on in (("USE CATALOG", "main"), ("USE SCHEMA", "main.sales")):
        accounts.grant(privilege, on, "bob")
    accounts.grant("SELECT", "main.sales.items", "bob")
    assert "main.sales.items" in as_(lh, accounts, "bob").tables()
    lh.drop_table("sales.items")
    lh.create_table("sales.items", [{"secret": "new"}])
    assert accounts.grants(securable="main.sales.items") == []
    with pytest.raises(AccessDenied):
        as_(lh, accounts, "bob").sql("SELECT * FROM sales.items")


def test_a_token_signs_in_and_is_never_stored(
    wh, warehouse_root: WarehouseTarget, request: pytest.FixtureRequest
) -> None:
    lh, accounts = wh
    for privilege, on in (("USE CATALOG", "main"), ("USE SCHEMA", "main.sales")):
        accounts.grant(privilege, on, "bob")
    accounts.grant("SELECT", "main.sales.orders", "bob")
    token = accounts.create_token("bob", expires_in="1d")
    session = lh.with_principal(accounts.authenticate_token(token))
    assert session.sql("SELECT count(*) FROM sales.orders").scalar() == 2
    # a second process (another Accounts on a freshly opened catalog) knows the token too
    with mx.connect(warehouse_root.uri, storage_options=warehouse_root.storage_options) as other:
        assert Accounts(other.catalog).authenticate_token(token).name == "bob"
    if warehouse_root.kind == "s3":
        s3: S3Server = request.getfixturevalue("s3_server")
        client = s3.client()
        bucket = warehouse_root.uri[len("s3://") :].split("/")[0]
        keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket)["Contents"]]
        kept = b"".join(client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in keys)
        token_id, secret = token.split("_", 2)[1:]
        assert token_id.encode() in kept and secret.encode() not in kept
