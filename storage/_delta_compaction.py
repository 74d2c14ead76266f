"""Delta compaction committed by MatrixOS itself, so that two compactions can never both win.

Why not ``DeltaTable.optimize.compact()`` / ``z_order()``: delta-rs (checked on 1.6.6) rebases
a commit that lost the race for its version over the winner, and its conflict checker ignores
the winner's removes when those carry ``dataChange=false``. Two compactions that read the same
version therefore both commit: the second removes files the first already removed and re-adds
their rows, duplicating every one of them (``tests/storage/test_concurrency.py`` pins this).
Its optimize also ignores ``CommitProperties(max_commit_retries=0)``, so it cannot be told not
to rebase. A full overwrite rebased over a compaction likewise keeps the compacted file.

What this module does instead, for one snapshot at version ``v``:

1. pick the small files and bin-pack them per partition, as delta-rs does (Z-order: every file
   of each partition);
2. read each bin's files and write one Snappy Parquet file per bin (Z-order: rows sorted on the
   Morton curve of the columns, cut at the target size), with statistics computed from the rows
   (the JSON shape delta-rs writes, bounds rounded outward, none where unsure);
3. write the commit (``commitInfo``, ``remove`` and ``add`` actions, all ``dataChange=false``)
   as ``_delta_log/<v+1>.json`` with put-if-absent: a hard link of a finished temporary file on a
   local disk, ``If-None-Match: *`` on S3 (the conditional PUT delta-rs itself relies on);
4. when that version is taken, read the commit that took it: if it removed any of our inputs or
   changed the schema or protocol, our files are deleted and :class:`CompactionConflict` is
   raised (the caller may retry on a fresh snapshot); otherwise (blind appends, DML elsewhere)
   try the next version. A blind append therefore never conflicts with a compaction, and a
   compaction never removes a file twice.

No lease: correctness does not need one, and a lease needs expiry and takeover of a dead
holder's lease, which on S3 needs a conditional delete. Two writers compacting at once waste
one rewrite, never a row; an auto-compaction that loses simply leaves the work to the winner.

Tables whose features a plain rewrite could break (column mapping, row tracking, clustering,
in-commit timestamps, deletion vectors in use, …) are refused (``NotSupported``) rather than
handed to delta-rs's unsafe optimize.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import uuid
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from matrixos.errors import MatrixOSError, NotSupported, SchemaMismatch
from matrixos.storage._objects import put_if_absent

if TYPE_CHECKING:
    from deltalake import DeltaTable

# Writer features a compaction written by us honours: none of them constrains how a file is
# rewritten (appendOnly allows dataChange=false removes; constraints and generated columns hold
# for the same rows; deletion vectors: only while no file carries one).
_SAFE_WRITER_FEATURES = frozenset(
    {
        "appendOnly",
        "invariants",
        "checkConstraints",
        "generatedColumns",
        "changeDataFeed",
        "identityColumns",
        "timestampNtz",
        "deletionVectors",
        "typeWidening",
        "typeWidening-preview",
        "vacuumProtocolCheck",
        "checkpointProtection",
    }
)
# Legacy protocol versions: 5 brings column mapping, 6 identity columns (checked by property).
_MAX_LEGACY_WRITER = 6
_CHECKPOINT_INTERVAL = 100  # delta-rs's default ``delta.checkpointInterval``
_MAX_STRING_BOUND = 64  # characters of a string min/max kept in the statistics
# Rows per row group of every data file MatrixOS writes. A filter reads only the row groups
# its statistics let through (DuckDB reads no page index), and DuckDB scans a file's row groups
# in parallel. Measured on one quiet machine (benchmarks/README.md, "Row groups"): a point query
# on a 1M-row file, median 5.7-6.4 ms at DuckDB's own 122,880 rows, 4.6-5.2 ms at 65,536,
# 4.5 at 32,768 and 3.0-3.7 at 16,384; TPC-H SF0.1 against DuckDB on the generator's files
# 0.96x, 0.95-0.97x, 1.02-1.03x and 1.12-1.13x. 65,536 costs scans nothing.
ROW_GROUP_ROWS = 65_536


class CompactionConflict(MatrixOSError):
    """A concurrent commit removed a file this compaction rewrote; nothing was committed."""


@dataclass(frozen=True)
class Tiers:
    """Size-tiered selection for auto-compaction, so that many small appends do not rewrite
    the whole table again every ``fanout`` appends (quadratic: at 1,000 appends of 1,000 rows
    each auto-compaction re-read and re-wrote every row so far, ~20 ms per append on average).

    Files below ``small`` fall into tiers by size, each ``fanout`` times smaller than the one
    above (tier 0: from ``small / fanout`` up to ``small``). Once a tier of a partition holds
    ``fanout`` files, they are compacted with every smaller file of the partition: ``fanout``
    appends become one file a tier up while larger files stay put, so each row is rewritten
    about once per tier (the log of the table's size over an append's) instead of once every
    ``fanout`` appends. A partition then keeps fewer than ``fanout`` files per tier.

    And fewer than ``fanout`` small files in all (a scan pays DuckDB ~0.1-0.2 ms per file: 31
    files after 1,000 appends scanned 1.28x slower than one): once a partition holds
    ``fanout`` small files of mixed sizes, its smallest are merged, from the smallest tier up
    until at least half of them. Simulated over 1,000 equal appends at ``fanout`` 16: at most
    15 files (8 at the end, 26 without the cap), each row rewritten ~3 times instead of ~1.8.
    """

    small: int
    fanout: int

    def tier(self, size: int) -> int:
        t, bound = 0, self.small / self.fanout
        while size < bound and t < 32:
            t, bound = t + 1, bound / self.fanout
        return t

    def pick(self, files: Sequence[_File]) -> list[_File]:
        """The files of one partition to compact now (none while it holds fewer than
        ``fanout`` small files)."""
        small = [f for f in files if f.size < self.small]
        if len(small) < self.fanout:
            return []
        tiers = [self.tier(f.size) for f in small]
        full = [t for t in set(tiers) if tiers.count(t) >= self.fanout]
        if full:
            return [f for f, t in zip(small, tiers, strict=True) if t >= min(full)]
        for low in sorted(set(tiers), reverse=True):  # the smallest files first
            chosen = [f for f, t in zip(small, tiers, strict=True) if t >= low]
            if len(chosen) >= max(2, self.fanout // 2):
                return chosen
        return small

    def due(self, sizes: Sequence[int]) -> bool:
        """Whether one partition's files of these sizes are due for compaction (``fanout``
        small files or more: a full tier, or too many files)."""
        return sum(1 for n in sizes if n < self.small) >= self.fanout


@dataclass(frozen=True)
class _File:
    path: str  # as in the log (URL-encoded)
    size: int
    mtime: int
    partition: dict[str, str | None]


def compact(
    dt: DeltaTable,
    location: str,
    storage_options: Mapping[str, str] | None,
    *,
    target_size: int,
    zorder: Sequence[str] | None = None,
    tiers: Tiers | None = None,
    sort_by: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Compact ``dt``'s small files (with ``zorder``: rewrite every file of each partition,
    rows in Z-order of those columns) and commit; returns the metrics. With ``tiers`` (auto-
    compaction) only the smallest files of each partition are rewritten (see :class:`Tiers`).

    ``sort_by`` (the table's sort order, property ``matrixos.sort_by``; ignored with
    ``zorder``): rewritten rows are sorted by those columns (names the table lacks, and
    partition columns, are skipped) and written in row groups of ``ROW_GROUP_ROWS`` rows, so
    a filter on the leading columns skips files and row groups by their statistics. Without
    ``tiers`` (OPTIMIZE), each partition is rewritten whole and cut at the target size, so its
    files hold consecutive ranges of the sort key; their names carry a mark of the order
    (``.sorted-<crc>``) and a partition whose files all carry it is left alone.

    Raises :class:`CompactionConflict` when a concurrent commit removed one of the inputs (or
    changed the schema) first, ``NotSupported`` for tables whose features this writer does not
    honour (see :func:`unsupported`)."""
    why = unsupported(dt)
    if why:
        raise NotSupported(
            f"OPTIMIZE of the Delta table at {location} is not available: it {why}",
            hint="compact it with the engine that wrote it (e.g. Spark)",
        )
    store = LogStore(location, storage_options)
    read_version = dt.version()
    schema = pa.schema(dt.schema().to_arrow())  # type: ignore[arg-type]
    parts = set(dt.metadata().partition_columns)
    data_schema = pa.schema([f for f in schema if f.name not in parts])
    cols = list(zorder or [])
    bad = [c for c in cols if c not in data_schema.names]
    if bad:
        raise SchemaMismatch(
            f"ZORDER BY column(s) {bad} are not data columns of the table "
            f"(data columns: {data_schema.names}; partition columns cannot be z-ordered)"
        )
    order = [] if cols else [c for c in sort_by or [] if c in data_schema.names]
    mark = _sorted_mark(order) if order and tiers is None else None
    bins = _plan(dt, target_size, every_file=bool(cols), tiers=tiers, whole=mark)
    metrics: dict[str, Any] = {
        "numFilesAdded": 0,
        "numFilesRemoved": 0,
        "partitionsOptimized": 0,
        "totalConsideredFiles": sum(len(b) for b in bins),
        "readVersion": read_version,
    }
    bins = [b for b in bins if len(b) > 1 or cols or mark]
    if not bins:
        return metrics
    now = int(time.time() * 1000)
    removes: list[dict[str, Any]] = []
    adds: list[dict[str, Any]] = []
    written: list[str] = []
    txn = uuid.uuid4().hex
    committing = False
    try:
        for files in bins:
            table = pa.concat_tables(
                [_conform(store.read_parquet(f.path), data_schema) for f in files]
            )
            folder = files[0].path.rpartition("/")[0]
            in_bytes = sum(f.size for f in files)
            for chunk in _chunks(table, cols, in_bytes, target_size, order):
                name = f"part-00000-{uuid.uuid4()}-c000{mark or ''}.snappy.parquet"
                path = f"{folder}/{name}" if folder else name
                written.append(path)
                size = store.write_parquet(path, chunk, row_group=ROW_GROUP_ROWS)
                adds.append(
                    {
                        "path": path,
                        "partitionValues": files[0].partition,
                        "size": size,
                        "modificationTime": now,
                        "dataChange": False,
                        "stats": json.dumps(file_stats(chunk), separators=(",", ":")),
                    }
                )
            removes.extend(
                {
                    "path": f.path,
                    "deletionTimestamp": now,
                    "dataChange": False,
                    "extendedFileMetadata": True,
                    "partitionValues": f.partition,
                    "size": f.size,
                }
                for f in files
            )
        metrics.update(
            numFilesAdded=len(adds),
            numFilesRemoved=len(removes),
            partitionsOptimized=len({json.dumps(f[0].partition, sort_keys=True) for f in bins}),
        )
        info = {
            "timestamp": now,
            "operation": "OPTIMIZE",
            "operationParameters": {
                "targetSize": str(target_size),
                "predicate": "[]",
                **({"zOrderBy": json.dumps(cols)} if cols else {}),
                **({"sortBy": json.dumps(order)} if order else {}),
            },
            "operationMetrics": {
                k: metrics[k] for k in ("numFilesAdded", "numFilesRemoved", "partitionsOptimized")
            },
            "readVersion": read_version,
            "isolationLevel": "SnapshotIsolation",
            "isBlindAppend": False,
            "engineInfo": "matrixos",
            "clientVersion": "matrixos",
            "txnId": txn,
        }
        body = "\n".join(
            json.dumps(a, separators=(",", ":"))
            for a in [
                {"commitInfo": info},
                *({"remove": r} for r in removes),
                *({"add": a} for a in adds),
            ]
        )
        inputs = {r["path"] for r in removes}
        version = read_version + 1
        committing = True
        while not store.put_if_absent(commit_name(version), body.encode()):
            if _ours_or_compatible(store, version, inputs, txn):
                break  # a retried PUT found its own first try, which had landed
            version += 1
    except BaseException as e:
        # Our files go only when the commit surely did not land: an error during the PUT
        # (a timeout, say) may hide a commit that did, and that commit needs them.
        if not committing or isinstance(e, CompactionConflict):
            for path in written:
                store.remove(path)
        raise
    metrics["version"] = version
    if version % _CHECKPOINT_INTERVAL == 0:
        checkpoint(location, storage_options, version)
    return metrics


def commit_name(version: int) -> str:
    return f"_delta_log/{version:020d}.json"


def unsupported(dt: DeltaTable) -> str | None:
    """Why this writer cannot compact ``dt`` (a phrase), or None when it can."""
    proto = dt.protocol()
    if proto.min_writer_version == 7:
        extra = sorted(set(proto.writer_features or []) - _SAFE_WRITER_FEATURES)
        if extra:
            return f"uses writer feature(s) {', '.join(extra)}"
    elif proto.min_writer_version > _MAX_LEGACY_WRITER:
        return f"needs writer version {proto.min_writer_version}"
    config = dt.metadata().configuration or {}
    if str(config.get("delta.columnMapping.mode", "none")).lower() != "none":
        return "uses column mapping"
    if _has_deletion_vectors(dt):
        return "has deletion vectors (the rows they hide must not come back)"
    return None


def _plan(
    dt: DeltaTable,
    target_size: int,
    *,
    every_file: bool,
    tiers: Tiers | None = None,
    whole: str | None = None,
) -> list[list[_File]]:
    """Bins of small files per partition (delta-rs's rule: files below ``target_size``,
    consecutive in commit order, packed until a bin would exceed ``target_size``); with
    ``every_file`` (Z-order) one bin of all files per partition; with ``tiers`` only the files
    ``Tiers.pick`` chooses; with ``whole`` (a sorted table's mark, see :func:`_sorted_mark`),
    one bin of all files of each partition where a file lacks the mark."""
    actions = pa.table(dt.get_add_actions(flatten=True))  # type: ignore[arg-type]
    part_cols = [c for c in actions.column_names if c.startswith("partition.")]
    raw = _raw_partitions(dt)
    groups: dict[str, list[_File]] = {}
    for row in actions.to_pylist():
        path = row["path"]
        if "://" in path or path.startswith("/"):
            continue  # a file outside the table's folder: left alone
        if row["size_bytes"] >= target_size and not (every_file or whole):
            continue  # big enough
        typed = {c[len("partition.") :]: row[c] for c in part_cols}
        values = {k: partition_string(v) for k, v in typed.items()}
        if values and values not in raw:
            continue  # a partition value we cannot spell exactly as the log does: leave it
        f = _File(row["path"], int(row["size_bytes"]), int(row["modification_time"]), values)
        groups.setdefault(json.dumps(values, sort_keys=True), []).append(f)
    bins: list[list[_File]] = []
    for files in groups.values():
        if whole:
            if any(whole not in f.path for f in files):
                files.sort(key=lambda f: (f.mtime, f.path))
                bins.append(files)
            continue
        if tiers is not None and not every_file:
            files = tiers.pick(files)
        files.sort(key=lambda f: (f.mtime, f.path))
        current: list[_File] = []
        size = 0
        for f in files:
            if current and size + f.size > target_size and not every_file:
                bins.append(current)
                current, size = [], 0
            current.append(f)
            size += f.size
        if current:
            bins.append(current)
    return bins


def _sorted_mark(order: Sequence[str]) -> str:
    """What the names of files OPTIMIZE wrote sorted by ``order`` carry (a CRC of the order:
    files sorted by another order do not count as sorted)."""
    return f".sorted-{zlib.crc32(json.dumps(list(order)).encode()):08x}"


def _raw_partitions(dt: DeltaTable) -> list[dict[str, str | None]]:
    if not dt.metadata().partition_columns:
        return []
    return [dict(p) for p in dt.partitions()]


def _has_deletion_vectors(dt: DeltaTable) -> bool:
    if "deletionVectors" not in set(dt.protocol().reader_features or []):
        return False
    return any(batch.num_rows for batch in dt.deletion_vectors())


def partition_string(v: Any) -> str | None:
    """A partition value spelled as Delta writes it (verified against ``dt.partitions()``)."""
    if v is None:
        return None
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, datetime):
        return v.strftime("%Y-%m-%d %H:%M:%S.%f")
    if isinstance(v, date):
        return v.isoformat()
    return str(v)


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """The file's rows in the table's current schema: missing (later-added) columns as nulls,
    narrower (widened) types cast up."""
    cols = []
    for f in schema:
        if f.name in table.column_names:
            col = table.column(f.name)
            cols.append(col if col.type == f.type else col.cast(f.type))
        else:
            cols.append(pa.nulls(table.num_rows, f.type))
    return pa.Table.from_arrays(cols, schema=schema)


def _chunks(
    table: pa.Table,
    zorder: list[str],
    in_bytes: int,
    target_size: int,
    order: Sequence[str] = (),
) -> list[pa.Table]:
    """The rows to write: one table, or with ``zorder`` sorted in Z-order (with ``order``:
    sorted by those columns, ascending, nulls last) and cut into files of about
    ``target_size`` bytes (sized by the inputs' bytes per row)."""
    if not (zorder or order) or table.num_rows == 0:
        return [table]
    if zorder:
        table = table.take(_zorder_indices(table, zorder))
    else:  # a stable sort: rows with equal keys keep their commit order
        table = table.take(pc.sort_indices(table, [(c, "ascending") for c in order]))
    per_file = max(1, int(target_size / max(in_bytes / table.num_rows, 1.0)))
    return [table.slice(i, per_file) for i in range(0, table.num_rows, per_file)]


def _zorder_indices(table: pa.Table, cols: list[str]) -> pa.Array:
    """Row order by the Z-order (Morton) curve over ``cols``: each column's dense rank scaled to
    32 bits, the bits interleaved most significant first, rows sorted by the result."""
    import numpy as np

    n = table.num_rows
    ranks = []
    for c in cols:
        r = pc.rank(table.column(c), tiebreaker="dense")  # nulls rank last
        r = r.to_numpy().astype(np.float64) - 1
        top = max(float(r.max()), 1.0)
        ranks.append((r / top * (2**32 - 1)).astype(np.uint64))
    words = np.zeros((math.ceil(32 * len(cols) / 64), n), dtype=np.uint64)
    pos = 0
    for bit in range(31, -1, -1):
        for r in ranks:
            w, off = divmod(pos, 64)
            words[w] |= ((r >> np.uint64(bit)) & np.uint64(1)) << np.uint64(63 - off)
            pos += 1
    return pa.array(np.lexsort(words[::-1]))


# ------------------------------------------------------------------------------- statistics
def file_stats(table: pa.Table) -> dict[str, Any]:
    mins: dict[str, Any] = {}
    maxs: dict[str, Any] = {}
    nulls: dict[str, Any] = {}
    for name in table.column_names:
        _column_stats(name, table.column(name), mins, maxs, nulls)
    return {"numRecords": table.num_rows, "minValues": mins, "maxValues": maxs, "nullCount": nulls}


def _column_stats(
    name: str, col: pa.ChunkedArray, mins: dict, maxs: dict, nulls: dict[str, Any]
) -> None:
    t = col.type
    if pa.types.is_struct(t):
        arr = col.combine_chunks()
        sub_min: dict[str, Any] = {}
        sub_max: dict[str, Any] = {}
        sub_null: dict[str, Any] = {}
        for i in range(t.num_fields):
            child = pc.struct_field(arr, [i])
            _column_stats(t.field(i).name, pa.chunked_array([child]), sub_min, sub_max, sub_null)
        nulls[name] = sub_null
        if sub_min:
            mins[name] = sub_min
        if sub_max:
            maxs[name] = sub_max
        return
    nulls[name] = int(col.null_count)
    if col.null_count == len(col) or not _has_bounds(t):
        return
    if pa.types.is_floating(t) and pc.any(pc.is_nan(col)).as_py():
        return  # engines order NaN differently: no bounds is always right
    mm = pc.min_max(col)
    lo, hi = _render(mm["min"].as_py(), t, up=False), _render(mm["max"].as_py(), t, up=True)
    if lo is not None and hi is not None:
        mins[name], maxs[name] = lo, hi


def _has_bounds(t: pa.DataType) -> bool:
    # Decimals, booleans, binary and nested types get no bounds: readers then never skip on
    # them, which is always correct.
    return (
        pa.types.is_integer(t)
        or pa.types.is_floating(t)
        or pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_date32(t)
        or pa.types.is_timestamp(t)
    )


def _render(v: Any, t: pa.DataType, *, up: bool) -> Any:
    """A bound in the log's JSON spelling; timestamps at millisecond precision, rounded outward
    (delta-rs writes milliseconds)."""
    if v is None:
        return None
    if pa.types.is_floating(t):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, str) and len(v) > _MAX_STRING_BOUND:
        # A prefix is still a lower bound; a cut upper bound would be wrong: leave it out
        # (long texts would also bloat the log).
        return None if up else v[:_MAX_STRING_BOUND]
    if pa.types.is_timestamp(t):
        if not isinstance(v, datetime):
            return None
        ms = v.replace(microsecond=v.microsecond // 1000 * 1000)
        if up and ms != v:
            ms += timedelta(milliseconds=1)
        if t.tz is None:
            return ms.strftime("%Y-%m-%d %H:%M:%S.") + f"{ms.microsecond // 1000:03d}"
        ms = ms.astimezone(UTC)
        return ms.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms.microsecond // 1000:03d}Z"
    if isinstance(v, date):
        return v.isoformat()
    return v


def parquet_options(table: pa.Table) -> dict[str, Any]:
    """How MatrixOS writes a data file: Snappy, as write_deltalake does (DuckDB scanned a
    ZSTD-compacted IoT table 1.55x slower), and dictionary encoding only for columns whose
    values repeat. pyarrow's default dictionary-encodes every column until the dictionary
    reaches 1 MB, so in files of a few thousand rows unique ids and measurements were all
    dictionary-encoded, and DuckDB decoded them ~30 % slower per row than plain pages (1,000
    appends compacted by tiers scanned 1.4x slower than the same rows written at once)."""
    return {"compression": "snappy", "use_dictionary": _repeating_columns(table)}


def duckdb_writes(schema: pa.Schema) -> bool:
    """Whether compaction writes files of ``schema`` with DuckDB: flat columns of the types it
    writes exactly as Delta declares them (checked: integers, floats, booleans, strings,
    binary, dates, microsecond timestamps with and without a zone, decimals). DuckDB reads
    those files back faster than pyarrow's: a string column of pyarrow's took ~30 % longer
    to aggregate than the same rows written by delta-rs or DuckDB."""
    return all(_duckdb_type(f.type) for f in schema)


def _duckdb_type(t: pa.DataType) -> bool:
    if pa.types.is_timestamp(t):
        return t.unit == "us"  # type: ignore[attr-defined]
    return (
        (pa.types.is_integer(t) and pa.types.is_signed_integer(t))
        or (pa.types.is_floating(t) and not pa.types.is_float16(t))
        or pa.types.is_boolean(t)
        or pa.types.is_string(t)
        or pa.types.is_large_string(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_date32(t)
        or pa.types.is_decimal128(t)
    )


def _repeating_columns(table: pa.Table, sample: int = 4_096) -> list[str]:
    """Top-level primitive columns whose values repeat (in a sample of rows, on average twice
    or more); nested columns are written plain."""
    n = table.num_rows
    step = max(1, n // sample)
    rows = table if step == 1 else table.take(pa.array(range(0, n, step)))
    out = []
    for name, col in zip(rows.column_names, rows.columns, strict=True):
        t = col.type
        if pa.types.is_nested(t) or pa.types.is_null(t) or pa.types.is_boolean(t):
            continue
        if rows.num_rows and pc.count_distinct(col).as_py() * 2 <= rows.num_rows:
            out.append(name)
    return out


# ------------------------------------------------------------------------- conflict check
def _ours_or_compatible(store: LogStore, version: int, inputs: set[str], txn: str) -> bool:
    """True when the commit at ``version`` is ours (transaction id ``txn``); False when it
    leaves our compaction valid on top of it; raises :class:`CompactionConflict` otherwise."""
    raw = store.read(commit_name(version))
    actions = [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
    if any(a.get("commitInfo", {}).get("txnId") == txn for a in actions):
        return True
    for action in actions:
        if "metaData" in action or "protocol" in action:
            raise CompactionConflict(
                f"version {version} changed the table's schema or protocol; compaction dropped"
            )
        removed = action.get("remove")
        if removed is not None and removed.get("path") in inputs:
            raise CompactionConflict(
                f"version {version} already removed {removed['path']}, a file this compaction "
                "rewrote; compaction dropped (committing it would duplicate rows)"
            )
    return False


def checkpoint(location: str, storage_options: Mapping[str, str] | None, version: int) -> None:
    from deltalake import DeltaTable

    opts = dict(storage_options) if storage_options else None
    with contextlib.suppress(Exception):  # an optimisation only: a later writer makes one
        DeltaTable(location, version=version, storage_options=opts).create_checkpoint()


# ------------------------------------------------------------------------------ storage
class LogStore:
    """Files of one table, local or on S3: Parquet in and out, put-if-absent for commits."""

    def __init__(self, location: str, storage_options: Mapping[str, str] | None) -> None:
        from matrixos.storage.options import StorageOptions
        from matrixos.storage.warehouse import filesystem_for, is_remote

        self.remote = is_remote(location)
        self.root = location.split("://", 1)[1] if self.remote else location
        self.root = self.root.rstrip("/")
        if self.remote:
            options = StorageOptions.from_mapping(storage_options)
            self.fs = filesystem_for(location, options)
            self.arrow_fs = options.to_pyarrow()

    def _path(self, log_path: str) -> str:
        return f"{self.root}/{unquote(log_path)}"

    def read_parquet(self, log_path: str) -> pa.Table:
        if self.remote:
            return pq.read_table(self._path(log_path), filesystem=self.arrow_fs)
        return pq.read_table(self._path(log_path))

    def write_parquet(self, log_path: str, table: pa.Table, *, row_group: int | None = None) -> int:
        """Write ``table`` as the data file ``log_path``; returns its size in bytes. Flat tables
        are written by DuckDB (see ``duckdb_writes``), others as ``parquet_options`` says."""
        path = self._path(log_path)
        if duckdb_writes(table.schema):
            return self._write_with_duckdb(path, table, row_group)
        options = parquet_options(table)
        if self.remote:
            pq.write_table(
                table, path, filesystem=self.arrow_fs, row_group_size=row_group, **options
            )
            return int(self.arrow_fs.get_file_info(path).size)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        pq.write_table(table, path, row_group_size=row_group, **options)
        return os.path.getsize(path)

    def _write_with_duckdb(self, path: str, table: pa.Table, row_group: int | None) -> int:
        import duckdb

        folder = None
        target = path
        if self.remote:
            import tempfile

            folder = tempfile.mkdtemp(prefix="mx-compact-")
            target = os.path.join(folder, "part.parquet")
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        options = "FORMAT parquet, COMPRESSION snappy"
        if row_group:
            options += f", ROW_GROUP_SIZE {int(row_group)}"
        try:
            with duckdb.connect() as con:
                con.register("rows", table)
                quoted = target.replace("'", "''")
                con.execute(f"COPY rows TO '{quoted}' ({options})")
            size = os.path.getsize(target)
            if folder is not None:
                with open(target, "rb") as src, self.arrow_fs.open_output_stream(path) as out:
                    while chunk := src.read(8 << 20):
                        out.write(chunk)
        finally:
            if folder is not None:
                import shutil

                shutil.rmtree(folder, ignore_errors=True)
        return size

    def write_bytes(self, log_path: str, data: bytes, *, sync: bool = True) -> None:
        """Write a small data file in one request. With ``sync`` a local file is synced to
        disk before any commit names it. Without, as delta-rs writes (it never syncs): a
        killed process still leaves all of a commit or none of it, but a power cut may lose
        the last commits, or keep a commit whose file was lost."""
        path = self._path(log_path)
        if self.remote:
            with self.arrow_fs.open_output_stream(path) as out:
                out.write(data)
            return
        folder = os.path.dirname(path)
        if not os.path.isdir(folder):
            os.makedirs(folder, exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
            if sync:
                f.flush()
                os.fsync(f.fileno())

    def remove(self, log_path: str) -> None:
        try:
            if self.remote:
                self.arrow_fs.delete_file(self._path(log_path))
            else:
                os.unlink(self._path(log_path))
        except OSError:
            pass  # an orphan: VACUUM removes it

    def read(self, name: str) -> bytes:
        path = f"{self.root}/{name}"
        if self.remote:
            self.fs.invalidate_cache()
            return bytes(self.fs.cat_file(path))
        with open(path, "rb") as f:
            return f.read()

    def exists(self, name: str) -> bool:
        """Whether the log file ``name`` exists."""
        path = f"{self.root}/{name}"
        if self.remote:
            from pyarrow.fs import FileType

            return bool(self.arrow_fs.get_file_info(path).type != FileType.NotFound)
        return os.path.exists(path)

    def put_if_absent(self, name: str, data: bytes, *, sync: bool = True) -> bool:
        """Write the log file ``name`` unless it exists, atomically; False when it already
        existed (``storage/_objects.py``; ``sync``: see ``write_bytes``)."""
        return put_if_absent(
            f"{self.root}/{name}", data, self.fs if self.remote else None, sync=sync
        )
