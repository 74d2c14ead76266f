"""``LanceTable``: a Lance table in the catalog, with vector, full-text and hybrid search.

A Lance table may name an *embedding*: which text column is embedded into which vector column
by which embedder (table properties ``matrixos.embedding.source``, ``…column`` and
``…embedder``). Then text queries are embedded with the same model, and rows appended without
vectors are embedded on write.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa

from matrixos.ai.embed import PROP_COLUMN, PROP_EMBEDDER, PROP_SOURCE, embed_rows, get_embedder
from matrixos.engine import embedding, search
from matrixos.errors import (
    AccessDenied,
    ConfigError,
    NotSupported,
    SchemaMismatch,
    TableNotFound,
)
from matrixos.table import Table

if TYPE_CHECKING:
    from lance import LanceDataset

    from matrixos.storage.lance import LanceStore

SearchMode = Literal["vector", "text", "hybrid"]
__all__ = ["PROP_COLUMN", "PROP_EMBEDDER", "PROP_SOURCE", "LanceTable", "lance_table_or_error"]


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
        return self._ctx.service.store(self.info)  # type: ignore[return-value]

    def dataset(
        self, version: int | None = None, timestamp: datetime | str | None = None
    ) -> LanceDataset:
        """The underlying ``lance.LanceDataset`` (latest, or as of a version/timestamp).

        Refused (``AccessDenied``) to a principal with row filters or column masks on the
        table: the dataset holds every row and value (``to_arrow`` and SQL apply them)."""
        info = self._reading()
        if self._ctx.service.policy(self._ctx.principal, info) is not None:
            raise AccessDenied(
                f"row filters or column masks apply to {self._ctx.principal.name} on "
                f"{self.name}: its dataset is not handed out",
                hint="read it with to_arrow(), search() or SQL, which apply them",
            )
        return self._open(version, timestamp)

    def _open(
        self, version: int | None = None, timestamp: datetime | str | None = None
    ) -> LanceDataset:
        self._reading()
        try:
            return self.store.open(version=version, timestamp=timestamp)
        except TableNotFound as e:
            if self.info.external or version is not None or timestamp is not None:
                raise
            raise self._ctx.service.no_data(self.info) from e

    # -- reading ----------------------------------------------------------------------------
    @property
    def version(self) -> int:
        return int(self._open().version)

    @property
    def schema(self) -> pa.Schema:
        return self._open().schema

    @property
    def partition_by(self) -> list[str]:
        return []

    def to_arrow(
        self,
        version: int | None = None,
        timestamp: datetime | str | None = None,
        columns: Sequence[str] | None = None,
    ) -> pa.Table:
        filtered = self._filtered(version, timestamp, columns)
        if filtered is not None:
            return filtered
        ds = self._open(version, timestamp)
        return ds.to_table(columns=list(columns) if columns else None)

    def count(self) -> int:
        filtered = self._filtered(columns=[])
        if filtered is not None:
            return filtered.num_rows
        return int(self._open().count_rows())

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "indexes": self.indexes()}

    # -- embedding and indexes --------------------------------------------------------------
    @property
    def embedding(self) -> tuple[str, str, str] | None:
        """``(source text column, vector column, embedder name)`` when set."""
        emb = embedding.table_embedding(self.info.properties)
        return None if emb is None else tuple(emb)  # type: ignore[return-value]

    def set_embedding(
        self, source: str, *, column: str = "vector", embedder: str = "minilm"
    ) -> None:
        """Embed ``source`` (text) into ``column`` with ``embedder``: now for rows without a
        vector, and on every later write; text queries use the same embedder."""
        if source not in self.schema.names:
            raise SchemaMismatch(f"table {self.name} has no column {source!r}")
        get_embedder(embedder)  # unknown names fail before anything is recorded
        props = {
            **self.info.properties,
            PROP_SOURCE: source,
            PROP_COLUMN: column,
            PROP_EMBEDDER: embedder,
        }
        self._writing()
        self.info = self._ctx.service.update_properties(self.info, props)
        ds = self._open()
        if column not in ds.schema.names or ds.count_rows(filter=f"{column} IS NULL"):
            rows = ds.to_table()
            self.store.overwrite(embed_rows(props, rows), evolve=column not in rows.schema.names)

    def create_index(
        self,
        column: str | None = None,
        *,
        index_type: str = "auto",
        metric: str = "cosine",
        replace: bool = True,
        **params: Any,
    ) -> dict[str, Any]:
        """Build a vector index (IVF_PQ, IVF_HNSW_SQ, flat, or ``auto`` by row count).

        The in-memory ANN cache of the column then starts building on a background thread
        (``search.prewarm``): searches go to Lance's index until it is ready (seconds for 50k
        rows), then answer in about a millisecond. Building it at index creation, not on the
        first query, keeps the first queries' latency that of Lance and needs no setting."""
        self._writing()
        out = search.create_vector_index(
            self.location,
            column or self._vector_column(),
            index_type=index_type,
            metric=metric,
            storage_options=self._options,
            replace=replace,
            **params,
        )
        self._ctx.service.touch(self.info)
        search.prewarm(
            self.location, out["column"], metric=out["metric"], storage_options=self._options
        )
        return out

    def create_text_index(self, column: str, *, replace: bool = True) -> dict[str, Any]:
        """Build a BM25 full-text index on a text column."""
        self._writing()
        out = search.create_text_index(
            self.location, column, storage_options=self._options, replace=replace
        )
        self._ctx.service.touch(self.info)
        return dict(out or {})

    def indexes(self) -> list[dict[str, Any]]:
        """Each index with its indexed and unindexed row counts."""
        self._reading()
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
        info = self._reading()
        if self._ctx.service.policy(self._ctx.principal, info) is not None:
            if version is not None:
                raise NotSupported(
                    f"search of {self.name} at a version: row filters or column masks apply "
                    f"to {self._ctx.principal.name} on it, and they hold for the latest version",
                    hint="search the latest version",
                )
            return self._ctx.engine().search_as(
                self._ctx.principal, info, query, k=k, mode=mode, filter=filter, columns=columns
            )
        return embedding.search_table(
            self.location,
            self.info.properties,
            query,
            k=k,
            mode=mode,
            filter=filter,
            columns=columns,
            storage_options=self._options,
            version=version,
        )

    def embed_query(self, text: str) -> list[float]:
        """``text`` embedded with the table's embedder (the default one when none is set)."""
        return embedding.embed_query(text, self.info.properties)

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

    @property
    def _options(self) -> dict[str, str] | None:
        return self._ctx.service.warehouse.lance_options(self.location)


def _is_vector(t: pa.DataType) -> bool:
    return pa.types.is_fixed_size_list(t) and pa.types.is_floating(t.value_type)


def lance_table_or_error(t: Table) -> LanceTable:
    if not isinstance(t, LanceTable):
        raise NotSupported(
            f"table {t.name} is a {t.info.format} table; search needs a Lance table "
            "(create_table(..., format='lance'))"
        )
    return t
