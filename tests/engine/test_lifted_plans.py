"""Plans kept with a statement's literals lifted out (engine/sql/plans.py ``lift``): the same
query with another key runs from the plan of the first, and answers exactly what planning it
afresh answers, for values that prune to no file, NULLs, quotes, negative numbers and dates;
literals that select files, rows or versions some other way (LIMIT, time travel, a partition
that pruned) stay as written; another process's append, revoke and row filter are followed.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

import matrixos as mx
from matrixos.catalog.accounts import Accounts
from matrixos.engine.sql.plans import lift
from matrixos.errors import AccessDenied, SQLError


def batch(ids: range, region: str) -> pa.Table:
    return pa.table(
        {
            "id": pa.array(list(ids), pa.int64()),
            "name": [None if i % 7 == 0 else f"it's {i}" for i in ids],
            "d": [dt.date(2024, 1, 1) + dt.timedelta(days=i) for i in ids],
            "x": [i * 0.5 - 10 for i in ids],
            "region": [region] * len(ids),
        }
    )


@pytest.fixture
def lh(tmp_path: Path) -> Iterator[mx.Lakehouse]:
    with mx.connect(str(tmp_path / "wh")) as lh:
        t = lh.create_table("s.t", batch(range(0, 40), "EU"), partition_by=["region"])
        t.append(batch(range(40, 80), "US"))  # another file per append: pruning has work
        t.append(batch(range(80, 120), "EU"))
        yield lh


def cached(result: mx.Result) -> bool:
    return result.stats.get("plan") == "cached"


def expected(lh: mx.Lakehouse, sql: str) -> pa.Table:
    """What DuckDB alone answers on the table's rows (no plan of ours involved)."""
    con = duckdb.connect()
    con.register("ref", lh.table("s.t").to_arrow())
    return con.sql(sql.replace("s.t", "ref")).to_arrow_table()


def same(lh: mx.Lakehouse, sql: str) -> mx.Result:
    result = lh.sql(sql)
    got = result.to_arrow()
    want = expected(lh, sql)
    assert got.to_pylist() == want.to_pylist(), sql
    return result


# (template, groups of values: each group prunes to the same files, so after its first value
# the others run from the plan kept for those files; the very first value plans)
SHAPES = [
    (
        "SELECT id, name FROM s.t WHERE id = {} ORDER BY id",
        [["5", "0", "39"], ["-3", "-100"], ["1000", "2000"], ["119", "80"]],
    ),
    (
        "SELECT id FROM s.t WHERE x < {} ORDER BY id",
        [["-9.5", "-8.5"], ["-100.5", "-200.5"], ["0.0", "5.5"], ["49.5", "100.0"]],
    ),
    ("SELECT id FROM s.t WHERE x >= {} ORDER BY id", [["-1e1", "-1e9"], ["2.6e1", "2.7e1"]]),
    (
        "SELECT id, name FROM s.t WHERE name = {} ORDER BY id",
        [["'it''s 3'", "'it''s 35'"], ["''", "'no such'"], ["'it''s 50'", "'it''s 51'"]],
    ),
    (
        "SELECT id FROM s.t WHERE d >= DATE {} ORDER BY id",
        [["'2024-04-01'", "'2024-04-10'"], ["'2024-01-01'", "'2023-01-01'"]],
    ),
    (
        "SELECT id FROM s.t WHERE id IN ({}, {}) ORDER BY id",
        [["1, 2", "3, 4"], ["41, 118", "42, 119"], ["-1, 500", "-2, 600"]],
    ),
    (
        "SELECT count(*) AS n FROM s.t WHERE id BETWEEN {} AND {}",
        [["10, 20", "5, 4"], ["30, 90", "35, 85"]],
    ),
    ("SELECT id FROM s.t WHERE name LIKE {} ORDER BY id", [["'it''s 1%'", "'%9'", "'%$#--/*%'"]]),
    (  # each side of a self-join pruned by its own literal
        "SELECT a.id, b.id AS b FROM s.t a JOIN s.t b ON a.id + 1 = b.id "
        "WHERE a.id < {} AND b.x >= {} ORDER BY a.id",
        [["10, 0.0", "20, 0.5"], ["60, 30.0", "70, 35.0"]],
    ),
    (
        "WITH w AS (SELECT id, x FROM s.t WHERE id >= {}) "
        "SELECT count(*) AS n, sum(x) AS s FROM w WHERE x < {}",
        [["100, 45.5", "110, 48.0"], ["0, 100.5", "1, 101.5"]],
    ),
    (
        "SELECT id FROM s.t WHERE name IS NULL AND id < {} ORDER BY id",
        [["50", "45"], ["8", "9"], ["-1", "-5"]],
    ),
]


@pytest.mark.parametrize(("template", "groups"), SHAPES, ids=[s[0][:40] for s in SHAPES])
def test_other_literals_run_from_a_kept_plan_with_the_answers_of_a_fresh_plan(
    lh: mx.Lakehouse, template: str, groups: list[list[str]]
) -> None:
    for g, values in enumerate(groups):
        for v, value in enumerate(values):
            result = same(lh, template.format(*value.split(", ")))
            if v:
                assert cached(result), value
            elif not g:
                assert not cached(result)


def test_a_literal_that_pruned_files_stays_as_written(lh: mx.Lakehouse) -> None:
    # region is the partition column: 'EU' prunes the US file, so 'US' must not reuse it
    q = "SELECT count(*) AS n FROM s.t WHERE region = {} AND id >= {}"
    assert lh.sql(q.format("'EU'", "0")).scalar() == 80
    us = lh.sql(q.format("'US'", "0"))
    assert not cached(us) and us.scalar() == 40
    assert lh.sql(q.format("'US'", "60")).scalar() == 20  # id did not prune: lifted
    assert cached(lh.sql(q.format("'US'", "70")))
    # id = 1000 prunes every file (file statistics): another key is planned afresh
    none = "SELECT id FROM s.t WHERE id = {}"
    assert lh.sql(none.format(1000)).fetchall() == []
    found = lh.sql(none.format(42))
    assert not cached(found) and found.fetchall() == [(42,)]


def test_plans_kept_per_file_set_follow_a_new_version(lh: mx.Lakehouse) -> None:
    q = "SELECT count(*) FROM s.t WHERE id = {}"
    assert lh.sql(q.format(5)).scalar() == 1  # the first file's plan
    assert lh.sql(q.format(50)).scalar() == 1  # the second's (now the statement's latest)
    assert cached(r := lh.sql(q.format(6))) and r.scalar() == 1  # the first file's again
    lh.table("s.t").append(batch(range(6, 9), "US"))  # a new file beside the first one
    got = lh.sql(q.format(7))
    assert not cached(got) and got.scalar() == 2  # both files: planned on the new version
    assert cached(r := lh.sql(q.format(8))) and r.scalar() == 2
    assert lh.sql(q.format(30)).scalar() == 1


def test_literals_that_are_not_compared_with_a_column_stay_as_written(lh: mx.Lakehouse) -> None:
    limit = "SELECT id FROM s.t WHERE id > {} ORDER BY id LIMIT {}"
    assert lh.sql(limit.format(5, 2)).fetchall() == [(6,), (7,)]
    assert lh.sql(limit.format(5, 3)).fetchall() == [(6,), (7,), (8,)]
    assert cached(other := lh.sql(limit.format(9, 3))) and other.fetchall() == [(10,), (11,), (12,)]
    travel = "SELECT count(*) FROM s.t VERSION AS OF {} WHERE id >= {}"
    assert lh.sql(travel.format(0, 0)).scalar() == 40
    assert lh.sql(travel.format(1, 0)).scalar() == 80
    assert lh.sql(travel.format(2, 100)).scalar() == 20
    shown = "SELECT {} AS k, count(*) AS n FROM s.t WHERE id < {}"
    assert lh.sql(shown.format(7, 3)).fetchall() == [(7, 3)]
    assert lh.sql(shown.format(8, 4)).fetchall() == [(8, 4)]
    interval = "SELECT count(*) FROM s.t WHERE d < DATE '2024-01-01' + INTERVAL {} DAY"
    assert lh.sql(interval.format("'3'")).scalar() == 3
    assert lh.sql(interval.format("'5'")).scalar() == 5
    # another dialect reads the same way (PostgreSQL's integer division kept)
    pg = "SELECT id / 2 AS h FROM s.t WHERE id = {}"
    assert lh.sql(pg.format(7), dialect="postgres").fetchall() == [(3,)]
    assert cached(r := lh.sql(pg.format(9), dialect="postgres")) and r.fetchall() == [(4,)]


def test_plans_of_the_moment_are_not_kept_for_other_literals(lh: mx.Lakehouse) -> None:
    q = "SELECT count(*) FROM s.t WHERE id < {} AND d < current_date"
    assert lh.sql(q.format(10)).scalar() == 10
    again = lh.sql(q.format(20))
    assert not cached(again) and again.scalar() == 20
    explain = "EXPLAIN SELECT id FROM s.t WHERE id = {}"
    lh.sql(explain.format(1)).fetchall()
    assert not cached(lh.sql(explain.format(2)))


def test_what_is_not_lifted() -> None:
    assert lift("SELECT 1 -- 2", "duckdb") is None  # comments
    assert lift("SELECT E'a\\nb'", "postgres") is None  # escapes, prefixed strings
    assert lift("SELECT $1", "postgres") is None
    assert lift("SELECT 'a'", "mysql") is None  # "…" is a string there
    assert lift("SELECT a FROM t1", "duckdb") is None  # no literal (t1 is a name)
    assert lift("SELECT '\x00i', 5", "duckdb") is None  # the template's own marker
    vector = ", ".join(str(i / 10) for i in range(20))  # read before sqlglot: other offsets
    assert lift(f"SELECT list_dot_product(v, [{vector}]) FROM t WHERE id = 5", "duckdb") is None
    inside = lift("SELECT 1 FROM t WHERE u = 'a--b/*c$d#e' AND \"x--\" = 2", "duckdb")
    assert inside is not None and inside.texts == ("1", "'a--b/*c$d#e'", "2")
    lits = lift("SELECT \"x 1\" FROM t WHERE a = -1.5 AND b = 'q'''", "duckdb")
    assert lits is not None and lits.texts == ("1.5", "'q'''")


def test_errors_keep_their_line_and_column(lh: mx.Lakehouse, tmp_path: Path) -> None:
    q = "SELECT id\nFROM s.t\nWHERE d = DATE {}"
    assert lh.sql(q.format("'2024-01-02'")).fetchall() == [(1,)]
    with pytest.raises(SQLError) as cached_error:
        lh.sql(q.format("'2024-13-45'"))
    with mx.connect(str(tmp_path / "wh")) as fresh, pytest.raises(SQLError) as fresh_error:
        fresh.sql(q.format("'2024-13-45'"))  # nothing kept in this session
    assert str(cached_error.value) == str(fresh_error.value)
    assert "2024-13-45" in str(cached_error.value)
    for error in (cached_error.value, fresh_error.value):  # no marker of ours in the text
        assert error.sql is not None and "mx_lit" not in error.sql and "2024-13-45" in error.sql


def test_another_process_append_revoke_and_row_filter_are_followed(
    lh: mx.Lakehouse, tmp_path: Path
) -> None:
    wh = str(tmp_path / "wh")
    for stmt in (
        "CREATE USER bob",
        "GRANT USE CATALOG ON CATALOG main TO bob",
        "GRANT USE SCHEMA ON SCHEMA main.s TO bob",
        "GRANT SELECT ON TABLE s.t TO bob",
    ):
        lh.sql(stmt)
    bob = lh.with_principal(Accounts(lh.catalog).principal("bob"))
    q = "SELECT count(*) FROM s.t WHERE id >= {}"
    assert bob.sql(q.format(0)).scalar() == 120
    assert cached(r := bob.sql(q.format(1))) and r.scalar() == 119

    def other(code: str) -> None:
        script = f"import matrixos as mx\nlh = mx.connect({wh!r})\n{code}\n"
        subprocess.run([sys.executable, "-c", script], check=True, timeout=120)

    other("lh.sql(\"ALTER TABLE s.t SET ROW FILTER 'region = ''EU''' FOR bob\")")
    assert not cached(r := bob.sql(q.format(2))) and r.scalar() == 38 + 40  # EU rows only
    assert cached(r := bob.sql(q.format(3))) and r.scalar() == 37 + 40
    other("lh.table('s.t').append([{'id': 500, 'region': 'EU'}])")
    assert not cached(r := bob.sql(q.format(4))) and r.scalar() == 36 + 40 + 1
    assert cached(r := bob.sql(q.format(5))) and r.scalar() == 35 + 40 + 1
    other("lh.sql('REVOKE SELECT ON TABLE s.t FROM bob')")
    with pytest.raises(AccessDenied):  # bob as a server authenticates him again
        lh.with_principal(Accounts(lh.catalog).principal("bob")).sql(q.format(6))
