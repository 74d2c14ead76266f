"""Single-table fragment planning: a SELECT over one Delta table split into per-fragment SQL
and the coordinator's merge.

A query whose FROM is a single Delta table, with an optional WHERE, GROUP BY with decomposable
aggregates (count, sum, min, max, avg, with FILTER), HAVING, ORDER BY and LIMIT, runs in two
stages:

1. **Fragments.** The files that survived pruning are split by bytes into about one fragment
   per CPU of the pool (``split_files``). Each fragment runs the projection, the filter and the
   partial aggregate (``avg`` as ``sum`` and ``count``) pushed in, or the per-fragment top-k
   for ``ORDER BY … LIMIT``.
2. **Merge.** The coordinator runs the final aggregate over the partial results (each merged
   aggregate cast to the type the local engine gives it), then HAVING, ORDER BY and LIMIT
   (``engine.dist.merge``).

Results equal the local engine's, types and column names included (floating-point sums may
differ in the last bits, as they do between local runs with different thread counts). Every
plan is bound and merged over no rows before it is accepted: what does not split cleanly runs
as stages or locally instead of failing at run time.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, replace
from functools import cache
from typing import TYPE_CHECKING, Any, Literal

import duckdb
from sqlglot import exp
from sqlglot.errors import SqlglotError

from matrixos.engine.dist.blocks import NOT_KEYS, Refused, int_arg
from matrixos.engine.dist.merge import avg_kind, merge
from matrixos.engine.dist.plan import Avg, FragmentPlan
from matrixos.engine.sandbox import function_name
from matrixos.engine.scan import FileEntry, PrunedScan, make_context, render_scan

if TYPE_CHECKING:
    from matrixos.catalog import TableIdent
    from matrixos.engine.context import EngineSession, QueryContext

Engine = Literal["auto", "local", "ray"]

_AGGREGATES: dict[type[exp.Expr], str] = {
    exp.Count: "count",
    exp.Sum: "sum",
    exp.Min: "min",
    exp.Max: "max",
    exp.Avg: "avg",
}


def plan_fragments(query: QueryContext) -> FragmentPlan | str:
    """The fragment plan of the query (without its fragments: ``split_files`` cuts them for
    the pool), or why it cannot be one."""
    tree, bound, functions = query.tree, query.bound, query.functions
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
    try:
        limit, offset = int_arg(tree, "limit"), int_arg(tree, "offset")
    except Refused as e:
        return str(e)
    for star in tree.find_all(exp.Star):
        if any(star.args.get(k) for k in ("except_", "replace", "rename")):
            return "SELECT * with EXCLUDE/REPLACE/RENAME"
    work = tree.copy()
    reason = _check_functions(work)
    if reason:
        return reason
    alias = table.alias_or_name
    placeholder = f"__mx_frag_{uuid.uuid4().hex}"
    schema_names = [f.name for f in scan.snapshot.schema]
    ctx = _Ctx(query.session, scan, alias, placeholder, schema_names)
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
        problem = _merges_over_no_rows(ctx, plan)
    except (SqlglotError, duckdb.Error, KeyError, ValueError) as e:
        return f"cannot split it ({str(e).splitlines()[0] if str(e) else type(e).__name__})"
    return problem or plan


def _merges_over_no_rows(ctx: _Ctx, plan: FragmentPlan) -> str | None:
    try:
        partials = ctx.probe(plan.fragment_sql).to_arrow_table()
        cur = ctx.session.planning_cursor()
        try:
            out = merge(cur, plan, partials)
        finally:
            cur.close()
    except duckdb.Error as e:
        return f"cannot split it ({str(e).splitlines()[0]})"
    if out.num_columns != len(plan.schema):
        return "cannot split it (its columns differ)"
    return None


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


def _check_functions(tree: exp.Expr) -> str | None:
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
    session: EngineSession
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
        empty = replace(self.scan, files=[], pending=None)  # no write-ahead log rows either
        ctx = make_context(None, False)
        body = render_scan(empty, ctx)
        cur = self.session.planning_cursor()
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
) -> FragmentPlan | str:
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
        elif avg_kind(types[out + "_arg"]) is None:
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
        if key_types and isinstance(node, key_types) and not isinstance(node, NOT_KEYS):
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


def _with_filter(node: exp.Expr, call: exp.Expr) -> exp.Expr:
    if isinstance(node, exp.Filter):
        return exp.Filter(this=call, expression=node.expression.copy())
    return call


def _plan_rows(
    ctx: _Ctx, ident: TableIdent, tree: exp.Select, limit: int | None, offset: int | None
) -> FragmentPlan | str:
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
) -> FragmentPlan | str:
    # The local engine's output (names, types): the original query over no rows.
    local = original.copy()
    table = local.args["from_"].this
    table.replace(ctx.from_fragment())
    try:
        schema = ctx.probe(local.sql(dialect="duckdb")).to_arrow_table().schema
    except duckdb.Error as e:
        return f"the query does not bind ({str(e).splitlines()[0]})"
    return FragmentPlan(
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
