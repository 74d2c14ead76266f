"""The catalog on SQLite and on a real PostgreSQL server: names, schemas, table facts, and many
processes sharing one catalog (spawned, never forked: delta-rs panics in forked children)."""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest
import sqlalchemy as sa

import matrixos as mx
from matrixos.catalog import TableIdent
from matrixos.catalog.store import SQLCatalog
from matrixos.errors import SchemaNotFound, SQLError, TableExists, TableNotFound
from matrixos.storage.delta import wait_for_maintenance

try:
    from tests.catalog._race import check_race, run_workers
except ModuleNotFoundError:
    from _race import check_race, run_workers  # type: ignore[no-redef]

UTC = dt.UTC


@pytest.fixture
def catalog_lh(tmp_path: Path, catalog_url: str) -> Iterator[mx.Lakehouse]:
    with mx.connect(str(tmp_path / "wh"), catalog_url=catalog_url, user="alice") as lh:
        yield lh


# --------------------------------------------------------------------------------------- names
def test_three_level_names_and_defaults(catalog_lh: mx.Lakehouse) -> None:
    a = catalog_lh.create_table("t", pa.table({"x": [1]}))
    b = catalog_lh.create_table("s.t", pa.table({"x": [2]}))
    c = catalog_lh.create_table("other.s.t", pa.table({"x": [3]}))
    assert (a.name, b.name, c.name) == ("main.default.t", "main.s.t", "other.s.t")
    wh = catalog_lh.warehouse.uri
    # managed tables live under <catalog>/<schema>/, in a folder of their own per creation
    assert re.fullmatch(re.escape(f"{wh}/main/default/t-") + "[0-9a-f]{12}", a.location)
    assert re.fullmatch(re.escape(f"{wh}/main/s/t-") + "[0-9a-f]{12}", b.location)
    assert re.fullmatch(re.escape(f"{wh}/other/s/t-") + "[0-9a-f]{12}", c.location)
    assert catalog_lh.tables() == ["main.default.t", "main.s.t", "other.s.t"]
    assert catalog_lh.tables("s") == ["main.s.t"]
    assert catalog_lh.tables("other.s") == ["other.s.t"]
    for name in ("t", "default.t", "main.default.t", "MAIN.Default.T"):
        assert catalog_lh.table(name).name == "main.default.t"
        assert catalog_lh.sql(f"SELECT x FROM {name}").fetchall() == [(1,)]
    assert catalog_lh.sql("SELECT x FROM s.t").fetchall() == [(2,)]
    assert catalog_lh.sql("SELECT x FROM main.s.t").fetchall() == [(2,)]
    assert catalog_lh.sql("SELECT x FROM other.s.t").fetchall() == [(3,)]
    assert str(TableIdent.parse("s.t")) == "main.s.t"
    assert "main.s" in catalog_lh.schemas() and "other.s" in catalog_lh.schemas("other")
    with pytest.raises(TableNotFound):
        catalog_lh.table("s.nope")
    with pytest.raises(TableNotFound):
        catalog_lh.sql("SELECT * FROM nope.t")


BAD_NAMES = [
    "../x",
    "a/b",
    "a.b.c.d",
    "",
    "s.",
    ".t",
    "a b",
    "x;drop",
    "t'",
    "é",
    "-x",
    "s..t",
    "~/t",
]


def test_invalid_names_are_refused(catalog_lh: mx.Lakehouse) -> None:
    before = sorted(p.name for p in Path(catalog_lh.warehouse.uri).iterdir())
    for name in BAD_NAMES:
        with pytest.raises(SQLError) as err:
            catalog_lh.create_table(name, pa.table({"x": [1]}))
        # the message names what the user wrote, not just the part that failed
        assert str(err.value).startswith(f"invalid table name {name!r}"), (name, str(err.value))
        with pytest.raises(SQLError):
            catalog_lh.table(name)
    assert sorted(p.name for p in Path(catalog_lh.warehouse.uri).iterdir()) == before
    assert catalog_lh.tables() == []


def test_invalid_schema_and_sql_names(catalog_lh: mx.Lakehouse) -> None:
    for bad in ("../x", "a/b", "a.b.c", "x y"):
        with pytest.raises(SQLError, match="invalid"):
            catalog_lh.create_schema(bad)
    with pytest.raises(SQLError):
        catalog_lh.sql('CREATE TABLE "../evil" (id INT)')
    with pytest.raises(SQLError):
        catalog_lh.sql('CREATE TABLE "a/b".t (id INT)')
    with pytest.raises(SQLError):
        catalog_lh.sql("SELECT * FROM a.b.c.d")
    assert catalog_lh.tables() == []
    assert catalog_lh.schemas() == ["main.default"]
    assert not (Path(catalog_lh.warehouse.uri).parent / "evil").exists()


# ------------------------------------------------------------------------------------- schemas
def test_schemas_create_list_drop(catalog_lh: mx.Lakehouse) -> None:
    assert catalog_lh.schemas() == ["main.default"]
    catalog_lh.create_schema("sales", comment="money")
    catalog_lh.create_schema("lab.raw")
    catalog_lh.create_schema("sales")  # if_not_exists by default
    with pytest.raises(TableExists):
        catalog_lh.create_schema("sales", if_not_exists=False)
    assert catalog_lh.schemas() == ["lab.raw", "main.default", "main.sales"]
    assert catalog_lh.schemas("lab") == ["lab.raw"]

    catalog_lh.create_table("sales.orders", pa.table({"id": [1]}))
    with pytest.raises(TableExists, match="still holds 1 table"):
        catalog_lh.drop_schema("sales")
    assert "main.sales" in catalog_lh.schemas()
    catalog_lh.drop_table("sales.orders")
    catalog_lh.drop_schema("sales")
    assert catalog_lh.schemas() == ["lab.raw", "main.default"]
    with pytest.raises(SchemaNotFound):
        catalog_lh.drop_schema("sales")
    catalog_lh.drop_schema("sales", if_exists=True)

    # SQL spells the same things
    catalog_lh.sql("CREATE SCHEMA mart")
    catalog_lh.sql("CREATE SCHEMA IF NOT EXISTS mart")
    with pytest.raises(TableExists):
        catalog_lh.sql("CREATE SCHEMA mart")
    shown = catalog_lh.sql("SHOW SCHEMAS").to_arrow().column("schema").to_pylist()
    assert shown == ["lab.raw", "main.default", "main.mart"]
    catalog_lh.sql("DROP SCHEMA mart")
    assert "main.mart" not in catalog_lh.schemas()
    # one rule for SQL and the SDK: creating a table creates its schema
    catalog_lh.sql("CREATE TABLE nowhere.t (id INT)")
    assert "main.nowhere" in catalog_lh.schemas() and catalog_lh.tables("nowhere") == [
        "main.nowhere.t"
    ]
    catalog_lh.sql("CREATE TABLE built.t AS SELECT 1 AS id")
    assert catalog_lh.sql("SELECT id FROM built.t").scalar() == 1
    catalog_lh.create_table("made.t", pa.table({"id": [1]}))
    assert "main.made" in catalog_lh.schemas()
    with pytest.raises(SchemaNotFound):
        catalog_lh.create_table("absent.t", pa.table({"id": [1]}), create_schema=False)
    assert catalog_lh.tables("absent") == []


# ---------------------------------------------------------------------------------- table facts
def test_table_comment_properties_owner_and_times(
    catalog_lh: mx.Lakehouse, catalog_url: str
) -> None:
    start = dt.datetime.now(UTC)
    t = catalog_lh.create_table(
        "s.facts",
        pa.table({"id": [1]}),
        comment="facts about things",
        properties={"team": "data", "matrixos.autoCompact.minFiles": "3"},
    )
    d = t.describe()
    assert d["comment"] == "facts about things"
    assert d["properties"] == {"team": "data", "matrixos.autoCompact.minFiles": "3"}
    assert d["owner"] == "alice"
    assert d["external"] is False
    created, updated = d["created_at"], d["updated_at"]
    assert created.tzinfo is not None and updated.tzinfo is not None
    assert start - dt.timedelta(seconds=2) <= created <= dt.datetime.now(UTC)
    assert updated >= created

    # A write moves updated_at; the object-store log records that at most once a minute per
    # table (every write of every writer would otherwise be a catalog commit).
    log = catalog_url.startswith("file://")
    time.sleep(0.01)
    t.append(pa.table({"id": [2]}))
    after = catalog_lh.table("s.facts").describe()
    assert after["updated_at"] == updated if log else after["updated_at"] > updated
    assert after["created_at"] == created
    time.sleep(0.01)
    catalog_lh.sql("DELETE FROM s.facts WHERE id = 1")
    later = catalog_lh.table("s.facts").info.updated_at
    assert later == updated if log else later > after["updated_at"]

    # the per-table property is honoured: 3 small files trigger compaction
    t = catalog_lh.table("s.facts")
    t.append(pa.table({"id": [3]}))
    t.append(pa.table({"id": [4]}))
    wait_for_maintenance()  # auto-compaction runs off the commit path
    assert "OPTIMIZE" in [h["operation"] for h in t.history()]

    # facts survive a new session (another process would see the same)
    with mx.connect(catalog_lh.warehouse.uri, catalog_url=catalog_url) as again:
        d2 = again.table("s.facts").describe()
        assert d2["comment"] == "facts about things"
        assert d2["owner"] == "alice"
        assert d2["properties"]["team"] == "data"
        assert d2["created_at"] == created
        assert sorted(again.table("s.facts").to_arrow().column("id").to_pylist()) == [2, 3, 4]


def test_duplicate_table(catalog_lh: mx.Lakehouse) -> None:
    catalog_lh.create_table("s.dup", pa.table({"id": [1]}))
    with pytest.raises(TableExists, match=r"main\.s\.dup"):
        catalog_lh.create_table("s.dup", pa.table({"id": [2]}))
    with pytest.raises(TableExists):
        catalog_lh.sql("CREATE TABLE s.dup (id INT)")
    assert catalog_lh.table("s.dup").to_arrow().column("id").to_pylist() == [1]
    assert catalog_lh.create_table("s.dup", pa.table({"id": [9]}), mode="ignore").version == 0
    assert catalog_lh.table("s.dup").to_arrow().column("id").to_pylist() == [1]
    catalog_lh.sql("CREATE TABLE IF NOT EXISTS s.dup (id INT)")
    t = catalog_lh.create_table("s.dup", pa.table({"id": [7], "v": ["x"]}), mode="overwrite")
    assert t.to_arrow().to_pylist() == [{"id": 7, "v": "x"}]
    assert catalog_lh.tables("s") == ["main.s.dup"]
    with pytest.raises(TableExists):
        catalog_lh.register_table("s.dup", t.location)


def test_catalog_tables_are_created_once(sql_catalog_url: str) -> None:
    # two Catalog objects on one fresh database: both see the defaults, neither fails
    a, b = SQLCatalog(sql_catalog_url), SQLCatalog(sql_catalog_url)
    try:
        assert a.list_schemas() == b.list_schemas() == [("main", "default")]
        engine = sa.create_engine(a.engine.url)
        try:
            names = set(sa.inspect(engine).get_table_names())
        finally:
            engine.dispose()
        assert {"mx_catalogs", "mx_schemas", "mx_tables"} <= names
    finally:
        a.close()
        b.close()


# ---------------------------------------------------------------------------- many processes
def test_processes_share_the_catalog_and_race_safely(
    catalog_lh: mx.Lakehouse, catalog_url: str
) -> None:
    catalog_lh.create_table("shared.seed", pa.table({"x": [1, 2, 3]}))
    n = 4
    results = run_workers(n, catalog_lh.warehouse.uri, catalog_url, None)
    check_race(catalog_lh, results, n)
    # the catalog database itself is intact
    with mx.connect(catalog_lh.warehouse.uri, catalog_url=catalog_url) as fresh:
        assert len(fresh.tables("shared")) == n + 2
        for name in fresh.tables("shared"):
            assert fresh.table(name).to_arrow().num_rows in (3, 5)
