"""``SQLEngine``: one session's SQL, from text to a ``Result``.

It composes the package's parts: the front end parses and checks (``frontend``), queries are
bound to table snapshots (``binding``) and run here (``local``) or on the compute pool
(``engine.dist``), DDL and DML map to catalog and table operations (``ddl``, ``dml``).
It takes the ``TableService`` (names, grants, snapshots, writes) and, per statement, the
``Principal`` asking: every table a statement reads is resolved through the service with
``SELECT`` checked, every write goes through its ``TableHandle`` with ``MODIFY`` checked.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
import warnings
from collections.abc import Callable, Hashable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa
from sqlglot import exp

from matrixos.catalog import TableIdent, TableInfo, lineage, lineage_runs
from matrixos.catalog.access import EMBEDDED_USER, Principal
from matrixos.config import parse_compute
from matrixos.engine._syntax import locate_engine_error
from matrixos.engine.context import EngineSession, QueryContext
from matrixos.engine.functions import (
    FunctionResults,
    SearchTarget,
    expand_functions,
    is_function_result,
)
from matrixos.engine.result import Result
from matrixos.engine.sandbox import check_query, locked_connection
from matrixos.engine.scan import PrunedScan
from matrixos.engine.sql import frontend
from matrixos.engine.sql.binding import Binder, Reprune, Trace
from matrixos.engine.sql.ddl import DDL
from matrixos.engine.sql.dml import DML
from matrixos.engine.sql.errors import engine_error, without_scan_excerpt
from matrixos.engine.sql.grants import GrantStatements, redact_literals, without_secrets
from matrixos.engine.sql.local import LocalRunner
from matrixos.engine.sql.matviews import MaterializedViews, refresh_command
from matrixos.engine.sql.plans import (
    MAX_TEXT,
    Literals,
    Params,
    PendingSlot,
    Plan,
    PlanCache,
    TableRead,
    compared_literals,
    lift,
    mark,
    parameterize,
    unmarked,
)
from matrixos.engine.sql.policies import PolicyDefinitions
from matrixos.engine.sql.row_security import RowSecurity
from matrixos.engine.sql.search_plans import SearchPlans, search_key
from matrixos.engine.sql.values import bulk_insert, redacted
from matrixos.engine.timeseries import rewrite as rewrite_time_series
from matrixos.errors import MatrixOSError, NotSupported, SQLError
from matrixos.storage.tablestore import store_class

if TYPE_CHECKING:
    from matrixos.catalog.pending import PendingRows
    from matrixos.catalog.service import TableService
    from matrixos.engine.scan import Snapshot
    from matrixos.engine.sql.binding import Bound


class SQLEngine:
    """Runs SQL for one session. Thread-safe: each statement gets its own DuckDB cursor.

    Example:
        >>> import tempfile, matrixos as mx
        >>> lh = mx.connect(tempfile.mkdtemp())
        >>> engine = SQLEngine(lh.service)
        >>> engine.execute("SELECT 7 / 2 AS q", "postgres").fetchall()
        [(3,)]
    """

    def __init__(self, service: TableService, *, num_cpus: Callable[[], int] | None = None) -> None:
        """``num_cpus``: the compute pool's CPUs (the distributed engine sizes queries by it;
        default this machine's)."""
        self.service = service
        self.settings = service.settings
        self._num_cpus = num_cpus or (lambda: os.cpu_count() or 1)
        # Constant folding and planning never spill: this connection may touch no file.
        self._planning = locked_connection([], spill=False)
        self._binder = Binder(service, self._planning.cursor)
        self._plans = PlanCache()  # plans of repeated queries (engine.sql.plans)
        self._binder.volatile = self._plans.volatile
        self._searches = SearchPlans()  # plans of repeated searches (engine.sql.search_plans)
        self._local = LocalRunner(service.warehouse, service.settings)
        self._ddl = ddl = DDL(service, self._as_query, self._planning.cursor)
        self._dml = dml = DML(service, self._as_query)
        self._grants = grants = GrantStatements(service)
        self.views = MaterializedViews(
            service,
            self._as_query,
            lambda info, version: self._binder.snapshot(info, version, None),
            self._binder.constant,
            scheduled=self._maintenance,
        )
        # Called when a statement set up background work (a view with a refresh interval):
        # the session starts its maintenance tasks (matrixos.iot). Retention deletes data, so
        # an embedded session enforces it only once asked (lh.start_maintenance(), or serve).
        self.on_maintenance: Callable[[], None] | None = None
        self._security = RowSecurity(service)
        self.policies = PolicyDefinitions(service)  # row filters and column masks
        # Handlers by the statement's node type (exactly: no subclass stands for its base).
        self._handlers: dict[type[exp.Expr], Callable[[Any, str, Principal], Result]] = {
            exp.Create: self._create,
            exp.Drop: self._drop,
            exp.Describe: ddl.describe,
            exp.Show: ddl.show_statement,
            exp.Insert: dml.insert,
            exp.Delete: dml.delete,
            exp.Update: dml.update,
            exp.Merge: dml.merge,
            exp.Grant: grants.statement,
            exp.Revoke: grants.statement,
            exp.Refresh: self.views.refresh_statement,
            exp.Alter: self._alter,
        }

    @property
    def _is_ray(self) -> bool:
        return parse_compute(self.settings.compute).kind == "ray"

    def close(self) -> None:
        """Drop the query connection and the cached snapshots."""
        self._local.close()
        self._binder.clear()
        self._plans.clear()
        self._searches.clear()

    def cursor(self, locations: Sequence[str] = ()) -> duckdb.DuckDBPyConnection:
        """A cursor on the locked connection queries run on (its allowed directories cover
        the warehouse and ``locations``)."""
        return self._local.cursor(locations)

    def planning_cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor on the connection that folds constants and plans: it may touch no file."""
        return self._planning.cursor()

    # -- entry point ------------------------------------------------------------------------
    def execute(
        self,
        sql: str,
        dialect: str,
        *,
        engine: str = "auto",
        principal: Principal = EMBEDDED_USER,
    ) -> Result:
        """Run ``sql`` as ``principal``; ``engine`` (``auto``/``local``/``ray``) picks where
        queries run (see ``engine.dist``)."""
        try:
            bulk = bulk_insert(sql, dialect)  # a long INSERT … VALUES of literals: no sqlglot
            if bulk is not None:
                return self._bulk_insert(bulk[0], bulk[1], dialect, principal)
            key = _plan_key(sql, dialect, engine, principal)
            lifted: tuple[Hashable, Literals] | None = None
            searched = search_key(sql, dialect, engine, principal)
            if searched is not None:  # a search statement: its key leaves out the vector
                key = searched[0]
                counter = self.service.cache.counter()
                found = self._searches.run(
                    key, searched[1], counter, self._local, lambda: sql, self._current
                )
                if found is not None:
                    return found
            elif key is not None:
                if (cached := self._planned(key, sql)) is not None:
                    return cached
                # The same statement with other literals (a new key each time): its plan.
                literals = lift(sql, dialect)
                if literals is not None:
                    lifted = (_lifted_key(literals, dialect, engine, principal), literals)
                    if (cached := self._planned(lifted[0], sql, literals)) is not None:
                        return cached
            statements = self.parse(sql, dialect)
            if not statements:
                raise SQLError("empty statement", sql=sql)
            result: Result | None = None
            for stmt in statements:
                # The statement's text as written (binding rewrites its tree), for lineage.
                text = sql if len(statements) == 1 else stmt.sql(dialect=dialect)
                kept = key if len(statements) == 1 else None
                lits = lifted if len(statements) == 1 else None
                result = self._run(stmt, dialect, engine, principal, text, kept, lits)
        except SQLError as e:
            located = locate_engine_error(e, sql, dialect)
            clean = without_secrets(located, sql)  # nor in the chained cause: from None
            raise clean from (e.__cause__ if clean is located else None)
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
        """The statements of ``sql`` (see ``frontend.parse``)."""
        try:
            return frontend.parse(sql, dialect)
        except SQLError:
            refresh = refresh_command(sql)  # a syntax error in DuckDB's dialect, among others
            if refresh is None:
                raise
            return [refresh]

    def _run(
        self,
        stmt: exp.Expr,
        dialect: str,
        engine: str,
        principal: Principal,
        sql: str,
        plan_key: Hashable | None = None,
        literals: tuple[Hashable, Literals] | None = None,
    ) -> Result:
        frontend.check_translation(stmt, dialect)
        if isinstance(stmt, exp.Query):
            return self.query(
                stmt, engine=engine, principal=principal, plan_key=plan_key, literals=literals
            )

        # A statement that writes records what it read (catalog.lineage); a query reads only.
        def text() -> str | None:  # only for a run that is recorded: INSERT … VALUES is big
            return redact_literals(sql, dialect)

        with lineage.run(self.service, "sql", principal=principal.name, statement=text):
            if isinstance(stmt, exp.Command):
                return self._command(stmt, dialect, engine, principal)
            handler = self._handlers.get(type(stmt))
            if handler is None:
                raise frontend.refused(stmt, dialect)
            return handler(stmt, dialect, principal)

    def _bulk_insert(
        self, head: exp.Insert, rows: str, dialect: str, principal: Principal
    ) -> Result:
        """``INSERT … VALUES`` whose rows ``values.bulk_insert`` checked to be literals only:
        DuckDB reads them as written, on the connection that may touch no file."""

        def data() -> pa.Table:
            cur = self._planning.cursor()
            try:
                # ``execute``, not ``sql``: the relation API scans the text for parameter
                # markers in Python (~2 s for 20,000 rows); the copy it warns of is cheap.
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", "Arrow output on a DB-API", UserWarning)
                    return cur.execute(f"SELECT * FROM (VALUES {rows})").to_arrow_table()
            except duckdb.Error as e:
                raise engine_error(e, head.sql(dialect=dialect)) from e
            finally:
                cur.close()

        def text() -> str:
            return redacted(head, rows, dialect)

        with lineage.run(self.service, "sql", principal=principal.name, statement=text):
            return self._dml.insert_rows(head, principal, data)

    def _alter(self, stmt: exp.Alter, dialect: str, principal: Principal) -> Result:
        """``ALTER TABLE … DROP ROW FILTER`` (sqlglot parses it), ``ALTER TABLE … SET
        TBLPROPERTIES (…)``; any other ALTER is refused."""
        result = self.policies.alter(stmt, dialect, principal)
        if result is None:
            result = self._ddl.alter(stmt, dialect, principal)
        if result is None:
            raise frontend.refused(stmt, dialect)
        return result

    def _create(self, stmt: exp.Create, dialect: str, principal: Principal) -> Result:
        result = self.views.create_statement(stmt, principal)
        return self._ddl.create(stmt, dialect, principal) if result is None else result

    def _drop(self, stmt: exp.Drop, dialect: str, principal: Principal) -> Result:
        result = self.views.drop(stmt, principal)
        return self._ddl.drop(stmt, dialect, principal) if result is None else result

    def _maintenance(self) -> None:
        if self.on_maintenance is not None:
            self.on_maintenance()

    def _as_query(self, tree: exp.Expr, principal: Principal) -> Result:
        return self.query(tree, principal=principal)

    def _command(
        self, stmt: exp.Command, dialect: str, engine: str, principal: Principal
    ) -> Result:
        """EXPLAIN, OPTIMIZE, VACUUM, SHOW and the volume DDL (parsed as commands)."""
        cmd, rest = frontend.command_parts(stmt)
        if cmd == "EXPLAIN":
            analyze, inner = frontend.explain_target(rest)
            trees = self.parse(inner, dialect)
            if len(trees) != 1 or not isinstance(trees[0], exp.Query):
                raise NotSupported("EXPLAIN supports one query")
            frontend.check_translation(trees[0], dialect)
            return self.query(
                trees[0], explain=True, analyze=analyze, engine=engine, principal=principal
            )
        if cmd in ("OPTIMIZE", "VACUUM"):
            return self._dml.maintain(cmd, rest, dialect, principal)
        result = self.views.command(cmd, rest, dialect, principal)
        if result is None:
            result = self._grants.command(cmd, rest, dialect, principal)
        if result is None:
            result = self.policies.command(cmd, rest, dialect, principal)
        if result is None:
            result = self._ddl.command(cmd, rest, dialect, principal)
        if result is None:
            raise frontend.refused_command(cmd, rest)
        return result

    # -- queries ----------------------------------------------------------------------------
    def query(
        self,
        tree: exp.Expr,
        *,
        explain: bool = False,
        analyze: bool = False,
        engine: str = "local",
        principal: Principal = EMBEDDED_USER,
        plan_key: Hashable | None = None,
        literals: tuple[Hashable, Literals] | None = None,
    ) -> Result:
        """Run (or with ``explain``, explain) one query tree as ``principal``, here or on the
        compute pool. With ``plan_key``, a plan that can be used again is kept under it
        (``engine.sql.plans``); with ``literals`` (a key and the text's literals, ``lift``)
        also one that takes other values of the literals compared with columns."""
        # Planning reads the catalog's change counter once (a query writes nothing).
        with self.service.cache.pinned():
            return self._query(tree, explain, analyze, engine, principal, plan_key, literals)

    def _query(
        self,
        tree: exp.Expr,
        explain: bool,
        analyze: bool,
        engine: str,
        principal: Principal,
        plan_key: Hashable | None,
        literals: tuple[Hashable, Literals] | None = None,
    ) -> Result:
        tree = tree.copy() if explain else tree
        counter = None
        marks: dict[int, tuple[exp.Literal, str]] = {}
        if plan_key is not None and not explain:
            counter = self.service.cache.counter()  # read before anything it guards
            self._plans.begin()
            if literals is not None:  # found on the tree as parsed (policies add literals)
                marks = compared_literals(tree, literals[1])
        # Checked before anything in it is evaluated: the platform functions' arguments
        # (``k => current_setting(…)``) are folded on a DuckDB connection by expand_functions.
        check_query(tree)
        host = _Functions(self, principal)
        # newest buckets of real-time views from their source
        realtime = self.views.expand_realtime(tree, principal)
        series, calls = _platform_calls(tree)  # one walk instead of three on plain queries
        if series:  # time_bucket_gapfill, first/last, rate… (plain SQL)
            tree = rewrite_time_series(tree, host)
        functions = expand_functions(host, tree) if calls else FunctionResults()
        # Row filters and column masks: every reference they apply to becomes their subquery.
        self._security.apply(tree, principal, functions.explain)
        refs = [r for r in check_query(tree) if not is_function_result(r)]
        trace = Trace() if marks and not (series or calls or realtime) else None
        bound = self._binder.bind(refs, principal, trace)
        tag = _mark_lifted(marks, trace) if trace is not None else None
        notes: list[str] = []
        if engine != "local" and (engine != "auto" or self._is_ray):  # route checks the name
            # Imported when first routed: the distributed engine (~0.1 s of imports) is not
            # on the path of a session whose compute pool is this process.
            from matrixos.engine.dist import route

            query = self.query_context(tree, bound, functions, principal)
            routed = route(query, engine=engine, explain=explain, analyze=analyze)
            if routed.result is not None:
                return routed.result
            notes = routed.notes
        keep = None
        if counter is not None and plan_key is not None and not realtime:
            reads = _reads(self.service, refs, bound)
            if reads is not None:

                def keep(sql: str, slots: dict[int, PendingSlot], files: dict[str, Any]) -> None:
                    if self._plans.is_volatile():
                        return
                    if any(
                        isinstance(s, PrunedScan) and s.pending is not None and i not in slots
                        for i, (_, s) in enumerate(bound)
                    ):
                        return  # rows of a write-ahead log the plan cannot find again
                    kept = tuple(
                        dataclasses.replace(r, pending=slots.get(i)) for i, r in enumerate(reads)
                    )
                    if functions.tables:  # a search's rows (and the tables joined with them)
                        sources = tuple(files.items())
                        self._searches.keep(plan_key, counter, sql, tree, functions, kept, sources)
                        return
                    locations = tuple(r.location for r in kept)
                    params = None
                    if tag is not None and literals is not None and trace is not None:
                        sql, params = parameterize(sql, tag, literals[1], marks)
                    plan = Plan(sql, counter, kept, locations, tuple(notes), tuple(files.items()))
                    self._plans.put(plan_key, plan)  # the text again: the fewest checks
                    if params is not None and literals is not None and trace is not None:
                        self._keep_lifted(literals[0], plan, params, trace, bound)

        try:
            result = self._local.run(
                tree, bound, functions, explain=explain, notes=notes, keep=keep
            )
        except SQLError as e:
            if tag is not None and e.sql:
                e.sql = unmarked(e.sql, tag)  # the statement as the user wrote it
            raise
        result.stats["engine"] = "local"
        return result

    def _keep_lifted(
        self, key: Hashable, plan: Plan, params: Params, trace: Trace, bound: Bound
    ) -> None:
        """Keep ``plan`` for other values of its lifted literals, under ``key`` and, when
        they pruned files, under the files it reads too (``_lifted_plan`` finds it again)."""
        prunes, files = [], []
        for i, traced in sorted(trace.predicates.items()):
            scan = bound[i][1]
            if isinstance(scan, PrunedScan) and any(s is not None for _, s in traced):
                prunes.append(Reprune(scan.snapshot, tuple(traced)))
                files.append(tuple(f.path for f in scan.files))
        params = dataclasses.replace(params, prunes=tuple(prunes), files=tuple(files))
        plan = dataclasses.replace(plan, params=params)
        self._plans.put(key, plan)
        if prunes:
            self._plans.put((key, params.files), plan)

    def _lifted_plan(self, key: Hashable, literals: Literals) -> tuple[Hashable, Plan, str] | None:
        """The plan kept for ``literals``' statement (``_keep_lifted``), the key it is kept
        under and its SQL for them: the one that reads the files these values prune to (on
        its own snapshots: the caller checks they are still the latest); None when there is
        none."""
        plan = self._plans.get(key)
        if plan is None or plan.params is None:
            return None
        if plan.params.prunes:
            files = tuple(r.files(literals.texts) for r in plan.params.prunes)
            if any(f is None for f in files):
                return None  # a value only DuckDB folds: planned again
            if files != plan.params.files:
                key = (key, files)
                plan = self._plans.get(key)
                if plan is None or plan.params is None:
                    return None
                mine = tuple(r.files(literals.texts) for r in plan.params.prunes)
                if mine != plan.params.files:
                    return None  # planned on other snapshots (another version meanwhile)
        text = plan.params.sql(literals)
        return None if text is None else (key, plan, text)

    def _planned(self, key: Hashable, sql: str, literals: Literals | None = None) -> Result | None:
        """The result of the plan kept under ``key``, run again, when nothing it depends on
        changed (the catalog's counter, each latest table's version, pending rows); else
        None (the plan is dropped: the caller plans the statement again). With ``literals``
        (the text's, ``key`` a ``_lifted_key``), the plan's SQL takes their values; None
        when it cannot (a literal it keeps as written differs)."""
        if literals is not None:
            found = self._lifted_plan(key, literals)
            if found is None:
                return None  # planned again: that plan is kept beside this one
            key, plan, text = found
        elif (kept := self._plans.get(key)) is not None:
            plan, text = kept, kept.sql
        else:
            return None
        sources: dict[str, Any] = {}  # rows still in a write-ahead log, by the plan's names
        fresh = plan.counter == self.service.cache.counter() and self._current(plan.reads, sources)
        if not fresh:
            self._plans.drop(key)
            return None
        sources.update(plan.sources)  # object-store files: the same at the same versions
        result = self._local.run_sql(text, plan.locations, lambda: sql, sources)
        result.stats.update(engine="local", plan="cached")
        return result

    def _current(self, reads: tuple[TableRead, ...], sources: dict[str, Any]) -> bool:
        """Whether each table a kept plan reads at its latest version is still at the version
        it read, with the same pending rows (their Arrow tables are added to ``sources`` under
        the plan's names); when so, the reads are recorded for lineage."""
        try:
            fresh = all(
                not r.latest
                or (
                    self._binder.snapshot(r.info).version == r.version
                    and _same_pending(
                        self.service.pending_rows(r.info.ident, r.version), r.pending, sources
                    )
                )
                for r in reads
            )
        except MatrixOSError:
            return False  # planning again raises what is wrong
        if fresh:
            for r in reads:
                lineage_runs.read(r.info.name, r.version)
        return fresh

    def query_context(
        self,
        tree: exp.Expr,
        bound: Bound,
        functions: FunctionResults,
        principal: Principal = EMBEDDED_USER,
    ) -> QueryContext:
        """The query as the distributed engine takes it, with the narrow engine interface."""
        warehouse = self.service.warehouse
        session = EngineSession(
            settings=self.settings,
            storage_options=warehouse.options,
            remote_warehouse=warehouse.is_remote,
            is_ray=parse_compute(self.settings.compute).kind == "ray",
            planning_cursor=self._planning.cursor,
            cursor=lambda: self._local.cursor([]),
            install=self._local.install,
            num_cpus=self._num_cpus,
            engine_error=engine_error,
            without_scan_excerpt=without_scan_excerpt,
        )
        return QueryContext(session, tree, bound, functions, principal)

    # -- what tables read through the engine ------------------------------------------------
    def read_table(
        self,
        info: TableInfo,
        version: int | None,
        timestamp: datetime | str | None,
        columns: Sequence[str] | None,
    ) -> pa.Table:
        """All rows of one Delta table (a projection of ``columns`` when given); the latest
        version's with the points a write-ahead log acknowledged (catalog/pending.py)."""
        snap = self._binder.snapshot(info, version, timestamp)
        lineage_runs.read(info.name, snap.version)
        return self._local.read(snap, columns, self._pending(info, snap, version, timestamp))

    def read_as(
        self,
        info: TableInfo,
        principal: Principal,
        version: int | None = None,
        timestamp: datetime | str | None = None,
        columns: Sequence[str] | None = None,
    ) -> pa.Table:
        """The rows of a table of any format as ``principal`` sees them: through the row
        filters and column masks that apply to it (the SDK's reads when a policy applies)."""
        ident = info.ident
        table = exp.table_(ident.name, db=ident.schema, catalog=ident.catalog, quoted=True)
        if version is not None:
            when: exp.Expr = exp.Literal.number(int(version))
            table.set("version", exp.Version(this="VERSION", kind="AS OF", expression=when))
        elif timestamp is not None:
            text = timestamp.isoformat() if isinstance(timestamp, datetime) else str(timestamp)
            when = exp.Literal.string(text)
            table.set("version", exp.Version(this="TIMESTAMP", kind="AS OF", expression=when))
        projection: list[exp.Expr] = [exp.Star()]
        if columns is not None:  # no columns: one constant per row (a count)
            projection = [exp.column(c, quoted=True) for c in columns] or [exp.Literal.number(1)]
        tree = exp.select(*projection).from_(table)
        return self.query(tree, principal=principal).to_arrow()

    def search_as(
        self,
        principal: Principal,
        info: TableInfo,
        query: Any,
        *,
        k: int,
        mode: str,
        filter: str | None = None,
        columns: Sequence[str] | None = None,
    ) -> pa.Table:
        """``lh.search`` run as the SQL search function, so that the row filters and column
        masks that apply to ``principal`` hold (the SDK's search when a policy applies)."""
        if isinstance(query, str):
            q: exp.Expr = exp.Literal.string(query)
        else:
            q = exp.Array(expressions=[exp.Literal.number(float(x)) for x in query])
        args: list[exp.Expr] = [exp.Literal.string(info.name), q]
        options: dict[str, Any] = {"k": k, "filter": filter}
        if columns:
            options["columns"] = ",".join(columns)
        for key, value in options.items():
            if value is not None:
                literal = (
                    exp.Literal.number(value) if key == "k" else exp.Literal.string(str(value))
                )
                args.append(exp.Kwarg(this=exp.var(key), expression=literal))
        fn = exp.Anonymous(this=f"{mode}_search", expressions=args)
        tree = exp.select(exp.Star()).from_(exp.Table(this=fn))
        return self.query(tree, principal=principal).to_arrow()

    def count_rows(self, info: TableInfo, principal: Principal = EMBEDDED_USER) -> int:
        """The number of rows of one Delta table's latest version (the caller has authorized
        the read, as for ``read_table``), points still in a write-ahead log included."""
        snap = self._binder.snapshot(info)
        return self._local.count(snap, self._pending(info, snap, None, None))

    def _pending(
        self, info: TableInfo, snap: Snapshot, version: int | None, timestamp: object
    ) -> PendingRows | None:
        if version is not None or timestamp is not None:
            return None  # time travel reads what was committed
        return self.service.pending_rows(info.ident, snap.version)

    # -- what the platform functions need (``functions.FunctionHost``) ----------------------
    def constant(self, node: exp.Expr) -> Any:
        """The value of a constant expression."""
        return self._binder.constant(node)

    def search_target(self, name: str, principal: Principal = EMBEDDED_USER) -> SearchTarget:
        """The searchable (Lance) table ``name`` names, which ``principal`` may read."""
        info = self._binder.table_info(TableIdent.parse(name), principal)
        if not store_class(info.format).searchable:
            raise NotSupported(
                f"table {info.name} is a {info.format} table; search needs a Lance table "
                "(create_table(..., format='lance'))"
            )
        options = self.service.warehouse.lance_options(info.location)
        policy = self.service.policy(principal, info)
        return SearchTarget(info.name, info.location, dict(info.properties), options, policy)


def _platform_calls(tree: exp.Expr) -> tuple[bool, bool]:
    """Whether ``tree`` may hold time-series functions (``timeseries.rewrite``'s nodes), and
    platform functions (a table function or an unknown call: ``expand_functions``'s)."""
    series = calls = False
    for node in tree.walk():
        if isinstance(node, exp.Anonymous):
            return True, True
        if isinstance(node, exp.DateBin | exp.First | exp.Last):
            series = True
        elif isinstance(node, exp.Table) and isinstance(node.this, exp.Func):
            calls = True
    return series, calls


def _plan_key(sql: str, dialect: str, engine: str, principal: Principal) -> Hashable | None:
    """The key a query's plan is kept under (None: not kept: too long, or ``engine="ray"``,
    which distributes whatever it can)."""
    if engine not in ("auto", "local") or len(sql) > MAX_TEXT:
        return None
    return (sql, dialect, engine, principal)


def _lifted_key(literals: Literals, dialect: str, engine: str, principal: Principal) -> Hashable:
    """The key a plan taking other values of a statement's literals is kept under."""
    return ("lifted", literals.template, dialect, engine, principal)


def _mark_lifted(marks: dict[int, tuple[exp.Literal, str]], trace: Trace) -> str | None:
    """Mark the literals of ``marks`` a kept plan may take other values of (``plans.mark``),
    and return the statement's tag; None when there is none. A literal that pruning used in
    a way it cannot follow for another value (``Trace.opaque``) stays as written."""
    for i in trace.opaque:
        marks.pop(i, None)
    if not marks:
        return None
    tag = uuid.uuid4().hex[:12]
    for i, (node, _) in marks.items():
        mark(node, tag, i)
    return tag


def _reads(
    service: TableService, refs: Sequence[exp.Table], bound: Bound
) -> tuple[TableRead, ...] | None:
    """What a bound query reads, as a plan records it (where it scans rows pending in a
    write-ahead log is added once the SQL is made); None when its plan cannot be kept (a
    table read as a dataset or view)."""
    reads = []
    for node, (ident, scan) in zip(refs, bound, strict=True):
        if not isinstance(scan, PrunedScan):
            return None
        info = service.cache.get_table(ident)
        if info.location != scan.snapshot.location:
            return None  # replaced meanwhile
        latest = node.args.get("version") is None and node.args.get("when") is None
        reads.append(TableRead(info, scan.snapshot.version, latest))
    return tuple(reads)


def _same_pending(
    now: PendingRows | None, slot: PendingSlot | None, sources: dict[str, Any]
) -> bool:
    """Whether a kept plan's reading of a table's pending rows (``slot``) still fits the rows
    pending ``now``: none then and now, or rows of the same shape (then added to ``sources``
    under the plan's name)."""
    if now is None or slot is None:
        return now is None and slot is None
    if now.shape != slot.shape:
        return False
    sources[slot.name] = now.table
    return True


class _Functions:
    """The engine as the platform functions see it for one statement's principal."""

    def __init__(self, engine: SQLEngine, principal: Principal) -> None:
        self._engine = engine
        self._principal = principal

    def constant(self, node: exp.Expr) -> Any:
        return self._engine.constant(node)

    def search_target(self, name: str) -> SearchTarget:
        return self._engine.search_target(name, self._principal)
