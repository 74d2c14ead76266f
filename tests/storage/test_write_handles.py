"""The small-append path of Delta tables (``storage.delta``). A process keeps the snapshot its
last write left behind and brings it up to date before the next write: commits made meanwhile by
another process (rows added, deleted, the schema evolved, the table overwritten) are all seen by
that next write. Auto-compaction is size-tiered, so appends do not rewrite the whole table."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake

import matrixos as mx
from matrixos.storage.delta import DeltaStore, wait_for_maintenance

_OTHER = """
import json, sys
import pyarrow as pa
import matrixos as mx
uri, options, op = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
with mx.connect(uri, storage_options=options) as lh:
    t = lh.table("s.h")
    if op == "evolve":
        t.append(pa.table({"id": [2], "note": ["from the other process"]}), evolve=True)
    elif op == "delete":
        t.delete("id = 1")
    elif op == "overwrite":
        t.overwrite(pa.table({"id": [10, 11]}))
"""


def other_process(target: Any, op: str) -> None:
    """``op`` on table s.h, committed by another Python process."""
    subprocess.run(
        [sys.executable, "-c", _OTHER, target.uri, json.dumps(target.storage_options), op],
        check=True,
        timeout=120,
    )


def ids(t: Any) -> list[int]:
    return sorted(t.to_arrow().column("id").to_pylist())


def test_the_next_append_sees_another_process_evolve_the_schema(
    lh: mx.Lakehouse, warehouse_root: Any
) -> None:
    t = lh.create_table("s.h", pa.table({"id": [0]}))
    t.append(pa.table({"id": [1]}))  # this process now holds the snapshot at version 1
    other_process(warehouse_root, "evolve")
    assert t.append(pa.table({"id": [3]})).version == 3
    got = sorted(t.to_arrow().to_pylist(), key=lambda r: r["id"])
    assert got == [
        {"id": 0, "note": None},
        {"id": 1, "note": None},
        {"id": 2, "note": "from the other process"},
        {"id": 3, "note": None},
    ]
    assert t.schema.names == ["id", "note"]
    assert [h["version"] for h in t.history()] == [3, 2, 1, 0]


def test_the_next_append_keeps_another_process_delete_and_overwrite(
    lh: mx.Lakehouse, warehouse_root: Any
) -> None:
    t = lh.create_table("s.h", pa.table({"id": [0]}))
    t.append(pa.table({"id": [1]}))
    other_process(warehouse_root, "delete")
    t.append(pa.table({"id": [2]}))
    assert ids(t) == [0, 2]  # the row deleted meanwhile stays deleted
    other_process(warehouse_root, "overwrite")
    t.append(pa.table({"id": [3]}))
    assert ids(t) == [3, 10, 11]
    assert lh.sql("SELECT count(*) FROM s.h").fetchall() == [(3,)]
    assert t.version == 5


def test_a_failed_write_leaves_no_handle_behind(lh: mx.Lakehouse) -> None:
    t = lh.create_table("s.h", pa.table({"id": [0]}))
    t.append(pa.table({"id": [1]}))
    with pytest.raises(mx.MatrixOSError):
        t.append(pa.table({"id": ["not a number"]}))
    assert t.append(pa.table({"id": [2]})).version == 2
    assert ids(t) == [0, 1, 2]


def _random_rows(lo: int, n: int = 2_000) -> pa.Table:
    # Random doubles do not compress: each batch is a ~17 KB file.
    values = np.random.default_rng(lo).random(n)
    return pa.table({"id": np.arange(lo, lo + n), "v": values})


def test_auto_compaction_is_size_tiered(warehouse_root: Any) -> None:
    """Four appended files of one size become one file a tier up; later appends are compacted
    without rewriting that larger file again: once the partition holds four small files (the
    larger one and three appended), the three smallest are merged (a scan pays per file)."""
    with mx.connect(
        warehouse_root.uri,
        storage_options=warehouse_root.storage_options,
        auto_compact_min_files=4,
    ) as lh:
        t = lh.create_table("s.tiers", _random_rows(0))
        for i in range(1, 4):
            t.append(_random_rows(i * 2_000))
        wait_for_maintenance()  # auto-compaction runs off the commit path
        first = DeltaTable(t.location, storage_options=warehouse_root.storage_options)
        (big,) = first.file_uris()  # the four files, compacted on the 4th
        for i in range(4, 8):
            t.append(_random_rows(i * 2_000))
            wait_for_maintenance()  # each append's compaction (if any) before the next
        now = DeltaTable(t.location, storage_options=warehouse_root.storage_options)
        files = now.file_uris()
        assert len(files) == 3 and big in files  # the larger file was left alone
        ops = [h["operation"] for h in t.history()]
        assert ops.count("OPTIMIZE") == 2
        assert sorted(t.to_arrow().column("id").to_pylist()) == list(range(16_000))
        assert lh.sql("SELECT count(*), count(DISTINCT id) FROM s.tiers").fetchall() == [
            (16_000, 16_000)
        ]


def test_a_table_made_again_at_the_same_location_starts_afresh(tmp_path: Any) -> None:
    loc = str(tmp_path / "t")
    store = DeltaStore(loc)
    store.create(pa.table({"id": [0]}))
    for i in range(1, 4):
        store.append(pa.table({"id": [i]}))  # the handle kept stands at version 3
    shutil.rmtree(loc)
    store.create(pa.table({"id": [10]}))
    assert store.append(pa.table({"id": [11]})).version == 1
    assert sorted(store.open().to_pyarrow_table().column("id").to_pylist()) == [10, 11]


def test_a_table_another_writer_made_again_at_the_same_path_gets_no_gap(tmp_path: Any) -> None:
    """This process knows the table at version 3; another writer deletes it and makes a new
    one there (versions 0 and 1). The next small append must commit at 2: committing after the
    version this process remembered would leave a gap in the log, a table no reader opens."""
    loc = str(tmp_path / "t")
    store = DeltaStore(loc)
    store.create(pa.table({"id": [0]}))
    for i in range(1, 4):
        store.append(pa.table({"id": [i]}))
    shutil.rmtree(loc)
    write_deltalake(loc, pa.table({"id": [10]}))
    write_deltalake(loc, pa.table({"id": [11]}), mode="append")
    assert DeltaStore(loc).append(pa.table({"id": [12]})).version == 2
    assert sorted(DeltaTable(loc).to_pyarrow_table().column("id").to_pylist()) == [10, 11, 12]


def _commit(location: str, version: int, options: Any) -> list[dict[str, Any]]:
    """The actions of commit ``version`` (read with the table's own file system)."""
    dt = DeltaTable(location, storage_options=options)
    name = f"_delta_log/{version:020d}.json"
    if "://" in location:
        import fsspec

        fs = fsspec.filesystem(
            "s3",
            key=options["AWS_ACCESS_KEY_ID"],
            secret=options["AWS_SECRET_ACCESS_KEY"],
            client_kwargs={"endpoint_url": options["AWS_ENDPOINT_URL"]},
        )
        raw = fs.cat_file(f"{location.split('://', 1)[1]}/{name}").decode()
    else:
        with open(f"{location}/{name}") as f:
            raw = f.read()
    assert dt.version() >= version
    return [json.loads(line) for line in raw.splitlines() if line.strip()]


def test_small_appends_commit_blind_appends_that_any_delta_reader_reads(
    warehouse_root: Any,
) -> None:
    """A small append to a partitioned table is one file per partition and one commit of
    adds (delta-rs not involved); plain deltalake, the SQL engine and history all read it."""
    opts = warehouse_root.storage_options
    with mx.connect(warehouse_root.uri, storage_options=opts) as lh:
        t = lh.create_table(
            "s.parts",
            pa.table({"day": ["2024-05-01"], "host": [1], "v": [0.5]}),
            partition_by=["day", "host"],
        )
        store = DeltaStore(t.location, opts)
        res = store.append(
            pa.table(
                {
                    "day": ["2024-05-01", "2024-05-02", "2024-05-02"],
                    "host": [1, 2, 2],
                    "v": [1.0, 2.0, 3.0],
                }
            ),
            commit_metadata={"batch": "b7"},
        )
        assert res.version == 1
        actions = _commit(t.location, 1, opts)
        info = actions[0]["commitInfo"]
        assert info["engineInfo"] == "matrixos" and info["isBlindAppend"] is True
        assert info["batch"] == "b7"  # recorded as delta-rs records custom metadata
        adds = [a["add"] for a in actions if "add" in a]
        assert sorted(json.dumps(a["partitionValues"], sort_keys=True) for a in adds) == [
            '{"day": "2024-05-01", "host": "1"}',
            '{"day": "2024-05-02", "host": "2"}',
        ]
        stats = {a["partitionValues"]["day"]: json.loads(a["stats"]) for a in adds}
        assert stats["2024-05-02"]["numRecords"] == 2
        assert stats["2024-05-02"]["minValues"]["v"] == 2.0
        dt = DeltaTable(t.location, storage_options=opts)
        got = sorted((r["day"], r["host"], r["v"]) for r in dt.to_pyarrow_table().to_pylist())
        assert got == [
            ("2024-05-01", 1, 0.5),
            ("2024-05-01", 1, 1.0),
            ("2024-05-02", 2, 2.0),
            ("2024-05-02", 2, 3.0),
        ]
        assert lh.sql("SELECT sum(v) FROM s.parts WHERE day = '2024-05-02'").fetchall() == [(5.0,)]
        assert t.history()[0]["batch"] == "b7"
        # the statistics prune: one partition's file only
        plan = lh.sql("EXPLAIN SELECT * FROM s.parts WHERE v > 2.5").to_arrow().to_pylist()
        assert "1 of 3 files after pruning" in plan[0]["plan"]


def test_a_small_append_after_another_writer_changed_the_schema_starts_again(
    tmp_path: Any,
) -> None:
    """The version the process knew is taken by a commit that evolved the schema: the append
    drops its file, reads the table again and commits after it, in the new schema."""
    loc = str(tmp_path / "t")
    store = DeltaStore(loc)
    store.create(pa.table({"id": [0]}))
    store.append(pa.table({"id": [1]}))  # the process now knows version 1
    write_deltalake(loc, pa.table({"id": [2], "note": ["x"]}), mode="append", schema_mode="merge")
    assert store.append(pa.table({"id": [3]})).version == 3
    rows = sorted(DeltaTable(loc).to_pyarrow_table().to_pylist(), key=lambda r: r["id"])
    assert rows == [
        {"id": 0, "note": None},
        {"id": 1, "note": None},
        {"id": 2, "note": "x"},
        {"id": 3, "note": None},
    ]
    parquet = [p for p in os.listdir(loc) if p.endswith(".parquet")]
    assert len(parquet) == 4  # the dropped attempt left no file behind


def test_appends_honour_what_only_delta_rs_checks(tmp_path: Any) -> None:
    """Tables with CHECK constraints (and other writer features) are appended to by delta-rs,
    which enforces them; evolving appends and nulls in NOT NULL columns go there too."""
    loc = str(tmp_path / "c")
    store = DeltaStore(loc)
    store.create(pa.table({"id": [1], "v": [5]}))
    store.append(pa.table({"id": [2], "v": [6]}))  # appended by MatrixOS: no constraint yet
    assert DeltaTable(loc).history(1)[0]["engineInfo"] == "matrixos"
    DeltaTable(loc).alter.add_constraint({"v_positive": "v > 0"})  # as another writer would
    store.append(pa.table({"id": [3], "v": [7]}))  # sees the new property, goes to delta-rs
    assert DeltaTable(loc).history(1)[0]["engineInfo"] != "matrixos"
    with pytest.raises(mx.errors.MatrixOSError, match=r"failed validation"):
        store.append(pa.table({"id": [4], "v": [-1]}))
    assert sorted(DeltaTable(loc).to_pyarrow_table().column("id").to_pylist()) == [1, 2, 3]
    # evolve: the new column goes through delta-rs's schema merge
    plain = DeltaStore(str(tmp_path / "e"))
    plain.create(pa.table({"id": [1]}))
    plain.append(pa.table({"id": [2], "extra": ["y"]}), evolve=True)
    assert DeltaTable(plain.location).schema().to_arrow().names == ["id", "extra"]


def test_small_appends_checkpoint_in_the_background(tmp_path: Any) -> None:
    loc = str(tmp_path / "k")
    store = DeltaStore(loc)
    store.create(pa.table({"id": [0]}), properties={"delta.checkpointInterval": "5"})
    for i in range(1, 6):
        store.append(pa.table({"id": [i]}))
    assert wait_for_maintenance(timeout=60)
    assert os.path.exists(f"{loc}/_delta_log/{5:020d}.checkpoint.parquet")
    # a reader starts from it
    assert sorted(DeltaTable(loc).to_pyarrow_table().column("id").to_pylist()) == list(range(6))


def test_a_small_append_after_log_clean_up_commits_after_the_checkpoint(tmp_path: Any) -> None:
    """Another writer checkpointed and removed the commits this process last saw: the append
    must not commit at the old next version (readers start after the checkpoint, the rows
    would vanish); it reads the table again first."""
    loc = str(tmp_path / "r")
    store = DeltaStore(loc)
    store.create(
        pa.table({"id": [0]}), properties={"delta.logRetentionDuration": "interval 0 seconds"}
    )
    store.append(pa.table({"id": [1]}))  # this process now knows version 1
    for i in range(2, 6):
        write_deltalake(loc, pa.table({"id": [i]}), mode="append")
    other = DeltaTable(loc)
    other.create_checkpoint()
    other.cleanup_metadata()
    assert not os.path.exists(f"{loc}/_delta_log/{1:020d}.json")
    assert store.append(pa.table({"id": [6]})).version == 6
    assert sorted(DeltaTable(loc).to_pyarrow_table().column("id").to_pylist()) == list(range(7))


def test_a_partition_keeps_fewer_small_files_than_the_threshold(tmp_path: Any) -> None:
    """Whatever the sizes, auto-compaction leaves a partition fewer than
    ``auto_compact_min_files`` small files (a scan pays per file), and every row once."""
    loc = str(tmp_path / "cap")
    store = DeltaStore(loc, auto_compact_min_files=4)
    store.create(_random_rows(0, 50), partition_by=None)
    start = 50
    for i in range(1, 40):
        n = 50 * (1 + i % 7)  # files of mixed sizes
        store.append(_random_rows(start, n))
        start += n
        assert wait_for_maintenance(timeout=120)
        assert len(DeltaTable(loc).file_uris()) < 4
    ids = DeltaTable(loc).to_pyarrow_table().column("id").to_pylist()
    assert sorted(ids) == list(range(start))
