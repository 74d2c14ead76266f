"""Row filters and column masks: stored in the catalog database (SQLite and PostgreSQL), who
they apply to, how they are defined (SQL and SDK), checked, refused and audited.

How they are enforced when tables are read: tests/engine/test_row_security.py; over the
server's protocols: tests/server/test_policies_served.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

import matrixos as mx
from matrixos.catalog import open_catalog
from matrixos.catalog.access import Principal
from matrixos.catalog.accounts import Accounts
from matrixos.catalog.policies import FILTER, MASK, Policy, PolicyStore, applies
from matrixos.errors import AccessDenied, NotSupported, SQLError

BOB = Principal("bob", frozenset(), frozenset({"analysts", "eu"}))


def test_the_store_keeps_replaces_and_selects_policies(sql_catalog_url: str) -> None:
    store = PolicyStore(open_catalog(sql_catalog_url))
    store.put(Policy("main.s.t", FILTER, "", "analysts", "region = 'EU'"))
    store.put(Policy("main.s.t", FILTER, "", "eu", "id > 1"))
    store.put(Policy("main.s.t", FILTER, "", "others", "false"))
    store.put(Policy("main.s.t", MASK, "email", "analysts", "'***'"))
    store.put(Policy("main.s.t", MASK, "email", "bob", "left(email, 1)"))
    store.put(Policy("main.s.t", FILTER, "", "analysts", "region = 'US'"))  # replaces
    store.put(Policy("main.s.u", MASK, "n", "analysts", "0", cast_to="BIGINT"))
    assert len(store.list()) == 6 and len(store.list("main.s.t")) == 5

    seen = store.applying(BOB, ["main.s.t", "main.s.u", "main.s.none"], lambda t: "alice")
    assert sorted(seen) == ["main.s.t", "main.s.u"]
    t = seen["main.s.t"]
    # both of bob's groups' filters, ANDed by the engine; not the other group's
    assert t.filters == ("region = 'US'", "id > 1")
    # bob's own mask wins over his group's: one mask per column
    assert t.masks == (("email", "left(email, 1)", None),)
    assert seen["main.s.u"].masks == (("n", "0", "BIGINT"),)

    assert store.remove("main.s.t", FILTER, "", "analysts")
    assert not store.remove("main.s.t", FILTER, "", "analysts")
    store.drop_table("main.s.t")
    assert [p.table for p in store.list()] == ["main.s.u"]


def test_owners_and_admins_are_exempt_unless_named() -> None:
    admin = Principal("root", frozenset({"*"}), frozenset({"analysts"}))
    assert applies("analysts", BOB, owner="alice")
    assert applies("bob", BOB, owner="alice")
    assert not applies("analysts", BOB, owner="bob")  # his own table
    assert applies("bob", BOB, owner="bob")  # named directly: it applies
    assert not applies("analysts", admin, owner="alice")
    assert applies("root", admin, owner="alice")
    assert not applies("nobody", BOB, owner=None)


def test_the_object_store_catalog_has_no_policies(tmp_path: Path) -> None:
    store = PolicyStore(open_catalog(f"file://{tmp_path / 'log'}"))
    assert store.list() == [] and store.applying(BOB, ["main.s.t"], lambda t: None) == {}
    with pytest.raises(NotSupported, match="catalog database"):
        store.put(Policy("main.s.t", FILTER, "", "bob", "true"))


@pytest.fixture
def people(tmp_path: Path) -> mx.Lakehouse:
    lh = mx.connect(str(tmp_path / "wh"))
    lh.create_table(
        "s.people",
        [
            {"id": 1, "region": "EU", "email": "ann@x.org", "salary": 10.5},
            {"id": 2, "region": "US", "email": "bob@y.org", "salary": 20.0},
        ],
    )
    for stmt in (
        "CREATE GROUP analysts",
        "CREATE USER bob",
        "CREATE USER carol",
        "ALTER GROUP analysts ADD USER bob",
        "GRANT USE CATALOG ON CATALOG main TO analysts",
        "GRANT USE SCHEMA ON SCHEMA main.s TO analysts",
        "GRANT SELECT ON SCHEMA main.s TO analysts",
    ):
        lh.sql(stmt)
    return lh


def as_(lh: mx.Lakehouse, name: str) -> mx.Lakehouse:
    return lh.with_principal(Accounts(lh.catalog).principal(name))


@pytest.mark.parametrize("dialect", ["duckdb", "postgres", "databricks"])
def test_sql_sets_shows_and_drops_filters_and_masks(people: mx.Lakehouse, dialect: str) -> None:
    lh = people

    def run(sql: str) -> list[dict]:
        return lh.sql(sql, dialect=dialect).to_arrow().to_pylist()

    def quoted(text: str) -> str:  # Spark SQL's strings: "…" holds ' as it is
        return f'"{text}"' if dialect == "databricks" else "'" + text.replace("'", "''") + "'"

    region = quoted("region = 'EU'")
    assert run(f"ALTER TABLE s.people SET ROW FILTER {region} FOR analysts") == [
        {"status": "SET ROW FILTER", "changed": 1}
    ]
    mask = quoted("CASE WHEN region = 'EU' THEN '***' ELSE email END")
    run(f"ALTER TABLE s.people ALTER COLUMN email SET MASK {mask} FOR analysts")
    run("ALTER TABLE s.people ALTER COLUMN salary SET MASK 'NULL' FOR bob")
    shown = run("SHOW POLICIES ON s.people")
    assert [(r["kind"], r["column"], r["account"]) for r in shown] == [
        ("mask", "email", "analysts"),
        ("mask", "salary", "bob"),
        ("row filter", None, "analysts"),
    ]
    assert [r["kind"] for r in run("SHOW ROW FILTERS ON s.people")] == ["row filter"]
    assert [r["column"] for r in run("SHOW MASKS ON s.people")] == ["email", "salary"]
    # bob sees the policies that apply to him; carol (no grant) not even those
    assert len(as_(lh, "bob").sql("SHOW POLICIES ON s.people").fetchall()) == 3
    with pytest.raises(AccessDenied):
        as_(lh, "carol").sql("SHOW POLICIES ON s.people")

    assert run("ALTER TABLE s.people DROP ROW FILTER FOR analysts")[0]["changed"] == 1
    assert run("ALTER TABLE s.people DROP ROW FILTER FOR analysts")[0]["changed"] == 0
    assert run("ALTER TABLE s.people ALTER COLUMN EMAIL DROP MASK FOR analysts")[0]["changed"] == 1
    assert [r["column"] for r in run("SHOW POLICIES ON s.people")] == ["salary"]
    lh.drop_table("s.people")
    assert lh.service.policies.list() == []  # dropped with the table


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("id IN (SELECT 1)", "a subquery is not allowed (line 1, column 8 of the expression)"),
        (
            "read_csv('/etc/passwd') IS NOT NULL",
            "function read_csv() is not allowed (line 1, column 1",
        ),
        ("id = (SELECT max(id) FROM s.people)", "a subquery is not allowed"),
        ("region = 'EU'\n AND nope > 1", "the table has no column 'nope' (line 2, column 6"),
        ("people.region = 'EU'", "column people.region names a table"),
        ("count(*) > 1", "aggregates and window functions are not allowed"),
        ("getenv('HOME') = 'x'", "function getenv() is not allowed"),
        ("region =", "cannot parse the expression"),
        ("id + 1", "the predicate gives BIGINT, not a BOOLEAN"),
        ("lower(id) = 'x'", "row filter on main.s.people: Binder Error"),
        ("region = 'EU'; DROP TABLE s.people", "one expression expected"),
    ],
)
def test_bad_filters_are_refused_with_what_and_where(
    people: mx.Lakehouse, expression: str, message: str
) -> None:
    with pytest.raises(SQLError) as e:
        people.table("s.people").set_row_filter(expression, account="analysts")
    assert message in e.value.message
    assert people.service.policies.list() == []


@pytest.mark.parametrize(
    ("column", "expression", "message"),
    [
        ("id", "'***'", "the expression gives VARCHAR, the column is BIGINT"),
        ("email", "salary > 1", "the expression gives BOOLEAN, the column is VARCHAR"),
        ("email", "(SELECT 'x')", "a subquery is not allowed"),
        ("nope", "'x'", "the table has no column 'nope'"),
    ],
)
def test_masks_keep_the_column_type_or_are_refused(
    people: mx.Lakehouse, column: str, expression: str, message: str
) -> None:
    with pytest.raises(SQLError) as e:
        people.table("s.people").set_mask(column, expression, account="analysts")
    assert message in e.value.message


def test_a_compatible_mask_is_cast_to_the_column_type(people: mx.Lakehouse) -> None:
    t = people.table("s.people")
    t.set_mask("salary", "0", account="analysts")  # INTEGER → DOUBLE
    t.set_mask("id", "NULL", account="analysts")
    casts = {p.column: p.cast_to for p in t.policies()}
    assert casts == {"salary": "DOUBLE", "id": "BIGINT"}
    got = as_(people, "bob").table("s.people").to_arrow()
    assert got.schema == t.schema  # same names and types
    assert got.column("salary").to_pylist() == [0.0, 0.0]


def test_only_owners_admins_and_managers_define_them(people: mx.Lakehouse) -> None:
    lh = people
    bob = as_(lh, "bob")
    for sql in (
        "ALTER TABLE s.people SET ROW FILTER 'true' FOR bob",
        "ALTER TABLE s.people DROP ROW FILTER FOR analysts",
        "ALTER TABLE s.people ALTER COLUMN email SET MASK 'email' FOR bob",
        "ALTER TABLE s.people ALTER COLUMN email DROP MASK FOR analysts",
    ):
        with pytest.raises(AccessDenied, match="may not change the row filters or masks"):
            bob.sql(sql)
    with pytest.raises(AccessDenied):
        bob.table("s.people").set_row_filter("true", account="bob")
    lh.sql("ALTER TABLE s.people SET ROW FILTER 'id = 1' FOR analysts")
    lh.sql("GRANT MANAGE ON TABLE s.people TO carol")
    lh.sql("GRANT USE CATALOG ON CATALOG main TO carol")
    lh.sql("GRANT USE SCHEMA ON SCHEMA main.s TO carol")
    carol = as_(lh, "carol")
    carol.sql("ALTER TABLE s.people DROP ROW FILTER FOR analysts")  # MANAGE suffices
    # a table bob creates is his: he may define its policies
    lh.sql("GRANT CREATE ON SCHEMA main.s TO bob")
    bob = as_(lh, "bob")  # a principal holds the grants of when it signed in
    bob.create_table("s.mine", [{"x": 1}])
    bob.table("s.mine").set_row_filter("x > 1", account="analysts")
    with pytest.raises(SQLError, match="no account 'ghost'"):
        lh.table("s.people").set_row_filter("true", account="ghost")


def test_changes_are_audited_without_their_literals(people: mx.Lakehouse) -> None:
    lh = people
    lh.sql("ALTER TABLE s.people SET ROW FILTER 'email = ''secret@x''' FOR analysts")
    lh.table("s.people").set_mask("email", "'###'", account="analysts")
    with pytest.raises(AccessDenied):
        as_(lh, "bob").sql("ALTER TABLE s.people ALTER COLUMN email DROP MASK FOR analysts")
    rows = lh.sql(
        "SELECT principal, action, object, outcome, protocol, statement "
        "FROM system.access.audit WHERE action LIKE '%FILTER' OR action LIKE '%MASK' "
        "ORDER BY event_time"
    ).to_arrow()
    got = [(r["action"], r["object"], r["outcome"], r["protocol"]) for r in rows.to_pylist()]
    assert got == [
        ("SET ROW FILTER", "main.s.people", "ok", "sql"),
        ("SET MASK", "main.s.people.email", "ok", "sdk"),
        ("DROP MASK", "main.s.people.email", "denied", "sql"),
    ]
    assert rows.column("principal").to_pylist()[2] == "bob"
    assert not any("secret@x" in (s or "") for s in rows.column("statement").to_pylist())


def test_a_policy_reaches_members_of_member_groups(people: mx.Lakehouse) -> None:
    lh = people
    for stmt in (
        "CREATE GROUP eu_team",
        "ALTER GROUP analysts ADD GROUP eu_team",
        "ALTER GROUP eu_team ADD USER carol",
        "ALTER TABLE s.people SET ROW FILTER 'region = ''EU''' FOR analysts",
    ):
        lh.sql(stmt)
    carol = as_(lh, "carol")  # analysts' grants and filter reach her through eu_team
    assert carol.sql("SELECT id FROM s.people").fetchall() == [(1,)]
    lh.sql("ALTER GROUP eu_team DROP USER carol")
    with pytest.raises(AccessDenied):  # no longer a member: no grant, so no rows at all
        as_(lh, "carol").sql("SELECT id FROM s.people")
