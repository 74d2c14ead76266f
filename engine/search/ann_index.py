"""One in-memory ANN index: a column's vectors at one dataset version in a faiss index (exact
or HNSW), with the row ids it maps to, the dataset's columns of those rows (the payload a
query answers with), the rows deleted since, and how to bring it to a newer version without
a rebuild. ``ann`` keeps these in its cache.

The tuning constants below are read at call time: tests and benchmarks patch them here.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from matrixos._lru import LRU
from matrixos.engine.search._common import Metric, StorageOptions, wrap

if TYPE_CHECKING:
    from lance.dataset import LanceDataset

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
# Rebuild instead of masking once this share of the cached rows has been deleted.
REBUILD_DEAD_FRACTION = 0.25
FILTERS_PER_ENTRY = 32
# The columns of the dataset are kept beside the vectors (the "payload"), so that a query's
# result rows come from memory (~20 us) instead of a Lance take (~0.5 ms for 10 rows): every
# column whose estimated size fits this budget, in schema order; a query asking for a column
# left out reads its rows from Lance. Blob-encoded columns are never kept.
PAYLOAD_MAX_BYTES = 256 << 20
PAYLOAD_SAMPLE_ROWS = 1_024


def load_faiss() -> Any | None:
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def fragment_signatures(ds: LanceDataset) -> dict[int, tuple[Any, ...]]:
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


def _fixed_width(t: pa.DataType) -> float | None:
    """Bytes per value of a fixed-width type (None: variable width)."""
    if pa.types.is_fixed_size_list(t):
        w = _fixed_width(t.value_type)
        return None if w is None else w * t.list_size
    try:
        return t.bit_width / 8
    except ValueError:
        return None


def payload_columns(ds: LanceDataset, rows: int, room: int | None = None) -> list[str]:
    """The columns to keep beside the vectors: in schema order, each whose estimated size
    (exact for fixed-width types, from a sample of the first rows otherwise) still fits
    ``PAYLOAD_MAX_BYTES`` (and ``room``)."""
    fields = [f for f in ds.schema if b"lance-encoding:blob" not in (f.metadata or {})]
    width = {f.name: _fixed_width(f.type) for f in fields}
    variable = [f.name for f in fields if width[f.name] is None]
    if variable and rows:
        sample = ds.to_table(columns=variable, limit=PAYLOAD_SAMPLE_ROWS)
        for name in variable:
            width[name] = sample.column(name).nbytes / max(sample.num_rows, 1) * 1.1
    budget = PAYLOAD_MAX_BYTES if room is None else min(room, PAYLOAD_MAX_BYTES)
    out: list[str] = []
    for f in fields:
        need = (width[f.name] or 0.0) * rows + 1 / 8 * rows  # values + validity
        if need <= budget:
            out.append(f.name)
            budget -= int(need)
    return out


def read_vectors(
    ds: LanceDataset,
    column: str,
    dim: int,
    metric: Metric,
    fragments: list[int] | None,
    payload: Sequence[str] = (),
) -> tuple[np.ndarray, np.ndarray, np.ndarray, pa.Table]:
    """(vectors as float32, row ids, fragment ids, the ``payload`` columns) of the rows with
    a non-null, finite vector."""
    frags = None if fragments is None else _fragments(ds, fragments)
    if frags is not None and not frags:  # an empty list would mean "every fragment"
        empty = ds.schema.empty_table().select(list(payload))
        return (
            np.zeros((0, dim), np.float32),
            np.zeros(0, np.uint64),
            np.zeros(0, np.uint32),
            empty,
        )
    scan = [column, *(c for c in payload if c != column)]
    tbl = ds.scanner(
        columns=scan, with_row_id=True, with_row_address=True, fragments=frags
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
    rows = tbl.select(list(payload))
    if not keep.all():
        vecs, rowids, frag_of = vecs[keep], rowids[keep], frag_of[keep]
        rows = rows.filter(pa.array(keep))
    vecs = np.ascontiguousarray(vecs)
    if not vecs.flags.writeable:
        vecs = vecs.copy()
    if metric == "cosine":
        norms = np.linalg.norm(vecs, axis=1, keepdims=True)
        np.divide(vecs, norms, out=vecs, where=norms > 0)
    return vecs, np.ascontiguousarray(rowids, dtype=np.uint64), frag_of, rows.combine_chunks()


class RWLock:
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
class Entry:
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
    payload: pa.Table  # internal id -> the row's kept columns (``payload_columns``)
    schema: pa.Schema  # the dataset's at ``version``: another one means a rebuild
    alive: np.ndarray | None = None  # internal id -> not deleted; None: all alive
    build_seconds: float = 0.0
    builds: int = 1
    appends: int = 0
    lock: RWLock = field(default_factory=RWLock)
    # filter predicate -> the internal ids of the rows it matches, at this version
    filters: LRU[str, np.ndarray] = field(default_factory=lambda: LRU(FILTERS_PER_ENTRY))
    _sorted: tuple[np.ndarray, np.ndarray] | None = None
    _alive_bits: np.ndarray | None = None
    _payload_names: frozenset[str] | None = None

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
        return self.n * per_row + filt + self.payload.nbytes

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
            "payload_columns": self.payload.column_names,
            "payload_bytes": self.payload.nbytes,
            "build_seconds": round(self.build_seconds, 3),
            "builds": self.builds,
            "incremental_updates": self.appends,
        }

    # -- reading -------------------------------------------------------------------------------

    def vectors(self) -> np.ndarray:
        """All stored vectors, a zero-copy view of the faiss storage (valid until an add)."""
        faiss = load_faiss()
        assert faiss is not None
        flat = faiss.downcast_index(self.index.storage if self.kind == "hnsw" else self.index)
        return faiss.rev_swig_ptr(flat.get_xb(), self.n * self.dim).reshape(self.n, self.dim)

    def rows(self, iids: np.ndarray, columns: Sequence[str]) -> pa.Table | None:
        """The ``columns`` of the rows with internal ids ``iids``, in that order, from the
        payload; None when a column is not kept there."""
        if self._payload_names is None:  # the columns stay those of the build
            self._payload_names = frozenset(self.payload.column_names)
        if not columns or not self._payload_names.issuperset(columns):
            return None  # (a table of no columns would not keep its row count)
        return self.payload.select(list(columns)).take(iids)

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

    def forget_memos(self) -> None:
        """Drop what was derived from the rows (filter matches, id maps): they changed."""
        self.filters.clear()
        self._sorted = None
        self._alive_bits = None
        self._payload_names = None

    def filter_ids(
        self, ds: LanceDataset, predicate: str, uri: str, options: StorageOptions
    ) -> np.ndarray:
        """The internal ids of the live rows matching ``predicate`` (``ds`` is at this entry's
        version), remembered per predicate until the entry moves to another version."""
        hit = self.filters.get(predicate)
        if hit is not None:
            return hit
        try:
            rowids = (
                ds.to_table(columns=[], filter=predicate, with_row_id=True)
                .column("_rowid")
                .to_numpy()
            )
        except Exception as e:
            raise wrap(
                e, "evaluating the filter", uri=uri, ds=ds, predicate=predicate, options=options
            ) from e
        ids = self.internal_ids(rowids)
        self.filters.put(predicate, ids)
        return ids

    def selector(self, ids: np.ndarray | None) -> tuple[Any, np.ndarray] | None:
        """A faiss ID selector over ``ids`` (None: the live rows), and the bitmap it points
        to (the caller keeps it alive while searching)."""
        faiss = load_faiss()
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
        top = top_k(d, k)
        return ids[top], d[top]

    def search(
        self, q: np.ndarray, k: int, ef: int, ids: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(internal ids, distances as faiss gives them, inner products negated) best first,
        among ``ids`` (internal ids) or all live rows."""
        faiss = load_faiss()
        assert faiss is not None
        live = self.n - self.n_dead if ids is None else len(ids)
        want = min(k, live)
        if want == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        if ids is not None and (len(ids) <= EXACT_FILTER_MAX_ROWS or self.kind == "flat"):
            return self.exact(q, want, ids)
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
            return self.exact(q, want, pool)
        dist, lab = dist[ok], lab[ok]
        if self.metric != "l2":
            dist = -dist
        return lab, dist


def top_k(d: np.ndarray, k: int) -> np.ndarray:
    part = np.argpartition(d, k - 1)[:k] if k < len(d) else np.arange(len(d))
    return part[np.argsort(d[part], kind="stable")]


def new_index(kind: str, dim: int, metric: Metric) -> Any:
    faiss = load_faiss()
    assert faiss is not None
    mt = faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT
    if kind == "flat":
        return faiss.IndexFlat(dim, mt)
    index = faiss.IndexHNSWFlat(dim, HNSW_M, mt)
    index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    return index


def build_entry(
    ds: LanceDataset,
    uri: str,
    column: str,
    dim: int,
    metric: Metric,
    payload_room: int | None = None,
) -> Entry:
    """The entry of ``column`` at ``ds``'s version; its payload takes at most
    ``payload_room`` bytes (and ``PAYLOAD_MAX_BYTES``)."""
    t0 = time.perf_counter()
    frags = fragment_signatures(ds)
    keep = payload_columns(ds, ds.count_rows(), payload_room)
    vecs, rowids, frag_of, payload = read_vectors(ds, column, dim, metric, None, keep)
    kind = "flat" if len(vecs) <= CACHE_FLAT_MAX_ROWS else "hnsw"
    index = new_index(kind, dim, metric)
    if len(vecs):
        index.add(vecs)
    return Entry(
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
        payload=payload,
        schema=ds.schema,
        build_seconds=time.perf_counter() - t0,
    )


@dataclass
class UpdatePlan:
    """How to bring an entry from its version to a newer one without a rebuild."""

    added: list[int]
    removed: list[int]
    deleted_in: list[int]
    rows: int  # vectors to read and add
    schema_changed: bool = False  # the payload is read again (a column added, renamed, …)


def plan_update(entry: Entry, ds: LanceDataset) -> UpdatePlan | None:
    """None when only a rebuild will do: a fragment's data files changed (rewritten
    vectors), the vector column changed, too many rows were deleted, or the exact index
    outgrew its size. A schema change elsewhere (Lance adds, renames and drops columns without
    rewriting files) keeps the vectors and reads the payload again."""
    schema = ds.schema
    schema_changed = not schema.equals(entry.schema, check_metadata=True)
    if schema_changed:
        i = schema.get_field_index(entry.column)
        if i < 0 or not schema.field(i).equals(entry.schema.field(entry.column)):
            return None
    new = fragment_signatures(ds)
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
    return UpdatePlan(added, removed, deleted_in, rows, schema_changed)


def _appended(payload: pa.Table, rows: pa.Table) -> pa.Table:
    out = pa.concat_tables([payload, rows.cast(payload.schema)])
    # takes from many small chunks are slower: merge them now and then
    if out.num_columns and out.column(0).num_chunks > 8:
        out = out.combine_chunks()
    return out


def read_payload(ds: LanceDataset, rowids: np.ndarray, columns: list[str]) -> pa.Table:
    """The ``columns`` of the rows ``rowids`` of ``ds``, in that order (null for a row gone)."""
    tbl = ds.to_table(columns=columns, with_row_id=True)
    have = tbl.column("_rowid").to_numpy()
    order = np.argsort(have, kind="stable")
    if len(order):
        pos = np.minimum(np.searchsorted(have[order], rowids), len(order) - 1)
        idx = pa.array(order[pos], mask=have[order[pos]] != rowids)
    else:
        idx = pa.nulls(len(rowids), pa.int64())
    return tbl.select(columns).take(idx).combine_chunks()


def apply_update(entry: Entry, ds: LanceDataset, plan: UpdatePlan, metric: Metric) -> None:
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
    keep = [] if plan.schema_changed else entry.payload.column_names
    if plan.added:
        vecs, rowids, frag_of, rows = read_vectors(
            ds, entry.column, entry.dim, metric, plan.added, keep
        )
        if len(vecs):
            entry.index.add(vecs)
            entry.rowids = np.concatenate([entry.rowids, rowids])
            entry.frag_of = np.concatenate([entry.frag_of, frag_of])
            alive = np.concatenate([alive, np.ones(len(vecs), dtype=bool)])
            if not plan.schema_changed:
                entry.payload = _appended(entry.payload, rows)
    if plan.schema_changed:
        entry.payload = read_payload(ds, entry.rowids, payload_columns(ds, ds.count_rows()))
        entry.schema = ds.schema
    entry.alive = None if alive.all() else alive
    entry.version = ds.version
    entry.frags = fragment_signatures(ds)
    entry.appends += 1
    entry.forget_memos()
