"""The catalog in a database: catalogs, schemas and tables, on SQLite or PostgreSQL (SQLAlchemy).

Many processes may share one catalog: every change is one short transaction, names are primary
keys (two creators of one name: one wins, the other gets ``TableExists``), and SQLite runs in WAL
mode with a busy timeout so writers queue instead of failing.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError, OperationalError

from matrixos.catalog.base import (
    AccountInfo,
    Catalog,
    GrantInfo,
    PrincipalRecords,
    TableInfo,
    TokenInfo,
    VolumeInfo,
    account_exists,
    group_closure,
    no_account,
    no_schema,
    no_table,
    no_token,
    schema_not_empty,
)
from matrixos.catalog.base import now as _now
from matrixos.catalog.migrations import upgrade
from matrixos.catalog.names import DEFAULT_CATALOG, DEFAULT_SCHEMA, TableIdent
from matrixos.errors import ConfigError, SchemaNotFound, StorageError, TableExists, VolumeNotFound

__all__ = ["SQLCatalog", "TableInfo", "VolumeInfo"]

_meta = sa.MetaData()
#: The catalog database's tables; other catalog modules add theirs to it.
METADATA = _meta
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

# Accounts, memberships, grants, API tokens (KDF hashes) and password verifiers.
# Every table on METADATA (here or in another module) is made and changed by a revision in
# matrixos/catalog/migrations/versions; a change without one fails tests/catalog/test_migrations.
_accounts = sa.Table(
    "mx_accounts",
    _meta,
    sa.Column("name", sa.String(256), primary_key=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("admin", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)
_members = sa.Table(
    "mx_members",
    _meta,
    sa.Column("group_name", sa.String(256), primary_key=True),
    sa.Column("member", sa.String(256), primary_key=True),
)
_grants = sa.Table(
    "mx_grants",
    _meta,
    sa.Column("grantee", sa.String(256), primary_key=True),
    sa.Column("privilege", sa.String(32), primary_key=True),
    sa.Column("kind", sa.String(16), primary_key=True),
    sa.Column("securable", sa.String(400), primary_key=True),
    sa.Column("granted_by", sa.String(256)),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)
_tokens = sa.Table(
    "mx_tokens",
    _meta,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("account", sa.String(256), nullable=False, index=True),
    sa.Column("hash", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("expires_at", sa.DateTime(timezone=True)),
    sa.Column("revoked_at", sa.DateTime(timezone=True)),
    sa.Column("last_used_at", sa.DateTime(timezone=True)),
    sa.Column("last_used_from", sa.String(64)),
)
_passwords = sa.Table(
    "mx_passwords",
    _meta,
    sa.Column("account", sa.String(256), primary_key=True),
    sa.Column("verifier", sa.Text, nullable=False),
    sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
)
# One row (id 1) whose ``n`` the database's triggers move on every change of names, entries,
# policies, grants and accounts (revision 0004): ``SQLCatalog.changes``.
_changes = sa.Table(
    "mx_catalog_changes",
    _meta,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("n", sa.BigInteger, nullable=False),
)
_CHANGES = "SELECT n FROM mx_catalog_changes WHERE id = 1"


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
            # The one way the schema is made and changed: versioned migrations
            # (matrixos/catalog/migrations), from nothing or from any older release.
            upgrade(self.engine)
        except OperationalError as e:
            raise StorageError(f"cannot open catalog database: {e.orig}") from e
        except (sa.exc.ArgumentError, ModuleNotFoundError) as e:
            raise ConfigError(f"invalid catalog URL: {e}") from e
        self._ensure_defaults()
        self._counter = SQLiteReaders.of(self.engine)

    def __repr__(self) -> str:
        return f"SQLCatalog({self.engine.url.render_as_string(hide_password=True)!r})"

    def close(self) -> None:
        if self._counter is not None:
            self._counter.close()
        self.engine.dispose()

    @property
    def changes_are_local(self) -> bool:
        return self._counter is not None

    def changes(self) -> int | None:
        # Read before every kept plan and cached token: on a SQLite file, a connection of the
        # thread's own in autocommit (each read sees the last commit) takes ~8 us where
        # SQLAlchemy's pool checkout and driver SQL take 30-60.
        raw = self._counter.connection() if self._counter is not None else None
        if raw is not None:
            row = raw.execute(_CHANGES).fetchone()
            n = row[0] if row else None
        else:
            with self.engine.connect() as conn:
                n = conn.exec_driver_sql(_CHANGES).scalar()
        return None if n is None else int(n)

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
            conn.execute(_grants.delete().where(*_on(f"{catalog}.{schema}", "schema")))
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
            # a later table of the same name must not inherit this one's grants
            conn.execute(_grants.delete().where(*_on(str(ident), "table")))
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
            conn.execute(_grants.delete().where(*_on(str(ident), "volume")))
        return _volume_from_row(row)

    # -- accounts, groups, grants, tokens, passwords ------------------------------------------
    def create_account(self, info: AccountInfo) -> None:
        row = {"name": info.name, "kind": info.kind, "admin": info.admin}
        try:
            with self.engine.begin() as conn:
                conn.execute(_accounts.insert().values(**row, created_at=info.created_at))
        except IntegrityError as e:
            raise account_exists(info.name) from e

    def get_account(self, name: str) -> AccountInfo:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(_accounts).where(_accounts.c.name == name)).first()
        if row is None:
            raise no_account(name)
        return _account(row)

    def list_accounts(self) -> list[AccountInfo]:
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(_accounts).order_by(_accounts.c.name))
            return [_account(r) for r in rows]

    def update_account(self, info: AccountInfo) -> None:
        q = _accounts.update().where(_accounts.c.name == info.name)
        with self.engine.begin() as conn:
            if not conn.execute(q.values(kind=info.kind, admin=info.admin)).rowcount:
                raise no_account(info.name)

    def drop_account(self, name: str) -> AccountInfo:
        with self.engine.begin() as conn:
            row = conn.execute(sa.select(_accounts).where(_accounts.c.name == name)).first()
            if row is None:
                raise no_account(name)
            for where in (
                _members.c.group_name == name,
                _members.c.member == name,
            ):
                conn.execute(_members.delete().where(where))
            conn.execute(_grants.delete().where(_grants.c.grantee == name))
            conn.execute(_tokens.delete().where(_tokens.c.account == name))
            conn.execute(_passwords.delete().where(_passwords.c.account == name))
            conn.execute(_accounts.delete().where(_accounts.c.name == name))
        return _account(row)

    def add_member(self, group: str, member: str) -> None:
        try:
            with self.engine.begin() as conn:
                self._need_accounts(conn, group, member)
                have = conn.execute(
                    sa.select(_members.c.member).where(
                        _members.c.group_name == group, _members.c.member == member
                    )
                ).first()
                if have is None:
                    conn.execute(_members.insert().values(group_name=group, member=member))
        except IntegrityError:
            pass  # added by another process at the same moment

    def remove_member(self, group: str, member: str) -> bool:
        q = _members.delete().where(_members.c.group_name == group, _members.c.member == member)
        with self.engine.begin() as conn:
            return bool(conn.execute(q).rowcount)

    def list_members(self) -> list[tuple[str, str]]:
        q = sa.select(_members).order_by(_members.c.group_name, _members.c.member)
        with self.engine.connect() as conn:
            return [(r.group_name, r.member) for r in conn.execute(q)]

    def add_grant(self, grant: GrantInfo) -> bool:
        try:
            with self.engine.begin() as conn:
                self._need_accounts(conn, grant.grantee)
                if conn.execute(sa.select(_grants.c.grantee).where(*_grant_key(grant))).first():
                    return False
                conn.execute(
                    _grants.insert().values(
                        grantee=grant.grantee,
                        privilege=grant.privilege,
                        kind=grant.kind,
                        securable=grant.securable,
                        granted_by=grant.granted_by,
                        created_at=grant.created_at,
                    )
                )
        except IntegrityError:
            return False  # granted by another process at the same moment
        return True

    def remove_grant(self, grant: GrantInfo) -> bool:
        with self.engine.begin() as conn:
            return bool(conn.execute(_grants.delete().where(*_grant_key(grant))).rowcount)

    def principal_records(self, name: str) -> PrincipalRecords:
        # one connection, one read of the memberships, one of the grants of all the names
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(_accounts).where(_accounts.c.name == name)).first()
            if row is None:
                raise no_account(name)
            members = [(r.group_name, r.member) for r in conn.execute(sa.select(_members))]
            groups = sorted(group_closure(name, members))
            names = [name, *groups]
            found = conn.execute(sa.select(_accounts).where(_accounts.c.name.in_(groups)))
            accounts = {r.name: _account(r) for r in found}
            grants = [
                _grant(r) for r in conn.execute(_grants_query().where(_grants.c.grantee.in_(names)))
            ]
        return PrincipalRecords(
            _account(row), [accounts[g] for g in groups if g in accounts], grants
        )

    def list_grants(
        self, grantee: str | None = None, securable: str | None = None
    ) -> list[GrantInfo]:
        q = _grants_query()
        if grantee is not None:
            q = q.where(_grants.c.grantee == grantee)
        if securable is not None:
            q = q.where(_grants.c.securable == securable)
        with self.engine.connect() as conn:
            return [_grant(r) for r in conn.execute(q)]

    def create_token(self, info: TokenInfo) -> None:
        with self.engine.begin() as conn:
            self._need_accounts(conn, info.account)
            conn.execute(_tokens.insert().values(**_token_row(info)))

    def find_token(self, token_id: str) -> TokenInfo | None:
        with self.engine.connect() as conn:
            row = conn.execute(sa.select(_tokens).where(_tokens.c.id == token_id)).first()
        return None if row is None else _token(row)

    def list_tokens(self, account: str | None = None) -> list[TokenInfo]:
        q = sa.select(_tokens).order_by(_tokens.c.created_at, _tokens.c.id)
        if account is not None:
            q = q.where(_tokens.c.account == account)
        with self.engine.connect() as conn:
            return [_token(r) for r in conn.execute(q)]

    def update_token(self, info: TokenInfo) -> None:
        row = _token_row(info)
        q = _tokens.update().where(_tokens.c.id == info.id)
        with self.engine.begin() as conn:
            if not conn.execute(q.values(**row)).rowcount:
                raise no_token(info.id)

    def set_password(self, account: str, verifier: str | None) -> None:
        for attempt in range(3):
            try:
                with self.engine.begin() as conn:
                    self._need_accounts(conn, account)
                    conn.execute(_passwords.delete().where(_passwords.c.account == account))
                    if verifier is not None:
                        row = {"account": account, "verifier": verifier, "updated_at": _now()}
                        conn.execute(_passwords.insert().values(**row))
                return
            except IntegrityError as e:
                # another process set one between our delete and insert: set ours again
                if attempt == 2:
                    raise StorageError(
                        f"the password of {account} is being changed meanwhile"
                    ) from e

    def get_password(self, account: str) -> str | None:
        q = sa.select(_passwords.c.verifier).where(_passwords.c.account == account)
        with self.engine.connect() as conn:
            return conn.execute(q).scalar_one_or_none()

    def _need_accounts(self, conn: sa.Connection, *names: str) -> None:
        found = set(
            conn.execute(sa.select(_accounts.c.name).where(_accounts.c.name.in_(names))).scalars()
        )
        for name in names:
            if name not in found:
                raise no_account(name)

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


def _account(row: Any) -> AccountInfo:
    return AccountInfo(
        name=row.name, kind=row.kind, admin=bool(row.admin), created_at=_aware(row.created_at)
    )


def _grant_key(grant: GrantInfo) -> list[Any]:
    return [
        _grants.c.grantee == grant.grantee,
        _grants.c.privilege == grant.privilege,
        _grants.c.kind == grant.kind,
        _grants.c.securable == grant.securable,
    ]


def _grants_query() -> sa.Select[Any]:
    return sa.select(_grants).order_by(
        _grants.c.securable, _grants.c.grantee, _grants.c.privilege, _grants.c.kind
    )


def _grant(r: Any) -> GrantInfo:
    return GrantInfo(
        privilege=r.privilege,
        kind=r.kind,
        securable=r.securable,
        grantee=r.grantee,
        granted_by=r.granted_by,
        created_at=_aware(r.created_at),
    )


def _on(securable: str, kind: str) -> list[Any]:
    return [_grants.c.securable == securable, _grants.c.kind == kind]


def _token_row(info: TokenInfo) -> dict[str, Any]:
    return {
        "id": info.id,
        "account": info.account,
        "hash": info.hash,
        "created_at": info.created_at,
        "expires_at": info.expires_at,
        "revoked_at": info.revoked_at,
        "last_used_at": info.last_used_at,
        "last_used_from": info.last_used_from,
    }


def _token(row: Any) -> TokenInfo:
    def ts(value: datetime | None) -> datetime | None:
        return None if value is None else _aware(value)

    return TokenInfo(
        id=row.id,
        account=row.account,
        hash=row.hash,
        created_at=_aware(row.created_at),
        expires_at=ts(row.expires_at),
        revoked_at=ts(row.revoked_at),
        last_used_at=ts(row.last_used_at),
        last_used_from=row.last_used_from,
    )


class SQLiteReaders:
    """One read-only autocommit ``sqlite3`` connection per thread (and process) to a SQLite
    catalog file, for the change counter read before each cached answer."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: list[sqlite3.Connection] = []
        self._closed = False

    @classmethod
    def of(cls, engine: sa.Engine) -> SQLiteReaders | None:
        """Readers of ``engine``'s database when it is a SQLite file, else None."""
        url = engine.url
        path = url.database
        if url.get_backend_name() != "sqlite" or not path or path == ":memory:" or url.query:
            return None
        return cls(os.path.abspath(path))

    def connection(self) -> sqlite3.Connection | None:
        """This thread's connection (None once closed)."""
        if self._closed:
            return None
        local = self._local
        conn = getattr(local, "conn", None)
        if conn is not None and local.pid == os.getpid():
            return conn  # type: ignore[no-any-return]
        with self._lock:
            if self._closed:
                return None
            conn = sqlite3.connect(
                self.path, timeout=30, isolation_level=None, check_same_thread=False
            )
            self._open.append(conn)
        local.conn, local.pid = conn, os.getpid()
        return conn

    def close(self) -> None:
        with self._lock:
            self._closed = True
            opened, self._open = self._open, []
        for conn in opened:
            conn.close()


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
