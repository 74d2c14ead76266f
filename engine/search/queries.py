"""Vector, full-text and hybrid queries over one Lance dataset, given by URI.

Every query returns a ``pyarrow.Table`` of the dataset's columns (or ``columns=``) plus
``_score`` (higher is better) and, for vectors, ``_distance`` (Lance's convention: squared L2,
``1 - cosine``, ``1 - dot``), best first. Filters are Lance SQL predicates applied *before* the
top-k, so ``k`` rows come back whenever ``k`` rows match. Vector queries go to the in-memory
ANN cache when it can answer (``ann``), else to Lance's index search.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from matrixos.engine.search import ann, ann_index
from matrixos.engine.search._common import (
    Metric,
    StorageOptions,
    as_uri,
    column_metric,
    parse_metric,
    pick_text_column,
    pick_vector_column,
    projection,
    vector_index,
    wrap,
)
from matrixos.errors import ConfigError, SchemaMismatch
from matrixos.storage.lance_datasets import open_dataset

if TYPE_CHECKING:
    from lance.dataset import LanceDataset

__all__ = ["hybrid_search", "text_search", "vector_search"]


# --- Shared helpers ----------------------------------------------------------------------------


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


def _take(
    ds: LanceDataset, rowids: np.ndarray, columns: list[str], uri: str, options: StorageOptions
) -> pa.Table:
    """Rows by ``_rowid`` in the given order (rows deleted meanwhile are left out)."""
    want = [*columns, "_rowid"]
    try:
        got = ds._take_rows(rowids.tolist(), columns=want)
    except Exception as e:
        raise wrap(e, "reading the result rows", uri=uri, options=options) from e
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
    col, dim = pick_vector_column(ds, column, uri)
    q = _query_vector(vector, dim, col)
    m = parse_metric(metric) if metric else column_metric(ds, col)
    if filter is not None and not str(filter).strip():
        filter = None
    return _VectorQuery(
        column=col,
        q=q,
        k=k,
        metric=m,
        filter=filter,
        ef=max(ef or ann_index.HNSW_EF_SEARCH, 2 * k),
        nprobes=nprobes,
        refine=refine,
        cache=cache,
    )


def _cached_hits(
    ds: LanceDataset,
    uri: str,
    vq: _VectorQuery,
    storage_options: StorageOptions,
    columns: list[str] | None = None,
) -> ann.Hits | None:
    """The hits from the ANN cache (with ``columns`` when it keeps them), or None to ask
    Lance."""
    if vq.cache is False:
        return None
    return ann.cached_search(
        ds,
        uri,
        vq.column,
        vq.q,
        k=vq.k,
        metric=vq.metric,
        ef=vq.ef,
        filter=vq.filter,
        storage_options=storage_options,
        columns=columns,
    )


def _lance_vector(
    ds: LanceDataset, uri: str, vq: _VectorQuery, columns: list[str], options: StorageOptions
) -> pa.Table:
    """Lance's own search: the column's index when its metric matches (plus an exhaustive scan
    of rows appended since it was built), else an exact scan. ``_rowid`` included."""
    nearest: dict[str, Any] = {"column": vq.column, "q": vq.q, "k": vq.k, "metric": vq.metric}
    idx = vector_index(ds, vq.column)
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
        raise wrap(e, "vector search", uri=uri, ds=ds, predicate=vq.filter, options=options) from e


def _vector_hits(
    ds: LanceDataset, uri: str, vq: _VectorQuery, storage_options: StorageOptions
) -> tuple[np.ndarray, np.ndarray]:
    hits = _cached_hits(ds, uri, vq, storage_options)
    if hits is not None:
        return hits.rowids, hits.distances
    t = _lance_vector(ds, uri, vq, [], storage_options)
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
    uri = as_uri(uri)
    k = _check_k(k)
    ds = open_dataset(uri, storage_options, version)
    vq = _prepare_vector(ds, uri, vector, column, k, metric, filter, ef, nprobes, refine, cache)
    cols = projection(ds, columns, uri)
    hits = _cached_hits(ds, uri, vq, storage_options, cols)
    if hits is not None:
        rowids, dist = hits.rowids, hits.distances
        if len(rowids) == 0:
            return _empty(ds, cols, ["_distance", "_score"], with_row_id)
        if hits.rows is not None:  # the rows kept beside the vectors
            tbl = hits.rows.append_column("_rowid", pa.array(rowids, type=pa.uint64()))
        else:
            tbl = _take(ds, rowids, cols, uri, storage_options)
        if tbl.num_rows != len(rowids):  # a row vanished (cannot at a pinned version)
            keep = np.isin(rowids, tbl.column("_rowid").to_numpy())
            dist = dist[keep]
    else:
        tbl = _lance_vector(ds, uri, vq, cols, storage_options)
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
    options: StorageOptions,
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
        raise wrap(e, "text search", uri=uri, ds=ds, predicate=filter, options=options) from e
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
        >>> from matrixos.engine.search import create_text_index
        >>> _ = create_text_index(uri, "text")
        >>> text_search(uri, "freeze", k=2, columns=["text"])["text"].to_pylist()
        ['vacuum freeze', 'vacuum freeze']
    """
    uri = as_uri(uri)
    k = _check_k(k)
    if not isinstance(query, str):
        raise ConfigError(f"text_search needs a string, not {type(query).__name__}")
    ds = open_dataset(uri, storage_options, version)
    col = pick_text_column(ds, column, uri)
    cols = projection(ds, columns, uri)
    if filter is not None and not str(filter).strip():
        filter = None
    if not query.strip():
        return _empty(ds, cols, ["_score"], with_row_id)
    t = _lance_text(ds, uri, col, query, k, filter, cols, storage_options)
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
        >>> from matrixos.engine.search import create_text_index
        >>> _ = create_text_index(uri, "text")
        >>> hybrid_search(uri, "vacuum", vecs[9], k=1, columns=["id", "text"]).to_pylist()
        [{'id': 9, 'text': 'vacuum freeze', '_score': ...}]
    """
    uri = as_uri(uri)
    k = _check_k(k)
    if rrf_k < 0:
        raise ConfigError(f"rrf_k must be >= 0, not {rrf_k}")
    if text is None and vector is None:
        raise ConfigError("hybrid_search needs text, a vector, or both")
    ds = open_dataset(uri, storage_options, version)
    cols = projection(ds, columns, uri)
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
        tcol = pick_text_column(ds, text_column, uri)
        t = _lance_text(ds, uri, tcol, text, n_c, filter, [], storage_options)
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
    tbl = _take(ds, rowids, cols, uri, storage_options)
    got = tbl.column("_rowid").to_numpy()
    rrf = pa.array([scores[int(r)] for r in got], type=pa.float32())
    return _finish(tbl, cols, {"_score": rrf}, with_row_id)
