"""The catalog in a database: catalogs, schemas and tables, on SQLite or PostgreSQL (SQLAlchemy).

Many processes may share one catalog: every change is one short transaction, names are primary
keys (two creators of one name: one wins, the other gets ``TableExists``), and SQLite runs in WAL
mode with a busy timeout so writers queue instead of failing.
"""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError

from matrixos.catalog.base import (
    Catalog,
    TableInfo,
    VolumeInfo,
    no_schema,
    no_table,
    schema_not_empty,
)
from matrixos.catalog.base import now as _now
from matrixos.catalog.names import DEFAULT_CATALOG, DEFAULT_SCHEMA, TableIdent
from matrixos.errors import ConfigError, SchemaNotFound, StorageError, TableExists, VolumeNotFound

__all__ = ["SQLCatalog", "TableInfo", "VolumeInfo"]

_meta = sa.MetaData()
_catalogs = sa.Table(
    "mx_catalogs",
    _meta,
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("comment", sa.Text),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)
_schemas = sa.Table(
    "mx_schemas",
    _meta,
    sa.Column("catalog", sa.String(128), primary_key=True),
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("comment", sa.Text),
    sa.Column("owner", sa.String(256)),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)
_tables = sa.Table(
    "mx_tables",
    _meta,
    sa.Column("catalog", sa.String(128), primary_key=True),
    sa.Column("schema", sa.String(128), primary_key=True),
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("format", sa.String(32), nullable=False),
    sa.Column("location", sa.Text, nullable=False),
    sa.Column("external", sa.Boolean, nullable=False),
    sa.Column("comment", sa.Text),
    sa.Column("properties", sa.Text, nullable=False),
    sa.Column("owner", sa.String(256)),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)
# Volumes (governed folders of raw files) have their own names, apart from tables: a volume is
# not queryable as a table, and ``list_tables`` must never show one.
_volumes = sa.Table(
    "mx_volumes",
    _meta,
    sa.Column("catalog", sa.String(128), primary_key=True),
    sa.Column("schema", sa.String(128), primary_key=True),
    sa.Column("name", sa.String(128), primary_key=True),
    sa.Column("location", sa.Text, nullable=False),
    sa.Column("external", sa.Boolean, nullable=False),
    sa.Column("comment", sa.Text),
    sa.Column("owner", sa.String(256)),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)


def _aware(ts: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything we store is UTC.
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


class SQLCatalog(Catalog):
    """Catalogs, schemas and tables in a SQL database (``sqlite://…``, ``postgresql://…``).

    Example:
        >>> cat = SQLCatalog("sqlite://")
        >>> cat.create_schema("main", "sales")
        >>> [s for _, s in cat.list_schemas()]
        ['default', 'sales']
    """

    def __init__(self, url: str) -> None:
        self.url = url
        try:
            self.engine = _make_engine(url)
            _meta.create_all(self.engine, checkfirst=True)
        except OperationalError as e:
            raise StorageError(f"cannot open catalog database: {e.orig}") from e
        except IntegrityError:
            pass  # another process created the tables at the same moment
        except (sa.exc.ArgumentError, ModuleNotFoundError) as e:
            raise ConfigError(f"invalid catalog URL: {e}") from e
        self._ensure_defaults()

    def __repr__(self) -> str:
        return f"SQLCatalog({self.engine.url.render_as_string(hide_password=True)!r})"

    def close(self) -> None:
        self.engine.dispose()

    def _ensure_defaults(self) -> None:
        self.create_catalog(DEFAULT_CATALOG, if_not_exists=True)
        self.create_schema(DEFAULT_CATALOG, DEFAULT_SCHEMA, if_not_exists=True)

    # -- catalogs and schemas ---------------------------------------------------------------
    def create_catalog(
        self, name: str, *, comment: str | None = None, if_not_exists: bool = False
    ) -> None:
        self._insert(
            _catalogs,
            {"name": name, "comment": comment, "created_at": _now()},
            f"catalog {name!r} already exists",
            if_not_exists,
        )

    def create_schema(
        self,
        catalog: str,
        schema: str,
        *,
        comment: str | None = None,
        owner: str | None = None,
        if_not_exists: bool = False,
    ) -> None:
        if catalog != DEFAULT_CATALOG:
            self.create_catalog(catalog, if_not_exists=True)
        row = {"catalog": catalog, "name": schema, "comment": comment, "owner": owner}
        self._insert(
            _schemas,
            {**row, "created_at": _now()},
            f"schema {catalog}.{schema} already exists",
            if_not_exists,
        )

    def schema_exists(self, catalog: str, schema: str) -> bool:
        q = sa.select(_schemas.c.name).where(
            _schemas.c.catalog == catalog, _schemas.c.name == schema
        )
        with self.engine.connect() as conn:
            return conn.execute(q).first() is not None

    def list_schemas(self, catalog: str | None = None) -> list[tuple[str, str]]:
        q = sa.select(_schemas.c.catalog, _schemas.c.name).order_by(
            _schemas.c.catalog, _schemas.c.name
        )
        if catalog:
            q = q.where(_schemas.c.catalog == catalog)
        with self.engine.connect() as conn:
            return [(r[0], r[1]) for r in conn.execute(q)]

    def drop_schema(self, catalog: str, schema: str, *, if_exists: bool = False) -> None:
        with self.engine.begin() as conn:
            left = conn.execute(
                sa.select(sa.func.count())
                .select_from(_tables)
                .where(_tables.c.catalog == catalog, _tables.c.schema == schema)
            ).scalar_one()
            if left:
                raise schema_not_empty(catalog, schema, left, "table")
            volumes = conn.execute(
                sa.select(sa.func.count())
                .select_from(_volumes)
                .where(_volumes.c.catalog == catalog, _volumes.c.schema == schema)
            ).scalar_one()
            if volumes:
                raise schema_not_empty(catalog, schema, volumes, "volume")
            n = conn.execute(
                _schemas.delete().where(_schemas.c.catalog == catalog, _schemas.c.name == schema)
            ).rowcount
        if not n and not if_exists:
            raise SchemaNotFound(f"schema {catalog}.{schema} does not exist")

    # -- tables -----------------------------------------------------------------------------
    def create_table(self, info: TableInfo) -> None:
        """Record a table; raises ``TableExists`` if the name is taken."""
        ident = info.ident
        if not self.schema_exists(ident.catalog, ident.schema):
            raise no_schema(ident.catalog, ident.schema)
        self._insert(_tables, _to_row(info), f"table {ident} already exists", False)

    def get_table(self, ident: TableIdent) -> TableInfo:
        q = sa.select(_tables).where(*_match(ident))
        with self.engine.connect() as conn:
            row = conn.execute(q).mappings().first()
        if row is None:
            raise no_table(ident)
        return _from_row(row)

    def list_tables(self, catalog: str | None = None, schema: str | None = None) -> list[TableInfo]:
        q = sa.select(_tables).order_by(_tables.c.catalog, _tables.c.schema, _tables.c.name)
        if catalog:
            q = q.where(_tables.c.catalog == catalog)
        if schema:
            q = q.where(_tables.c.schema == schema)
        with self.engine.connect() as conn:
            return [_from_row(r) for r in conn.execute(q).mappings()]

    def update_table(self, info: TableInfo) -> TableInfo:
        new = replace(info, updated_at=_now())
        row = _to_row(new)
        with self.engine.begin() as conn:
            n = conn.execute(_tables.update().where(*_match(info.ident)).values(**row)).rowcount
        if not n:
            raise no_table(info.ident)
        return new

    def touch(self, ident: TableIdent) -> None:
        with self.engine.begin() as conn:
            conn.execute(_tables.update().where(*_match(ident)).values(updated_at=_now()))

    def drop_table(self, ident: TableIdent, *, location: str | None = None) -> TableInfo:
        where = _match(ident)
        if location is not None:
            where.append(_tables.c.location == location)
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(_tables).where(*where)).mappings().first()
            if row is None:
                raise no_table(ident, location)
            conn.execute(_tables.delete().where(*where))
        return _from_row(row)

    # -- volumes ----------------------------------------------------------------------------
    def create_volume(self, info: VolumeInfo) -> None:
        """Record a volume; raises ``TableExists`` if the name is taken."""
        ident = info.ident
        if not self.schema_exists(ident.catalog, ident.schema):
            raise no_schema(ident.catalog, ident.schema)
        row = {
            "catalog": ident.catalog,
            "schema": ident.schema,
            "name": ident.name,
            "location": info.location,
            "external": info.external,
            "comment": info.comment,
            "owner": info.owner,
            "created_at": info.created_at,
        }
        self._insert(_volumes, row, f"volume {ident} already exists", False)

    def get_volume(self, ident: TableIdent) -> VolumeInfo:
        q = sa.select(_volumes).where(*_match(ident, _volumes))
        with self.engine.connect() as conn:
            row = conn.execute(q).mappings().first()
        if row is None:
            raise VolumeNotFound(f"volume {ident} does not exist")
        return _volume_from_row(row)

    def list_volumes(
        self, catalog: str | None = None, schema: str | None = None
    ) -> list[VolumeInfo]:
        q = sa.select(_volumes).order_by(_volumes.c.catalog, _volumes.c.schema, _volumes.c.name)
        if catalog:
            q = q.where(_volumes.c.catalog == catalog)
        if schema:
            q = q.where(_volumes.c.schema == schema)
        with self.engine.connect() as conn:
            return [_volume_from_row(r) for r in conn.execute(q).mappings()]

    def drop_volume(self, ident: TableIdent) -> VolumeInfo:
        """Remove a volume's entry and return what it was."""
        with self.engine.begin() as conn:
            q = sa.select(_volumes).where(*_match(ident, _volumes))
            row = conn.execute(q).mappings().first()
            if row is None:
                raise VolumeNotFound(f"volume {ident} does not exist")
            conn.execute(_volumes.delete().where(*_match(ident, _volumes)))
        return _volume_from_row(row)

    def _insert(self, table: sa.Table, row: dict[str, Any], exists: str, ok: bool) -> None:
        try:
            with self.engine.begin() as conn:
                conn.execute(table.insert().values(**row))
        except IntegrityError as e:
            if not ok:
                raise TableExists(exists) from e


def _match(ident: TableIdent, table: sa.Table = _tables) -> list[Any]:
    return [
        table.c.catalog == ident.catalog,
        table.c.schema == ident.schema,
        table.c.name == ident.name,
    ]


def _to_row(info: TableInfo) -> dict[str, Any]:
    return {
        "catalog": info.ident.catalog,
        "schema": info.ident.schema,
        "name": info.ident.name,
        "format": info.format,
        "location": info.location,
        "external": info.external,
        "comment": info.comment,
        "properties": json.dumps(info.properties, sort_keys=True),
        "owner": info.owner,
        "created_at": info.created_at,
        "updated_at": info.updated_at,
    }


def _from_row(row: Any) -> TableInfo:
    return TableInfo(
        ident=TableIdent(row["catalog"], row["schema"], row["name"]),
        format=row["format"],
        location=row["location"],
        external=bool(row["external"]),
        comment=row["comment"],
        properties=json.loads(row["properties"] or "{}"),
        owner=row["owner"],
        created_at=_aware(row["created_at"]),
        updated_at=_aware(row["updated_at"]),
    )


def _volume_from_row(row: Any) -> VolumeInfo:
    return VolumeInfo(
        ident=TableIdent(row["catalog"], row["schema"], row["name"]),
        location=row["location"],
        external=bool(row["external"]),
        comment=row["comment"],
        owner=row["owner"],
        created_at=_aware(row["created_at"]),
    )


def _make_engine(url: str) -> sa.Engine:
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    if url.startswith("sqlite"):
        engine = sa.create_engine(url, connect_args={"timeout": 30})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True)
