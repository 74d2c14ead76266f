"""DML: INSERT, UPDATE, DELETE, MERGE, and the maintenance commands OPTIMIZE and VACUUM.

Rows to write come from the engine's own queries; conditions and SET expressions are checked,
their columns quoted, and handed to the table's format (delta-rs evaluates them; Lance runs
MERGE's upsert shapes natively).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from sqlglot import exp

from matrixos.catalog import lineage_runs
from matrixos.catalog.names import check_part
from matrixos.catalog.service import TableHandle
from matrixos.engine.result import Result
from matrixos.engine.sandbox import check_query
from matrixos.engine.sql.binding import conjuncts
from matrixos.engine.sql.frontend import ident_of, ok, table_name
from matrixos.errors import NotSupported, SQLError
from matrixos.storage.delta import check_merge_source

if TYPE_CHECKING:
    from matrixos.catalog.access import Principal
    from matrixos.catalog.service import TableService

Query = Callable[[exp.Expr, "Principal"], Result]


class DML:
    """The writing statements of one session, each for one principal; ``query`` runs a query
    tree (the rows of INSERT … SELECT / VALUES, MERGE's source) as that principal.

    Tables are written through the service's ``TableHandle`` (``MODIFY`` checked there)."""

    def __init__(self, service: TableService, query: Query) -> None:
        self.service = service
        self._query = query

    def _table(self, node: exp.Expr, principal: Principal) -> TableHandle:
        return self.service.table(principal, ident_of(node))

    def insert(self, stmt: exp.Insert, dialect: str, principal: Principal) -> Result:
        """``INSERT [OVERWRITE] INTO t [(columns) | BY NAME] VALUES … | query``."""

        def rows() -> pa.Table:
            source = stmt.expression
            if not isinstance(source, exp.Query | exp.Values):
                raise NotSupported("INSERT supports VALUES and SELECT")
            if isinstance(source, exp.Values):
                # Not copied: the statement is not used again (a copy of 20,000 rows: seconds)
                source = exp.select("*").from_(source.as_("__mx_values", copy=False))
            return self._query(source, principal).to_arrow()

        return self.insert_rows(stmt, principal, rows)

    def insert_rows(
        self, stmt: exp.Insert, principal: Principal, rows: Callable[[], pa.Table]
    ) -> Result:
        """``stmt``'s target (and columns) given the rows ``rows()`` makes, asked for once
        the principal may write there."""
        target = stmt.this
        columns: list[str] | None = None
        if isinstance(target, exp.Schema):
            columns = [c.name for c in target.expressions]
            target = target.this
        table = self._table(target, principal)
        table.writable()  # refused before the source query runs
        data = rows()
        names = [f.name for f in table.schema]
        if not stmt.args.get("by_name"):
            wanted = columns or names[: data.num_columns]
            if len(wanted) != data.num_columns:
                raise SQLError(
                    f"INSERT has {data.num_columns} value column(s) "
                    f"for {len(wanted)} target column(s)"
                )
            data = data.rename_columns(wanted)
        if stmt.args.get("overwrite"):
            table.overwrite(data)
        else:
            table.append(data)
        return ok(f"INSERT 0 {data.num_rows}", num_affected_rows=data.num_rows)

    def delete(self, stmt: exp.Delete, dialect: str, principal: Principal) -> Result:
        """``DELETE FROM t [WHERE …]``."""
        table = self._table(stmt.this, principal)
        where = stmt.args.get("where")
        res = table.delete(delta_expr(where.this, stmt.this) if where else None)
        n = int(res.metrics.get("num_deleted_rows", 0) or 0)
        return ok(f"DELETE {n}", num_affected_rows=n, version=res.version)

    def update(self, stmt: exp.Update, dialect: str, principal: Principal) -> Result:
        """``UPDATE t SET c = expr, … [WHERE …]``."""
        table = self._table(stmt.this, principal)
        table.writable()
        sets: dict[str, str] = {}
        for e in stmt.expressions:
            if not isinstance(e, exp.EQ) or not isinstance(e.this, exp.Column):
                raise SQLError(f"cannot parse SET {e.sql()}")
            sets[e.this.name] = delta_expr(e.expression, stmt.this)
        if stmt.args.get("from_"):
            raise NotSupported("UPDATE … FROM is not supported; use MERGE INTO")
        sets = _target_columns(table.schema, sets, table.name)
        where = stmt.args.get("where")
        res = table.update(sets, delta_expr(where.this, stmt.this) if where else None)
        n = int(res.metrics.get("num_updated_rows", 0) or 0)
        return ok(f"UPDATE {n}", num_affected_rows=n, version=res.version)

    # -- MERGE ------------------------------------------------------------------------------
    def merge(self, stmt: exp.Merge, dialect: str, principal: Principal) -> Result:
        """``MERGE INTO t USING source ON … WHEN [NOT] MATCHED [BY SOURCE] [AND …] THEN …``."""
        target = stmt.this
        table = self._table(target, principal)
        store = table.writable()  # refused before the source query runs
        table.unfiltered("MERGE")  # which keys match would tell what a row filter hides
        using = stmt.args["using"]
        src_alias = using.alias_or_name
        inner = using.this if isinstance(using, exp.Subquery) else using.copy()
        if isinstance(inner, exp.Table):
            inner.set("alias", None)
            inner = exp.select("*").from_(inner)
        source = self._query(inner, principal).to_arrow()
        keys, null_safe = _merge_keys(stmt.args["on"], target.alias_or_name, src_alias, source)
        inserts = any(
            isinstance(w.args["then"], exp.Insert) for w in stmt.args["whens"].expressions
        )
        check_merge_source(source, keys, inserts=inserts and not null_safe)
        # A format whose store runs a full MERGE statement (Delta's, through delta-rs) takes
        # every clause; any other gets the upsert shapes ``Table.merge`` runs (Lance's).
        if not hasattr(store, "merge_statement"):
            return _merge_upsert(stmt, table, source, target.alias_or_name, src_alias)
        aliases = {target.alias_or_name.lower(): "target", src_alias.lower(): "source"}
        schema = table.schema

        def conv(e: exp.Expr) -> str:
            return delta_expr(e, None, aliases)

        on = conv(stmt.args["on"])
        whens = stmt.args["whens"].expressions

        def build(dt: Any) -> Any:
            m = dt.merge(source, on, source_alias="source", target_alias="target")
            for w in whens:
                then = w.args["then"]
                cond = w.args.get("condition")
                pred = conv(cond) if cond is not None else None
                matched, by_source = bool(w.args.get("matched")), bool(w.args.get("source"))
                is_delete = isinstance(then, exp.Var) and then.name.upper() == "DELETE"
                if matched:
                    if is_delete:
                        m = m.when_matched_delete(predicate=pred)
                    elif isinstance(then, exp.Update) and _is_star(then):
                        m = m.when_matched_update_all(predicate=pred)
                    else:
                        m = m.when_matched_update(
                            _target_columns(schema, _assignments(then, conv), table.name),
                            predicate=pred,
                        )
                elif by_source:
                    if is_delete:
                        m = m.when_not_matched_by_source_delete(predicate=pred)
                    else:
                        m = m.when_not_matched_by_source_update(
                            _target_columns(schema, _assignments(then, conv), table.name),
                            predicate=pred,
                        )
                elif isinstance(then, exp.Insert):
                    if isinstance(then.this, exp.Star):
                        m = m.when_not_matched_insert_all(predicate=pred)
                    else:
                        cols = [c.name for c in then.this.expressions]
                        vals = [conv(v) for v in then.expression.expressions]
                        m = m.when_not_matched_insert(
                            _target_columns(schema, dict(zip(cols, vals, strict=True)), table.name),
                            predicate=pred,
                        )
                else:
                    raise NotSupported(f"MERGE clause {w.sql()} is not supported")
            return m

        res = store.merge_statement(build)
        self.service.touch(table.info)
        lineage_runs.wrote(self.service, table.name, res.version, principal.name)
        metrics = res.metrics
        n = sum(
            int(metrics.get(k, 0) or 0)
            for k in (
                "num_target_rows_inserted",
                "num_target_rows_updated",
                "num_target_rows_deleted",
            )
        )
        return ok(f"MERGE {n}", num_affected_rows=n, version=res.version)

    # -- maintenance (commands sqlglot leaves as text) --------------------------------------
    def maintain(self, cmd: str, rest: str, dialect: str, principal: Principal) -> Result:
        """``OPTIMIZE t [ZORDER BY (a, b)]`` or ``VACUUM t [RETAIN n HOURS] [DRY RUN]``."""
        if cmd == "OPTIMIZE":
            m = re.match(r"^(\S+)(?:\s+ZORDER\s+BY\s*\(?([^)]*)\)?)?\s*$", rest, re.I)
            if not m:
                raise SQLError(
                    f"cannot parse OPTIMIZE {rest!r}", hint="OPTIMIZE t [ZORDER BY (a, b)]"
                )
            table = self.service.table(principal, table_name(m.group(1), dialect))
            cols = [c.strip().strip('"`') for c in (m.group(2) or "").split(",") if c.strip()]
            metrics = table.optimize(cols or None)
            return ok(
                "OPTIMIZE",
                files_added=int(metrics.get("numFilesAdded", 0)),
                files_removed=int(metrics.get("numFilesRemoved", 0)),
            )
        m = re.match(r"^(\S+)(?:\s+RETAIN\s+(\d+)\s+HOURS)?(\s+DRY\s+RUN)?\s*$", rest, re.I)
        if not m:
            raise SQLError(
                f"cannot parse VACUUM {rest!r}", hint="VACUUM t [RETAIN n HOURS] [DRY RUN]"
            )
        table = self.service.table(principal, table_name(m.group(1), dialect))
        hours = int(m.group(2)) if m.group(2) else None
        files = table.vacuum(hours, dry_run=bool(m.group(3)))
        return Result.from_table(
            pa.table({"path": pa.array(files, pa.string())}), statement="VACUUM"
        )


def _merge_upsert(
    stmt: exp.Merge, table: TableHandle, source: pa.Table, target: str, alias: str
) -> Result:
    """MERGE as ``Table.merge``'s upsert (a Lance table): the shapes Lance's merge_insert runs
    natively —
    ON equalities of target and source columns; WHEN MATCHED THEN UPDATE SET * (or each
    column = its source column); WHEN NOT MATCHED THEN INSERT * (or the source columns);
    WHEN NOT MATCHED BY SOURCE THEN DELETE; no extra conditions."""
    names = {target.lower(): "t", alias.lower(): "s"}
    unsupported = NotSupported(
        "this MERGE shape is not supported on Lance tables: use ON target.k = source.k, "
        "WHEN MATCHED THEN UPDATE SET *, WHEN NOT MATCHED THEN INSERT *, WHEN NOT MATCHED "
        "BY SOURCE THEN DELETE (or a Delta table)"
    )

    def side(c: exp.Expr) -> tuple[str, str]:
        if not isinstance(c, exp.Column) or c.table.lower() not in names:
            raise unsupported
        return names[c.table.lower()], c.name

    keys: list[str] = []
    for conj in conjuncts(stmt.args["on"]):
        if not isinstance(conj, exp.EQ):
            raise unsupported
        a, b = side(conj.this), side(conj.expression)
        if {a[0], b[0]} != {"t", "s"} or a[1].lower() != b[1].lower():
            raise unsupported
        keys.append(a[1] if a[0] == "t" else b[1])
    update = insert = delete = False
    for w in stmt.args["whens"].expressions:
        then = w.args["then"]
        if w.args.get("condition") is not None:
            raise unsupported
        matched, by_source = bool(w.args.get("matched")), bool(w.args.get("source"))
        if matched and isinstance(then, exp.Update):
            if not _is_star(then):
                for eq in then.expressions:
                    if side(eq.expression) != ("s", eq.this.name):
                        raise unsupported
            update = True
        elif by_source and isinstance(then, exp.Var) and then.name.upper() == "DELETE":
            delete = True
        elif not matched and not by_source and isinstance(then, exp.Insert):
            if not isinstance(then.this, exp.Star):
                cols = [c.name for c in then.this.expressions]
                vals = [side(v) for v in then.expression.expressions]
                if vals != [("s", c) for c in cols]:
                    raise unsupported
            insert = True
        else:
            raise unsupported
    res = table.merge(
        source,
        keys,
        when_matched="update" if update else "ignore",
        when_not_matched="insert" if insert else "ignore",
        delete_not_matched_by_source=delete,
    )
    m = res.metrics
    n = sum(int(m.get(k, 0) or 0) for k in m if k.startswith("num_"))
    return ok(f"MERGE {n}", num_affected_rows=n, version=res.version)


def _merge_keys(on: exp.Expr, target: str, alias: str, source: pa.Table) -> tuple[list[str], bool]:
    """The source columns MERGE's ON equates with target columns (``t.k = s.k``), and whether
    any of them is compared NULL-safely (``IS NOT DISTINCT FROM``, ``<=>``)."""
    names = {n.lower(): n for n in source.column_names}
    sides = {target.lower(): "t", alias.lower(): "s"}
    keys: list[str] = []
    null_safe = False
    for conj in conjuncts(on):
        if not isinstance(conj, exp.EQ | exp.NullSafeEQ):
            continue
        cols = [conj.this, conj.expression]
        if not all(isinstance(c, exp.Column) and c.table.lower() in sides for c in cols):
            continue
        by_side = {sides[c.table.lower()]: c.name.lower() for c in cols}
        if set(by_side) == {"t", "s"} and by_side["s"] in names:
            keys.append(names[by_side["s"]])
            null_safe |= isinstance(conj, exp.NullSafeEQ)
    return list(dict.fromkeys(keys)), null_safe


def _is_star(update: exp.Update) -> bool:
    return any(isinstance(e, exp.Star) for e in update.expressions)


def _assignments(then: exp.Expr, conv: Callable[[exp.Expr], str]) -> dict[str, str]:
    out = {}
    for e in then.expressions:
        if not isinstance(e, exp.EQ) or not isinstance(e.this, exp.Column):
            raise SQLError(f"cannot parse SET {e.sql()}")
        out[e.this.name] = conv(e.expression)
    return out


def _target_columns(schema: pa.Schema, values: dict[str, str], table: str) -> dict[str, str]:
    """``values`` keyed by the table's own column names; unknown columns are an error.

    delta-rs silently ignores SET/INSERT targets that are not columns of the table.
    """
    names = {f.name.lower(): f.name for f in schema}
    out = {}
    for col, value in values.items():
        real = names.get(col.lower())
        if real is None:
            raise SQLError(
                f"column {col!r} does not exist in table {table}",
                sqlstate="42703",
                hint="columns: " + ", ".join(schema.names),
            )
        out[real] = value
    return out


def delta_expr(e: exp.Expr, table: exp.Expr | None, aliases: dict[str, str] | None = None) -> str:
    """An expression in the SQL that delta-rs (DataFusion) evaluates for predicates and SETs:
    checked like a query, its columns quoted, ``table``'s qualifier dropped (or, for MERGE,
    the user's aliases renamed by ``aliases``).

    Example:
        >>> import sqlglot
        >>> delta_expr(sqlglot.parse_one("t.amount < 0"), sqlglot.parse_one("t", into=exp.Table))
        '"amount" < 0'
    """
    if e.find(exp.Query):
        raise NotSupported("subqueries are not supported in UPDATE/DELETE/MERGE conditions")
    check_query(exp.select(e.copy()))
    e = e.copy()
    own = table.alias_or_name.lower() if isinstance(table, exp.Table) else None
    for col in e.find_all(exp.Column):
        qual = col.table.lower() if col.table else None
        if aliases is not None:
            if qual and qual in aliases:
                col.set("table", exp.to_identifier(aliases[qual]))
        elif qual is not None and qual == own:
            col.set("table", None)
        ident = col.this
        if isinstance(ident, exp.Identifier):
            check_part(ident.name, "column")
            ident.set("quoted", True)
    return e.sql(dialect="postgres")
