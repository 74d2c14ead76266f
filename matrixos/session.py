"""``connect()`` and the ``Lakehouse`` session: warehouse + catalog + SQL engine."""

from __future__ import annotations

import copy
import getpass
import logging
import sys
import threading
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal

import pyarrow as pa

from matrixos._exit import SESSIONS, OpenAtExit
from matrixos.catalog import TableIdent, TableInfo, catalog_for
from matrixos.catalog.access import Principal, embedded_principal
from matrixos.catalog.lineage import Lineage, LineageLog
from matrixos.catalog.service import TableService
from matrixos.config import Settings, check_names, resolve_settings
from matrixos.engine.usage import TASK_USAGE, TaskUsage
from matrixos.errors import TableNotFound, WarehouseNotFound
from matrixos.jobs.service import Jobs, JobService
from matrixos.jobs.wiring import open_jobs, register_jobs_view
from matrixos.lance_table import lance_table_or_error
from matrixos.storage._errors import storage_error
from matrixos.storage.options import StorageOptions
from matrixos.storage.warehouse import Warehouse, filesystem_for, is_remote, normalize_uri
from matrixos.table import Table, TableContext
from matrixos.tables import open_table

if TYPE_CHECKING:
    from datetime import datetime

    from matrixos.accounts import SessionAccounts
    from matrixos.ai.rag import RAG
    from matrixos.batch import MapBatchesSummary
    from matrixos.compute import ComputePool
    from matrixos.connectors.ingest import IngestSummary
    from matrixos.connectors.media import MediaIngestSummary
    from matrixos.engine.result import Result
    from matrixos.engine.sql import SQLEngine
    from matrixos.iot.maintenance import Maintenance
    from matrixos.metering import StatementMeter
    from matrixos.storage.volume import Volume

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
        **settings: any other ``Settings`` field; with an ``http(s)://`` warehouse (a
            ``matrixos serve``), ``token=`` (and ``timeout=``) for the ``RemoteLakehouse``
            returned instead, which offers ``sql``, ``tables``, ``table``, ``search``.

    Raises:
        ConfigError: an unknown argument (naming the closest valid one) or a bad setting.
        WarehouseNotFound: ``create=False`` and no warehouse is there.

    Example:
        >>> import matrixos as mx, tempfile
        >>> lh = mx.connect(tempfile.mkdtemp())
        >>> lh.sql("SELECT 1 + 1 AS two").fetchall()
        [(2,)]
    """
    if warehouse is not None and warehouse.startswith(("http://", "https://")):
        # A server's URL: the remote SDK (standard-library HTTP, loaded only here).
        from matrixos.server.client import connect_remote

        return connect_remote(warehouse, **settings)  # type: ignore[return-value]
    # connect(catalog=…) is a ConfigError naming catalog_url, not pydantic's ValidationError.
    check_names(settings, [*Settings.model_fields, *_CONNECT_ARGS], what="argument")
    cfg = resolve_settings(
        warehouse=warehouse, catalog_url=catalog_url, compute=compute, **settings
    )
    return Lakehouse(cfg, storage_options=storage_options, create=create)


_CONNECT_ARGS = ("storage_options", "create")


class Lakehouse:
    """A session over one warehouse and catalog. Thread-safe; cheap to create.

    A thin facade: tables are resolved, authorized, opened and created by ``service`` (a
    ``TableService``), SQL runs on the engine, and every call acts as ``principal`` (the
    embedded user, who owns everything, unless ``with_principal`` says otherwise).
    """

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
        self.service = TableService(self.warehouse, self.catalog, settings)
        register_jobs_view(self.service)  # system.compute.jobs
        self.user = settings.user or _whoami()
        # The embedded user: every grant; it owns what it creates as embedded:<OS user>
        # (no server account can take that name) unless settings.user names the owner.
        self.principal = embedded_principal(settings.user, self.user)
        self._ctx = TableContext(self.service, self.principal, lambda: self._engine)
        self._root = self  # a with_principal() view shares its root's engine and pool
        self._lock = threading.Lock()
        self._engine_obj: SQLEngine | None = None
        self._compute: ComputePool | None = None
        self._maintenance: Maintenance | None = None
        self._jobs: JobService | None = None
        self._meter: StatementMeter | None = None
        _OPEN_SESSIONS.add(self)

    def with_principal(self, principal: Principal) -> Lakehouse:
        """This session acting as ``principal``: the same warehouse, catalog, engine and pool,
        with every table call checked against its grants (how a server serves its users).

        Example:
            >>> import tempfile, matrixos as mx
            >>> from matrixos.catalog.access import Principal
            >>> lh = mx.connect(tempfile.mkdtemp())
            >>> _ = lh.create_table("s.t", [{"id": 1}])
            >>> bob = lh.with_principal(Principal("bob", frozenset()))
            >>> bob.sql("SELECT * FROM s.t")
            Traceback (most recent call last):
            matrixos.errors.AccessDenied: bob has no SELECT privilege on main.s.t ...
        """
        view = copy.copy(self)
        view.principal = principal
        view._ctx = TableContext(self.service, principal, lambda: view._engine)
        return view

    def __repr__(self) -> str:
        return f"Lakehouse(warehouse={self.warehouse.uri!r}, catalog={self.catalog!r})"

    def __enter__(self) -> Lakehouse:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop what this session started (IoT ingest, upkeep, engine, meters, job scheduler,
        a private Ray runtime) and its catalog connection. A session still open when the
        program ends is closed before the interpreter shuts down."""
        if self._root is not self:
            return
        _OPEN_SESSIONS.discard(self)
        iot = sys.modules.get("matrixos.iot.ingest")  # loaded: an ingest service may be running
        if iot is not None:
            iot.close_ingest(self)  # its last flush goes through this session's tables
        if self._maintenance is not None:
            self._maintenance.stop()  # before the engine its refreshes run on
            self._maintenance = None
        if self._engine_obj is not None:
            self._engine_obj.close()
            self._engine_obj = None
        if self._meter is not None:
            self._meter.close()  # writes the statements' usage still queued
            self._meter = None
        if self._jobs is not None:
            self._jobs.close()  # its running jobs are queued again for the next scheduler
            self._jobs = None
        if self._compute is not None:
            self._compute.shutdown()  # stops a private Ray runtime this session started
            self._compute = None
        self.service.close()

    @property
    def compute(self) -> ComputePool:
        """The compute pool (``Settings.compute``), started on first use.

        Example:
            >>> import tempfile, matrixos as mx
            >>> lh = mx.connect(tempfile.mkdtemp())
            >>> lh.compute.status()["mode"]  # "ray" with compute="ray" or "ray://host:port"
            'local'
        """
        root = self._root
        if root._compute is None:
            from matrixos.compute import ComputePool

            with root._lock:
                if root._compute is None:
                    root._compute = ComputePool(self.settings)
        return root._compute.start()

    @property
    def jobs(self) -> Jobs:
        """Jobs on the compute pool, as this session's principal: ``submit`` a callable, a SQL
        statement or an entrypoint, ``list``, ``get``, ``reserve`` (see ``matrixos.jobs``).
        This session schedules the queue while no other process does.

        Example:
            >>> import tempfile, matrixos as mx
            >>> lh = mx.connect(tempfile.mkdtemp())
            >>> lh.jobs.submit(max, 3, 7).wait(timeout=60)
            'SUCCEEDED'
            >>> lh.close()
        """
        root = self._root
        if root._jobs is None:
            ray = root.compute.is_ray  # takes the lock itself
            with root._lock:
                if root._jobs is None:
                    options = root.warehouse.options.to_delta()
                    root._jobs = open_jobs(
                        root.service,
                        ray=ray,
                        connect={
                            "warehouse": root.settings.warehouse,
                            "catalog_url": root.settings.catalog_url,
                            "storage_options": options or None,
                            "compute": "local",
                        },
                    )
        return root._jobs.for_principal(self.principal)

    @property
    def _engine(self) -> SQLEngine:
        root = self._root
        if root._engine_obj is None:
            from matrixos.engine.sql import SQLEngine

            with root._lock:
                if root._engine_obj is None:
                    engine = SQLEngine(root.service, num_cpus=lambda: root.compute.num_cpus())
                    # a view with a refresh interval starts the upkeep
                    engine.on_maintenance = root.start_maintenance
                    root._engine_obj = engine
        return root._engine_obj

    @property
    def maintenance(self) -> Maintenance | None:
        """The background upkeep of time series, once started (``start_maintenance``)."""
        return self._root._maintenance

    def start_maintenance(self) -> Maintenance:
        """Start (once) the background upkeep of this warehouse's time series: continuous
        aggregates refreshed at their ``refresh`` interval, ``matrixos.retention`` enforced.
        ``matrixos serve`` starts it; a session starts it when it creates a view with a
        refresh interval (``CREATE MATERIALIZED VIEW … WITH (refresh = …)``). Retention
        deletes data: an embedded session enforces it only once this is called. It stops
        with ``close()``.

        Example:
            >>> import tempfile, matrixos as mx
            >>> lh = mx.connect(tempfile.mkdtemp())
            >>> lh.start_maintenance().refresher.running
            True
            >>> lh.close()
        """
        from matrixos.iot.maintenance import Maintenance

        root = self._root
        engine = root._engine
        with root._lock:
            if root._maintenance is None:
                root._maintenance = Maintenance(root.service, engine.views, root.principal)
                root._maintenance.start()
            return root._maintenance

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
        which); ``auto`` picks ``ray`` when the pool is Ray, the query scans at least
        ``Settings.distributed_min_bytes`` and would take longer here than a Ray stage costs
        (``Settings.ray_stage_ms``). Results do not depend on the engine;
        ``result.stats["engine"]`` says where it ran.

        Example:
            >>> import tempfile, matrixos as mx
            >>> lh = mx.connect(tempfile.mkdtemp())
            >>> _ = lh.create_table("sales.orders", [{"id": 1}, {"id": 2}])
            >>> lh.sql("SELECT count(*) FROM sales.orders").scalar()
            2
        """
        meter = self._statement_meter()
        running = meter.begin(self.principal) if meter else None
        tasks: list[TaskUsage] = []  # what its Ray tasks used, if it runs on the pool
        token = TASK_USAGE.set(tasks) if running else None
        try:
            result = self._engine.execute(
                query,
                dialect or self.settings.default_dialect,
                engine=engine,
                principal=self.principal,
            )
        except BaseException:
            if meter and running:
                meter.end(running)
            raise
        finally:
            if token is not None:
                TASK_USAGE.reset(token)
            if meter and running:
                meter.tasks(running, tasks)
        if meter and running:
            # Metered until its rows are read to the end, or the result is dropped unread.
            result.on_end(lambda: meter.end(running))
            weakref.finalize(result, meter.end_later, running)
        return result

    def _statement_meter(self) -> StatementMeter | None:
        """The meter of this session's statements (``Settings.meter_statements``), or None."""
        root = self._root
        if not self.settings.meter_statements:
            return None
        if root._meter is None:
            from matrixos.metering import StatementMeter

            with root._lock:
                if root._meter is None:
                    root._meter = StatementMeter(root.service)
        return root._meter

    # -- accounts, credit and usage ---------------------------------------------------------
    @property
    def accounts(self) -> SessionAccounts:
        """Accounts and their prepaid credit in degrees, as this session's principal
        (``lh.accounts.credit("team-a", degrees=100)``; see ``matrixos.accounts``)."""
        from matrixos.accounts import SessionAccounts

        return SessionAccounts(self.catalog, self.principal)

    def usage(
        self,
        account: str | None = None,
        *,
        by: Literal["hour", "day", "job"] = "day",
        since: datetime | str | None = None,
        until: datetime | str | None = None,
    ) -> pa.Table:
        """Metered use summed per ``by`` (``hour``, ``day`` or ``job``) with a ``degrees``
        column, from ``system.billing.usage``: ``account``'s, or every account this
        session's principal may see (an admin: all; others: their own and their groups').

        Example:
            >>> import tempfile, matrixos as mx
            >>> lh = mx.connect(tempfile.mkdtemp())
            >>> lh.usage(by="day").column_names[:2]
            ['period', 'account']
        """
        from matrixos.metering import USAGE_READER, USAGE_TABLE, empty_usage, usage_query

        if self._root._meter is not None:
            self._root._meter.flush()
        sql = usage_query(self.principal, account=account, by=by, since=since, until=until)
        try:
            self.catalog.get_table(TableIdent.parse(USAGE_TABLE))
        except TableNotFound:
            return empty_usage(by)
        return self._engine.execute(sql, "duckdb", principal=USAGE_READER).to_arrow()

    def lineage(
        self,
        table: str,
        *,
        direction: Literal["up", "down", "both"] = "both",
        depth: int = 5,
    ) -> Lineage:
        """Where ``table``'s rows came from (``up``) and what was made from them (``down``),
        up to ``depth`` links away, with versions, from ``system.lineage.events``. Tables this
        session's principal may not read show as ``<hidden>``. ``print()`` draws a tree.

        Example:
            >>> import tempfile, matrixos as mx
            >>> lh = mx.connect(tempfile.mkdtemp())
            >>> _ = lh.create_table("s.a", [{"id": 1}])
            >>> _ = lh.sql("CREATE TABLE s.b AS SELECT * FROM s.a")
            >>> [(e.source.name, e.source.version) for e in lh.lineage("s.b").upstream]
            [('main.s.a', 0)]
        """
        log = LineageLog.of(self.service)
        return log.graph(self.principal, table, direction=direction, depth=depth)

    # -- schemas ----------------------------------------------------------------------------
    def create_schema(
        self, name: str, *, comment: str | None = None, if_not_exists: bool = True
    ) -> None:
        """Create ``[catalog.]schema``."""
        self.service.create_schema(
            self.principal, name, comment=comment, if_not_exists=if_not_exists
        )

    def schemas(self, catalog: str | None = None) -> list[str]:
        return self.service.schemas(catalog)

    def drop_schema(self, name: str, *, if_exists: bool = False) -> None:
        self.service.drop_schema(self.principal, name, if_exists=if_exists)

    # -- tables -----------------------------------------------------------------------------
    def tables(self, schema: str | None = None) -> list[str]:
        """Fully qualified names of the tables (in ``[catalog.]schema`` when given) that this
        session's principal may read. The platform's own tables (catalog ``system``: audit,
        usage, lineage) are listed only when asked for (``lh.tables("system.lineage")``)."""
        infos = self.service.tables(self.principal, schema)
        return [i.name for i in infos if schema or i.ident.catalog != "system"]

    def table(self, name: str | TableIdent) -> Table:
        """An existing table; raises ``TableNotFound``. Its reads need ``SELECT``, its
        writes ``MODIFY``. The entry comes from the service's catalog cache (one read of the
        catalog's change counter while nothing changed)."""
        return self._open(self.service.cache.get_table(TableIdent.parse(name)))

    def _open(self, info: TableInfo) -> Table:
        return open_table(self._ctx, info)

    def create_table(
        self,
        name: str,
        data: Any = None,
        *,
        schema: pa.Schema | None = None,
        partition_by: Sequence[str] | None = None,
        format: Literal["delta", "lance"] | str = "delta",
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
        info = self.service.create_table(
            self.principal,
            name,
            data,
            schema=schema,
            partition_by=partition_by,
            format=format,
            comment=comment,
            properties=properties,
            mode=mode,
            create_schema=create_schema,
        )
        return self._open(info)

    def register_table(
        self,
        name: str,
        location: str,
        *,
        format: str | None = None,
        comment: str | None = None,
        create_schema: bool = True,
    ) -> Table:
        """Add an existing Delta table (written by Spark, Databricks, delta-rs…) or Lance
        dataset (lance, LanceDB), or a table of any registered format, as external; ``format``
        is detected when not given.

        Dropping it later removes only the catalog entry, never its files.
        """
        return self._open(
            self.service.register_table(
                self.principal,
                name,
                location,
                format=format,
                comment=comment,
                create_schema=create_schema,
            )
        )

    def drop_table(self, name: str, *, if_exists: bool = False, purge: bool = True) -> None:
        """Remove a table; a managed table's files are deleted, an external one's kept."""
        self.service.drop_table(self.principal, name, if_exists=if_exists, purge=purge)

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

        t = lance_table_or_error(self.table(table))
        hits = t.search(query, k=k, mode=mode, filter=filter, columns=columns)
        return Result.from_table(hits, statement="SEARCH")

    # -- volumes ----------------------------------------------------------------------------
    def volumes(self, schema: str | None = None) -> list[str]:
        """Fully qualified names of the volumes (in ``[catalog.]schema`` when given)."""
        return self.service.volumes(self.principal, schema)

    def volume(self, name: str | TableIdent) -> Volume:
        """An existing volume (a governed folder of raw files); raises ``VolumeNotFound``.

        Example:
            >>> import tempfile, matrixos as mx
            >>> lh = mx.connect(tempfile.mkdtemp())
            >>> _ = lh.create_volume("raw.docs").put(b"%PDF-1.4 ...", "scan.pdf")
            >>> [f.name for f in lh.volume("raw.docs").list()]
            ['scan.pdf']
        """
        return self.service.volume(self.principal, name)

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
        return self.service.create_volume(
            self.principal,
            name,
            comment=comment,
            if_not_exists=if_not_exists,
            create_schema=create_schema,
        )

    def drop_volume(self, name: str, *, if_exists: bool = False) -> None:
        """Remove a volume; a managed volume's files are deleted."""
        self.service.drop_volume(self.principal, name, if_exists=if_exists)

    def open_uri(self, uri: str, mode: str = "rb") -> IO[Any]:
        """Open a volume file by its full URI (e.g. a table's ``uri`` column) for reading."""
        return self.service.open_uri(self.principal, uri, mode)

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
                self.service,
                self.principal,
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
                self.service,
                self.principal,
                paths,
                table,
                volume=volume,
                recursive=recursive,
                thumbnail_size=thumbnail_size,
                progress=progress,
            )


def _require_warehouse(uri: str, catalog_url: str | None, options: StorageOptions) -> None:
    """Raise ``WarehouseNotFound`` unless a warehouse is at ``uri``: a local folder holding
    its catalog (or any folder, with a separate catalog), or an object-store prefix holding
    objects."""
    root = normalize_uri(uri)
    if is_remote(root):
        try:
            found = catalog_url is not None or bool(filesystem_for(root, options).exists(root))
        except Exception as e:
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


def _whoami() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        return "unknown"


# Root sessions not closed yet: those left open when the program ends are closed before the
# interpreter shuts down, so no refresh, meter or scheduler thread of theirs is inside a table
# write then (which crashes the process).
_OPEN_SESSIONS: OpenAtExit[Lakehouse] = OpenAtExit(lambda s: s.close(), stage=SESSIONS)
