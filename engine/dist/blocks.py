"""Block rewriting for staged plans: a query optimized into *blocks* and the helpers that
take their conditions apart.

``optimize_tree`` renames the query's table references ``__mx_t<i>``, qualifies every column
and unnests subqueries with sqlglot's optimizer, keeping the correlated subqueries a
partitioned stage can evaluate itself (``keep_subqueries``). A block is then
``SELECT … FROM sources [LEFT] JOIN … WHERE … GROUP BY … HAVING … ORDER BY … LIMIT``
(``Block``), each source a table or an earlier block's relation (``Rel``). The planning rules
that turn blocks into stages are in ``engine.dist.stages``.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import Any

import pyarrow as pa
from sqlglot import exp
from sqlglot.errors import SqlglotError

from matrixos._lru import LRU
from matrixos.engine.context import table_refs
from matrixos.engine.scan import FileEntry, PrunedScan, duckdb_type

TABLE_PREFIX = "__mx_t"  # placeholder names of the query's table references: __mx_t0, __mx_t1, …
SPLIT_MIN = 4 * 1024 * 1024  # a block's largest source is split over tasks above this size
NOT_KEYS = (exp.Identifier, exp.DataType, exp.Literal, exp.Ordered, exp.Var, exp.Star)
SET_ROWS = "__mx_u"  # a set operation's rows, in the stage that runs it
WINDOW_ROWS = "__mx_w"  # a window block's rows, in the stage that computes the windows
INTEGER_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER")


class Refused(Exception):
    """The query cannot be distributed; the message says why (shown by EXPLAIN)."""


class Unkept(Refused):
    """A kept subquery cannot be evaluated per partition: plan the query again, unnested."""


# -- relations ----------------------------------------------------------------------------------
@dataclass
class Rel:
    """A distributed relation: a Delta scan not yet read, or an earlier stage's partitions."""

    schema: pa.Schema
    parts: list[list[Any]] = field(default_factory=list)  # per partition: Arrow object refs
    scan: PrunedScan | None = None
    label: str = ""
    key: str | None = None  # hash-partitioned on this column (one part per bucket)
    nbytes: int = 0  # measured (stages) or the files' bytes (scans)
    fragments: list[list[FileEntry]] = field(default_factory=list)
    final: FinalStep | None = None  # the query's last step, done on the coordinator
    # Range-partitioned on ``key``: partition i holds bounds[i-1] <= key < bounds[i] (NULLs in
    # the first); a scan split so has a filter per fragment (``wheres``).
    bounds: tuple[int, ...] | None = None
    wheres: list[str] = field(default_factory=list)
    # A folded derived table (``StagePlanner._folded``): its SQL over ``inlined`` (alias → scan),
    # rendered as a subquery in its readers' FROM.
    inline: exp.Select | None = None
    inlined: dict[str, Rel] = field(default_factory=dict)

    def types(self) -> dict[str, str]:
        return {f.name.lower(): duckdb_type(f.type) for f in self.schema}

    def estimate(self, columns: set[str]) -> int:
        """Bytes a stage would read of it: a scan's files scaled by the share of columns."""
        if self.scan is None:
            return self.nbytes
        share = max(1, len(columns)) / max(1, len(self.schema))
        return int(self.nbytes * min(1.0, share))


@dataclass
class Source:
    alias: str
    rel: Rel
    on: exp.Expr | None = None  # a LEFT JOIN's condition; None: an inner source
    # A table of a subquery kept in an expression (``KeptSubquery``, ``StagePlanner._inline``):
    # not in the FROM; its own filters (conjuncts on it alone) may apply before its rows move.
    sub: bool = False
    filters: list[exp.Expr] = field(default_factory=list)


@dataclass
class Block:
    """One SELECT: its sources (inner ones first, then LEFT JOINed ones), the inner join and
    WHERE conjuncts, and the SELECT itself (projections, GROUP BY, HAVING, ORDER, LIMIT)."""

    sources: list[Source]
    conds: list[exp.Expr]
    sel: exp.Select
    # ``hidden.k = outer.c`` of kept subqueries: partitioning keys only, never rendered
    links: list[exp.Expr] = field(default_factory=list)
    # A set operation's FROM (``StagePlanner.setop``): a subquery over its sides' placeholders
    # (the sources' aliases), each task reading the same partition of every side.
    body: exp.Expr | None = None
    _columns: dict[str, set[str]] | None = field(default=None, init=False, repr=False)

    def source(self, alias: str) -> Source:
        return next(s for s in self.sources if s.alias == alias)

    def parts_sql(self) -> list[exp.Expr]:
        """Every expression of the block outside its FROM (columns are counted from these)."""
        out: list[exp.Expr] = [*self.sel.expressions, *self.conds]
        for key in ("group", "having", "order"):
            if self.sel.args.get(key) is not None:
                out.append(self.sel.args[key])
        out += [s.on for s in self.sources if s.on is not None]
        return out

    def columns_of(self, alias: str, nodes: list[exp.Expr] | None = None) -> set[str]:
        if nodes is None:
            if self._columns is None:  # the block's own columns: found once per block
                self._columns = {}
                for node in self.parts_sql():
                    for col in node.find_all(exp.Column):
                        self._columns.setdefault(col.table, set()).add(col.name)
            return set(self._columns.get(alias, ()))
        cols: set[str] = set()
        for node in nodes:
            for col in node.find_all(exp.Column):
                if col.table == alias:
                    cols.add(col.name)
        return cols


def aliases_in(node: exp.Expr) -> set[str]:
    return {c.table for c in node.find_all(exp.Column) if c.table}


def conjuncts(node: exp.Expr | None) -> list[exp.Expr]:
    if node is None:
        return []
    if isinstance(node, exp.And):
        return conjuncts(node.this) + conjuncts(node.expression)
    if isinstance(node, exp.Paren):
        return conjuncts(node.this)
    if isinstance(node, exp.Boolean) and node.this:
        return []
    return [node]


def implied(conds: list[exp.Expr]) -> list[exp.Expr]:
    """Conjuncts common to every branch of an OR (TPC-H Q19's join key), as conditions of
    their own: they are implied, and they give the planner its join keys."""
    have = {c.sql() for c in conds}
    out: list[exp.Expr] = []
    for c in conds:
        if not isinstance(c, exp.Or):
            continue
        branches = list(c.flatten())
        common = {x.sql(): x for x in conjuncts(branches[0])}
        for branch in branches[1:]:
            keep = {x.sql() for x in conjuncts(branch)}
            common = {k: v for k, v in common.items() if k in keep}
        out += [v.copy() for k, v in common.items() if k not in have]
    return out


def range_share(lo: int, hi: int, size: int, edges: list[int | None]) -> float:
    """Bytes of a file (keys ``lo``..``hi``, evenly spread) that the ranges between ``edges``
    read together: 1x its size if no range cuts it, more if one does but its rows cluster."""
    read = 0.0
    for a, b in itertools.pairwise(edges):
        start = lo if a is None else max(lo, a)
        end = hi + 1 if b is None else min(hi + 1, b)
        if end > start or (start == lo and a is None and b is not None and lo < b):
            read += size * max(end - start, 1) / max(hi + 1 - lo, 1)
    return read


def is_inner(s: Source) -> bool:
    """An inner source of the block's FROM (not LEFT JOINed, not a kept subquery's table)."""
    return s.on is None and not s.sub


def rejects_null(cond: exp.Expr, alias: str) -> bool:
    """Whether ``cond`` is false or NULL when ``alias``'s columns are NULL (a LEFT JOIN's
    unmatched rows): ``NOT alias.x IS NULL``, or a comparison with a column of ``alias``."""
    if isinstance(cond, exp.Not) and isinstance(cond.this, exp.Is):
        inner = cond.this
        return (
            isinstance(inner.this, exp.Column)
            and inner.this.table == alias
            and isinstance(inner.expression, exp.Null)
        )
    if isinstance(cond, exp.EQ | exp.NEQ | exp.GT | exp.GTE | exp.LT | exp.LTE):
        return any(
            isinstance(x, exp.Column) and x.table == alias for x in (cond.this, cond.expression)
        )
    return False


def inner_lefts(
    sources: list[Source], conds: list[exp.Expr]
) -> tuple[list[Source], list[exp.Expr]]:
    """LEFT JOINs that the WHERE clause makes inner (it rejects their unmatched rows, as
    sqlglot's unnested ``IN``/``EXISTS`` subqueries do with ``NOT x IS NULL``) as inner
    sources, when their condition names only inner sources."""
    inner = [s for s in sources if s.on is None]
    lefts: list[Source] = []
    conds = list(conds)
    names = {s.alias for s in inner}
    for s in sources:
        if s.on is None:
            continue
        if aliases_in(s.on) <= names | {s.alias} and any(rejects_null(c, s.alias) for c in conds):
            conds += conjuncts(s.on)
            inner.append(replace(s, on=None))
            names.add(s.alias)
        else:
            lefts.append(s)
    return inner + lefts, conds


def flatten_aliases(node: exp.Expr, aliases: set[str], target: str | None) -> exp.Expr:
    """Columns of ``aliases`` renamed to the joined source's ``"alias.column"`` names."""

    def swap(n: exp.Expr) -> exp.Expr:
        if isinstance(n, exp.Column) and n.table in aliases:
            name = exp.to_identifier(f"{n.table}.{n.name}", quoted=True)
            return exp.Column(this=name, table=exp.to_identifier(target) if target else None)
        return n

    return node.transform(swap)


def hash_sql(exprs: list[str], types: list[str | None], buckets: int) -> str:
    """The bucket of a row. Integer keys hash as BIGINT so both sides of a join agree."""
    keys = [
        f"CAST({e} AS BIGINT)" if t in INTEGER_TYPES else e
        for e, t in zip(exprs, types, strict=True)
    ]
    return f"hash({', '.join(keys)}) % {buckets}"


def padded(rel: Rel, n: int) -> Rel:
    """``rel`` with empty partitions added up to ``n`` (tasks read an empty table)."""
    return replace(rel, parts=rel.parts + [[] for _ in range(n - len(rel.parts))])


def swap_tables(node: exp.Expr, names: dict[str, str]) -> exp.Expr:
    """``node`` (a copy) with its table references ``t AS a`` reading the placeholder
    ``names[a]`` instead (kept subqueries' and folded derived tables' tables)."""

    def swap(n: exp.Expr) -> exp.Expr:
        if isinstance(n, exp.Table) and n.alias_or_name in names:
            return exp.Table(
                this=exp.to_identifier(names[n.alias_or_name], True), alias=n.args["alias"]
            )
        return n

    return node.transform(swap)


def column_ref(name: str, table: str | None = None) -> exp.Column:
    return exp.Column(
        this=exp.to_identifier(name, quoted=True),
        table=exp.to_identifier(table, quoted=True) if table else None,
    )


@dataclass
class FinalStep:
    """The last step over a block's gathered rows: DISTINCT, ORDER BY, LIMIT/OFFSET."""

    names: list[str]
    order: list[exp.Ordered]
    distinct: bool
    limit: int | None
    offset: int | None
    # The top block's own SQL, run first on the coordinator over ``inputs`` (all partitions
    # of each); None: the top block ran as a stage, its partitions are the rows.
    pre: str | None = None
    inputs: dict[str, Rel] = field(default_factory=dict)

    def sql(self, source: str) -> str:
        cols = ", ".join(column_ref(n).sql("duckdb") for n in self.names)
        keys = ", ".join(f'"__mx_k{i}"' for i in range(len(self.order)))
        inner = f'"{source}"'
        if self.distinct:
            inner = f'(SELECT DISTINCT {cols}{", " + keys if keys else ""} FROM "{source}")'
        text = f"SELECT {cols} FROM {inner} AS __mx_f"
        if self.order:
            text += " ORDER BY " + ", ".join(o.sql("duckdb") for o in self.order)
        if self.limit is not None:
            text += f" LIMIT {self.limit}"
        if self.offset:
            text += f" OFFSET {self.offset}"
        return text


def int_arg(sel: exp.Query, key: str) -> int | None:
    node = sel.args.get(key)
    if node is None:
        return None
    value = node.expression if isinstance(node, exp.Limit | exp.Offset) else node
    if isinstance(value, exp.Literal) and not value.is_string and value.this.isdigit():
        return int(value.this)
    raise Refused("LIMIT/OFFSET that is not an integer constant")


_OPTIMIZED: LRU[tuple[Any, ...], tuple[exp.Expr, dict[str, KeptSubquery]] | str] = LRU(64)


def optimize_tree(
    tree: exp.Expr, scans: list[PrunedScan], keep: bool
) -> tuple[exp.Expr, dict[str, KeptSubquery]]:
    """``tree`` with its table references renamed ``__mx_t<i>``, every column qualified and
    subqueries unnested (sqlglot's optimizer, without the rules that rewrite expressions and
    could change a result's types). With ``keep``, correlated subqueries that a partitioned
    stage can evaluate itself (``keep_subqueries``) are not unnested: they stand as
    ``__MX_KEEP_<i>(outer columns)`` calls, restored by the block that holds them."""
    from sqlglot.optimizer import (
        eliminate_ctes,
        eliminate_subqueries,
        merge_subqueries,
        optimize_joins,
        pushdown_predicates,
        pushdown_projections,
        qualify,
        unnest_subqueries,
    )
    from sqlglot.optimizer.optimizer import optimize

    key = (
        tree.sql(dialect="duckdb"),
        tuple(tuple(s.snapshot.schema.names) for s in scans),
        keep,
    )
    hit = _OPTIMIZED.get(key)
    if hit is not None:
        if isinstance(hit, str):
            raise Refused(hit)
        return hit[0].copy(), hit[1]
    work = tree.copy()
    schema: dict[str, object] = {}
    for i, (node, scan) in enumerate(zip(table_refs(work), scans, strict=True)):
        name = f"{TABLE_PREFIX}{i}"
        alias = node.args.get("alias") or exp.TableAlias(this=exp.to_identifier(node.name))
        node.replace(exp.Table(this=exp.to_identifier(name), alias=alias))
        schema[name] = {f.name: duckdb_type(f.type) for f in scan.snapshot.schema}
    kept: dict[str, KeptSubquery] = {}
    if keep:
        work = qualify.qualify(work, schema=schema, dialect="duckdb")
        kept = keep_subqueries(work)
    rules = (
        *(() if keep else (qualify.qualify,)),
        pushdown_projections.pushdown_projections,
        unnest_subqueries.unnest_subqueries,
        pushdown_predicates.pushdown_predicates,
        optimize_joins.optimize_joins,
        eliminate_subqueries.eliminate_subqueries,
        merge_subqueries.merge_subqueries,
        eliminate_ctes.eliminate_ctes,
    )
    out: tuple[exp.Expr, dict[str, KeptSubquery]] | str
    try:
        out = (optimize(work, schema=schema, dialect="duckdb", rules=rules), kept)
    except (SqlglotError, KeyError, ValueError, TypeError, AttributeError) as e:
        why = str(e).splitlines()[0] if str(e) else type(e).__name__
        out = f"sqlglot cannot decompose it ({why})"
    _OPTIMIZED.put(key, out)
    if isinstance(out, str):
        raise Refused(out)
    return out[0].copy(), out[1]


@dataclass
class KeptSubquery:
    """A correlated subquery left in its condition: its tables' aliases renamed
    ``__mx_h<i>_<j>`` (unique in the query), evaluated by DuckDB in the stage that evaluates
    the condition, its tables partitioned with the outer rows on a correlation key."""

    node: exp.Expr  # the EXISTS, or the scalar subquery
    outer: list[str]  # its outer column references (SQL), the placeholder's arguments
    tables: dict[str, int]  # hidden alias → index of the table reference (``__mx_t<i>``)


KEEP_PREFIX = "__MX_KEEP_"
_COMPARISONS = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE)


def keep_subqueries(tree: exp.Expr) -> dict[str, KeptSubquery]:
    """Correlated ``EXISTS``/``NOT EXISTS`` and scalar aggregate subqueries in a WHERE clause
    replaced by placeholders (see ``KeptSubquery``): a plain SELECT over table references (inner
    joins only, nothing nested, no GROUP BY/LIMIT), correlated with the enclosing SELECT's
    sources by at least one ``inner.k = outer.c`` conjunct."""
    kept: dict[str, KeptSubquery] = {}
    for node in list(tree.find_all(exp.Exists, exp.Subquery)):
        inner = node.this
        if not isinstance(inner, exp.Select) or (
            isinstance(node, exp.Subquery) and not isinstance(node.parent, _COMPARISONS)
        ):
            continue
        outer = node.parent.find_ancestor(exp.Select) if node.parent else None
        where = outer.args.get("where") if outer is not None else None
        if outer is None or where is None or node.find_ancestor(exp.Where) is not where:
            continue
        if any(inner.args.get(k) for k in ("with_", "group", "having", "order", "limit")):
            continue
        if inner.args.get("offset") or inner.args.get("distinct") or inner.find(exp.Window):
            continue
        if len(list(inner.find_all(exp.Select))) != 1:
            continue
        if isinstance(node, exp.Subquery) and (
            len(inner.expressions) != 1 or not inner.expressions[0].find(exp.AggFunc)
        ):
            continue  # a scalar subquery must be one aggregate (one row)
        joins = inner.args.get("joins") or []
        if any(j.side or (j.kind or "").upper() not in ("", "INNER", "CROSS") for j in joins):
            continue
        from_ = inner.args.get("from_")
        tables = [from_.this if from_ else None] + [j.this for j in joins]
        if not all(
            isinstance(t, exp.Table)
            and not t.args.get("db")
            and t.name.startswith(TABLE_PREFIX)
            and t.name[len(TABLE_PREFIX) :].isdigit()
            for t in tables
        ):
            continue
        mine = {t.alias_or_name for t in tables if t is not None}
        around = {t.alias_or_name for t in block_sources(outer)}
        refs = [c for c in inner.find_all(exp.Column) if c.table not in mine]
        if not refs or any(c.table not in around for c in refs):
            continue
        conds = conjuncts(inner.args["where"].this if inner.args.get("where") else None)
        conds += [c for j in joins for c in conjuncts(j.args.get("on"))]
        if not any(correlation(c, mine, around) for c in conds):
            continue
        names = {a: f"__mx_h{len(kept)}_{i}" for i, a in enumerate(sorted(mine))}
        copy = node.copy()
        if isinstance(copy, exp.Exists):
            copy.this.set("expressions", [exp.Literal.number(1)])  # not the columns of *
        for t in copy.find_all(exp.Table):
            t.set("alias", exp.TableAlias(this=exp.to_identifier(names[t.alias_or_name], True)))
        for c in copy.find_all(exp.Column):
            if c.table in names:
                c.set("table", exp.to_identifier(names[c.table], True))
        args = list({c.sql(): c for c in refs}.values())
        name = f"{KEEP_PREFIX}{len(kept)}"
        kept[name] = KeptSubquery(
            copy,
            [c.sql() for c in args],
            {names[t.alias_or_name]: int(t.name[len(TABLE_PREFIX) :]) for t in tables if t},
        )
        node.replace(exp.Anonymous(this=name, expressions=[c.copy() for c in args]))
    return kept


def block_sources(sel: exp.Select) -> list[exp.Expr]:
    from_ = sel.args.get("from_")
    return ([from_.this] if from_ is not None else []) + [
        j.this for j in sel.args.get("joins") or []
    ]


def correlation(
    cond: exp.Expr, mine: set[str], around: set[str]
) -> tuple[exp.Column, exp.Column] | None:
    """``(inner, outer)`` columns of a correlation ``inner.k = outer.c``, else None."""
    if not isinstance(cond, exp.EQ):
        return None
    a, b = cond.this, cond.expression
    if not isinstance(a, exp.Column) or not isinstance(b, exp.Column):
        return None
    if a.table in mine and b.table in around:
        return a, b
    if b.table in mine and a.table in around:
        return b, a
    return None
