"""``pg_catalog`` and ``information_schema`` as one principal sees the MatrixOS catalog: what
``psql``'s ``\\dt``, ``\\d table`` and ``\\dn`` and BI tools' metadata queries read.

The rows are built from the ``TableService`` for the connected principal: only tables it may
read (and the schemas that hold them, or that it may use) appear, so a user without
grants sees no table names at all. Each MatrixOS schema of the connected catalog is a
PostgreSQL namespace. The queries run on sqlglot's executor over these rows, after pg-mimic's
rewrite of psql's spellings (``OPERATOR(pg_catalog.~)``, ``format_type``, …); a catalog query
that cannot run there answers no rows with the columns it asked for.

Example:
    >>> import tempfile, matrixos as mx
    >>> lh = mx.connect(tempfile.mkdtemp())
    >>> _ = lh.create_table("sales.orders", [{"id": 1}])
    >>> view = CatalogView(lh.service, lh.principal, "main")
    >>> [r["relname"] for r in view.tables()["pg_catalog"]["pg_class"]]
    ['orders']
"""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import TYPE_CHECKING, Any

from pg_mimic import Portal, ResultColumn, Statement, StaticStatement
from pg_mimic.catalog import pg_type_by_oid
from pg_mimic.catalog_data import PG_CATALOG_SCHEMA
from pg_mimic.catalog_rewrite import rewrite_for_executor
from sqlglot import exp
from sqlglot.executor import execute as sqlglot_execute

from matrixos.errors import MatrixOSError
from matrixos.server.pg_types import TEXT, literal, oid_for, type_name

if TYPE_CHECKING:
    from matrixos.catalog.access import Principal
    from matrixos.catalog.base import TableInfo
    from matrixos.catalog.service import TableService

log = logging.getLogger("matrixos.server.pg")

PG_CATALOG_OID, INFORMATION_SCHEMA_OID, OWNER_OID, HEAP_AM_OID = 11, 13000, 10, 2
FIRST_USER_OID = 16384  # real PostgreSQL numbers user objects from here

_INFORMATION_SCHEMA = {
    "tables": {
        "table_catalog": "TEXT",
        "table_schema": "TEXT",
        "table_name": "TEXT",
        "table_type": "TEXT",
    },
    "columns": {
        "table_catalog": "TEXT",
        "table_schema": "TEXT",
        "table_name": "TEXT",
        "column_name": "TEXT",
        "ordinal_position": "INT",
        "data_type": "TEXT",
        "is_nullable": "TEXT",
    },
    "schemata": {"catalog_name": "TEXT", "schema_name": "TEXT", "schema_owner": "TEXT"},
}
_EXTRA_PG_CATALOG = {
    "pg_database": {
        "oid": "INT",
        "datname": "TEXT",
        "datdba": "INT",
        "encoding": "INT",
        "datcollate": "TEXT",
        "datctype": "TEXT",
        "daticulocale": "TEXT",
        "datlocprovider": "TEXT",
        "datacl": "TEXT",
    },
    "pg_description": {
        "objoid": "INT",
        "classoid": "INT",
        "objsubid": "INT",
        "description": "TEXT",
    },
}


def catalog_schema() -> dict[str, dict[str, dict[str, str]]]:
    """The column types of every emulated catalog table, by schema and table."""
    schema = copy.deepcopy(PG_CATALOG_SCHEMA)
    schema["pg_catalog"].update(copy.deepcopy(_EXTRA_PG_CATALOG))
    # psql's \d+ reads these too (PostgreSQL 14+).
    schema["pg_catalog"]["pg_attribute"].update({"attstorage": "TEXT", "attcompression": "TEXT"})
    schema["information_schema"] = copy.deepcopy(_INFORMATION_SCHEMA)
    return schema


class CatalogView:
    """The catalog tables one principal sees in one MatrixOS catalog (the wire's database)."""

    def __init__(self, service: TableService, principal: Principal, catalog: str) -> None:
        self.service = service
        self.principal = principal
        self.catalog = catalog

    # -- what the principal may see --------------------------------------------------------
    def visible(self) -> tuple[list[str], list[TableInfo]]:
        """The schemas and the tables of this catalog the principal may see."""
        tables = [i for i in self.service.tables(self.principal) if i.ident.catalog == self.catalog]
        names = {s.split(".", 1)[1] for s in self.service.schemas(self.catalog)}
        schemas = {i.ident.schema for i in tables} | {
            s for s in names if self.principal.may("USE SCHEMA", f"{self.catalog}.{s}")
        }
        return sorted(schemas), sorted(tables, key=lambda i: i.name)

    def _columns(self, info: TableInfo) -> list[tuple[str, int, bool]]:
        try:
            schema = self.service.table(self.principal, info.ident).schema
        except MatrixOSError:  # no data yet, or unreadable storage: listed without columns
            return []
        return [(f.name, oid_for(f.type), f.nullable) for f in schema]

    # -- the rows --------------------------------------------------------------------------
    def tables(self) -> dict[str, dict[str, list[dict[str, Any]]]]:
        """The rows of every emulated catalog table, by schema and table."""
        schemas, infos = self.visible()
        ns_oid = {s: FIRST_USER_OID + i for i, s in enumerate(schemas)}
        user = self.principal.name
        namespaces = [{"oid": PG_CATALOG_OID, "nspname": "pg_catalog", "nspowner": OWNER_OID}]
        namespaces.append(
            {"oid": INFORMATION_SCHEMA_OID, "nspname": "information_schema", "nspowner": OWNER_OID}
        )
        namespaces += [{"oid": o, "nspname": s, "nspowner": OWNER_OID} for s, o in ns_oid.items()]
        classes, attributes, is_tables, is_columns = [], [], [], []
        next_oid = FIRST_USER_OID + len(schemas)
        for info in infos:
            oid, next_oid = next_oid, next_oid + 1
            schema, name = info.ident.schema, info.ident.name
            classes.append(_class_row(oid, name, ns_oid[schema]))
            is_tables.append(
                {
                    "table_catalog": self.catalog,
                    "table_schema": schema,
                    "table_name": name,
                    "table_type": "BASE TABLE",
                }
            )
            for pos, (col, type_oid, nullable) in enumerate(self._columns(info), start=1):
                attributes.append(_attribute_row(oid, col, type_oid, pos, nullable))
                is_columns.append(
                    {
                        "table_catalog": self.catalog,
                        "table_schema": schema,
                        "table_name": name,
                        "column_name": col,
                        "ordinal_position": pos,
                        "data_type": type_name(type_oid),
                        "is_nullable": "YES" if nullable else "NO",
                    }
                )
        empty: dict[str, list[dict[str, Any]]] = {t: [] for t in PG_CATALOG_SCHEMA["pg_catalog"]}
        return {
            "pg_catalog": {
                **empty,
                "pg_namespace": namespaces,
                "pg_class": classes,
                "pg_attribute": attributes,
                "pg_am": [
                    {
                        "oid": HEAP_AM_OID,
                        "amname": "heap",
                        "amhandler": "heap_tableam_handler",
                        "amtype": "t",
                    }
                ],
                "pg_type": list(pg_type_by_oid().values()),
                "pg_roles": [{"oid": OWNER_OID, "rolname": user}],
                "pg_database": [
                    {
                        "oid": 1,
                        "datname": self.catalog,
                        "datdba": OWNER_OID,
                        "encoding": 6,  # UTF8
                        "datcollate": "C",
                        "datctype": "C",
                        "daticulocale": None,
                        "datlocprovider": "c",
                        "datacl": None,
                    }
                ],
                "pg_description": [],
            },
            "information_schema": {
                "tables": is_tables,
                "columns": is_columns,
                "schemata": [
                    {"catalog_name": self.catalog, "schema_name": s, "schema_owner": user}
                    for s in schemas
                ],
            },
        }


def _class_row(oid: int, name: str, namespace: int) -> dict[str, Any]:
    return {
        "oid": oid,
        "relname": name,
        "relnamespace": namespace,
        "relkind": "r",
        "relowner": OWNER_OID,
        "relam": HEAP_AM_OID,
        "reltuples": -1,
        "relpages": 0,
        "relhasindex": False,
        "relpersistence": "p",
        "reltablespace": 0,
        "relispartition": False,
        "relrowsecurity": False,
        "relforcerowsecurity": False,
        "relreplident": "d",
        "reloftype": 0,
        "relhastriggers": False,
        "relchecks": 0,
        "relhasrules": False,
        "reltoastrelid": 0,
    }


_VARLENA = {TEXT, 17, 114, 1700}  # text, bytea, json, numeric: "extended" storage in \d+


def _attribute_row(table: int, name: str, type_oid: int, pos: int, nullable: bool) -> dict:
    return {
        "attrelid": table,
        "attname": name,
        "atttypid": type_oid,
        "attnum": pos,
        "attnotnull": not nullable,
        "atthasdef": False,
        "attisdropped": False,
        "attidentity": "",
        "attgenerated": "",
        "attcollation": 0,
        "atttypmod": -1,
        "attstattarget": -1,
        "attformattype": type_name(type_oid),
        "attstorage": "x" if type_oid in _VARLENA or type_name(type_oid).endswith("]") else "p",
        "attcompression": "",
    }


# -- which statements are catalog queries ----------------------------------------------------
def is_catalog_query(tree: exp.Expr | None) -> bool:
    """Whether ``tree`` reads ``pg_catalog``/``information_schema`` (or a bare ``pg_*``)."""
    if not isinstance(tree, exp.Query):
        return False
    for t in tree.find_all(exp.Table):
        db = (t.db or "").lower()
        if db in ("pg_catalog", "information_schema"):
            return True
        if not db and t.name.lower().startswith("pg_"):
            return True
    return False


def catalog_statement(connection: Any, tree: exp.Query, view: CatalogView) -> StaticStatement:
    """The answer to a catalog query, from ``view``'s rows."""
    sql = tree.sql(dialect="postgres")
    try:
        result = sqlglot_execute(
            rewrite_for_executor(connection, tree),
            schema=catalog_schema(),
            tables=view.tables(),
            dialect="postgres",
        )
    except MatrixOSError:
        raise
    except Exception:
        log.debug("catalog query answered with no rows: %s", sql, exc_info=True)
        # sqlglot's executor cannot run every spelling (psql's footers, DBeaver's joins):
        # no rows, the columns asked for. What it would report (constraints, indexes,
        # statistics) MatrixOS does not have anyway.
        names = [s.alias_or_name or f"column{i}" for i, s in enumerate(tree.selects, start=1)]
        return StaticStatement(sql, [ResultColumn(n, TEXT) for n in names], [])
    rows = [tuple(r) for r in result.rows]
    names = [_column_name(tree, i, n) for i, n in enumerate(result.columns)]
    columns = [ResultColumn(n, _oid_of(rows, i)) for i, n in enumerate(names)]
    return StaticStatement(sql, columns, rows)


class BoundCatalogQuery(Statement):
    """A catalog query with ``$n`` parameters (BI tools send ``WHERE relnamespace = $1``):
    answered when bound, each parameter a literal of the tree."""

    def __init__(
        self, connection: Any, tree: exp.Query, param_oids: list[int | None], view: CatalogView
    ) -> None:
        self.connection = connection
        self.tree = tree
        self.view = view
        self.sql = tree.sql(dialect="postgres")
        self.param_oids = param_oids
        self._pending: _BoundCatalogPortal | None = None

    async def describe(self) -> list[ResultColumn] | None:
        portal, self._pending = self._pending, None
        if portal is None:  # before Bind: the columns, with every parameter NULL
            portal = _BoundCatalogPortal(self, [])
        columns: list[ResultColumn] | None = await (await portal.answer()).describe()
        return columns

    def bind(self, params: list[Any]) -> Portal:
        self._pending = _BoundCatalogPortal(self, params)
        return self._pending


class _BoundCatalogPortal(Portal):
    def __init__(self, statement: BoundCatalogQuery, params: list[Any]) -> None:
        self.statement = statement
        self.params = params
        self._answer: StaticStatement | None = None
        self._portal: Portal | None = None

    async def answer(self) -> StaticStatement:
        if self._answer is None:
            s = self.statement
            tree = s.tree.copy()
            for node in list(tree.find_all(exp.Parameter)):
                i = int(node.name) if node.name.isdigit() else 0
                value = self.params[i - 1] if 0 < i <= len(self.params) else None
                oid = s.param_oids[i - 1] if 0 < i <= len(s.param_oids) else None
                node.replace(literal(value, oid))
            self._answer = await asyncio.to_thread(catalog_statement, s.connection, tree, s.view)
        return self._answer

    async def execute(self, max_rows: int) -> tuple[list[tuple[Any, ...]], bool]:
        if self._portal is None:
            self._portal = (await self.answer()).bind([])
        result: tuple[list[tuple[Any, ...]], bool] = await self._portal.execute(max_rows)
        return result


def _column_name(tree: exp.Query, i: int, name: str) -> str:
    """PostgreSQL's name for an unnamed result column (``count`` for ``count(*)``)."""
    if not name.startswith("_col_") or i >= len(tree.selects):
        return name
    select = tree.selects[i]
    if isinstance(select, exp.Alias | exp.Column):
        return select.alias_or_name
    if isinstance(select, exp.Func):
        return select.sql_name().lower()
    return "?column?"


def _oid_of(rows: list[tuple[Any, ...]], i: int) -> int:
    value = next((r[i] for r in rows if r[i] is not None), None)
    if isinstance(value, bool):
        return 16
    if isinstance(value, int):
        return 20
    if isinstance(value, float):
        return 701
    return TEXT
