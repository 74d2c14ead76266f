"""DDL: CREATE/DROP of tables, schemas and volumes, SHOW, DESCRIBE [HISTORY].

Every statement maps to an operation of the table service for the statement's principal; user text
reaches no SQL string (column types are checked and rendered from the parsed tree).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa
from sqlglot import exp

from matrixos.engine.result import Result
from matrixos.engine.sandbox import check_query, check_table_name
from matrixos.engine.sql.errors import engine_error
from matrixos.engine.sql.frontend import ident_of, ok, table_name
from matrixos.engine.timeseries import RETENTION, day_partition, parse_duration
from matrixos.errors import AccessDenied, NotSupported, SQLError
from matrixos.storage.tablestore import formats

if TYPE_CHECKING:
    from matrixos.catalog.access import Principal
    from matrixos.catalog.service import TableService


class DDL:
    """The DDL statements of one session.

    ``query`` runs a query tree (``CREATE TABLE … AS SELECT``); ``planning`` gives a cursor
    that may touch no file (column types are resolved on it).
    """

    def __init__(
        self,
        service: TableService,
        query: Callable[[exp.Expr, Principal], Result],
        planning: Callable[[], duckdb.DuckDBPyConnection],
    ) -> None:
        self.service = service
        self._query = query
        self._planning = planning

    # -- tables and schemas -----------------------------------------------------------------
    def create(self, stmt: exp.Create, dialect: str, principal: Principal) -> Result:
        """``CREATE SCHEMA`` or ``CREATE [OR REPLACE] TABLE [IF NOT EXISTS] … [USING lance]
        [PARTITIONED BY (…)] [COMMENT …] [TBLPROPERTIES (…)] ( (columns) | AS query )``."""
        kind = str(stmt.args.get("kind") or "").upper()
        if kind in ("SCHEMA", "DATABASE"):
            target = stmt.this
            if isinstance(target, exp.Table):
                check_table_name(target)
            parts = [p.name for p in target.parts] if isinstance(target, exp.Table) else []
            name = ".".join(parts)
            comment = _property(stmt, exp.SchemaCommentProperty)
            self.service.create_schema(
                principal, name, comment=comment, if_not_exists=bool(stmt.args.get("exists"))
            )
            return ok("CREATE SCHEMA")
        if kind != "TABLE":
            # Views, macros, functions, secrets… would live in the shared DuckDB connection.
            raise AccessDenied(
                f"CREATE {kind} is not allowed in user SQL; only CREATE TABLE and CREATE SCHEMA",
                sql=stmt.sql(dialect=dialect),
            )
        target = stmt.this
        coldefs: list[exp.ColumnDef] = []
        if isinstance(target, exp.Schema):
            coldefs = [c for c in target.expressions if isinstance(c, exp.ColumnDef)]
            for c in target.expressions:
                # ``(a, b INT)`` without AS SELECT: a has no type (it was once skipped)
                if isinstance(c, exp.Identifier | exp.Column) and not stmt.args.get("expression"):
                    raise SQLError(
                        f"column {c.name!r} has no type", hint=f"write it as {c.name} <type>"
                    )
            target = target.this
        ident = ident_of(target)
        props = stmt.args.get("properties")
        partition_by: list[str] = []
        comment = None
        properties: dict[str, str] = {}
        fmt = "delta"
        for p in props.expressions if props else []:
            if isinstance(p, exp.PartitionedByProperty):
                cols = p.this.expressions if isinstance(p.this, exp.Schema) else [p.this]
                partition_by = [c.name for c in cols]
            elif isinstance(p, exp.SchemaCommentProperty):
                comment = p.this.name
            elif isinstance(p, exp.FileFormatProperty):
                fmt = p.this.name.lower()
            elif isinstance(p, exp.LocationProperty):
                raise AccessDenied(
                    "LOCATION is not allowed in SQL: tables live in the warehouse",
                    hint="register an existing table with lh.register_table(name, location)",
                )
            elif isinstance(p, exp.Property) and p.args.get("value") is not None:
                properties[p.name] = p.args["value"].name
            else:
                raise NotSupported(f"table property {p.sql(dialect=dialect)} is not supported")
        if fmt != "parquet" and fmt not in formats():
            raise NotSupported(
                f"USING {fmt} is not supported; tables are Delta or Lance",
                hint="formats: " + ", ".join(sorted(formats())),
            )
        exists = self.service.catalog.find_table(ident) is not None
        if exists and stmt.args.get("exists"):
            return ok("CREATE TABLE", skipped=True)
        data = None
        schema = None
        query = stmt.args.get("expression")
        if isinstance(query, exp.Query):
            data = self._query(query, principal).to_arrow()
        elif coldefs:
            schema = self._schema_of(coldefs)
        else:
            raise SQLError("CREATE TABLE needs column definitions or AS SELECT")
        info = self.service.create_table(
            principal,
            ident,
            data,
            schema=schema,
            partition_by=partition_by or None,
            format="delta" if fmt == "parquet" else fmt,  # USING parquet: Delta is Parquet
            comment=comment,
            properties=properties,
            mode="overwrite" if stmt.args.get("replace") else "error",
            # one rule everywhere: like create_table() and ingest, SQL creates the schema
            create_schema=True,
        )
        return ok("CREATE TABLE", version=self.service.table(principal, info.ident).version)

    def _schema_of(self, coldefs: list[exp.ColumnDef]) -> pa.Schema:
        """The Arrow schema of CREATE TABLE's column definitions, as DuckDB types them.

        Built as a tree from the parsed types alone: the user's column names never reach the
        SQL (positional aliases; the names are put on afterwards).
        """
        casts = [
            exp.alias_(exp.cast(exp.null(), _column_type(c)), f"c{i}", quoted=True)
            for i, c in enumerate(coldefs)
        ]
        select = exp.select(*casts).limit(0)
        check_query(select)
        text = select.sql(dialect="duckdb")
        try:
            schema = self._planning().sql(text).to_arrow_table().schema
        except duckdb.Error as e:
            raise engine_error(e, text) from e
        fields = []
        for f, c in zip(schema, coldefs, strict=True):
            not_null = any(
                isinstance(k.args.get("kind"), exp.NotNullColumnConstraint)
                for k in c.args.get("constraints") or []
            )
            t = f.type
            if pa.types.is_timestamp(t) and t.tz:  # type: ignore[attr-defined]
                t = pa.timestamp("us", "UTC")  # Delta refuses DuckDB's "Etc/UTC"
            fields.append(pa.field(c.name, t, nullable=not not_null))
        return pa.schema(fields)

    def drop(self, stmt: exp.Drop, dialect: str, principal: Principal) -> Result:
        """``DROP TABLE|SCHEMA [IF EXISTS] name[, …]``."""
        kind = str(stmt.args.get("kind") or "").upper()
        targets = stmt.args.get("tables") or [stmt.this]
        if_exists = bool(stmt.args.get("exists"))
        for target in targets:
            if kind == "TABLE":
                self.service.drop_table(principal, ident_of(target), if_exists=if_exists)
            elif kind in ("SCHEMA", "DATABASE"):
                if isinstance(target, exp.Table):
                    check_table_name(target)
                name = ".".join(p.name for p in target.parts)
                self.service.drop_schema(principal, name, if_exists=if_exists)
            else:
                raise NotSupported(f"DROP {kind} is not supported")
        return ok(f"DROP {kind}")

    def alter(self, stmt: exp.Alter, dialect: str, principal: Principal) -> Result | None:
        """``ALTER TABLE t SET TBLPROPERTIES ('k' = 'v', …)`` (or ``SET (k = v, …)``): catalog
        properties, such as ``matrixos.retention``; None for any other ALTER."""
        actions = stmt.args.get("actions") or []
        kind = str(stmt.args.get("kind") or "").upper()
        if kind != "TABLE" or len(actions) != 1 or not isinstance(actions[0], exp.AlterSet):
            return None
        changes: dict[str, str] = {}
        for node in actions[0].expressions:
            pairs = node.expressions if isinstance(node, exp.Properties) else [node]
            for p in pairs:
                key = p.this if isinstance(p, exp.Property | exp.EQ) else None
                value = p.args.get("value") if isinstance(p, exp.Property) else None
                if isinstance(p, exp.EQ):
                    value = p.expression
                if not isinstance(key, exp.Literal | exp.Identifier | exp.Column | exp.Var) or (
                    not isinstance(value, exp.Literal)
                ):
                    raise SQLError(
                        f"expected 'key' = 'value', got {p.sql(dialect=dialect)}",
                        hint="ALTER TABLE t SET TBLPROPERTIES ('matrixos.retention' = '30 days')",
                    )
                changes[key.name] = value.name
        return self._set_properties(stmt.this, changes, [], principal)

    def _set_properties(
        self, target: exp.Expr, changes: dict[str, str], removed: list[str], principal: Principal
    ) -> Result:
        handle = self.service.table(principal, ident_of(target))
        handle.writable()  # MODIFY: retention deletes rows
        info = handle.known()
        if RETENTION in changes:
            parse_duration(changes[RETENTION])
            day_partition(handle.schema, handle.partition_by)
        props = {k: v for k, v in info.properties.items() if k not in removed}
        props.update(changes)
        self.service.update_properties(info, props)
        return ok("ALTER TABLE")

    def describe(self, stmt: exp.Describe, dialect: str, principal: Principal) -> Result:
        """``DESCRIBE t`` (columns, types, nullability, partitioning) or ``DESCRIBE HISTORY t``."""
        target = stmt.this
        if not isinstance(target, exp.Table):
            raise NotSupported("DESCRIBE supports tables")
        table = self.service.table(principal, ident_of(target))
        if str(stmt.args.get("style") or "").upper() == "HISTORY":
            return _history(table.history())
        parts = set(table.partition_by)
        schema = table.schema
        return Result.from_table(
            pa.table(
                {
                    "column_name": [f.name for f in schema],
                    "column_type": [str(f.type) for f in schema],
                    "nullable": [f.nullable for f in schema],
                    "partition": [f.name in parts for f in schema],
                }
            ),
            statement="DESCRIBE",
        )

    # -- SHOW -------------------------------------------------------------------------------
    def show_statement(self, stmt: exp.Show, dialect: str, principal: Principal) -> Result:
        """``SHOW …`` as the dialect parsed it (see ``show``)."""
        what = str(stmt.this).upper()
        # sqlglot puts ``FROM s`` in target, db (mysql) or from_ (duckdb) depending on dialect
        target = next(
            (t for k in ("target", "db", "from_") if isinstance(t := stmt.args.get(k), exp.Expr)),
            None,
        )
        return self.show(what, target.sql() if target is not None else None, principal)

    def show(self, what: str, within: str | None, principal: Principal) -> Result:
        """``SHOW TABLES [IN schema]`` or ``SHOW SCHEMAS|DATABASES [IN catalog]``."""
        if what == "TABLES":
            names = [i.name for i in self.service.tables(principal, within)]
            parts = [n.split(".") for n in names]
            return Result.from_table(
                pa.table(
                    {
                        "catalog": [p[0] for p in parts],
                        "schema": [p[1] for p in parts],
                        "table": [p[2] for p in parts],
                    },
                    schema=pa.schema([(c, pa.string()) for c in ("catalog", "schema", "table")]),
                ),
                statement="SHOW",
            )
        if what in ("SCHEMAS", "DATABASES"):
            return Result.from_table(
                pa.table({"schema": pa.array(self.service.schemas(within), pa.string())}),
                statement="SHOW",
            )
        raise NotSupported(f"SHOW {what} is not supported")

    # -- commands sqlglot leaves as text ----------------------------------------------------
    def command(self, cmd: str, rest: str, dialect: str, principal: Principal) -> Result | None:
        """``SHOW TABLES|SCHEMAS …`` and the volume DDL; None for any other command."""
        if cmd == "SHOW":
            m = re.match(r"^(TABLES|SCHEMAS|DATABASES)(?:\s+(?:IN|FROM)\s+(\S+))?\s*$", rest, re.I)
            if m:
                return self.show(m.group(1).upper(), m.group(2), principal)
        if cmd in ("CREATE", "DROP") and re.match(r"^VOLUME\s", rest, re.I):
            return self._volume(cmd, rest, dialect, principal)
        if cmd == "ALTER":
            m = re.match(
                r"^TABLE\s+(\S+)\s+UNSET\s+TBLPROPERTIES\s*(?:IF\s+EXISTS\s*)?\((.*)\)\s*$",
                rest,
                re.I | re.S,
            )
            if m:
                target = exp.to_table(table_name(m.group(1), dialect))
                keys = [k.strip().strip("'\"").strip() for k in m.group(2).split(",")]
                return self._set_properties(target, {}, keys, principal)
        return None

    def _volume(self, cmd: str, rest: str, dialect: str, principal: Principal) -> Result:
        """``CREATE VOLUME [IF NOT EXISTS] s.v [COMMENT '…']``, ``DROP VOLUME [IF EXISTS] s.v``."""
        if cmd == "CREATE":
            m = re.match(
                r"^VOLUME\s+(IF\s+NOT\s+EXISTS\s+)?(\S+)(?:\s+COMMENT\s+'((?:[^']|'')*)')?\s*$",
                rest,
                re.I,
            )
            if not m:
                raise SQLError(
                    f"cannot parse CREATE {rest!r}",
                    hint="CREATE VOLUME [IF NOT EXISTS] schema.name [COMMENT '...']",
                )
            comment = m.group(3).replace("''", "'") if m.group(3) is not None else None
            self.service.create_volume(
                principal,
                table_name(m.group(2), dialect),
                comment=comment,
                if_not_exists=bool(m.group(1)),
            )
            return ok("CREATE VOLUME")
        m = re.match(r"^VOLUME\s+(IF\s+EXISTS\s+)?(\S+)\s*$", rest, re.I)
        if not m:
            raise SQLError(
                f"cannot parse DROP {rest!r}", hint="DROP VOLUME [IF EXISTS] schema.name"
            )
        self.service.drop_volume(
            principal, table_name(m.group(2), dialect), if_exists=bool(m.group(1))
        )
        return ok("DROP VOLUME")


def _history(rows: list[dict[str, Any]]) -> Result:
    """DESCRIBE HISTORY's rows: one per commit, newest first."""
    return Result.from_table(
        pa.table(
            {
                "version": pa.array([r.get("version") for r in rows], pa.int64()),
                "timestamp": pa.array(
                    [
                        datetime.fromtimestamp(r["timestamp"] / 1000, UTC)
                        if r.get("timestamp")
                        else None
                        for r in rows
                    ],
                    pa.timestamp("ms", "UTC"),
                ),
                "operation": [r.get("operation") for r in rows],
                "parameters": [str(r.get("operationParameters", {})) for r in rows],
                "metrics": [str(r.get("operationMetrics", {})) for r in rows],
            }
        ),
        statement="DESCRIBE",
    )


def _column_type(coldef: exp.ColumnDef) -> exp.DataType:
    """A column definition's type, refused unless every part of it is a built-in type with
    constant parameters (a user-defined type name is raw text in the generated SQL)."""
    kind = coldef.args.get("kind")
    name = coldef.name
    if not name:
        raise SQLError("a column name is empty", hint="name every column of CREATE TABLE")
    if not isinstance(kind, exp.DataType):
        raise SQLError(f"column {name!r} has no type", hint=f"write it as {name} <type>")
    for node in kind.walk():
        if isinstance(node, exp.DataType) and node.this == exp.DataType.Type.USERDEFINED:
            raise SQLError(
                f"column {name!r}: unknown type {node.sql(dialect='duckdb')!r}",
                hint="use a built-in type such as INT, BIGINT, DOUBLE, DECIMAL(p, s), VARCHAR, "
                "DATE, TIMESTAMP, STRUCT(…), type[]",
            )
        if isinstance(node, exp.DataTypeParam) and not isinstance(
            node.this, exp.Literal | exp.Var | exp.DataType
        ):
            raise SQLError(
                f"column {name!r}: type parameters must be constants, got "
                f"{node.this.sql(dialect='duckdb')}"
            )
    return kind.copy()


def _property(stmt: exp.Create, kind: type[exp.Expr]) -> str | None:
    props = stmt.args.get("properties")
    for p in props.expressions if props else []:
        if isinstance(p, kind):
            return str(p.this.name)
    return None
