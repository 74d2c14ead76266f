"""The catalog an object-store warehouse carries: machines that share only the bucket share it.

"Another machine" is a spawned process with its own HOME and MATRIXOS_HOME: it shares nothing
with the test but the S3 server.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import os
import threading
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import matrixos as mx
from matrixos.catalog import TableIdent, TableInfo, open_catalog
from matrixos.catalog._legacy import local_catalog_path
from matrixos.catalog.objectstore import CHECKPOINT_EVERY, ObjectStoreCatalog
from matrixos.errors import ConfigError, StorageError, TableExists, TableNotFound
from matrixos.storage.warehouse import Warehouse

try:
    from tests._servers import S3Server
    from tests.catalog._race import check_race, own_machine, run_workers, spawn_all
except ModuleNotFoundError:
    from _race import check_race, own_machine, run_workers, spawn_all  # type: ignore[no-redef]
    from _servers import S3Server  # type: ignore[no-redef]

OLD = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)


def _second_machine(uri: str, opts: dict[str, str], home: str, out: Any) -> None:
    result: dict[str, Any] = {}
    try:
        own_machine(home)
        with mx.connect(uri, storage_options=opts) as lh:
            result["tables"] = lh.tables()
            result["rows"] = lh.table("shared.seed").to_arrow().column("x").to_pylist()
            lh.table("shared.seed").append(pa.table({"x": [4]}))
            lh.create_table("shared.made", pa.table({"y": ["there"]}))
            lh.drop_table("shared.old")
            result["after"] = lh.tables()
    except BaseException as e:
        result["error"] = f"{type(e).__name__}: {e}"
    out.put(result)


def test_a_second_machine_sees_writes_and_drops(s3_server: S3Server, tmp_path: Path) -> None:
    uri = f"s3://{s3_server.make_bucket()}/wh"
    opts = s3_server.storage_options
    with mx.connect(uri, storage_options=opts) as lh:
        assert lh.catalog.url == f"{uri}/_catalog"
        lh.create_table("shared.seed", pa.table({"x": [1, 2, 3]}))
        old = lh.create_table("shared.old", pa.table({"x": [0]}))

        (result,) = spawn_all(_second_machine, [(uri, opts, str(tmp_path / "b"))])
        assert "error" not in result, result
        assert result["tables"] == ["main.shared.old", "main.shared.seed"]
        assert result["rows"] == [1, 2, 3]
        assert result["after"] == ["main.shared.made", "main.shared.seed"]

        # this session (its catalog cached in memory) sees the other machine's changes
        assert lh.tables() == ["main.shared.made", "main.shared.seed"]
        assert sorted(lh.table("shared.seed").to_arrow().column("x").to_pylist()) == [1, 2, 3, 4]
        assert lh.sql("SELECT y FROM shared.made").fetchall() == [("there",)]
        with pytest.raises(TableNotFound):
            lh.table("shared.old")
        assert not lh.warehouse.fs.exists(old.location)  # the drop removed its files too
    # nothing of the catalog was kept on either machine's disk
    assert not (tmp_path / "b" / ".matrixos" / "catalogs").exists()
    assert not (Path(os.environ["MATRIXOS_HOME"]) / "catalogs").exists()


def test_concurrent_creates_of_one_name_one_wins(s3_server: S3Server, tmp_path: Path) -> None:
    uri = f"s3://{s3_server.make_bucket()}/wh"
    opts = s3_server.storage_options
    n = 3
    homes = [str(tmp_path / f"m{i}") for i in range(n)]
    with mx.connect(uri, storage_options=opts) as lh:
        lh.create_table("shared.seed", pa.table({"x": [1, 2, 3]}))
        # each process sees the seed, creates its own table, then all create one name at once:
        # exactly one wins, the others get a clean TableExists, the files are the winner's
        check_race(lh, run_workers(n, uri, None, opts, homes), n)
    # a different warehouse URI is a different catalog
    with mx.connect(f"s3://{s3_server.make_bucket()}/wh", storage_options=opts) as other:
        assert other.tables() == []


def _empty_bucket(s3: S3Server, bucket: str) -> None:
    client = s3.client()
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            client.delete_object(Bucket=bucket, Key=obj["Key"])


def test_emptied_and_recreated_bucket_leaves_no_stale_entries(s3_server: S3Server) -> None:
    bucket = s3_server.make_bucket()
    uri, opts = f"s3://{bucket}/wh", s3_server.storage_options
    with mx.connect(uri, storage_options=opts) as lh, mx.connect(uri, storage_options=opts) as b:
        lh.create_table("s.t", pa.table({"x": [1]}))
        assert b.tables() == ["main.s.t"]  # b holds the catalog in memory now

        _empty_bucket(s3_server, bucket)
        s3_server.client().delete_bucket(Bucket=bucket)
        with pytest.raises(StorageError, match=f"bucket '{bucket}' does not exist") as err:
            b.tables()
        assert err.value.hint and "create the bucket" in err.value.hint
        s3_server.make_bucket(bucket)

        assert b.tables() == []  # not the entry of the table that went with the old bucket
        b.create_table("s.t", pa.table({"x": [2]}))  # no TableExists
        assert lh.tables() == ["main.s.t"]
        assert lh.table("s.t").to_arrow().column("x").to_pylist() == [2]
        with pytest.raises(TableExists):
            lh.create_table("s.t", pa.table({"x": [3]}))


def test_entries_whose_storage_is_gone(s3_server: S3Server, tmp_path: Path) -> None:
    # A catalog outside the bucket (here SQLite) cannot go with it: its entries are diagnosed.
    bucket = s3_server.make_bucket()
    uri, opts = f"s3://{bucket}/wh", s3_server.storage_options
    url = f"sqlite:///{tmp_path / 'catalog.db'}"
    with mx.connect(uri, storage_options=opts, catalog_url=url) as lh:
        lh.create_table("s.t", pa.table({"x": [1]}))
        _empty_bucket(s3_server, bucket)
        # just created: it may be a creation in progress, so both are named and nothing healed
        with pytest.raises(TableNotFound, match=r"still being created.*files were deleted"):
            lh.table("s.t").to_arrow()
        with pytest.raises(TableExists, match="nothing is stored at") as exists:
            lh.create_table("s.t", pa.table({"x": [2]}))
        assert exists.value.hint and "DROP TABLE main.s.t" in exists.value.hint

        info = lh.catalog.get_table(TableIdent.parse("s.t"))
        lh.catalog.update_table(dataclasses.replace(info, created_at=OLD))
    with mx.connect(uri, storage_options=opts, catalog_url=url) as lh:
        with pytest.raises(TableNotFound, match=r"storage at .* is gone") as err:
            lh.table("s.t").to_arrow()
        assert err.value.hint and "DROP TABLE main.s.t" in err.value.hint
        # creating it again replaces the stale entry
        assert lh.create_table("s.t", pa.table({"x": [2]})).to_arrow().column("x").to_pylist() == [
            2
        ]
        assert lh.table("s.t").location != info.location


def test_lance_entry_whose_storage_is_gone(tmp_path: Path) -> None:
    with mx.connect(str(tmp_path / "wh"), catalog_url=f"file://{tmp_path / 'log'}") as lh:
        t = lh.create_table("s.v", pa.table({"x": [1]}), format="lance")
        lh.warehouse.remove(t.location)
        lh.catalog.update_table(dataclasses.replace(t.info, created_at=OLD))
        with pytest.raises(TableNotFound, match=r"storage at .* is gone"):
            lh.table("s.v").to_arrow()
        lh.drop_table("s.v")  # the fix-it hint works
        assert lh.tables() == []


def test_local_catalog_of_an_s3_warehouse_is_imported(
    s3_server: S3Server, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uri, opts = f"s3://{s3_server.make_bucket()}/wh", s3_server.storage_options
    home = tmp_path / "home"
    # what older versions did: a SQLite catalog under MATRIXOS_HOME
    legacy = local_catalog_path(Warehouse(uri, opts), str(home))
    legacy.parent.mkdir(parents=True)
    with mx.connect(uri, storage_options=opts, catalog_url=f"sqlite:///{legacy}") as old:
        old.create_table("old.kept", pa.table({"x": [1]}))
        lost = old.create_table("old.lost", pa.table({"x": [2]}))
        old.create_volume("old.files")
        old.warehouse.remove(lost.location)  # a stale entry: its storage is gone

    with caplog.at_level(logging.WARNING, logger="matrixos.catalog._legacy"):
        lh = mx.connect(uri, storage_options=opts, home=str(home))
    with lh:
        assert lh.tables() == ["main.old.kept"]
        assert lh.volumes() == ["main.old.files"]
        assert lh.table("old.kept").to_arrow().column("x").to_pylist() == [1]
    assert "1 skipped because their storage is gone (main.old.lost)" in caplog.text
    assert not legacy.exists() and legacy.with_name(legacy.name + ".imported").exists()
    # read once: another machine (no local file) sees the same, nothing is imported twice
    with mx.connect(uri, storage_options=opts, home=str(tmp_path / "other")) as again:
        assert again.tables() == ["main.old.kept"]
        assert isinstance(again.catalog, ObjectStoreCatalog) and again.catalog.version == 0


# ------------------------------------------------------------------- the log, on local files
def _info(name: str, location: str = "/x") -> TableInfo:
    return TableInfo(TableIdent.parse(name), "delta", location)


def test_log_checkpoints_and_replays_to_the_same_state(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'log'}"
    writer = open_catalog(url)
    reader = open_catalog(url)
    assert reader.list_schemas() == [("main", "default")]  # an empty log: the defaults
    for i in range(CHECKPOINT_EVERY + 5):
        writer.create_schema("main", f"s{i}")
    writer.create_table(_info("s1.t"))
    writer.drop_schema("main", "s2")
    assert (tmp_path / "log" / "checkpoints" / f"{CHECKPOINT_EVERY:020d}.json").is_file()
    fresh = open_catalog(url)  # starts from the checkpoint
    for cat in (writer, reader, fresh):
        assert len(cat.list_schemas()) == CHECKPOINT_EVERY + 5
        assert ("main", "s2") not in cat.list_schemas()
        assert [t.name for t in cat.list_tables()] == ["main.s1.t"]
    # a commit's history is kept as written
    assert (tmp_path / "log" / "log" / f"{CHECKPOINT_EVERY + 6:020d}.json").is_file()


def test_log_writers_in_threads_race_safely(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'log'}"
    cats = [open_catalog(url) for _ in range(6)]
    cats[0].create_schema("main", "s")
    outcomes: list[str] = []
    barrier = threading.Barrier(len(cats))

    def go(i: int) -> None:
        barrier.wait()
        cats[i].create_table(_info(f"s.own_{i}"))
        try:
            cats[i].create_table(_info("s.same", f"/loc{i}"))
            outcomes.append("won")
        except TableExists:
            outcomes.append("exists")

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(cats))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["exists"] * (len(cats) - 1) + ["won"]
    names = [t.name for t in open_catalog(url).list_tables()]
    assert names == [f"main.s.own_{i}" for i in range(len(cats))] + ["main.s.same"]
    # a conditional drop removes only the entry at the location it names
    same = cats[0].get_table(TableIdent.parse("s.same"))
    with pytest.raises(TableNotFound, match="no longer at /elsewhere"):
        cats[1].drop_table(same.ident, location="/elsewhere")
    assert cats[1].drop_table(same.ident, location=same.location) == same


def test_catalog_urls_pick_a_backend() -> None:
    assert type(open_catalog("sqlite://")).__name__ == "SQLCatalog"
    assert isinstance(open_catalog("memory://cat-test/_catalog"), ObjectStoreCatalog)
    with pytest.raises(ConfigError, match="unsupported catalog URL 'mysql://x'") as err:
        open_catalog("mysql://x")
    assert err.value.hint and "s3://bucket/prefix/_catalog" in err.value.hint
    with mx.connect("memory://cat-test-wh") as lh:
        assert lh.catalog.url == "memory://cat-test-wh/_catalog"
