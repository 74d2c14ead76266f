"""The small-append path of Delta tables (``storage.delta``). A process keeps the snapshot its
last write left behind and brings it up to date before the next write: commits made meanwhile by
another process (rows added, deleted, the schema evolved, the table overwritten) are all seen by
that next write. Auto-compaction is size-tiered, so appends do not rewrite the whole table."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from deltalake import DeltaTable

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
    """Four appended files of one size become one file a tier up; the next four appends are
    compacted without rewriting that larger file again."""
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
        wait_for_maintenance()
        now = DeltaTable(t.location, storage_options=warehouse_root.storage_options)
        files = now.file_uris()
        assert len(files) == 2 and big in files  # the larger file was left alone
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
