"""The SQL search functions on the engine's own path (``FunctionHost.search_target`` and
``engine.embedding``), on a local warehouse and on the S3 server: the table's embedding is the
one its properties name, its storage credentials reach Lance, and a table of another format is
refused with its name. Also ``Table.count()`` through the engine's row count."""

from __future__ import annotations

import re

import pyarrow as pa
import pytest

import matrixos as mx
from matrixos.engine.embedding import embed_query, table_embedding
from matrixos.errors import ConfigError, NotSupported, TableNotFound

DOCS = [
    {"id": 1, "text": "VACUUM removes files no version references"},
    {"id": 2, "text": "OPTIMIZE compacts small files into large ones"},
    {"id": 3, "text": "MERGE upserts rows by key"},
]


@pytest.fixture
def docs(lh: mx.Lakehouse) -> mx.Lakehouse:
    lh.create_table("kb.docs", DOCS, format="lance").set_embedding("text", embedder="hash")  # type: ignore[attr-defined]
    return lh


def test_vector_search_embeds_the_query_with_the_tables_embedder(docs: mx.Lakehouse) -> None:
    # The hash embedder gives 64 dimensions; the default (minilm) 384 would not match.
    info = docs.table("kb.docs").info
    assert table_embedding(info.properties) == ("text", "vector", "hash")
    for doc in DOCS:
        rows = docs.sql(
            f"SELECT id, _score FROM vector_search(kb.docs, '{doc['text']}', k => 1)"
        ).fetchall()
        assert [r[0] for r in rows] == [doc["id"]]
    # The same search by the vector itself, and by the table's name in a string.
    vector = embed_query(str(DOCS[1]["text"]), info.properties)
    literal = "[" + ", ".join(repr(x) for x in vector) + "]"
    got = docs.sql(f"SELECT id FROM vector_search('kb.docs', {literal}, 1)").fetchall()
    assert got == [(2,)]


def test_text_and_hybrid_search_with_filter_and_explain(docs: mx.Lakehouse) -> None:
    docs.table("kb.docs").create_text_index("text")  # type: ignore[attr-defined]
    text = docs.sql("SELECT id FROM text_search(kb.docs, 'compacts', k => 3)").fetchall()
    assert text == [(2,)]
    hybrid = docs.sql(
        "SELECT id FROM hybrid_search(kb.docs, 'MERGE upserts rows by key', k => 3, "
        "filter => 'id <> 1') ORDER BY _score DESC"
    ).fetchall()
    assert hybrid[0] == (3,) and (1,) not in hybrid
    plan = [r[0] for r in docs.sql("EXPLAIN SELECT * FROM text_search(kb.docs, 'x')").fetchall()]
    assert any(line.startswith("text_search(main.kb.docs, k=10)") for line in plan)


def test_search_functions_refuse_what_they_cannot_search(docs: mx.Lakehouse) -> None:
    docs.create_table("kb.plain", pa.table({"id": [1]}))
    refused = re.escape("main.kb.plain is a delta table; search needs a Lance table")
    with pytest.raises(NotSupported, match=refused):
        docs.sql("SELECT * FROM vector_search(kb.plain, 'x', k => 1)")
    with pytest.raises(TableNotFound):
        docs.sql("SELECT * FROM vector_search(kb.missing, 'x', k => 1)")
    with pytest.raises(ConfigError, match="text search needs a text query"):
        docs.sql("SELECT * FROM text_search(kb.docs, [1.0, 2.0], k => 1)")
    with pytest.raises(ConfigError, match="hybrid search needs a text query"):
        docs.sql("SELECT * FROM hybrid_search(kb.docs, [1.0, 2.0], k => 1)")


def test_table_count_reads_the_latest_version(lh: mx.Lakehouse) -> None:
    t = lh.create_table("s.t", pa.table({"id": list(range(10))}))
    assert t.count() == 10
    t.delete("id >= 7")
    t.append(pa.table({"id": [100]}))
    assert lh.table("s.t").count() == 8 == lh.sql("SELECT count(*) FROM s.t").scalar()
