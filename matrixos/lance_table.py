"""``LanceTable``: a Lance table in the catalog, with vector, full-text and hybrid search.

A Lance table may name an *embedding*: which text column is embedded into which vector column
by which embedder (table properties ``matrixos.embedding.source``, ``…column`` and
``…embedder``). Then text queries are embedded with the same model, and rows appended without
vectors are embedded on write.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa

from matrixos.errors import ConfigError, NotSupported, SchemaMismatch, TableNotFound
from matrixos.storage.arrow import to_arrow_table
from matrixos.table import Table

if TYPE_CHECKING:
    from lance import LanceDataset

    from matrixos.storage.delta import WriteResult
    from matrixos.storage.lance import LanceStore

SearchMode = Literal["vector", "text", "hybrid"]

PROP_SOURCE = "matrixos.embedding.source"
PROP_COLUMN = "matrixos.embedding.column"
PROP_EMBEDDER = "matrixos.embedding.embedder"


class LanceTable(Table):
    """A Lance table: multimodal rows, vectors and text indexes.

    Example:
        >>> import tempfile, matrixos as mx
        >>> lh = mx.connect(tempfile.mkdtemp())
        >>> rows = [{"id": 1, "text": "VACUUM removes old files"},
        ...         {"id": 2, "text": "OPTIMIZE compacts small files"}]
        >>> t = lh.create_table("kb.docs", rows, format="lance")
        >>> t.set_embedding("text", embedder="hash")  # "minilm" for real semantic search
        >>> [r["id"] for r in t.search("how do I vacuum?", k=1, mode="hybrid").to_pylist()]
        [1]
    """

    @property
    def store(self) -> LanceStore:
        return self._lh._store(self.info)  # type: ignore[return-value]

    def dataset(
        self, version: int | None = None, timestamp: datetime | str | None = None
    ) -> LanceDataset:
        """The underlying ``lance.LanceDataset`` (latest, or as of a version/timestamp)."""
        try:
            return self.store.open(version=version, timestamp=timestamp)
        except TableNotFound as e:
            if self.info.external or version is not None or timestamp is not None:
                raise
            raise self._lh._no_data(self.info) from e

    # -- reading ----------------------------------------------------------------------------
    @property
    def version(self) -> int:
        return int(self.dataset().version)

    @property
    def schema(self) -> pa.Schema:
        return self.dataset().schema

    @property
    def partition_by(self) -> list[str]:
        return []

    def to_arrow(
        self,
        version: int | None = None,
        timestamp: datetime | str | None = None,
        columns: Sequence[str] | None = None,
    ) -> pa.Table:
        ds = self.dataset(version, timestamp)
        return ds.to_table(columns=list(columns) if columns else None)

    def count(self) -> int:
        return int(self.dataset().count_rows())

    def describe(self) -> dict[str, Any]:
        ds = self.dataset()
        return {
            "name": self.name,
            "format": self.info.format,
            "location": self.location,
            "external": self.info.external,
            "comment": self.info.comment,
            "owner": self.info.owner,
            "properties": dict(self.info.properties),
            "created_at": self.info.created_at,
            "updated_at": self.info.updated_at,
            "version": int(ds.version),
            "partition_by": [],
            "num_files": len(ds.get_fragments()),
            "num_rows": ds.count_rows(),
            "schema": {f.name: str(f.type) for f in ds.schema},
            "indexes": self.indexes(),
        }

    # -- writing: rows without vectors get them from the table's embedder -------------------
    def append(self, data: Any, *, evolve: bool = False) -> WriteResult:
        return super().append(self._with_vectors(data), evolve=evolve)

    def overwrite(
        self, data: Any, *, evolve: bool = False, where: str | None = None
    ) -> WriteResult:
        return super().overwrite(self._with_vectors(data), evolve=evolve, where=where)

    def merge(self, data: Any, on: Sequence[str], **kwargs: Any) -> WriteResult:
        return super().merge(self._with_vectors(data), on, **kwargs)

    def _with_vectors(self, data: Any) -> Any:
        emb = self.embedding
        if emb is None:
            return data
        table = to_arrow_table(data)
        source, column, embedder = emb
        if source not in table.column_names:
            return table
        if column in table.column_names and table.column(column).null_count == 0:
            return table
        return embed_column(table, source, column, embedder)

    # -- embedding and indexes --------------------------------------------------------------
    @property
    def embedding(self) -> tuple[str, str, str] | None:
        """``(source text column, vector column, embedder name)`` when set."""
        p = self.info.properties
        if PROP_SOURCE not in p:
            return None
        return p[PROP_SOURCE], p.get(PROP_COLUMN, "vector"), p.get(PROP_EMBEDDER, "minilm")

    def set_embedding(
        self, source: str, *, column: str = "vector", embedder: str = "minilm"
    ) -> None:
        """Embed ``source`` (text) into ``column`` with ``embedder``: now for rows without a
        vector, and on every later write; text queries use the same embedder."""
        from matrixos.ai.embed import get_embedder

        if source not in self.schema.names:
            raise SchemaMismatch(f"table {self.name} has no column {source!r}")
        get_embedder(embedder)  # unknown names fail before anything is recorded
        props = {
            **self.info.properties,
            PROP_SOURCE: source,
            PROP_COLUMN: column,
            PROP_EMBEDDER: embedder,
        }
        self.info = self._lh.catalog.update_table(dataclasses.replace(self.info, properties=props))
        ds = self.dataset()
        if column not in ds.schema.names or ds.count_rows(filter=f"{column} IS NULL"):
            rows = ds.to_table()
            self.store.overwrite(
                embed_column(rows, source, column, embedder), evolve=column not in rows.schema.names
            )

    def create_index(
        self,
        column: str | None = None,
        *,
        index_type: str = "auto",
        metric: str = "cosine",
        replace: bool = True,
        **params: Any,
    ) -> dict[str, Any]:
        """Build a vector index (IVF_PQ, IVF_HNSW_SQ, flat, or ``auto`` by row count)."""
        from matrixos.engine import search

        out = search.create_vector_index(
            self.location,
            column or self._vector_column(),
            index_type=index_type,
            metric=metric,
            storage_options=self._options,
            replace=replace,
            **params,
        )
        self._lh.catalog.touch(self.info.ident)
        return out

    def create_text_index(self, column: str, *, replace: bool = True) -> dict[str, Any]:
        """Build a BM25 full-text index on a text column."""
        from matrixos.engine import search

        out = search.create_text_index(
            self.location, column, storage_options=self._options, replace=replace
        )
        self._lh.catalog.touch(self.info.ident)
        return dict(out or {})

    def indexes(self) -> list[dict[str, Any]]:
        """Each index with its indexed and unindexed row counts."""
        from matrixos.engine import search

        return list(search.index_status(self.location, storage_options=self._options).values())

    def optimize(self, zorder_by: Sequence[str] | None = None) -> dict[str, Any]:
        """Compact small fragments and fold rows appended since indexing into the indexes."""
        return super().optimize(zorder_by)

    # -- search -----------------------------------------------------------------------------
    def search(
        self,
        query: str | Sequence[float] | Any,
        *,
        k: int = 10,
        mode: SearchMode = "vector",
        filter: str | None = None,
        columns: Sequence[str] | None = None,
        version: int | None = None,
    ) -> pa.Table:
        """Top ``k`` rows for ``query`` (text, embedded with the table's embedder, or a vector),
        plus ``_score`` (higher is better). ``filter`` is a SQL predicate applied before top-k.
        """
        from matrixos.engine import search

        if k <= 0:
            raise ConfigError(f"k must be positive, got {k}")
        opts = self._options
        cols = list(columns) if columns else None
        if mode == "text":
            if not isinstance(query, str):
                raise ConfigError("text search needs a text query")
            return search.text_search(
                self.location,
                query,
                column=self._text_column(),
                k=k,
                filter=filter,
                columns=cols,
                storage_options=opts,
                version=version,
            )
        vector = self._query_vector(query)
        if mode == "vector":
            return search.vector_search(
                self.location,
                vector,
                column=self._vector_column(),
                k=k,
                filter=filter,
                columns=cols,
                storage_options=opts,
                version=version,
            )
        if mode == "hybrid":
            if not isinstance(query, str):
                raise ConfigError("hybrid search needs a text query")
            return search.hybrid_search(
                self.location,
                query,
                vector,
                vector_column=self._vector_column(),
                text_column=self._text_column(),
                k=k,
                filter=filter,
                columns=cols,
                storage_options=opts,
                version=version,
            )
        raise ConfigError(f"unknown search mode {mode!r}; use 'vector', 'text' or 'hybrid'")

    def embed_query(self, text: str) -> list[float]:
        """``text`` embedded with the table's embedder (the default one when none is set)."""
        from matrixos.ai.embed import get_embedder

        emb = self.embedding
        return [float(x) for x in get_embedder(emb[2] if emb else None).embed([text])[0]]

    def _query_vector(self, query: Any) -> list[float]:
        if isinstance(query, str):
            return self.embed_query(query)
        try:
            return [float(x) for x in query]
        except TypeError as e:
            raise ConfigError("a search query is text or a vector of numbers") from e

    def _vector_column(self) -> str:
        emb = self.embedding
        if emb is not None:
            return emb[1]
        vectors = [f.name for f in self.schema if _is_vector(f.type)]
        if len(vectors) != 1:
            raise ConfigError(
                f"table {self.name} has {len(vectors)} vector columns {vectors}; "
                "name one with set_embedding(…)"
            )
        return vectors[0]

    def _text_column(self) -> str | None:
        """The embedded text column; else None: the search core picks the indexed one."""
        emb = self.embedding
        return emb[0] if emb is not None else None

    @property
    def _options(self) -> dict[str, str] | None:
        return self._lh.warehouse.lance_options(self.location)


def _is_vector(t: pa.DataType) -> bool:
    return pa.types.is_fixed_size_list(t) and pa.types.is_floating(t.value_type)


def embed_column(table: pa.Table, source: str, column: str, embedder: str | None) -> pa.Table:
    """``table`` with ``column`` = embeddings of the text column ``source``."""
    from matrixos.ai.embed import get_embedder

    if source not in table.column_names:
        raise SchemaMismatch(f"no text column {source!r} to embed")
    emb = get_embedder(embedder)
    texts = [t if isinstance(t, str) else "" for t in table.column(source).to_pylist()]
    vecs = emb.embed(texts) if texts else None
    flat = pa.array(vecs.reshape(-1) if vecs is not None else [], pa.float32())
    arr = pa.FixedSizeListArray.from_arrays(flat, emb.dim)
    if column in table.column_names:
        return table.set_column(table.column_names.index(column), column, arr)
    return table.append_column(column, arr)


def lance_table_or_error(t: Table) -> LanceTable:
    if not isinstance(t, LanceTable):
        raise NotSupported(
            f"table {t.name} is a {t.info.format} table; search needs a Lance table "
            "(create_table(..., format='lance'))"
        )
    return t
