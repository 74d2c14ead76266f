"""Batch RAG indexing on real documentation (Debian's PostgreSQL HTML manual): incremental
re-runs, a run killed with SIGKILL and resumed, broken documents, search from the SDK and from
SQL joined with a Delta table, retrieval evaluation, and the CLI."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import matrixos as mx

PG_DOCS = Path("/usr/share/doc/postgresql-doc-15/html")
PAGES = [
    "sql-vacuum.html",
    "sql-createindex.html",
    "sql-select.html",
    "sql-insert.html",
    "sql-update.html",
    "sql-delete.html",
    "sql-createtable.html",
    "sql-altertable.html",
    "sql-copy.html",
    "sql-explain.html",
    "routine-vacuuming.html",
    "indexes-types.html",
    "tutorial-join.html",
    "datatype-json.html",
    "functions-string.html",
    "wal-intro.html",
]


@pytest.fixture
def docs_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    for name in PAGES:
        shutil.copy(PG_DOCS / name, folder / name)
    (folder / "notes.md").write_text(
        "# Field notes\n\n## Vacuum\n\nRun VACUUM ANALYZE weekly on the orders table.\n"
    )
    return folder


def chunk_rows(lh: mx.Lakehouse, table: str = "kb.chunks") -> list[dict[str, Any]]:
    return lh.table(table).to_arrow(columns=["chunk_id", "doc_uri", "doc_hash"]).to_pylist()


def test_index_writes_chunks_with_lineage_and_searches(lh: mx.Lakehouse, docs_folder: Path) -> None:
    summary = lh.rag.index(str(docs_folder), "kb.chunks", embedder="hash")
    assert summary.added == len(PAGES) + 1 and summary.failed == 0
    t = lh.table("kb.chunks")
    rows = t.to_arrow().to_pylist()
    assert len(rows) == summary.chunks_written > len(PAGES)
    ids = [r["chunk_id"] for r in rows]
    assert len(ids) == len(set(ids))
    vacuum = [r for r in rows if r["doc_uri"].endswith("sql-vacuum.html")]
    assert vacuum and all(r["title"] and "VACUUM" in r["title"] for r in vacuum)
    assert all(r["model_version"].startswith("matrixos-hash") for r in rows)
    assert all(r["pipeline_version"] == "matrixos-rag/1" for r in rows)
    assert all(r["tokens"] <= 256 for r in rows)
    # offsets point into the parsed document text
    assert all(0 <= r["start"] < r["end"] for r in rows)
    notes = [r for r in rows if r["doc_uri"].endswith("notes.md")]
    assert notes[0]["headings"] == "Field notes > Vacuum"
    # indexes exist and cover every row
    status = {c: i for i in t.indexes() for c in i["columns"]}
    assert status["text"]["index_type"].upper().startswith("INVERTED")
    assert status["text"]["num_unindexed_rows"] == 0
    hits = lh.search("kb.chunks", "weekly VACUUM ANALYZE orders table", k=3, mode="hybrid")
    assert isinstance(hits, mx.Result)  # one result type for sql() and search()
    assert hits.column("doc_uri")[0].as_py().endswith("notes.md")
    assert pa.table(hits).num_rows == hits.to_polars().height == 3
    text_hits = lh.search("kb.chunks", "orders weekly", k=3, mode="text")
    assert text_hits.column("doc_uri")[0].as_py().endswith("notes.md")


def test_rerun_is_incremental(lh: mx.Lakehouse, docs_folder: Path) -> None:
    lh.rag.index(str(docs_folder), "kb.chunks", embedder="hash")
    before = chunk_rows(lh)
    again = lh.rag.index(str(docs_folder), "kb.chunks", embedder="hash")
    assert again.unchanged == len(PAGES) + 1
    assert again.added == again.changed == again.chunks_written == 0
    assert sorted(r["chunk_id"] for r in chunk_rows(lh)) == sorted(r["chunk_id"] for r in before)
    # change one, delete one, add one
    (docs_folder / "notes.md").write_text(
        "# Field notes\n\n## Backups\n\nUse pg_basebackup nightly.\n"
    )
    (docs_folder / "sql-copy.html").unlink()
    shutil.copy(PG_DOCS / "sql-grant.html", docs_folder / "sql-grant.html")
    third = lh.rag.index(str(docs_folder), "kb.chunks", embedder="hash")
    assert (third.added, third.changed, third.deleted) == (1, 1, 1)
    assert third.unchanged == len(PAGES) - 1
    rows = chunk_rows(lh)
    uris = {r["doc_uri"] for r in rows}
    assert not any(u.endswith("sql-copy.html") for u in uris)
    assert any(u.endswith("sql-grant.html") for u in uris)
    hashes = {r["doc_hash"] for r in rows if r["doc_uri"].endswith("notes.md")}
    assert len(hashes) == 1  # only the new version's chunks
    texts = lh.table("kb.chunks").to_arrow(columns=["doc_uri", "text"]).to_pylist()
    assert any("pg_basebackup" in r["text"] for r in texts if r["doc_uri"].endswith("notes.md"))
    assert not any("ANALYZE weekly" in r["text"] for r in texts)


def test_broken_documents_are_counted_not_fatal(lh: mx.Lakehouse, docs_folder: Path) -> None:
    (docs_folder / "broken.pdf").write_bytes(b"%PDF-1.7\n" + os.urandom(2000))
    (docs_folder / "binary.txt").write_bytes(bytes(range(256)) * 20)
    summary = lh.rag.index(str(docs_folder), "kb.chunks", embedder="hash")
    assert summary.failed >= 1
    assert any("broken.pdf" in e for e in summary.errors)
    assert summary.added == len(PAGES) + 1 + (2 - summary.failed)
    assert "failed" in str(summary)


def test_sql_search_functions_join_delta_tables(lh: mx.Lakehouse, docs_folder: Path) -> None:
    lh.rag.index(str(docs_folder), "kb.chunks", embedder="hash")
    owners = pa.table(
        {
            "doc_uri": [str((docs_folder / p).resolve()) for p in PAGES[:4]],
            "owner": ["ops", "dba", "analytics", "analytics"],
        }
    )
    lh.create_table("kb.owners", owners)
    got = lh.sql(
        """
        SELECT o.owner, count(*) AS hits
        FROM vector_search(kb.chunks, 'garbage collection of dead tuples', k => 20) AS c
        JOIN kb.owners o ON o.doc_uri = c.doc_uri
        GROUP BY o.owner ORDER BY hits DESC
        """
    ).fetchall()
    assert got and all(isinstance(n, int) and n > 0 for _, n in got)
    text = lh.sql(
        "SELECT doc_uri, _score FROM text_search(kb.chunks, 'pg_basebackup OR weekly', k => 5)"
    ).fetchall()
    assert text and text[0][0].endswith("notes.md")
    filtered = lh.sql(
        "SELECT DISTINCT doc_uri FROM hybrid_search(kb.chunks, 'index types', k => 10, "
        "filter => 'doc_uri LIKE ''%indexes-types%''')"
    ).fetchall()
    assert len(filtered) == 1 and filtered[0][0].endswith("indexes-types.html")
    dims = lh.sql("SELECT len(embed('hello world', 'hash')) AS n").fetchall()
    assert dims == [(64,)]
    # embed() over a column: the same vectors the pipeline stored
    same = lh.sql(
        "SELECT count(*) FROM kb.chunks c "
        "WHERE list_cosine_similarity(embed(c.text, 'hash'), c.vector) > 0.999"
    ).fetchall()
    assert same == [(lh.table("kb.chunks").count(),)]


def test_eval_reports_recall_and_mrr(lh: mx.Lakehouse, docs_folder: Path, tmp_path: Path) -> None:
    lh.rag.index(str(docs_folder), "kb.chunks", embedder="hash")
    queries = tmp_path / "q.jsonl"
    queries.write_text(
        "\n".join(
            json.dumps({"query": q, "relevant": [str((docs_folder / p).resolve())]})
            for q, p in [
                ("VACUUM garbage-collect and optionally analyze a database", "sql-vacuum.html"),
                ("CREATE INDEX define a new index", "sql-createindex.html"),
                ("COPY copy data between a file and a table", "sql-copy.html"),
            ]
        )
    )
    scores = lh.rag.eval("kb.chunks", queries, k=10)
    assert set(scores) == {"vector", "text", "hybrid"}
    for s in scores.values():
        assert 0.0 <= s["recall@10"] <= 1.0 and 0.0 <= s["mrr"] <= 1.0
    assert scores["text"]["recall@10"] == 1.0  # each page's own title words
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "x", "relevant": ["a"]}\n{oops\n')
    with pytest.raises(mx.errors.IngestError, match="line 2"):
        lh.rag.eval("kb.chunks", bad)


def test_real_model_indexes_a_few_documents(tmp_path: Path) -> None:
    folder = tmp_path / "docs"
    folder.mkdir()
    for name in ["sql-vacuum.html", "tutorial-join.html"]:
        shutil.copy(PG_DOCS / name, folder / name)
    with mx.connect(str(tmp_path / "wh")) as lh:
        summary = lh.rag.index(str(folder), "kb.chunks", max_tokens=128)
        assert summary.added == 2 and summary.failed == 0
        t = lh.table("kb.chunks")
        assert t.schema.field("vector").type.list_size == 384
        hits = lh.search("kb.chunks", "reclaim storage occupied by dead tuples", k=3)
        assert hits.column("doc_uri")[0].as_py().endswith("sql-vacuum.html")
        hits = lh.search("kb.chunks", "combine rows from two tables", k=3)
        assert hits.column("doc_uri")[0].as_py().endswith("tutorial-join.html")


# -- killed mid-run -------------------------------------------------------------------------
CHILD = textwrap.dedent(
    """
    import sys, time
    import matrixos as mx
    from matrixos.ai.embed import HashEmbedder, register_embedder

    class Slow(HashEmbedder):
        def embed(self, texts):
            time.sleep(0.2)
            return super().embed(texts)

    register_embedder("slowhash", lambda device=None: Slow(name="slowhash"))
    with mx.connect(sys.argv[1]) as lh:
        lh.rag.index(sys.argv[2], "kb.chunks", embedder="slowhash", batch_chunks=8)
    """
)


def test_killed_run_resumes_without_duplicates_or_losses(tmp_path: Path) -> None:
    from matrixos.ai.embed import HashEmbedder, register_embedder

    folder = tmp_path / "docs"
    folder.mkdir()
    for name in sorted(os.listdir(PG_DOCS))[:80]:
        if name.endswith(".html"):
            shutil.copy(PG_DOCS / name, folder / name)
    wh = str(tmp_path / "wh")
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    proc = subprocess.Popen([sys.executable, str(script), wh, str(folder)])
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            time.sleep(0.2)
            try:
                with mx.connect(wh) as peek:
                    if peek.table("kb.chunks").version >= 4:  # a few batches committed
                        break
            except mx.errors.MatrixOSError:
                continue
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    register_embedder("slowhash", lambda device=None: HashEmbedder(name="slowhash"))
    with mx.connect(wh) as lh:
        partial = {r["chunk_id"] for r in chunk_rows(lh)}
        resumed = lh.rag.index(str(folder), "kb.chunks", embedder="slowhash")
        assert resumed.unchanged > 0 and resumed.added > 0
        rows = chunk_rows(lh)
    ids = [r["chunk_id"] for r in rows]
    assert len(ids) == len(set(ids))
    assert partial <= set(ids)
    with mx.connect(str(tmp_path / "fresh")) as fresh:
        fresh.rag.index(str(folder), "kb.chunks", embedder="slowhash")
        expected = sorted(r["chunk_id"] for r in chunk_rows(fresh))
    assert sorted(ids) == expected


def test_cli_rag_index_and_eval(tmp_path: Path, docs_folder: Path) -> None:
    env = {**os.environ, "MATRIXOS_WAREHOUSE": str(tmp_path / "wh")}
    run = [sys.executable, "-m", "matrixos.cli"]
    p = subprocess.run(
        [*run, "rag", "index", str(docs_folder), "--table", "kb.chunks", "--embedder", "hash"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    assert f"{len(PAGES) + 1} added" in p.stdout and "chunks/s" in p.stdout
    q = tmp_path / "q.jsonl"
    q.write_text(
        json.dumps({"query": "VACUUM", "relevant": [str(docs_folder / "sql-vacuum.html")]})
    )
    p = subprocess.run(
        [*run, "rag", "eval", "--table", "kb.chunks", "--queries", str(q), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    assert set(json.loads(p.stdout)) == {"vector", "text", "hybrid"}
    p = subprocess.run(
        [*run, "search", "kb.chunks", "dead tuples", "-k", "2", "--format", "json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    assert len(json.loads(p.stdout)) == 2


def test_sources_volume_object_store_prefix_and_table(lh: mx.Lakehouse, docs_folder: Path) -> None:
    """The same documents from a volume, from an object-store prefix (or folder URI) and from a
    table of documents give the same chunks (by content)."""
    vol = lh.create_volume("raw.docs")
    vol.put_folder(docs_folder)
    from_volume = lh.rag.index("raw.docs", "kb.from_volume", embedder="hash")
    assert from_volume.added == len(PAGES) + 1 and from_volume.failed == 0
    uris = {r["doc_uri"] for r in chunk_rows(lh, "kb.from_volume")}
    assert all(u.startswith(vol.uri) for u in uris)

    if lh.warehouse.is_remote:  # the warehouse bucket: a plain s3:// prefix
        prefix = lh.warehouse.join("incoming")
        fs = lh.warehouse.fs
        for p in docs_folder.iterdir():
            fs.put_file(str(p), f"{prefix.split('://', 1)[1]}/{p.name}")
    else:
        prefix = "file://" + str(docs_folder)
    from_prefix = lh.rag.index(prefix, "kb.from_prefix", embedder="hash")
    assert from_prefix.added == len(PAGES) + 1

    docs = pa.table(
        {
            "uri": [f"doc://{p.name}" for p in sorted(docs_folder.iterdir())],
            "text": [p.read_text() for p in sorted(docs_folder.iterdir())],
            "mime": [
                "text/html" if p.suffix == ".html" else "text/markdown"
                for p in sorted(docs_folder.iterdir())
            ],
        }
    )
    lh.create_table("raw.doc_table", docs)
    from_table = lh.rag.index("raw.doc_table", "kb.from_table", embedder="hash")
    assert from_table.added == len(PAGES) + 1

    def hashes(table: str) -> list[str]:
        return sorted(r["doc_hash"] for r in chunk_rows(lh, table))

    assert hashes("kb.from_volume") == hashes("kb.from_prefix") == hashes("kb.from_table")
