"""Small blind appends committed by MatrixOS, and the table upkeep that follows them off the
commit path.

Why not ``write_deltalake`` for a small append: at 1,000 versions delta-rs spent 17-70 ms a
commit, most of it listing ``_delta_log/`` (every commit file, on every write: once to bring
the snapshot up to date, again after its commit) and writing checkpoints inline, where the
Parquet file and the commit take ~1 ms. What this module does instead, on what the process
already knows of the table (:class:`AppendState`: the version it last saw, the schema and the
active files):

1. each partition's rows become one Snappy Parquet file (statistics computed from the rows, the
   JSON shape delta-rs writes, as compaction does);
2. the commit (``commitInfo`` and ``add`` actions, ``isBlindAppend``) is written as
   ``_delta_log/<v+1>.json`` with put-if-absent (a hard link locally, ``If-None-Match: *`` on
   S3), the conditional PUT delta-rs relies on. On a local disk the data file is synced before
   the commit names it, so a power cut can never leave a commit whose file is gone (a table
   that no longer reads); the commit itself is not synced, as delta-rs syncs nothing: a killed
   process leaves all of a commit or none of it, a power cut may lose the last appends.
   Syncing the commit and its folder too cost another 2-15 ms an append on the shared test
   machine;
3. when that version is taken, the commit that took it is read: its adds and removes bring the
   state up to date (each commit is read once, never the whole log) and the next version is
   tried. A blind append reads no rows, so no commit conflicts with it (Delta's rule for
   blind appends); a commit that changed the schema, protocol or properties makes the state
   stale: its files are deleted, nothing was committed, and the caller starts again from a
   fresh snapshot.

Tables whose features a plain ``add`` could break (constraints, generated or identity columns,
column mapping, row tracking, change data feed, in-commit timestamps …), evolving schemas,
partition values that need escaping, and batches too large to be small files go to delta-rs
(:func:`unsupported`).

Upkeep (:data:`MAINTENANCE`): a checkpoint every ``delta.checkpointInterval`` versions and
auto-compaction when a size tier is full run on one background thread per process, coalesced
per table, committed by the same put-if-absent protocol (``_delta_compaction``), so several
processes may append while any of them compacts. Pending upkeep runs before the process exits
(``matrixos._exit``); :func:`wait_for_maintenance` waits for it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from matrixos._exit import UPKEEP, before_exit
from matrixos._lru import LRU
from matrixos.storage._delta_compaction import (
    ROW_GROUP_ROWS,
    LogStore,
    Tiers,
    commit_name,
    file_stats,
    parquet_options,
    partition_string,
)

if TYPE_CHECKING:
    from deltalake import DeltaTable

log = logging.getLogger(__name__)

# Writer features a plain add of a Parquet file honours.
_WRITER_FEATURES = frozenset(
    {
        "appendOnly",
        "invariants",  # only while no column declares one (checked below)
        "timestampNtz",
        "deletionVectors",
        "vacuumProtocolCheck",
        "checkpointProtection",
    }
)
# Column metadata that asks a writer to check or compute values.
_FIELD_KEYS = ("delta.invariants", "delta.generationExpression", "delta.identity")
_ON = ("delta.enableChangeDataFeed", "delta.enableRowTracking", "delta.enableInCommitTimestamps")
# Partition values written into a folder name without escaping (anything else: delta-rs).
_PLAIN_VALUE = re.compile(r"[A-Za-z0-9_.\-]{1,200}")
_MAX_PARTITIONS = 64


def unsupported(dt: DeltaTable) -> str | None:
    """Why appends to ``dt`` must go through delta-rs (a phrase), or None."""
    proto = dt.protocol()
    if proto.min_writer_version == 7:
        extra = sorted(set(proto.writer_features or []) - _WRITER_FEATURES)
        if extra:
            return f"uses writer feature(s) {', '.join(extra)}"
    elif proto.min_writer_version > 2:
        return f"needs writer version {proto.min_writer_version}"
    meta = dt.metadata()
    config = meta.configuration or {}
    if any(k.startswith("delta.constraints.") for k in config):
        return "has CHECK constraints"
    if str(config.get("delta.columnMapping.mode", "none")).lower() != "none":
        return "uses column mapping"
    on = [k for k in _ON if str(config.get(k, "false")).lower() == "true"]
    if on:
        return f"sets {', '.join(on)}"
    text = dt.schema().to_json()
    if any(k in text for k in _FIELD_KEYS):
        return "has column invariants, generated or identity columns"
    schema = pa.schema(dt.schema().to_arrow())  # type: ignore[arg-type]
    for p in meta.partition_columns:
        t = schema.field(p).type
        if not (pa.types.is_string(t) or pa.types.is_integer(t) or pa.types.is_date32(t)):
            return f"is partitioned by {p} of type {t}"
    return None


_STORES: LRU[tuple[str, str], LogStore] = LRU(64)


def log_store(location: str, options: Mapping[str, str] | None) -> LogStore:
    """The table's ``LogStore``, kept per process (an S3 one holds its clients)."""
    key = (location, repr(sorted((options or {}).items())))
    store = _STORES.get(key)
    if store is None:
        store = LogStore(location, options)
        _STORES.put(key, store)
    return store


def due(dt: DeltaTable, tiers: Tiers) -> bool:
    """Whether a partition of snapshot ``dt`` is due for auto-compaction (``Tiers.due``)."""
    actions = pa.table(dt.get_add_actions(flatten=False))  # type: ignore[arg-type]
    sizes = actions.column("size_bytes").to_pylist()
    if "partition" not in actions.column_names:
        return tiers.due(sizes)
    groups: dict[str, list[int]] = {}
    for size, part in zip(sizes, actions.column("partition").to_pylist(), strict=True):
        groups.setdefault(json.dumps(part, sort_keys=True, default=str), []).append(size)
    return any(tiers.due(g) for g in groups.values())


def _key(values: Mapping[str, Any]) -> str:
    return json.dumps(dict(values), sort_keys=True)


@dataclass
class AppendState:
    """What a process knows of one table: enough to append without reading the log."""

    version: int
    schema: pa.Schema
    partition_by: list[str]
    checkpoint_interval: int
    # Active files: log path → (size in bytes, partition values as JSON).
    files: dict[str, tuple[int, str]] = field(default_factory=dict)

    @classmethod
    def of(cls, dt: DeltaTable) -> AppendState | None:
        """The state of snapshot ``dt``; None when its appends must go through delta-rs."""
        why = unsupported(dt)
        if why:
            log.debug("appends to %s go through delta-rs: it %s", dt.table_uri, why)
            return None
        meta = dt.metadata()
        parts = list(meta.partition_columns)
        actions = pa.table(dt.get_add_actions(flatten=True))  # type: ignore[arg-type]
        cols = [f"partition.{p}" for p in parts]
        files = {}
        for row in actions.select(["path", "size_bytes", *cols]).to_pylist():
            values = {p: partition_string(row[c]) for p, c in zip(parts, cols, strict=True)}
            files[row["path"]] = (int(row["size_bytes"]), _key(values))
        config = meta.configuration or {}
        interval = int(config.get("delta.checkpointInterval") or 100)
        return cls(
            version=dt.version(),
            schema=pa.schema(dt.schema().to_arrow()),  # type: ignore[arg-type]
            partition_by=parts,
            checkpoint_interval=max(interval, 1),
            files=files,
        )

    def due(self, tiers: Tiers) -> bool:
        """Whether a size tier of some partition is full (auto-compaction's trigger)."""
        sizes: dict[str, list[int]] = {}
        for size, part in self.files.values():
            if size < tiers.small:
                sizes.setdefault(part, []).append(size)
        return any(tiers.due(s) for s in sizes.values())

    def apply(self, actions: list[dict[str, Any]]) -> bool:
        """Bring the state past a commit of someone else's; False when it changed the schema,
        protocol or properties (the state is then stale)."""
        for a in actions:
            if "metaData" in a or "protocol" in a:
                return False
            if "add" in a:
                add = a["add"]
                self.files[add["path"]] = (int(add["size"]), _key(add["partitionValues"] or {}))
            elif "remove" in a:
                self.files.pop(a["remove"]["path"], None)
        return True


class Stale(Exception):
    """The table changed under the state (schema, protocol, properties): nothing committed."""


def fits(state: AppendState, table: pa.Table, max_bytes: int) -> bool:
    """Whether ``table`` (conformed to the table's schema) can be appended here, not by
    delta-rs: the schema is the table's, non-nullable columns hold no nulls, the batch is a
    small file, partition values need no escaping."""
    if table.num_rows == 0 or table.nbytes > max_bytes or table.schema != state.schema:
        return False
    for f in state.schema:
        if not f.nullable and table.column(f.name).null_count:
            return False  # delta-rs refuses it with its own message
    for p in state.partition_by:
        col = table.column(p)
        if col.null_count:
            return False
        values = pc.unique(col).to_pylist()
        if len(values) > _MAX_PARTITIONS:
            return False
        if not all(_PLAIN_VALUE.fullmatch(str(partition_string(v))) for v in values):
            return False
    return True


def append(
    store: LogStore,
    state: AppendState,
    table: pa.Table,
    metadata: Mapping[str, str] | None,
) -> int:
    """Commit ``table``'s rows (``fits`` said yes) after ``state.version``; returns the version
    committed and leaves ``state`` there. Raises :class:`Stale` when the table changed
    underneath (nothing committed, no file left)."""
    now = int(time.time() * 1000)
    adds: list[dict[str, Any]] = []
    written: list[str] = []
    try:
        for values, rows in _partitions(table, state.partition_by):
            folder = "/".join(f"{k}={v}" for k, v in values.items())
            name = f"part-00000-{uuid.uuid4()}-c000.snappy.parquet"
            path = f"{folder}/{name}" if folder else name
            buf = pa.BufferOutputStream()
            pq.write_table(rows, buf, row_group_size=ROW_GROUP_ROWS, **parquet_options(rows))
            data = buf.getvalue().to_pybytes()
            written.append(path)
            store.write_bytes(path, data, sync=True)
            adds.append(
                {
                    "path": path,
                    "partitionValues": values,
                    "size": len(data),
                    "modificationTime": now,
                    "dataChange": True,
                    "stats": json.dumps(file_stats(rows), separators=(",", ":")),
                }
            )
        txn = uuid.uuid4().hex
        info = {
            "timestamp": now,
            "operation": "WRITE",
            "operationParameters": {
                "mode": "Append",
                **({"partitionBy": json.dumps(state.partition_by)} if state.partition_by else {}),
            },
            "readVersion": state.version,
            "isolationLevel": "WriteSerializable",
            "isBlindAppend": True,
            "engineInfo": "matrixos",
            "clientVersion": "matrixos",
            "operationMetrics": {
                "num_added_files": len(adds),
                "num_removed_files": 0,
                "num_added_rows": table.num_rows,
            },
            **dict(metadata or {}),
            "txnId": txn,
        }
        body = "\n".join(
            json.dumps(a, separators=(",", ":"))
            for a in [{"commitInfo": info}, *({"add": a} for a in adds)]
        ).encode()
    except BaseException:
        for path in written:
            store.remove(path)
        raise
    if not store.exists(commit_name(state.version)):
        # Checked on every append (a stat locally, a HEAD on S3): log clean-up removes commits
        # older than the retention (after a checkpoint), and a table deleted and made again at
        # the same path starts its log afresh. Committing after a version that is not there
        # would leave a gap in the log (a table no reader opens) or rows readers skip.
        for path in written:
            store.remove(path)
        raise Stale(f"version {state.version} is no longer in the log")
    version = state.version + 1
    while not store.put_if_absent(commit_name(version), body, sync=False):
        try:
            raw = store.read(commit_name(version))
        except FileNotFoundError:
            continue  # S3 said taken, the read raced a listing: ask again
        actions = [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
        if any(a.get("commitInfo", {}).get("txnId") == txn for a in actions):
            break  # a retried PUT found its own first try, which had landed
        if not state.apply(actions):
            for path in written:
                store.remove(path)
            raise Stale(f"version {version} changed the table's schema, protocol or properties")
        state.version = version
        version += 1
    state.version = version
    for a in adds:
        state.files[a["path"]] = (a["size"], _key(a["partitionValues"]))
    return version


def _partitions(table: pa.Table, parts: list[str]) -> list[tuple[dict[str, str], pa.Table]]:
    """``table``'s rows per partition (partition values spelled as the log spells them),
    without the partition columns (Delta keeps them in the log, not the files)."""
    if not parts:
        return [({}, table)]
    data = table.drop_columns(parts)
    keys = table.select(parts).group_by(parts).aggregate([]).to_pylist()
    out = []
    for key in keys:
        mask = None
        for p in parts:
            m = pc.equal(table.column(p), pa.scalar(key[p], table.schema.field(p).type))
            mask = m if mask is None else pc.and_(mask, m)
        values = {p: str(partition_string(key[p])) for p in parts}
        out.append((values, data.filter(mask)))
    return out


# ----------------------------------------------------------------------------------- upkeep
class Maintenance:
    """One daemon thread per process running table upkeep (checkpoints, auto-compaction) off
    the commit path. A job submitted under a key already waiting is dropped: one table's
    upkeep coalesces however many appends asked for it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._jobs: dict[Hashable, Callable[[], Any]] = {}
        self._running = 0
        self._thread: threading.Thread | None = None

    def submit(self, key: Hashable, job: Callable[[], Any]) -> None:
        with self._cond:
            if key in self._jobs:
                return
            self._jobs[key] = job
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._work, name="matrixos-delta-upkeep", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()

    def _work(self) -> None:
        while True:
            with self._cond:
                if not self._jobs:
                    self._cond.wait(timeout=30)
                    if not self._jobs:
                        self._thread = None
                        self._cond.notify_all()
                        return
                key = next(iter(self._jobs))
                job = self._jobs.pop(key)
                self._running += 1
            try:
                job()
            except Exception:
                log.warning("background upkeep %r failed", key, exc_info=True)
            finally:
                with self._cond:
                    self._running -= 1
                    self._cond.notify_all()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until no upkeep is waiting or running; False when ``timeout`` passed first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while self._jobs or self._running:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(timeout=left)
        return True

    def _forked(self) -> None:
        """In a forked child: the parent's thread and jobs are not ours."""
        self._cond = threading.Condition()
        self._jobs = {}
        self._running = 0
        self._thread = None


MAINTENANCE = Maintenance()
os.register_at_fork(after_in_child=MAINTENANCE._forked)


# Upkeep asked for by a process's last appends runs before it exits (a CLI append, a job),
# after the final writes of background writers (which may ask for more), and before the
# libraries it needs shut down (``before_exit``).
before_exit(lambda: MAINTENANCE.wait(300), stage=UPKEEP)


def wait_for_maintenance(timeout: float | None = None) -> bool:
    """Wait until this process's background table upkeep (checkpoints, auto-compactions after
    appends) has finished; False when ``timeout`` seconds passed first.

    Example:
        >>> wait_for_maintenance(timeout=10)
        True
    """
    return MAINTENANCE.wait(timeout)
