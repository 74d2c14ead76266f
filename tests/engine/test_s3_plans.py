"""Kept plans of tables on an object store (engine/sql/plans.py, moto S3): the plan keeps the
pyarrow datasets of the Delta files it scans and checks each table's version with one LIST of
its log (``DeltaStore.is_latest``); another process's append, overwrite or drop-and-recreate is
seen by the next statement, and a kept plan answers as planning again would."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pyarrow as pa
import pytest

import matrixos as mx
from matrixos.catalog.names import TableIdent
from matrixos.engine.sql import local
from matrixos.errors import TableNotFound
from matrixos.storage._delta_log import is_latest_on_s3
from matrixos.storage.delta import DeltaStore

try:
    from tests._servers import S3Server
except ModuleNotFoundError:
    from _servers import S3Server  # type: ignore[no-redef]


@pytest.fixture
def s3(s3_server: S3Server) -> Iterator[tuple[mx.Lakehouse, str, dict[str, str]]]:
    uri = f"s3://{s3_server.make_bucket()}/wh"
    options = dict(s3_server.storage_options)
    with mx.connect(uri, storage_options=options) as lh:
        lh.create_table(
            "s.t",
            pa.table({"id": list(range(20)), "g": [i % 3 for i in range(20)]}),
            partition_by=["g"],
        )
        lh.create_table("s.names", pa.table({"g": [0, 1, 2], "name": ["zero", "one", "two"]}))
        yield lh, uri, options


def cached(result: mx.Result) -> bool:
    return result.stats.get("plan") == "cached"


def other_process(uri: str, options: dict[str, str], code: str) -> None:
    """Run ``code`` (with ``lh``, a session on the same S3 warehouse) in a new process."""
    script = (
        "import matrixos as mx, pyarrow as pa\n"
        f"lh = mx.connect({uri!r}, storage_options={options!r})\n{code}\nlh.close()\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=180)


STATEMENTS = [
    "SELECT * FROM s.t WHERE id = 7",
    "SELECT g, count(*) AS n, sum(id) AS s FROM s.t GROUP BY g ORDER BY g",
    "SELECT count(*) FROM s.t WHERE g = 2",  # pruned to one partition
    "SELECT n.name, count(*) AS c FROM s.t JOIN s.names n USING (g) GROUP BY 1 ORDER BY 1",
    "SELECT count(*) FROM s.t VERSION AS OF 0",
]


def test_a_kept_plan_on_s3_answers_as_planning_again_would(
    s3: tuple[mx.Lakehouse, str, dict[str, str]],
) -> None:
    lh = s3[0]
    for i, q in enumerate(STATEMENTS):
        first = lh.sql(q).to_arrow()
        for j in range(2):
            kept = lh.sql(q)
            assert cached(kept), q
            fresh = lh.sql(f"{q} -- {i}.{j}")  # another text: planned from scratch
            assert not cached(fresh)
            want = fresh.to_arrow()
            assert kept.to_arrow().equals(want) and first.equals(want), q
            assert want.num_rows > 0


def test_another_process_append_and_overwrite_are_seen(
    s3: tuple[mx.Lakehouse, str, dict[str, str]],
) -> None:
    lh, uri, options = s3
    q = "SELECT count(*), sum(id) FROM s.t"
    assert lh.sql(q).fetchall() == [(20, 190)]
    assert cached(lh.sql(q))
    other_process(uri, options, "lh.table('s.t').append(pa.table({'id': [100], 'g': [1]}))")
    after = lh.sql(q)
    assert not cached(after) and after.fetchall() == [(21, 290)]
    assert cached(again := lh.sql(q)) and again.fetchall() == [(21, 290)]
    other_process(uri, options, "lh.table('s.t').overwrite(pa.table({'id': [5, 6], 'g': [0, 0]}))")
    assert lh.sql(q).fetchall() == [(2, 11)]
    assert cached(again := lh.sql(q)) and again.fetchall() == [(2, 11)]
    join = "SELECT n.name, sum(t.id) FROM s.t t JOIN s.names n ON t.g = n.g GROUP BY 1"
    assert lh.sql(join).fetchall() == [("zero", 11)]
    other_process(uri, options, "lh.table('s.names').append(pa.table({'g': [0], 'name': ['z']}))")
    assert sorted(lh.sql(join).fetchall()) == [("z", 11), ("zero", 11)]


def test_another_process_drop_and_recreate_is_seen(
    s3: tuple[mx.Lakehouse, str, dict[str, str]],
) -> None:
    lh, uri, options = s3
    q = "SELECT * FROM s.names ORDER BY g"
    assert lh.sql(q).fetchall() == [(0, "zero"), (1, "one"), (2, "two")]
    assert cached(lh.sql(q))
    other_process(uri, options, "lh.drop_table('s.names')")
    with pytest.raises(TableNotFound):
        lh.sql(q)
    # Made again (a new entry, at a new location), as many versions as before.
    other_process(
        uri, options, "lh.create_table('s.names', pa.table({'g': [7], 'name': ['seven']}))"
    )
    assert lh.sql(q).fetchall() == [(7, "seven")]
    assert cached(again := lh.sql(q)) and again.fetchall() == [(7, "seven")]
    # Dropped and made again between two statements of this session, version for version.
    other_process(
        uri,
        options,
        "lh.drop_table('s.names')\n"
        "lh.create_table('s.names', pa.table({'g': [8], 'name': ['eight']}))",
    )
    assert lh.sql(q).fetchall() == [(8, "eight")]


def test_the_version_check_lists_the_log_from_the_version_on(
    s3: tuple[mx.Lakehouse, str, dict[str, str]],
) -> None:
    lh = s3[0]
    info = lh.service.cache.get_table(TableIdent.parse("s.t"))
    store = lh.service.store(info)
    assert isinstance(store, DeltaStore)
    handle = store.open()
    assert store.is_latest(handle)
    lh.table("s.t").append(pa.table({"id": [50], "g": [2]}))
    assert not store.is_latest(handle)  # a later commit
    newer = store.open()
    assert store.is_latest(newer) and newer.version() == handle.version() + 1
    lh.table("s.t").optimize()  # a compaction and its checkpoint: still told apart
    assert not store.is_latest(newer) and store.is_latest(store.open())
    missing = DeltaStore(info.location + "-nothing", store.storage_options)
    assert not missing.is_latest(newer)  # no log at all


def test_a_text_search_joined_with_an_s3_table_is_kept_and_follows_writes(
    s3: tuple[mx.Lakehouse, str, dict[str, str]],
) -> None:
    lh, uri, options = s3
    lh.create_table(
        "s.docs",
        pa.table({"id": list(range(30)), "text": [f"word{i} files" for i in range(30)]}),
        format="lance",
    )
    q = (
        "SELECT d.id, t.g FROM text_search(s.docs, '{}', k => 1) AS d "
        "JOIN s.t AS t ON t.id = d.id ORDER BY d.id"
    )
    for i, row in enumerate((4, 11, 17)):
        kept = lh.sql(q.format(f"word{row}"))
        assert kept.fetchall() == [(row, row % 3)]
        assert cached(kept) is (i > 0)
        fresh = lh.sql(q.format(f"word{row}") + f" -- {i}")
        assert not cached(fresh) and fresh.fetchall() == [(row, row % 3)]
    other_process(uri, options, "lh.sql('UPDATE s.t SET g = 9 WHERE id = 5')")
    after = lh.sql(q.format("word5"))
    assert not cached(after) and after.fetchall() == [(5, 9)]
    assert cached(again := lh.sql(q.format("word6"))) and again.fetchall() == [(6, 0)]


def test_the_version_check_reads_the_log_listing_as_delta_writes_it(s3_server: S3Server) -> None:
    bucket = s3_server.make_bucket()
    client = s3_server.client()
    options = s3_server.storage_options
    location = f"s3://{bucket}/t"

    def put(*names: str) -> None:
        for name in names:
            client.put_object(Bucket=bucket, Key=f"t/_delta_log/{name}", Body=b"{}")

    def latest(v: int) -> bool:
        return is_latest_on_s3(location, options, v)

    assert not latest(0)  # no log
    put(f"{0:020d}.json", f"{1:020d}.crc", f"{1:020d}.json", "_last_checkpoint")
    assert latest(1) and not latest(0) and not latest(2)
    put(*(f"{2:020d}.checkpoint.{p:010d}.{30:010d}.parquet" for p in range(1, 31)))
    assert not latest(1)  # a checkpoint of version 2 (its commit not yet listed)
    assert not latest(2)  # 30 files of version 2: the page ends before telling what follows
    client.delete_objects(
        Bucket=bucket,
        Delete={
            "Objects": [
                {"Key": f"t/_delta_log/{2:020d}.checkpoint.{p:010d}.{30:010d}.parquet"}
                for p in range(2, 31)
            ]
        },
    )
    assert latest(2)  # a checkpoint at the version stands for its commit
    put(f"{3:020d}.json", "_commit_0b7a.json.tmp")
    assert latest(3) and not latest(2)
    assert latest(3) is is_latest_on_s3(f"s3a://{bucket}/t/", options, 3)
    assert not is_latest_on_s3(f"gs://{bucket}/t", options, 3)  # another store: refreshed


def test_a_plan_over_more_object_store_files_than_it_may_hold_is_planned_each_time(
    s3: tuple[mx.Lakehouse, str, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    lh = s3[0]
    monkeypatch.setattr(local, "KEPT_REMOTE_FILES", 2)  # s.t has 3 files, one per partition
    for q, n, kept in (
        ("SELECT count(*) FROM s.t", 20, False),
        ("SELECT count(*) FROM s.t WHERE g = 2", 6, True),
    ):
        assert lh.sql(q).scalar() == n
        again = lh.sql(q)
        assert again.scalar() == n and cached(again) is kept
