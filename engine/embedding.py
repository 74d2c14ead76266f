"""A Lance table's embedding, as its catalog properties name it, and a search of the table
by text or vector with it.

A table may name which text column is embedded into which vector column by which embedder
(properties ``matrixos.embedding.source``, ``…column`` and ``…embedder``). Text queries are
then embedded with the same model. The SQL search functions (``engine.functions``) search
through ``search_table``; it needs the table's location, properties and storage options, not
a table object.

Example:
    >>> props = {PROP_SOURCE: "text", PROP_EMBEDDER: "hash"}
    >>> table_embedding(props)
    Embedding(source='text', column='vector', embedder='hash')
    >>> len(embed_query("vacuum a table", props))  # the hash embedder's dimension
    64
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal, NamedTuple

import numpy as np
import pyarrow as pa

from matrixos.ai.embed import PROP_COLUMN, PROP_EMBEDDER, PROP_SOURCE, get_embedder
from matrixos.engine import search
from matrixos.errors import ConfigError

SearchMode = Literal["vector", "text", "hybrid"]

__all__ = [
    "PROP_COLUMN",
    "PROP_EMBEDDER",
    "PROP_SOURCE",
    "Embedding",
    "embed_query",
    "search_table",
    "table_embedding",
]


class Embedding(NamedTuple):
    """Which text column (``source``) is embedded into which vector column, by which
    embedder."""

    source: str
    column: str
    embedder: str


def table_embedding(properties: Mapping[str, str]) -> Embedding | None:
    """The embedding a table's properties name, or None."""
    if PROP_SOURCE not in properties:
        return None
    return Embedding(
        properties[PROP_SOURCE],
        properties.get(PROP_COLUMN, "vector"),
        properties.get(PROP_EMBEDDER, "minilm"),
    )


def embed_query(text: str, properties: Mapping[str, str]) -> list[float]:
    """``text`` embedded with the table's embedder (the default one when none is set)."""
    emb = table_embedding(properties)
    return [float(x) for x in get_embedder(emb.embedder if emb else None).embed([text])[0]]


def search_table(
    location: str,
    properties: Mapping[str, str],
    query: str | Sequence[float] | Any,
    *,
    k: int = 10,
    mode: SearchMode = "vector",
    filter: str | None = None,
    columns: Sequence[str] | None = None,
    storage_options: dict[str, str] | None = None,
    version: int | None = None,
) -> pa.Table:
    """Top ``k`` rows of the Lance table at ``location`` for ``query`` (text, embedded with the
    table's embedder, or a vector), plus ``_score`` (higher is better). ``filter`` is a SQL
    predicate applied before top-k. Without an embedding the search picks the table's one
    vector column and its text-indexed column."""
    if k <= 0:
        raise ConfigError(f"k must be positive, got {k}")
    emb = table_embedding(properties)
    cols = list(columns) if columns else None
    if mode == "text":
        if not isinstance(query, str):
            raise ConfigError("text search needs a text query")
        return search.text_search(
            location,
            query,
            column=emb.source if emb else None,
            k=k,
            filter=filter,
            columns=cols,
            storage_options=storage_options,
            version=version,
        )
    if mode not in ("vector", "hybrid"):
        raise ConfigError(f"unknown search mode {mode!r}; use 'vector', 'text' or 'hybrid'")
    vector = _query_vector(query, properties)
    if mode == "vector":
        return search.vector_search(
            location,
            vector,
            column=emb.column if emb else None,
            k=k,
            filter=filter,
            columns=cols,
            storage_options=storage_options,
            version=version,
        )
    if not isinstance(query, str):
        raise ConfigError("hybrid search needs a text query")
    return search.hybrid_search(
        location,
        query,
        vector,
        vector_column=emb.column if emb else None,
        text_column=emb.source if emb else None,
        k=k,
        filter=filter,
        columns=cols,
        storage_options=storage_options,
        version=version,
    )


def _query_vector(query: Any, properties: Mapping[str, str]) -> Sequence[float] | np.ndarray:
    if isinstance(query, str):
        return embed_query(query, properties)
    if isinstance(query, np.ndarray) and query.dtype.kind == "f":
        return query  # checked (shape, finite) by the search itself, with no copy
    try:
        return [float(x) for x in query]
    except TypeError as e:
        raise ConfigError("a search query is text or a vector of numbers") from e
