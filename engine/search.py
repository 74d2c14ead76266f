"""Vector, full-text and hybrid search over one Lance dataset, given by URI.

The durable indexes are Lance's own (IVF_PQ / IVF_HNSW_SQ / IVF_FLAT for vectors, the BM25
``INVERTED`` index for text), so any lance or LanceDB reader can use them. Beside them sits a
process-wide, in-memory ANN cache (faiss HNSW, the optional ``matrixos[search]`` extra) that
answers vector queries in about a millisecond; it follows the dataset's versions (appended rows are
added to it, deleted rows masked) and falls back to Lance's index search when faiss is missing,
the dataset is too large for the cache budget, or an older version is asked for.

Every search returns a ``pyarrow.Table`` of the dataset's columns (or ``columns=``) plus
``_score`` (higher is better) and, for vectors, ``_distance`` (Lance's convention: squared L2,
``1 - cosine``, ``1 - dot``), best first. Filters are Lance SQL predicates applied *before* the
top-k, so ``k`` rows come back whenever ``k`` rows match.

This module knows nothing about the catalog: ``Lakehouse.search`` and the SQL table functions
resolve a table to its URI and storage options and call in here.

Example:
    >>> import tempfile, lance, numpy as np, pyarrow as pa
    >>> vecs = np.random.default_rng(0).random((300, 8), dtype=np.float32)
    >>> uri = tempfile.mkdtemp() + "/docs.lance"
    >>> _ = lance.write_dataset(pa.table({
    ...     "id": range(300), "lang": ["en", "de"] * 150,
    ...     "text": ["vacuum freeze" if i % 3 == 0 else "optimize" for i in range(300)],
    ...     "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel()), 8),
    ... }), uri)
    >>> create_vector_index(uri, "embedding", index_type="IVF_HNSW_SQ", metric="cosine")["name"]
    'embedding_idx'
    >>> vector_search(uri, vecs[8], k=2, filter="lang = 'en'", columns=["id"])["id"].to_pylist()
    [8, ...]
    >>> _ = create_text_index(uri, "text")
    >>> hybrid_search(uri, "vacuum freeze", vecs[9], k=2, columns=["id"])["id"].to_pylist()
    [9, ...]
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa

from matrixos.engine.lru import LRU
from matrixos.errors import (
    ConfigError,
    MatrixOSError,
    SchemaMismatch,
    SQLError,
    StorageError,
    TableNotFound,
)

if TYPE_CHECKING:
    from lance.dataset import LanceDataset

__all__ = [
    "cache_info",
    "clear_cache",
    "configure_cache",
    "create_text_index",
    "create_vector_index",
    "hybrid_search",
    "index_status",
    "optimize_indexes",
    "text_search",
    "vector_search",
    "warm",
]

Metric = Literal["l2", "cosine", "dot"]
StorageOptions = Mapping[str, str] | None

# --- Index choice for ``index_type="auto"`` -------------------------------------------------
# Below ~20k rows an exact scan reads < 30 MB of 384-d float32 and takes a few ms; an IVF index
# would not be faster and k-means on so few rows gives poor partitions, so no ANN index is built.
AUTO_FLAT_MAX_ROWS = 20_000
# IVF_HNSW_SQ keeps 1 byte per dimension plus the graph; recall@10 0.96 (0.98 with the exact
# re-rank that vector_search asks for) on 50k MiniLM vectors (benchmarks/search.py). Past ~5M
# rows its size (~2 GB at 384-d) matters more than the last points of recall, and IVF_PQ
# (dim/8 bytes per vector, exact re-ranking of refine_factor x k candidates) is the usual choice.
AUTO_PQ_MIN_ROWS = 5_000_000

# --- The in-memory ANN cache -------------------------------------------------------------------
# Up to this many rows the cache holds a plain (exact) faiss index: one query is a 15 MB
# matrix-vector product (< 1 ms), and exact beats approximate.
CACHE_FLAT_MAX_ROWS = 10_000
# HNSW graph degree and build effort: M=32 is faiss' recommendation for 0.95+ recall on
# 100-1000-d embeddings; efConstruction 80 trades build time (~2x the default 40) for recall.
HNSW_M = 32
HNSW_EF_CONSTRUCTION = 80
# efSearch: 64 gives recall@10 ~0.99 on 50k MiniLM vectors (benchmarks/search.py); raised to
# 2k for larger k.
HNSW_EF_SEARCH = 64
# A filter matching at most this many rows is answered exactly over just those vectors
# (≤ 15 MB of 384-d float32, ~1 ms); more matches go through HNSW restricted to them.
EXACT_FILTER_MAX_ROWS = 10_000
# Work done inside a query is kept well under a second: a first build only while the cache
# would be exact (copying vectors is instant; an HNSW graph of 50k 384-d rows takes ~7 s on 2
# cores), and adding appended rows to a graph up to 2k rows (~0.3 s). Larger work runs on a
# background thread while queries go to Lance's index; ``warm`` does it all in the foreground.
SYNC_BUILD_MAX_ROWS = CACHE_FLAT_MAX_ROWS
SYNC_ADD_MAX_ROWS = 2_000
# Rebuild instead of masking once this share of the cached rows has been deleted.
REBUILD_DEAD_FRACTION = 0.25
FILTERS_PER_ENTRY = 32

_log = logging.getLogger(__name__)
_CONFIG_METRIC = "matrixos.search.metric."  # + column: the metric chosen for a column
_RS_LOCATION = re.compile(r",?\s*/\S+?\.rs:\d+:\d+")


# --- Errors ------------------------------------------------------------------------------------


def _message(e: BaseException) -> str:
    """A lance error's text without the Rust source location it ends with."""
    return _RS_LOCATION.sub("", str(e)).strip()


def _wrap(
    e: Exception,
    what: str,
    *,
    uri: str,
    ds: LanceDataset | None = None,
    predicate: str | None = None,
) -> MatrixOSError:
    """A MatrixOSError for a lance failure; blames the filter when it alone fails to plan."""
    if isinstance(e, MatrixOSError):
        return e
    msg = _message(e)
    if predicate is not None and ds is not None:
        bad = _filter_problem(ds, predicate)
        if bad is not None:
            return SQLError(
                f"invalid filter {predicate!r}: {bad}",
                sql=predicate,
                hint="filters are SQL predicates over the dataset's columns, e.g. \"lang = 'en'\"",
            )
    low = msg.lower()
    if "not found" in low and ("dataset" in low or "no such file" in low):
        return TableNotFound(f"no Lance dataset at {uri!r}", hint=msg)
    if isinstance(e, OSError):
        return StorageError(f"{what} on {uri!r} failed: {msg}")
    return MatrixOSError(f"{what} on {uri!r} failed: {msg}")


def _filter_problem(ds: LanceDataset, predicate: str) -> str | None:
    """Why ``predicate`` is not a valid filter of ``ds``, or None when it is."""
    try:
        ds.scanner(columns=[], filter=predicate, limit=1, with_row_id=True).to_table()
    except Exception as e:
        return _message(e).removeprefix("Invalid user input: ")
    return None


# --- Opening datasets --------------------------------------------------------------------------

_HANDLES: LRU[tuple[str, tuple[tuple[str, str], ...]], LanceDataset] = LRU(64)


def _freeze(options: StorageOptions) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((str(k), str(v)) for k, v in (options or {}).items()))


def _open(uri: str, storage_options: StorageOptions, version: int | None) -> LanceDataset:
    """The dataset at ``version`` (default: the latest, checked on every call).

    Handles are kept per (URI, options) so that Lance's session, with its index and metadata
    caches, survives between queries; re-opening costs a manifest read per call.
    """
    import lance

    key = (uri, _freeze(storage_options))
    ds = _HANDLES.get(key)
    try:
        if ds is None:
            ds = lance.dataset(uri, storage_options=dict(storage_options or {}) or None)
        latest = ds.latest_version
        if ds.version != latest:
            ds = ds.checkout_version(latest)
    except Exception as e:
        raise _wrap(e, "opening the dataset", uri=uri) from e
    _HANDLES.put(key, ds)
    if version is None or version == ds.version:
        return ds
    try:
        return ds.checkout_version(version)
    except Exception as e:
        raise ConfigError(
            f"{uri!r} has no version {version}", hint=f"the latest version is {ds.version}"
        ) from e


def _open_for_write(uri: str, storage_options: StorageOptions) -> LanceDataset:
    """A handle of its own: index builds move it to new versions, which must not happen under
    searches sharing the cached handle (they rely on its version staying put)."""
    import lance

    try:
        return lance.dataset(uri, storage_options=dict(storage_options or {}) or None)
    except Exception as e:
        raise _wrap(e, "opening the dataset", uri=uri) from e


def _uri(uri: Any) -> str:
    return os.fspath(uri) if not isinstance(uri, str) else uri


# --- Columns, metrics, indexes -----------------------------------------------------------------


def _is_vector(t: pa.DataType) -> bool:
    return pa.types.is_fixed_size_list(t) and pa.types.is_floating(t.value_type)


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _field(ds: LanceDataset, name: str, uri: str) -> pa.Field:
    schema = ds.schema
    if schema.get_field_index(name) < 0:
        raise SQLError(
            f"column {name!r} does not exist in {uri!r}",
            sql=name,
            sqlstate="42703",
            hint="columns: " + ", ".join(schema.names),
        )
    return schema.field(name)


def _vector_column(ds: LanceDataset, column: str | None, uri: str) -> tuple[str, int]:
    if column is not None:
        f = _field(ds, column, uri)
        if not _is_vector(f.type):
            raise SchemaMismatch(
                f"column {column!r} of {uri!r} is {f.type}, not a vector (fixed_size_list<float>)"
            )
        return column, f.type.list_size
    found = [f for f in ds.schema if _is_vector(f.type)]
    f32 = [f for f in found if pa.types.is_float32(f.type.value_type)]
    if len(f32) == 1:
        found = f32
    if len(found) != 1:
        names = ", ".join(f.name for f in found) or "none"
        raise ConfigError(
            f"{uri!r} has {len(found)} vector columns ({names}); say which one",
            hint="pass column=",
        )
    return found[0].name, found[0].type.list_size


def _indexes(ds: LanceDataset) -> list[Any]:
    try:
        return list(ds.describe_indices())
    except Exception:  # an older lance without describe_indices: no metadata, not fatal
        return []


def _vector_index(ds: LanceDataset, column: str) -> Any | None:
    for d in _indexes(ds):
        if list(d.field_names) == [column] and str(d.index_type).upper().startswith("IVF"):
            return d
    return None


def _text_column(ds: LanceDataset, column: str | None, uri: str) -> str:
    if column is not None:
        f = _field(ds, column, uri)
        if not _is_text(f.type):
            raise SchemaMismatch(f"column {column!r} of {uri!r} is {f.type}, not text")
        return column
    indexed = [
        d.field_names[0]
        for d in _indexes(ds)
        if str(d.index_type).lower() in ("inverted", "fts") and len(d.field_names) == 1
    ]
    if len(indexed) == 1:
        return str(indexed[0])
    texts = [f.name for f in ds.schema if _is_text(f.type)]
    if len(indexed) == 0 and len(texts) == 1:
        return texts[0]
    names = ", ".join(indexed or texts) or "none"
    raise ConfigError(
        f"cannot tell which text column of {uri!r} to search ({names})", hint="pass column="
    )


_METRICS: dict[str, Metric] = {
    "l2": "l2",
    "euclidean": "l2",
    "cosine": "cosine",
    "dot": "dot",
    "ip": "dot",
    "inner_product": "dot",
}


def _metric(name: str) -> Metric:
    m = _METRICS.get(str(name).lower())
    if m is None:
        raise ConfigError(f"unknown metric {name!r}", hint="use 'cosine', 'l2' or 'dot'")
    return m


def _column_metric(ds: LanceDataset, column: str) -> Metric:
    """The metric the column's index was built with, else the one recorded for it, else
    cosine (what sentence embedders are trained for)."""
    idx = _vector_index(ds, column)
    if idx is not None:
        details = idx.details if isinstance(idx.details, dict) else {}
        if details.get("metric_type"):
            return _metric(details["metric_type"])
    recorded = _config(ds).get(_CONFIG_METRIC + column)
    return _metric(recorded) if recorded else "cosine"


def _config(ds: LanceDataset) -> dict[str, str]:
    cfg = ds.config
    return dict(cfg() if callable(cfg) else cfg or {})


def _projection(ds: LanceDataset, columns: Sequence[str] | None, uri: str) -> list[str]:
    if columns is None:
        return list(ds.schema.names)
    if isinstance(columns, str):
        columns = [columns]
    for c in columns:
        _field(ds, c, uri)
    return list(columns)


# --- Index management --------------------------------------------------------------------------


def _sub_vectors(dim: int) -> int:
    """PQ sub-vectors of 8 dimensions (384-d → 48 bytes per vector), as divisors of ``dim``."""
    best = 1
    for s in range(1, dim + 1):
        if dim % s == 0 and dim // s >= 8:
            best = s
    return best


def create_vector_index(
    uri: str,
    column: str | None = None,
    *,
    index_type: str = "auto",
    metric: str = "cosine",
    storage_options: StorageOptions = None,
    replace: bool = True,
    **params: Any,
) -> dict[str, Any]:
    """Build the durable vector index of a column (or choose exact search).

    Args:
        uri: the Lance dataset.
        column: a ``fixed_size_list<float>`` column; default: the dataset's only one.
        index_type: ``"IVF_HNSW_SQ"``, ``"IVF_PQ"``, ``"IVF_FLAT"``, ``"flat"`` (no ANN index:
            searches are exact) or ``"auto"``: flat below 20k rows, IVF_HNSW_SQ below 5M,
            IVF_PQ above.
        metric: ``"cosine"``, ``"l2"`` or ``"dot"``; searches use it unless told otherwise.
        storage_options: lance storage options (credentials, endpoint).
        replace: replace an existing index of the column; else an existing one is an error.
        **params: passed to ``LanceDataset.create_index`` (``num_partitions``,
            ``num_sub_vectors``, ``m``, ``ef_construction``, ...), overriding the defaults.

    Returns:
        ``{"column", "index_type", "metric", "name", "num_rows", "params", "version"}``.

    Raises:
        TableNotFound, ConfigError (bad type/metric, index exists and ``replace=False``),
        SchemaMismatch (not a vector column), MatrixOSError (Lance failed).

    Example:
        >>> import tempfile, lance, numpy as np, pyarrow as pa
        >>> vecs = np.random.default_rng(0).random((300, 8), dtype=np.float32)
        >>> uri = tempfile.mkdtemp() + "/docs.lance"
        >>> _ = lance.write_dataset(pa.table({
        ...     "id": range(300), "lang": ["en", "de"] * 150,
        ...     "text": ["vacuum freeze" if i % 3 == 0 else "optimize" for i in range(300)],
        ...     "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel()), 8),
        ... }), uri)
        >>> create_vector_index(uri, "embedding", index_type="IVF_HNSW_SQ")
        {'column': 'embedding', 'index_type': 'IVF_HNSW_SQ', 'metric': 'cosine', ...}
    """
    uri = _uri(uri)
    m = _metric(metric)
    ds = _open_for_write(uri, storage_options)
    col, dim = _vector_column(ds, column, uri)
    n = ds.count_rows()
    kind = index_type.upper()
    if kind == "AUTO":
        kind = (
            "FLAT"
            if n < AUTO_FLAT_MAX_ROWS
            else "IVF_HNSW_SQ"
            if n < AUTO_PQ_MIN_ROWS
            else "IVF_PQ"
        )
    if kind not in ("FLAT", "IVF_FLAT", "IVF_PQ", "IVF_HNSW_SQ"):
        raise ConfigError(
            f"unknown vector index type {index_type!r}",
            hint="use 'auto', 'flat', 'IVF_FLAT', 'IVF_PQ' or 'IVF_HNSW_SQ'",
        )
    existing = _vector_index(ds, col)
    if existing is not None and not replace:
        raise ConfigError(
            f"column {col!r} of {uri!r} already has a vector index ({existing.name})",
            hint="pass replace=True to rebuild it",
        )
    kw: dict[str, Any] = {}
    if kind == "IVF_HNSW_SQ":
        # Few, large partitions: each holds an HNSW graph, so a partition of 10-50k rows is
        # still fast to search, and fewer partitions lose fewer true neighbours at the edges.
        kw["num_partitions"] = max(1, min(round(math.sqrt(n) / 16), n // 256 or 1))
    elif kind in ("IVF_PQ", "IVF_FLAT"):
        kw["num_partitions"] = max(1, min(round(math.sqrt(n)), n // 32 or 1))
        if kind == "IVF_PQ":
            kw["num_sub_vectors"] = _sub_vectors(dim)
    kw.update(params)
    name = None
    try:
        if existing is not None and (kind == "FLAT" or existing.name != f"{col}_idx"):
            ds.drop_index(existing.name)
        if kind != "FLAT":
            name = f"{col}_idx"
            ds.create_index(col, kind, name=name, metric=m, replace=True, **kw)
        if _config(ds).get(_CONFIG_METRIC + col) != m:
            ds.update_config({_CONFIG_METRIC + col: m})
    except Exception as e:
        raise _wrap(e, f"building a {kind} index on {col!r}", uri=uri) from e
    latest = _open(uri, storage_options, None)
    return {
        "column": col,
        "index_type": "flat" if kind == "FLAT" else kind,
        "metric": m,
        "name": name,
        "num_rows": n,
        "params": kw if kind != "FLAT" else {},
        "version": latest.version,
    }


def create_text_index(
    uri: str,
    column: str | None = None,
    *,
    storage_options: StorageOptions = None,
    replace: bool = True,
    **params: Any,
) -> dict[str, Any]:
    """Build the BM25 full-text (Lance ``INVERTED``) index of a text column.

    Args:
        uri: the Lance dataset.
        column: a string column; default: the dataset's only one.
        storage_options: lance storage options.
        replace: replace an existing index of the column.
        **params: tokenizer options for ``create_scalar_index`` (``stem``, ``language``,
            ``with_position``, ...).

    Returns:
        ``{"column", "index_type": "INVERTED", "name", "num_rows", "version"}``.

    Raises:
        TableNotFound, ConfigError, SchemaMismatch, MatrixOSError.

    Example:
        >>> import tempfile, lance, numpy as np, pyarrow as pa
        >>> vecs = np.random.default_rng(0).random((300, 8), dtype=np.float32)
        >>> uri = tempfile.mkdtemp() + "/docs.lance"
        >>> _ = lance.write_dataset(pa.table({
        ...     "id": range(300), "lang": ["en", "de"] * 150,
        ...     "text": ["vacuum freeze" if i % 3 == 0 else "optimize" for i in range(300)],
        ...     "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel()), 8),
        ... }), uri)
        >>> create_text_index(uri, "text")["index_type"]
        'INVERTED'
    """
    uri = _uri(uri)
    ds = _open_for_write(uri, storage_options)
    col = _text_column(ds, column, uri)
    name = f"{col}_idx"
    if not replace and any(d.name == name for d in _indexes(ds)):
        raise ConfigError(
            f"column {col!r} of {uri!r} already has a text index", hint="pass replace=True"
        )
    try:
        ds.create_scalar_index(col, "INVERTED", name=name, replace=True, **params)
    except Exception as e:
        raise _wrap(e, f"building the text index on {col!r}", uri=uri) from e
    latest = _open(uri, storage_options, None)
    return {
        "column": col,
        "index_type": "INVERTED",
        "name": name,
        "num_rows": latest.count_rows(),
        "version": latest.version,
    }


def index_status(uri: str, *, storage_options: StorageOptions = None) -> dict[str, dict[str, Any]]:
    """Per index of the dataset: its type and how many rows it covers and misses.

    Rows appended after an index was built are "unindexed": searches still find them (Lance
    scans them exhaustively) but get slower as they grow; ``optimize_indexes`` folds them in.

    Returns:
        ``{name: {"name", "columns", "index_type", "metric", "num_indexed_rows",
        "num_unindexed_rows", "num_indexed_fragments", "num_unindexed_fragments"}}``.

    Example:
        >>> import tempfile, lance, numpy as np, pyarrow as pa
        >>> vecs = np.random.default_rng(0).random((300, 8), dtype=np.float32)
        >>> uri = tempfile.mkdtemp() + "/docs.lance"
        >>> _ = lance.write_dataset(pa.table({
        ...     "id": range(300), "lang": ["en", "de"] * 150,
        ...     "text": ["vacuum freeze" if i % 3 == 0 else "optimize" for i in range(300)],
        ...     "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel()), 8),
        ... }), uri)
        >>> _ = create_vector_index(uri, "embedding", index_type="IVF_HNSW_SQ")
        >>> index_status(uri)["embedding_idx"]["num_unindexed_rows"]
        0
    """
    uri = _uri(uri)
    ds = _open(uri, storage_options, None)
    try:
        rows = {f.metadata.id: f.metadata.num_rows for f in ds.get_fragments()}
        listed = ds.list_indices()
        described = {d.name: d for d in _indexes(ds)}
    except Exception as e:
        raise _wrap(e, "reading the indexes", uri=uri) from e
    covered: dict[str, set[int]] = {}
    info: dict[str, dict[str, Any]] = {}
    for ix in listed:
        name = ix["name"]
        covered.setdefault(name, set()).update(int(f) for f in ix["fragment_ids"])
        d = described.get(name)
        details = d.details if d is not None and isinstance(d.details, dict) else {}
        metric = details.get("metric_type")
        info[name] = {
            "name": name,
            "columns": list(ix["fields"]),
            "index_type": str(ix["type"]),
            "metric": _metric(metric) if metric else None,
        }
    for name, frags in covered.items():
        indexed = [f for f in rows if f in frags]
        info[name].update(
            num_indexed_rows=sum(rows[f] for f in indexed),
            num_unindexed_rows=sum(r for f, r in rows.items() if f not in frags),
            num_indexed_fragments=len(indexed),
            num_unindexed_fragments=len(rows) - len(indexed),
        )
    return dict(sorted(info.items()))


def optimize_indexes(
    uri: str,
    *,
    storage_options: StorageOptions = None,
    index_names: Sequence[str] | None = None,
    retrain: bool = False,
) -> dict[str, dict[str, Any]]:
    """Add the rows appended since the indexes were built to them, incrementally.

    New rows are assigned to the existing partitions (vector) or merged into the posting lists
    (text), which is much cheaper than a rebuild; ``retrain=True`` rebuilds from scratch (use it
    when the data has drifted far from what the index was trained on).

    Returns:
        ``index_status(uri)`` afterwards.

    Example:
        >>> import tempfile, lance, numpy as np, pyarrow as pa
        >>> vecs = np.random.default_rng(0).random((300, 8), dtype=np.float32)
        >>> uri = tempfile.mkdtemp() + "/docs.lance"
        >>> _ = lance.write_dataset(pa.table({
        ...     "id": range(300), "lang": ["en", "de"] * 150,
        ...     "text": ["vacuum freeze" if i % 3 == 0 else "optimize" for i in range(300)],
        ...     "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel()), 8),
        ... }), uri)
        >>> _ = create_text_index(uri, "text")
        >>> _ = lance.write_dataset(lance.dataset(uri).to_table().slice(0, 3), uri, mode="append")
        >>> index_status(uri)["text_idx"]["num_unindexed_rows"]
        3
        >>> optimize_indexes(uri)["text_idx"]["num_unindexed_rows"]
        0
    """
    uri = _uri(uri)
    ds = _open_for_write(uri, storage_options)
    kw: dict[str, Any] = {"retrain": retrain}
    if index_names is not None:
        kw["index_names"] = list(index_names)
    try:
        ds.optimize.optimize_indices(**kw)
    except Exception as e:
        raise _wrap(e, "optimizing the indexes", uri=uri) from e
    return index_status(uri, storage_options=storage_options)


# --- Shared search helpers ---------------------------------------------------------------------


def _query_vector(vector: Any, dim: int, column: str) -> np.ndarray:
    if isinstance(vector, str | bytes):
        raise ConfigError(
            "vector search needs a vector, not text",
            hint="embed the text first, or use text_search",
        )
    try:
        q = np.asarray(vector, dtype=np.float32)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"cannot read the query vector: {e}") from e
    if q.ndim == 2 and q.shape[0] == 1:
        q = q[0]
    if q.shape != (dim,):
        raise SchemaMismatch(
            f"the query vector has shape {q.shape}; column {column!r} holds {dim}-d vectors"
        )
    if not np.isfinite(q).all():
        raise ConfigError("the query vector contains NaN or infinity")
    return np.ascontiguousarray(q)


def _check_k(k: int) -> int:
    if not isinstance(k, int | np.integer) or k < 1:
        raise ConfigError(f"k must be a positive integer, not {k!r}")
    return int(k)


def _score_from_distance(d: np.ndarray, metric: Metric) -> np.ndarray:
    """Similarity, higher is better: cosine ``1 - d``, dot the dot product, L2 ``-d``."""
    d = d.astype(np.float32, copy=False)
    return (-d if metric == "l2" else 1.0 - d).astype(np.float32)


def _take(ds: LanceDataset, rowids: np.ndarray, columns: list[str], uri: str) -> pa.Table:
    """Rows by ``_rowid`` in the given order (rows deleted meanwhile are left out)."""
    want = [*columns, "_rowid"]
    try:
        got = ds._take_rows(rowids.tolist(), columns=want)
    except Exception as e:
        raise _wrap(e, "reading the result rows", uri=uri) from e
    ids = got.column("_rowid").to_numpy()
    if len(ids) == len(rowids) and np.array_equal(ids, rowids):
        return got
    where = {int(r): i for i, r in enumerate(ids)}
    order = [where[int(r)] for r in rowids if int(r) in where]
    return got.take(pa.array(order, type=pa.int64()))


def _finish(
    tbl: pa.Table,
    columns: list[str],
    extra: dict[str, pa.Array],
    with_row_id: bool,
) -> pa.Table:
    out = tbl.select(columns)
    for name, arr in extra.items():
        out = out.append_column(name, arr)
    if with_row_id:
        out = out.append_column("_rowid", tbl.column("_rowid"))
    return out


def _empty(
    ds: LanceDataset, columns: list[str], extra: Sequence[str], with_row_id: bool
) -> pa.Table:
    fields = [ds.schema.field(c) for c in columns]
    fields += [pa.field(n, pa.float32()) for n in extra]
    if with_row_id:
        fields.append(pa.field("_rowid", pa.uint64()))
    return pa.schema(fields).empty_table()


# --- The in-memory ANN cache -------------------------------------------------------------------


def _faiss() -> Any | None:
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def _default_cache_bytes() -> int:
    env = os.environ.get("MATRIXOS_SEARCH_CACHE_BYTES")
    if env:
        return int(env)
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 8 << 30
    return int(min(ram // 4, 8 << 30))


def _fragment_signatures(ds: LanceDataset) -> dict[int, tuple[Any, ...]]:
    """Per fragment what the cache depends on: its data files (a rewrite changes the vectors)
    and its deletion file (a delete hides rows)."""
    out: dict[int, tuple[Any, ...]] = {}
    for frag in ds.get_fragments():
        m = frag.metadata
        files = tuple(sorted(f.path for f in m.files))
        overlays = str(getattr(m, "overlays", ""))
        d = m.deletion_file
        deletion = None if d is None else (d.id, d.read_version, d.num_deleted_rows)
        out[m.id] = (m.physical_rows, files, overlays, deletion)
    return out


def _fragments(ds: LanceDataset, ids: Sequence[int]) -> list[Any]:
    out = [ds.get_fragment(f) for f in ids]
    return [f for f in out if f is not None]


def _read_vectors(
    ds: LanceDataset, column: str, dim: int, metric: Metric, fragments: list[int] | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vectors as float32, row ids, fragment ids) of the non-null, finite vectors."""
    frags = None if fragments is None else _fragments(ds, fragments)
    if frags is not None and not frags:  # an empty list would mean "every fragment"
        return np.zeros((0, dim), np.float32), np.zeros(0, np.uint64), np.zeros(0, np.uint32)
    tbl = ds.scanner(
        columns=[column], with_row_id=True, with_row_address=True, fragments=frags
    ).to_table()
    arr = tbl.column(column).combine_chunks()
    if isinstance(arr, pa.ExtensionArray):
        arr = arr.storage
    values = arr.values.slice(arr.offset * dim, len(arr) * dim)
    vecs = np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, dim)
    keep = np.isfinite(vecs).all(axis=1)
    if arr.null_count:
        keep &= arr.is_valid().to_numpy(zero_copy_only=False)
    rowids = tbl.column("_rowid").to_numpy()
    frag_of = (tbl.column("_rowaddr").to_numpy() >> np.uint64(32)).astype(np.uint32)
    if not keep.all():
        vecs, rowids, frag_of = vecs[keep], rowids[keep], frag_of[keep]
    vecs = np.ascontiguousarray(vecs)
    if not vecs.flags.writeable:
        vecs = vecs.copy()
    if metric == "cosine":
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        np.divide(vecs, norms, out=vecs, where=norms > 0)
    return vecs, np.ascontiguousarray(rowids, dtype=np.uint64), frag_of


class _RWLock:
    """Many concurrent searches, or one update. A search that finds an update under way does
    not wait: it goes to Lance instead (``try_read`` is False)."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False

    def try_read(self) -> bool:
        with self._cond:
            if self._writing:
                return False
            self._readers += 1
            return True

    def release_read(self) -> None:
        with self._cond:
            self._readers -= 1
            if self._readers == 0:
                self._cond.notify_all()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            while self._writing:
                self._cond.wait()
            self._writing = True  # refuse new readers from here on
            while self._readers:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


@dataclass(eq=False)
class _Entry:
    """One column's vectors at one dataset version, in a faiss index."""

    uri: str
    column: str
    metric: Metric
    dim: int
    version: int
    frags: dict[int, tuple[Any, ...]]
    index: Any
    kind: str  # "flat" (exact) or "hnsw"
    rowids: np.ndarray  # internal id -> _rowid
    frag_of: np.ndarray  # internal id -> fragment id
    alive: np.ndarray | None = None  # internal id -> not deleted; None: all alive
    build_seconds: float = 0.0
    builds: int = 1
    appends: int = 0
    lock: _RWLock = field(default_factory=_RWLock)
    filters: OrderedDict[str, np.ndarray] = field(default_factory=OrderedDict)
    filters_lock: threading.Lock = field(default_factory=threading.Lock)
    _sorted: tuple[np.ndarray, np.ndarray] | None = None
    _alive_bits: np.ndarray | None = None

    @property
    def n(self) -> int:
        return int(self.index.ntotal)

    @property
    def n_dead(self) -> int:
        return 0 if self.alive is None else int(self.n - self.alive.sum())

    @property
    def nbytes(self) -> int:
        per_row = self.dim * 4 + 8 + 4 + 1
        if self.kind == "hnsw":
            per_row += HNSW_M * 2 * 4 + HNSW_M * 4 // 2  # level-0 links + upper levels
        filt = sum(a.nbytes for a in self.filters.values())
        return self.n * per_row + filt

    def info(self) -> dict[str, Any]:
        return {
            "uri": self.uri,
            "column": self.column,
            "metric": self.metric,
            "version": self.version,
            "kind": self.kind,
            "rows": self.n - self.n_dead,
            "deleted_rows": self.n_dead,
            "bytes": self.nbytes,
            "build_seconds": round(self.build_seconds, 3),
            "builds": self.builds,
            "incremental_updates": self.appends,
        }

    # -- reading -------------------------------------------------------------------------------

    def vectors(self) -> np.ndarray:
        """All stored vectors, a zero-copy view of the faiss storage (valid until an add)."""
        faiss = _faiss()
        assert faiss is not None
        flat = faiss.downcast_index(self.index.storage if self.kind == "hnsw" else self.index)
        return faiss.rev_swig_ptr(flat.get_xb(), self.n * self.dim).reshape(self.n, self.dim)

    def live_mask(self) -> np.ndarray:
        return self.alive if self.alive is not None else np.ones(self.n, dtype=bool)

    def sorted_map(self) -> tuple[np.ndarray, np.ndarray]:
        """(sorted row ids, their internal ids), live rows only."""
        if self._sorted is None:
            ids = np.arange(self.n, dtype=np.int64)
            if self.alive is not None:
                ids = ids[self.alive]
            rids = self.rowids[ids]
            if len(rids) > 1 and not bool(np.all(rids[1:] > rids[:-1])):
                order = np.argsort(rids, kind="stable")
                rids, ids = rids[order], ids[order]
            self._sorted = (rids, ids)
        return self._sorted

    def internal_ids(self, rowids: np.ndarray) -> np.ndarray:
        srt, ids = self.sorted_map()
        if len(srt) == 0 or len(rowids) == 0:
            return np.zeros(0, dtype=np.int64)
        pos = np.searchsorted(srt, rowids)
        pos_c = np.minimum(pos, len(srt) - 1)
        hit = srt[pos_c] == rowids
        return np.sort(ids[pos_c[hit]])

    def selector(self, ids: np.ndarray | None) -> tuple[Any, np.ndarray] | None:
        """A faiss ID selector over ``ids`` (None: the live rows), and the bitmap it points
        to (the caller keeps it alive while searching)."""
        faiss = _faiss()
        assert faiss is not None
        if ids is None:
            if self.alive is None:
                return None
            if self._alive_bits is None:
                self._alive_bits = np.packbits(self.alive, bitorder="little")
            bits = self._alive_bits
        else:
            mask = np.zeros(self.n, dtype=bool)
            mask[ids] = True
            bits = np.packbits(mask, bitorder="little")
        return faiss.IDSelectorBitmap(self.n, faiss.swig_ptr(bits)), bits

    def exact(self, q: np.ndarray, k: int, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = self.vectors()[ids]
        if self.metric == "l2":
            diff = x - q
            d = np.einsum("ij,ij->i", diff, diff)
        else:
            d = -(x @ q)
        top = _top_k(d, k)
        return ids[top], d[top]

    def search(
        self, q: np.ndarray, k: int, ef: int, ids: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(row ids, distances as faiss gives them, inner products negated) best first, among
        ``ids`` (internal ids) or all live rows."""
        faiss = _faiss()
        assert faiss is not None
        live = self.n - self.n_dead if ids is None else len(ids)
        want = min(k, live)
        if want == 0:
            return np.zeros(0, np.uint64), np.zeros(0, np.float32)
        if ids is not None and (len(ids) <= EXACT_FILTER_MAX_ROWS or self.kind == "flat"):
            iid, d = self.exact(q, want, ids)
            return self.rowids[iid], d
        sel = self.selector(ids)
        if self.kind == "hnsw":
            frac = live / max(self.n, 1)
            # HNSW visits non-matching nodes too; widen the beam as the allowed share shrinks
            # so that it still meets k allowed ones.
            ef_eff = min(4096, max(ef, 2 * k, int(ef / max(frac, 1e-6) ** 0.5)))
            params = faiss.SearchParametersHNSW(efSearch=ef_eff)
        else:
            params = faiss.SearchParameters()
        if sel is not None:
            params.sel = sel[0]
        dist, lab = self.index.search(q.reshape(1, -1), want, params=params)
        dist, lab = dist[0], lab[0]
        ok = lab >= 0
        if int(ok.sum()) < want:  # the graph walk found too few allowed rows: do it exactly
            pool = ids if ids is not None else np.flatnonzero(self.live_mask())
            iid, d = self.exact(q, want, pool)
            return self.rowids[iid], d
        dist, lab = dist[ok], lab[ok]
        if self.metric != "l2":
            dist = -dist
        return self.rowids[lab], dist


def _top_k(d: np.ndarray, k: int) -> np.ndarray:
    part = np.argpartition(d, k - 1)[:k] if k < len(d) else np.arange(len(d))
    return part[np.argsort(d[part], kind="stable")]


def _new_index(kind: str, dim: int, metric: Metric) -> Any:
    faiss = _faiss()
    assert faiss is not None
    mt = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
    if kind == "flat":
        return faiss.IndexFlat(dim, mt)
    index = faiss.IndexHNSWFlat(dim, HNSW_M, mt)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    return index


def _build(ds: LanceDataset, uri: str, column: str, dim: int, metric: Metric) -> _Entry:
    t0 = time.perf_counter()
    frags = _fragment_signatures(ds)
    vecs, rowids, frag_of = _read_vectors(ds, column, dim, metric, None)
    kind = "flat" if len(vecs) <= CACHE_FLAT_MAX_ROWS else "hnsw"
    index = _new_index(kind, dim, metric)
    if len(vecs):
        index.add(vecs)
    return _Entry(
        uri=uri,
        column=column,
        metric=metric,
        dim=dim,
        version=ds.version,
        frags=frags,
        index=index,
        kind=kind,
        rowids=rowids,
        frag_of=frag_of,
        build_seconds=time.perf_counter() - t0,
    )


class _AnnCache:
    """Process-wide LRU (by bytes) of ``_Entry``, keyed by (uri, column, metric)."""

    def __init__(self) -> None:
        self.max_bytes = _default_cache_bytes()
        self.entries: OrderedDict[tuple[str, str, str], _Entry] = OrderedDict()
        self.building: dict[tuple[str, str, str], Future[Any]] = {}
        self.lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    # -- bookkeeping ---------------------------------------------------------------------------

    def _estimate(self, rows: int, dim: int) -> int:
        return rows * (dim * 4 + 13 + HNSW_M * 10)

    def _put(self, key: tuple[str, str, str], entry: _Entry) -> None:
        with self.lock:
            self.entries[key] = entry
            self.entries.move_to_end(key)
            total = sum(e.nbytes for e in self.entries.values())
            while total > self.max_bytes and len(self.entries) > 1:
                _, old = self.entries.popitem(last=False)
                total -= old.nbytes
            if entry.nbytes > self.max_bytes:
                self.entries.pop(key, None)

    def _background(self, key: tuple[str, str, str], job: Any) -> None:
        with self.lock:
            if key in self.building:
                return
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mx-ann")

            def run() -> None:
                try:
                    self._put(key, job())
                except Exception:  # queries keep going to Lance; the next one retries
                    _log.warning("building the ANN cache of %s failed", key, exc_info=True)
                finally:
                    with self.lock:
                        self.building.pop(key, None)

            self.building[key] = self._pool.submit(run)

    # -- the entry for a dataset version -------------------------------------------------------

    def get(
        self,
        ds: LanceDataset,
        uri: str,
        column: str,
        dim: int,
        metric: Metric,
        *,
        storage_options: StorageOptions,
        wait: bool,
    ) -> _Entry | None:
        """The entry for ``ds``'s version: built, or brought up to date from an older one.
        None when the work is too big to do inside a query (it then runs in the background)
        or the vectors do not fit in the cache."""
        key = (uri, column, metric)
        with self.lock:
            entry = self.entries.get(key)
            if entry is not None:
                self.entries.move_to_end(key)
        if entry is not None and entry.version == ds.version:
            return entry
        if entry is not None and entry.version > ds.version:
            return None  # an older version (time travel): Lance answers it
        with self.lock:
            pending = self.building.get(key)  # a background build or update is under way
        if pending is not None:
            if not wait:
                return None
            pending.result()
            return self.get(
                ds, uri, column, dim, metric, storage_options=storage_options, wait=wait
            )
        rows = ds.count_rows()
        if self._estimate(rows, dim) > self.max_bytes:
            return None
        if entry is not None:
            plan = _plan_update(entry, ds)  # to size the work; redone under the lock
            if plan is not None:
                old = entry

                def update() -> _Entry:
                    with old.lock.write():
                        if old.version < ds.version:
                            todo = _plan_update(old, ds)
                            if todo is None:
                                return _build(ds, uri, column, dim, metric)
                            _apply_update(old, ds, todo, metric)
                    return old

                if wait or plan.rows <= SYNC_ADD_MAX_ROWS:
                    done = update()
                    self._put(key, done)
                    return done if done.version == ds.version else None
                self._background(key, update)
                return None
        if wait or rows <= SYNC_BUILD_MAX_ROWS:
            fresh = _build(ds, uri, column, dim, metric)
            self._put(key, fresh)
            return fresh
        latest_uri, so = uri, dict(storage_options or {})

        def build() -> _Entry:
            latest = _open(latest_uri, so, None)
            return _build(latest, latest_uri, column, dim, metric)

        self._background(key, build)
        return None


@dataclass
class _Plan:
    """How to bring an entry from its version to a newer one without a rebuild."""

    added: list[int]
    removed: list[int]
    deleted_in: list[int]
    rows: int  # vectors to read and add


def _plan_update(entry: _Entry, ds: LanceDataset) -> _Plan | None:
    """None when only a rebuild will do: a fragment's data files changed (rewritten
    vectors), too many rows were deleted, or the exact index outgrew its size."""
    new = _fragment_signatures(ds)
    old = entry.frags
    both = old.keys() & new.keys()
    if any(old[f][:3] != new[f][:3] for f in both):
        return None
    added = sorted(new.keys() - old.keys())
    removed = sorted(old.keys() - new.keys())
    deleted_in = sorted(f for f in both if old[f][3] != new[f][3])
    rows = sum(new[f][0] for f in added)
    dead_now = entry.n_dead + (int(np.isin(entry.frag_of, removed).sum()) if removed else 0)
    if entry.n and dead_now / (entry.n + rows) > REBUILD_DEAD_FRACTION:
        return None
    if entry.kind == "flat" and entry.n + rows > 2 * CACHE_FLAT_MAX_ROWS:
        return None
    return _Plan(added, removed, deleted_in, rows)


def _apply_update(entry: _Entry, ds: LanceDataset, plan: _Plan, metric: Metric) -> None:
    alive = entry.alive.copy() if entry.alive is not None else np.ones(entry.n, dtype=bool)
    if plan.removed:
        alive &= ~np.isin(entry.frag_of, plan.removed)
    if plan.deleted_in:
        live = (
            ds.scanner(
                columns=[],
                with_row_id=True,
                fragments=_fragments(ds, plan.deleted_in),
            )
            .to_table()
            .column("_rowid")
            .to_numpy()
        )
        touched = np.isin(entry.frag_of, plan.deleted_in)
        alive &= ~(touched & ~np.isin(entry.rowids, live))
    if plan.added:
        vecs, rowids, frag_of = _read_vectors(ds, entry.column, entry.dim, metric, plan.added)
        if len(vecs):
            entry.index.add(vecs)
            entry.rowids = np.concatenate([entry.rowids, rowids])
            entry.frag_of = np.concatenate([entry.frag_of, frag_of])
            alive = np.concatenate([alive, np.ones(len(vecs), dtype=bool)])
    entry.alive = None if alive.all() else alive
    entry.version = ds.version
    entry.frags = _fragment_signatures(ds)
    entry.appends += 1
    entry.filters.clear()
    entry._sorted = None
    entry._alive_bits = None


_CACHE = _AnnCache()


def configure_cache(*, max_bytes: int | None = None) -> dict[str, Any]:
    """Set the ANN cache's memory budget (default: a quarter of RAM, at most 8 GiB, or
    ``$MATRIXOS_SEARCH_CACHE_BYTES``); entries beyond it are evicted, least recently used first.

    Returns:
        ``cache_info()``.
    """
    if max_bytes is not None:
        if max_bytes < 0:
            raise ConfigError("max_bytes must be >= 0")
        _CACHE.max_bytes = int(max_bytes)
        with _CACHE.lock:
            total = sum(e.nbytes for e in _CACHE.entries.values())
            while _CACHE.entries and total > _CACHE.max_bytes:
                _, old = _CACHE.entries.popitem(last=False)
                total -= old.nbytes
    return cache_info()


def cache_info() -> dict[str, Any]:
    """What the ANN cache holds: ``{"max_bytes", "bytes", "entries": [...], "building": [...]}``
    (each entry: uri, column, metric, version, kind, rows, deleted_rows, bytes, build_seconds,
    builds, incremental_updates)."""
    with _CACHE.lock:
        entries = [e.info() for e in _CACHE.entries.values()]
        building = [list(k) for k in _CACHE.building]
    return {
        "max_bytes": _CACHE.max_bytes,
        "bytes": sum(e["bytes"] for e in entries),
        "entries": entries,
        "building": building,
    }


def clear_cache(uri: str | None = None) -> None:
    """Drop the ANN cache's entries (of one dataset, or all)."""
    with _CACHE.lock:
        for key in list(_CACHE.entries):
            if uri is None or key[0] == _uri(uri):
                del _CACHE.entries[key]


def warm(
    uri: str,
    column: str | None = None,
    *,
    metric: str | None = None,
    storage_options: StorageOptions = None,
) -> dict[str, Any]:
    """Build (or bring up to date) the in-memory ANN index of a column now, instead of on the
    first query.

    Returns:
        the cache entry's description (see ``cache_info``).

    Raises:
        ConfigError when faiss (``matrixos[search]``) is not installed or the vectors do not
        fit in the cache budget; as ``vector_search`` otherwise.

    Example:
        >>> import tempfile, lance, numpy as np, pyarrow as pa
        >>> vecs = np.random.default_rng(0).random((300, 8), dtype=np.float32)
        >>> uri = tempfile.mkdtemp() + "/docs.lance"
        >>> _ = lance.write_dataset(pa.table({
        ...     "id": range(300), "lang": ["en", "de"] * 150,
        ...     "text": ["vacuum freeze" if i % 3 == 0 else "optimize" for i in range(300)],
        ...     "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel()), 8),
        ... }), uri)
        >>> warm(uri, "embedding")["kind"]  # 300 rows: exact; "hnsw" for large columns
        'flat'
    """
    uri = _uri(uri)
    if _faiss() is None:
        raise ConfigError(
            "the in-memory ANN cache needs faiss", hint="pip install 'matrixos[search]'"
        )
    ds = _open(uri, storage_options, None)
    col, dim = _vector_column(ds, column, uri)
    m = _metric(metric) if metric else _column_metric(ds, col)
    try:
        entry = _CACHE.get(ds, uri, col, dim, m, storage_options=storage_options, wait=True)
    except MatrixOSError:
        raise
    except Exception as e:
        raise _wrap(e, "building the ANN cache", uri=uri) from e
    if entry is None:
        raise ConfigError(
            f"the vectors of {col!r} do not fit in the ANN cache ({_CACHE.max_bytes:,} bytes)",
            hint="raise it with configure_cache(max_bytes=...) or MATRIXOS_SEARCH_CACHE_BYTES",
        )
    return entry.info()


# --- Vector search -----------------------------------------------------------------------------


@dataclass
class _VectorQuery:
    column: str
    q: np.ndarray
    k: int
    metric: Metric
    filter: str | None
    ef: int
    nprobes: int | None
    refine: int | None
    cache: bool | None


def _prepare_vector(
    ds: LanceDataset,
    uri: str,
    vector: Any,
    column: str | None,
    k: int,
    metric: str | None,
    filter: str | None,
    ef: int | None,
    nprobes: int | None,
    refine: int | None,
    cache: bool | None,
) -> _VectorQuery:
    col, dim = _vector_column(ds, column, uri)
    q = _query_vector(vector, dim, col)
    m = _metric(metric) if metric else _column_metric(ds, col)
    if filter is not None and not str(filter).strip():
        filter = None
    return _VectorQuery(
        column=col,
        q=q,
        k=k,
        metric=m,
        filter=filter,
        ef=max(ef or HNSW_EF_SEARCH, 2 * k),
        nprobes=nprobes,
        refine=refine,
        cache=cache,
    )


def _cached_hits(
    ds: LanceDataset, uri: str, vq: _VectorQuery, storage_options: StorageOptions
) -> tuple[np.ndarray, np.ndarray] | None:
    """(row ids, Lance-convention distances) from the ANN cache, or None to ask Lance."""
    if vq.cache is False or _faiss() is None:
        return None
    dim = vq.q.shape[0]
    try:
        entry = _CACHE.get(
            ds, uri, vq.column, dim, vq.metric, storage_options=storage_options, wait=False
        )
    except MatrixOSError:
        raise
    except Exception as e:
        raise _wrap(e, "updating the ANN cache", uri=uri) from e
    if entry is None:
        return None
    q = vq.q
    if vq.metric == "cosine":
        norm = float(np.linalg.norm(q))
        q = q / norm if norm > 0 else q
    if not entry.lock.try_read():  # being updated: Lance answers meanwhile
        return None
    try:
        if entry.version != ds.version:  # moved on by a concurrent query: let Lance answer
            return None
        ids = None
        if vq.filter is not None:
            ids = _filter_ids(entry, ds, vq.filter, uri)
        rowids, d = entry.search(q, vq.k, vq.ef, ids)
    finally:
        entry.lock.release_read()
    # faiss: squared L2, or the negated inner product; Lance: 1 - cosine, 1 - dot.
    dist = d if vq.metric == "l2" else 1.0 + d
    return rowids, dist.astype(np.float32)


def _filter_ids(entry: _Entry, ds: LanceDataset, predicate: str, uri: str) -> np.ndarray:
    with entry.filters_lock:
        hit = entry.filters.get(predicate)
        if hit is not None:
            entry.filters.move_to_end(predicate)
            return hit
    try:
        rowids = (
            ds.to_table(columns=[], filter=predicate, with_row_id=True).column("_rowid").to_numpy()
        )
    except Exception as e:
        raise _wrap(e, "evaluating the filter", uri=uri, ds=ds, predicate=predicate) from e
    ids = entry.internal_ids(rowids)
    with entry.filters_lock:
        entry.filters[predicate] = ids
        while len(entry.filters) > FILTERS_PER_ENTRY:
            entry.filters.popitem(last=False)
    return ids


def _lance_vector(ds: LanceDataset, uri: str, vq: _VectorQuery, columns: list[str]) -> pa.Table:
    """Lance's own search: the column's index when its metric matches (plus an exhaustive scan
    of rows appended since it was built), else an exact scan. ``_rowid`` included."""
    nearest: dict[str, Any] = {"column": vq.column, "q": vq.q, "k": vq.k, "metric": vq.metric}
    idx = _vector_index(ds, vq.column)
    if idx is not None:
        kind = str(idx.index_type).upper()
        if vq.nprobes:
            nearest["minimum_nprobes"] = vq.nprobes
        # Quantized distances are approximate (SQ's can be off by 2x): re-rank the candidates
        # with the stored vectors, which also makes ``_distance`` exact. PQ needs a deeper pool.
        auto = 10 if "PQ" in kind else 1 if "SQ" in kind else None
        refine = vq.refine if vq.refine is not None else auto
        if refine:
            nearest["refine_factor"] = refine
        if "HNSW" in kind:
            nearest["ef"] = vq.ef
    try:
        return ds.to_table(
            columns=[*columns, "_distance"],
            nearest=nearest,
            filter=vq.filter,
            prefilter=True,
            with_row_id=True,
            disable_scoring_autoprojection=True,
        )
    except Exception as e:
        raise _wrap(e, "vector search", uri=uri, ds=ds, predicate=vq.filter) from e


def _vector_hits(
    ds: LanceDataset, uri: str, vq: _VectorQuery, storage_options: StorageOptions
) -> tuple[np.ndarray, np.ndarray]:
    hits = _cached_hits(ds, uri, vq, storage_options)
    if hits is not None:
        return hits
    t = _lance_vector(ds, uri, vq, [])
    return t.column("_rowid").to_numpy(), t.column("_distance").to_numpy().astype(np.float32)


def vector_search(
    uri: str,
    vector: Any,
    *,
    column: str | None = None,
    k: int = 10,
    filter: str | None = None,
    metric: str | None = None,
    columns: Sequence[str] | None = None,
    storage_options: StorageOptions = None,
    version: int | None = None,
    refine: int | None = None,
    nprobes: int | None = None,
    ef: int | None = None,
    cache: bool | None = None,
    with_row_id: bool = False,
) -> pa.Table:
    """The ``k`` rows whose vectors are nearest to ``vector``, best first.

    Rows appended after the index was built are searched too; ``filter`` is applied before the
    top-k (so ``k`` rows come back whenever ``k`` rows match).

    Args:
        uri: the Lance dataset.
        vector: the query (a sequence or array of the column's dimension).
        column: the vector column; default: the dataset's only one.
        k: how many rows.
        filter: a Lance SQL predicate, e.g. ``"lang = 'en' AND year > 2020"``.
        metric: ``"cosine"``, ``"l2"`` or ``"dot"``; default: the index's (else the one given
            to ``create_vector_index``, else cosine). Another metric than the index's is
            answered exactly.
        columns: the columns to return (default: all).
        storage_options: lance storage options.
        version: search this dataset version (default: the latest).
        refine: Lance's ``refine_factor`` (re-rank ``refine x k`` candidates with the full
            vectors); default 10 for IVF_PQ, 1 (exact distances) for IVF_HNSW_SQ.
        nprobes: IVF partitions Lance probes (default: Lance's).
        ef: HNSW beam width (default 64, at least ``2k``), for the cache and Lance.
        cache: use the in-memory ANN cache (default: when faiss is installed). The first
            query of a dataset builds it (in the background past 20k rows); ``warm`` builds it
            ahead.
        with_row_id: also return ``_rowid``.

    Returns:
        The rows, plus ``_distance`` (Lance's: squared L2, ``1 - cosine``, ``1 - dot``) and
        ``_score`` (cosine similarity, the dot product, or ``-distance`` for L2).

    Raises:
        TableNotFound, SQLError (bad filter or column), SchemaMismatch (wrong dimension),
        ConfigError, MatrixOSError.

    Example:
        >>> import tempfile, lance, numpy as np, pyarrow as pa
        >>> vecs = np.random.default_rng(0).random((300, 8), dtype=np.float32)
        >>> uri = tempfile.mkdtemp() + "/docs.lance"
        >>> _ = lance.write_dataset(pa.table({
        ...     "id": range(300), "lang": ["en", "de"] * 150,
        ...     "text": ["vacuum freeze" if i % 3 == 0 else "optimize" for i in range(300)],
        ...     "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel()), 8),
        ... }), uri)
        >>> vector_search(uri, vecs[7], k=3, columns=["id"])["id"].to_pylist()[0]
        7
    """
    uri = _uri(uri)
    k = _check_k(k)
    ds = _open(uri, storage_options, version)
    vq = _prepare_vector(ds, uri, vector, column, k, metric, filter, ef, nprobes, refine, cache)
    cols = _projection(ds, columns, uri)
    hits = _cached_hits(ds, uri, vq, storage_options)
    if hits is not None:
        rowids, dist = hits
        if len(rowids) == 0:
            return _empty(ds, cols, ["_distance", "_score"], with_row_id)
        tbl = _take(ds, rowids, cols, uri)
        if tbl.num_rows != len(rowids):  # a row vanished (cannot at a pinned version)
            keep = np.isin(rowids, tbl.column("_rowid").to_numpy())
            dist = dist[keep]
    else:
        tbl = _lance_vector(ds, uri, vq, cols)
        dist = tbl.column("_distance").to_numpy().astype(np.float32)
        order = np.argsort(dist, kind="stable")
        if not np.array_equal(order, np.arange(len(order))):
            tbl, dist = tbl.take(pa.array(order)), dist[order]
    extra = {
        "_distance": pa.array(dist, type=pa.float32()),
        "_score": pa.array(_score_from_distance(dist, vq.metric), type=pa.float32()),
    }
    return _finish(tbl, cols, extra, with_row_id)


# --- Text search -------------------------------------------------------------------------------


def _lance_text(
    ds: LanceDataset,
    uri: str,
    column: str,
    query: str,
    k: int,
    filter: str | None,
    columns: list[str],
) -> pa.Table:
    """BM25 through Lance: the inverted index plus a flat pass over rows appended after it
    was built (``fast_search=False``); ``_score`` and ``_rowid`` included, best first."""
    try:
        t = ds.to_table(
            columns=[*columns, "_score"],
            full_text_query={"columns": [column], "query": query},
            filter=filter,
            prefilter=True,
            limit=k,
            with_row_id=True,
            disable_scoring_autoprojection=True,
        )
    except Exception as e:
        raise _wrap(e, "text search", uri=uri, ds=ds, predicate=filter) from e
    score = t.column("_score").to_numpy()
    order = np.lexsort((t.column("_rowid").to_numpy(), -score))
    if not np.array_equal(order, np.arange(len(order))):
        t = t.take(pa.array(order))
    return t.slice(0, k)


def text_search(
    uri: str,
    query: str,
    *,
    column: str | None = None,
    k: int = 10,
    filter: str | None = None,
    columns: Sequence[str] | None = None,
    storage_options: StorageOptions = None,
    version: int | None = None,
    with_row_id: bool = False,
) -> pa.Table:
    """The ``k`` rows that best match ``query`` under BM25, best first.

    Uses the column's inverted index (``create_text_index``) and scans rows appended since it
    was built; without an index the whole column is scanned. ``filter`` applies before top-k.

    Args:
        uri: the Lance dataset.
        query: words to look for (any of them; rarer words weigh more).
        column: the text column; default: the one with a text index, or the only string column.
        k, filter, columns, storage_options, version, with_row_id: as in ``vector_search``.

    Returns:
        The rows plus ``_score`` (BM25).

    Raises:
        TableNotFound, SQLError (bad filter or column), ConfigError, MatrixOSError.

    Example:
        >>> import tempfile, lance, numpy as np, pyarrow as pa
        >>> vecs = np.random.default_rng(0).random((300, 8), dtype=np.float32)
        >>> uri = tempfile.mkdtemp() + "/docs.lance"
        >>> _ = lance.write_dataset(pa.table({
        ...     "id": range(300), "lang": ["en", "de"] * 150,
        ...     "text": ["vacuum freeze" if i % 3 == 0 else "optimize" for i in range(300)],
        ...     "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel()), 8),
        ... }), uri)
        >>> _ = create_text_index(uri, "text")
        >>> text_search(uri, "freeze", k=2, columns=["text"])["text"].to_pylist()
        ['vacuum freeze', 'vacuum freeze']
    """
    uri = _uri(uri)
    k = _check_k(k)
    if not isinstance(query, str):
        raise ConfigError(f"text_search needs a string, not {type(query).__name__}")
    ds = _open(uri, storage_options, version)
    col = _text_column(ds, column, uri)
    cols = _projection(ds, columns, uri)
    if filter is not None and not str(filter).strip():
        filter = None
    if not query.strip():
        return _empty(ds, cols, ["_score"], with_row_id)
    t = _lance_text(ds, uri, col, query, k, filter, cols)
    score = pa.array(t.column("_score").to_numpy().astype(np.float32), type=pa.float32())
    return _finish(t, cols, {"_score": score}, with_row_id)


# --- Hybrid search -----------------------------------------------------------------------------


def hybrid_search(
    uri: str,
    text: str | None,
    vector: Any,
    *,
    k: int = 10,
    filter: str | None = None,
    rrf_k: int = 60,
    text_column: str | None = None,
    vector_column: str | None = None,
    metric: str | None = None,
    columns: Sequence[str] | None = None,
    candidates: int | None = None,
    storage_options: StorageOptions = None,
    version: int | None = None,
    cache: bool | None = None,
    with_row_id: bool = False,
) -> pa.Table:
    """BM25 and vector search fused by reciprocal rank fusion, best first.

    Each list contributes ``1 / (rrf_k + rank)`` (rank from 1) per row; both lists are read at
    one dataset version, ``candidates`` deep (default ``max(3k, 50)``), with ``filter`` applied
    before each top-k. ``text`` or ``vector`` may be None to use one list only.

    Args:
        uri: the Lance dataset.
        text: the words for BM25.
        vector: the query vector (embed ``text`` with the column's model).
        k: how many rows.
        filter: a Lance SQL predicate applied to both lists.
        rrf_k: the RRF constant (60 is the usual choice: damps the very top ranks).
        text_column, vector_column: default as in ``text_search`` / ``vector_search``.
        metric, cache: as in ``vector_search``.
        columns, storage_options, version, with_row_id: as in ``vector_search``.
        candidates: how many rows each list contributes.

    Returns:
        The rows plus ``_score`` (the RRF score).

    Raises:
        As ``vector_search`` and ``text_search``.

    Example:
        >>> import tempfile, lance, numpy as np, pyarrow as pa
        >>> vecs = np.random.default_rng(0).random((300, 8), dtype=np.float32)
        >>> uri = tempfile.mkdtemp() + "/docs.lance"
        >>> _ = lance.write_dataset(pa.table({
        ...     "id": range(300), "lang": ["en", "de"] * 150,
        ...     "text": ["vacuum freeze" if i % 3 == 0 else "optimize" for i in range(300)],
        ...     "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel()), 8),
        ... }), uri)
        >>> _ = create_text_index(uri, "text")
        >>> hybrid_search(uri, "vacuum", vecs[9], k=1, columns=["id", "text"]).to_pylist()
        [{'id': 9, 'text': 'vacuum freeze', '_score': ...}]
    """
    uri = _uri(uri)
    k = _check_k(k)
    if rrf_k < 0:
        raise ConfigError(f"rrf_k must be >= 0, not {rrf_k}")
    if text is None and vector is None:
        raise ConfigError("hybrid_search needs text, a vector, or both")
    ds = _open(uri, storage_options, version)
    cols = _projection(ds, columns, uri)
    n_c = max(k, candidates or max(3 * k, 50))
    if filter is not None and not str(filter).strip():
        filter = None
    lists: list[np.ndarray] = []
    if vector is not None:
        vq = _prepare_vector(
            ds, uri, vector, vector_column, n_c, metric, filter, None, None, None, cache
        )
        lists.append(_vector_hits(ds, uri, vq, storage_options)[0])
    if text is not None and text.strip():
        tcol = _text_column(ds, text_column, uri)
        t = _lance_text(ds, uri, tcol, text, n_c, filter, [])
        lists.append(t.column("_rowid").to_numpy())
    scores: dict[int, float] = {}
    first: dict[int, tuple[int, int]] = {}  # tie-break: best rank in any list, then list order
    for li, rowids in enumerate(lists):
        for rank, rid in enumerate(rowids.tolist(), start=1):
            scores[rid] = scores.get(rid, 0.0) + 1.0 / (rrf_k + rank)
            first[rid] = min(first.get(rid, (rank, li)), (rank, li))
    best = sorted(scores, key=lambda r: (-scores[r], first[r], r))[:k]
    if not best:
        return _empty(ds, cols, ["_score"], with_row_id)
    rowids = np.array(best, dtype=np.uint64)
    tbl = _take(ds, rowids, cols, uri)
    got = tbl.column("_rowid").to_numpy()
    rrf = pa.array([scores[int(r)] for r in got], type=pa.float32())
    return _finish(tbl, cols, {"_score": rrf}, with_row_id)
