"""Row filters and column masks hold on every read path: SQL (joins, subqueries, CTEs, CTAS,
INSERT … SELECT, EXPLAIN, time travel), the search functions, the SDK's reads and searches and
``map_batches``; a condition on a masked column sees the masked value; writes that pick rows by
value are refused to a filtered principal.

Bob is a member of the group ``analysts``; its filter shows EU rows only and its mask hides
e-mail addresses (``***``, or the domain only for EU rows in some tests).
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pytest

import matrixos as mx
from matrixos.catalog.accounts import Accounts
from matrixos.errors import AccessDenied, NotSupported
from matrixos.lance_table import LanceTable

PEOPLE = [
    {"id": 1, "region": "EU", "email": "ann@x.org", "salary": 10.0},
    {"id": 2, "region": "US", "email": "bob@y.org", "salary": 20.0},
    {"id": 3, "region": "EU", "email": "cid@z.org", "salary": 30.0},
    {"id": 4, "region": "US", "email": "dee@y.org", "salary": 40.0},
]
EU = [1, 3]


@pytest.fixture
def lh(tmp_path: Path) -> mx.Lakehouse:
    lh = mx.connect(str(tmp_path / "wh"))
    lh.create_table("s.people", PEOPLE)
    lh.create_table("s.orders", [{"person": i % 4 + 1, "amount": float(i)} for i in range(8)])
    for stmt in (
        "CREATE GROUP analysts",
        "CREATE USER bob",
        "ALTER GROUP analysts ADD USER bob",
        "GRANT USE CATALOG ON CATALOG main TO analysts",
        "GRANT USE SCHEMA ON SCHEMA main.s TO analysts",
        "GRANT SELECT ON SCHEMA main.s TO analysts",
        "ALTER TABLE s.people SET ROW FILTER 'region = ''EU''' FOR analysts",
        "ALTER TABLE s.people ALTER COLUMN email SET MASK '''***''' FOR analysts",
    ):
        lh.sql(stmt)
    return lh


def as_(lh: mx.Lakehouse, name: str) -> mx.Lakehouse:
    return lh.with_principal(Accounts(lh.catalog).principal(name))


def ids(result: mx.Result | pa.Table) -> list[int]:
    table = result if isinstance(result, pa.Table) else result.to_arrow()
    return sorted(table.column(0).to_pylist())


def test_the_filter_holds_through_joins_subqueries_and_ctes(lh: mx.Lakehouse) -> None:
    bob = as_(lh, "bob")
    assert ids(bob.sql("SELECT id FROM s.people")) == EU
    assert bob.sql("SELECT count(*), sum(salary) FROM s.people").fetchall() == [(2, 40.0)]
    joined = "SELECT DISTINCT p.id FROM s.orders o JOIN s.people p ON p.id = o.person"
    assert ids(bob.sql(joined)) == EU
    assert ids(bob.sql("SELECT a.id FROM s.people a, s.people b WHERE a.id = b.id")) == EU
    sub = "SELECT DISTINCT person FROM s.orders WHERE person IN (SELECT id FROM s.people)"
    assert ids(bob.sql(sub)) == EU
    exists = (
        "SELECT DISTINCT person FROM s.orders o "
        "WHERE EXISTS (SELECT 1 FROM s.people p WHERE p.id = o.person)"
    )
    assert ids(bob.sql(exists)) == EU
    scalar = "SELECT (SELECT max(id) FROM s.people)"
    assert bob.sql(scalar).fetchall() == [(3,)]
    cte = (
        "WITH eu AS (SELECT * FROM s.people) "
        "SELECT id FROM eu UNION ALL SELECT id FROM (SELECT id FROM s.people)"
    )
    assert ids(bob.sql(cte)) == [1, 1, 3, 3]
    # a CTE named like the table reads the filtered table inside its body
    shadow = "WITH people AS (SELECT * FROM s.people WHERE id > 0) SELECT id FROM people"
    assert ids(bob.sql(shadow)) == EU
    assert ids(bob.sql("SELECT id FROM s.people", dialect="postgres")) == EU
    nested = "SELECT DISTINCT p.id FROM (s.people p JOIN s.orders o ON p.id = o.person)"
    assert ids(bob.sql(nested)) == EU
    lateral = (
        "SELECT DISTINCT p.id FROM s.orders o, "
        "LATERAL (SELECT * FROM s.people WHERE id = o.person) p"
    )
    assert ids(bob.sql(lateral)) == EU
    pivot = "SELECT * FROM s.people PIVOT (count(*) FOR region IN ('EU', 'US'))"
    assert {(r["EU"], r["US"]) for r in bob.sql(pivot).to_arrow().to_pylist()} == {(1, 0)}
    # the owner (the embedded admin) is not filtered
    assert ids(lh.sql("SELECT id FROM s.people")) == [1, 2, 3, 4]


def test_masks_replace_values_and_conditions_see_the_masked_value(lh: mx.Lakehouse) -> None:
    bob = as_(lh, "bob")
    rows = bob.sql("SELECT * FROM s.people ORDER BY id").to_arrow()
    assert rows.column_names == ["id", "region", "email", "salary"]
    assert rows.column("email").to_pylist() == ["***", "***"]
    # no inference from which rows come back: the real value matches nothing
    assert bob.sql("SELECT id FROM s.people WHERE email = 'ann@x.org'").fetchall() == []
    assert bob.sql("SELECT id FROM s.people WHERE email LIKE 'ann%'").fetchall() == []
    assert ids(bob.sql("SELECT id FROM s.people WHERE email = '***'")) == EU
    assert bob.sql("SELECT count(DISTINCT email) FROM s.people").fetchall() == [(1,)]
    j = "SELECT p.id FROM s.people p JOIN s.people q ON p.email = q.email AND p.id <> q.id"
    assert ids(bob.sql(j)) == EU  # every masked e-mail equals every other
    # a mask may read other columns
    lh.sql(
        "ALTER TABLE s.people ALTER COLUMN email SET MASK "
        "'CASE WHEN region = ''EU'' THEN regexp_replace(email, ''^[^@]*'', ''***'') "
        "ELSE email END' FOR analysts"
    )
    got = bob.sql("SELECT email FROM s.people ORDER BY id").fetchall()
    assert got == [("***@x.org",), ("***@z.org",)]


def test_writes_carry_only_what_the_principal_sees(lh: mx.Lakehouse) -> None:
    lh.sql("GRANT CREATE ON SCHEMA main.s TO bob")
    lh.sql("GRANT MODIFY ON TABLE s.orders TO bob")
    bob = as_(lh, "bob")
    bob.sql("CREATE TABLE s.copy AS SELECT * FROM s.people")
    copy = lh.table("s.copy").to_arrow().sort_by("id")
    assert copy.column("id").to_pylist() == EU
    assert copy.column("email").to_pylist() == ["***", "***"]
    bob.sql("INSERT INTO s.copy SELECT id + 10, region, email, salary FROM s.people")
    assert ids(lh.sql("SELECT id FROM s.copy")) == [1, 3, 11, 13]
    # bob owns s.copy: the policies of s.people do not follow the rows
    assert lh.service.policies.list("main.s.copy") == []
    # a write that picks rows by value would tell which exist: refused while policies apply
    lh.sql("ALTER TABLE s.orders SET ROW FILTER 'person = 1' FOR bob")
    bob.sql("INSERT INTO s.orders VALUES (1, 99.0)")
    for sql in (
        "DELETE FROM s.orders WHERE amount > 5",
        "UPDATE s.orders SET amount = 0 WHERE person = 2",
        "MERGE INTO s.orders t USING (SELECT 2 AS person, 1.0 AS amount) s "
        "ON t.person = s.person WHEN MATCHED THEN UPDATE SET amount = s.amount",
    ):
        with pytest.raises(AccessDenied, match="row filters or column masks apply"):
            bob.sql(sql)
    with pytest.raises(AccessDenied):
        bob.table("s.orders").delete("person = 2")
    assert lh.sql("SELECT count(*) FROM s.orders").fetchall() == [(9,)]


def test_time_travel_and_explain_apply_todays_policies(lh: mx.Lakehouse) -> None:
    lh.table("s.people").append([{"id": 5, "region": "EU", "email": "eve@x.org", "salary": 1.0}])
    bob = as_(lh, "bob")
    assert ids(bob.sql("SELECT id FROM s.people VERSION AS OF 0")) == EU
    assert ids(bob.sql("SELECT id FROM s.people")) == [1, 3, 5]
    assert ids(bob.table("s.people").to_arrow(version=0)) == EU
    plan = [r[0] for r in bob.sql("EXPLAIN SELECT email FROM s.people").fetchall()]
    assert "Policies on main.s.people for bob: 1 row filter(s), masked columns: email" in plan
    plan = [r[0] for r in lh.sql("EXPLAIN SELECT email FROM s.people").fetchall()]
    assert not any(line.startswith("Policies") for line in plan)


def test_sdk_reads_go_through_the_policies(lh: mx.Lakehouse) -> None:
    t = as_(lh, "bob").table("s.people")
    assert ids(t.to_arrow()) == EU
    assert t.count() == 2
    assert pa.table(t).column("email").to_pylist() == ["***", "***"]
    assert t.to_arrow(columns=["email"]).column_names == ["email"]
    assert t.to_pandas()["id"].tolist() in ([1, 3], [3, 1])
    assert lh.table("s.people").count() == 4


def test_owners_and_admins_are_exempt_unless_named(lh: mx.Lakehouse) -> None:
    lh.sql("CREATE USER root ADMIN")
    lh.sql("ALTER GROUP analysts ADD USER root")
    root = as_(lh, "root")
    assert ids(root.sql("SELECT id FROM s.people")) == [1, 2, 3, 4]  # exempt from its group's
    lh.sql("ALTER TABLE s.people SET ROW FILTER 'id = 2' FOR root")
    assert ids(root.sql("SELECT id FROM s.people")) == [2]  # named directly: it applies
    assert root.sql("SELECT email FROM s.people").fetchall() == [("bob@y.org",)]
    # a table bob owns: his group's filter does not apply to him, one naming him does
    lh.sql("GRANT CREATE ON SCHEMA main.s TO bob")
    bob = as_(lh, "bob")
    bob.create_table("s.mine", PEOPLE)
    bob.table("s.mine").set_row_filter("region = 'US'", account="analysts")
    assert ids(bob.sql("SELECT id FROM s.mine")) == [1, 2, 3, 4]
    bob.table("s.mine").set_row_filter("id = 4", account="bob")
    assert ids(bob.sql("SELECT id FROM s.mine")) == [4]
    # several filters that apply are ANDed
    lh.sql("ALTER TABLE s.people SET ROW FILTER 'salary > 15' FOR bob")
    assert ids(as_(lh, "bob").sql("SELECT id FROM s.people")) == [3]


def test_map_batches_reads_what_the_principal_sees(lh: mx.Lakehouse) -> None:
    lh.sql("GRANT CREATE ON SCHEMA main.s TO bob")
    bob = as_(lh, "bob")
    bob.map_batches("s.people", lambda b: b, output="s.mapped", progress=False)
    out = lh.table("s.mapped").to_arrow().sort_by("id")
    assert out.column("id").to_pylist() == EU
    assert set(out.column("email").to_pylist()) == {"***"}


@pytest.fixture
def docs(lh: mx.Lakehouse) -> mx.Lakehouse:
    rows = [
        {"id": i, "lang": "en" if i % 2 else "de", "author": f"a{i}", "text": t}
        for i, t in enumerate(
            [
                "vacuum removes old files",
                "vacuum old files now",
                "optimize compacts small files",
                "vacuum the table",
                "merge upserts rows",
                "vacuum and optimize",
            ]
        )
    ]
    t = lh.create_table("s.docs", rows, format="lance")
    assert isinstance(t, LanceTable)
    t.set_embedding("text", embedder="hash")
    t.create_text_index("text")
    t.set_row_filter("lang = 'en'", account="analysts")
    t.set_mask("author", "'anonymous'", account="analysts")
    return lh


@pytest.mark.parametrize("mode", ["vector", "text", "hybrid"])
def test_search_functions_return_filtered_masked_rows(docs: mx.Lakehouse, mode: str) -> None:
    bob = as_(docs, "bob")
    got = bob.sql(f"SELECT id, lang, author, _score FROM {mode}_search(s.docs, 'vacuum', k => 3)")
    rows = got.to_arrow().to_pylist()
    # k visible rows: the filter runs inside the search, before top-k
    assert len(rows) == 3 and {r["lang"] for r in rows} == {"en"}
    assert {r["author"] for r in rows} == {"anonymous"}
    sdk = bob.search("s.docs", "vacuum", k=3, mode=mode).to_arrow()  # type: ignore[arg-type]
    assert sorted(sdk.column("id").to_pylist()) == sorted(r["id"] for r in rows)
    assert set(sdk.column("author").to_pylist()) == {"anonymous"}
    everyone = docs.sql(f"SELECT lang FROM {mode}_search(s.docs, 'vacuum', k => 6)").fetchall()
    assert {lang for (lang,) in everyone} == {"en", "de"}


def test_search_refuses_what_would_reveal_masked_values(docs: mx.Lakehouse) -> None:
    bob = as_(docs, "bob")
    with pytest.raises(AccessDenied, match="masked for you"):
        bob.sql("SELECT id FROM vector_search(s.docs, 'x', k => 3, filter => 'author = ''a1''')")
    # filtering the result in WHERE sees the mask
    got = bob.sql(
        "SELECT id FROM vector_search(s.docs, 'vacuum', k => 3) WHERE author = 'a1'"
    ).fetchall()
    assert got == []
    # columns => projects; what the policies read is fetched and left out again
    cols = bob.sql("SELECT * FROM text_search(s.docs, 'vacuum', k => 2, columns => 'id')")
    assert cols.to_arrow().column_names == ["id", "_score"]
    docs.table("s.docs").set_mask("text", "'hidden'", account="analysts")
    for mode in ("vector", "text", "hybrid"):
        with pytest.raises(AccessDenied, match="ranks rows by column"):
            bob.sql(f"SELECT id FROM {mode}_search(s.docs, 'vacuum', k => 2)")
    with pytest.raises(AccessDenied, match="dataset is not handed out"):
        bob.table("s.docs").dataset()  # type: ignore[attr-defined]
    with pytest.raises(NotSupported):
        bob.table("s.docs").search("vacuum", version=0)  # type: ignore[attr-defined]
    # the lance table's own reads are filtered and masked
    t = bob.table("s.docs")
    assert t.count() == 3 and set(t.to_arrow().column("text").to_pylist()) == {"hidden"}


def test_history_keeps_what_a_filtered_principal_may_know(lh: mx.Lakehouse) -> None:
    lh.table("s.people").delete("email = 'dee@y.org'")
    full = lh.table("s.people").history()
    assert "dee@y.org" in str(full[0])  # the owner sees the DELETE's predicate
    bob = as_(lh, "bob")
    for rows in (
        bob.table("s.people").history(),
        bob.sql("DESCRIBE HISTORY s.people").to_arrow().to_pylist(),
    ):
        assert [r["version"] for r in rows] == [1, 0]
        assert "dee@y.org" not in str(rows)
    at = datetime.fromtimestamp(full[-1]["timestamp"] / 1000, UTC)
    assert ids(bob.table("s.people").to_arrow(timestamp=at)) == EU


def test_a_filter_lance_cannot_run_applies_after_a_wider_search(docs: mx.Lakehouse) -> None:
    t = docs.table("s.docs")
    t.set_row_filter("CASE WHEN lang = 'en' THEN true ELSE false END", account="analysts")
    bob = as_(docs, "bob")
    got = bob.sql("SELECT id, lang FROM vector_search(s.docs, 'vacuum', k => 2)").fetchall()
    assert len(got) == 2 and {lang for _, lang in got} == {"en"}
    hits = bob.search("s.docs", "vacuum", k=5, mode="text").to_arrow()
    assert set(hits.column("lang").to_pylist()) == {"en"} and hits.num_rows == 3


def test_files_are_pruned_by_the_query_but_never_by_a_masked_column(lh: mx.Lakehouse) -> None:
    t = lh.table("s.people")
    t.append([{"id": 11, "region": "EU", "email": "x@x.org", "salary": 1.0}])
    t.append([{"id": 21, "region": "EU", "email": "y@x.org", "salary": 2.0}])
    bob = as_(lh, "bob")

    def scan(sql: str) -> str:
        plan = [r[0] for r in bob.sql("EXPLAIN " + sql).fetchall()]
        return next(line for line in plan if line.startswith("Scan main.s.people"))

    # the query's condition on an unmasked column prunes files (the filter's own too)
    assert "1 of 3 files" in scan("SELECT id FROM s.people WHERE id = 21")
    assert "1 of 3 files" in scan("SELECT p.id FROM s.people p WHERE p.id >= 20")
    assert ids(bob.sql("SELECT id FROM s.people WHERE id = 21")) == [21]
    assert ids(bob.sql("SELECT id FROM s.people WHERE id = 2")) == []  # a US row
    # a condition on the masked column never prunes by the real values
    assert "3 of 3 files" in scan("SELECT id FROM s.people WHERE email = 'y@x.org'")
    assert ids(bob.sql("SELECT id FROM s.people WHERE email = '***'")) == [1, 3, 11, 21]
