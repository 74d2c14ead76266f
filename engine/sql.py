"""The SQL front end: parse in any dialect, check, resolve names, run on DuckDB or Delta.

Queries run on DuckDB over the tables' active Parquet files (see ``engine.scan``); DDL and DML
map to catalog and Delta operations. Every statement is checked by ``engine.sandbox`` first.
"""

from __future__ import annotations

import logging
import re
import threading
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa
import sqlglot
from sqlglot import exp
from sqlglot.errors import ErrorLevel, ParseError, SqlglotError, UnsupportedError

from matrixos.catalog import TableIdent, TableInfo
from matrixos.catalog.names import check_part
from matrixos.engine._syntax import locate_engine_error, statement_starts, syntax_error
from matrixos.engine.context import EngineSession, QueryContext
from matrixos.engine.context import table_refs as _table_refs
from matrixos.engine.dist import route
from matrixos.engine.functions import expand_functions, is_function_result
from matrixos.engine.result import Result
from matrixos.engine.sandbox import (
    check_query,
    check_table_name,
    locked_connection,
)
from matrixos.engine.scan import (
    LanceScan,
    Predicate,
    PrunedScan,
    Snapshot,
    load_snapshot,
    make_context,
    prune,
    render_scan,
)
from matrixos.errors import AccessDenied, MatrixOSError, NotSupported, SQLError
from matrixos.storage.delta import check_merge_source
from matrixos.storage.warehouse import is_remote

if TYPE_CHECKING:
    from matrixos.engine.functions import FunctionResults
    from matrixos.session import Lakehouse

_CMP: dict[type[exp.Expr], str] = {
    exp.EQ: "=",
    exp.LT: "<",
    exp.LTE: "<=",
    exp.GT: ">",
    exp.GTE: ">=",
}
_FLIP = {"=": "=", "<": ">", "<=": ">=", ">": "<", ">=": "<="}
_BATCH_ROWS = 64 * 1024
# Statements never allowed in user SQL, named even when sqlglot cannot parse them.
_DENIED_STATEMENTS = frozenset(
    {
        "ATTACH", "CALL", "CHECKPOINT", "COPY", "DETACH", "EXPORT", "FORCE", "IMPORT",
        "INSTALL", "LOAD", "PRAGMA", "RESET", "SET", "UNLOAD", "UPDATE_EXTENSIONS", "USE",
    }
)  # fmt: skip


def _ok(message: str, **cols: Any) -> Result:
    data = {"status": [message], **{k: [v] for k, v in cols.items()}}
    return Result.from_table(pa.table(data), statement=message.split()[0], message=message)


class SQLEngine:
    """Runs SQL for one ``Lakehouse``. Thread-safe: each statement gets its own DuckDB cursor."""

    def __init__(self, lh: Lakehouse) -> None:
        self.lh = lh
        self._lock = threading.Lock()
        self._con: duckdb.DuckDBPyConnection | None = None
        self._allowed: tuple[str, ...] = ()
        # Constant folding and planning never spill: this connection may touch no file.
        self._consts = locked_connection([], spill=False)
        self._snapshots: OrderedDict[tuple[str, int], Snapshot] = OrderedDict()

    def close(self) -> None:
        self._con = None
        self._snapshots.clear()

    # -- connections ------------------------------------------------------------------------
    def _cursor(self, locations: Sequence[str] = ()) -> duckdb.DuckDBPyConnection:
        """A cursor on the locked connection, whose allowed directories cover ``locations``."""
        local = [loc for loc in locations if not is_remote(loc)]
        with self._lock:
            missing = [
                loc for loc in local if not any((loc + "/").startswith(a) for a in self._allowed)
            ]
            if self._con is None or missing:
                roots = set(self._allowed)
                if not self.lh.warehouse.is_remote:
                    roots.add(self.lh.warehouse.uri.rstrip("/") + "/")
                roots.update(loc.rstrip("/") + "/" for loc in missing)
                s = self.lh.settings
                self._allowed = tuple(sorted(roots))
                self._con = locked_connection(
                    self._allowed, threads=s.duckdb_threads, memory_limit=s.duckdb_memory_limit
                )
            return self._con.cursor()

    # -- entry point ------------------------------------------------------------------------
    def execute(self, sql: str, dialect: str, *, engine: str = "auto") -> Result:
        """Run ``sql``; ``engine`` (``auto``/``local``/``ray``) picks where queries run
        (see ``engine.dist``)."""
        try:
            statements = self.parse(sql, dialect)
            if not statements:
                raise SQLError("empty statement", sql=sql)
            result: Result | None = None
            for stmt in statements:
                result = self._run(stmt, dialect, engine)
        except SQLError as e:
            raise locate_engine_error(e, sql, dialect) from e.__cause__
        except RecursionError as e:
            # sqlglot parses, checks and generates recursively: ~100 nested parentheses or
            # subqueries exhaust Python's stack before any statement runs.
            raise SQLError(
                "statement nested too deeply to analyse",
                sql=sql if len(sql) <= 200 else sql[:200] + "…",
                hint="flatten nested parentheses or subqueries (e.g. into WITH clauses)",
            ) from e
        assert result is not None
        return result

    def parse(self, sql: str, dialect: str) -> list[exp.Expr]:
        try:
            sqlglot.Dialect.get_or_raise(dialect)
        except (ValueError, SqlglotError) as e:
            raise SQLError(f"unknown SQL dialect {dialect!r}") from e
        try:
            trees = sqlglot.parse(sql, read=dialect)
        except ParseError as e:
            denied = _denied_statement(sql, dialect)
            if denied:
                raise AccessDenied(f"{denied} statements are not allowed", sql=sql) from e
            raise syntax_error(e, sql, dialect) from e
        except SqlglotError as e:
            raise SQLError(f"cannot parse SQL: {e}", sql=sql) from e
        return [_integer_division(t) for t in trees if t is not None]

    def _run(self, stmt: exp.Expr, dialect: str, engine: str = "local") -> Result:
        _check_translation(stmt, dialect)
        if isinstance(stmt, exp.Query):
            return self.query(stmt, engine=engine)
        if isinstance(stmt, exp.Command):
            return self._do_command(stmt, dialect, engine)
        handler = getattr(self, f"_do_{type(stmt).__name__.lower()}", None)
        if handler is None:
            text = stmt.sql(dialect=dialect)
            # e.g. CHECKPOINT parses as a column: name the keyword, not the node type
            what = (
                text.split(None, 1)[0].upper()
                if isinstance(stmt, exp.Condition) and text
                else type(stmt).__name__.upper()
            )
            raise AccessDenied(f"{what} statements are not allowed", sql=text)
        result: Result = handler(stmt, dialect)
        return result

    def query_context(
        self, tree: exp.Expr, bound: list[tuple[TableIdent, Any]], functions: FunctionResults
    ) -> QueryContext:
        """The query as the distributed engine takes it, with the narrow engine interface."""
        from matrixos.compute import parse_compute

        lh = self.lh
        session = EngineSession(
            settings=lh.settings,
            storage_options=lh.warehouse.options,
            remote_warehouse=lh.warehouse.is_remote,
            is_ray=parse_compute(lh.settings.compute).kind == "ray",
            planning_cursor=self._consts.cursor,
            cursor=lambda: self._cursor([]),
            install=self._install,
            num_cpus=lambda: lh.compute.num_cpus(),
            engine_error=_engine_error,
            without_scan_excerpt=_without_scan_excerpt,
        )
        return QueryContext(session, tree, bound, functions)

    # -- queries ----------------------------------------------------------------------------
    def query(
        self, tree: exp.Expr, *, explain: bool = False, analyze: bool = False, engine: str = "local"
    ) -> Result:
        tree = tree.copy() if explain else tree
        # Checked before anything in it is evaluated: the platform functions' arguments
        # (``k => current_setting(…)``) are folded on a DuckDB connection by expand_functions.
        check_query(tree)
        functions = expand_functions(self, tree)
        refs = [r for r in check_query(tree) if not is_function_result(r)]
        bound = self._bind(tree, refs)
        notes: list[str] = []
        if engine != "local":
            query = self.query_context(tree, bound, functions)
            routed = route(query, engine=engine, explain=explain, analyze=analyze)
            if routed.result is not None:
                return routed.result
            notes = routed.notes
        cur = self._cursor([b.snapshot.location for _, b in bound if isinstance(b, PrunedScan)])
        try:
            functions.install(cur)
            sql = self._install(cur, tree, bound)
            if explain:
                plan = cur.execute("EXPLAIN " + sql).fetchall()
                lines = notes + list(functions.explain)
                for ident, scan in bound:
                    if isinstance(scan, LanceScan):
                        lines.append(
                            f"Scan {ident} (lance, version {scan.version}): projection and "
                            "filters pushed into Lance"
                        )
                        continue
                    lines.append(
                        f"Scan {ident} (delta, version {scan.snapshot.version}): "
                        f"{len(scan.files)} of {len(scan.snapshot.files)} files after pruning"
                        + (
                            " on " + ", ".join(p.describe() for p in scan.predicates)
                            if scan.predicates
                            else ""
                        )
                    )
                for row in plan:
                    lines.extend(str(row[-1]).splitlines())
                cur.close()
                return Result.from_table(pa.table({"plan": lines}), statement="EXPLAIN")
            reader = cur.sql(sql).to_arrow_reader(_BATCH_ROWS)
        except duckdb.Error as e:
            cur.close()
            raise _without_scan_excerpt(_engine_error(e, _user_statement(tree))) from e
        except BaseException:
            cur.close()
            raise
        return Result(reader, statement="SELECT", on_close=cur.close)

    def read_table(
        self,
        info: TableInfo,
        version: int | None,
        timestamp: datetime | str | None,
        columns: Sequence[str] | None,
    ) -> pa.Table:
        """All rows of one table (a projection of ``columns`` when given)."""
        snap = self._snapshot(info, version, timestamp)
        scan = prune(snap, [])
        cur = self._cursor([snap.location])
        try:
            ctx = make_context(self.lh.warehouse.options, is_remote(snap.location))
            sql = render_scan(scan, ctx, columns)
            for name, obj in ctx.registrations.items():
                cur.register(name, obj)
            return cur.sql(sql).to_arrow_table()
        except duckdb.Error as e:
            raise _engine_error(e, "") from e
        finally:
            cur.close()

    def _snapshot(
        self, info: TableInfo, version: int | None = None, timestamp: Any = None
    ) -> Snapshot:
        dt = self.lh._delta(info, version, timestamp)
        key = (info.location, int(dt.version()))
        snap = self._snapshots.get(key)
        if snap is None:
            snap = load_snapshot(dt)
            self._snapshots[key] = snap
            while len(self._snapshots) > 64:
                self._snapshots.popitem(last=False)
        return snap

    def _resolve(self, node: exp.Table) -> TableInfo:
        ident = TableIdent.from_parts(node.catalog or None, node.db or None, node.name)
        return self.lh.catalog.get_table(ident)

    def _bind(
        self, tree: exp.Expr, refs: list[exp.Table]
    ) -> list[tuple[TableIdent, PrunedScan | LanceScan]]:
        """Resolve every table reference to a pruned scan of its snapshot."""
        snaps: list[tuple[exp.Table, TableInfo, Snapshot | LanceScan]] = []
        # A table named twice (self-joins, subqueries: TPC-H Q2, Q21) is looked up and its
        # snapshot loaded once, so every reference also reads the same version.
        infos: dict[tuple[str, str, str], TableInfo] = {}
        seen: dict[tuple[str, int | None, Any], Snapshot | LanceScan] = {}
        for node in refs:
            key = (node.catalog, node.db, node.name)
            info = infos.get(key)
            if info is None:
                info = infos[key] = self._resolve(node)
            version, timestamp = self._time_travel(node)
            skey = (info.location, version, timestamp)
            snap = seen.get(skey)
            if snap is None:
                snap = seen[skey] = (
                    self._lance_scan(info, version, timestamp)
                    if info.format == "lance"
                    else self._snapshot(info, version, timestamp)
                )
            snaps.append((node, info, snap))
        out: list[tuple[TableIdent, PrunedScan | LanceScan]] = []
        for node, info, snap in snaps:
            if isinstance(snap, LanceScan):
                out.append((info.ident, snap))
                continue
            preds = self._predicates(node, snap, snaps)
            out.append((info.ident, prune(snap, preds)))
        return out

    def _lance_scan(self, info: TableInfo, version: int | None, timestamp: Any) -> LanceScan:
        ds = self.lh._store(info).open(version=version, timestamp=timestamp)
        return LanceScan(info.location, int(ds.version), ds)

    def _install(
        self,
        cur: duckdb.DuckDBPyConnection,
        tree: exp.Expr,
        bound: list[tuple[TableIdent, PrunedScan | LanceScan]],
    ) -> str:
        """The statement's DuckDB SQL with each table reference replaced by a subquery over its
        pruned files (its Arrow sources registered on ``cur``).

        Inlined rather than created as temporary views: DuckDB binds a view when it is created
        (reading the Parquet footers an extra time), which cost 2-5 ms per table per query.
        """
        ctx = make_context(self.lh.warehouse.options, self.lh.warehouse.is_remote)
        # A per-statement token: user SQL cannot spell it, so only our placeholders match.
        token = f"__mx_scan_{uuid.uuid4().hex}_"
        bodies: dict[str, str] = {}
        for i, (node, (_, scan)) in enumerate(zip(_table_refs(tree), bound, strict=True)):
            placeholder = f"{token}{i}"
            if isinstance(scan, LanceScan):
                bodies[placeholder] = f'SELECT * FROM "{ctx.register(scan.dataset)}"'
                self._stand_in(node, placeholder)
                continue
            ctx.filesystem = (
                self.lh.warehouse.options.to_pyarrow()
                if is_remote(scan.snapshot.location)
                else None
            )
            bodies[placeholder] = render_scan(scan, ctx)
            self._stand_in(node, placeholder)
        for name, obj in ctx.registrations.items():
            cur.register(name, obj)
        # No defensive copy of the tree (2-3 ms for a TPC-H query): it was made for this run.
        try:
            # A construct DuckDB has no equivalent for is an error, not a warning and a query
            # that silently means something else.
            sql = tree.sql(dialect="duckdb", copy=False, unsupported_level=ErrorLevel.RAISE)
        except UnsupportedError as e:
            raise SQLError(
                f"not supported when translating to the engine's SQL: {e}",
                sql=_user_statement(tree),
            ) from e
        if not bodies:
            return sql
        pattern = re.compile('"(' + re.escape(token) + r'\d+)"')
        return pattern.sub(lambda m: "(" + bodies[m.group(1)] + ")", sql)

    @staticmethod
    def _stand_in(node: exp.Table, placeholder: str) -> None:
        alias = node.args.get("alias")
        if alias is None:
            alias = exp.TableAlias(this=exp.to_identifier(node.name))
        stand_in = exp.Table(this=exp.to_identifier(placeholder, quoted=True), alias=alias)
        # What applies to the rows read (PIVOT, TABLESAMPLE, …) stays with the stand-in; what
        # selects the rows (time travel, …) was applied in ``_bind`` or refused there.
        for key in _TABLE_CARRIED:
            if node.args.get(key):
                stand_in.set(key, node.args[key])
        stand_in.meta["mx_original"] = node
        node.replace(stand_in)

    def _time_travel(self, node: exp.Table) -> tuple[int | None, Any]:
        _check_table_modifiers(node)
        when = node.args.get("when")
        if when is not None:
            return self._historical(node, when)
        v = node.args.get("version")
        if v is None:
            return None, None
        value = self._constant(v.expression)
        kind = str(v.this).upper()
        if kind == "VERSION":
            try:
                return int(value), None
            except (TypeError, ValueError) as e:
                raise SQLError(f"VERSION AS OF needs an integer, got {value!r}") from e
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value)
            except ValueError as e:
                raise SQLError(f"TIMESTAMP AS OF needs a timestamp, got {value!r}") from e
        if isinstance(value, datetime) and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return None, value

    def _historical(self, node: exp.Table, when: exp.Expr) -> tuple[int | None, Any]:
        """Snowflake's ``AT (VERSION | TIMESTAMP | OFFSET => …)`` and ``BEFORE (VERSION => n)``
        as Delta/Lance time travel; the rest (``STATEMENT``, ``BEFORE`` a time) has no
        equivalent and is refused, never ignored."""
        where = str(when.this).upper()
        kind = str(when.args.get("kind") or "").upper()
        text = f"{where} ({kind} => {when.expression.sql(dialect='snowflake')})"
        if node.args.get("version") is not None:
            raise SQLError(f"{text} and AS OF on one table reference", sql=node.sql())
        supported = (where == "AT" and kind in ("VERSION", "TIMESTAMP", "OFFSET")) or (
            where == "BEFORE" and kind == "VERSION"
        )
        if not supported:
            raise NotSupported(
                f"time travel {text} is not supported",
                hint="use AT (VERSION => n), AT (TIMESTAMP => '…'), AT (OFFSET => -seconds) or "
                "BEFORE (VERSION => n); DESCRIBE HISTORY lists the versions",
            )
        value = self._constant(when.expression)
        if kind == "VERSION":
            if not isinstance(value, int) or isinstance(value, bool):
                raise SQLError(f"{text} needs an integer version", sql=node.sql())
            if where == "BEFORE" and value <= 0:
                raise SQLError(f"{text}: there is no version before {value}", sql=node.sql())
            return (value - 1 if where == "BEFORE" else value), None
        if kind == "OFFSET":
            if not isinstance(value, int | float | Decimal) or isinstance(value, bool):
                raise SQLError(f"{text} needs a number of seconds", sql=node.sql())
            return None, datetime.now(UTC) + timedelta(seconds=float(value))
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value)
            except ValueError as e:
                raise SQLError(f"{text} needs a timestamp", sql=node.sql()) from e
        if isinstance(value, date) and not isinstance(value, datetime):
            value = datetime(value.year, value.month, value.day)
        if not isinstance(value, datetime):
            raise SQLError(f"{text} needs a timestamp", sql=node.sql())
        return None, value if value.tzinfo else value.replace(tzinfo=UTC)

    def _constant(self, node: exp.Expr) -> Any:
        if node.find(exp.Column, exp.Query):
            raise SQLError(f"{node.sql()} must be a constant")
        value = _literal_value(node)
        if value is not _NOT_LITERAL:
            return value
        # Callers check their statements first; checked again here because this connection
        # runs the expression as it stands.
        select = exp.select(node.copy())
        check_query(select)
        try:
            # Through Arrow: DuckDB's own Python conversion of TIMESTAMPTZ needs pytz.
            table = self._consts.cursor().sql(select.sql(dialect="duckdb")).to_arrow_table()
        except duckdb.Error as e:
            raise _engine_error(e, node.sql()) from e
        return table.column(0)[0].as_py() if table.num_rows else None

    def _predicates(
        self,
        node: exp.Table,
        snap: Snapshot,
        all_snaps: list[tuple[exp.Table, TableInfo, Snapshot | LanceScan]],
    ) -> list[Predicate]:
        sel = node.parent
        while sel is not None and not isinstance(sel, exp.Select):
            sel = sel.parent
        if sel is None or not sel.args.get("where"):
            return []
        siblings = [s for n, _, s in all_snaps if n is not node and _select_of(n) is sel]
        sources = list(sel.find_all(exp.From, exp.Join))
        only_tables = all(
            isinstance(s.this, exp.Table) for s in sources if s.find_ancestor(exp.Select) is sel
        )
        mine = {f.name.lower() for f in snap.schema}
        theirs = {f.name.lower() for s in siblings for f in s.schema}
        qualifier = node.alias_or_name.lower()

        def owns(col: exp.Column) -> str | None:
            name = col.name.lower()
            if name not in mine:
                return None
            if col.table:
                return name if col.table.lower() == qualifier else None
            return name if only_tables and name not in theirs else None

        names = {f.name.lower(): f.name for f in snap.schema}
        preds: list[Predicate] = []
        for conj in _conjuncts(sel.args["where"].this):
            p = self._predicate(conj, owns)
            if p is not None:
                preds.append(Predicate(names[p.column], p.op, p.value))
        return preds

    def _predicate(self, e: exp.Expr, owns: Any) -> Predicate | None:
        try:
            if type(e) in _CMP:
                op = _CMP[type(e)]
                left, right = e.this, e.expression
                if isinstance(right, exp.Column) and not isinstance(left, exp.Column):
                    left, right, op = right, left, _FLIP[op]
                if isinstance(left, exp.Column) and (col := owns(left)) and _is_const(right):
                    return Predicate(col, op, self._constant(right))
            elif isinstance(e, exp.In) and isinstance(e.this, exp.Column):
                col = owns(e.this)
                values = e.expressions
                if col and values and all(_is_const(v) for v in values):
                    return Predicate(col, "in", [self._constant(v) for v in values])
            elif isinstance(e, exp.Between) and isinstance(e.this, exp.Column):
                col = owns(e.this)
                lo, hi = e.args.get("low"), e.args.get("high")
                if col and lo is not None and _is_const(lo) and _is_const(hi):
                    # Two predicates collapse into one range test via the caller's AND.
                    return Predicate(col, ">=", self._constant(lo))
            elif isinstance(e, exp.Is) and isinstance(e.this, exp.Column):
                if isinstance(e.expression, exp.Null) and (col := owns(e.this)):
                    return Predicate(col, "isnull")
            elif isinstance(e, exp.Not) and isinstance(e.this, exp.Is):
                inner = e.this
                if isinstance(inner.this, exp.Column) and isinstance(inner.expression, exp.Null):
                    col = owns(inner.this)
                    return Predicate(col, "notnull") if col else None
        except MatrixOSError:
            return None  # not foldable here; DuckDB will evaluate it per row
        return None

    # -- EXPLAIN, OPTIMIZE, VACUUM, SHOW (parsed as commands by sqlglot) ---------------------
    def _do_command(self, stmt: exp.Command, dialect: str, engine: str = "local") -> Result:
        cmd = str(stmt.this).upper()
        rest = (
            stmt.expression.name
            if isinstance(stmt.expression, exp.Expr)
            else str(stmt.expression or "")
        )
        rest = rest.strip().rstrip(";")
        if cmd == "EXPLAIN":
            analyze = re.match(r"^ANALYZE\s", rest, flags=re.I) is not None
            inner = re.sub(r"^(ANALYZE|VERBOSE|EXTENDED|FORMATTED)\s+", "", rest, flags=re.I)
            trees = self.parse(inner, dialect)
            if len(trees) != 1 or not isinstance(trees[0], exp.Query):
                raise NotSupported("EXPLAIN supports one query")
            _check_translation(trees[0], dialect)
            return self.query(trees[0], explain=True, analyze=analyze, engine=engine)
        if cmd == "OPTIMIZE":
            m = re.match(r"^(\S+)(?:\s+ZORDER\s+BY\s*\(?([^)]*)\)?)?\s*$", rest, re.I)
            if not m:
                raise SQLError(
                    f"cannot parse OPTIMIZE {rest!r}", hint="OPTIMIZE t [ZORDER BY (a, b)]"
                )
            table = self.lh.table(_name(m.group(1), dialect))
            cols = [c.strip().strip('"`') for c in (m.group(2) or "").split(",") if c.strip()]
            metrics = table.optimize(cols or None)
            return _ok(
                "OPTIMIZE",
                files_added=int(metrics.get("numFilesAdded", 0)),
                files_removed=int(metrics.get("numFilesRemoved", 0)),
            )
        if cmd == "VACUUM":
            m = re.match(r"^(\S+)(?:\s+RETAIN\s+(\d+)\s+HOURS)?(\s+DRY\s+RUN)?\s*$", rest, re.I)
            if not m:
                raise SQLError(
                    f"cannot parse VACUUM {rest!r}", hint="VACUUM t [RETAIN n HOURS] [DRY RUN]"
                )
            table = self.lh.table(_name(m.group(1), dialect))
            hours = int(m.group(2)) if m.group(2) else None
            files = table.vacuum(hours, dry_run=bool(m.group(3)))
            return Result.from_table(
                pa.table({"path": pa.array(files, pa.string())}), statement="VACUUM"
            )
        if cmd == "SHOW":
            m = re.match(r"^(TABLES|SCHEMAS|DATABASES)(?:\s+(?:IN|FROM)\s+(\S+))?\s*$", rest, re.I)
            if m:
                return self._show(m.group(1).upper(), m.group(2))
        if cmd in ("CREATE", "DROP") and re.match(r"^VOLUME\s", rest, re.I):
            return self._volume_ddl(cmd, rest, dialect)
        what = cmd
        if cmd in ("CREATE", "ALTER", "DROP"):
            modifiers = {"OR", "REPLACE", "PERSISTENT", "TEMP", "TEMPORARY", "IF", "NOT", "EXISTS"}
            kind = next((w for w in rest.upper().split() if w not in modifiers), "")
            what = f"{cmd} {kind}".strip()
        raise AccessDenied(f"{what} statements are not allowed", sql=f"{cmd} {rest}")

    def _volume_ddl(self, cmd: str, rest: str, dialect: str) -> Result:
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
            self.lh.create_volume(
                _name(m.group(2), dialect), comment=comment, if_not_exists=bool(m.group(1))
            )
            return _ok("CREATE VOLUME")
        m = re.match(r"^VOLUME\s+(IF\s+EXISTS\s+)?(\S+)\s*$", rest, re.I)
        if not m:
            raise SQLError(
                f"cannot parse DROP {rest!r}", hint="DROP VOLUME [IF EXISTS] schema.name"
            )
        self.lh.drop_volume(_name(m.group(2), dialect), if_exists=bool(m.group(1)))
        return _ok("DROP VOLUME")

    def _do_show(self, stmt: exp.Show, dialect: str) -> Result:
        what = str(stmt.this).upper()
        # sqlglot puts ``FROM s`` in target, db (mysql) or from_ (duckdb) depending on dialect
        target = next(
            (t for k in ("target", "db", "from_") if isinstance(t := stmt.args.get(k), exp.Expr)),
            None,
        )
        return self._show(what, target.sql() if target is not None else None)

    def _show(self, what: str, within: str | None) -> Result:
        if what == "TABLES":
            names = self.lh.tables(within) if within else self.lh.tables()
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
                pa.table({"schema": pa.array(self.lh.schemas(within), pa.string())}),
                statement="SHOW",
            )
        raise NotSupported(f"SHOW {what} is not supported")

    # -- DDL --------------------------------------------------------------------------------
    def _do_create(self, stmt: exp.Create, dialect: str) -> Result:
        kind = str(stmt.args.get("kind") or "").upper()
        if kind in ("SCHEMA", "DATABASE"):
            target = stmt.this
            if isinstance(target, exp.Table):
                check_table_name(target)
            parts = [p.name for p in target.parts] if isinstance(target, exp.Table) else []
            name = ".".join(parts)
            comment = _property(stmt, exp.SchemaCommentProperty)
            self.lh.create_schema(
                name, comment=comment, if_not_exists=bool(stmt.args.get("exists"))
            )
            return _ok("CREATE SCHEMA")
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
        ident = _ident_of(target)
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
        if fmt not in ("delta", "parquet", "lance"):
            raise NotSupported(f"USING {fmt} is not supported; tables are Delta or Lance")
        exists = self.lh.catalog.find_table(ident) is not None
        if exists and stmt.args.get("exists"):
            return _ok("CREATE TABLE", skipped=True)
        data = None
        schema = None
        query = stmt.args.get("expression")
        if isinstance(query, exp.Query):
            data = self.query(query).to_arrow()
        elif coldefs:
            schema = self._schema_of(coldefs)
        else:
            raise SQLError("CREATE TABLE needs column definitions or AS SELECT")
        mode = "overwrite" if stmt.args.get("replace") else "error"
        table = self.lh.create_table(
            str(ident),
            data,
            schema=schema,
            partition_by=partition_by or None,
            format="lance" if fmt == "lance" else "delta",
            comment=comment,
            properties=properties,
            mode=mode,  # type: ignore[arg-type]
            # one rule everywhere: like create_table() and ingest, SQL creates the schema
            create_schema=True,
        )
        return _ok("CREATE TABLE", version=table.version)

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
            schema = self._consts.cursor().sql(text).to_arrow_table().schema
        except duckdb.Error as e:
            raise _engine_error(e, text) from e
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

    def _do_drop(self, stmt: exp.Drop, dialect: str) -> Result:
        kind = str(stmt.args.get("kind") or "").upper()
        targets = stmt.args.get("tables") or [stmt.this]
        if_exists = bool(stmt.args.get("exists"))
        for target in targets:
            if kind == "TABLE":
                self.lh.drop_table(str(_ident_of(target)), if_exists=if_exists)
            elif kind in ("SCHEMA", "DATABASE"):
                if isinstance(target, exp.Table):
                    check_table_name(target)
                name = ".".join(p.name for p in target.parts)
                self.lh.drop_schema(name, if_exists=if_exists)
            else:
                raise NotSupported(f"DROP {kind} is not supported")
        return _ok(f"DROP {kind}")

    def _do_describe(self, stmt: exp.Describe, dialect: str) -> Result:
        target = stmt.this
        if not isinstance(target, exp.Table):
            raise NotSupported("DESCRIBE supports tables")
        table = self.lh.table(str(_ident_of(target)))
        if str(stmt.args.get("style") or "").upper() == "HISTORY":
            rows = table.history()
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

    # -- DML --------------------------------------------------------------------------------
    def _do_insert(self, stmt: exp.Insert, dialect: str) -> Result:
        target = stmt.this
        columns: list[str] | None = None
        if isinstance(target, exp.Schema):
            columns = [c.name for c in target.expressions]
            target = target.this
        table = self.lh.table(str(_ident_of(target)))
        source = stmt.expression
        if not isinstance(source, exp.Query | exp.Values):
            raise NotSupported("INSERT supports VALUES and SELECT")
        if isinstance(source, exp.Values):
            source = exp.select("*").from_(source.copy().as_("__mx_values"))
        data = self.query(source).to_arrow()
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
        return _ok(f"INSERT 0 {data.num_rows}", num_affected_rows=data.num_rows)

    def _do_delete(self, stmt: exp.Delete, dialect: str) -> Result:
        table = self.lh.table(str(_ident_of(stmt.this)))
        where = stmt.args.get("where")
        pred = _delta_expr(where.this, stmt.this) if where else None
        res = table.delete(pred)
        n = int(res.metrics.get("num_deleted_rows", 0) or 0)
        return _ok(f"DELETE {n}", num_affected_rows=n, version=res.version)

    def _do_update(self, stmt: exp.Update, dialect: str) -> Result:
        table = self.lh.table(str(_ident_of(stmt.this)))
        sets: dict[str, str] = {}
        for e in stmt.expressions:
            if not isinstance(e, exp.EQ) or not isinstance(e.this, exp.Column):
                raise SQLError(f"cannot parse SET {e.sql()}")
            sets[e.this.name] = _delta_expr(e.expression, stmt.this)
        if stmt.args.get("from_"):
            raise NotSupported("UPDATE … FROM is not supported; use MERGE INTO")
        sets = _target_columns(table.schema, sets, table.name)
        where = stmt.args.get("where")
        res = table.update(sets, _delta_expr(where.this, stmt.this) if where else None)
        n = int(res.metrics.get("num_updated_rows", 0) or 0)
        return _ok(f"UPDATE {n}", num_affected_rows=n, version=res.version)

    def _do_merge(self, stmt: exp.Merge, dialect: str) -> Result:
        target = stmt.this
        table = self.lh.table(str(_ident_of(target)))
        using = stmt.args["using"]
        src_alias = using.alias_or_name
        inner = using.this if isinstance(using, exp.Subquery) else using.copy()
        if isinstance(inner, exp.Table):
            inner.set("alias", None)
            inner = exp.select("*").from_(inner)
        source = self.query(inner).to_arrow()
        keys, null_safe = _merge_keys(stmt.args["on"], target.alias_or_name, src_alias, source)
        inserts = any(
            isinstance(w.args["then"], exp.Insert) for w in stmt.args["whens"].expressions
        )
        check_merge_source(source, keys, inserts=inserts and not null_safe)
        if table.info.format == "lance":
            return self._merge_lance(stmt, table, source, target.alias_or_name, src_alias)
        aliases = {target.alias_or_name.lower(): "target", src_alias.lower(): "source"}
        schema = table.schema

        def conv(e: exp.Expr) -> str:
            return _delta_expr(e, None, aliases)

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

        res = table.store.merge_statement(build)
        self.lh.catalog.touch(table.info.ident)
        metrics = res.metrics
        n = sum(
            int(metrics.get(k, 0) or 0)
            for k in (
                "num_target_rows_inserted",
                "num_target_rows_updated",
                "num_target_rows_deleted",
            )
        )
        return _ok(f"MERGE {n}", num_affected_rows=n, version=res.version)

    def _merge_lance(
        self, stmt: exp.Merge, table: Any, source: pa.Table, target: str, alias: str
    ) -> Result:
        """MERGE into a Lance table: the upsert shapes Lance's merge_insert runs natively —
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
        for conj in _conjuncts(stmt.args["on"]):
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
        return _ok(f"MERGE {n}", num_affected_rows=n, version=res.version)


# -- helpers --------------------------------------------------------------------------------
class _CommandFallback(logging.Filter):
    """Drops sqlglot's warning that a statement is parsed as a ``Command``: that is how
    EXPLAIN, OPTIMIZE, VACUUM, DESCRIBE HISTORY and the volume DDL arrive, on purpose; a
    command the engine does not know is refused with an error of its own."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Falling back to parsing as a 'Command'" not in record.getMessage()


# Installed once: the filter drops only that one message, and a per-parse add/remove would
# race between threads parsing at once.
logging.getLogger("sqlglot").addFilter(_CommandFallback())


def _integer_division(tree: exp.Expr) -> exp.Expr:
    """``a / b`` as the statement's dialect means it.

    In PostgreSQL, Trino, Redshift and T-SQL an integer divided by an integer is an integer
    (truncated toward zero: ``7 / 2`` is 3, ``-7 / 2`` is -3) and dividing by zero is an error;
    DuckDB's ``/`` gives 3.5 and NULL. sqlglot marks such divisions ``typed``. DuckDB's ``//``
    does exactly what those dialects do for every operand type: integer division for
    integers, and for DECIMAL and floating-point operands the same value as ``/``.
    """
    for div in list(tree.find_all(exp.Div)):
        if not div.args.get("typed"):
            continue
        if isinstance(div.this, exp.Interval) or isinstance(div.expression, exp.Interval):
            continue  # interval / n: DuckDB's ``/`` already means what they mean
        div.replace(exp.IntDiv(this=div.this, expression=div.expression))
    return tree


def _check_translation(stmt: exp.Expr, dialect: str) -> None:
    """Check each query of ``stmt`` again as DuckDB will read it.

    sqlglot's generator rewrites constructs of other dialects into DuckDB's (Snowflake's
    ``TABLE(GENERATOR(…))`` became ``range(n)``), so what runs is not exactly what
    ``check_query`` saw. Re-parsing costs ~2 ms a TPC-H query; statements written in DuckDB's
    own dialect are generated as parsed and skip it.
    """
    if sqlglot.Dialect.get_or_raise(dialect) == sqlglot.Dialect.get_or_raise("duckdb"):
        return
    queries = [stmt] if isinstance(stmt, exp.Query) else list(stmt.find_all(exp.Query))
    for query in queries:
        if query is not stmt and query.find_ancestor(exp.Query) is not None:
            continue  # checked with the query around it
        check_query(query)  # first as written, so a refusal names what the user wrote
        try:
            text = query.sql(dialect="duckdb")
            translated = sqlglot.parse_one(text, read="duckdb")
        except SqlglotError:
            # Not generated or not re-parsed: the statement's own checks and DuckDB's errors
            # still apply; nothing new can be refused here.
            continue
        check_query(translated)


def _denied_statement(sql: str, dialect: str) -> str | None:
    """The leading keyword of a never-allowed statement in ``sql``, if any."""
    for tok in statement_starts(sql, dialect):
        if tok.text.upper() in _DENIED_STATEMENTS:
            return tok.text.upper()
    return None


def _select_of(node: exp.Expr) -> exp.Expr | None:
    p = node.parent
    while p is not None and not isinstance(p, exp.Select):
        p = p.parent
    return p


def _merge_keys(on: exp.Expr, target: str, alias: str, source: pa.Table) -> tuple[list[str], bool]:
    """The source columns MERGE's ON equates with target columns (``t.k = s.k``), and whether
    any of them is compared NULL-safely (``IS NOT DISTINCT FROM``, ``<=>``)."""
    names = {n.lower(): n for n in source.column_names}
    sides = {target.lower(): "t", alias.lower(): "s"}
    keys: list[str] = []
    null_safe = False
    for conj in _conjuncts(on):
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


def _conjuncts(e: exp.Expr) -> list[exp.Expr]:
    if isinstance(e, exp.And):
        return _conjuncts(e.this) + _conjuncts(e.expression)
    if isinstance(e, exp.Paren):
        return _conjuncts(e.this)
    if isinstance(e, exp.Between):
        lo = exp.GTE(this=e.this.copy(), expression=e.args["low"].copy())
        hi = exp.LTE(this=e.this.copy(), expression=e.args["high"].copy())
        return [lo, hi]
    return [e]


_NOT_LITERAL: Any = object()
_INTEGER = re.compile(r"[0-9]+")
_DECIMAL = re.compile(r"[0-9]+\.[0-9]*|\.[0-9]+")
_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def _literal_value(node: exp.Expr) -> Any:
    """The value DuckDB would give a plain literal (``42``, ``0.05``, ``'x'``,
    ``CAST('1998-09-02' AS DATE)``), or ``_NOT_LITERAL``: a round trip to DuckDB per constant
    cost about 1 ms, and TPC-H's predicates hold several."""
    if isinstance(node, exp.Literal):
        text = node.this
        if node.is_string:
            return text
        if _INTEGER.fullmatch(text):
            return int(text)
        if _DECIMAL.fullmatch(text):
            return Decimal(text)
    elif (
        isinstance(node, exp.Cast)
        and isinstance(node.this, exp.Literal)
        and node.this.is_string
        and node.to.is_type(exp.DataType.Type.DATE)
        and _ISO_DATE.fullmatch(node.this.this)
    ):
        try:
            return date.fromisoformat(node.this.this)
        except ValueError:
            return _NOT_LITERAL
    return _NOT_LITERAL


def _is_const(e: exp.Expr | None) -> bool:
    return e is not None and e.find(exp.Column, exp.Query, exp.Placeholder) is None


# Table-reference modifiers ``_stand_in`` keeps: they apply to the rows read.
_TABLE_CARRIED = ("pivots", "sample", "laterals", "joins")
# Modifiers that would select other rows than the table's current ones and have no meaning
# here: refused rather than dropped (hints such as T-SQL's NOLOCK change no result).
_TABLE_REFUSED = {
    "changes": "CHANGES",
    "partition": "PARTITION (…)",
    "format": "FILE_FORMAT",
    "pattern": "PATTERN",
    "rows_from": "ROWS FROM",
    "system_time": "FOR SYSTEM_TIME",
}


def _check_table_modifiers(node: exp.Table) -> None:
    for key, what in _TABLE_REFUSED.items():
        if node.args.get(key):
            raise NotSupported(
                f"{what} on table {node.name} is not supported", sql=node.sql(dialect="duckdb")
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


def _ident_of(node: exp.Expr) -> TableIdent:
    if not isinstance(node, exp.Table) or not isinstance(node.this, exp.Identifier):
        raise SQLError(f"expected a table name, got {node.sql()}")
    check_table_name(node)
    return TableIdent.from_parts(node.catalog or None, node.db or None, node.name)


def _name(text: str, dialect: str) -> str:
    try:
        node = sqlglot.parse_one(text, read=dialect, into=exp.Table)
    except SqlglotError as e:
        raise SQLError(f"{text!r} is not a table name", sql=text) from e
    return str(_ident_of(node))


def _property(stmt: exp.Create, kind: type[exp.Expr]) -> str | None:
    props = stmt.args.get("properties")
    for p in props.expressions if props else []:
        if isinstance(p, kind):
            return str(p.this.name)
    return None


def _is_star(update: exp.Update) -> bool:
    return any(isinstance(e, exp.Star) for e in update.expressions)


def _assignments(then: exp.Expr, conv: Any) -> dict[str, str]:
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


def _delta_expr(e: exp.Expr, table: exp.Expr | None, aliases: dict[str, str] | None = None) -> str:
    """An expression in the SQL that delta-rs (DataFusion) evaluates for predicates and SETs."""
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


def _user_statement(tree: exp.Expr) -> str:
    """The statement as written, for error messages: ``_install``'s stand-ins put back."""
    for t in list(tree.find_all(exp.Table)):
        original = t.meta.get("mx_original")
        if original is not None:
            t.replace(original)
    return tree.sql(dialect="duckdb")


def _without_scan_excerpt(err: MatrixOSError) -> MatrixOSError:
    """Drop DuckDB's ``LINE n: …`` excerpt when it quotes an inlined scan (``_install``): it
    shows warehouse file paths and positions in the rewritten statement, not the user's."""
    cut = err.message.find("\n\nLINE ")
    if cut >= 0 and ("read_parquet(" in err.message[cut:] or "__mx_" in err.message[cut:]):
        err.message = err.message[:cut]
        err.args = (err.message,)
    return err


def _engine_error(e: Exception, sql: str) -> MatrixOSError:
    msg = str(e).strip()
    if isinstance(e, duckdb.PermissionException):
        return AccessDenied(f"not allowed: {msg}", sql=sql)
    if isinstance(e, duckdb.CatalogException | duckdb.BinderException):
        return SQLError(msg, sql=sql, sqlstate="42703")
    if isinstance(e, duckdb.ConversionException | duckdb.InvalidInputException):
        return SQLError(msg, sql=sql, sqlstate="22000")
    if isinstance(e, duckdb.OutOfMemoryException):
        # DuckDB's own advice (SET memory_limit/threads) is a statement user SQL may not run.
        return SQLError(
            msg.split("\n\nPossible solutions:", 1)[0],
            sql=sql,
            sqlstate="53200",
            hint="the engine's memory limit is the duckdb_memory_limit setting "
            "(MATRIXOS_DUCKDB_MEMORY_LIMIT, or mx.connect(..., duckdb_memory_limit='8GB')): "
            "raise it, lower duckdb_threads, or filter and project before joining or sorting",
        )
    return SQLError(msg, sql=sql)
