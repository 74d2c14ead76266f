"""``TableService``: the one place where a table is resolved, authorized, opened and created.

The SQL engine, ``Table``, connectors, ``map_batches`` and RAG take this service (never the
``Lakehouse``): it owns

- name resolution through the catalog, with every call checked against the caller's
  ``Principal`` (``matrixos.catalog.access``);
- the format registry lookup (``matrixos.storage.tablestore``): a catalog entry's ``format``
  names its ``TableStore`` class, so no caller branches on a format's name;
- the catalog cache (``self.cache``, ``matrixos.catalog.cache``): entries and policies read
  once per catalog change, so resolving a cached table costs one counter read;
- the latest-snapshot cache (refreshed incrementally) and opening a table at a version;
- the create / register / drop protocols, where the catalog row is the lock on a name: of
  several processes creating one name exactly one inserts the row, and only that one touches
  the location.

Example:
    >>> import tempfile, matrixos as mx
    >>> lh = mx.connect(tempfile.mkdtemp())
    >>> svc = lh.service
    >>> info = svc.create_table(lh.principal, "s.t", [{"id": 1}])
    >>> svc.store(info).version()
    0
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any, Literal

import pyarrow as pa

from matrixos.ai.embed import PROP_SOURCE, embed_rows
from matrixos.catalog import lineage_runs
from matrixos.catalog.access import Principal
from matrixos.catalog.base import Catalog, TableInfo, VolumeInfo
from matrixos.catalog.cache import CatalogCache
from matrixos.catalog.names import TableIdent, parse_schema
from matrixos.catalog.pending import PendingRows, PendingSource, PendingSources
from matrixos.catalog.policies import PolicyStore, TablePolicy
from matrixos.config import Settings
from matrixos.errors import AccessDenied, NotSupported, TableExists, TableNotFound
from matrixos.storage.arrow import to_arrow_table
from matrixos.storage.tablestore import (
    TableStore,
    WriteResult,
    detect_format,
    formats,
    store_class,
)
from matrixos.storage.volume import Volume, volume_location
from matrixos.storage.warehouse import Warehouse, filesystem_for, normalize_uri

# A catalog entry is written before its table's first file (the entry is the lock on the name):
# an entry younger than this with nothing at its location may be a creation in progress.
CREATING_GRACE = timedelta(minutes=10)
# An append records itself in ``updated_at`` at most this often per table and process.
TOUCH_COALESCE_S = 1.0

log = logging.getLogger(__name__)
#: The ``format`` of a system view's ``TableInfo`` (``register_view``): no storage behind it.
VIEW_FORMAT = "view"

#: Platform tables every principal may query, seeing only its own rows: table → the column
#: (the table's partition column) that holds the principal's name (``own_rows``).
OWN_ROWS: dict[str, str] = {"system.query.history": "principal"}


class TableService:
    """Tables and volumes of one warehouse and catalog, for any principal. Thread-safe."""

    def __init__(self, warehouse: Warehouse, catalog: Catalog, settings: Settings) -> None:
        self.warehouse = warehouse
        self.catalog = catalog
        self.settings = settings
        self._lock = threading.Lock()
        self._latest: dict[str, Any] = {}  # location → the latest snapshot handle seen
        self._touched: dict[str, float] = {}  # location → when an append last touched it
        # Catalog entries and policies, re-read only when the catalog's change counter moved.
        self.cache = CatalogCache(catalog)
        self.policies = PolicyStore(catalog, self.cache)  # row filters and column masks
        self._pending = PendingSources()
        self._views: dict[str, Callable[[Principal], pa.Table]] = {}

    def close(self) -> None:
        self._latest.clear()
        self.cache.clear()
        self.catalog.close()

    # -- rows acknowledged by a write-ahead log, not committed yet (catalog/pending.py) ------
    def register_pending_source(self, source: PendingSource) -> Callable[[], None]:
        """Let queries of a table's latest version see ``source(ident, version)``'s rows (a
        writer's acknowledged rows that version lacks); returns a function that unregisters
        it."""
        return self._pending.register(source)

    def pending_rows(self, ident: TableIdent, version: int) -> PendingRows | None:
        """The acknowledged rows of ``ident`` that its ``version`` lacks, from every pending
        source (``None`` when there are none)."""
        return self._pending.rows(ident, version)

    # -- system views: tables computed per principal (``system.compute.jobs``) ---------------
    def register_view(self, name: str, rows: Callable[[Principal], pa.Table]) -> None:
        """Let SQL read ``name`` (``catalog.schema.table``) as ``rows(principal)``: the rows
        the asking principal may see, computed when a query binds it (the jobs queue, which
        lives in the catalog database, registers ``system.compute.jobs``)."""
        self._views[str(TableIdent.parse(name))] = rows

    def view_rows(self, info: TableInfo, principal: Principal) -> pa.Table:
        """A system view's rows for ``principal`` (``info`` from ``resolve``)."""
        return self._views[info.name](principal)

    # -- authorization ----------------------------------------------------------------------
    def authorize(self, principal: Principal, privilege: str, info: TableInfo) -> TableInfo:
        """``info`` when ``principal`` holds ``privilege`` on it; else ``AccessDenied``."""
        principal.check(privilege, info.name, owner=info.owner)
        return info

    def policy(self, principal: Principal, info: TableInfo) -> TablePolicy | None:
        """The row filters and column masks that apply to ``principal`` on the table (None
        when none do): reads must go through the SQL engine, which applies them."""
        return self.policies.applying(principal, [info.name], lambda _: info.owner).get(info.name)

    def _may_create(self, principal: Principal, ident: TableIdent) -> None:
        schema = f"{ident.catalog}.{ident.schema}"
        if not principal.may("CREATE", schema):
            raise AccessDenied(
                f"{principal.name} has no CREATE privilege on schema {schema}",
                hint=f"an admin can run: GRANT CREATE ON {schema} TO {principal.name}",
            )

    # -- resolution -------------------------------------------------------------------------
    def resolve(
        self, principal: Principal, name: str | TableIdent, privilege: str = "SELECT"
    ) -> TableInfo:
        """The catalog entry of table ``name``, checked for ``privilege``; ``TableNotFound``.
        A query of a platform table of ``OWN_ROWS`` is let through: the binder reads only the
        principal's own rows of it (``own_rows``)."""
        ident = TableIdent.parse(name)
        if str(ident) in self._views:
            if privilege != "SELECT":
                raise AccessDenied(f"{ident} is a system view: it can only be read with SQL")
            return TableInfo(ident, VIEW_FORMAT, f"{VIEW_FORMAT}:{ident}", owner="system")
        info = self.cache.get_table(ident)
        if privilege == "SELECT" and self.own_rows(principal, info) is not None:
            return info
        return self.authorize(principal, privilege, info)

    def own_rows(self, principal: Principal, info: TableInfo) -> tuple[str, str] | None:
        """``(column, value)`` when ``principal`` may read only the rows of ``info`` whose
        partition ``column`` is ``value`` (its own rows of ``system.query.history``); None when
        it reads the table as its grants say (an admin, a grantee, any other table)."""
        column = OWN_ROWS.get(info.name)
        if column is None or info.owner != "system" or principal.may("SELECT", info.name):
            return None
        return column, principal.name

    def tables(self, principal: Principal, schema: str | None = None) -> list[TableInfo]:
        """The tables ``principal`` may read (in ``[catalog.]schema`` when given)."""
        if schema:
            c, s = parse_schema(schema)
            infos = self.catalog.list_tables(c, s)
        else:
            infos = self.catalog.list_tables()
        return [i for i in infos if principal.may("SELECT", i.name, owner=i.owner)]

    def table(self, principal: Principal, name: str | TableIdent) -> TableHandle:
        """The table ``name`` as ``principal`` may use it (its reads and writes check)."""
        ident = TableIdent.parse(name)
        if str(ident) in self._views:
            raise AccessDenied(f"{ident} is a system view: it can only be read with SQL")
        return TableHandle(self, principal, self.cache.get_table(ident))

    def store(self, info: TableInfo) -> TableStore:
        """The ``TableStore`` of a catalog entry (its format's, from the registry)."""
        return store_class(info.format).configured(
            info.location,
            self.warehouse,
            self.settings,
            name=str(info.ident),
            properties=info.properties,
        )

    def snapshot(
        self,
        info: TableInfo,
        version: int | None = None,
        timestamp: datetime | str | None = None,
    ) -> Any:
        """The table's snapshot handle: the latest (cached, refreshed incrementally when the
        format can) or a past one. A managed table with no data says why."""
        store = self.store(info)
        if version is not None or timestamp is not None:
            return store.open(version=version, timestamp=timestamp)
        handle = self._latest.get(info.location)
        if handle is not None and hasattr(handle, "update_incremental"):
            if store.is_latest(handle):  # told by a stat where it can be: no log listing
                return handle
            try:
                handle.update_incremental()
                return handle
            except Exception:
                pass
        try:
            handle = store.open()
        except TableNotFound as e:
            if info.external:
                raise
            raise self.no_data(info) from e
        if hasattr(handle, "update_incremental"):
            self._latest[info.location] = handle
        return handle

    def touch(self, info: TableInfo, *, coalesce: bool = False) -> None:
        """Record a write in the catalog (``updated_at``). With ``coalesce`` (an append), at
        most once a second per table and process: a notebook's many small appends would each
        wait for a catalog write (1-8 ms on SQLite, as long as the append itself)."""
        if coalesce:
            now = time.monotonic()
            last = self._touched.get(info.location)
            if last is not None and now - last < TOUCH_COALESCE_S:
                return
            self._touched[info.location] = now
        self.catalog.touch(info.ident)
        self.cache.forget(("table", info.ident))  # updated_at moved; the counter did not

    def update_properties(self, info: TableInfo, properties: Mapping[str, str]) -> TableInfo:
        """The entry with ``properties`` replacing its own."""
        import dataclasses

        return self.catalog.update_table(dataclasses.replace(info, properties=dict(properties)))

    # -- stale entries ------------------------------------------------------------------------
    def has_storage(self, info: TableInfo) -> bool:
        fs = filesystem_for(info.location, self.warehouse.options)
        # s3fs answers from listings it cached; another process may have written since.
        fs.invalidate_cache(info.location)
        return bool(fs.exists(info.location))

    def storage_gone(self, info: TableInfo) -> bool:
        """True when nothing is at the entry's location and the entry is too old to be a
        creation in progress: its files were deleted, or the bucket emptied or re-created."""
        if datetime.now(UTC) - info.created_at < CREATING_GRACE:
            return False
        return not self.has_storage(info)

    def unless_stale(self, info: TableInfo | None) -> TableInfo | None:
        """``info``, or None after removing it from the catalog when its storage is gone
        (only that entry: a newer table of the same name is never touched)."""
        if info is None or not self.storage_gone(info):
            return info
        log.warning(
            "table %s: replacing its catalog entry, whose storage at %s is gone",
            info.ident,
            info.location,
        )
        with contextlib.suppress(TableNotFound):  # another process replaced it first
            self.catalog.drop_table(info.ident, location=info.location)
        self._latest.pop(info.location, None)
        return None

    def no_data(self, info: TableInfo) -> TableNotFound:
        """The error for a managed table whose location holds no committed table."""
        if self.storage_gone(info):
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

    # -- schemas ----------------------------------------------------------------------------
    def create_schema(
        self,
        principal: Principal,
        name: str,
        *,
        comment: str | None = None,
        if_not_exists: bool = True,
    ) -> None:
        catalog, schema = parse_schema(name)
        principal.check("CREATE", catalog + ".*")
        self.catalog.create_schema(
            catalog, schema, comment=comment, owner=principal.name, if_not_exists=if_not_exists
        )

    def schemas(self, catalog: str | None = None) -> list[str]:
        return [f"{c}.{s}" for c, s in self.catalog.list_schemas(catalog)]

    def drop_schema(self, principal: Principal, name: str, *, if_exists: bool = False) -> None:
        catalog, schema = parse_schema(name)
        principal.check("MANAGE", f"{catalog}.{schema}")
        self.catalog.drop_schema(catalog, schema, if_exists=if_exists)

    def _ensure_schema(self, principal: Principal, ident: TableIdent) -> None:
        if not self.catalog.schema_exists(ident.catalog, ident.schema):
            self.catalog.create_schema(
                ident.catalog, ident.schema, owner=principal.name, if_not_exists=True
            )

    # -- tables: the catalog row is the lock --------------------------------------------------
    def create_table(
        self,
        principal: Principal,
        name: str | TableIdent,
        data: Any = None,
        *,
        schema: pa.Schema | None = None,
        partition_by: Sequence[str] | None = None,
        format: str = "delta",
        comment: str | None = None,
        properties: Mapping[str, str] | None = None,
        mode: Literal["error", "ignore", "overwrite"] = "error",
        create_schema: bool = True,
    ) -> TableInfo:
        """Create a managed table from ``data`` or ``schema``.

        ``mode``: ``error`` raises ``TableExists`` when the name is taken, ``ignore`` returns
        the existing entry, ``overwrite`` replaces its rows (and schema: ``MODIFY`` needed).
        """
        cls = store_class(format)
        if not cls.writable:
            raise NotSupported(
                f"format={format!r} is read-only: register an existing table instead",
                hint="writable formats: "
                + ", ".join(f for f in formats() if store_class(f).writable),
            )
        ident = TableIdent.parse(name)
        self._may_create(principal, ident)
        existing = self.unless_stale(self.catalog.find_table(ident))
        if existing is not None:
            if mode != "error" and self.has_storage(existing):
                if mode == "overwrite":
                    rows = data if data is not None else schema.empty_table()  # type: ignore[union-attr]
                    TableHandle(self, principal, existing).overwrite(rows, evolve=True)
                return existing
            if not self.has_storage(existing):  # its creator is still at it, or it is gone
                raise TableExists(
                    f"table {ident} already exists in the catalog, but nothing is stored at "
                    f"{existing.location} yet: it is being created right now, or its files were "
                    "deleted",
                    hint=f"if no one is creating it, DROP TABLE {ident} removes the entry",
                )
            raise TableExists(f"table {ident} already exists", hint="use mode='overwrite'")
        # A format's own table properties (delta.appendOnly, delta.logRetentionDuration…) go
        # into the table's metadata, where every engine of that format honours them; another
        # format's are refused rather than silently kept as catalog properties only.
        props = dict(properties or {})
        native = {k: v for k, v in props.items() if k.startswith(format + ".")}
        foreign = sorted(k for k in props if k.split(".")[0] in formats() and k not in native)
        if foreign:
            prefix = foreign[0].split(".")[0]
            raise NotSupported(
                f"table properties {foreign} apply to {prefix.capitalize()} tables, not {format}"
            )
        if create_schema:
            self._ensure_schema(principal, ident)
        location = self.warehouse.table_location(*ident)
        info = TableInfo(
            ident=ident,
            format=format,
            location=location,
            comment=comment,
            properties=props,
            owner=principal.name,
        )
        store = self.store(info)
        # Of several processes creating one name, exactly one inserts the row (primary key; the
        # others get TableExists), and only that one touches the location. Writing the files
        # first let a loser delete the winner's files as "leftovers" or commit its own rows
        # under the winner's entry.
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
                properties=native or None,
            )
        except BaseException:
            with contextlib.suppress(Exception):
                self.catalog.drop_table(ident)
            with contextlib.suppress(Exception):
                self.warehouse.remove(location)
            raise
        if lineage_runs.current() is not None and data is not None:
            lineage_runs.wrote(self, info.name, store.version(), principal.name)
        return self.catalog.get_table(ident)

    def register_table(
        self,
        principal: Principal,
        name: str | TableIdent,
        location: str,
        *,
        format: str | None = None,
        comment: str | None = None,
        create_schema: bool = True,
    ) -> TableInfo:
        """Add an existing table at ``location`` as external (``format`` detected when not
        given); dropping it later removes only the catalog entry."""
        ident = TableIdent.parse(name)
        self._may_create(principal, ident)
        location = normalize_uri(location)
        if format is None:
            format = detect_format(
                location, self.warehouse.fs if self.warehouse.is_remote else None
            )
        probe = TableInfo(ident=ident, format=format, location=location, external=True)
        store = self.store(probe)
        if not store.exists():
            raise TableNotFound(f"no {format.capitalize()} table at {location}")
        store.open()  # refuses protocols it cannot read
        if create_schema:
            self._ensure_schema(principal, ident)
        self.unless_stale(self.catalog.find_table(ident))
        info = TableInfo(
            ident=ident,
            format=format,
            location=location,
            external=True,
            comment=comment,
            owner=principal.name,
        )
        self.catalog.create_table(info)
        return self.catalog.get_table(ident)

    def drop_table(
        self,
        principal: Principal,
        name: str | TableIdent,
        *,
        if_exists: bool = False,
        purge: bool = True,
    ) -> None:
        """Remove a table; a managed table's files are deleted, an external one's kept."""
        ident = TableIdent.parse(name)
        existing = self.catalog.find_table(ident)
        if existing is not None:
            self.authorize(principal, "MANAGE", existing)
        try:
            info = self.catalog.drop_table(ident)
        except TableNotFound:
            if if_exists:
                return
            raise
        self._latest.pop(info.location, None)
        self.policies.drop_table(info.name)
        if purge and not info.external:
            self.warehouse.remove(info.location)

    # -- volumes ----------------------------------------------------------------------------
    def volumes(self, principal: Principal, schema: str | None = None) -> list[str]:
        c, s = parse_schema(schema) if schema else (None, None)
        return [
            v.name
            for v in self.catalog.list_volumes(c, s)
            if principal.may("SELECT", v.name, owner=v.owner, kind="volume")
        ]

    def volume(
        self, principal: Principal, name: str | TableIdent, privilege: str = "SELECT"
    ) -> Volume:
        """Volume ``name``, checked for ``privilege`` (``SELECT`` to read its files, ``MODIFY``
        to add or delete some); ``VolumeNotFound``, ``AccessDenied``. Its ``put``/``delete``
        check ``MODIFY`` too."""
        info = self.catalog.get_volume(TableIdent.parse(name))
        principal.check(privilege, info.name, owner=info.owner, kind="volume")
        return Volume(
            info.name,
            info.location,
            self.warehouse.options,
            check_write=lambda: principal.check(
                "MODIFY", info.name, owner=info.owner, kind="volume"
            ),
        )

    def create_volume(
        self,
        principal: Principal,
        name: str | TableIdent,
        *,
        comment: str | None = None,
        if_not_exists: bool = True,
        create_schema: bool = True,
    ) -> Volume:
        ident = TableIdent.parse(name)
        self._may_create(principal, ident)
        if self.catalog.find_volume(ident) is not None:
            if if_not_exists:
                return self.volume(principal, ident)
            raise TableExists(f"volume {ident} already exists")
        if create_schema:
            self._ensure_schema(principal, ident)
        location = volume_location(self.warehouse, *ident)
        info = VolumeInfo(ident=ident, location=location, comment=comment, owner=principal.name)
        try:
            # The catalog row is the lock (as for tables): only its winner touches the folder.
            self.catalog.create_volume(info)
        except TableExists:
            if if_not_exists:
                return self.volume(principal, ident)
            raise
        # Files left by a drop that died before deleting them must not resurface here.
        self.warehouse.remove(location)
        if not self.warehouse.is_remote:
            Path(location).mkdir(parents=True, exist_ok=True)
        return self.volume(principal, ident)

    def drop_volume(
        self, principal: Principal, name: str | TableIdent, *, if_exists: bool = False
    ) -> None:
        ident = TableIdent.parse(name)
        existing = self.catalog.find_volume(ident)
        if existing is not None:
            principal.check("MANAGE", existing.name, owner=existing.owner, kind="volume")
        try:
            info = self.catalog.drop_volume(ident)
        except TableNotFound:
            if if_exists:
                return
            raise
        if not info.external:
            self.warehouse.remove(info.location)

    def open_uri(self, principal: Principal, uri: str, mode: str = "rb") -> IO[Any]:
        """Open a volume file by its full URI (e.g. a table's ``uri`` column) for reading."""
        full = normalize_uri(uri)
        owners = [v for v in self.catalog.list_volumes() if full.startswith(v.location + "/")]
        if not owners:
            raise AccessDenied(f"{uri} is not a file in any volume of this lakehouse")
        owner = max(owners, key=lambda v: len(v.location))
        principal.check("SELECT", owner.name, owner=owner.owner, kind="volume")
        return Volume(owner.name, owner.location, self.warehouse.options).open_uri(full, mode)


class TableHandle:
    """One table as one principal may use it: every read checked for ``SELECT``, every write
    for ``MODIFY``, rows embedded when the table names an embedding, the catalog told of each
    write. The SQL engine's DDL and DML and the SDK's ``Table`` both write through it, so what
    a write means is defined once.

    Example:
        >>> import tempfile, matrixos as mx
        >>> lh = mx.connect(tempfile.mkdtemp())
        >>> _ = lh.create_table("s.t", [{"id": 1}])
        >>> h = lh.service.table(lh.principal, "s.t")
        >>> h.append([{"id": 2}]).version, h.version
        (1, 1)
    """

    def __init__(self, service: TableService, principal: Principal, info: TableInfo) -> None:
        self.service = service
        self.principal = principal
        self.info = info

    def __repr__(self) -> str:
        return f"TableHandle({self.name!r}, principal={self.principal.name!r})"

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def store(self) -> TableStore:
        return self.service.store(self.info)

    def readable(self) -> TableInfo:
        """The entry, after checking ``SELECT``."""
        return self.service.authorize(self.principal, "SELECT", self.info)

    def writable(self) -> TableStore:
        """The store, after checking ``MODIFY``."""
        self.service.authorize(self.principal, "MODIFY", self.info)
        return self.store

    def unfiltered(self, what: str) -> None:
        """Refuse ``what`` (a write that picks rows by their values: DELETE, UPDATE, MERGE, an
        overwrite ``where``) to a principal that sees the table through a row filter or a
        column mask: the rows it changes would tell what it may not see."""
        if self.service.policy(self.principal, self.info) is not None:
            raise AccessDenied(
                f"{what} on {self.name} is not allowed to {self.principal.name}: row filters or "
                "column masks apply to it on this table",
                hint="INSERT and append still work; the table's owner or an admin can run it",
            )

    def known(self) -> TableInfo:
        """The entry, after checking that the principal holds some privilege on the table:
        its version and schema are no secret to a writer (INSERT names columns)."""
        if not self.principal.may("MODIFY", self.info.name, owner=self.info.owner):
            self.readable()
        return self.info

    # -- reading ----------------------------------------------------------------------------
    def snapshot(self) -> Any:
        """The latest snapshot handle (the service's cache)."""
        return self.service.snapshot(self.known())

    @property
    def version(self) -> int:
        return self.store.version(self.snapshot())

    @property
    def schema(self) -> pa.Schema:
        return self.store.schema(self.snapshot())

    @property
    def partition_by(self) -> list[str]:
        return self.store.partition_by(self.snapshot())

    def history(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Commits, newest first. To a principal with row filters or masks on the table, only
        each commit's version, time and operation: a DELETE's predicate and a MERGE's counts
        would tell what they hide."""
        self.readable()
        rows = self.store.history(limit)
        if self.service.policy(self.principal, self.info) is None:
            return rows
        kept = ("version", "timestamp", "operation")
        return [{k: r[k] for k in kept if k in r} for r in rows]

    # -- writing ----------------------------------------------------------------------------
    def _rows(self, data: Any) -> Any:
        """``data`` with the vectors of the embedding the table names (if any) filled in."""
        if PROP_SOURCE not in self.info.properties:
            return data
        return embed_rows(self.info.properties, to_arrow_table(data))

    def _done(self, result: WriteResult, *, append: bool = False) -> WriteResult:
        self.service.touch(self.info, coalesce=append)
        lineage_runs.wrote(self.service, self.name, result.version, self.principal.name)
        return result

    # ``commit_metadata`` is recorded in the commit, atomically with the rows (map_batches
    # records which batches a commit holds).
    def append(
        self,
        data: Any,
        *,
        evolve: bool = False,
        commit_metadata: Mapping[str, str] | None = None,
    ) -> WriteResult:
        store = self.writable()
        return self._done(
            store.append(self._rows(data), evolve=evolve, commit_metadata=commit_metadata),
            append=True,
        )

    def overwrite(
        self,
        data: Any,
        *,
        evolve: bool = False,
        where: str | None = None,
        commit_metadata: Mapping[str, str] | None = None,
    ) -> WriteResult:
        store = self.writable()
        if where is not None:
            self.unfiltered("an overwrite with a condition")
        return self._done(
            store.overwrite(
                self._rows(data), evolve=evolve, predicate=where, commit_metadata=commit_metadata
            )
        )

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
        store = self.writable()
        self.unfiltered("MERGE")
        return self._done(
            store.merge(
                self._rows(data),
                on,
                evolve=evolve,
                when_matched=when_matched,
                when_not_matched=when_not_matched,
                delete_not_matched_by_source=delete_not_matched_by_source,
                commit_metadata=commit_metadata,
            )
        )

    def delete(self, where: str | None = None) -> WriteResult:
        store = self.writable()
        self.unfiltered("DELETE")
        return self._done(store.delete(where))

    def update(self, set: Mapping[str, str], where: str | None = None) -> WriteResult:
        store = self.writable()
        self.unfiltered("UPDATE")
        return self._done(store.update(set, where))

    def optimize(self, zorder_by: Sequence[str] | None = None) -> dict[str, Any]:
        out = self.writable().optimize(zorder_by)
        self.service.touch(self.info)
        return out

    def vacuum(
        self, retention_hours: int | None = None, *, dry_run: bool = False, enforce: bool = True
    ) -> list[str]:
        return self.writable().vacuum(retention_hours, dry_run=dry_run, enforce=enforce)
