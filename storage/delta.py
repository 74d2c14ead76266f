"""Delta Lake tables through deltalake (delta-rs): writes, time travel, maintenance.

Atomicity comes from Delta's commit protocol: data files are written first and become visible
only when the JSON commit lands (a conditional PUT on S3), so a crash leaves the previous version.
Blind appends never conflict; MERGE/UPDATE/DELETE that lose a race to another commit are retried
within a bounded budget and then fail with ``ConcurrentWriteError``. Compactions (OPTIMIZE,
ZORDER, auto-compaction) are committed by ``_delta_compaction``, not by delta-rs, whose rebase
let two compactions both commit and duplicate rows; docs/architecture.md has the whole story.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, WriterProperties, write_deltalake
from deltalake.exceptions import (
    CommitFailedError,
    DeltaError,
    DeltaProtocolError,
    SchemaMismatchError,
    TableNotFoundError,
)
from tenacity import (
    RetryError,
)

from matrixos._lru import LRU
from matrixos.errors import (
    ConcurrentWriteError,
    MatrixOSError,
    NotSupported,
    SchemaMismatch,
    SQLError,
    TableExists,
    TableNotFound,
    VersionNotFound,
)
from matrixos.storage import _delta_append as fast
from matrixos.storage._delta_append import wait_for_maintenance
from matrixos.storage._delta_compaction import (
    ROW_GROUP_ROWS,
    CompactionConflict,
    Tiers,
    checkpoint,
    compact,
)
from matrixos.storage._delta_compaction import unsupported as compaction_unsupported
from matrixos.storage._delta_log import is_latest_on_s3
from matrixos.storage._errors import is_storage_failure, storage_error, version_not_found
from matrixos.storage._retry import commit_retrying, gave_up
from matrixos.storage.arrow import normalize_for_delta, to_arrow_table
from matrixos.storage.conform import cast_to, check_merge_source, conform
from matrixos.storage.options import StorageOptions
from matrixos.storage.tablestore import (
    TableStore,
    WriteResult,
    has_folder,
    sort_columns,
    target_file_bytes,
    writer_settings,
)

if TYPE_CHECKING:
    import fsspec

    from matrixos.config import Settings
    from matrixos.storage.warehouse import Warehouse

__all__ = ["DeltaStore", "WriteResult", "wait_for_maintenance"]

log = logging.getLogger(__name__)
T = TypeVar("T")

# The snapshot each table's last write left behind, per process: the next write brings it up to
# date with ``update_incremental`` (only the commits since) instead of reading the log again
# from its last checkpoint (~15 ms a write at 1,000 versions). A writer takes the handle out
# while it works (``pop``), so two threads never share one; a failed write drops it.
_WRITERS: LRU[tuple[str, str], DeltaTable] = LRU(64)
# Row groups of ROW_GROUP_ROWS rows (delta-rs writes 1M): a filter skips the row groups its
# statistics rule out (a point query on a 1M-row table reads one, not the whole file), and
# DuckDB scans a file's row groups in parallel (one per thread). Snappy, as delta-rs defaults.
WRITER_PROPERTIES = WriterProperties(max_row_group_size=ROW_GROUP_ROWS, compression="SNAPPY")
# What each table's last small append left behind (``_delta_append``): the next one commits
# after it without reading the log (``_BY_DELTA_RS``: that table's appends go through delta-rs).
# A writer takes the state out while it works, as with ``_WRITERS``.
_APPENDERS: LRU[tuple[str, str], fast.AppendState | str] = LRU(64)
_BY_DELTA_RS = "delta-rs"

# Reader features whose meaning MatrixOS honours when it reads files itself (see engine.scan).
SUPPORTED_READER_FEATURES = frozenset(
    {
        "columnMapping",
        "deletionVectors",
        "timestampNtz",
        "typeWidening",
        "typeWidening-preview",
        "v2Checkpoint",
        "vacuumProtocolCheck",
        "checkpointProtection",
    }
)


class DeltaStore(TableStore):
    """Operations on the Delta table at one location.

    Example:
        >>> import tempfile, pyarrow as pa
        >>> s = DeltaStore(tempfile.mkdtemp() + "/t")
        >>> s.create(pa.table({"id": [1, 2]})).version
        0
    """

    def __init__(
        self,
        location: str,
        storage_options: Mapping[str, str] | None = None,
        *,
        commit_retries: int = 20,
        auto_compact_min_files: int = 0,
        name: str | None = None,
        small_file_bytes: int = 16 * 1024 * 1024,
        target_file_bytes: int = 128 * 1024 * 1024,
        sort_by: Sequence[str] = (),
    ) -> None:
        self.location = location
        self.storage_options = dict(storage_options) if storage_options else None
        self.commit_retries = commit_retries
        self.auto_compact_min_files = auto_compact_min_files
        # The catalog name, for messages ("table raw.events has versions 0 to 3").
        self.label = f"table {name}" if name else f"the Delta table at {location}"
        self.small_file_bytes = small_file_bytes
        self.target_file_bytes = target_file_bytes
        # The order compaction writes rows in (table property ``matrixos.sort_by``).
        self.sort_by = list(sort_by)
        self._arrow_fs: Any = None  # _filesystem(); False: none native

    format = "delta"
    partitioned = True
    file_lists = True

    @classmethod
    def configured(
        cls,
        location: str,
        warehouse: Warehouse,
        settings: Settings,
        *,
        name: str,
        properties: Mapping[str, str],
    ) -> DeltaStore:
        return cls(
            location,
            warehouse.delta_options(location),
            **writer_settings(settings, properties, name),
            small_file_bytes=settings.small_file_bytes,
            target_file_bytes=target_file_bytes(properties, settings.target_file_bytes, name),
            sort_by=sort_columns(properties, name),
        )

    @classmethod
    def detect(cls, location: str, fs: fsspec.AbstractFileSystem | None) -> bool:
        return has_folder(location, "_delta_log", fs)

    def __repr__(self) -> str:
        return f"DeltaStore({self.location!r})"

    # -- reading ----------------------------------------------------------------------------
    def exists(self) -> bool:
        try:
            return bool(DeltaTable.is_deltatable(self.location, self.storage_options))
        except Exception as e:
            raise _translate(e, f"cannot look for a Delta table at {self.location}", self) from e

    def version(self, snapshot: DeltaTable | None = None) -> int:
        return int((snapshot or self.open()).version())

    def is_latest(self, snapshot: DeltaTable) -> bool:
        # On a local disk two stats tell it (~10 us, where update_incremental lists the log:
        # ~1.5 ms): no commit after the handle's, and its own commit (or a checkpoint at it)
        # still there, so a table deleted and written again at this path is not taken for it.
        # On S3 one LIST of the log from the handle's version on answers both (_delta_log).
        v = int(snapshot.version())
        if "://" in self.location:
            return is_latest_on_s3(self.location, self.storage_options, v)
        log = os.path.join(self.location, "_delta_log")
        if os.path.exists(os.path.join(log, f"{v + 1:020d}.json")):
            return False
        return os.path.exists(os.path.join(log, f"{v:020d}.json")) or os.path.exists(
            os.path.join(log, f"{v:020d}.checkpoint.parquet")
        )

    def schema(self, snapshot: DeltaTable | None = None) -> pa.Schema:
        return _arrow_schema(snapshot or self.open())

    def partition_by(self, snapshot: DeltaTable | None = None) -> list[str]:
        return list((snapshot or self.open()).metadata().partition_columns)

    def dataset(self, version: int | None = None, timestamp: datetime | str | None = None) -> Any:
        """A ``pyarrow.dataset`` of the snapshot (the SQL engine reads Delta files itself:
        ``engine.scan``), read through a native pyarrow filesystem where there is one."""
        return self.open(version, timestamp).to_pyarrow_dataset(filesystem=self._filesystem())

    def _filesystem(self) -> Any:
        """A native pyarrow filesystem rooted at the table (None: deltalake's own).

        deltalake's default is a filesystem written in Python: every read takes the GIL, and a
        read pyarrow prefetched that completes while the interpreter shuts down aborts the
        process ("terminate called without an active exception": the I/O thread cannot take
        the GIL and is unwound through a C++ destructor). CLI commands died that way at exit.
        """
        if self._arrow_fs is None:
            from pyarrow import fs as pafs

            scheme, sep, rest = self.location.partition("://")
            try:
                if not sep or scheme == "file":
                    root = os.path.abspath(rest if sep else self.location)
                    self._arrow_fs = pafs.SubTreeFileSystem(root, pafs.LocalFileSystem())
                elif scheme in ("s3", "s3a"):
                    s3 = StorageOptions.from_mapping(self.storage_options).to_pyarrow()
                    self._arrow_fs = pafs.SubTreeFileSystem(rest.rstrip("/"), s3)
                else:
                    self._arrow_fs = False
            except (MatrixOSError, ValueError):  # options pyarrow cannot take: deltalake reads
                self._arrow_fs = False
        return self._arrow_fs or None

    def describe(self, dt: DeltaTable | None = None) -> dict[str, Any]:
        dt = dt or self.open()
        actions = pa.table(dt.get_add_actions(flatten=False))  # type: ignore[arg-type]
        return {
            "version": dt.version(),
            "partition_by": list(dt.metadata().partition_columns),
            "num_files": actions.num_rows,
            "size_bytes": int(pc.sum(actions.column("size_bytes")).as_py() or 0),
        }

    def open(
        self, version: int | None = None, timestamp: datetime | str | None = None
    ) -> DeltaTable:
        """The table at its latest version, or as of ``version`` / ``timestamp``."""
        try:
            dt = self._load(version)
            if timestamp is not None:
                self._load_as_of(dt, timestamp)
        except TableNotFoundError as e:
            raise TableNotFound(f"no Delta table at {self.location}") from e
        except DeltaProtocolError as e:
            raise NotSupported(f"Delta table at {self.location}: {e}") from e
        except (DeltaError, OSError, ValueError, OverflowError) as e:
            missing = self._missing_version(version) if version is not None else None
            if missing is not None:
                raise missing from e
            raise _translate(e, f"cannot open Delta table at {self.location}", self) from e
        check_readable(dt)
        return dt

    def _load(self, version: int | None) -> DeltaTable:
        """``DeltaTable(...)``, read again when the log listing showed a gap: a directory read
        while writers add commits is no snapshot (readdir may return commit N+1 and miss N,
        created a moment before), which delta-kernel reports as "Expected contiguous commit
        files" (seen once in 4,112 torture operations on a local disk)."""
        for attempt in range(3):
            try:
                return DeltaTable(
                    self.location, version=version, storage_options=self.storage_options
                )
            except DeltaError as e:
                if "contiguous commit files" not in str(e) or attempt == 2:
                    raise
                time.sleep(0.01 * (attempt + 1))
        raise AssertionError("unreachable")  # pragma: no cover

    def history(self, limit: int | None = None) -> list[dict[str, Any]]:
        return self.open().history(limit)

    def _missing_version(self, version: int) -> VersionNotFound | None:
        """The error for ``VERSION AS OF version`` past the table's history (delta-kernel says
        "LogSegment end version 3 not the same as the specified end version 99"); None when
        the latest version cannot be read either (then that is the error)."""
        try:
            dt = DeltaTable(self.location, storage_options=self.storage_options)
            latest = dt.version()
            earliest = min((int(h["version"]) for h in dt.history() if "version" in h), default=0)
        except Exception:
            return None
        return version_not_found(self.label, version, earliest, latest)

    def _load_as_of(self, dt: DeltaTable, timestamp: datetime | str) -> None:
        """Load the last version committed at or before ``timestamp``.

        Versions are matched against the commit times that ``history()`` (and DESCRIBE HISTORY)
        shows, so a time copied from there names that version. delta-rs's ``load_as_version``
        compares log-file mtimes instead: written a moment after the commit's own timestamp
        (whole seconds on some object stores), and it answers a time before the first commit
        with the first version, rows the table did not have yet.
        """
        when = (
            timestamp
            if isinstance(timestamp, datetime)
            else datetime.fromisoformat(str(timestamp).strip().replace("Z", "+00:00"))
        )
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        stamps = {
            int(h["version"]): int(h["timestamp"])
            for h in dt.history()
            if h.get("version") is not None and h.get("timestamp") is not None
        }
        if set(stamps) != set(range(min(stamps, default=0), dt.version() + 1)):
            dt.load_as_version(when)  # some commit carries no commitInfo: mtimes only
            return
        ms = when.timestamp() * 1000
        versions = [v for v, ts in stamps.items() if ts <= ms]
        if not versions:
            first = min(stamps)
            created = datetime.fromtimestamp(stamps[first] / 1000, UTC)
            raise VersionNotFound(
                f"{self.label} has no version as of {when.isoformat()}: "
                f"its earliest version {first} was committed at {created.isoformat()}"
            )
        dt.load_as_version(max(versions))

    # -- writing ----------------------------------------------------------------------------
    def create(
        self,
        data: Any = None,
        *,
        schema: pa.Schema | None = None,
        partition_by: Sequence[str] | None = None,
        properties: Mapping[str, str] | None = None,
        name: str | None = None,
        description: str | None = None,
    ) -> WriteResult:
        """Create the table from ``data`` or an empty one from ``schema``; refuses if one exists."""
        if self.exists():
            raise TableExists(f"a Delta table already exists at {self.location}")
        # A table dropped and made again here: a kept handle of the old one would commit past
        # the new log's end.
        _WRITERS.pop(self._writer_key())
        _APPENDERS.pop(self._writer_key())
        part = list(partition_by or [])
        try:
            if data is None:
                if schema is None:
                    raise SchemaMismatch("create a table from data or from a schema")
                schema = normalize_for_delta(schema.empty_table()).schema
                _check_partitions(schema, part)
                DeltaTable.create(
                    self.location,
                    schema,
                    mode="error",
                    partition_by=part or None,
                    name=name,
                    description=description,
                    configuration=dict(properties or {}) or None,
                    storage_options=self.storage_options,
                )
            else:
                table = normalize_for_delta(to_arrow_table(data))
                if schema is not None:
                    table = cast_to(table, schema)
                _check_partitions(table.schema, part)
                write_deltalake(
                    self.location,
                    table,
                    mode="error",
                    partition_by=part or None,
                    name=name,
                    description=description,
                    configuration=dict(properties or {}) or None,
                    storage_options=self.storage_options,
                    target_file_size=self.target_file_bytes,
                    writer_properties=WRITER_PROPERTIES,
                )
        except MatrixOSError:
            raise
        except Exception as e:
            raise _translate(e, f"cannot create table at {self.location}", self) from e
        return WriteResult(0, {})

    def append(
        self, data: Any, *, evolve: bool = False, commit_metadata: Mapping[str, str] | None = None
    ) -> WriteResult:
        """Add rows; with ``evolve`` new columns are added to the schema.

        ``commit_metadata`` is recorded in the commit (``commitInfo``; ``history()`` shows it),
        atomically with the rows.
        """
        return self._write(data, "append", evolve=evolve, commit_metadata=commit_metadata)

    def overwrite(
        self,
        data: Any,
        *,
        evolve: bool = False,
        predicate: str | None = None,
        commit_metadata: Mapping[str, str] | None = None,
    ) -> WriteResult:
        """Replace all rows (or those matching ``predicate``); ``evolve`` may replace the schema."""
        return self._write(
            data, "overwrite", evolve=evolve, predicate=predicate, commit_metadata=commit_metadata
        )

    def _write(
        self,
        data: Any,
        mode: Literal["append", "overwrite"],
        *,
        evolve: bool,
        predicate: str | None = None,
        commit_metadata: Mapping[str, str] | None = None,
    ) -> WriteResult:
        data = normalize_for_delta(to_arrow_table(data))
        if mode == "append":
            done = self._small_append(data, evolve, commit_metadata)
            if done is not None:
                return done
        schema_mode: Literal["merge", "overwrite"] | None = None
        if evolve:
            schema_mode = "overwrite" if mode == "overwrite" and predicate is None else "merge"

        committed: list[DeltaTable] = []

        # A full overwrite must never be rebased by delta-rs: its conflict checker ignores a
        # concurrent compaction's (dataChange=false) removes, so a rebased overwrite would keep
        # the compacted file and bring the old rows back. With no rebase it commits only at
        # the version after the snapshot it replaced; run_with_retries redoes it otherwise.
        # (With a predicate, delta-rs sees the compaction's new file as a conflict.)
        rebases = 0 if mode == "overwrite" and predicate is None else max(self.commit_retries, 1)

        def write(dt: DeltaTable) -> dict[str, Any]:
            committed[:] = [dt]  # after write_deltalake, ``dt`` stands at our commit
            table = conform(data, _arrow_schema(dt), evolve=evolve, overwrite=mode == "overwrite")
            write_deltalake(
                dt,
                table,
                mode=mode,  # type: ignore[arg-type]
                schema_mode=schema_mode,
                predicate=predicate,
                storage_options=self.storage_options,
                target_file_size=self.target_file_bytes,
                commit_properties=_commit_properties(rebases, commit_metadata),
                writer_properties=WRITER_PROPERTIES,
            )
            return {"num_added_rows": table.num_rows}

        # delta-rs refuses an append whose snapshot went stale under a commit that removed files
        # (a concurrent DELETE/UPDATE/MERGE/OPTIMIZE: "deleted data this operation read"), so
        # even blind appends need retrying on a fresh snapshot. Nothing was committed, so a
        # retry is always safe, and an append is not held to the DML retry budget.
        retries = max(self.commit_retries, 10) if mode == "append" else self.commit_retries
        result = self.run_with_retries(mode, write, retries=retries)
        # The snapshot the write left behind: no second open of the log (~40 ms at 1,000
        # commits) just to count the small files; the compaction runs off the commit path.
        auto = mode == "append" and committed and self.auto_compact_min_files > 0
        if auto and fast.due(committed[0], self._tiers()):
            fast.MAINTENANCE.submit((self._writer_key(), "compact"), self._autocompact)
        return result

    def _small_append(
        self, data: pa.Table, evolve: bool, metadata: Mapping[str, str] | None
    ) -> WriteResult | None:
        """Append ``data`` as ``_delta_append`` does; None when delta-rs must do it."""
        key = self._writer_key()
        for _ in range(3):
            kept = _APPENDERS.pop(key)
            if kept == _BY_DELTA_RS:
                _APPENDERS.put(key, kept)
                return None
            state = kept if isinstance(kept, fast.AppendState) else self._append_state()
            if state is None:
                _APPENDERS.put(key, _BY_DELTA_RS)
                return None
            table = conform(data, state.schema, evolve=evolve, overwrite=False)
            if not fast.fits(state, table, min(self.small_file_bytes, self.target_file_bytes)):
                _APPENDERS.put(key, state)
                return None
            try:
                store = fast.log_store(self.location, self.storage_options)
                version = fast.append(store, state, table, metadata)
            except fast.Stale as e:
                log.info("append to %s: %s; reading the table again", self.location, e)
                continue
            except MatrixOSError:
                raise
            except Exception as e:
                raise _translate(e, f"append to {self.location} failed", self) from e
            _APPENDERS.put(key, state)
            self._upkeep(state, version)
            return WriteResult(version, {"num_added_rows": table.num_rows})
        return None

    def _append_state(self) -> fast.AppendState | None:
        dt = self._writable()
        try:
            return fast.AppendState.of(dt)
        finally:
            _WRITERS.put(self._writer_key(), dt)

    def _upkeep(self, state: fast.AppendState, version: int) -> None:
        """Checkpoint and auto-compaction after a small append, in the background."""
        key = self._writer_key()
        if version % state.checkpoint_interval == 0:
            fast.MAINTENANCE.submit(
                (key, "checkpoint", version),
                lambda: checkpoint(self.location, self.storage_options, version),
            )
        if self.auto_compact_min_files > 0 and state.due(self._tiers()):
            fast.MAINTENANCE.submit((key, "compact"), self._autocompact)

    def merge(
        self,
        data: Any,
        on: Sequence[str],
        *,
        evolve: bool = False,
        when_matched: Literal["update", "ignore"] = "update",
        when_not_matched: Literal["insert", "ignore"] = "insert",
        delete_not_matched_by_source: bool = False,
        commit_metadata: Mapping[str, str] | None = None,
    ) -> WriteResult:
        """Upsert ``data`` on the key columns ``on`` (``commit_metadata``: as for ``append``)."""
        if not on:
            raise SchemaMismatch("merge needs at least one key column in on=[...]")
        source = normalize_for_delta(to_arrow_table(data))
        schema = _arrow_schema(self.open())
        source = conform(source, schema, evolve=evolve, overwrite=False)
        missing = [k for k in on if k not in source.column_names or k not in schema.names]
        if missing:
            raise SchemaMismatch(f"merge key column(s) {missing} missing from the table or data")
        check_merge_source(source, on, inserts=when_not_matched == "insert")
        predicate = " AND ".join(
            [f"t.{quote_ident(k)} = s.{quote_ident(k)}" for k in on] + _key_ranges(source, on)
        )

        def run(dt: DeltaTable) -> dict[str, Any]:
            m = dt.merge(
                source,
                predicate,
                source_alias="s",
                target_alias="t",
                merge_schema=evolve,
                commit_properties=_commit_properties(self.commit_retries, commit_metadata),
            )
            if when_matched == "update":
                m = m.when_matched_update_all()
            if when_not_matched == "insert":
                m = m.when_not_matched_insert_all()
            if delete_not_matched_by_source:
                m = m.when_not_matched_by_source_delete()
            return m.execute()

        return self.run_with_retries("merge", run)

    def merge_statement(self, build: Callable[[DeltaTable], Any]) -> WriteResult:
        """Run a MERGE built by ``build(dt)`` (a ``TableMerger``), with retries."""
        return self.run_with_retries("merge", lambda dt: build(dt).execute())

    def delete(self, predicate: str | None = None) -> WriteResult:
        """Delete rows matching ``predicate`` (a SQL expression), or all rows."""
        return self.run_with_retries(
            "delete",
            lambda dt: dt.delete(
                predicate, commit_properties=_commit_properties(self.commit_retries, None)
            ),
        )

    def update(self, updates: Mapping[str, str], where: str | None = None) -> WriteResult:
        """Set columns to SQL expressions on rows matching ``where``."""
        if not updates:
            raise SchemaMismatch("update needs at least one column to set")
        return self.run_with_retries(
            "update",
            lambda dt: dt.update(
                updates=dict(updates),
                predicate=where,
                commit_properties=_commit_properties(self.commit_retries, None),
            ),
        )

    def run_with_retries(
        self,
        op: str,
        fn: Callable[[DeltaTable], dict[str, Any]],
        *,
        retries: int | None = None,
    ) -> WriteResult:
        """Run ``fn`` on a fresh snapshot; retry when a concurrent commit beat it.

        ``retries`` defaults to the store's ``commit_retries``.
        """
        retries = self.commit_retries if retries is None else retries
        try:
            for attempt in commit_retrying((CommitFailedError, CompactionConflict), retries):
                with attempt:
                    dt = self._writable()
                    try:
                        metrics = fn(dt)
                    except CompactionConflict as e:
                        log.info("%s on %s: %s; retrying", op, self.location, e)
                        raise
                    except CommitFailedError as e:
                        if "append-only" in str(e):  # a table property, not a conflict
                            raise NotSupported(
                                f"{op} on {self.location} refused: the table is append-only "
                                "(delta.appendOnly = true); only appends are allowed",
                                hint="rows can be added, never changed or removed",
                            ) from None
                        log.info("%s on %s conflicted; retrying", op, self.location)
                        raise
                    except MatrixOSError:
                        raise
                    except Exception as e:
                        raise _translate(e, f"{op} on {self.location} failed", self) from e
                    # ``dt`` stands at our commit (see _write): its version is ours.
                    result = WriteResult(dt.version(), dict(metrics or {}))
                    _WRITERS.put(self._writer_key(), dt)
                    return result
        except RetryError as e:
            raise gave_up(op, self.location, retries) from e
        raise AssertionError("unreachable")  # pragma: no cover

    def _writer_key(self) -> tuple[str, str]:
        return (self.location, repr(sorted((self.storage_options or {}).items())))

    def _writable(self) -> DeltaTable:
        """The latest snapshot to write on: the last write's handle brought up to date, or the
        log opened afresh (no handle yet, or it could not follow: a vacuumed log, a listing
        with a gap)."""
        dt = _WRITERS.pop(self._writer_key())
        if dt is not None:
            try:
                dt.update_incremental()
            except Exception as e:
                log.debug("reopening %s: %s", self.location, e)
            else:
                check_readable(dt)
                return dt
        return self.open()

    # -- maintenance ------------------------------------------------------------------------
    def optimize(
        self, zorder: Sequence[str] | None = None, *, retries: int | None = None
    ) -> dict[str, Any]:
        """Compact small files (and z-order by ``zorder`` columns when given).

        Committed by :mod:`matrixos.storage._delta_compaction`, never by delta-rs's optimize
        (which rebases over a concurrent compaction and duplicates its rows): the commit is a
        put-if-absent, checked against every commit that landed meanwhile, so a compaction
        never removes a file a concurrent commit already removed and blind appends never
        conflict with it. A lost race is retried on a fresh snapshot up to ``retries`` times
        (default ``commit_retries``), then raises ``ConcurrentWriteError``.

        A table with a sort order (property ``matrixos.sort_by``) has each partition holding
        small files rewritten whole, rows sorted by those columns and cut at the target size
        (auto-compaction sorts the files it merges).
        """
        return self._compact(zorder, retries, None)

    def _compact(
        self, zorder: Sequence[str] | None, retries: int | None, tiers: Tiers | None
    ) -> dict[str, Any]:
        return self.run_with_retries(
            "optimize",
            lambda dt: compact(
                dt,
                self.location,
                self.storage_options,
                target_size=self.target_file_bytes,
                zorder=zorder,
                tiers=tiers,
                sort_by=self.sort_by,
            ),
            retries=retries,
        ).metrics

    def vacuum(
        self, retention_hours: int | None = None, *, dry_run: bool = False, enforce: bool = True
    ) -> list[str]:
        """Delete files no version within the retention period needs; returns their paths."""
        try:
            return list(
                self.open().vacuum(
                    retention_hours,
                    dry_run=dry_run,
                    enforce_retention_duration=enforce,
                    # full: also files no commit ever referenced (a writer that died before
                    # committing); delta-rs's default "lite" mode only sees removed files.
                    full=True,
                )
            )
        except Exception as e:
            raise _translate(e, f"vacuum of {self.location} failed", self) from e

    def small_files(self, dt: DeltaTable | None = None) -> int:
        dt = dt or self.open()
        sizes = pa.table(dt.get_add_actions(flatten=False)).column("size_bytes")
        return int(pa.compute.sum(pa.compute.less(sizes, self.small_file_bytes)).as_py() or 0)

    def _tiers(self) -> Tiers:
        return Tiers(self.small_file_bytes, max(self.auto_compact_min_files, 2))

    def maybe_autocompact(self, dt: DeltaTable | None = None) -> dict[str, Any] | None:
        """Compact now when a partition holds ``auto_compact_min_files`` small files (see
        ``Tiers``), e.g. after that many small appends. (Appends ask for it in the background:
        ``wait_for_maintenance``.)"""
        if self.auto_compact_min_files <= 0:
            return None
        dt = dt or self.open()
        if not fast.due(dt, self._tiers()) or compaction_unsupported(dt):
            return None
        return self._autocompact()

    def _autocompact(self) -> dict[str, Any] | None:
        log.info("auto-compacting %s", self.location)
        try:
            # One retry: a writer that lost the race leaves the work to whoever won it, or to
            # the next append that finds the small files still there. Size-tiered, so that
            # appends do not rewrite the whole table every few commits; OPTIMIZE compacts all.
            return self._compact(None, 1, self._tiers())
        except ConcurrentWriteError as e:  # a concurrent writer won: expected, not a fault
            log.info("auto-compaction of %s skipped: %s", self.location, e)
            return None
        except MatrixOSError as e:
            log.warning("auto-compaction of %s skipped: %s", self.location, e)
            return None


def _commit_properties(retries: int, metadata: Mapping[str, str] | None) -> CommitProperties:
    """``retries``: how often delta-rs may rebase the commit over commits that beat it.

    Rebasing MERGE/UPDATE/DELETE and appends is safe: delta-rs's checker refuses a rebase over
    a commit that removed or rewrote files they read (a compaction's new files count as
    changed data, so a DML that read the compacted files conflicts), and lets a blind append
    or a DML on other files through, the conflicts that used to fail a whole attempt. It is
    not safe for compactions and full overwrites (see ``optimize`` and ``_write``).
    """
    return CommitProperties(
        max_commit_retries=retries, custom_metadata=dict(metadata) if metadata else None
    )


def _key_ranges(source: pa.Table, on: Sequence[str]) -> list[str]:
    """``t.k BETWEEN min AND max`` of the source's keys, for integer and string keys.

    The same rows match with or without it (every source key lies in its range), but delta-rs
    then knows which files the MERGE read: a concurrent commit that only touched files outside
    the range (another writer's appends, say) no longer fails it.
    """
    out = []
    for k in on:
        col = source.column(k)
        t = col.type
        if col.null_count == len(col) or not (
            pa.types.is_integer(t) or pa.types.is_string(t) or pa.types.is_large_string(t)
        ):
            continue
        from sqlglot import exp

        mm = pc.min_max(col)
        lo, hi = (
            exp.Literal.string(v) if isinstance(v, str) else exp.Literal.number(v)
            for v in (mm["min"].as_py(), mm["max"].as_py())
        )
        out.append(f"t.{quote_ident(k)} BETWEEN {lo.sql('postgres')} AND {hi.sql('postgres')}")
    return out


def check_readable(dt: DeltaTable) -> None:
    """Refuse tables using reader features MatrixOS does not honour."""
    features = set(dt.protocol().reader_features or [])
    unknown = sorted(features - SUPPORTED_READER_FEATURES)
    if unknown:
        raise NotSupported(
            f"Delta table at {dt.table_uri} uses reader feature(s) {', '.join(unknown)} "
            "that MatrixOS cannot read correctly; refusing rather than returning wrong rows"
        )


def _arrow_schema(dt: DeltaTable) -> pa.Schema:
    return pa.schema(dt.schema().to_arrow())  # type: ignore[arg-type]


def quote_ident(name: str) -> str:
    """``name`` as a double-quoted identifier of delta-rs's (DataFusion's) SQL, by sqlglot."""
    from sqlglot import exp  # not at import time: ``import matrixos`` stays light

    return str(exp.to_identifier(name, quoted=True).sql(dialect="postgres"))


def _check_partitions(schema: pa.Schema, part: Sequence[str]) -> None:
    missing = [p for p in part if p not in schema.names]
    if missing:
        raise SchemaMismatch(f"partition column(s) {missing} are not in the schema {schema.names}")


def _translate(e: Exception, what: str, store: DeltaStore | None = None) -> MatrixOSError:
    if isinstance(e, MatrixOSError):
        return e
    if isinstance(e, SchemaMismatchError):
        return SchemaMismatch(f"{what}: {e}; nothing was written")
    if isinstance(e, TableNotFoundError):
        return TableNotFound(f"{what}: {e}")
    if isinstance(e, CommitFailedError):
        return ConcurrentWriteError(f"{what}: {e}")
    if isinstance(e, DeltaProtocolError) or (
        isinstance(e, DeltaError) and "Unsupported" in str(e)  # delta-kernel's refusals
    ):
        return NotSupported(f"{what}: {e}")
    if is_storage_failure(e):
        location = store.location if store is not None else what
        endpoint = (store.storage_options or {}).get("AWS_ENDPOINT_URL") if store else None
        return storage_error(e, what, location, endpoint=endpoint)
    return SQLError(f"{what}: {e}")
