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

This package knows nothing about the catalog: ``Lakehouse.search`` and the SQL table functions
resolve a table to its URI and storage options and call in here. Datasets are opened through
``matrixos.storage.lance_datasets`` (which keeps their handles).

The map of the package:

- ``indexes``: building the durable indexes (``create_vector_index``, ``create_text_index``),
  what they cover (``index_status``), folding appended rows in (``optimize_indexes``);
- ``ann``: the in-memory ANN cache: which entry serves a query, when to update it in the query
  or in the background, the byte budget (``configure_cache``, ``cache_info``, ``clear_cache``,
  ``warm``);
- ``ann_index``: one entry of that cache: a column's vectors at one version in a faiss index
  (exact or HNSW) and the dataset's columns kept beside them (the rows a query returns come
  from memory), its read/write lock, filtered search, incremental updates, and the tuning
  constants;
- ``queries``: ``vector_search``, ``text_search``, ``hybrid_search`` (the cache or Lance for
  vectors, Lance's BM25 for text, reciprocal rank fusion for both);
- ``_common``: what they all ask of a dataset: the column to search, its metric and index, and
  the error for a failed Lance call.

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

from matrixos.engine.search.ann import cache_info as cache_info
from matrixos.engine.search.ann import clear_cache as clear_cache
from matrixos.engine.search.ann import configure_cache as configure_cache
from matrixos.engine.search.ann import prewarm as prewarm
from matrixos.engine.search.ann import warm as warm

# The HNSW parameters, for reports (benchmarks/search.py); set them on ``ann_index``, which
# reads them.
from matrixos.engine.search.ann_index import HNSW_EF_CONSTRUCTION as HNSW_EF_CONSTRUCTION
from matrixos.engine.search.ann_index import HNSW_EF_SEARCH as HNSW_EF_SEARCH
from matrixos.engine.search.ann_index import HNSW_M as HNSW_M
from matrixos.engine.search.indexes import create_text_index as create_text_index
from matrixos.engine.search.indexes import create_vector_index as create_vector_index
from matrixos.engine.search.indexes import index_status as index_status
from matrixos.engine.search.indexes import optimize_indexes as optimize_indexes
from matrixos.engine.search.queries import hybrid_search as hybrid_search
from matrixos.engine.search.queries import text_search as text_search
from matrixos.engine.search.queries import vector_search as vector_search

__all__ = [
    "cache_info",
    "clear_cache",
    "configure_cache",
    "create_text_index",
    "create_vector_index",
    "hybrid_search",
    "index_status",
    "optimize_indexes",
    "prewarm",
    "text_search",
    "vector_search",
    "warm",
]
