"""The durable search indexes of a Lance dataset: building them, reporting what they cover,
and folding appended rows into them.

The indexes are Lance's own (IVF_PQ / IVF_HNSW_SQ / IVF_FLAT for vectors, the BM25
``INVERTED`` index for text), so any lance or LanceDB reader can use them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from matrixos.engine.search._common import (
    CONFIG_METRIC,
    StorageOptions,
    as_uri,
    dataset_config,
    list_indexes,
    parse_metric,
    pick_text_column,
    pick_vector_column,
    vector_index,
    wrap,
)
from matrixos.errors import ConfigError
from matrixos.storage.lance_datasets import open_dataset, open_for_write

__all__ = ["create_text_index", "create_vector_index", "index_status", "optimize_indexes"]

# --- Index choice for ``index_type="auto"`` -------------------------------------------------
# Below ~20k rows an exact scan reads < 30 MB of 384-d float32 and takes a few ms; an IVF index
# would not be faster and k-means on so few rows gives poor partitions, so no ANN index is built.
AUTO_FLAT_MAX_ROWS = 20_000
# IVF_HNSW_SQ keeps 1 byte per dimension plus the graph; recall@10 0.96 (0.98 with the exact
# re-rank that vector_search asks for) on 50k MiniLM vectors (benchmarks/search.py). Past ~5M
# rows its size (~2 GB at 384-d) matters more than the last points of recall, and IVF_PQ
# (dim/8 bytes per vector, exact re-ranking of refine_factor x k candidates) is the usual choice.
AUTO_PQ_MIN_ROWS = 5_000_000


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
    uri = as_uri(uri)
    m = parse_metric(metric)
    ds = open_for_write(uri, storage_options)
    col, dim = pick_vector_column(ds, column, uri)
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
    existing = vector_index(ds, col)
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
        if dataset_config(ds).get(CONFIG_METRIC + col) != m:
            ds.update_config({CONFIG_METRIC + col: m})
    except Exception as e:
        what = f"building a {kind} index on {col!r}"
        raise wrap(e, what, uri=uri, options=storage_options) from e
    latest = open_dataset(uri, storage_options, None)
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
    uri = as_uri(uri)
    ds = open_for_write(uri, storage_options)
    col = pick_text_column(ds, column, uri)
    name = f"{col}_idx"
    if not replace and any(d.name == name for d in list_indexes(ds)):
        raise ConfigError(
            f"column {col!r} of {uri!r} already has a text index", hint="pass replace=True"
        )
    try:
        ds.create_scalar_index(col, "INVERTED", name=name, replace=True, **params)
    except Exception as e:
        what = f"building the text index on {col!r}"
        raise wrap(e, what, uri=uri, options=storage_options) from e
    latest = open_dataset(uri, storage_options, None)
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
    uri = as_uri(uri)
    ds = open_dataset(uri, storage_options, None)
    try:
        rows = {f.metadata.id: f.metadata.num_rows for f in ds.get_fragments()}
        listed = ds.list_indices()
        described = {d.name: d for d in list_indexes(ds)}
    except Exception as e:
        raise wrap(e, "reading the indexes", uri=uri, options=storage_options) from e
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
            "metric": parse_metric(metric) if metric else None,
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
    uri = as_uri(uri)
    ds = open_for_write(uri, storage_options)
    kw: dict[str, Any] = {"retrain": retrain}
    if index_names is not None:
        kw["index_names"] = list(index_names)
    try:
        ds.optimize.optimize_indices(**kw)
    except Exception as e:
        raise wrap(e, "optimizing the indexes", uri=uri, options=storage_options) from e
    return index_status(uri, storage_options=storage_options)
