"""The in-memory ANN cache: per (dataset, column, metric), a faiss index of the column's vectors
at one dataset version, beside Lance's durable index.

It answers vector queries in about a millisecond and follows the dataset's versions: appended
rows are added to it, deleted rows masked, and a rewrite rebuilds it. Work too large to do
inside a query (a first HNSW build, a large append) runs on a background thread while Lance
answers meanwhile; ``warm`` does it in the foreground. The cache is an LRU bounded by bytes
(``configure_cache``); without faiss (the optional ``matrixos[search]`` extra) it stays empty.

The tuning constants below and in ``ann_index`` are read at call time: tests and benchmarks
patch them there.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import pyarrow as pa

from matrixos._lru import LRU
from matrixos.engine.search import ann_index
from matrixos.engine.search._common import (
    Metric,
    StorageOptions,
    as_uri,
    column_metric,
    parse_metric,
    pick_vector_column,
    wrap,
)
from matrixos.engine.search.ann_index import (
    Entry,
    apply_update,
    build_entry,
    load_faiss,
    plan_update,
)
from matrixos.errors import ConfigError, MatrixOSError
from matrixos.storage.lance_datasets import open_dataset

if TYPE_CHECKING:
    from lance.dataset import LanceDataset

__all__ = ["cache_info", "clear_cache", "configure_cache", "prewarm", "warm"]

# Work done inside a query is kept well under a second: a first build only while the cache
# would be exact (copying vectors is instant; an HNSW graph of 50k 384-d rows takes ~7 s on 2
# cores), and adding appended rows to a graph up to 2k rows (~0.3 s). Larger work runs on a
# background thread while queries go to Lance's index; ``warm`` does it all in the foreground.
SYNC_BUILD_MAX_ROWS = ann_index.CACHE_FLAT_MAX_ROWS
SYNC_ADD_MAX_ROWS = 2_000

_log = logging.getLogger(__name__)


def _default_cache_bytes() -> int:
    env = os.environ.get("MATRIXOS_SEARCH_CACHE_BYTES")
    if env:
        return int(env)
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        ram = 8 << 30
    return int(min(ram // 4, 8 << 30))


class AnnCache:
    """Process-wide LRU (by bytes) of ``Entry``, keyed by (uri, column, metric)."""

    def __init__(self) -> None:
        # An entry heavier than the whole budget is not kept (its queries go to Lance).
        self.entries: LRU[tuple[str, str, str], Entry] = LRU(
            max_weight=_default_cache_bytes(), weigh=lambda e: e.nbytes
        )
        self.building: dict[tuple[str, str, str], Future[Any]] = {}
        self.lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None

    # -- bookkeeping ---------------------------------------------------------------------------

    def _estimate(self, rows: int, dim: int) -> int:
        return rows * (dim * 4 + 13 + ann_index.HNSW_M * 10)

    def build(self, ds: LanceDataset, uri: str, column: str, dim: int, metric: Metric) -> Entry:
        """A new entry, its payload within the room the vectors leave in the budget (an entry
        over the budget would not be kept)."""
        room = self.max_bytes - self._estimate(ds.count_rows(), dim)
        return build_entry(ds, uri, column, dim, metric, payload_room=max(room, 0))

    @property
    def max_bytes(self) -> int:
        return self.entries.max_weight or 0

    @max_bytes.setter
    def max_bytes(self, value: int) -> None:
        self.entries.max_weight = value  # evicts, least recently used first

    def _background(self, key: tuple[str, str, str], job: Any) -> None:
        with self.lock:
            if key in self.building:
                return
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mx-ann")

            def run() -> None:
                try:
                    self.entries.put(key, job())
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
    ) -> Entry | None:
        """The entry for ``ds``'s version: built, or brought up to date from an older one.
        None when the work is too big to do inside a query (it then runs in the background)
        or the vectors do not fit in the cache."""
        key = (uri, column, metric)
        entry = self.entries.get(key)
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
            plan = plan_update(entry, ds)  # to size the work; redone under the lock
            if plan is not None:
                old = entry

                def update() -> Entry:
                    with old.lock.write():
                        if old.version < ds.version:
                            todo = plan_update(old, ds)
                            if todo is None:
                                return self.build(ds, uri, column, dim, metric)
                            apply_update(old, ds, todo, metric)
                    return old

                if wait or plan.rows <= SYNC_ADD_MAX_ROWS:
                    done = update()
                    self.entries.put(key, done)
                    return done if done.version == ds.version else None
                self._background(key, update)
                return None
        if wait or rows <= SYNC_BUILD_MAX_ROWS:
            fresh = self.build(ds, uri, column, dim, metric)
            self.entries.put(key, fresh)
            return fresh
        latest_uri, so = uri, dict(storage_options or {})

        def build() -> Entry:
            latest = open_dataset(latest_uri, so, None)
            return self.build(latest, latest_uri, column, dim, metric)

        self._background(key, build)
        return None


CACHE = AnnCache()


class Hits(NamedTuple):
    """A cached search's answer, best first."""

    rowids: np.ndarray
    distances: np.ndarray  # Lance's convention: squared L2, 1 - cosine, 1 - dot
    rows: pa.Table | None  # the ``columns`` asked for, when the entry keeps them all


def cached_search(
    ds: LanceDataset,
    uri: str,
    column: str,
    q: np.ndarray,
    *,
    k: int,
    metric: Metric,
    ef: int,
    filter: str | None,
    storage_options: StorageOptions,
    columns: Sequence[str] | None = None,
) -> Hits | None:
    """The ``k`` rows of ``ds`` nearest to ``q``, best first, from the cache, with their
    ``columns`` when given and kept by the entry; None when the cache cannot answer (no faiss,
    the entry is being built or updated, ``ds`` is an older version): Lance answers then."""
    if load_faiss() is None:
        return None
    try:
        entry = CACHE.get(
            ds, uri, column, q.shape[0], metric, storage_options=storage_options, wait=False
        )
    except MatrixOSError:
        raise
    except Exception as e:
        raise wrap(e, "updating the ANN cache", uri=uri, options=storage_options) from e
    if entry is None:
        return None
    if metric == "cosine":
        norm = float(np.linalg.norm(q))
        q = q / norm if norm > 0 else q
    if not entry.lock.try_read():  # being updated: Lance answers meanwhile
        return None
    try:
        if entry.version != ds.version:  # moved on by a concurrent query: let Lance answer
            return None
        ids = None
        if filter is not None:
            ids = entry.filter_ids(ds, filter, uri, storage_options)
        iids, d = entry.search(q, k, ef, ids)
        rowids = entry.rowids[iids]
        rows = None if columns is None else entry.rows(iids, columns)
    finally:
        entry.lock.release_read()
    # faiss: squared L2, or the negated inner product; Lance: 1 - cosine, 1 - dot.
    dist = d if metric == "l2" else 1.0 + d
    return Hits(rowids, dist.astype(np.float32), rows)


def configure_cache(*, max_bytes: int | None = None) -> dict[str, Any]:
    """Set the ANN cache's memory budget (default: a quarter of RAM, at most 8 GiB, or
    ``$MATRIXOS_SEARCH_CACHE_BYTES``); entries beyond it are evicted, least recently used first.

    Returns:
        ``cache_info()``.
    """
    if max_bytes is not None:
        if max_bytes < 0:
            raise ConfigError("max_bytes must be >= 0")
        CACHE.max_bytes = int(max_bytes)
    return cache_info()


def cache_info() -> dict[str, Any]:
    """What the ANN cache holds: ``{"max_bytes", "bytes", "entries": [...], "building": [...]}``
    (each entry: uri, column, metric, version, kind, rows, deleted_rows, bytes (all of it),
    payload_columns and payload_bytes (the columns kept beside the vectors to answer with),
    build_seconds, builds, incremental_updates)."""
    entries = [e.info() for e in CACHE.entries.values()]
    with CACHE.lock:
        building = [list(k) for k in CACHE.building]
    return {
        "max_bytes": CACHE.max_bytes,
        "bytes": sum(e["bytes"] for e in entries),
        "entries": entries,
        "building": building,
    }


def clear_cache(uri: str | None = None) -> None:
    """Drop the ANN cache's entries (of one dataset, or all)."""
    if uri is None:
        CACHE.entries.clear()
        return
    target = as_uri(uri)
    for key in CACHE.entries:
        if key[0] == target:
            CACHE.entries.pop(key)


def prewarm(
    uri: str,
    column: str | None = None,
    *,
    metric: str | None = None,
    storage_options: StorageOptions = None,
) -> bool:
    """Start building the in-memory ANN index of a column on a background thread and return at
    once; queries go to Lance's index until it is ready. ``LanceTable.create_index`` calls it,
    so the public search path is fast from the first minute without a blocking ``warm``.

    Returns:
        True when a build was started (or one is under way, or the entry is already current);
        False when the cache cannot hold it (no faiss, the vectors exceed the budget).

    Example:
        >>> import tempfile, time, lance, numpy as np, pyarrow as pa
        >>> vecs = np.random.default_rng(0).random((300, 8), dtype=np.float32)
        >>> uri = tempfile.mkdtemp() + "/docs.lance"
        >>> _ = lance.write_dataset(pa.table({
        ...     "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vecs.ravel()), 8),
        ... }), uri)
        >>> prewarm(uri, "embedding")
        True
    """
    uri = as_uri(uri)
    if load_faiss() is None:
        return False
    try:
        ds = open_dataset(uri, storage_options, None)
        col, dim = pick_vector_column(ds, column, uri)
        m = parse_metric(metric) if metric else column_metric(ds, col)
        if CACHE._estimate(ds.count_rows(), dim) > CACHE.max_bytes:
            return False
    except MatrixOSError:
        raise
    except Exception as e:
        raise wrap(e, "preparing the ANN cache", uri=uri, options=storage_options) from e
    so = dict(storage_options or {})

    def build() -> Entry:
        latest = open_dataset(uri, so, None)
        entry = CACHE.entries.get((uri, col, m))
        if entry is not None and entry.version == latest.version:
            return entry
        return CACHE.build(latest, uri, col, dim, m)

    CACHE._background((uri, col, m), build)
    return True


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
    uri = as_uri(uri)
    if load_faiss() is None:
        raise ConfigError(
            "the in-memory ANN cache needs faiss", hint="pip install 'matrixos[search]'"
        )
    ds = open_dataset(uri, storage_options, None)
    col, dim = pick_vector_column(ds, column, uri)
    m = parse_metric(metric) if metric else column_metric(ds, col)
    try:
        entry = CACHE.get(ds, uri, col, dim, m, storage_options=storage_options, wait=True)
    except MatrixOSError:
        raise
    except Exception as e:
        raise wrap(e, "building the ANN cache", uri=uri, options=storage_options) from e
    if entry is None:
        raise ConfigError(
            f"the vectors of {col!r} do not fit in the ANN cache ({CACHE.max_bytes:,} bytes)",
            hint="raise it with configure_cache(max_bytes=...) or MATRIXOS_SEARCH_CACHE_BYTES",
        )
    return entry.info()
