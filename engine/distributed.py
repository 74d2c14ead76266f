"""Distributed queries: one Delta table's scan split into fragments that run as Ray tasks.

A query whose FROM is a single Delta table, with an optional WHERE, GROUP BY with decomposable
aggregates (count, sum, min, max, avg, with FILTER), HAVING, ORDER BY and LIMIT, runs in two
stages:

1. **Fragments.** The files that survived pruning are split by bytes into about one fragment
   per CPU of the pool. Each fragment is a Ray task that opens its files itself (local paths,
   or s3:// with the storage options sent along; no file bytes go through Ray's object store)
   and runs DuckDB on a sandboxed connection (``engine.sandbox.locked_connection``) with the
   projection, the filter and the partial aggregate (``avg`` as ``sum`` and ``count``) pushed
   in, or the per-fragment top-k for ``ORDER BY … LIMIT``. Its Arrow result is the task's
   return value, so the driver owns it: a worker that dies does not take results with it, and
   a task whose worker died is retried (``max_retries``).
2. **Merge.** The driver registers the partial results with its own sandboxed DuckDB
   connection and runs the final aggregate over them (each merged aggregate cast to the type
   the local engine gives it), then HAVING, ORDER BY and LIMIT.

Results equal the local engine's, types and column names included (floating-point sums may
differ in the last bits, as they do between local runs with different thread counts).

Everything else (joins, window functions, DISTINCT, DISTINCT or other aggregates, subqueries,
CTEs, set operations) runs as stages (``engine.stages``); what those cannot do (search
functions, Lance tables, …) runs locally, and ``EXPLAIN`` says which engine ran and why.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
import uuid
from dataclasses import dataclass, field, replace
from functools import cache, lru_cache
from typing import TYPE_CHECKING, Any, Literal

import duckdb
import pyarrow as pa
from sqlglot import exp
from sqlglot.errors import SqlglotError

from matrixos._lru import LRU
from matrixos.engine.filecache import (
    ReadStats,
    localize,
    observe,
    plan_placement,
    query_report,
    readable_dirs,
)
from matrixos.engine.result import Result
from matrixos.engine.sandbox import locked_connection
from matrixos.engine.scan import (
    FileEntry,
    PrunedScan,
    make_context,
    render_scan,
)
from matrixos.errors import ConfigError, MatrixOSError
from matrixos.storage.warehouse import is_remote

if TYPE_CHECKING:
    from collections.abc import Mapping

    from matrixos.catalog import TableIdent
    from matrixos.engine.functions import FunctionResults
    from matrixos.engine.scan import LanceScan
    from matrixos.engine.sql import SQLEngine
    from matrixos.storage.options import StorageOptions

Engine = Literal["auto", "local", "ray"]

_AGGREGATES: dict[type[exp.Expr], str] = {
    exp.Count: "count",
    exp.Sum: "sum",
    exp.Min: "min",
    exp.Max: "max",
    exp.Avg: "avg",
}
_MAX_RETRIES = 3


@dataclass
class Routing:
    """What ``route`` decided: a result (it ran on Ray), or notes for a local run's EXPLAIN."""

    result: Result | None = None
    notes: list[str] = field(default_factory=list)


def route(
    engine_obj: SQLEngine,
    tree: exp.Expr,
    bound: list[tuple[TableIdent, PrunedScan | LanceScan]],
    functions: FunctionResults,
    *,
    engine: str,
    explain: bool,
    analyze: bool = False,
) -> Routing:
    """Run ``tree`` on the Ray pool when ``engine`` asks for it and the query allows it.

    ``engine="ray"`` distributes whatever can be; ``"auto"`` only when the pool is Ray and the
    scans hold at least ``Settings.distributed_min_bytes``. A query that cannot be distributed
    runs locally (the returned notes say why, for EXPLAIN). ``explain`` plans without running
    anything; with ``analyze`` (``EXPLAIN ANALYZE``) the query runs and the plan shows what
    each stage measured.
    """
    from matrixos.compute import parse_compute

    lh = engine_obj.lh
    if engine not in ("auto", "local", "ray"):
        raise ConfigError(f"engine={engine!r}: use 'auto', 'local' or 'ray'")
    is_ray = parse_compute(lh.settings.compute).kind == "ray"
    if engine == "local" or (engine == "auto" and not is_ray):
        return Routing()
    if not is_ray:
        raise ConfigError(
            "engine='ray' needs a Ray compute pool",
            hint="connect with compute='ray' (or 'ray://host:port'), or set MATRIXOS_COMPUTE",
        )
    scanned = sum(
        sum(f.size for f in scan.files) for _, scan in bound if isinstance(scan, PrunedScan)
    )
    if engine == "auto" and scanned < lh.settings.distributed_min_bytes:
        return Routing(
            notes=[
                f"Engine: local (engine=auto: {_size(scanned)} scanned, below "
                f"distributed_min_bytes={_size(lh.settings.distributed_min_bytes)})"
            ]
        )
    plan = _cached_plan(engine_obj, tree, bound, functions)
    if isinstance(plan, str):
        from matrixos.engine.stages import run_stages  # joins, subqueries, other aggregates

        with query_report() as report:
            staged = run_stages(
                engine_obj, tree, bound, functions, explain=explain, analyze=analyze
            )
        if isinstance(staged, str):
            return Routing(notes=[f"Engine: local (not distributed: {staged})"])
        table, lines = staged
        if explain:
            return Routing(result=Result.from_table(pa.table({"plan": lines}), statement="EXPLAIN"))
        assert table is not None
        result = Result.from_table(table, statement="SELECT")
        result.stats = report.as_dict()
        return Routing(result=result)
    plan = replace(plan, fragments=split_files(plan.scan.files, lh.compute.num_cpus()))
    if explain:
        lines = plan.explain(lh.settings.storage_zones)
        if analyze:
            t0 = time.perf_counter()
            rows = run_plan(engine_obj, plan).num_rows
            lines.append(f"Ran: {rows} rows, {(time.perf_counter() - t0) * 1000:.0f} ms")
        return Routing(result=Result.from_table(pa.table({"plan": lines}), statement="EXPLAIN"))
    with query_report() as report:
        result = Result.from_table(run_plan(engine_obj, plan), statement="SELECT")
    result.stats = report.as_dict()
    return Routing(result=result)


# -- planning -----------------------------------------------------------------------------------
_PLANS: LRU[tuple[Any, ...], Plan | str] = LRU(64)


def _cached_plan(
    engine_obj: SQLEngine,
    tree: exp.Expr,
    bound: list[tuple[TableIdent, PrunedScan | LanceScan]],
    functions: FunctionResults,
) -> Plan | str:
    """``plan_query``, remembered per statement and table version (planning a TPC-H query
    takes 10-20 ms of sqlglot and DuckDB binding; a repeated dashboard query need not)."""
    if functions.tables or functions.udfs or len(bound) != 1:
        return plan_query(engine_obj, tree, bound, functions)
    scan = bound[0][1]
    if not isinstance(scan, PrunedScan):
        return plan_query(engine_obj, tree, bound, functions)
    key = (
        str(bound[0][0]),
        tree.sql(dialect="duckdb"),
        scan.snapshot.location,
        scan.snapshot.version,
        tuple(f.path for f in scan.files),
    )
    hit = _PLANS.get(key)
    if hit is not None:
        return hit
    plan = plan_query(engine_obj, tree, bound, functions)
    _PLANS.put(key, plan)
    return plan


@dataclass
class Avg:
    """An ``avg()`` that the coordinator finalizes as DuckDB's own avg aggregate does."""

    column: str  # the output column; its merged sum and count are <column>_sum, <column>_count
    arg_type: str  # DuckDB type of the averaged values


@dataclass
class Plan:
    """A query split into per-fragment SQL and the coordinator's merge SQL."""

    ident: TableIdent
    scan: PrunedScan
    kind: Literal["aggregate", "top-k", "scan"]
    placeholder: str  # the quoted name in fragment_sql that each task replaces by its scan
    fragment_sql: str
    final_sql: str  # over "__mx_merged" (aggregates) or "__mx_partials"
    schema: pa.Schema  # what the local engine returns: names and types
    merge_sql: str | None = None  # aggregates: partials → "__mx_merged", one row per group
    avgs: list[Avg] = field(default_factory=list)
    fragments: list[list[FileEntry]] = field(default_factory=list)

    def explain(self, zones: Mapping[str, str] | None = None) -> list[str]:
        scan = self.scan
        total = sum(f.size for f in scan.files)
        pruning = f"{len(scan.files)} of {len(scan.snapshot.files)} files after pruning"
        if scan.predicates:
            from matrixos.engine.sql import _describe_pred

            pruning += " on " + ", ".join(_describe_pred(p) for p in scan.predicates)
        pushed = {
            "aggregate": "projection, filter and partial aggregate",
            "top-k": "projection, filter and per-fragment top-k",
            "scan": "projection and filter",
        }[self.kind]
        lines = [
            "Engine: ray (distributed, 2 stages)",
            f"Scan {self.ident} (delta, version {scan.snapshot.version}): {pruning}, "
            f"{_size(total)}",
            f"Stage 1: {len(self.fragments)} fragment task(s) on the Ray pool, one DuckDB each; "
            f"{pushed} pushed down; placement: next to the data (the node caching a "
            "fragment's files, else their storage zone, else spread)",
        ]
        places = plan_placement(self.fragments, zones=zones)
        for i, (files, place) in enumerate(zip(self.fragments, places, strict=True)):
            lines.append(
                f"  fragment {i}: {len(files)} file(s), {_size(sum(f.size for f in files))}; "
                f"placement: {place.describe()}"
            )
        lines.append("  per fragment: " + self.fragment_sql.replace(self.placeholder, "<files>"))
        lines.append("Stage 2: merge on the coordinator (DuckDB over the fragments' Arrow results)")
        if self.merge_sql:
            lines.append("  merge: " + self.merge_sql)
        if self.avgs:
            lines.append(f"  avg() finalized as DuckDB does: {len(self.avgs)}")
        lines.append("  final: " + self.final_sql)
        return lines


def plan_query(
    engine_obj: SQLEngine,
    tree: exp.Expr,
    bound: list[tuple[TableIdent, PrunedScan | LanceScan]],
    functions: FunctionResults,
) -> Plan | str:
    """The distributed plan of ``tree``, or why it must run locally."""
    if functions.tables or functions.udfs:
        return "search or embedding functions"
    if not isinstance(tree, exp.Select):
        return "not a single SELECT (a set operation)"
    if tree.args.get("with_"):
        return "common table expressions"
    if tree.args.get("joins"):
        return "joins"
    if any(n is not tree for n in tree.find_all(exp.Select, exp.Subquery, exp.SetOperation)):
        return "subqueries"
    if len(bound) != 1:
        return "queries over several tables (or none)"
    ident, scan = bound[0]
    if not isinstance(scan, PrunedScan):
        return "Lance tables"
    if not scan.files:
        return "no files left after pruning"
    from_ = tree.args.get("from_")
    table = from_.this if isinstance(from_, exp.From) else None
    if not isinstance(table, exp.Table) or not isinstance(table.this, exp.Identifier):
        return "FROM is not a single table"
    if table.args.get("sample") or tree.args.get("sample"):
        return "TABLESAMPLE"
    if tree.find(exp.Window):
        return "window functions"
    if tree.args.get("distinct"):
        return "SELECT DISTINCT"
    for key in ("qualify", "connect", "pivots", "laterals", "prewhere", "settings"):
        if tree.args.get(key):
            return f"{key.upper()} clauses"
    limit, offset = _int_arg(tree, "limit"), _int_arg(tree, "offset")
    if limit is _BAD or offset is _BAD:
        return "LIMIT/OFFSET that is not an integer constant"
    for star in tree.find_all(exp.Star):
        if any(star.args.get(k) for k in ("except_", "replace", "rename")):
            return "SELECT * with EXCLUDE/REPLACE/RENAME"
    work = tree.copy()
    reason = _check_functions(engine_obj, work)
    if reason:
        return reason
    alias = table.alias_or_name
    placeholder = f"__mx_frag_{uuid.uuid4().hex}"
    schema_names = [f.name for f in scan.snapshot.schema]
    ctx = _Ctx(engine_obj, scan, alias, placeholder, schema_names)
    aggs = _aggregates(work)
    if work.args.get("group") is None and not aggs and work.args.get("having"):
        return "HAVING without aggregates"
    try:
        if work.args.get("group") is not None or aggs:
            plan = _plan_aggregate(ctx, ident, work, aggs, limit, offset)
        else:
            plan = _plan_rows(ctx, ident, work, limit, offset)
        if isinstance(plan, str):
            return plan
        # Every stage bound and run over no rows: what does not split cleanly runs locally
        # rather than failing (or differing) at run time.
        problem = _dry_run(ctx, plan)
    except (SqlglotError, duckdb.Error, KeyError, ValueError) as e:
        return f"cannot split it ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    return problem or plan


def _dry_run(ctx: _Ctx, plan: Plan) -> str | None:
    try:
        partials = ctx.probe(plan.fragment_sql).to_arrow_table()
        cur = ctx.engine._consts.cursor()
        try:
            out = merge(cur, plan, partials)
        finally:
            cur.close()
    except duckdb.Error as e:
        return f"cannot split it ({str(e).splitlines()[0]})"
    if out.num_columns != len(plan.schema):
        return "cannot split it (its columns differ)"
    return None


class _Bad:
    pass


_BAD: Any = _Bad()


def _int_arg(tree: exp.Expr, key: str) -> int | None:
    node = tree.args.get(key)
    if node is None:
        return None
    value = node.expression if isinstance(node, exp.Limit | exp.Offset) else node
    if isinstance(value, exp.Literal) and not value.is_string and value.this.isdigit():
        return int(value.this)
    return _BAD  # type: ignore[no-any-return]


@cache
def _duckdb_aggregates() -> frozenset[str]:
    con = duckdb.connect(":memory:")
    try:
        rows = con.execute(
            "SELECT DISTINCT lower(function_name) FROM duckdb_functions() "
            "WHERE function_type = 'aggregate'"
        ).fetchall()
    finally:
        con.close()
    return frozenset(r[0] for r in rows)


def _check_functions(engine_obj: SQLEngine, tree: exp.Expr) -> str | None:
    from matrixos.engine.sandbox import function_name

    known = _duckdb_aggregates()
    for node in tree.find_all(exp.Func):
        if isinstance(node, exp.AggFunc):
            if type(node) not in _AGGREGATES:
                return f"aggregate {function_name(node)}() is not decomposed yet"
            if node.find(exp.Distinct):
                return "DISTINCT aggregates"
        elif isinstance(node, exp.Anonymous) and function_name(node) in known:
            return f"aggregate {function_name(node)}() is not decomposed yet"
    return None


def _aggregates(tree: exp.Expr) -> list[exp.Expr]:
    """Aggregate calls (with their FILTER) in the projections, HAVING and ORDER BY."""
    out: list[exp.Expr] = []
    scopes = [*tree.expressions]
    for key in ("having", "order"):
        if tree.args.get(key) is not None:
            scopes.append(tree.args[key])
    for scope in scopes:
        for node in scope.find_all(*_AGGREGATES):
            parent = node.parent
            out.append(parent if isinstance(parent, exp.Filter) else node)
    return out


@dataclass
class _Ctx:
    engine: SQLEngine
    scan: PrunedScan
    alias: str
    placeholder: str
    columns: list[str]

    def from_fragment(self) -> exp.Table:
        return exp.Table(
            this=exp.to_identifier(self.placeholder, quoted=True),
            alias=exp.TableAlias(this=exp.to_identifier(self.alias)),
        )

    def is_column(self, name: str) -> bool:
        return name.lower() in {c.lower() for c in self.columns}

    def probe(self, sql: str) -> duckdb.DuckDBPyRelation:
        """``sql`` over the table with no rows: types and names, no I/O."""
        empty = replace(self.scan, files=[])
        ctx = make_context(None, False)
        body = render_scan(empty, ctx)
        cur = self.engine._consts.cursor()
        return cur.sql(sql.replace(f'"{self.placeholder}"', f"({body})"))


def _normalized(node: exp.Expr, alias: str) -> str:
    """``node``'s SQL with the table's own qualifier dropped (``t.a`` and ``a`` compare equal)."""
    own = alias.lower()
    if not any(c.table.lower() == own for c in node.find_all(exp.Column) if c.table):
        return node.sql(dialect="duckdb")
    copy = node.copy()
    for col in copy.find_all(exp.Column):
        if col.table and col.table.lower() == own and not col.args.get("db"):
            col.set("table", None)
    return copy.sql(dialect="duckdb")


def _unalias(node: exp.Expr) -> exp.Expr:
    return node.this if isinstance(node, exp.Alias) else node


def _resolve_ref(
    ctx: _Ctx, node: exp.Expr, projections: list[exp.Expr], *, order: bool = False
) -> exp.Expr | str:
    """A GROUP BY/ORDER BY item as an expression: ordinals and select aliases resolved.

    As in DuckDB, a name in GROUP BY is the table's column before a select alias, and in
    ORDER BY a select alias before the column.
    """
    if isinstance(node, exp.Literal) and not node.is_string and node.this.isdigit():
        i = int(node.this)
        if not 1 <= i <= len(projections):
            return f"position {i} is not in the select list"
        return _unalias(projections[i - 1]).copy()
    if isinstance(node, exp.Column) and not node.table and (order or not ctx.is_column(node.name)):
        for p in projections:
            if isinstance(p, exp.Alias) and p.alias.lower() == node.name.lower():
                return p.this.copy()
    return node.copy()


def _expand_star(ctx: _Ctx, tree: exp.Select) -> None:
    out: list[exp.Expr] = []
    for p in tree.expressions:
        is_star = isinstance(p, exp.Star) or (
            isinstance(p, exp.Column) and isinstance(p.this, exp.Star)
        )
        if is_star:
            out.extend(exp.column(c, quoted=True) for c in ctx.columns)
        else:
            out.append(p)
    tree.set("expressions", out)


def _fragment_select(ctx: _Ctx, tree: exp.Select, projections: list[exp.Expr]) -> exp.Select:
    sel = exp.Select(expressions=projections)
    sel.set("from_", exp.From(this=ctx.from_fragment()))
    where = tree.args.get("where")
    if where is not None:
        sel.set("where", where.copy())
    return sel


def _plan_aggregate(
    ctx: _Ctx,
    ident: TableIdent,
    tree: exp.Select,
    aggs: list[exp.Expr],
    limit: int | None,
    offset: int | None,
) -> Plan | str:
    group = tree.args.get("group")
    projections = list(tree.expressions)
    if any(isinstance(p, exp.Star) for p in projections):
        return "SELECT * with aggregates"
    keys: list[exp.Expr] = []
    if group is not None:
        for k in ("rollup", "cube", "grouping_sets", "totals"):
            if group.args.get(k):
                return "ROLLUP, CUBE and GROUPING SETS"
        if group.args.get("all"):
            return "GROUP BY ALL"
        for item in group.expressions:
            key = _resolve_ref(ctx, item, projections)
            if isinstance(key, str):
                return key
            if key.find(*_AGGREGATES):
                return "aggregates in GROUP BY"
            keys.append(key)
    # Partial columns per fragment, and how the coordinator merges each aggregate.
    partial: list[exp.Expr] = [k.copy().as_(f"__mx_g{i}") for i, k in enumerate(keys)]
    probe: list[exp.Expr] = []
    merges: list[tuple[str, str, exp.Expr]] = []  # (aggregate kind, output column, call)
    seen: dict[str, str] = {}  # normalized aggregate → its output column
    for node in aggs:
        norm = _normalized(node, ctx.alias)
        if norm in seen:
            continue
        out = seen[norm] = f"__mx_a{len(seen)}"
        call = node.this if isinstance(node, exp.Filter) else node
        kind = _AGGREGATES[type(call)]
        if call.args.get("expressions") or call.args.get("count"):
            return f"{kind}() with several arguments"  # DuckDB's max(x, n) is a top-n list
        probe.append(node.copy().as_(out))
        if kind == "avg":
            total = _with_filter(node, exp.Sum(this=call.this.copy()))
            count = _with_filter(node, exp.Count(this=call.this.copy()))
            partial += [total.as_(f"{out}_sum"), count.as_(f"{out}_count")]
            probe += [
                total.copy().as_(f"{out}_sum"),
                exp.AnyValue(this=call.this.copy()).as_(f"{out}_arg"),
            ]
        else:
            partial.append(node.copy().as_(out))
        merges.append((kind, out, node))
    frag = _fragment_select(ctx, tree, partial)
    if keys:
        frag.set(
            "group",
            exp.Group(expressions=[exp.Literal.number(i + 1) for i in range(len(keys))]),
        )
    # Each merged aggregate gets the type the local engine gives it (HUGEINT sums come back
    # from Arrow as DECIMAL(38,0), for one).
    types: dict[str, str] = {}
    if probe:
        probe_sel = exp.Select(expressions=probe)
        probe_sel.set("from_", exp.From(this=ctx.from_fragment()))
        rel = ctx.probe(probe_sel.sql(dialect="duckdb"))
        types = {name: str(t) for name, t in zip(rel.columns, rel.types, strict=True)}
    # DuckDB computes avg(x) as sum(x) / count(x) in DOUBLE when its optimizer rewrites it (no
    # GROUP BY, or sum(x) computed too; never with FILTER), and otherwise with its avg
    # aggregate, which divides in long double: both are reproduced exactly.
    sums = {
        _normalized(n.this, ctx.alias)
        for _, _, n in merges
        if isinstance(n, exp.Sum) and not isinstance(n.parent, exp.Filter)
    }
    merged_cols = [f"__mx_g{i}" for i in range(len(keys))]
    avgs: list[Avg] = []
    for kind, out, node in merges:
        if kind != "avg":
            fn = "sum" if kind in ("count", "sum") else kind
            merged_cols.append(f"CAST({fn}({out}) AS {types[out]}) AS {out}")
            continue
        if types[out] != "DOUBLE":
            return f"avg() returning {types[out]}"
        total_sql = f"CAST(sum({out}_sum) AS {types[out + '_sum']})"
        count_sql = f"CAST(sum({out}_count) AS BIGINT)"
        rewritten = not isinstance(node, exp.Filter) and (
            not keys or _normalized(node.this, ctx.alias) in sums
        )
        if rewritten:
            merged_cols.append(f"CAST({total_sql} AS DOUBLE) / {count_sql} AS {out}")
        elif _avg_kind(types[out + "_arg"]) is None:
            return f"avg() over {types[out + '_arg']}"
        else:
            merged_cols += [f"{total_sql} AS {out}_sum", f"{count_sql} AS {out}_count"]
            avgs.append(Avg(out, types[out + "_arg"]))
    stage_a = "SELECT " + ", ".join(merged_cols) + " FROM __mx_partials"
    if keys:
        stage_a += " GROUP BY " + ", ".join(f"__mx_g{i}" for i in range(len(keys)))
    # The final SELECT: aggregates and group keys become columns of the merged rows.
    final = tree.copy()
    key_norms = {_normalized(k, ctx.alias): f"__mx_g{i}" for i, k in enumerate(keys)}
    aliases = {p.alias.lower() for p in projections if isinstance(p, exp.Alias)}

    key_types = tuple({type(k) for k in keys})

    def swap(node: exp.Expr) -> exp.Expr:
        if isinstance(node, exp.Filter | exp.AggFunc):
            target = node.this if isinstance(node, exp.Filter) else node
            if type(target) in _AGGREGATES:
                col = seen.get(_normalized(node, ctx.alias))
                if col is not None:
                    return exp.column(col)
        if key_types and isinstance(node, key_types) and not isinstance(node, _NOT_KEYS):
            col = key_norms.get(_normalized(node, ctx.alias))
            if col is not None:
                return exp.column(col)
        return node

    new_proj = []
    for p in final.expressions:
        if isinstance(p, exp.Alias):
            p.set("this", p.this.transform(swap, copy=False))
            new_proj.append(p)
        else:
            new_proj.append(p.transform(swap, copy=False))
    final.set("expressions", new_proj)
    for key in ("having", "order"):
        part = final.args.get(key)
        if part is not None:
            final.set(key, part.transform(swap, copy=False))
    having = final.args.get("having")
    final.set("where", exp.Where(this=having.this) if having is not None else None)
    final.set("having", None)
    final.set("group", None)
    final.set("from_", exp.From(this=exp.Table(this=exp.to_identifier("__mx_merged"))))
    del limit, offset  # kept in `final` as written
    for col in final.find_all(exp.Column):
        name = col.name
        if name.startswith(("__mx_g", "__mx_a")) and not col.table:
            continue
        if not col.table and name.lower() in aliases:
            continue  # ORDER BY / HAVING naming a select alias
        return f"column {col.sql()} outside an aggregate or GROUP BY key"
    plan = _finish_plan(ctx, ident, tree, "aggregate", frag, final)
    if isinstance(plan, str):
        return plan
    if any(kind == "avg" for kind, _, _ in merges) and _avg_aggregates(ctx, tree) != len(avgs):
        return "cannot tell how DuckDB finalizes this query's avg()"
    plan.merge_sql, plan.avgs = stage_a, avgs
    return plan


def _avg_aggregates(ctx: _Ctx, tree: exp.Select) -> int:
    """How many avg aggregates DuckDB's optimized plan of ``tree`` keeps (not rewritten)."""
    local = tree.copy()
    local.args["from_"].this.replace(ctx.from_fragment())
    rel = ctx.probe("EXPLAIN (FORMAT json) " + local.sql(dialect="duckdb"))
    text = "".join(str(row[-1]) for row in rel.fetchall())

    def walk(node: Any) -> int:
        if isinstance(node, list):
            return sum(walk(n) for n in node)
        if not isinstance(node, dict):
            return 0
        aggs = (node.get("extra_info") or {}).get("Aggregates") or []
        aggs = [aggs] if isinstance(aggs, str) else aggs
        own = sum(1 for a in aggs if str(a).startswith("avg("))
        return own + walk(node.get("children") or [])

    return walk(json.loads(text))


def _avg_kind(arg_type: str) -> Literal["double", "long double", "float"] | None:
    """How DuckDB's avg aggregate divides for values of ``arg_type`` (see its avg.cpp)."""
    t = arg_type.upper()
    m = re.fullmatch(r"DECIMAL\((\d+),\s*(\d+)\)", t)
    if m:
        return "double" if int(m.group(1)) <= 4 else "long double"
    if t in ("TINYINT", "SMALLINT"):
        return "double"
    if t in ("INTEGER", "BIGINT", "HUGEINT"):
        return "long double"
    if t in ("DOUBLE", "FLOAT"):
        return "float"
    return None


def finalize_avg(total: pa.Array, count: pa.Array, arg_type: str) -> pa.Array:
    """``avg`` from a group's exact sum and count, bit for bit as DuckDB's avg aggregate:
    ``(long double) sum / ((long double) count * 10^scale)`` for INTEGER, BIGINT, HUGEINT and
    DECIMAL wider than 4 digits, the same in double for narrower types, ``sum / count`` for
    DOUBLE. NULL where the count is 0."""
    import numpy as np

    kind = _avg_kind(arg_type)
    m = re.fullmatch(r"DECIMAL\((\d+),\s*(\d+)\)", arg_type.upper())
    scale = 10.0 ** int(m.group(2)) if m else 1.0
    n = count.to_numpy(zero_copy_only=False).astype(np.uint64)
    empty = n == 0
    if kind == "float":
        values = total.fill_null(0).to_numpy(zero_copy_only=False).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            out = values / n.astype(np.float64)
    else:
        exact = _as_longdouble(total)
        if kind == "long double":
            with np.errstate(divide="ignore", invalid="ignore"):
                out = (exact / (n.astype(np.longdouble) * np.longdouble(scale))).astype(np.float64)
        else:
            with np.errstate(divide="ignore", invalid="ignore"):
                out = exact.astype(np.int64).astype(np.float64) / (n.astype(np.float64) * scale)
    return pa.array(out, pa.float64(), mask=empty)


def _as_longdouble(values: pa.Array) -> Any:
    """An exact integer sum column (DECIMAL(38, s) by its unscaled value, or any integer type)
    as numpy long doubles, converted as DuckDB's ``Hugeint::Cast<long double>``."""
    import numpy as np

    values = values.fill_null(0)
    if len(values) == 0:
        return np.zeros(0, dtype=np.longdouble)
    if pa.types.is_decimal(values.type):
        words = np.frombuffer(values.buffers()[1], dtype=np.uint64)
        words = words[2 * values.offset : 2 * (values.offset + len(values))].reshape(-1, 2)
        upper = words[:, 1].view(np.int64).astype(np.longdouble)
        return upper * np.longdouble(2.0**64) + words[:, 0].astype(np.longdouble)
    return values.to_numpy(zero_copy_only=False).astype(np.longdouble)


_NOT_KEYS = (exp.Identifier, exp.DataType, exp.Literal, exp.Ordered, exp.Var, exp.Star)


def _with_filter(node: exp.Expr, call: exp.Expr) -> exp.Expr:
    if isinstance(node, exp.Filter):
        return exp.Filter(this=call, expression=node.expression.copy())
    return call


def _plan_rows(
    ctx: _Ctx, ident: TableIdent, tree: exp.Select, limit: int | None, offset: int | None
) -> Plan | str:
    _expand_star(ctx, tree)
    projections = list(tree.expressions)
    order = tree.args.get("order")
    ordered: list[exp.Ordered] = list(order.expressions) if order is not None else []
    keys: list[exp.Expr] = []
    for o in ordered:
        key = _resolve_ref(ctx, o.this, projections, order=True)
        if isinstance(key, str):
            return key
        keys.append(key)
    cols = [_unalias(p).copy().as_(f"__mx_p{i}") for i, p in enumerate(projections)]
    cols += [k.as_(f"__mx_k{i}") for i, k in enumerate(keys)]
    frag = _fragment_select(ctx, tree, cols)
    final_order = [o.copy() for o in ordered]
    for i, o in enumerate(final_order):
        o.set("this", exp.column(f"__mx_k{i}"))
    if limit is not None:
        if final_order:
            frag.set("order", exp.Order(expressions=[o.copy() for o in final_order]))
        frag.set("limit", exp.Limit(expression=exp.Literal.number(limit + (offset or 0))))
    final = exp.Select(expressions=[exp.column(f"__mx_p{i}") for i in range(len(projections))])
    final.set("from_", exp.From(this=exp.Table(this=exp.to_identifier("__mx_partials"))))
    if final_order:
        final.set("order", exp.Order(expressions=final_order))
    if limit is not None:
        final.set("limit", exp.Limit(expression=exp.Literal.number(limit)))
    if offset:
        final.set("offset", exp.Offset(expression=exp.Literal.number(offset)))
    kind: Literal["top-k", "scan"] = "top-k" if limit is not None and ordered else "scan"
    return _finish_plan(ctx, ident, tree, kind, frag, final)


def _finish_plan(
    ctx: _Ctx,
    ident: TableIdent,
    original: exp.Select,
    kind: Literal["aggregate", "top-k", "scan"],
    frag: exp.Select,
    final: exp.Select,
) -> Plan | str:
    # The local engine's output (names, types): the original query over no rows.
    local = original.copy()
    table = local.args["from_"].this
    table.replace(ctx.from_fragment())
    try:
        schema = ctx.probe(local.sql(dialect="duckdb")).to_arrow_table().schema
    except duckdb.Error as e:
        return f"the query does not bind ({str(e).splitlines()[0]})"
    return Plan(
        ident=ident,
        scan=ctx.scan,
        kind=kind,
        placeholder=f'"{ctx.placeholder}"',
        fragment_sql=frag.sql(dialect="duckdb"),
        final_sql=final.sql(dialect="duckdb"),
        schema=schema,
    )


# -- fragments ----------------------------------------------------------------------------------
def split_files(files: list[FileEntry], parts: int) -> list[list[FileEntry]]:
    """``files`` in at most ``parts`` groups of about equal bytes (largest first, each to the
    lightest group), keeping each group in the table's file order.

    Example:
        >>> sizes = [FileEntry(str(i), s, None, (), {}, {}, {}) for i, s in enumerate([5, 3, 3, 1])]
        >>> [[f.size for f in g] for g in split_files(sizes, 2)]
        [[5, 1], [3, 3]]
    """
    parts = max(1, min(parts, len(files)))
    order = {id(f): i for i, f in enumerate(files)}
    bins: list[list[FileEntry]] = [[] for _ in range(parts)]
    loads = [0] * parts
    for f in sorted(files, key=lambda f: -f.size):
        j = loads.index(min(loads))
        bins[j].append(f)
        loads[j] += f.size
    return [sorted(b, key=lambda f: order[id(f)]) for b in bins if b]


def _slim(scan: PrunedScan, files: list[FileEntry]) -> PrunedScan:
    """What a task needs of the scan: its files (no statistics) and their deletion vectors."""
    snap = scan.snapshot
    light = [FileEntry(f.path, f.size, f.num_records, f.partition, {}, {}, {}) for f in files]
    dvs = {f.path: snap.deletion_vectors[f.path] for f in files if f.path in snap.deletion_vectors}
    return PrunedScan(replace(snap, files=light, deletion_vectors=dvs), light, [])


def run_fragment(
    sql: str,
    placeholder: str,
    scan: PrunedScan,
    options: StorageOptions | None,
    threads: int,
    memory_limit: str | None,
) -> tuple[pa.Table, ReadStats]:
    """One fragment: DuckDB (sandboxed, reading only the table's folder, or its files in this
    node's cache) over its files; returns its rows and what it read where."""
    scan, stats = localize(scan, options)  # `scan` keeps the cached files pinned until return
    remote = is_remote(scan.snapshot.location)
    cur = _worker_connection(readable_dirs(scan), threads, memory_limit).cursor()
    try:
        ctx = make_context(options, remote)
        body = render_scan(scan, ctx)
        for name, obj in ctx.registrations.items():
            cur.register(name, obj)
        return cur.sql(sql.replace(placeholder, f"({body})")).to_arrow_table(), stats
    except duckdb.Error as e:
        # DuckDB's exceptions do not survive pickling with their type: send what maps it.
        raise FragmentError(type(e).__name__, str(e)) from None
    finally:
        cur.close()  # drops this task's registrations


@lru_cache(maxsize=8)
def _worker_connection(
    allowed: tuple[str, ...], threads: int, memory_limit: str | None
) -> duckdb.DuckDBPyConnection:
    """A locked connection per worker process and table folder (making one costs ~30 ms);
    each task runs on a cursor of its own."""
    return locked_connection(list(allowed), threads=threads, memory_limit=memory_limit)


class FragmentError(Exception):
    """A fragment's DuckDB error, picklable (the driver maps it like a local one)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(kind, message)
        self.kind = kind
        self.message = message

    def __str__(self) -> str:
        return self.message


@cache
def _remote_fragment() -> Any:
    import ray

    return ray.remote(num_cpus=1, max_retries=_MAX_RETRIES, retry_exceptions=False)(run_fragment)


def run_plan(engine_obj: SQLEngine, plan: Plan) -> pa.Table:
    """Run the fragments as Ray tasks, merge their results on this process."""

    lh = engine_obj.lh
    remote = is_remote(plan.scan.snapshot.location)
    options = lh.warehouse.options if remote else None
    task = _remote_fragment()
    places = plan_placement(plan.fragments, zones=lh.settings.storage_zones)
    refs = [
        task.options(scheduling_strategy=place.strategy).remote(
            plan.fragment_sql,
            plan.placeholder,
            _slim(plan.scan, files),
            options,
            1,
            lh.settings.duckdb_memory_limit,
        )
        for files, place in zip(plan.fragments, places, strict=True)
    ]
    done: list[tuple[pa.Table, ReadStats]] = gather(refs, f"a fragment of {plan.ident}")
    for (_, stats), place in zip(done, places, strict=True):
        observe(stats, place)
    partials = pa.concat_tables([t for t, _ in done], promote_options="permissive")
    cur = engine_obj._cursor([])
    try:
        out = merge(cur, plan, partials)
    except duckdb.Error as e:
        from matrixos.engine.sql import _engine_error

        raise _engine_error(e, plan.final_sql) from e
    finally:
        cur.close()
    out = out.rename_columns(plan.schema.names)
    return out if out.schema == plan.schema else out.cast(plan.schema)


def merge(cur: duckdb.DuckDBPyConnection, plan: Plan, partials: pa.Table) -> pa.Table:
    """The coordinator's stage: final aggregate (avg finalized as DuckDB does), then the
    query's own projections, HAVING, ORDER BY and LIMIT, over the fragments' results."""
    cur.register("__mx_partials", partials)
    if plan.merge_sql is not None:
        merged = cur.sql(plan.merge_sql).to_arrow_table()
        for avg in plan.avgs:
            merged = merged.append_column(
                avg.column,
                finalize_avg(
                    merged[avg.column + "_sum"].combine_chunks(),
                    merged[avg.column + "_count"].combine_chunks(),
                    avg.arg_type,
                ),
            )
        cur.register("__mx_merged", merged)
    return cur.sql(plan.final_sql).to_arrow_table()


def gather(refs: list[Any], what: str) -> list[Any]:
    """``ray.get`` of task results, their failures as MatrixOS errors: a DuckDB error in a
    task as the local engine reports it, a worker lost past its retries as ``ComputeError``."""
    import ray

    from matrixos.compute import ComputeError

    try:
        return list(ray.get(refs))
    except ray.exceptions.RayTaskError as e:
        consume(refs)
        cause = e.cause
        if isinstance(cause, FragmentError):
            raise _fragment_error(cause) from None
        if isinstance(cause, MatrixOSError):
            raise cause from None
        raise ComputeError(f"{what} failed: {cause}") from e
    except ray.exceptions.RayError as e:
        consume(refs)
        raise ComputeError(
            f"{what} could not run on the Ray pool: {e}",
            hint=f"each task is retried {_MAX_RETRIES} times when its worker dies",
        ) from e


def consume(refs: list[Any], wait_s: float = 2.0) -> None:
    """Take the outcome of every task in ``refs`` and drop it.

    ``ray.get`` of a list stops at the first failed task, and Ray logs a failure nobody
    fetched, with its traceback, as an "Unhandled error" when its reference goes away. After
    one failure the other outcomes are not needed, but they are fetched so that nothing spills
    into the log: those done within ``wait_s`` here, the rest by a background thread as they
    finish (the error that is raised now is not held up)."""
    import threading

    import ray

    with contextlib.suppress(Exception):
        ready, rest = ray.wait(refs, num_returns=len(refs), timeout=wait_s)
        for ref in ready:
            with contextlib.suppress(Exception):
                ray.get(ref)
        if not rest:
            return
        # Not ray.get itself: after a shutdown it would start a new local Ray runtime.
        get = getattr(ray.get, "__wrapped__", None)
        if get is None:
            return

        def fetch() -> None:
            for ref in rest:
                with contextlib.suppress(Exception):
                    get(ref)

        threading.Thread(target=fetch, name="matrixos-consume", daemon=True).start()


def _fragment_error(err: FragmentError) -> MatrixOSError:
    from matrixos.engine.sql import _engine_error, _without_scan_excerpt

    cls = getattr(duckdb, err.kind, None)
    if not (isinstance(cls, type) and issubclass(cls, duckdb.Error)):
        cls = duckdb.Error
    return _without_scan_excerpt(_engine_error(cls(err.message), ""))


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"
