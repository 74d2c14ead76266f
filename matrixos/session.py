"""``connect()`` and the ``Lakehouse`` session: warehouse + catalog + SQL engine."""

from __future__ import annotations

import contextlib
import getpass
import logging
import threading
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

import pyarrow as pa

from matrixos.catalog import TableIdent, TableInfo, catalog_for, parse_schema
from matrixos.config import Settings, check_names, resolve_settings
from matrixos.errors import ConfigError, NotSupported, TableExists, TableNotFound
from matrixos.storage.options import StorageOptions
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
# A catalog entry is written before its table's first file (the entry is the lock on the name):
# an entry younger than this with nothing at its location may be a creation in progress.
CREATING_GRACE = timedelta(minutes=10)

log = logging.getLogger(__name__)


def connect(
    warehouse: str | None = None,
    *,
    storage_options: Mapping[str, Any] | None = None,
    catalog_url: str | None = None,
    compute: str | None = None,
    create: bool = True,
    **settings: Any,
) -> Lakehouse:
    """Open a lakehouse: a warehouse folder or bucket, its catalog, and a SQL engine.

    Args:
        warehouse: a local path or ``s3://bucket/prefix``; default ``$MATRIXOS_WAREHOUSE`` or
            ``./warehouse``.
        storage_options: deltalake-style keys (``AWS_ENDPOINT_URL``, ``AWS_REGION``, …);
            missing keys fall back to the ``AWS_*`` environment variables.
        catalog_url: where the catalog lives: ``sqlite:///…``, ``postgresql://…`` or
            ``s3://…``; default the warehouse's own (see ``matrixos.catalog.registry``).
        compute: ``local`` (default), ``ray``, ``ray://host:port`` or ``host:port`` (see
            ``matrixos.compute``).
        create: make the warehouse when there is none at ``warehouse`` (the default);
            ``False`` raises ``WarehouseNotFound`` instead, so a mistyped path is an error,
            not a new empty warehouse (the CLI's reading commands use this).
        **settings: any other ``Settings`` field.

    Raises:
        ConfigError: an unknown argument (naming the closest valid one) or a bad setting.
        WarehouseNotFound: ``create=False`` and no warehouse is there.

    Example:
        >>> import matrixos as mx, tempfile
        >>> lh = mx.connect(tempfile.mkdtemp())
        >>> lh.sql("SELECT 1 + 1 AS two").fetchall()
        [(2,)]
    """
    # connect(catalog=…) is a ConfigError naming catalog_url, not pydantic's ValidationError.
    check_names(settings, [*Settings.model_fields, *_CONNECT_ARGS], what="argument")
    cfg = resolve_settings(
        warehouse=warehouse, catalog_url=catalog_url, compute=compute, **settings
    )
    return Lakehouse(cfg, storage_options=storage_options, create=create)


_CONNECT_ARGS = ("storage_options", "create")


class Lakehouse:
    """A session over one warehouse and catalog. Thread-safe; cheap to create."""

    def __init__(
        self,
        settings: Settings,
        *,
        storage_options: Mapping[str, Any] | None = None,
        create: bool = True,
    ):
        from matrixos.compute import parse_compute

        parse_compute(settings.compute)  # a bad target fails here, not at the first query
        self.settings = settings
        options = StorageOptions.from_mapping(storage_options, **settings.storage_limits())
        if not create:
            _require_warehouse(settings.warehouse, settings.catalog_url, options)
        self.warehouse = Warehouse(settings.warehouse, options)
        self.catalog = catalog_for(self.warehouse, settings.catalog_url, settings.home)
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
            >>> import tempfile, matrixos as mx
            >>> lh = mx.connect(tempfile.mkdtemp())
            >>> lh.compute.status()["mode"]  # "ray" with compute="ray" or "ray://host:port"
            'local'
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
            >>> import tempfile, matrixos as mx
            >>> lh = mx.connect(tempfile.mkdtemp())
            >>> _ = lh.create_table("sales.orders", [{"id": 1}, {"id": 2}])
            >>> lh.sql("SELECT count(*) FROM sales.orders").scalar()
            2
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
            >>> import tempfile, matrixos as mx
            >>> lh = mx.connect(tempfile.mkdtemp())
            >>> rows = [{"day": "2024-05-01", "sensor": "a", "value": 20.5}]
            >>> lh.create_table("iot.readings", rows, partition_by=["day"]).partition_by
            ['day']
        """
        if format not in ("delta", "lance"):
            raise NotSupported(f"format={format!r} is not supported; use 'delta' or 'lance'")
        ident = TableIdent.parse(name)
        existing = self._unless_stale(self.catalog.find_table(ident))
        if existing is not None:
            if mode == "ignore":
                return self.table(ident)
            if mode == "overwrite":
                t = self.table(ident)
                t.overwrite(data if data is not None else schema.empty_table(), evolve=True)  # type: ignore[union-attr]
                return t
            if not self._has_storage(existing):  # its creator is still at it, or it is gone
                raise TableExists(
                    f"table {ident} already exists in the catalog, but nothing is stored at "
                    f"{existing.location} yet: it is being created right now, or its files were "
                    "deleted",
                    hint=f"if no one is creating it, DROP TABLE {ident} removes the entry",
                )
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
        self._unless_stale(self.catalog.find_table(ident))
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
            >>> import tempfile, matrixos as mx
            >>> lh = mx.connect(tempfile.mkdtemp())
            >>> import pyarrow.compute as pc
            >>> _ = lh.create_table("iot.c", [{"celsius": 20.0}, {"celsius": 25.0}])
            >>> def to_f(batch):
            ...     return batch.append_column("f", pc.add(pc.multiply(batch["celsius"], 1.8), 32))
            >>> lh.map_batches("iot.c", to_f, output="iot.f", progress=False).rows_out
            2
            >>> lh.sql("SELECT f FROM iot.f ORDER BY f").fetchall()
            [(68.0,), (77.0,)]

            On a Ray pool with GPUs (``compute="ray://…"``), one GPU per batch:

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
    ) -> Result:
        """Top ``k`` rows of a Lance table for ``query`` (text or a vector) plus ``_score``.

        ``mode``: ``vector`` (ANN over the embedding), ``text`` (BM25) or ``hybrid``
        (reciprocal rank fusion of both). ``filter`` is a SQL predicate applied before top-k.

        Returns:
            a ``Result``, as ``sql()`` does: ``to_arrow()``, ``to_polars()``, ``to_pandas()``,
            ``to_pylist()``, ``column(name)``, and ``__arrow_c_stream__`` for pyarrow, Polars
            and DuckDB.

        Example:
            >>> import tempfile, matrixos as mx
            >>> lh = mx.connect(tempfile.mkdtemp())
            >>> docs = [{"id": 1, "text": "VACUUM removes old files"},
            ...         {"id": 2, "text": "OPTIMIZE compacts small files"}]
            >>> lh.create_table("kb.chunks", docs, format="lance").set_embedding(
            ...     "text", embedder="hash")
            >>> lh.search("kb.chunks", "vacuum a table", k=1, mode="hybrid").column("id")
            <pyarrow.lib.ChunkedArray object at ...>
            [
              [
                1
              ]
            ]
        """
        from matrixos.engine.result import Result
        from matrixos.lance_table import lance_table_or_error

        t = lance_table_or_error(self.table(table))
        hits = t.search(query, k=k, mode=mode, filter=filter, columns=columns)
        return Result.from_table(hits, statement="SEARCH")

    # -- volumes ----------------------------------------------------------------------------
    def volumes(self, schema: str | None = None) -> list[str]:
        """Fully qualified names of the volumes (in ``[catalog.]schema`` when given)."""
        c, s = parse_schema(schema) if schema else (None, None)
        return [v.name for v in self.catalog.list_volumes(c, s)]

    def volume(self, name: str | TableIdent) -> Volume:
        """An existing volume (a governed folder of raw files); raises ``VolumeNotFound``.

        Example:
            >>> import tempfile, matrixos as mx
            >>> lh = mx.connect(tempfile.mkdtemp())
            >>> _ = lh.create_volume("raw.docs").put(b"%PDF-1.4 ...", "scan.pdf")
            >>> [f.name for f in lh.volume("raw.docs").list()]
            ['scan.pdf']
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
            >>> import tempfile, matrixos as mx
            >>> lh = mx.connect(tempfile.mkdtemp())
            >>> lh.create_volume("raw.docs").put(b"%PDF-1.4 ...", "scan.pdf")
            '.../main/raw/.volumes/docs/scan.pdf'
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
        from matrixos.storage._errors import source_errors

        with source_errors(paths, self.warehouse.options):
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
            >>> import tempfile, matrixos as mx
            >>> lh = mx.connect(tempfile.mkdtemp())
            >>> import os
            >>> os.makedirs("photos")
            >>> with open("photos/caption.txt", "w") as f:
            ...     _ = f.write("a cat on a mat")
            >>> print(lh.ingest_media("./photos", "media.photos"))
            main.media.photos: 1 file(s): 1 added, 0 changed, 0 unchanged, 0 failed (version ...)
        """
        from matrixos.connectors.media import ingest_media
        from matrixos.storage._errors import source_errors

        with source_errors(paths, self.warehouse.options):
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
    def _storage_gone(self, info: TableInfo) -> bool:
        """True when nothing is at the entry's location and the entry is too old to be a
        creation in progress: its files were deleted, or the bucket emptied or re-created."""
        if datetime.now(UTC) - info.created_at < CREATING_GRACE:
            return False
        return not self._has_storage(info)

    def _has_storage(self, info: TableInfo) -> bool:
        from matrixos.storage.warehouse import filesystem_for

        fs = filesystem_for(info.location, self.warehouse.options)
        # s3fs answers from listings it cached; another process may have written since.
        fs.invalidate_cache(info.location)
        return bool(fs.exists(info.location))

    def _unless_stale(self, info: TableInfo | None) -> TableInfo | None:
        """``info``, or None after removing it from the catalog when its storage is gone
        (only that entry: a newer table of the same name is never touched)."""
        if info is None or not self._storage_gone(info):
            return info
        log.warning(
            "table %s: replacing its catalog entry, whose storage at %s is gone",
            info.ident,
            info.location,
        )
        with contextlib.suppress(TableNotFound):  # another process replaced it first
            self.catalog.drop_table(info.ident, location=info.location)
        self._tables.pop(info.location, None)
        return None

    def _no_data(self, info: TableInfo) -> TableNotFound:
        """The error for a managed table whose location holds no committed table."""
        if self._storage_gone(info):
            return TableNotFound(
                f"table {info.ident} is in the catalog, but its storage at {info.location} is "
                "gone: its files were deleted, or the bucket was emptied or re-created",
                hint=f"DROP TABLE {info.ident} removes the stale entry; creating the table "
                "again replaces it",
            )
        # The catalog row is written first (it is the lock on the name); a creator that
        # died before its first commit leaves the row without data.
        return TableNotFound(
            f"table {info.ident} is in the catalog but holds no committed data at "
            f"{info.location}: it is still being created, its creator stopped before the first "
            "commit, or its files were deleted",
            hint=f"DROP TABLE {info.ident} removes the entry (the name can then be reused)",
        )

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
                name=str(info.ident),
            )
        return DeltaStore(
            info.location,
            self.warehouse.delta_options(info.location),
            commit_retries=s.commit_retries,
            auto_compact_min_files=_min_files(info, s.auto_compact_min_files),
            name=str(info.ident),
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
                raise self._no_data(info) from e
            self._tables[info.location] = dt
        else:
            try:
                dt.update_incremental()
            except Exception:
                dt = store.open()
                self._tables[info.location] = dt
        return dt


def _require_warehouse(uri: str, catalog_url: str | None, options: StorageOptions) -> None:
    """Raise ``WarehouseNotFound`` unless a warehouse is at ``uri``: a local folder holding
    its catalog (or any folder, with a separate catalog), or an object-store prefix holding
    objects."""
    from matrixos.errors import WarehouseNotFound
    from matrixos.storage.warehouse import filesystem_for, is_remote

    root = normalize_uri(uri)
    if is_remote(root):
        try:
            found = catalog_url is not None or bool(filesystem_for(root, options).exists(root))
        except Exception as e:
            from matrixos.storage._errors import storage_error

            raise storage_error(
                e, f"cannot look for a warehouse at {root}", root, options=options
            ) from e
    else:
        folder = Path(root)
        found = folder.is_dir() and (catalog_url is not None or (folder / "_catalog.db").exists())
    if not found:
        raise WarehouseNotFound(
            f"no warehouse at {root}",
            hint="check the path (--warehouse or MATRIXOS_WAREHOUSE); a command that writes "
            "(ingest, sql CREATE TABLE …) or mx.connect() in Python creates one",
        )


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
