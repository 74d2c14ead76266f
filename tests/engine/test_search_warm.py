"""The in-memory ANN cache on the path users take: ``LanceTable.create_index`` starts building
it in the background, and ``lh.search``, ``LanceTable.search`` and SQL ``vector_search`` then
answer from it, following appends and deletes made afterwards.

What search keeps in memory (the vectors and the rows kept beside them, the facts worked out
per dataset version, the catalog entry) never hides a change: another process's append,
update, delete or schema change is seen by the next search, and a table dropped and created
again is never answered from its predecessor's cache."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlglot import exp

import matrixos as mx
from matrixos.engine import search
from matrixos.engine.search import ann_index
from matrixos.engine.sql import frontend
from matrixos.engine.vector_literals import VECTOR
from matrixos.errors import SQLError
from matrixos.lance_table import LanceTable, lance_table_or_error

WAREHOUSES = ("local",)
DIM = 16
NAME = "kb.vecs"


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    search.clear_cache()
    yield
    search.clear_cache()


def _rows(lo: int, hi: int, tag: str = "") -> pa.Table:
    """Rows ``lo..hi``: ``id``, random vectors (others per ``tag``) and, with a ``tag``, a
    ``text`` of the tag and the id."""
    vecs = np.random.default_rng([lo, *map(ord, tag)]).normal(size=(hi - lo, DIM))
    cols: dict[str, pa.Array] = {"id": pa.array(np.arange(lo, hi, dtype=np.int64))}
    if tag:
        cols["text"] = pa.array([f"{tag}{i}" for i in range(lo, hi)])
    cols["vector"] = pa.FixedSizeListArray.from_arrays(
        pa.array(vecs.astype(np.float32).ravel()), DIM
    )
    return pa.table(cols)


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


# --- Nothing kept in memory hides a change ---------------------------------------------------


def other_process(lh: mx.Lakehouse, code: str) -> None:
    """Run ``code`` with ``lh``, a session on the same warehouse, in a new Python process
    (``pa`` and ``pq`` imported)."""
    script = (
        "import matrixos as mx, pyarrow as pa, pyarrow.parquet as pq\n"
        f"lh = mx.connect({lh.warehouse.uri!r})\n{code}\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)


def _saved(lh: mx.Lakehouse, rows: pa.Table) -> str:
    """``rows`` in a Parquet file beside the warehouse, for another process to read."""
    path = f"{lh.warehouse.uri}-{rows.column('text')[0]}.parquet"
    pq.write_table(rows, path)
    return path


def _make(lh: mx.Lakehouse, rows: pa.Table) -> LanceTable:
    t = lance_table_or_error(lh.create_table(NAME, rows, format="lance"))
    t.create_index("vector", index_type="flat", metric="l2")
    _wait_for_background_work()
    return t


def _top(lh: mx.Lakehouse, q: list[float], **kw: object) -> dict[str, object]:
    return lh.search(NAME, q, k=1, **kw).to_pylist()[0]  # type: ignore[arg-type]


def test_rows_from_memory_equal_lances(lh: mx.Lakehouse, monkeypatch: pytest.MonkeyPatch) -> None:
    base = _rows(0, 200, "a")
    t = _make(lh, base)
    assert _entry(t.location)["payload_columns"] == ["id", "text", "vector"]
    queries = [_vector(base, i) for i in (3, 50, 199)]
    # every column (the vector's stored values included), some, and in another order
    for columns in (None, ["text", "id"], ["id"]):
        cached = [lh.search(NAME, q, k=5, columns=columns).to_arrow() for q in queries]
        lance = [
            search.vector_search(t.location, q, k=5, columns=columns, cache=False) for q in queries
        ]
        for a, b in zip(cached, lance, strict=True):
            names = [c for c in a.column_names if c not in ("_distance", "_score")]
            assert a.column_names == b.column_names
            assert a.select(names).equals(b.select(names))
            np.testing.assert_allclose(a["_distance"], b["_distance"], rtol=1e-4, atol=1e-5)
    assert [c.column("id").to_pylist()[0] for c in cached] == [3, 50, 199]
    assert _top(lh, queries[2])["text"] == "a199"
    # With no room for the rows beside the vectors the cache still answers (rows from Lance).
    monkeypatch.setattr(ann_index, "PAYLOAD_MAX_BYTES", 0)
    search.clear_cache()
    search.warm(t.location, "vector")
    assert _entry(t.location)["payload_columns"] == []
    got = lh.search(NAME, queries[1], k=5, columns=["text", "id"]).to_arrow()
    want = search.vector_search(t.location, queries[1], k=5, columns=["text", "id"], cache=False)
    assert got.select(["text", "id"]).equals(want.select(["text", "id"]))
    assert got.column("id").to_pylist()[0] == 50


def test_another_process_changes_are_seen_by_the_next_search(lh: mx.Lakehouse) -> None:
    base = _rows(0, 300, "a")
    t = _make(lh, base)
    q7, q3 = _vector(base, 7), _vector(base, 3)
    assert _top(lh, q7)["text"] == "a7"

    more = _rows(300, 310, "n")
    other_process(lh, f"lh.table({NAME!r}).append(pq.read_table({_saved(lh, more)!r}))")
    assert _top(lh, _vector(more, 305))["text"] == "n305"

    other_process(lh, f"lh.table({NAME!r}).delete('id = 7')")
    assert 7 not in lh.search(NAME, q7, k=5).column("id").to_pylist()

    other_process(lh, f"lh.table({NAME!r}).update({{'text': \"'changed'\"}}, where='id = 3')")
    top = _top(lh, q3, columns=["id", "text"])
    assert (top["id"], top["text"]) == (3, "changed")

    # A new column (Lance adds it without rewriting a file): old rows have it null.
    other_process(
        lh,
        f"lh.table({NAME!r}).append(pa.table({{'id': [400], 'text': ['x'], "
        f"'vector': pa.FixedSizeListArray.from_arrays(pa.array([9.0] * {DIM}, "
        "pa.float32()), " + str(DIM) + "), 'note': ['hi']}), evolve=True)",
    )
    assert _top(lh, [9.0] * DIM)["note"] == "hi"
    assert _top(lh, q3)["note"] is None
    # A column renamed (schema only, again no file rewritten).
    other_process(
        lh,
        f"lh.table({NAME!r}).dataset().alter_columns({{'path': 'note', 'name': 'remark'}})",
    )
    assert _top(lh, [9.0] * DIM)["remark"] == "hi"

    entry = _entry(t.location)
    assert entry["version"] == t.version
    # all of it followed in place: the vectors were never read again from scratch
    assert (entry["builds"], entry["payload_columns"]) == (1, ["id", "text", "vector", "remark"])


def test_a_table_dropped_and_created_again_is_not_answered_from_the_old_cache(
    lh: mx.Lakehouse,
) -> None:
    base = _rows(0, 100, "a")
    old = _make(lh, base)
    q = _vector(base, 5)
    assert _top(lh, q)["text"] == "a5"
    # by another process: the next search reads the new catalog entry
    fresh = _rows(0, 100, "b")
    other_process(
        lh,
        f"lh.drop_table({NAME!r})\n"
        f"t = lh.create_table({NAME!r}, pq.read_table({_saved(lh, fresh)!r}), format='lance')\n"
        "t.create_index('vector', index_type='flat', metric='l2')",
    )
    got = lh.search(NAME, _vector(fresh, 5), k=3).to_pylist()
    assert got[0]["text"] == "b5" and all(r["text"].startswith("b") for r in got)
    assert lh.table(NAME).location != old.location
    # and in this process
    lh.drop_table(NAME)
    again = _make(lh, _rows(0, 100, "c"))
    assert _top(lh, _vector(_rows(0, 100, "c"), 5))["text"] == "c5"
    assert lh.sql(f"SELECT text FROM vector_search({NAME}, {q!r}, k => 1)").scalar() != "a5"
    assert _entry(again.location)["builds"] == 1


def test_a_table_overwritten_by_another_process_is_searched_anew(lh: mx.Lakehouse) -> None:
    base = _rows(0, 100, "a")
    t = _make(lh, base)
    assert _top(lh, _vector(base, 9))["text"] == "a9"
    other_process(
        lh,
        f"t = lh.table({NAME!r})\n"
        "rows = t.to_arrow()\n"
        "z = pa.array(['z' + s for s in rows.column('text').to_pylist()])\n"
        "t.overwrite(rows.set_column(1, 'text', z))",
    )
    assert _top(lh, _vector(base, 9))["text"] == "za9"
    assert _entry(t.location)["version"] == t.version


def test_long_lists_of_numbers_in_sql_keep_their_meaning(lh: mx.Lakehouse) -> None:
    """A query vector in SQL is read before sqlglot parses the statement; every other list of
    numbers, or one inside a string or a comment, means what it always did."""
    t = _make(lh, _rows(0, 50, "a"))
    q = _vector(_rows(0, 50, "a"), 21)
    assert len(q) >= 16  # long enough to be read ahead of the parse
    got = lh.sql(f"SELECT id, text FROM vector_search({NAME}, {q!r}, k => 2)").fetchall()
    assert got == [(r["id"], r["text"]) for r in t.search(q, k=2).to_pylist()]
    assert got[0] == (21, "a21")
    # the numbers reached the search as one list, not a node each
    (tree,) = frontend.parse(f"SELECT * FROM vector_search({NAME}, {q!r}, k => 2)", "duckdb")
    assert tree.find(exp.Array) is None
    (held,) = [lit.meta[VECTOR] for lit in tree.find_all(exp.Literal) if VECTOR in lit.meta]
    assert held == pytest.approx(q)
    lit = "[" + ", ".join(str(i) for i in range(1, 21)) + "]"
    assert lh.sql(f"SELECT list_sum({lit})").scalar() == 210
    assert lh.sql(f"SELECT len(list_value({lit}, {lit}))").scalar() == 2
    assert lh.sql(f"SELECT '({lit}' AS s").scalar() == f"({lit}"
    assert lh.sql(f"SELECT 1 /* ({lit} */").scalar() == 1
    # a syntax error after a vector is placed in the text as written
    text = f"SELECT * FROM vector_search({NAME}, {q!r}, k => 2) WHERE"
    with pytest.raises(SQLError) as e:
        lh.sql(text + " ORDER")
    assert e.value.col == len(text) + 2
