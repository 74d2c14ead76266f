"""Lance tables: multimodal rows, vectors and text indexes, with the same operations as Delta.

Each write is one Lance commit (a new manifest). Lance writes the manifest of version N with a
put-if-absent, so two writers racing for one version cannot both win: the loser rebases (appends,
deletes, updates) or retries its merge. On S3 this relies on conditional PUT (``If-None-Match``),
which AWS S3, MinIO and moto honour; ``tests/storage/test_lance_tables.py`` runs two concurrent
writers against moto's server and checks that no commit is lost.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import pyarrow as pa

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
from matrixos.storage._errors import is_storage_failure, storage_error, version_not_found
from matrixos.storage._lance_merge import (
    RECORDED,
    declare_key,
    drop_duplicate_inserts,
    merge_hook,
    merge_properties,
    primary_key,
    settle_merges,
    start_recorded,
    tag_merge,
    untag_merge,
)
from matrixos.storage._lance_merge import (
    sql_literal as sql_literal,  # Lance filter literals, for other modules (ai/rag.py)
)
from matrixos.storage._lease import Lease, merge_lease
from matrixos.storage._retry import commit_retrying, gave_up
from matrixos.storage.arrow import to_arrow_table
from matrixos.storage.delta import cast_to, check_merge_source, conform
from matrixos.storage.tablestore import (
    TableStore,
    WriteResult,
    has_folder,
    writer_settings,
)

if TYPE_CHECKING:
    import fsspec
    from lance import LanceDataset

    from matrixos.config import Settings
    from matrixos.storage.warehouse import Warehouse

log = logging.getLogger(__name__)
T = TypeVar("T")
#: How often a merge whose S3 lease was lost before its commit starts over under a new one.
LEASE_ROUNDS = 3

#: Lance operation class names → the operation names DESCRIBE HISTORY shows (Delta's wording).
_OPERATIONS = {
    "Overwrite": "WRITE",
    "Append": "WRITE",
    "Delete": "DELETE",
    "Update": "UPDATE",
    "Merge": "MERGE",
    "Rewrite": "OPTIMIZE",
    "CreateIndex": "CREATE INDEX",
    "Project": "ALTER TABLE",
    "DataReplacement": "UPDATE",
    "UpdateConfig": "SET TBLPROPERTIES",
}


class LanceStore(TableStore):
    """Operations on the Lance dataset at one location (a folder, local or on an object store).

    Example:
        >>> import tempfile, pyarrow as pa
        >>> s = LanceStore(tempfile.mkdtemp() + "/t")
        >>> s.create(pa.table({"id": [1, 2]})).version
        1
    """

    def __init__(
        self,
        location: str,
        storage_options: Mapping[str, str] | None = None,
        *,
        commit_retries: int = 20,
        auto_compact_min_files: int = 0,
        name: str | None = None,
    ) -> None:
        self.location = location
        self.storage_options = dict(storage_options) if storage_options else None
        self.commit_retries = commit_retries
        self.auto_compact_min_files = auto_compact_min_files
        # The catalog name, for messages ("table raw.events has versions 0 to 3").
        self.label = f"table {name}" if name else f"the Lance table at {location}"

    format = "lance"
    searchable = True

    @classmethod
    def configured(
        cls,
        location: str,
        warehouse: Warehouse,
        settings: Settings,
        *,
        name: str,
        properties: Mapping[str, str],
    ) -> LanceStore:
        return cls(
            location,
            warehouse.lance_options(location),
            **writer_settings(settings, properties, name),
        )

    @classmethod
    def detect(cls, location: str, fs: fsspec.AbstractFileSystem | None) -> bool:
        """A Lance dataset is a folder holding ``_versions/``."""
        return has_folder(location, "_versions", fs)

    def __repr__(self) -> str:
        return f"LanceStore({self.location!r})"

    def dataset(
        self, version: int | None = None, timestamp: datetime | str | None = None
    ) -> LanceDataset:
        return self.open(version, timestamp)

    def describe(self) -> dict[str, Any]:
        ds = self.open()
        return {
            "version": int(ds.version),
            "partition_by": [],
            "num_files": len(ds.get_fragments()),
            "num_rows": ds.count_rows(),
        }

    # -- reading ----------------------------------------------------------------------------
    def exists(self) -> bool:
        try:
            self.open()
        except TableNotFound:
            return False
        return True

    def open(
        self, version: int | None = None, timestamp: datetime | str | None = None
    ) -> LanceDataset:
        """The dataset at its latest version, or as of ``version`` / ``timestamp``."""
        import lance

        try:
            ds = lance.dataset(self.location, version=version, storage_options=self.storage_options)
        except (ValueError, OverflowError) as e:
            if version is not None:
                missing = self._missing_version(version)
                if missing is not None:
                    raise missing from e
            if "not found" in str(e).lower():
                raise TableNotFound(f"no Lance table at {self.location}") from e
            raise _translate(e, f"cannot open Lance table at {self.location}", self) from e
        except Exception as e:
            raise _translate(e, f"cannot open Lance table at {self.location}", self) from e
        if timestamp is not None:
            ds = ds.checkout_version(self._version_as_of(ds, timestamp))
        return ds

    def _missing_version(self, version: int) -> VersionNotFound | None:
        """The error for a ``version`` the dataset does not have (lance calls it "not
        found", like a missing dataset); None when the dataset itself cannot be opened."""
        try:
            latest = self.open()
            versions = [int(v["version"]) for v in latest.versions()]
        except Exception:
            return None
        return version_not_found(self.label, version, min(versions), max(versions))

    def _version_as_of(self, ds: LanceDataset, timestamp: datetime | str) -> int:
        when = (
            timestamp
            if isinstance(timestamp, datetime)
            else datetime.fromisoformat(str(timestamp).strip().replace("Z", "+00:00"))
        )
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        stamps = {int(v["version"]): _aware(v["timestamp"]) for v in ds.versions()}
        versions = [v for v, ts in stamps.items() if ts <= when]
        if not versions:
            first = min(stamps)
            raise VersionNotFound(
                f"{self.label} has no version as of {when.isoformat()}: "
                f"its earliest version {first} was committed at {stamps[first].isoformat()}"
            )
        return max(versions)

    def version(self, snapshot: LanceDataset | None = None) -> int:
        return int((snapshot or self.open()).version)

    def schema(self, snapshot: LanceDataset | None = None) -> pa.Schema:
        return (snapshot or self.open()).schema

    def history(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Commits, newest first, in the shape of Delta's history."""
        ds = self.open()
        out: list[dict[str, Any]] = []
        for v in sorted(ds.versions(), key=lambda v: -int(v["version"])):
            if limit is not None and len(out) >= limit:
                break
            version = int(v["version"])
            op, params = "WRITE", {}
            try:
                tx = ds.read_transaction(version)
            except Exception:  # a manifest without its transaction file (cleaned up)
                tx = None
            if tx is not None:
                props = dict(tx.transaction_properties or {})
                kind = type(tx.operation).__name__
                op = props.pop("matrixos.operation", "") or _OPERATIONS.get(kind, kind.upper())
                params = {"mode": kind.lower(), **props}
                predicate = getattr(tx.operation, "predicate", None)
                if predicate:
                    params["predicate"] = predicate
            out.append(
                {
                    "version": version,
                    "timestamp": int(_aware(v["timestamp"]).timestamp() * 1000),
                    "operation": op,
                    "operationParameters": params,
                    "operationMetrics": dict(v.get("metadata") or {}),
                }
            )
        return out

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
        """Create the dataset from ``data`` or an empty one from ``schema``; refuses if one
        exists."""
        import lance

        if partition_by:
            raise NotSupported(
                "Lance tables are not partitioned; use format='delta' for partitioned tables"
            )
        if self.exists():
            raise TableExists(f"a Lance table already exists at {self.location}")
        if data is None:
            if schema is None:
                raise SchemaMismatch("create a table from data or from a schema")
            table = schema.empty_table()
        else:
            table = to_arrow_table(data)
            if schema is not None:
                table = cast_to(table, schema)
        try:
            ds = lance.write_dataset(
                table,
                self.location,
                mode="create",
                storage_options=self.storage_options,
                enable_stable_row_ids=True,
                transaction_properties={"matrixos.operation": "CREATE TABLE"},
            )
        except MatrixOSError:
            raise
        except Exception as e:
            raise _translate(e, f"cannot create table at {self.location}", self) from e
        return WriteResult(int(ds.version), {"num_added_rows": table.num_rows})

    def append(
        self, data: Any, *, evolve: bool = False, commit_metadata: Mapping[str, str] | None = None
    ) -> WriteResult:
        """Add rows; with ``evolve`` new columns are added to the schema (null in old rows).

        ``commit_metadata`` is recorded in the commit's transaction properties (``history()``
        shows it in ``operationParameters``), atomically with the rows.
        """
        import lance

        ds = self._settle(self.open())
        table = self._conform(ds, to_arrow_table(data), evolve=evolve)
        properties = {**(commit_metadata or {}), "matrixos.operation": "WRITE"}
        fresh = [ds]  # the first try reuses the version just opened

        def write() -> LanceDataset:
            try:
                return lance.write_dataset(
                    table,
                    fresh.pop() if fresh else self.open(),
                    mode="append",
                    storage_options=self.storage_options,
                    transaction_properties=properties,
                )
            except Exception as e:
                raise _translate(e, f"append to {self.location} failed", self) from e

        # Lance rebases an append over any concurrent commit, but gives up after its own
        # retry count when commits keep landing (8 writers compacting every few files did it
        # once in 6,392 operations): nothing was committed then, so write it again.
        ds = self._with_retries("append", write, max(self.commit_retries, 10))
        result = WriteResult(int(ds.version), {"num_added_rows": table.num_rows})
        self.maybe_autocompact(ds)
        return result

    def overwrite(
        self,
        data: Any,
        *,
        evolve: bool = False,
        predicate: str | None = None,
        commit_metadata: Mapping[str, str] | None = None,
    ) -> WriteResult:
        """Replace all rows with ``data``; ``evolve`` may replace the schema."""
        import lance

        if predicate is not None:
            raise NotSupported(
                "overwrite with a predicate is not available on Lance tables; "
                "use delete(where) and append, or merge(on=…)"
            )
        ds = self.open()
        table = to_arrow_table(data)
        if not evolve:
            table = conform(table, ds.schema, evolve=False, overwrite=True)
        try:
            ds = lance.write_dataset(
                table,
                self.location,
                mode="overwrite",
                storage_options=self.storage_options,
                transaction_properties={**(commit_metadata or {}), "matrixos.operation": "WRITE"},
            )
        except Exception as e:
            raise _translate(e, f"overwrite of {self.location} failed", self) from e
        return WriteResult(int(ds.version), {"num_added_rows": table.num_rows})

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
        """Upsert ``data`` on the key columns ``on`` (``commit_metadata``: as for ``append``).

        Two writers inserting the same new key leave it in the table once, and no version
        ever holds it twice, even when one is killed right after its commit: the first merge
        declares the key Lance's primary key, so that Lance refuses (and the merge redoes) the
        later commit; merges Lance cannot guard that way run one at a time under the table's
        merge lease (``storage/_lance_merge.py``, ``storage/_lease.py``).
        """
        if not on:
            raise SchemaMismatch("merge needs at least one key column in on=[...]")
        ds = self._settle(self.open())
        source = self._conform(ds, to_arrow_table(data), evolve=evolve)
        missing = [k for k in on if k not in source.column_names]
        if missing:
            raise SchemaMismatch(f"merge key column(s) {missing} missing from the table or data")
        check_merge_source(source, on, inserts=when_not_matched == "insert")
        keys = list(on)
        inserts = when_not_matched == "insert"
        if evolve or (inserts and not commit_metadata and declare_key(ds, keys)):
            ds = self.open()
            source = cast_to(source, ds.schema)
        declared = primary_key(ds.schema)
        guarded = inserts and not commit_metadata and sorted(declared) == sorted(keys)

        def builder(ds: LanceDataset, retries: int | None = None) -> Any:
            b = ds.merge_insert(declared if guarded else keys)
            b = b.conflict_retries(max(self.commit_retries, 0) if retries is None else retries)
            if when_matched == "update":
                b = b.when_matched_update_all()
            if inserts:
                b = b.when_not_matched_insert_all()
            if delete_not_matched_by_source:
                b = b.when_not_matched_by_source_delete()
            return b

        if not inserts:  # no new key: nothing to guard
            merge_hook("planned")
            try:
                if commit_metadata:
                    metrics, version = self._commit_merge(builder(ds), source, commit_metadata)
                else:
                    metrics = builder(ds).execute(source)
                    version = int(ds.version)  # execute moves ``ds`` to the version it committed
            except Exception as e:
                raise _translate(e, f"merge into {self.location} failed", self) from e
            merge_hook("committed")
            return WriteResult(version, dict(metrics))
        if guarded:
            return self._declared_merge(ds, builder, source)
        for _ in range(LEASE_ROUNDS):
            done = self._recorded_merge(ds, builder, source, keys, commit_metadata)
            if done is not None:
                return done
            ds = self.open()
        raise ConcurrentWriteError(
            f"merge into {self.location} lost the table's merge lease {LEASE_ROUNDS} times "
            "before its commit (stalled past the lease's TTL); nothing was written",
            hint="retry, or raise MATRIXOS_MERGE_LEASE_TTL",
        )

    def _declared_merge(
        self, ds: LanceDataset, builder: Callable[..., Any], source: pa.Table
    ) -> WriteResult:
        """A merge on the declared key: Lance refuses the later of two commits that insert the
        same key, and the merge runs again. Lance does not check a recorded merge's commit
        against ours, so on a table with recorded merges this one takes the lease too;
        elsewhere Lance may not retry it itself (a retry after a recorded merge's fence must
        start here, and take the lease)."""
        fresh = [ds]

        def execute(current: LanceDataset, retries: int | None) -> tuple[dict[str, Any], int]:
            merge_hook("planned")
            try:
                metrics = builder(current, retries).execute(source)
            except Exception as e:
                raise _translate(e, f"merge into {self.location} failed", self) from e
            merge_hook("committed")
            return dict(metrics), int(current.version)  # execute moved it to its commit

        def attempt() -> tuple[dict[str, Any], int] | None:
            current = fresh.pop() if fresh else self.open()
            if RECORDED in current.config():
                fresh.append(current)
                return None  # recorded merges happen here now: under the lease, below
            return execute(current, 0)

        done = self._with_retries("merge", attempt, self.commit_retries)
        if done is None:
            with self._merge_lease():  # Lance may retry it: the lease stays ours meanwhile
                done = execute(self._latest(fresh.pop()), None)
        return WriteResult(done[1], done[0])

    def _latest(self, ds: LanceDataset) -> LanceDataset:
        """The table at its latest version: ``ds`` itself when nothing committed since (one
        LIST on S3 instead of opening the table again)."""
        try:
            if int(ds.latest_version) == int(ds.version):
                return ds
        except Exception as e:
            raise _translate(e, f"cannot open Lance table at {self.location}", self) from e
        return self.open()

    def _merge_lease(self) -> contextlib.AbstractContextManager[Lease]:
        merge_hook("acquire")
        return merge_lease(
            self.location,
            self.storage_options,
            what=f"merge into {self.label}",
            on_wait=lambda: merge_hook("waiting"),
        )

    def _recorded_merge(
        self,
        ds: LanceDataset,
        builder: Callable[..., Any],
        source: pa.Table,
        keys: list[str],
        commit_metadata: Mapping[str, str] | None,
    ) -> WriteResult | None:
        """A merge Lance does not check for concurrent inserts of its new keys: under the
        table's merge lease, reading the table after taking it. Where the lease can be lost
        (S3: a holder stalled past its TTL), the merge is also tagged and committed with its id,
        so that it or the next writer can repair a duplicate (``storage/_lance_merge.py``). None
        when the lease was lost before the commit (nothing was committed: start over)."""
        with self._merge_lease() as lease:
            first = [ds]

            def prepare() -> LanceDataset:
                # The fence of a table's first recorded merge conflicts with a schema change
                # committed meanwhile (a declaration's NOT NULL): again on the latest version.
                current = self._latest(first.pop()) if first else self.open()
                try:
                    if lease.took_over:  # from a writer that died, maybe after its commit
                        current = self._settle(current)
                    if start_recorded(current, keys, self._commit):
                        current = self.open()
                except Exception as e:
                    raise _translate(e, f"merge into {self.location} failed", self) from e
                return current

            ds = self._with_retries("merge", prepare, self.commit_retries)
            try:
                merge_id = tag_merge(ds) if lease.lossable else None
            except Exception as e:
                raise _translate(e, f"merge into {self.location} failed", self) from e
            props = {**(commit_metadata or {})}
            if merge_id is not None:
                props.update(merge_properties(merge_id, keys))
            fresh = [ds]

            def still_held() -> None:
                if lease.lost():
                    raise _LeaseLost

            def attempt() -> tuple[dict[str, Any], int, int]:
                current = fresh.pop() if fresh else self.open()
                merge_hook("planned")
                try:
                    metrics, version = self._commit_merge(
                        builder(current), source, props, before_commit=still_held
                    )
                except _LeaseLost:
                    raise
                except Exception as e:
                    raise _translate(e, f"merge into {self.location} failed", self) from e
                return metrics, version, int(current.version)

            try:
                metrics, version, read_version = self._with_retries(
                    "merge", attempt, self.commit_retries
                )
            except (ConcurrentWriteError, SchemaMismatch, SQLError, _LeaseLost) as e:
                if merge_id is not None:
                    untag_merge(ds, merge_id)  # nothing was committed
                if isinstance(e, _LeaseLost):
                    log.warning("merge into %s lost its lease before committing", self.label)
                    return None
                raise
            # (any other failure keeps the tag: a commit may have landed; the next writer checks)
            merge_hook("committed")
            if metrics.get("num_inserted_rows") and version > read_version + 1:
                # Another commit landed meanwhile: a writer outside MatrixOS (it takes no
                # lease), or a merge that took over a lease we held too long: keep the later
                # commit's row, as if the merges had run one after the other.
                try:
                    repaired = self._drop_duplicate_inserts(self.open(), source.select(keys))
                except Exception as e:  # the tag stays (if any): the next writer repairs
                    raise _translate(e, f"repair after a merge into {self.location}", self) from e
                version = repaired if repaired is not None else version
            if merge_id is not None:
                untag_merge(ds, merge_id)
        # Our commit's own version: reading the latest one instead could report a concurrent
        # writer's commit as ours.
        return WriteResult(version, dict(metrics))

    def _commit(self, tx: Any) -> LanceDataset:
        """Commit the transaction ``tx`` on the version it read (Lance rebases it over
        commits it does not conflict with, up to ``commit_retries`` times)."""
        import lance

        return lance.LanceDataset.commit(
            self.location,
            tx,
            read_version=tx.read_version,
            storage_options=self.storage_options,
            max_retries=max(self.commit_retries, 0),
        )

    def _commit_merge(
        self,
        builder: Any,
        source: pa.Table,
        properties: Mapping[str, str],
        before_commit: Callable[[], None] | None = None,
    ) -> tuple[dict[str, Any], int]:
        """A merge committed with transaction properties (``execute`` takes none): written
        uncommitted, then committed with the properties, atomically with the rows;
        ``before_commit()`` runs between the two (it may raise to commit nothing)."""
        tx, metrics = builder.execute_uncommitted(source)
        tx.transaction_properties = {**(tx.transaction_properties or {}), **properties}
        if before_commit is not None:
            before_commit()
        return dict(metrics), int(self._commit(tx).version)

    def _settle(self, ds: LanceDataset) -> LanceDataset:
        """Finish the repairs of merges whose writers died after committing (before a write);
        the dataset at its latest version."""
        try:
            if settle_merges(ds, self._drop_duplicate_inserts):
                return self.open()
        except MatrixOSError:
            raise
        except Exception as e:
            raise _translate(e, f"cannot repair an earlier merge into {self.location}", self) from e
        return ds

    def _drop_duplicate_inserts(self, ds: LanceDataset, keys: pa.Table) -> int | None:
        """Delete the rows concurrent merges duplicated; the version of the last delete."""
        return drop_duplicate_inserts(ds, keys, max(self.commit_retries, 0))

    def delete(self, predicate: str | None = None) -> WriteResult:
        """Delete rows matching ``predicate`` (a SQL expression), or all rows."""
        ds = self._settle(self.open())
        try:
            metrics = ds.delete(
                lance_sql(predicate) if predicate is not None else "true",
                conflict_retries=max(self.commit_retries, 0),
            )
        except Exception as e:
            raise _translate(e, f"delete from {self.location} failed", self) from e
        return WriteResult(int(ds.version), dict(metrics or {}))

    def update(self, updates: Mapping[str, str], where: str | None = None) -> WriteResult:
        """Set columns to SQL expressions on rows matching ``where``."""
        if not updates:
            raise SchemaMismatch("update needs at least one column to set")
        ds = self._settle(self.open())
        unknown = [c for c in updates if c not in ds.schema.names]
        if unknown:
            raise SchemaMismatch(f"update sets unknown column(s) {unknown}")
        try:
            metrics = ds.update(
                {k: lance_sql(v) for k, v in updates.items()},
                where=lance_sql(where) if where is not None else None,
                conflict_retries=max(self.commit_retries, 0),
            )
        except Exception as e:
            raise _translate(e, f"update of {self.location} failed", self) from e
        return WriteResult(int(ds.version), dict(metrics or {}))

    def _conform(self, ds: LanceDataset, table: pa.Table, *, evolve: bool) -> pa.Table:
        """``table`` cast to the dataset's schema; with ``evolve`` new columns are first added
        to the dataset (all null), since a Lance append must match the schema exactly."""
        table = conform(table, ds.schema, evolve=evolve, overwrite=False)
        for f in ds.schema:
            if not f.nullable and table.column(f.name).null_count:
                raise _null_in(f.name, f"write to {self.location}", primary_key(ds.schema))
        new = [f for f in table.schema if f.name not in ds.schema.names]
        if new:
            try:
                ds.add_columns([pa.field(f.name, f.type, nullable=True) for f in new])
            except Exception as e:
                raise _translate(e, f"cannot add column(s) to {self.location}", self) from e
        return table

    # -- maintenance ------------------------------------------------------------------------
    def optimize(
        self, zorder: Sequence[str] | None = None, *, retries: int | None = None
    ) -> dict[str, Any]:
        """Compact small fragments, then fold new rows into every index.

        Lance commits a compaction (a ``Rewrite``) only if no concurrent commit touched its
        fragments: a second compaction of the same fragments, or a delete/update in them, makes
        it fail with a retryable conflict (``tests/storage/test_concurrency.py`` pins this);
        appends never conflict with it. A lost race is retried on a fresh version up to
        ``retries`` times (default ``commit_retries``), then raises ``ConcurrentWriteError``.
        """
        if zorder:
            raise NotSupported("ZORDER BY is available on Delta tables only")
        retries = self.commit_retries if retries is None else retries
        stats = self._with_retries("optimize", self._compact, retries)
        return {
            "fragments_removed": int(getattr(stats, "fragments_removed", 0)),
            "fragments_added": int(getattr(stats, "fragments_added", 0)),
            "files_removed": int(getattr(stats, "files_removed", 0)),
            "files_added": int(getattr(stats, "files_added", 0)),
        }

    def _with_retries(self, op: str, fn: Callable[[], T], retries: int) -> T:
        """``fn()``, again after a ``ConcurrentWriteError`` (jittered exponential backoff, as
        ``DeltaStore.run_with_retries``), at most ``retries`` more times."""
        from tenacity import RetryError

        try:
            for attempt in commit_retrying(ConcurrentWriteError, retries):
                with attempt:
                    return fn()
        except RetryError as e:
            raise gave_up(op, self.location, retries) from e
        raise AssertionError("unreachable")  # pragma: no cover

    def _compact(self) -> Any:
        ds = self._settle(self.open())
        try:
            stats = ds.optimize.compact_files()
            ds = self.open()
            if ds.list_indices():
                ds.optimize.optimize_indices()
        except Exception as e:
            raise _translate(e, f"optimize of {self.location} failed", self) from e
        return stats

    def vacuum(
        self, retention_hours: int | None = None, *, dry_run: bool = False, enforce: bool = True
    ) -> list[str]:
        """Delete versions older than ``retention_hours`` (default 7 days) and the files only
        they used; returns the removed versions (``"version N"``)."""
        hours = 168 if retention_hours is None else retention_hours
        if enforce and hours < 168:
            raise NotSupported(
                f"retention of {hours} h is below the 168 h minimum that keeps time travel and "
                "concurrent readers safe",
                hint="pass enforce=False to override",
            )
        ds = self.open()
        cutoff = datetime.now(UTC) - timedelta(hours=hours)
        doomed = [
            int(v["version"])
            for v in ds.versions()
            if _aware(v["timestamp"]) < cutoff and int(v["version"]) != ds.version
        ]
        if not dry_run and doomed:
            try:
                ds.cleanup_old_versions(older_than=timedelta(hours=hours), delete_unverified=True)
            except Exception as e:
                raise _translate(e, f"vacuum of {self.location} failed", self) from e
        return [f"version {v}" for v in sorted(doomed)]

    def maybe_autocompact(self, ds: LanceDataset | None = None) -> dict[str, Any] | None:
        """Compact when the dataset has at least ``auto_compact_min_files`` fragments."""
        if self.auto_compact_min_files <= 0:
            return None
        ds = ds or self.open()
        if len(ds.get_fragments()) < self.auto_compact_min_files:
            return None
        log.info("auto-compacting %s", self.location)
        try:
            return self.optimize(retries=1)  # a loser leaves the work to the next append
        except ConcurrentWriteError as e:  # a concurrent writer won: expected, not a fault
            log.info("auto-compaction of %s skipped: %s", self.location, e)
            return None
        except MatrixOSError as e:
            log.warning("auto-compaction of %s skipped: %s", self.location, e)
            return None


def lance_sql(expr: str) -> str:
    """A SQL expression in Lance's dialect: identifiers in backticks (Lance reads a
    double-quoted name as a string). Our SQL front end emits DuckDB-style expressions."""
    if '"' not in expr:
        return expr
    import sqlglot
    from sqlglot.errors import SqlglotError

    try:
        return sqlglot.transpile(expr, read="duckdb", write="spark")[0]
    except SqlglotError as e:
        raise SQLError(f"cannot read the expression {expr!r}: {e}") from e


def _aware(ts: Any) -> datetime:
    """Lance reports commit times as naive local datetimes."""
    if not isinstance(ts, datetime):
        return datetime.fromtimestamp(float(ts), UTC)
    return ts.astimezone(UTC) if ts.tzinfo is None else ts


def _null_in(column: str, what: str, key: Sequence[str] = ()) -> SchemaMismatch:
    """A NULL in a NOT NULL column (a merge key Lance checks is NOT NULL: _lance_merge)."""
    why = " (the table's merge key)" if column in key else ""
    return SchemaMismatch(
        f"{what}: column {column!r} is NOT NULL{why} but the data has NULLs in it; "
        "nothing was written",
        hint=f"fill or filter out the rows whose {column} is NULL",
    )


class _LeaseLost(Exception):
    """A merge's lease may be another writer's by now: it commits nothing and starts over."""


def _translate(e: Exception, what: str, store: LanceStore | None = None) -> MatrixOSError:
    if isinstance(e, MatrixOSError):
        return e
    msg = str(e).split(", /")[0].split(", location:")[0]  # drop Rust source locations
    low = msg.lower()
    if "different schema" in low or ("schema" in low and "mismatch" in low):
        return SchemaMismatch(f"{what}: {msg}; nothing was written")
    if "not found" in low and "dataset" in low:
        return TableNotFound(f"{what}: {msg}")
    null_key = re.search(
        r"(?:field `([^`]*)` contained null values|Column '([^']*)' is declared as non-nullable)",
        msg,
    )
    if null_key:
        return _null_in(null_key.group(1) or null_key.group(2), what)
    # "Too many concurrent writers … retry_timeout of 30 s": Lance's commit retries ran out,
    # a conflict, not a slow endpoint (the torture run saw it called a storage timeout).
    if (
        "conflict" in low
        or "retryable commit" in low
        or ("commit" in low and "retr" in low)
        or "too many concurrent writers" in low
    ):
        return ConcurrentWriteError(f"{what}: {msg}")
    if "invalid user input" in low or "sql" in low or "no field named" in low:
        return SQLError(f"{what}: {msg}")
    if is_storage_failure(e) or "lanceerror(io)" in low:
        location = store.location if store is not None else what
        endpoint = (store.storage_options or {}).get("aws_endpoint_url") if store else None
        return storage_error(e, what, location, endpoint=endpoint)
    return SQLError(f"{what}: {msg}")
