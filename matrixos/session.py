"""``connect()`` and the ``Lakehouse`` session: warehouse + catalog + SQL engine."""

from __future__ import annotations

import contextlib
import getpass
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

import pyarrow as pa

from matrixos.catalog import Catalog, TableIdent, TableInfo, parse_schema
from matrixos.config import Settings, resolve_settings
from matrixos.errors import ConfigError, NotSupported, TableExists, TableNotFound
from matrixos.storage.warehouse import Warehouse, normalize_uri

if TYPE_CHECKING:
    from deltalake import DeltaTable

    from matrixos.ai.rag import RAG
    from matrixos.batch import MapBatchesSummary
    from matrixos.compute import ComputePool
    from matrixos.connectors.ingest import IngestSummary
    from matrixos.connectors.media import MediaIngestSummary
    from matrixos.engine.result import Result
    from matrixos.engine.sql import SQLEngine
    from matrixos.storage.delta import DeltaStore
    from matrixos.storage.lance import LanceStore
    from matrixos.storage.volume import Volume
    from matrixos.table import Table


MIN_FILES_PROPERTY = "matrixos.autoCompact.minFiles"


def connect(
    warehouse: str | None = None,
    *,
    storage_options: Mapping[str, Any] | None = None,
    catalog_url: str | None = None,
    compute: str | None = None,
    **settings: Any,
) -> Lakehouse:
    """Open a lakehouse: a warehouse folder or bucket, its catalog, and a SQL engine.

    Args:
        warehouse: a local path or ``s3://bucket/prefix``; default ``$MATRIXOS_WAREHOUSE`` or
            ``./warehouse``.
        storage_options: deltalake-style keys (``AWS_ENDPOINT_URL``, ``AWS_REGION``, …);
            missing keys fall back to the ``AWS_*`` environment variables.
        catalog_url: SQLAlchemy URL of the catalog; default SQLite (see ``Settings``).
        compute: ``local`` (default), ``ray``, ``ray://host:port`` or ``host:port`` (see
            ``matrixos.compute``).
        **settings: any other ``Settings`` field.

    Example:
        >>> import matrixos as mx, tempfile
        >>> lh = mx.connect(tempfile.mkdtemp())
        >>> lh.sql("SELECT 1 + 1 AS two").fetchall()
        [(2,)]
    """
    cfg = resolve_settings(
        warehouse=warehouse, catalog_url=catalog_url, compute=compute, **settings
    )
    return Lakehouse(cfg, storage_options=storage_options)


class Lakehouse:
    """A session over one warehouse and catalog. Thread-safe; cheap to create."""

    def __init__(self, settings: Settings, *, storage_options: Mapping[str, Any] | None = None):
        from matrixos.compute import parse_compute

        parse_compute(settings.compute)  # a bad target fails here, not at the first query
        self.settings = settings
        self.warehouse = Warehouse(settings.warehouse, storage_options)
        url = settings.catalog_url or self.warehouse.default_catalog_url(settings.home)
        self.catalog = Catalog(url)
        self.user = settings.user or _whoami()
        self._lock = threading.Lock()
        self._tables: dict[str, DeltaTable] = {}
        self._engine_obj: SQLEngine | None = None
        self._compute: ComputePool | None = None

    def __repr__(self) -> str:
        return f"Lakehouse(warehouse={self.warehouse.uri!r}, catalog={self.catalog!r})"

    def __enter__(self) -> Lakehouse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._engine_obj is not None:
            self._engine_obj.close()
            self._engine_obj = None
        if self._compute is not None:
            self._compute.shutdown()  # stops a private Ray runtime this session started
            self._compute = None
        self.catalog.close()

    @property
    def compute(self) -> ComputePool:
        """The compute pool (``Settings.compute``), started on first use.

        Example:
            >>> lh.compute.status()["mode"]  # doctest: +SKIP
            'ray'
        """
        if self._compute is None:
            from matrixos.compute import ComputePool

            with self._lock:
                if self._compute is None:
                    self._compute = ComputePool(self.settings)
        return self._compute.start()

    @property
    def _engine(self) -> SQLEngine:
        if self._engine_obj is None:
            from matrixos.engine.sql import SQLEngine

            with self._lock:
                if self._engine_obj is None:
                    self._engine_obj = SQLEngine(self)
        return self._engine_obj

    # -- SQL --------------------------------------------------------------------------------
    def sql(
        self,
        query: str,
        *,
        dialect: str | None = None,
        engine: Literal["auto", "local", "ray"] = "auto",
    ) -> Result:
        """Run SQL (one or more statements; the last one's rows are returned).

        ``dialect`` is any sqlglot dialect (duckdb, postgres, mysql, databricks, spark,
        snowflake, bigquery, trino, …); default ``duckdb``. Untrusted SQL is sandboxed: it reads
        only catalog tables and never files, settings or extensions.

        ``engine``: ``local`` runs in this process; ``ray`` runs a query over one Delta table
        as tasks on the compute pool (anything else still runs locally; ``EXPLAIN`` says
        which); ``auto`` picks ``ray`` when the pool is Ray and the query scans at least
        ``Settings.distributed_min_bytes``. Results do not depend on the engine.

        Example:
            >>> lh.sql("SELECT count(*) FROM sales.orders").scalar()  # doctest: +SKIP
        """
        return self._engine.execute(query, dialect or self.settings.default_dialect, engine=engine)

    # -- schemas ----------------------------------------------------------------------------
    def create_schema(
        self, name: str, *, comment: str | None = None, if_not_exists: bool = True
    ) -> None:
        """Create ``[catalog.]schema``."""
        catalog, schema = parse_schema(name)
        self.catalog.create_schema(
            catalog, schema, comment=comment, owner=self.user, if_not_exists=if_not_exists
        )

    def schemas(self, catalog: str | None = None) -> list[str]:
        return [f"{c}.{s}" for c, s in self.catalog.list_schemas(catalog)]

    def drop_schema(self, name: str, *, if_exists: bool = False) -> None:
        catalog, schema = parse_schema(name)
        self.catalog.drop_schema(catalog, schema, if_exists=if_exists)

    # -- tables -----------------------------------------------------------------------------
    def tables(self, schema: str | None = None) -> list[str]:
        """Fully qualified names of the tables (in ``[catalog.]schema`` when given)."""
        if schema:
            c, s = parse_schema(schema)
            infos = self.catalog.list_tables(c, s)
        else:
            infos = self.catalog.list_tables()
        return [i.name for i in infos]

    def table(self, name: str | TableIdent) -> Table:
        """An existing table; raises ``TableNotFound``."""
        from matrixos.table import open_table

        return open_table(self, self.catalog.get_table(TableIdent.parse(name)))

    def create_table(
        self,
        name: str,
        data: Any = None,
        *,
        schema: pa.Schema | None = None,
        partition_by: Sequence[str] | None = None,
        format: Literal["delta", "lance"] = "delta",
        comment: str | None = None,
        properties: Mapping[str, str] | None = None,
        mode: Literal["error", "ignore", "overwrite"] = "error",
        create_schema: bool = True,
    ) -> Table:
        """Create a managed table from ``data`` (Arrow, Polars, pandas, rows…) or a ``schema``.

        ``mode``: ``error`` if it exists, ``ignore`` to return the existing table, ``overwrite``
        to replace its rows (and schema).

        Example:
            >>> lh.create_table("iot.readings", rows, partition_by=["day"])  # doctest: +SKIP
        """
        if format not in ("delta", "lance"):
            raise NotSupported(f"format={format!r} is not supported; use 'delta' or 'lance'")
        ident = TableIdent.parse(name)
        existing = self.catalog.find_table(ident)
        if existing is not None:
            if mode == "ignore":
                return self.table(ident)
            if mode == "overwrite":
                t = self.table(ident)
                t.overwrite(data if data is not None else schema.empty_table(), evolve=True)  # type: ignore[union-attr]
                return t
            raise TableExists(f"table {ident} already exists", hint="use mode='overwrite'")
        # Delta's own table properties (delta.appendOnly, delta.logRetentionDuration…) go into
        # the table's metadata, where every Delta engine honours them; Lance has none of them.
        delta_conf = {k: v for k, v in (properties or {}).items() if k.startswith("delta.")}
        if delta_conf and format != "delta":
            raise NotSupported(
                f"table properties {sorted(delta_conf)} apply to Delta tables, not {format}"
            )
        if create_schema and not self.catalog.schema_exists(ident.catalog, ident.schema):
            self.catalog.create_schema(
                ident.catalog, ident.schema, owner=self.user, if_not_exists=True
            )
        location = self.warehouse.table_location(*ident)
        info = TableInfo(
            ident=ident,
            format=format,
            location=location,
            comment=comment,
            properties=dict(properties or {}),
            owner=self.user,
        )
        store = self._store(info)
        # The catalog row is the lock: of several processes creating one name, exactly one
        # inserts it (primary key; the others get TableExists), and only that one touches the
        # location. Writing the files first let a loser delete the winner's files as "leftovers"
        # or commit its own rows under the winner's entry.
        self.catalog.create_table(info)
        try:
            # Left behind by a create that crashed, or a drop that died before deleting files.
            if store.exists():
                self.warehouse.remove(location)
            store.create(
                data,
                schema=schema,
                partition_by=partition_by,
                name=ident.name,
                description=comment,
                properties=delta_conf or None,
            )
        except BaseException:
            with contextlib.suppress(Exception):
                self.catalog.drop_table(ident)
            with contextlib.suppress(Exception):
                self.warehouse.remove(location)
            raise
        return self.table(ident)

    def register_table(
        self,
        name: str,
        location: str,
        *,
        format: Literal["delta", "lance"] | None = None,
        comment: str | None = None,
        create_schema: bool = True,
    ) -> Table:
        """Add an existing Delta table (written by Spark, Databricks, delta-rs…) or Lance
        dataset (lance, LanceDB) as external; ``format`` is detected when not given.

        Dropping it later removes only the catalog entry, never its files.
        """
        ident = TableIdent.parse(name)
        location = normalize_uri(location)
        if format is None:
            fs = self.warehouse.fs if self.warehouse.is_remote else None
            format = _detect_format(location, fs)
        probe = TableInfo(ident=ident, format=format, location=location, external=True)
        store = self._store(probe)
        if not store.exists():
            raise TableNotFound(f"no {format.capitalize()} table at {location}")
        store.open()  # refuses protocols it cannot read
        if create_schema:
            self.catalog.create_schema(
                ident.catalog, ident.schema, owner=self.user, if_not_exists=True
            )
        info = TableInfo(
            ident=ident,
            format=format,
            location=location,
            external=True,
            comment=comment,
            owner=self.user,
        )
        self.catalog.create_table(info)
        return self.table(ident)

    def drop_table(self, name: str, *, if_exists: bool = False, purge: bool = True) -> None:
        """Remove a table; a managed table's files are deleted, an external one's kept."""
        ident = TableIdent.parse(name)
        try:
            info = self.catalog.drop_table(ident)
        except TableNotFound:
            if if_exists:
                return
            raise
        self._tables.pop(info.location, None)
        if purge and not info.external:
            self.warehouse.remove(info.location)

    @property
    def rag(self) -> RAG:
        """Batch RAG indexing (``lh.rag.index``) and retrieval evaluation (``lh.rag.eval``)."""
        from matrixos.ai.rag import RAG

        return RAG(self)

    def map_batches(
        self,
        source: str,
        fn: Any,
        *,
        output: str,
        batch_size: int = 1024,
        num_gpus: float = 0,
        num_cpus: float = 1,
        concurrency: int | None = None,
        columns: Sequence[str] | None = None,
        filter: str | None = None,
        key: str | Sequence[str] | None = None,
        mode: Literal["append", "overwrite", "merge"] = "append",
        resume: bool = True,
        format: Literal["delta", "lance"] | None = None,
        batch_format: Literal["pyarrow", "pandas", "numpy"] = "pyarrow",
        fn_constructor_args: Sequence[Any] = (),
        fn_constructor_kwargs: Mapping[str, Any] | None = None,
        commit_batches: int = 8,
        max_in_flight: int | None = None,
        progress: bool | None = None,
    ) -> MapBatchesSummary:
        """Run a batch UDF over a table or query on the compute pool, into the table ``output``.

        ``fn`` takes a batch (a ``pyarrow.Table``; pandas or a dict of numpy arrays with
        ``batch_format``) and returns one (Arrow, pandas, Polars or a dict of columns; 2-D
        arrays become fixed-size list columns). A callable class is built once per worker
        (with ``fn_constructor_args``/``kwargs``): on a Ray pool a pool of ``concurrency``
        actors, each with ``num_gpus`` GPUs when the pool has them (CPUs otherwise); a function
        runs as Ray tasks. On the local pool everything runs in this process.

        Args:
            source: a Delta or Lance table, or a SQL query (``columns`` and ``filter``, a SQL
                predicate, narrow it).
            output: the table written (created from the first result's schema; Delta, or the
                source table's format, unless ``format``). ``mode``: ``append``, ``overwrite``
                (replaced by this job's rows) or ``merge`` (upsert on ``key``).
            batch_size: rows per batch; ``commit_batches`` batches per output commit.
            resume: rerunning a job that did not finish (same source, function, output and
                options) re-reads the source at the version the first run pinned and skips the
                batches already committed; a finished job is not rerun for the same source
                version. ``resume=False`` starts afresh.
            max_in_flight: batches running at once (default: what the workers can take).
            progress: a progress bar and a printed summary (default: on in a terminal or
                notebook).

        Returns:
            ``MapBatchesSummary``: rows in/out, batches, elapsed, rows/s, GPU utilisation.

        Raises:
            BatchError: ``fn`` failed; names the batch and its rows (committed batches stay).

        Example:
            >>> lh.map_batches("media.images", fn, output="media.tags", num_gpus=1,
            ...                batch_size=64)  # doctest: +SKIP
        """
        from matrixos.batch import map_batches

        return map_batches(
            self,
            source,
            fn,
            output=output,
            batch_size=batch_size,
            num_gpus=num_gpus,
            num_cpus=num_cpus,
            concurrency=concurrency,
            columns=columns,
            filter=filter,
            key=key,
            mode=mode,
            resume=resume,
            format=format,
            batch_format=batch_format,
            fn_constructor_args=fn_constructor_args,
            fn_constructor_kwargs=fn_constructor_kwargs,
            commit_batches=commit_batches,
            max_in_flight=max_in_flight,
            progress=progress,
        )

    # -- search -----------------------------------------------------------------------------
    def search(
        self,
        table: str,
        query: Any,
        *,
        k: int = 10,
        mode: Literal["vector", "text", "hybrid"] = "vector",
        filter: str | None = None,
        columns: Sequence[str] | None = None,
    ) -> pa.Table:
        """Top ``k`` rows of a Lance table for ``query`` (text or a vector) plus ``_score``.

        ``mode``: ``vector`` (ANN over the embedding), ``text`` (BM25) or ``hybrid``
        (reciprocal rank fusion of both). ``filter`` is a SQL predicate applied before top-k.

        Example:
            >>> lh.search("kb.chunks", "vacuum a table", k=5, mode="hybrid")  # doctest: +SKIP
        """
        from matrixos.lance_table import lance_table_or_error

        t = lance_table_or_error(self.table(table))
        return t.search(query, k=k, mode=mode, filter=filter, columns=columns)

    # -- volumes ----------------------------------------------------------------------------
    def volumes(self, schema: str | None = None) -> list[str]:
        """Fully qualified names of the volumes (in ``[catalog.]schema`` when given)."""
        c, s = parse_schema(schema) if schema else (None, None)
        return [v.name for v in self.catalog.list_volumes(c, s)]

    def volume(self, name: str | TableIdent) -> Volume:
        """An existing volume (a governed folder of raw files); raises ``VolumeNotFound``.

        Example:
            >>> lh.volume("raw.docs").list()  # doctest: +SKIP
        """
        from matrixos.storage.volume import Volume

        return Volume(self.catalog.get_volume(TableIdent.parse(name)), self.warehouse)

    def create_volume(
        self,
        name: str,
        *,
        comment: str | None = None,
        if_not_exists: bool = True,
        create_schema: bool = True,
    ) -> Volume:
        """Create a managed volume at ``<warehouse>/<catalog>/<schema>/.volumes/<name>/``.

        Example:
            >>> lh.create_volume("raw.docs").put("scan.pdf")  # doctest: +SKIP
        """
        from matrixos.catalog.store import VolumeInfo
        from matrixos.storage.volume import volume_location

        ident = TableIdent.parse(name)
        if self.catalog.find_volume(ident) is not None:
            if if_not_exists:
                return self.volume(ident)
            raise TableExists(f"volume {ident} already exists")
        if create_schema and not self.catalog.schema_exists(ident.catalog, ident.schema):
            self.catalog.create_schema(
                ident.catalog, ident.schema, owner=self.user, if_not_exists=True
            )
        location = volume_location(self.warehouse, ident)
        info = VolumeInfo(ident=ident, location=location, comment=comment, owner=self.user)
        try:
            # The catalog row is the lock (as for tables): only its winner touches the folder.
            self.catalog.create_volume(info)
        except TableExists:
            if if_not_exists:
                return self.volume(ident)
            raise
        # Files left by a drop that died before deleting them must not resurface here.
        self.warehouse.remove(location)
        if not self.warehouse.is_remote:
            Path(location).mkdir(parents=True, exist_ok=True)
        return self.volume(ident)

    def drop_volume(self, name: str, *, if_exists: bool = False) -> None:
        """Remove a volume; a managed volume's files are deleted."""
        try:
            info = self.catalog.drop_volume(TableIdent.parse(name))
        except TableNotFound:
            if if_exists:
                return
            raise
        if not info.external:
            self.warehouse.remove(info.location)

    def open_uri(self, uri: str, mode: str = "rb") -> IO[Any]:
        """Open a volume file by its full URI (e.g. a table's ``uri`` column) for reading."""
        from matrixos.errors import AccessDenied
        from matrixos.storage.volume import Volume

        full = normalize_uri(uri)
        owners = [v for v in self.catalog.list_volumes() if full.startswith(v.location + "/")]
        if not owners:
            raise AccessDenied(f"{uri} is not a file in any volume of this lakehouse")
        owner = max(owners, key=lambda v: len(v.location))
        return Volume(owner, self.warehouse).open_uri(full, mode)

    # -- ingest -----------------------------------------------------------------------------
    def ingest(
        self,
        paths: str | Sequence[str],
        table: str,
        *,
        mode: Literal["append", "overwrite", "merge"] = "append",
        on: Sequence[str] | None = None,
        format: str | None = None,
        evolve: bool = False,
        partition_by: Sequence[str] | None = None,
    ) -> IngestSummary:
        """Load CSV, JSON/NDJSON or Parquet files or folders (local or s3://) into a table."""
        from matrixos.connectors.ingest import ingest

        return ingest(
            self,
            [paths] if isinstance(paths, str) else list(paths),
            table,
            mode=mode,
            on=on,
            format=format,
            evolve=evolve,
            partition_by=partition_by,
        )

    def ingest_media(
        self,
        paths: str | Sequence[str],
        table: str,
        *,
        volume: str | Volume | None = None,
        recursive: bool = True,
        thumbnail_size: int | None = 128,
        progress: bool = False,
    ) -> MediaIngestSummary:
        """Images, audio, PDF/HTML/Markdown/text files → one row each (metadata, extracted text,
        thumbnails); the files' bytes go to a volume (default ``<schema>.<table>_files``).

        Only new or changed files are written; unreadable ones become rows with ``error`` set.
        See ``matrixos.connectors.media.ingest_media``.

        Example:
            >>> print(lh.ingest_media("./photos", "media.photos"))  # doctest: +SKIP
        """
        from matrixos.connectors.media import ingest_media

        return ingest_media(
            self,
            paths,
            table,
            volume=volume,
            recursive=recursive,
            thumbnail_size=thumbnail_size,
            progress=progress,
        )

    # -- internals shared by Table and the SQL engine ---------------------------------------
    def _store(self, info: TableInfo) -> DeltaStore | LanceStore:
        from matrixos.storage.delta import DeltaStore

        s = self.settings
        if info.format == "lance":
            from matrixos.storage.lance import LanceStore

            return LanceStore(
                info.location,
                self.warehouse.lance_options(info.location),
                commit_retries=s.commit_retries,
                auto_compact_min_files=_min_files(info, s.auto_compact_min_files),
            )
        return DeltaStore(
            info.location,
            self.warehouse.delta_options(info.location),
            commit_retries=s.commit_retries,
            auto_compact_min_files=_min_files(info, s.auto_compact_min_files),
            small_file_bytes=s.small_file_bytes,
            target_file_bytes=s.target_file_bytes,
        )

    def _delta(
        self,
        info: TableInfo,
        version: int | None = None,
        timestamp: datetime | str | None = None,
    ) -> DeltaTable:
        """The table's latest snapshot (cached, refreshed incrementally) or a past one."""
        from matrixos.storage.delta import DeltaStore

        store = self._store(info)
        if not isinstance(store, DeltaStore):
            raise NotSupported(f"table {info.name} is a {info.format} table, not Delta")
        if version is not None or timestamp is not None:
            return store.open(version=version, timestamp=timestamp)
        dt = self._tables.get(info.location)
        if dt is None:
            try:
                dt = store.open()
            except TableNotFound as e:
                if info.external:
                    raise
                # The catalog row is written first (it is the lock on the name); a creator that
                # died before its first commit leaves the row without data.
                raise TableNotFound(
                    f"table {info.ident} is in the catalog but holds no committed data: it is "
                    "still being created, or its creator stopped before the first commit",
                    hint=f"DROP TABLE {info.ident} removes the entry (the name can then be reused)",
                ) from e
            self._tables[info.location] = dt
        else:
            try:
                dt.update_incremental()
            except Exception:
                dt = store.open()
                self._tables[info.location] = dt
        return dt


def _min_files(info: TableInfo, default: int) -> int:
    """The table's ``matrixos.autoCompact.minFiles`` property (0 turns auto-compaction off)."""
    raw = info.properties.get(MIN_FILES_PROPERTY)
    if raw is None:
        return default
    try:
        value = int(raw)
    except (TypeError, ValueError):
        raise ConfigError(
            f"table {info.name}: property {MIN_FILES_PROPERTY}={raw!r} is not an integer"
        ) from None
    if value < 0:
        raise ConfigError(f"table {info.name}: property {MIN_FILES_PROPERTY} must be >= 0")
    return value


def _detect_format(location: str, fs: Any = None) -> Literal["delta", "lance"]:
    """``lance`` for a folder holding ``_versions/`` (a Lance dataset), else ``delta``."""
    import os

    if fs is None:
        return "lance" if os.path.isdir(os.path.join(location, "_versions")) else "delta"
    return "lance" if fs.exists(location.rstrip("/") + "/_versions") else "delta"


def _whoami() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        return "unknown"
