"""Accounts and grants in SQL: CREATE USER/GROUP/SERVICE PRINCIPAL, ALTER GROUP, GRANT, REVOKE,
SHOW GRANTS — run by an admin, refused to others, passwords never repeated."""

from __future__ import annotations

import traceback

import pytest

import matrixos as mx
from matrixos.catalog.accounts import Accounts
from matrixos.errors import AccessDenied, MatrixOSError, SQLError

WAREHOUSES = ("local",)
SECRET = "Tr0ub4dor&3-x"


@pytest.fixture
def sales(lh: mx.Lakehouse) -> mx.Lakehouse:
    lh.create_table("sales.orders", [{"id": 1, "amount": 10.0}, {"id": 2, "amount": 5.0}])
    lh.create_table("hr.salaries", [{"name": "ann", "salary": 100}])
    return lh


def as_(lh: mx.Lakehouse, name: str) -> mx.Lakehouse:
    return lh.with_principal(Accounts(lh.catalog).principal(name))


def rows(result: mx.Result) -> list[dict]:
    return result.to_arrow().to_pylist()


@pytest.mark.parametrize("dialect", ["duckdb", "postgres", "databricks"])
def test_an_admin_manages_accounts_and_grants_in_sql(sales, dialect) -> None:
    lh = sales

    def run(sql: str) -> list[dict]:
        return rows(lh.sql(sql, dialect=dialect))

    assert run(f"CREATE USER bob WITH PASSWORD '{SECRET}'") == [{"status": "CREATE USER"}]
    run("CREATE GROUP analysts")
    run("CREATE SERVICE PRINCIPAL etl")
    run("CREATE USER IF NOT EXISTS bob")  # no error, nothing changed
    run("ALTER GROUP analysts ADD USER bob, etl")
    assert run("GRANT USE CATALOG ON CATALOG main TO analysts")[0]["changed"] == 1
    assert run("GRANT USE SCHEMA, SELECT ON SCHEMA sales TO analysts")[0]["changed"] == 2
    assert run("GRANT SELECT ON TABLE sales.orders TO bob") == [{"status": "GRANT", "changed": 1}]
    assert run("GRANT SELECT ON TABLE sales.orders TO bob")[0]["changed"] == 0  # had it

    shown = run("SHOW GRANTS ON TABLE sales.orders")
    assert [
        (r["principal"], r["privilege"], r["object_type"], r["object_name"]) for r in shown
    ] == [("bob", "SELECT", "TABLE", "main.sales.orders")]
    assert {r["privilege"] for r in run("SHOW GRANTS TO analysts")} == {
        "USE CATALOG",
        "USE SCHEMA",
        "SELECT",
    }
    assert len(run("SHOW GRANTS")) == 4
    users = {r["name"]: r for r in run("SHOW USERS")}
    assert set(users) == {"bob", "etl"} and users["bob"]["groups"] == ["analysts"]
    assert run("SHOW GROUPS")[0]["members"] == ["bob", "etl"]

    # the grants hold for SQL and the SDK of a session acting as bob
    bob = as_(lh, "bob")
    assert bob.sql("SELECT count(*) FROM sales.orders").scalar() == 2
    assert bob.tables() == ["main.sales.orders"]
    with pytest.raises(AccessDenied):
        bob.sql("SELECT * FROM hr.salaries")
    assert Accounts(lh.catalog).authenticate_password("bob", SECRET).name == "bob"

    assert run("REVOKE SELECT ON SCHEMA sales FROM analysts")[0]["changed"] == 1
    run("REVOKE SELECT ON TABLE sales.orders FROM bob")
    with pytest.raises(AccessDenied):
        as_(lh, "bob").sql("SELECT * FROM sales.orders")
    run("ALTER GROUP analysts DROP USER etl")
    assert run("SHOW GROUPS")[0]["members"] == ["bob"]
    run("DROP SERVICE PRINCIPAL etl")
    run("DROP USER bob")
    run("DROP USER IF EXISTS bob")
    assert [r["name"] for r in run("SHOW GROUPS")] == ["analysts"] and run("SHOW USERS") == []


def test_only_admins_and_owners_grant(sales) -> None:
    lh = sales
    for sql in (
        "CREATE USER bob",
        "CREATE USER carol",
        "CREATE USER root ADMIN",
        "GRANT USE CATALOG ON CATALOG main TO bob",
        "GRANT USE SCHEMA ON SCHEMA sales TO bob",
        "GRANT CREATE ON SCHEMA sales TO bob",
        "GRANT USE CATALOG ON CATALOG main TO carol",
        "GRANT USE SCHEMA ON SCHEMA sales TO carol",
    ):
        lh.sql(sql)
    bob = as_(lh, "bob")
    for sql in (
        "CREATE USER mallory",
        "ALTER USER bob ADMIN",
        "DROP USER carol",
        "ALTER GROUP admins ADD USER bob",
        "GRANT SELECT ON TABLE sales.orders TO bob",
        "GRANT USE SCHEMA ON SCHEMA hr TO bob",
        "REVOKE CREATE ON SCHEMA sales FROM bob",
    ):
        with pytest.raises(AccessDenied, match="bob may not"):
            bob.sql(sql)
    assert [r["name"] for r in rows(lh.sql("SHOW USERS"))] == ["bob", "carol", "root"]
    # an owner grants on what it owns
    bob.sql("CREATE TABLE sales.bobs AS SELECT 1 AS x")
    bob.sql("GRANT SELECT ON TABLE sales.bobs TO carol")
    # …and sees every grant on it, not only its own
    on_bobs = rows(bob.sql("SHOW GRANTS ON TABLE sales.bobs"))
    assert [(r["principal"], r["granted_by"]) for r in on_bobs] == [("carol", "bob")]
    assert as_(lh, "carol").sql("SELECT x FROM sales.bobs").scalar() == 1
    # a user sees only the grants given to it (and its groups)
    assert {r["principal"] for r in rows(as_(lh, "carol").sql("SHOW GRANTS"))} == {"carol"}
    # an admin account may do what the embedded user may
    root = as_(lh, "root")
    root.sql("GRANT SELECT ON TABLE hr.salaries TO carol")
    root.sql("GRANT USE SCHEMA ON SCHEMA hr TO carol")
    assert as_(lh, "carol").sql("SELECT name FROM hr.salaries").scalar() == "ann"
    bob.sql("ALTER USER bob WITH PASSWORD 'bobs own'")  # one's own password


BAD = [
    (f"CREATE USER carol WITH PASSWORD '{SECRET}' EXTRA", "expected the end"),
    (f"CREATE USER carol WITH PASSWORD '{SECRET}", "sets a password"),
    (f"CREATE USER carol PASSWORD {SECRET}", "quoted string"),
    (f"CREATE GROUP g WITH PASSWORD '{SECRET}'", "cannot have a password"),
    (f"CREATE USER 'carol' PASSWORD '{SECRET}'", "expected an account name"),
    ("GRANT SELEC ON TABLE sales.orders TO bob", "expected a privilege"),
    ("GRANT SELECT ON TABLE nope.t TO bob", "does not exist"),
    ("GRANT SELECT ON TABLE sales.orders TO nobody", "'nobody' does not exist"),
    ("GRANT READ VOLUME ON TABLE sales.orders TO bob", "cannot be granted on a table"),
    ("GRANT SELECT ON CATALOG a.b TO bob", "not a catalog name"),
    ("DROP GROUP bob", "bob is a user, not a group"),
]


@pytest.mark.parametrize(("sql", "message"), BAD)
def test_errors_name_the_problem_and_never_the_password(sales, sql, message) -> None:
    sales.sql("CREATE USER bob")
    with pytest.raises(MatrixOSError, match=message) as e:
        sales.sql(sql)
    shown = "".join(traceback.format_exception(e.value)) + str(getattr(e.value, "sql", ""))
    assert SECRET not in shown and SECRET[:6] not in shown
    assert [r["name"] for r in rows(sales.sql("SHOW USERS"))] == ["bob"]


def test_a_password_is_never_in_a_result(sales) -> None:
    for sql in (f"CREATE USER bob WITH PASSWORD '{SECRET}'", f"ALTER USER bob PASSWORD '{SECRET}'"):
        result = sales.sql(sql)
        assert SECRET not in str(rows(result)) and SECRET not in str(result.message)
    sales.sql("ALTER USER bob PASSWORD NULL")
    with pytest.raises(AccessDenied):
        Accounts(sales.catalog).authenticate_password("bob", SECRET)
    with pytest.raises(SQLError, match="expected PASSWORD"):
        sales.sql("ALTER USER bob")


def test_changes_are_audited_and_no_password_is_kept(sales, tmp_path) -> None:
    lh = sales
    me = lh.principal.name
    lh.sql(f"CREATE USER bob WITH PASSWORD '{SECRET}'")
    lh.sql("GRANT USE CATALOG ON CATALOG main TO bob")
    with pytest.raises(AccessDenied):
        as_(lh, "bob").sql("GRANT SELECT ON TABLE sales.orders TO bob")
    with pytest.raises(SQLError):
        lh.sql(f"ALTER USER nobody PASSWORD '{SECRET}'")
    lh.sql("SHOW GRANTS")  # a listing changes nothing: not audited
    audit = lh.sql(
        "SELECT principal, action, object, outcome, protocol, statement "
        "FROM system.access.audit ORDER BY event_time"
    ).fetchall()
    assert audit == [
        (me, "CREATE USER", "bob", "ok", "sql", "CREATE USER bob WITH PASSWORD ?"),
        (me, "GRANT", "main", "ok", "sql", "GRANT USE CATALOG ON CATALOG main TO bob"),
        ("bob", "GRANT", "main.sales.orders", "denied", "sql", audit[2][5]),
        (me, "ALTER USER", "nobody", "failed: SQLError", "sql", "ALTER USER nobody PASSWORD ?"),
    ]
    assert audit[2][5].startswith("GRANT SELECT ON TABLE sales.orders TO bob")
    # the audit table is the system's: others cannot read it
    with pytest.raises(AccessDenied):
        as_(lh, "bob").sql("SELECT * FROM system.access.audit")
    # no file of the warehouse or its catalog holds the password
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files and not [p for p in files if SECRET.encode() in p.read_bytes()]


def test_volume_grants_in_sql(sales) -> None:
    lh = sales
    lh.create_volume("raw.docs").put(b"%PDF-1.4", "a.pdf")
    for sql in (
        "CREATE USER bob",
        "GRANT USE CATALOG ON CATALOG main TO bob",
        "GRANT USE SCHEMA ON SCHEMA raw TO bob",
        "GRANT READ VOLUME ON VOLUME raw.docs TO bob",
    ):
        lh.sql(sql)
    assert as_(lh, "bob").volume("raw.docs").read_bytes("a.pdf") == b"%PDF-1.4"
    # without a kind the name is looked up: a volume takes volume privileges only
    with pytest.raises(MatrixOSError, match="SELECT cannot be granted on a volume"):
        lh.sql("GRANT SELECT ON raw.docs TO bob")
    assert rows(lh.sql("SHOW GRANTS ON VOLUME raw.docs"))[0]["object_type"] == "VOLUME"
    assert rows(lh.sql("REVOKE READ VOLUME ON raw.docs FROM bob"))[0]["changed"] == 1
    with pytest.raises(AccessDenied):
        as_(lh, "bob").volume("raw.docs")
