"""Defining row filters and column masks: validation, who may, the audit row, and their SQL.

    ALTER TABLE t SET ROW FILTER '<predicate>' FOR account
    ALTER TABLE t DROP ROW FILTER FOR account
    ALTER TABLE t ALTER COLUMN c SET MASK '<expression>' FOR account
    ALTER TABLE t ALTER COLUMN c DROP MASK FOR account
    SHOW ROW FILTERS ON t | SHOW MASKS ON t | SHOW POLICIES ON t

A predicate or mask is checked when it is defined: it may use the table's columns (unqualified),
literals, operators, ``CASE``, casts and the functions of ``ALLOWED_FUNCTIONS`` — no subquery,
no table, no aggregate or window, no file or setting function; an error names what is refused
and where (line and column of the expression). A filter must be a boolean; a mask must give the
column's type or one cast to it safely (a number for a number column, text for a text column…;
a mask giving NULL is cast).

Only an admin, the table's owner or a holder of ``MANAGE`` on it (``Accounts.may_manage``) may
set or drop them; every change, done or refused, is a row of ``system.access.audit``. ``SHOW``
lists all of a table's policies to those who may manage it, and to anyone else the ones that
apply to them. What they mean when a table is read: ``matrixos.catalog.policies`` and
``matrixos.engine.sql.row_security``.

Example:
    >>> import tempfile, matrixos as mx
    >>> lh = mx.connect(tempfile.mkdtemp())
    >>> _ = lh.create_table("s.t", [{"id": 1, "region": "EU", "email": "a@x"}])
    >>> lh.sql("CREATE GROUP analysts").message
    'CREATE GROUP'
    >>> lh.sql("ALTER TABLE s.t SET ROW FILTER 'region = ''US''' FOR analysts").message
    'SET ROW FILTER'
    >>> lh.sql("SHOW ROW FILTERS ON s.t").fetchall()[0][:4]
    ('main.s.t', 'row filter', None, 'analysts')
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import duckdb
import pyarrow as pa
import sqlglot
from sqlglot import exp
from sqlglot.errors import ParseError, SqlglotError

from matrixos.catalog.access import Principal
from matrixos.catalog.accounts import Accounts
from matrixos.catalog.audit import AuditEvent, AuditLog, outcome_of
from matrixos.catalog.base import TableInfo
from matrixos.catalog.names import TableIdent
from matrixos.catalog.policies import FILTER, MASK, Policy
from matrixos.engine.result import Result
from matrixos.engine.sandbox import function_name
from matrixos.engine.sql.frontend import ok
from matrixos.engine.sql.grants import Words, redact_literals
from matrixos.errors import AccessDenied, AccountNotFound, SQLError

if TYPE_CHECKING:
    from matrixos.catalog.service import TableService

# Scalar functions a filter or mask may call: pure functions of their arguments.
ALLOWED_FUNCTIONS = frozenset(
    {
        "abs", "ceil", "ceiling", "coalesce", "concat", "concat_ws", "contains", "date_trunc",
        "datetrunc", "day", "ends_with", "floor", "greatest", "hash", "if", "ifnull", "ilike",
        "left", "length", "least", "like", "lower", "ltrim", "md5", "month", "nullif",
        "regexp_like", "regexp_matches", "regexp_replace", "repeat", "replace", "right", "round",
        "rtrim", "sha256", "sign", "starts_with", "startswith", "strlen", "substr",
        "substring", "trim", "upper", "year", "cast", "trycast", "try_cast", "case", "lpad",
        "rpad", "md5_digest", "sha2", "mod", "char_length", "date", "dpipe",
    }
)  # fmt: skip
# Nodes that are no function call: columns, literals, operators and their parts.
_NODES: tuple[type[exp.Expr], ...] = (
    exp.Column, exp.Identifier, exp.Literal, exp.Boolean, exp.Null, exp.Paren, exp.Binary,
    exp.Unary, exp.In, exp.Between, exp.DataType, exp.DataTypeParam, exp.Var, exp.Interval,
    exp.If, exp.Tuple,
)  # fmt: skip
_FAMILIES = {
    "text": ("VARCHAR", "TEXT", "STRING", "CHAR", "BPCHAR"),
    "number": (
        "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
        "UINTEGER", "UBIGINT", "UHUGEINT", "FLOAT", "DOUBLE", "DECIMAL", "REAL",
    ),
    "time": ("DATE", "TIMESTAMP", "TIME"),
}  # fmt: skip


def parse_expression(text: str, what: str, columns: list[str], dialect: str = "duckdb") -> exp.Expr:
    """``text`` (a filter's predicate or a mask's expression) parsed and checked against the
    allow-list and the table's ``columns``; ``SQLError`` naming the refused part and where.

    Example:
        >>> parse_expression("lower(email) LIKE '%@x.org'", "row filter", ["email"]).sql()
        "LOWER(email) LIKE '%@x.org'"
        >>> try:
        ...     parse_expression("(SELECT 1) = 1", "row filter", ["email"])
        ... except SQLError as e:
        ...     print(e.message)
        row filter: a subquery is not allowed (line 1, column 2 of the expression)
    """
    if not text.strip():
        raise SQLError(f"{what}: the expression is empty")
    try:
        trees = sqlglot.parse(text, read=dialect)
    except ParseError as e:
        err = e.errors[0] if e.errors else {}
        raise SQLError(
            f"{what}: cannot parse the expression: {err.get('description', 'syntax error')}"
            f" (line {err.get('line', 1)}, column {err.get('col', 1)} of the expression)"
        ) from e
    except SqlglotError as e:
        raise SQLError(f"{what}: cannot parse the expression") from e
    if len(trees) != 1 or trees[0] is None:
        raise SQLError(f"{what}: one expression expected, not several statements")
    tree = trees[0]
    known = {c.lower() for c in columns}
    for node in tree.walk():
        refused = _refused(node, known)
        if refused:
            raise SQLError(f"{what}: {refused}" + _where(node, text), hint=_HINT)
    if not isinstance(tree, exp.Condition):  # a statement, not an expression
        raise SQLError(f"{what}: {_kind(tree)} is not allowed" + _where(tree, text), hint=_HINT)
    return tree


_HINT = (
    "use the table's columns by name, literals, operators, CASE, CAST and scalar functions "
    "such as lower(), left(), coalesce(), regexp_replace()"
)


def _refused(node: exp.Expr, columns: set[str]) -> str | None:
    if isinstance(node, exp.Query | exp.Subquery):
        return "a subquery is not allowed"
    if isinstance(node, exp.Table):
        return "a table reference is not allowed"
    if isinstance(node, exp.Star):
        return "* is not allowed"
    if isinstance(node, exp.Placeholder | exp.Parameter):
        return "a parameter is not allowed"
    if isinstance(node, exp.Window | exp.AggFunc):
        return f"{function_name(node).upper()}: aggregates and window functions are not allowed"
    if isinstance(node, exp.Column):
        if node.table:
            return f"column {node.sql()} names a table: name columns alone"
        if node.name.lower() not in columns:
            return f"the table has no column {node.name!r}"
        return None
    if isinstance(node, exp.Func) and not isinstance(node, exp.Binary | exp.Unary):
        name = function_name(node)
        if name not in ALLOWED_FUNCTIONS:
            return f"function {name}() is not allowed"
        return None
    if isinstance(node, _NODES):
        return None
    return f"{_kind(node)} is not allowed"


def _kind(node: exp.Expr) -> str:
    return type(node).__name__.upper()


def _where(node: exp.Expr, text: str) -> str:
    """Where ``node`` starts in ``text``: its first token's line and column (1-based)."""
    starts = [n.meta["start"] for n in node.walk() if isinstance(n.meta.get("start"), int)]
    if not starts:
        return ""
    at = min(starts)
    if isinstance(node, exp.Query | exp.Subquery):  # its keywords carry no position
        keyword = text.lower().rfind("select", 0, at)
        at = keyword if keyword >= 0 else at
    line = text.count("\n", 0, at) + 1
    col = at - (text.rfind("\n", 0, at) + 1) + 1
    return f" (line {line}, column {col} of the expression)"


def _family(duck_type: str) -> str:
    t = duck_type.upper().strip('"')
    for family, names in _FAMILIES.items():
        if any(t.startswith(n) for n in names):
            return family
    return t


def _describe(schema: pa.Schema, query: str) -> list[tuple[str, str]]:
    """DuckDB's ``DESCRIBE`` of ``query`` over ``t``, an empty table of ``schema``, on a
    connection of its own that may touch no file."""
    config: dict[str, str | bool | int | float | list[str]] = {
        "enable_external_access": False,
        "autoload_known_extensions": False,
    }
    con = duckdb.connect(config=config)
    try:
        con.register("t", schema.empty_table())
        return [(str(r[0]), str(r[1])) for r in con.execute(query).fetchall()]
    finally:
        con.close()


def typed(tree: exp.Expr, schema: pa.Schema, what: str) -> tuple[str, str]:
    """``(DuckDB SQL of the expression, its DuckDB type)`` over a table of ``schema``: binding
    errors (a wrong argument type, an unknown function) are raised here, not at query time."""
    sql = tree.sql(dialect="duckdb")
    try:
        return sql, _describe(schema, f"DESCRIBE SELECT ({sql}) AS v FROM t")[0][1]
    except duckdb.Error as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise SQLError(f"{what}: {first}", hint=_HINT) from e


def column_type(schema: pa.Schema, column: str) -> tuple[str, str]:
    """``(the column's name as the table spells it, its DuckDB type)``."""
    match = [f.name for f in schema if f.name.lower() == column.lower()]
    if not match:
        raise SQLError(f"the table has no column {column!r}", hint="SHOW or DESCRIBE the table")
    return match[0], dict(_describe(schema, "DESCRIBE t"))[match[0]]


class PolicyDefinitions:
    """Setting, dropping and listing row filters and column masks (SQL and the SDK)."""

    def __init__(self, service: TableService) -> None:
        self.service = service
        self.accounts = Accounts(service.catalog)
        self.audit = AuditLog(service)

    # -- the SDK's calls ----------------------------------------------------------------------
    def set_row_filter(
        self,
        principal: Principal,
        table: str,
        predicate: str,
        account: str,
        dialect: str = "duckdb",
    ) -> Policy:
        """Bind ``predicate`` to (``table``, ``account``), replacing its filter if any."""
        info = self._managed(principal, table)
        self._account(account)
        schema = self._schema(info)
        what = f"row filter on {info.name}"
        sql, kind = typed(parse_expression(predicate, what, schema.names, dialect), schema, what)
        if kind.upper() not in ("BOOLEAN", '"NULL"'):
            raise SQLError(f"{what}: the predicate gives {kind}, not a BOOLEAN", hint=_HINT)
        policy = Policy(info.name, FILTER, "", account, sql, created_by=principal.name)
        self.service.policies.put(policy)
        return policy

    def set_mask(
        self,
        principal: Principal,
        table: str,
        column: str,
        expression: str,
        account: str,
        dialect: str = "duckdb",
    ) -> Policy:
        """Bind the mask ``expression`` to (``table``, ``column``, ``account``)."""
        info = self._managed(principal, table)
        self._account(account)
        schema = self._schema(info)
        name, want = column_type(schema, column)
        what = f"mask of {info.name}.{name}"
        sql, got = typed(parse_expression(expression, what, schema.names, dialect), schema, what)
        cast_to: str | None = None
        if got != want:
            if got != '"NULL"' and _family(got) != _family(want):
                raise SQLError(
                    f"{what}: the expression gives {got}, the column is {want}",
                    hint=f"a mask keeps the column's type: e.g. CAST(… AS {want}), or NULL",
                )
            cast_to = want
        policy = Policy(info.name, MASK, name, account, sql, cast_to, created_by=principal.name)
        self.service.policies.put(policy)
        return policy

    def drop_row_filter(self, principal: Principal, table: str, account: str) -> bool:
        info = self._managed(principal, table)
        return self.service.policies.remove(info.name, FILTER, "", account)

    def drop_mask(self, principal: Principal, table: str, column: str, account: str) -> bool:
        info = self._managed(principal, table)
        match = [p for p in self.service.policies.list(info.name) if p.kind == MASK]
        name = next((p.column for p in match if p.column.lower() == column.lower()), column)
        return self.service.policies.remove(info.name, MASK, name, account)

    def list(self, principal: Principal, table: str) -> list[Policy]:
        """The table's policies: all of them to who may manage it, else those that apply to
        ``principal`` (who needs SELECT on the table)."""
        info = self.service.resolve(principal, table, "SELECT")
        policies = self.service.policies.list(info.name)
        if self.accounts.may_manage(principal, info.name, "table"):
            return policies
        mine = {principal.name, *principal.groups}
        return [p for p in policies if p.account in mine]

    def audited(
        self,
        principal: Principal,
        action: str,
        obj: str,
        run: Callable[[], Policy | bool],
        *,
        protocol: str = "sdk",
        statement: str | None = None,
    ) -> Policy | bool:
        """``run()``, with its audit row (done or refused)."""
        started = time.perf_counter()
        failure: BaseException | None = None
        try:
            return run()
        except BaseException as e:
            failure = e
            raise
        finally:
            self.audit.record(
                AuditEvent(
                    principal.name,
                    action,
                    obj,
                    outcome_of(failure),
                    protocol=protocol,
                    statement=statement,
                    duration_ms=(time.perf_counter() - started) * 1000,
                )
            )

    def _managed(self, principal: Principal, table: str) -> TableInfo:
        info = self.service.catalog.get_table(TableIdent.parse(table))
        if not self.accounts.may_manage(principal, info.name, "table"):
            raise AccessDenied(
                f"{principal.name} may not change the row filters or masks of {info.name}",
                hint="its owner, an admin or a holder of MANAGE on it can",
            )
        return info

    def _account(self, name: str) -> None:
        if not self.accounts.exists(name):
            raise SQLError(
                f"no account {name!r}",
                hint=f"CREATE USER {name} or CREATE GROUP {name} first",
                sqlstate=AccountNotFound.sqlstate,
            )

    def _schema(self, info: TableInfo) -> pa.Schema:
        store = self.service.store(info)
        return store.schema(self.service.snapshot(info))

    # -- SQL ----------------------------------------------------------------------------------
    def alter(self, stmt: exp.Expr, dialect: str, principal: Principal) -> Result | None:
        """An ``ALTER`` sqlglot parsed into a tree (``DROP ROW FILTER`` is one); None when it is
        not one of these statements."""
        cmd, _, rest = stmt.sql(dialect=dialect).partition(" ")
        return self.command(cmd.upper(), rest, dialect, principal)

    def command(self, cmd: str, rest: str, dialect: str, principal: Principal) -> Result | None:
        """Run ``cmd rest`` if it is a row filter or mask statement; else None."""
        words = rest.upper().split()
        if cmd == "SHOW" and words[:2] in (["ROW", "FILTERS"], ["MASKS", "ON"], ["POLICIES", "ON"]):
            return self._show(Words(cmd, rest, dialect), principal)
        if cmd != "ALTER" or not words or words[0] != "TABLE":
            return None
        text = " ".join(words)
        if not any(k in text for k in (" ROW FILTER ", " SET MASK ", " DROP MASK ")):
            return None
        w = Words(cmd, rest, dialect)
        w.expect("TABLE")
        table = _table(w)
        w.object = table
        column: str | None = None
        if w.accept("ALTER"):
            w.accept("COLUMN")
            column = ".".join(w.name("a column name"))
            w.object = f"{table}.{column}"
        setting = w.accept("SET")
        if not setting:
            w.expect("DROP")
        if column is None:
            w.expect("ROW", "FILTER")
        else:
            w.expect("MASK")
        expression = w.string("a quoted expression") if setting else None
        w.expect("FOR")
        account = ".".join(w.name("an account name"))
        w.end()
        action = ("SET " if setting else "DROP ") + ("ROW FILTER" if column is None else "MASK")

        def run() -> Policy | bool:
            if column is None:
                if expression is not None:
                    return self.set_row_filter(principal, table, expression, account, dialect)
                return self.drop_row_filter(principal, table, account)
            if expression is not None:
                return self.set_mask(principal, table, column, expression, account, dialect)
            return self.drop_mask(principal, table, column, account)

        done = self.audited(
            principal,
            action,
            w.object,
            run,
            protocol="sql",
            statement=redact_literals(f"{cmd} {rest}", dialect),
        )
        return ok(action, changed=int(bool(done)))

    def _show(self, w: Words, principal: Principal) -> Result:
        kinds = {FILTER, MASK}
        if w.accept("ROW", "FILTERS"):
            kinds = {FILTER}
        elif w.accept("MASKS"):
            kinds = {MASK}
        else:
            w.expect("POLICIES")
        w.expect("ON")
        w.accept("TABLE")
        table = _table(w)
        w.end()
        rows = [p for p in self.list(principal, table) if p.kind in kinds]
        return Result.from_table(
            pa.table(
                {
                    "table": pa.array([p.table for p in rows], pa.string()),
                    "kind": pa.array([p.kind for p in rows], pa.string()),
                    "column": pa.array([p.column or None for p in rows], pa.string()),
                    "account": pa.array([p.account for p in rows], pa.string()),
                    "expression": pa.array([p.expression for p in rows], pa.string()),
                    "created_by": pa.array([p.created_by for p in rows], pa.string()),
                    "created_at": pa.array(
                        [p.created_at for p in rows], pa.timestamp("us", tz="UTC")
                    ),
                }
            ),
            statement="SHOW",
        )


def _table(w: Words) -> str:
    parts = w.name("a table name")
    if len(parts) > 3:
        raise SQLError(f"{'.'.join(parts)} is not a table name")
    padded: list[str | None] = [None] * (3 - len(parts)) + list(parts)
    return str(TableIdent.from_parts(padded[0], padded[1], parts[-1]))
