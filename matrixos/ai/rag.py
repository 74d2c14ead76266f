"""Batch RAG indexing: parse → chunk → embed → write chunks with lineage → refresh indexes.

``lh.rag.index(source="raw.docs", table="kb.chunks")`` reads documents from a volume, a folder,
an ``s3://`` prefix or a table of documents and keeps a Lance table of chunks in step with them:

* **Incremental.** A document is skipped when the table already holds exactly its current
  content hash; a changed document's old chunks are replaced, a deleted document's removed.
* **Restartable.** Chunks are written in batches of whole documents, each batch one atomic
  Lance commit keyed by ``chunk_id`` (content hash + position), and a changed document's old
  chunks are deleted only after its new ones landed. A run killed at any point leaves every
  document either fully old, fully new, or both (which the next run sees and finishes), so the
  next run resumes without duplicates or lost chunks.
* **Not the bottleneck.** Parsing and chunking run in threads ahead of the embedder, which gets
  large batches; the model's own throughput bounds the pipeline.

Chunks carry lineage: document URI and content hash, chunk offsets and page, heading path,
pipeline and model versions.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa

from matrixos.catalog import lineage, lineage_runs
from matrixos.errors import ConfigError, FileNotFound, IngestError, MatrixOSError, TableNotFound

if TYPE_CHECKING:
    from matrixos.ai.chunk import Chunk
    from matrixos.ai.embed import Embedder
    from matrixos.host import SessionHost
    from matrixos.lance_table import LanceTable

log = logging.getLogger(__name__)

PIPELINE_VERSION = "matrixos-rag/1"
DOC_SUFFIXES = {".html", ".htm", ".xhtml", ".md", ".markdown", ".txt", ".rst", ".pdf", ".text"}


@dataclass(frozen=True)
class SourceDoc:
    """A document to index: where it is and how to get its bytes."""

    uri: str
    size: int | None
    load: Any  # () -> bytes
    mime: str | None = None


@dataclass
class IndexSummary:
    """What one ``rag.index`` run did."""

    table: str
    documents: int = 0
    unchanged: int = 0
    added: int = 0
    changed: int = 0
    deleted: int = 0
    failed: int = 0
    chunks_written: int = 0
    chunks_deleted: int = 0
    seconds: float = 0.0
    embed_seconds: float = 0.0
    compute: str = "in-process"  # where the embedder ran
    errors: list[str] = field(default_factory=list)
    indexes: list[dict[str, Any]] = field(default_factory=list)

    @property
    def docs_per_s(self) -> float:
        return (self.added + self.changed) / self.seconds if self.seconds else 0.0

    @property
    def chunks_per_s(self) -> float:
        return self.chunks_written / self.seconds if self.seconds else 0.0

    def __str__(self) -> str:
        lines = [
            f"{self.table}: {self.documents} documents — {self.added} added, {self.changed} "
            f"changed, {self.unchanged} unchanged, {self.deleted} deleted, {self.failed} failed",
            f"{self.chunks_written} chunks written, {self.chunks_deleted} removed in "
            f"{self.seconds:.1f} s ({self.docs_per_s:.1f} docs/s, {self.chunks_per_s:.1f} "
            f"chunks/s; embedding {self.embed_seconds:.1f} s, {self.compute})",
        ]
        lines += [f"  error: {e}" for e in self.errors[:20]]
        if len(self.errors) > 20:
            lines.append(f"  … and {len(self.errors) - 20} more errors")
        return "\n".join(lines)


def chunk_schema(dim: int) -> pa.Schema:
    return pa.schema(
        [
            pa.field("chunk_id", pa.string(), nullable=False),
            pa.field("doc_uri", pa.string()),
            pa.field("doc_hash", pa.string()),
            pa.field("title", pa.string()),
            pa.field("headings", pa.string()),
            pa.field("chunk_index", pa.int32()),
            pa.field("start", pa.int64()),
            pa.field("end", pa.int64()),
            pa.field("page", pa.int32()),
            pa.field("tokens", pa.int32()),
            pa.field("text", pa.string()),
            pa.field("vector", pa.list_(pa.float32(), dim)),
            pa.field("pipeline_version", pa.string()),
            pa.field("model_version", pa.string()),
            pa.field("indexed_at", pa.timestamp("us", "UTC")),
        ]
    )


class RAG:
    """``lh.rag``: batch indexing and retrieval evaluation."""

    def __init__(self, lh: SessionHost) -> None:
        self._lh = lh

    def index(
        self,
        source: str | Sequence[str],
        table: str,
        *,
        embedder: str | None = None,
        max_tokens: int = 256,
        overlap: int = 32,
        batch_chunks: int = 512,
        text_column: str = "text",
        uri_column: str = "uri",
        delete_missing: bool = True,
        build_indexes: bool = True,
        progress: bool = False,
        workers: int | None = None,
    ) -> IndexSummary:
        """Index the documents of ``source`` into the Lance table ``table`` (created when
        missing). See the module docstring for the guarantees.

        The embedder runs in this process on a local pool, and on a Ray pool
        (``compute="ray…"``) as actors (one model each, on a GPU when the pool has them),
        ``batch_chunks`` chunks per call; commits stay on the driver, so the guarantees hold
        either way.

        Example:
            >>> import tempfile, matrixos as mx
            >>> lh = mx.connect(tempfile.mkdtemp())
            >>> _ = lh.create_table("raw.docs", [{"uri": "a", "text": "VACUUM removes old files."}])
            >>> s = lh.rag.index(source="raw.docs", table="kb.chunks", embedder="hash")
            >>> (s.documents, s.added, s.chunks_written)
            (1, 1, 1)
        """
        what = source if isinstance(source, str) else ", ".join(source)
        with lineage.run(
            self._lh.service,
            "rag.index",
            principal=self._lh.principal.name,
            statement=f"rag.index({what}) into {table}",
        ):
            return self._index(
                source, table, embedder=embedder, max_tokens=max_tokens, overlap=overlap,
                batch_chunks=batch_chunks, text_column=text_column, uri_column=uri_column,
                delete_missing=delete_missing, build_indexes=build_indexes,
                progress=progress, workers=workers,
            )  # fmt: skip

    def _index(
        self,
        source: str | Sequence[str],
        table: str,
        *,
        embedder: str | None,
        max_tokens: int,
        overlap: int,
        batch_chunks: int,
        text_column: str,
        uri_column: str,
        delete_missing: bool,
        build_indexes: bool,
        progress: bool,
        workers: int | None,
    ) -> IndexSummary:
        from matrixos.ai.embed import get_embedder

        started = time.perf_counter()
        emb = get_embedder(embedder)
        docs = list(self._documents(source, text_column=text_column, uri_column=uri_column))
        summary = IndexSummary(table=table, documents=len(docs))
        t = self._chunk_table(table, emb)
        existing = _existing_hashes(t)
        todo: list[tuple[SourceDoc, bool]] = []
        seen: set[str] = set()
        for d in docs:
            seen.add(d.uri)
            have = existing.get(d.uri)
            todo.append((d, have is not None))
        # Hash first (cheap next to embedding) to skip unchanged documents.
        work = _Work(self, t, emb, summary, existing, max_tokens, overlap)
        with contextlib.ExitStack() as stack:
            if self._lh.compute.is_ray:
                work.remote = _RemoteEmbed(self._lh, emb, embedder, batch_chunks)
                stack.callback(work.remote.mapper.close)  # after the threads below are done
                summary.compute = work.remote.mapper.description
            threads = workers or min(4, (os.cpu_count() or 2))
            pool = stack.enter_context(ThreadPoolExecutor(max_workers=threads))
            prepared = pool.map(work.prepare, todo)
            bar = _progress(progress, len(todo))
            try:
                pending: list[_Prepared] = []
                n_chunks = 0
                for item in prepared:
                    if bar is not None:
                        bar.advance(summary)
                    if item is None:
                        summary.unchanged += 1
                        continue
                    if isinstance(item, str):
                        summary.failed += 1
                        summary.errors.append(item)
                        continue
                    pending.append(item)
                    n_chunks += len(item.chunks)
                    if n_chunks >= batch_chunks:
                        work.write(pending)
                        pending, n_chunks = [], 0
                if pending:
                    work.write(pending)
            finally:
                if bar is not None:
                    bar.close(summary)
        if delete_missing:
            gone = sorted(set(existing) - seen)
            if gone:
                summary.deleted = len(gone)
                summary.chunks_deleted += _delete_docs(t, gone)
        if build_indexes:
            summary.indexes = refresh_indexes(t)
        summary.seconds = time.perf_counter() - started
        self._lh.service.touch(t.info)
        if summary.chunks_written or summary.chunks_deleted:  # commits made by the store itself
            lineage_runs.wrote(self._lh.service, t.info.name, t.version, self._lh.principal.name)
        return summary

    # -- sources ----------------------------------------------------------------------------
    def _documents(
        self, source: str | Sequence[str], *, text_column: str, uri_column: str
    ) -> Iterator[SourceDoc]:
        if not isinstance(source, str):
            for s in source:
                yield from self._documents(s, text_column=text_column, uri_column=uri_column)
            return
        if "://" in source and not source.startswith("file://"):
            lineage_runs.read_source(lineage_runs.file_dataset(source))
            yield from _object_store_docs(self._lh, source)
            return
        path = Path(source.removeprefix("file://")).expanduser()
        if path.exists():
            lineage_runs.read_source(lineage_runs.file_dataset(str(path)))
            yield from _folder_docs(path)
            return
        volume = self._find_volume(source)
        if volume is not None:
            lineage_runs.read_source(lineage_runs.Dataset(lineage_runs.VOLUMES, volume.name))
            for f in volume.list():
                if Path(f.name).suffix.lower() in DOC_SUFFIXES:
                    yield SourceDoc(f.uri, f.size, (lambda n=f.name: volume.read_bytes(n)), None)
            return
        try:
            docs_table = self._lh.table(source)
        except MatrixOSError:  # no such table, or not a table name at all ("./docs")
            if _looks_like_path(source):
                raise FileNotFound(
                    f"RAG source {source!r}: no such folder or file {path.resolve()}",
                    hint="check the path; a folder of documents, an s3:// prefix, a volume or "
                    "a table can be indexed",
                ) from None
            raise ConfigError(
                f"RAG source {source!r} is not a folder, an object-store prefix, a volume or a "
                "table",
                hint="lh.volumes() and lh.tables() list what this warehouse has",
            ) from None
        version = docs_table.version
        lineage_runs.read(docs_table.name, version)
        rows = docs_table.to_arrow(version=version)
        yield from _table_docs(rows, source, text_column, uri_column)

    def _find_volume(self, name: str) -> Any:
        getter = getattr(self._lh, "volume", None)
        if getter is None:
            return None
        try:
            return getter(name)
        except MatrixOSError:
            return None

    def _chunk_table(self, name: str, emb: Embedder) -> LanceTable:
        from matrixos.lance_table import PROP_EMBEDDER, lance_table_or_error

        lh = self._lh
        try:
            t = lance_table_or_error(lh.table(name))
        except TableNotFound:
            t = lance_table_or_error(
                lh.create_table(
                    name,
                    schema=chunk_schema(emb.dim),
                    format="lance",
                    properties={
                        "matrixos.embedding.source": "text",
                        "matrixos.embedding.column": "vector",
                        PROP_EMBEDDER: emb.name,
                        "matrixos.rag.pipeline": PIPELINE_VERSION,
                    },
                    mode="ignore",
                )
            )
        have = t.info.properties.get(PROP_EMBEDDER)
        if have and have != emb.name:
            raise ConfigError(
                f"table {t.name} was indexed with embedder {have!r}, not {emb.name!r}",
                hint="index into a new table, or pass the same embedder",
            )
        dim = t.schema.field("vector").type.list_size
        if dim != emb.dim:
            raise ConfigError(f"table {t.name} holds {dim}-d vectors; {emb.name} makes {emb.dim}")
        return t

    # -- evaluation -------------------------------------------------------------------------
    def eval(
        self,
        table: str,
        queries: str | Path | Sequence[dict[str, Any]],
        *,
        k: int = 10,
        modes: Sequence[Literal["vector", "text", "hybrid"]] = ("vector", "text", "hybrid"),
    ) -> dict[str, dict[str, float]]:
        """recall@k and MRR per search mode, from queries with known relevant documents.

        ``queries``: a JSONL file or rows of ``{"query": …, "relevant": [doc uri, …]}``
        (a document is found when any of its chunks is among the top ``k``).
        """
        rows = _read_queries(queries)
        from matrixos.lance_table import lance_table_or_error

        t = lance_table_or_error(self._lh.table(table))
        out: dict[str, dict[str, float]] = {}
        for mode in modes:
            recall = rr = 0.0
            for q in rows:
                relevant = set(q["relevant"])
                hits = t.search(q["query"], k=k, mode=mode, columns=["doc_uri"])
                uris = hits.column("doc_uri").to_pylist()
                found = {u for u in uris if u in relevant}
                recall += len(found) / len(relevant)
                first = next((i for i, u in enumerate(uris) if u in relevant), None)
                rr += 1.0 / (first + 1) if first is not None else 0.0
            n = max(len(rows), 1)
            out[mode] = {f"recall@{k}": recall / n, "mrr": rr / n, "queries": float(len(rows))}
        return out


# -- the work of one run ---------------------------------------------------------------------
@dataclass
class _Prepared:
    doc: SourceDoc
    digest: str
    title: str | None
    chunks: list[Chunk]
    replaces: bool


class _Work:
    def __init__(
        self,
        rag: RAG,
        table: LanceTable,
        emb: Embedder,
        summary: IndexSummary,
        existing: dict[str, set[str]],
        max_tokens: int,
        overlap: int,
    ) -> None:
        self.table = table
        self.emb = emb
        self.summary = summary
        self.existing = existing
        self.max_tokens = max_tokens
        self.overlap = overlap
        self.remote: _RemoteEmbed | None = None

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.emb.dim), np.float32)
        if self.remote is not None:
            return self.remote.embed(texts)
        return self.emb.embed(texts)

    def prepare(self, item: tuple[SourceDoc, bool]) -> _Prepared | str | None:
        """Parse and chunk one document (in a worker thread): ``None`` when unchanged, the
        error text when it cannot be read."""
        from matrixos.ai.chunk import chunk_document
        from matrixos.connectors.documents import parse_document

        doc, known = item
        try:
            data = doc.load()
            digest = hashlib.sha256(data).hexdigest()
            if self.existing.get(doc.uri) == {digest}:
                return None
            parsed = parse_document(data, uri=doc.uri, mime=doc.mime)
            chunks = chunk_document(
                parsed,
                embedder_or_tokenizer=self.emb,
                max_tokens=self.max_tokens,
                overlap=self.overlap,
            )
        except Exception as e:  # one bad document never stops the batch
            return f"{doc.uri}: {e}"
        return _Prepared(doc, digest, parsed.title, chunks, known)

    def write(self, batch: list[_Prepared]) -> None:
        texts = [c.text for p in batch for c in p.chunks]
        t0 = time.perf_counter()
        vectors = self.embed(texts)
        self.summary.embed_seconds += time.perf_counter() - t0
        now = datetime.now(UTC)
        rows: dict[str, list[Any]] = {f.name: [] for f in chunk_schema(self.emb.dim)}
        for p in batch:
            for c in p.chunks:
                rows["chunk_id"].append(f"{p.digest[:32]}:{c.index}")
                rows["doc_uri"].append(p.doc.uri)
                rows["doc_hash"].append(p.digest)
                rows["title"].append(p.title)
                rows["headings"].append(" > ".join(c.headings))
                rows["chunk_index"].append(c.index)
                rows["start"].append(c.start)
                rows["end"].append(c.end)
                rows["page"].append(c.page)
                rows["tokens"].append(c.tokens)
                rows["text"].append(c.text)
                rows["pipeline_version"].append(PIPELINE_VERSION)
                rows["model_version"].append(self.emb.version)
                rows["indexed_at"].append(now)
        schema = chunk_schema(self.emb.dim)
        arrays = []
        for f in schema:
            if f.name == "vector":
                flat = pa.array(vectors.astype(np.float32, copy=False).reshape(-1), pa.float32())
                arrays.append(pa.FixedSizeListArray.from_arrays(flat, self.emb.dim))
            else:
                arrays.append(pa.array(rows[f.name], f.type))
        data = pa.Table.from_arrays(arrays, schema=schema)
        if data.num_rows:
            # Keyed by chunk id: a batch re-written after a crash updates, never duplicates.
            self.table.store.merge(data, on=["chunk_id"])
        # Old chunks of changed documents go only after their new chunks landed.
        for p in batch:
            stale = self.existing.get(p.doc.uri, set()) - {p.digest}
            if stale:
                self.summary.chunks_deleted += _delete_docs(self.table, [p.doc.uri], keep=p.digest)
            if p.replaces:
                self.summary.changed += 1
            else:
                self.summary.added += 1
        self.summary.chunks_written += data.num_rows


class _RemoteEmbed:
    """The embed step on a Ray pool: ``EmbedColumn`` actors (the model loads once in each),
    sent sub-batches of texts; the vectors come back to the driver, which commits them."""

    def __init__(self, lh: SessionHost, emb: Embedder, name: str | None, batch_chunks: int) -> None:
        from matrixos.ai.embed import EmbedColumn, embedder_factory
        from matrixos.batch import PoolMapper

        pool = lh.compute
        gpus = float(pool.status()["gpus"])
        self.dim = emb.dim
        self.rows = max(1, batch_chunks // max(1, pool.num_cpus()))
        self.mapper = PoolMapper(
            pool,
            EmbedColumn,
            constructor_kwargs={"embedder": name, "factory": embedder_factory(name)},
            num_gpus=1 if gpus >= 1 else 0,
        )

    def embed(self, texts: list[str]) -> np.ndarray:
        parts = [
            pa.table({"text": texts[i : i + self.rows]}) for i in range(0, len(texts), self.rows)
        ]
        out = self.mapper.map(parts, what="embedding batch")
        vectors = [
            np.asarray(t.column("vector").combine_chunks().flatten(), np.float32) for t in out
        ]
        return np.concatenate(vectors).reshape(len(texts), self.dim)


def _existing_hashes(t: LanceTable) -> dict[str, set[str]]:
    rows = t.dataset().to_table(columns=["doc_uri", "doc_hash"])
    out: dict[str, set[str]] = {}
    for uri, h in zip(
        rows.column("doc_uri").to_pylist(), rows.column("doc_hash").to_pylist(), strict=True
    ):
        out.setdefault(uri, set()).add(h)
    return out


def _delete_docs(t: LanceTable, uris: list[str], keep: str | None = None) -> int:
    from matrixos.storage.lance import sql_literal

    deleted = 0
    for start in range(0, len(uris), 500):
        chunk = ", ".join(sql_literal(u) for u in uris[start : start + 500])
        where = f"doc_uri IN ({chunk})"
        if keep is not None:
            where += f" AND doc_hash != {sql_literal(keep)}"
        res = t.store.delete(where)
        deleted += int(res.metrics.get("num_deleted_rows", 0))
    return deleted


def refresh_indexes(t: LanceTable) -> list[dict[str, Any]]:
    """Create the vector and full-text indexes when missing; fold new rows in otherwise."""
    from matrixos.engine import search

    indexed = {c for i in t.indexes() for c in i["columns"]}
    if t.count() == 0:
        return t.indexes()
    if "text" not in indexed:
        t.create_text_index("text")
    if "vector" not in indexed:
        # "auto": no ANN index while exact search is as fast (small tables), else IVF_HNSW_SQ
        t.create_index("vector", index_type="auto", metric="cosine")
    search.optimize_indexes(t.location, storage_options=t._options)
    return t.indexes()


# -- document sources -------------------------------------------------------------------------
def _folder_docs(path: Path) -> Iterator[SourceDoc]:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for p in files:
        if p.suffix.lower() in DOC_SUFFIXES:
            yield SourceDoc(str(p.resolve()), p.stat().st_size, p.read_bytes)


def _object_store_docs(lh: SessionHost, prefix: str) -> Iterator[SourceDoc]:
    from matrixos.storage._errors import storage_errors
    from matrixos.storage.warehouse import filesystem_for

    fs = filesystem_for(prefix, lh.warehouse.options)
    scheme = prefix.split("://", 1)[0]
    with storage_errors(f"cannot list the documents at {prefix}", prefix, lh.warehouse.options):
        found = fs.find(prefix, detail=True)
    for key, info in sorted(found.items()):
        if info.get("type") == "directory" or Path(key).suffix.lower() not in DOC_SUFFIXES:
            continue
        uri = f"{scheme}://{key}" if "://" not in key else key
        yield SourceDoc(uri, info.get("size"), (lambda k=key: fs.cat_file(k)))


def _table_docs(
    table: pa.Table, name: str, text_column: str, uri_column: str
) -> Iterator[SourceDoc]:
    for col in (uri_column, text_column):
        if col not in table.column_names:
            raise ConfigError(
                f"document table {name} needs columns {uri_column!r} and {text_column!r}; "
                f"it has {table.column_names}"
            )
    mime_col = table.column("mime").to_pylist() if "mime" in table.column_names else None
    for i, (uri, text) in enumerate(
        zip(
            table.column(uri_column).to_pylist(),
            table.column(text_column).to_pylist(),
            strict=True,
        )
    ):
        if uri is None or text is None:
            continue
        data = text.encode() if isinstance(text, str) else bytes(text)
        mime = mime_col[i] if mime_col else None
        if isinstance(text, str) and (mime is None or mime == "application/pdf"):
            mime = "text/plain"
        yield SourceDoc(str(uri), len(data), (lambda d=data: d), mime)


def _looks_like_path(source: str) -> bool:
    """``./docs``, ``/data/docs``, ``~/docs``, ``docs/`` or ``notes.md``: a path, not a name."""
    return (
        source.startswith((".", "/", "~"))
        or "/" in source
        or "\\" in source
        or Path(source).suffix.lower() in DOC_SUFFIXES
    )


def _read_queries(queries: str | Path | Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    if not isinstance(queries, str | Path):
        return [dict(q) for q in queries]
    rows = []
    try:
        f = open(queries, encoding="utf-8")  # noqa: SIM115 (closed by the with below)
    except OSError as e:
        raise FileNotFound(
            f"cannot read the queries file {Path(queries).resolve()}: {e.strerror or e}",
            hint='give a JSONL file of {"query": "...", "relevant": ["doc uri", ...]} lines',
        ) from e
    with f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise IngestError(
                    f"invalid JSON: {e.msg}", path=str(queries), line=n, col=e.colno
                ) from e
            if not isinstance(row, dict) or "query" not in row or not row.get("relevant"):
                raise IngestError(
                    'each line needs {"query": "...", "relevant": ["doc uri", ...]}',
                    path=str(queries),
                    line=n,
                    col=1,
                )
            rel = row["relevant"]
            row["relevant"] = [rel] if isinstance(rel, str) else list(rel)
            rows.append(row)
    return rows


# -- progress ---------------------------------------------------------------------------------
class _Bar:
    def __init__(self, total: int) -> None:
        from matrixos._progress import RateBar

        self.bar = RateBar("indexing", total)
        self.done = 0

    def advance(self, s: IndexSummary) -> None:
        self.done += 1
        el = self.bar.elapsed
        self.bar.update(
            f"{self.done / el:.1f} docs/s · {s.chunks_written / el:.1f} chunks/s", advance=1
        )

    def close(self, s: IndexSummary) -> None:
        self.bar.close()


def _progress(enabled: bool, total: int) -> _Bar | None:
    return _Bar(total) if enabled and total else None
