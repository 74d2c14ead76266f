"""Cached catalog entries, policies, snapshots and plans (matrixos/catalog/cache.py,
engine/sql/plans.py) never hide another process's change from the next statement.

``mine`` is the session whose caches are under test; ``theirs`` is a second Lakehouse on the
same warehouse and catalog (nothing shared in memory: its own service, caches and engine), and
two cases run the change in a separate Python process. On the SQLite and PostgreSQL catalogs.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

import matrixos as mx
from matrixos.catalog.accounts import Accounts
from matrixos.errors import AccessDenied, TableNotFound

try:
    from tests._servers import PostgresServer
except ModuleNotFoundError:
    from _servers import PostgresServer  # type: ignore[no-redef]

Q = "SELECT count(*) FROM s.t"


@pytest.fixture(params=["sqlite", "postgres"])
def pair(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[mx.Lakehouse, ...]]:
    url = None
    if request.param == "postgres":
        pg: PostgresServer = request.getfixturevalue("postgres_server")
        url = pg.url(pg.create_database())
    wh = str(tmp_path / "wh")
    with mx.connect(wh, catalog_url=url) as mine, mx.connect(wh, catalog_url=url) as theirs:
        mine.create_table("s.t", pa.table({"id": [1, 2, 3], "region": ["EU", "US", "EU"]}))
        for stmt in (
            "CREATE USER bob",
            "GRANT USE CATALOG ON CATALOG main TO bob",
            "GRANT USE SCHEMA ON SCHEMA main.s TO bob",
        ):
            mine.sql(stmt)
        yield mine, theirs


def as_(lh: mx.Lakehouse, name: str) -> mx.Lakehouse:
    """``lh`` acting as ``name``, with its grants as the catalog has them now (as a server
    authenticates each request)."""
    return lh.with_principal(Accounts(lh.catalog).principal(name))


def cached(result: mx.Result) -> bool:
    return result.stats.get("plan") == "cached"


def other_process(wh: str, url: str | None, code: str) -> None:
    """Run ``code`` (with ``lh``, a session on the warehouse) in a new Python process."""
    script = f"import matrixos as mx\nlh = mx.connect({wh!r}, catalog_url={url!r})\n{code}\n"
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)


def test_a_repeated_query_is_planned_once_until_a_table_changes(
    pair: tuple[mx.Lakehouse, mx.Lakehouse],
) -> None:
    mine, theirs = pair
    assert mine.sql(Q).scalar() == 3
    again = mine.sql(Q)
    assert cached(again) and again.scalar() == 3
    theirs.table("s.t").append(pa.table({"id": [4], "region": ["US"]}))
    after = mine.sql(Q)
    assert not cached(after) and after.scalar() == 4  # a new version: planned again
    assert cached(mine.sql(Q))
    # time travel names its version: still that version's rows after more appends
    old = "SELECT count(*) FROM s.t VERSION AS OF 0"
    assert mine.sql(old).scalar() == 3
    theirs.table("s.t").append(pa.table({"id": [5], "region": ["EU"]}))
    assert mine.sql(old).scalar() == 3 and mine.sql(Q).scalar() == 5


def test_a_schema_change_and_a_recreated_table_are_seen(
    pair: tuple[mx.Lakehouse, mx.Lakehouse],
) -> None:
    mine, theirs = pair
    star = "SELECT * FROM s.t ORDER BY id"
    assert mine.sql(star).to_arrow().column_names == ["id", "region"]
    assert cached(mine.sql(star))
    theirs.table("s.t").append(pa.table({"id": [9], "region": ["EU"], "x": [1.5]}), evolve=True)
    assert mine.sql(star).to_arrow().column_names == ["id", "region", "x"]
    theirs.drop_table("s.t")
    with pytest.raises(TableNotFound):
        mine.sql(star)
    theirs.create_table("s.t", pa.table({"name": ["a"]}))
    assert mine.sql(star.replace("id", "name")).fetchall() == [("a",)]
    assert mine.sql("SELECT * FROM s.t").to_arrow().column_names == ["name"]


def test_policies_set_or_dropped_elsewhere_apply_to_the_next_statement(
    pair: tuple[mx.Lakehouse, mx.Lakehouse],
) -> None:
    mine, theirs = pair
    mine.sql("GRANT SELECT ON TABLE s.t TO bob")
    bob = as_(mine, "bob")  # one principal object throughout: only the policies change
    assert bob.sql(Q).scalar() == 3
    assert cached(bob.sql(Q))
    theirs.sql("ALTER TABLE s.t SET ROW FILTER 'region = ''EU''' FOR bob")
    assert bob.sql(Q).scalar() == 2
    assert cached(bob.sql(Q)) and bob.sql(Q).scalar() == 2
    theirs.sql("ALTER TABLE s.t ALTER COLUMN region SET MASK '''***''' FOR bob")
    assert bob.sql("SELECT DISTINCT region FROM s.t").fetchall() == [("***",)]
    theirs.sql("ALTER TABLE s.t DROP ROW FILTER FOR bob")
    assert bob.sql(Q).scalar() == 3
    assert mine.sql("SELECT count(*) FROM s.t WHERE region = 'EU'").scalar() == 2  # owner


def test_grants_and_appends_from_another_process(
    pair: tuple[mx.Lakehouse, mx.Lakehouse], tmp_path: Path
) -> None:
    mine, _ = pair
    wh, url = str(tmp_path / "wh"), mine.settings.catalog_url
    with pytest.raises(AccessDenied):
        as_(mine, "bob").sql(Q)
    other_process(wh, url, "lh.sql('GRANT SELECT ON TABLE s.t TO bob')")
    assert as_(mine, "bob").sql(Q).scalar() == 3
    assert cached(as_(mine, "bob").sql(Q))
    other_process(wh, url, "lh.table('s.t').append([{'id': 7, 'region': 'US'}])")
    assert mine.sql(Q).scalar() == 4 and as_(mine, "bob").sql(Q).scalar() == 4
    other_process(wh, url, "lh.sql('REVOKE SELECT ON TABLE s.t FROM bob')")
    with pytest.raises(AccessDenied):
        as_(mine, "bob").sql(Q)


def test_plans_that_depend_on_the_moment_are_not_kept(
    pair: tuple[mx.Lakehouse, mx.Lakehouse],
) -> None:
    mine, _ = pair
    # folded by DuckDB at plan time, the same at every run: kept
    stable = (
        "SELECT count(*) FROM s.t "
        "WHERE id < 1 + 1 AND region > CAST(TIMESTAMP '2026-01-01' AS VARCHAR)"
    )
    assert mine.sql(stable).scalar() == 1
    assert cached(mine.sql(stable))
    # a value of the moment: planned again every time
    volatile = "SELECT count(*) FROM s.t WHERE region < CAST(now() AS VARCHAR)"
    mine.sql(volatile).fetchall()
    assert not cached(mine.sql(volatile))
    ago = "SELECT count(*) FROM s.t AT (OFFSET => -3600)"  # an hour ago, from now
    with pytest.raises(mx.MatrixOSError):
        mine.sql(ago)  # the table is younger: no version then, refused every time alike
    with pytest.raises(mx.MatrixOSError):
        mine.sql(ago)
    recent = "SELECT count(*) FROM s.t AT (OFFSET => 0)"
    assert mine.sql(recent).scalar() == 3
    assert not cached(mine.sql(recent))
