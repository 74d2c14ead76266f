"""The in-memory ANN cache on the path users take: ``LanceTable.create_index`` starts building
it in the background, and ``lh.search``, ``LanceTable.search`` and SQL ``vector_search`` then
answer from it, following appends and deletes made afterwards."""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pytest

import matrixos as mx
from matrixos.engine import search
from matrixos.engine.search import ann_index
from matrixos.lance_table import lance_table_or_error

WAREHOUSES = ("local",)
DIM = 16


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    search.clear_cache()
    yield
    search.clear_cache()


def _rows(lo: int, hi: int) -> pa.Table:
    vecs = np.random.default_rng(lo).normal(size=(hi - lo, DIM)).astype(np.float32)
    return pa.table(
        {
            "id": np.arange(lo, hi),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel()), DIM),
        }
    )


def _vector(t: pa.Table, i: int) -> list[float]:
    ids = t.column("id").to_pylist()
    return list(t.column("vector")[ids.index(i)].as_py())


def _wait_for_background_work() -> None:
    deadline = time.monotonic() + 120
    while search.cache_info()["building"]:
        assert time.monotonic() < deadline, "the background cache build did not finish"
        time.sleep(0.05)


def _entry(location: str) -> dict[str, object]:
    (entry,) = [e for e in search.cache_info()["entries"] if e["uri"] == location]
    return entry


def test_create_index_warms_the_cache_and_searches_follow_writes(
    lh: mx.Lakehouse, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ann_index, "CACHE_FLAT_MAX_ROWS", 100)  # 400 rows: an HNSW graph
    base = _rows(0, 400)
    t = lance_table_or_error(lh.create_table("kb.vecs", base, format="lance"))
    assert search.cache_info()["entries"] == []
    t.create_index("vector", index_type="flat", metric="l2")
    _wait_for_background_work()
    entry = _entry(t.location)
    assert (entry["kind"], entry["rows"], entry["version"]) == ("hnsw", 400, t.version)

    q = _vector(base, 7)
    assert lh.search("kb.vecs", q, k=1).column("id").to_pylist() == [7]
    assert t.search(q, k=1).column("id").to_pylist() == [7]
    got = lh.sql(f"SELECT id FROM vector_search(kb.vecs, {q!r}, k => 1)").fetchall()
    assert got == [(7,)]
    # The vector as a literal in scientific notation, negatives included: folded without
    # DuckDB, to the same numbers.
    literal = "[" + ", ".join(f"{x:.9e}" for x in q) + "]"
    assert "-" in literal and "e" in literal
    got = lh.sql(f"SELECT id, _score FROM vector_search(kb.vecs, {literal}, k => 2)").fetchall()
    assert [r[0] for r in got] == t.search(q, k=2).column("id").to_pylist()
    assert _entry(t.location)["builds"] == 1  # answered by the warm entry, not a rebuild

    more = _rows(400, 420)
    t.append(more)
    assert lh.search("kb.vecs", _vector(more, 410), k=1).column("id").to_pylist() == [410]
    t.delete("id = 7")
    hits = lh.search("kb.vecs", q, k=3).column("id").to_pylist()
    assert 7 not in hits and len(hits) == 3
    entry = _entry(t.location)
    assert (entry["version"], entry["builds"]) == (t.version, 1)
    assert (entry["rows"], entry["deleted_rows"], entry["incremental_updates"]) == (
        419,
        1,
        2,
    )  # live rows


def test_filtered_search_after_warming_keeps_to_the_filter(lh: mx.Lakehouse) -> None:
    t = lance_table_or_error(lh.create_table("kb.vecs", _rows(0, 300), format="lance"))
    t.create_index("vector", index_type="flat", metric="cosine")
    _wait_for_background_work()
    q = _vector(_rows(0, 300), 42)
    got = lh.search("kb.vecs", q, k=5, filter="id % 100 = 42").column("id").to_pylist()
    assert got[0] == 42 and set(got) <= {42, 142, 242} and len(got) == 3
