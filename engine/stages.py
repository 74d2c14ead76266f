"""Distributed multi-stage queries: joins, subqueries, aggregations, set operations and window
functions as Ray tasks.

``engine.distributed`` runs a SELECT over one Delta table as fragments plus a merge. Everything
else with Delta tables (joins, subqueries, CTEs, DISTINCT or non-decomposable aggregates, set
operations, window functions) comes here. The planning rules, in order:

1. **Kept correlated subqueries.** A correlated ``EXISTS``/``NOT EXISTS`` or scalar aggregate
   subquery in a WHERE clause (a plain SELECT over tables, inner joins only, nothing nested)
   that correlates with its enclosing SELECT by an equality ``inner.k = outer.c`` is *kept*:
   its text stays in the condition, so DuckDB evaluates it in the stage that filters on it
   (semi/anti joins, its own decorrelation), and its tables become hidden sources of that
   block. A hidden table small enough to broadcast goes to every task; a large one is
   partitioned with the outer rows on the correlation key (by ranges or by hash, below), so
   every inner row an outer row can see is in its task. If no key partitions all of the
   block's large sources and the large hidden ones together, the whole query is planned again
   with the subqueries unnested (EXPLAIN says so).
2. **Decomposition.** sqlglot's optimizer qualifies every column and unnests the other
   subqueries (``IN``/``EXISTS``/correlated scalar subqueries become joins with grouped
   derived tables), lifting derived tables into CTEs, so the query is a set of *blocks*:
   ``SELECT … FROM sources [LEFT] JOIN … WHERE … GROUP BY … HAVING … ORDER BY … LIMIT``,
   each source a table or an earlier block. Uncorrelated subqueries left in expressions
   (``NOT IN (SELECT …)``) run first and are broadcast.
3. **Small blocks fold into their readers.** A derived table or CTE, or an uncorrelated
   subquery in an expression, that is one SELECT over tables (or earlier stages' outputs)
   whose columns together are broadcast-sized and at most 4 MiB gets no stage of its own: its
   SQL stays in the stages that read it (a subquery in their FROM, or in the expression), its
   tables broadcast to them (every task that reads it computes it).
4. **Blocks as stages.** Every block runs as DuckDB per partition (one Ray task each). A
   source whose estimated (or, for an earlier stage's result, measured) size is at most
   ``Settings.broadcast_max_bytes`` is *broadcast*: every task reads all of it. The large
   sources are co-partitioned on a join key they share (an equivalence class of ``a.x = b.y``
   conditions and kept subqueries' correlations): by *key ranges* cut from the Delta files'
   min/max statistics when the files are clustered on the key (no shuffle: each task reads
   the files that meet its range, filtered to it), else *hash-partitioned* into N buckets by a
   shuffle stage (tasks return N Arrow tables, owned by the driver) that applies the side's
   own filters and semi-join reductions by the block's small filtered sources first. A side
   measured small after its shuffle is broadcast instead. A single large source is split into
   fragments (by ranges of a join or GROUP BY key when its files allow). Large sources with
   no common key are joined pairwise first, then the rest.
5. **Aggregation.** When the partitioning key is a GROUP BY column the block aggregates in
   place; otherwise each task aggregates partially (count, sum, min, max) and the partial
   rows are hash-partitioned by the GROUP BY keys (or gathered into one task for a global
   aggregate), or, for DISTINCT, avg, median and the like, the joined rows move, so every
   aggregate is computed by DuckDB itself, exactly as locally.
6. **Set operations.** Each side of a UNION, INTERSECT or EXCEPT is planned as a query of its
   own; its rows are cast to the types the operation gives them (bound over empty inputs, as
   the local engine types it). UNION ALL concatenates the sides' partitions (a stage whose task
   ``i`` reads partition ``i`` of each side); the others (DISTINCT or ALL) hash-partition both
   sides on all their columns, cast (a shuffle stage each; NULLs hash alike, as set operations
   compare them equal), and run the operation per bucket. ORDER BY/LIMIT go on top, as for a
   block (rule 8).
7. **Window functions.** A SELECT with windows runs in two steps: its rows (the block without
   its windows, ORDER BY, LIMIT and DISTINCT, projecting the columns, aggregates and PARTITION
   BY keys the rest needs) are planned as any block (joins, GROUP BY, HAVING), whose last stage
   hash-partitions its output on the PARTITION BY keys common to every window (no shuffle
   stage of its own); then the windows run per bucket. When the windows share no key (a global
   window such as ``row_number() OVER (ORDER BY x)``), the rows are gathered into one task on
   the pool (the coordinator runs it when they are broadcast-sized, as in rule 8).
8. **Order and limit.** Each task keeps its top ``LIMIT + OFFSET`` rows; the driver merges the
   final (small) result, sorts and limits it, and casts it to the names and types the local
   engine gives the query (found by binding the query over empty tables). When the top block
   reads only earlier stages' outputs, together broadcast-sized (partial aggregates, mostly),
   the coordinator runs the block itself on them before that final step: no stage of its own.

Stages run one after another; a stage of fewer tasks than the pool has CPUs gives each task
DuckDB threads for the rest (one task: all of them).

``EXPLAIN`` plans the same stages without running any: sizes are estimates (a scan's file
bytes by its share of columns; a stage's inputs, halved by a WHERE clause, a tenth after GROUP
BY), each stage's schema comes from binding its SQL over empty inputs. ``EXPLAIN ANALYZE``
runs the query and shows the stages as run, with measured rows, sizes and times, and each
stage's slowest task setup and DuckDB time (its plan can differ: a side measured small is
broadcast).

Tasks that read table files go through ``engine.filecache`` (``localize`` in the task,
``plan_placement``/``observe`` on the driver). A task whose worker dies is retried
(``max_retries``); its inputs are objects owned by the driver, so they survive the worker.

Not distributed (they run locally, with the reason in ``EXPLAIN``): RIGHT/FULL/SEMI/ANTI joins,
joins after a LEFT JOIN, UNION BY NAME, named windows (``WINDOW w AS …``), QUALIFY, correlated
subqueries sqlglot cannot unnest (and that cannot be kept), search functions and Lance tables.
"""

from __future__ import annotations

import itertools
import time
import uuid
from dataclasses import dataclass, field, replace
from functools import cache
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa
from sqlglot import exp
from sqlglot.errors import SqlglotError

from matrixos._lru import LRU
from matrixos.engine.distributed import (
    _MAX_RETRIES,
    FragmentError,
    _size,
    _slim,
    _worker_connection,
    gather,
    split_files,
)
from matrixos.engine.filecache import (
    Placement,
    ReadStats,
    localize,
    observe,
    plan_placement,
    readable_dirs,
)
from matrixos.engine.scan import FileEntry, PrunedScan, duckdb_type, make_context, render_scan
from matrixos.storage.warehouse import is_remote

if TYPE_CHECKING:
    from matrixos.catalog import TableIdent
    from matrixos.engine.functions import FunctionResults
    from matrixos.engine.scan import LanceScan
    from matrixos.engine.sql import SQLEngine
    from matrixos.storage.options import StorageOptions

_TABLE = "__mx_t"  # placeholder names of the query's table references: __mx_t0, __mx_t1, …
_SPLIT_MIN = 4 * 1024 * 1024  # a block's largest source is split over tasks above this size
_NOT_KEYS = (exp.Identifier, exp.DataType, exp.Literal, exp.Ordered, exp.Var, exp.Star)
_SET = "__mx_u"  # a set operation's rows, in the stage that runs it
_WIN = "__mx_w"  # a window block's rows, in the stage that computes the windows
_INTEGERS = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "UTINYINT", "USMALLINT", "UINTEGER")


class Refused(Exception):
    """The query cannot be distributed; the message says why (shown by EXPLAIN)."""


class _Unkept(Refused):
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
    final: _Final | None = None  # the query's last step, done on the coordinator
    # Range-partitioned on ``key``: partition i holds bounds[i-1] <= key < bounds[i] (NULLs in
    # the first); a scan split so has a filter per fragment (``wheres``).
    bounds: tuple[int, ...] | None = None
    wheres: list[str] = field(default_factory=list)
    # A folded derived table (``Executor._folded``): its SQL over ``inlined`` (alias → scan),
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
    # A table of a subquery kept in an expression (``_Kept``, ``Executor._inline``): not in
    # the FROM; its own filters (conjuncts on it alone) may apply before its rows move.
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
    # A set operation's FROM (``Executor.setop``): a subquery over its sides' placeholders
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


def _aliases(node: exp.Expr) -> set[str]:
    return {c.table for c in node.find_all(exp.Column) if c.table}


def _conjuncts(node: exp.Expr | None) -> list[exp.Expr]:
    if node is None:
        return []
    if isinstance(node, exp.And):
        return _conjuncts(node.this) + _conjuncts(node.expression)
    if isinstance(node, exp.Paren):
        return _conjuncts(node.this)
    if isinstance(node, exp.Boolean) and node.this:
        return []
    return [node]


def _implied(conds: list[exp.Expr]) -> list[exp.Expr]:
    """Conjuncts common to every branch of an OR (TPC-H Q19's join key), as conditions of
    their own: they are implied, and they give the planner its join keys."""
    have = {c.sql() for c in conds}
    out: list[exp.Expr] = []
    for c in conds:
        if not isinstance(c, exp.Or):
            continue
        branches = list(c.flatten())
        common = {x.sql(): x for x in _conjuncts(branches[0])}
        for branch in branches[1:]:
            keep = {x.sql() for x in _conjuncts(branch)}
            common = {k: v for k, v in common.items() if k in keep}
        out += [v.copy() for k, v in common.items() if k not in have]
    return out


def _share(lo: int, hi: int, size: int, edges: list[int | None]) -> float:
    """Bytes of a file (keys ``lo``..``hi``, evenly spread) that the ranges between ``edges``
    read together: 1x its size if no range cuts it, more if one does but its rows cluster."""
    read = 0.0
    for a, b in itertools.pairwise(edges):
        start = lo if a is None else max(lo, a)
        end = hi + 1 if b is None else min(hi + 1, b)
        if end > start or (start == lo and a is None and b is not None and lo < b):
            read += size * max(end - start, 1) / max(hi + 1 - lo, 1)
    return read


def _inner(s: Source) -> bool:
    """An inner source of the block's FROM (not LEFT JOINed, not a kept subquery's table)."""
    return s.on is None and not s.sub


def _rejects_null(cond: exp.Expr, alias: str) -> bool:
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


def _inner_lefts(
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
        if _aliases(s.on) <= names | {s.alias} and any(_rejects_null(c, s.alias) for c in conds):
            conds += _conjuncts(s.on)
            inner.append(replace(s, on=None))
            names.add(s.alias)
        else:
            lefts.append(s)
    return inner + lefts, conds


def _flatten(node: exp.Expr, aliases: set[str], target: str | None) -> exp.Expr:
    """Columns of ``aliases`` renamed to the joined source's ``"alias.column"`` names."""

    def swap(n: exp.Expr) -> exp.Expr:
        if isinstance(n, exp.Column) and n.table in aliases:
            name = exp.to_identifier(f"{n.table}.{n.name}", quoted=True)
            return exp.Column(this=name, table=exp.to_identifier(target) if target else None)
        return n

    return node.transform(swap)


def _hash_sql(exprs: list[str], types: list[str | None], buckets: int) -> str:
    """The bucket of a row. Integer keys hash as BIGINT so both sides of a join agree."""
    keys = [
        f"CAST({e} AS BIGINT)" if t in _INTEGERS else e for e, t in zip(exprs, types, strict=True)
    ]
    return f"hash({', '.join(keys)}) % {buckets}"


def _padded(rel: Rel, n: int) -> Rel:
    """``rel`` with empty partitions added up to ``n`` (tasks read an empty table)."""
    return replace(rel, parts=rel.parts + [[] for _ in range(n - len(rel.parts))])


def _swap_tables(node: exp.Expr, names: dict[str, str]) -> exp.Expr:
    """``node`` (a copy) with its table references ``t AS a`` reading the placeholder
    ``names[a]`` instead (kept subqueries' and folded derived tables' tables)."""

    def swap(n: exp.Expr) -> exp.Expr:
        if isinstance(n, exp.Table) and n.alias_or_name in names:
            return exp.Table(
                this=exp.to_identifier(names[n.alias_or_name], True), alias=n.args["alias"]
            )
        return n

    return node.transform(swap)


def _col(name: str, table: str | None = None) -> exp.Column:
    return exp.Column(
        this=exp.to_identifier(name, quoted=True),
        table=exp.to_identifier(table, quoted=True) if table else None,
    )


# -- the task -----------------------------------------------------------------------------------
@dataclass
class Input:
    """One input of a stage task: a scan of some files, or ``count`` Arrow tables (args)."""

    name: str
    scan: PrunedScan | None
    count: int
    schema: pa.Schema
    where: str | None = None  # a range-split scan's filter on its rows


def run_stage(
    sql: str,
    inputs: list[Input],
    options: StorageOptions | None,
    key_sql: str | None,
    nout: int,
    threads: int,
    memory_limit: str | None,
    *tables: pa.Table,
) -> list[Any]:
    """One stage task: DuckDB over its inputs (file scans localized through the node's cache,
    Arrow partitions of earlier stages); returns ``nout`` Arrow tables (the rows hash-split by
    ``key_sql``, or all rows when ``nout`` is 1) and its statistics."""
    t0 = time.perf_counter()
    scans: list[PrunedScan] = []  # keeps localized files pinned until the task returns
    read: list[ReadStats] = []
    arrow: dict[str, pa.Table] = {}
    dirs: set[str] = set()
    i = 0
    for inp in inputs:
        if inp.scan is not None:
            scan, stats = localize(inp.scan, options)
            scans.append(scan)
            read.append(stats)
            dirs.update(readable_dirs(scan))
        else:
            got = list(tables[i : i + inp.count])
            i += inp.count
            arrow[inp.name] = (
                pa.concat_tables(got, promote_options="permissive")
                if got
                else inp.schema.empty_table()
            )
    cur = _worker_connection(tuple(sorted(dirs)), threads, memory_limit).cursor()
    t1 = time.perf_counter()
    try:
        text = sql
        for inp, scan in zip([x for x in inputs if x.scan is not None], scans, strict=True):
            ctx = make_context(options, is_remote(scan.snapshot.location))
            body = render_scan(scan, ctx)
            for name, obj in ctx.registrations.items():
                cur.register(name, obj)
            if inp.where:
                body = f"SELECT * FROM ({body}) AS __mx_r WHERE {inp.where}"
            text = text.replace(f'"{inp.name}"', f"({body})")
        for name, table in arrow.items():
            cur.register(name, table)
        if key_sql is None or nout == 1:
            outs = [cur.sql(text).to_arrow_table()]
        else:
            rows = cur.sql(f"SELECT *, {key_sql} AS __mx_bucket FROM ({text}) AS __mx_q")
            table = rows.to_arrow_table()
            import pyarrow.compute as pc

            bucket = table.column("__mx_bucket")
            table = table.drop_columns(["__mx_bucket"])
            outs = [table.filter(pc.equal(bucket, b)) for b in range(nout)]
    except duckdb.Error as e:
        raise FragmentError(type(e).__name__, str(e)) from None
    finally:
        cur.close()
    stats = {
        "rows": [t.num_rows for t in outs],
        "bytes": [t.nbytes for t in outs],
        "schema": outs[0].schema,
        "read": read,
        "setup_ms": (t1 - t0) * 1000,
        "run_ms": (time.perf_counter() - t1) * 1000,
    }
    return [*outs, stats]


@cache
def _remote_stage() -> Any:
    import ray

    return ray.remote(num_cpus=1, max_retries=_MAX_RETRIES, retry_exceptions=False)(run_stage)


# -- the executor -------------------------------------------------------------------------------
@dataclass
class _Task:
    inputs: list[tuple[str, Rel, int | None]]  # (placeholder, relation, partition or None: all)


class Executor:
    """Runs one optimized query as stages on the Ray pool (see the module's doc)."""

    def __init__(
        self,
        engine_obj: SQLEngine,
        scans: list[tuple[TableIdent, PrunedScan]],
        kept: dict[str, _Kept],
        *,
        dry: bool = False,
    ):
        lh = engine_obj.lh
        self.engine_obj = engine_obj
        self.settings = lh.settings
        self.options = lh.warehouse.options if lh.warehouse.is_remote else None
        cpus = self.cpus = lh.compute.num_cpus()  # a call to Ray's GCS: once per query
        self.buckets = max(2, cpus)
        self.broadcast_max = lh.settings.broadcast_max_bytes
        self.tables = [
            Rel(
                schema=scan.snapshot.schema,
                scan=scan,
                label=f"{ident} (delta, version {scan.snapshot.version})",
                nbytes=sum(f.size for f in scan.files),
                fragments=split_files(scan.files, cpus) or [[]],
            )
            for ident, scan in scans
        ]
        self.kept: dict[str, _Kept] = kept
        self.dry = dry
        self.counter = itertools.count()
        self.ctes: dict[str, exp.Query] = {}
        self.cte_rels: dict[str, Rel] = {}
        self.subqueries: dict[str, Rel] = {}
        self.lines: list[str] = []
        self.stages = 0
        self.tasks = 0

    # -- queries and blocks ---------------------------------------------------------------
    def query(self, q: exp.Expr, top: bool) -> Rel:
        if isinstance(q, exp.Subquery):
            return self.query(q.this, top)
        with_ = q.args.get("with_")
        if with_ is not None:
            for cte in with_.expressions:
                self.ctes[cte.alias_or_name] = cte.this
        if isinstance(q, exp.SetOperation):
            return self.setop(q, top)
        if not isinstance(q, exp.Select):
            raise Refused(f"{type(q).__name__} queries")
        return self.block(q, top)

    def source_rel(self, node: exp.Expr) -> Rel:
        if isinstance(node, exp.Table) and not node.args.get("db"):
            name = node.name
            if name.startswith(_TABLE) and name[len(_TABLE) :].isdigit():
                return self.tables[int(name[len(_TABLE) :])]
            if name in self.ctes:
                if name not in self.cte_rels:
                    q = self.ctes[name]
                    self.cte_rels[name] = self._folded(q) or self.query(q, top=False)
                return self.cte_rels[name]
        if isinstance(node, exp.Subquery) and isinstance(node.this, exp.Query):
            return self._folded(node.this) or self.query(node.this, top=False)
        raise Refused(f"FROM {node.sql(dialect='duckdb')[:60]}")

    def block(self, sel: exp.Select, top: bool, spread: list[str] | None = None) -> Rel:
        """``sel`` planned and run as stages (``spread``: its output hash-partitioned on these
        output columns, by the stage that makes it)."""
        for key in ("qualify", "connect", "pivots", "laterals", "prewhere", "settings", "into"):
            if sel.args.get(key):
                raise Refused(f"{key.upper()} clauses")
        distinct = sel.args.get("distinct")
        if distinct is not None and distinct.args.get("on") is not None:
            raise Refused("DISTINCT ON")
        if any(w.find_ancestor(exp.Select) is sel for w in sel.find_all(exp.Window)):
            return self.windowed(sel, top)
        sel = sel.copy()
        sel.set("with_", None)  # its CTEs are known (``self.ctes``); its sources are placeholders
        from_ = sel.args.get("from_")
        if from_ is None:
            raise Refused("SELECT without FROM")
        sources = [Source(from_.this.alias_or_name, self.source_rel(from_.this))]
        where = sel.args.get("where")
        conds = _conjuncts(where.this if where is not None else None)
        seen_left = False
        for join in sel.args.get("joins") or []:
            side, kind = (join.side or "").upper(), (join.kind or "").upper()
            if join.args.get("using") or join.args.get("method"):
                raise Refused("JOIN … USING / NATURAL joins")
            alias = join.this.alias_or_name
            if side == "LEFT" and kind in ("", "OUTER"):
                seen_left = True
                on = join.args.get("on")
                sources.append(Source(alias, self.source_rel(join.this), on or exp.true()))
            elif not side and kind in ("", "INNER", "CROSS"):
                if seen_left:
                    raise Refused("an inner join after a LEFT JOIN")
                sources.append(Source(alias, self.source_rel(join.this)))
                conds += _conjuncts(join.args.get("on"))
            else:
                raise Refused(f"{(side + ' ' + kind).strip()} joins")
        conds += _implied(conds)
        if len({s.alias for s in sources}) != len(sources):
            raise Refused("a source alias used twice")
        sources, conds = _inner_lefts(sources, conds)
        sel.set("from_", None)
        sel.set("joins", None)
        sel.set("where", None)
        b = Block(sources, conds, sel)
        self._expression_subqueries(b)
        return self.plan(self._restore(b), top, spread)

    def _restore(self, b: Block) -> Block:
        """``b`` with its kept subqueries (``_Kept``) back in its conditions, their tables as
        sources (``Source.sub``) and one correlation per table as a link."""
        sources, links, conds = list(b.sources), list(b.links), list(b.conds)
        around = {s.alias for s in b.sources}
        for i, cond in enumerate(b.conds):
            for call in list(cond.find_all(exp.Anonymous)):
                kept = self.kept.get(str(call.this))
                if kept is None:
                    continue
                args = dict(zip(kept.outer, call.expressions, strict=True))
                node = kept.node.copy().transform(
                    lambda n, args=args: (
                        args[n.sql()].copy() if isinstance(n, exp.Column) and n.sql() in args else n
                    )
                )
                if call is cond:
                    conds[i] = node
                else:
                    call.replace(node)
                shown = node.sql(dialect="duckdb")
                self.lines.append(
                    "Kept correlated subquery (evaluated in the stage that filters on it, its "
                    f"tables partitioned with the outer rows): {shown[:160]}"
                )
                where = node.this.args.get("where")
                conjs = _conjuncts(where.this if where is not None else None)
                for j in node.this.args.get("joins") or []:
                    conjs += _conjuncts(j.args.get("on"))
                for alias, index in sorted(kept.tables.items()):
                    link = next((x for c in conjs if (x := _link(c, {alias}, around))), None)
                    if link is not None:
                        links.append(exp.EQ(this=link[0].copy(), expression=link[1].copy()))
                    own = [c.copy() for c in conjs if _aliases(c) == {alias}]
                    sources.append(Source(alias, self.tables[index], sub=True, filters=own))
        b = replace(b, sources=sources, conds=conds, links=links)
        calls = [n for x in b.parts_sql() for n in x.find_all(exp.Anonymous)]
        if any(str(n.this).startswith(_KEEP) for n in calls):
            raise _Unkept("a kept subquery outside the WHERE clause")
        return b

    def _expression_subqueries(self, b: Block) -> None:
        """Uncorrelated subqueries in expressions run first; their rows are broadcast. One
        over small tables only (``_inline``) stays in its expression instead, its tables
        broadcast to the tasks that evaluate it (no stage of its own)."""
        for node in b.parts_sql():
            for sub in list(node.find_all(exp.Select)):
                above = sub.find_ancestor(exp.Select)
                if sub is b.sel or (above is not None and above is not b.sel):
                    continue  # nested deeper: handled with its parent
                defined = {t.alias_or_name for t in sub.find_all(exp.Table)}
                defined |= {s.alias_or_name for s in sub.find_all(exp.Subquery)}
                defined |= {c.alias_or_name for c in sub.find_all(exp.CTE)}
                if any(c.table and c.table not in defined for c in sub.find_all(exp.Column)):
                    raise Refused("correlated subqueries")
                if self._inline(b, sub):
                    continue
                name = f"__mx_sq_{uuid.uuid4().hex[:12]}"
                self.subqueries[name] = self.query(sub, top=False)
                sub.replace(exp.select("*").from_(exp.Table(this=exp.to_identifier(name, True))))

    def _inline(self, b: Block, sub: exp.Select) -> bool:
        """``sub`` (uncorrelated) kept in its expression when it is small (``_small_select``):
        its tables become hidden sources of ``b``, broadcast to the tasks evaluating it."""
        rels = self._small_select(sub)
        if rels is None:
            return False
        b.sources += [Source(a, r, sub=True) for a, r in rels.items()]
        self.lines.append(
            "Uncorrelated subquery kept in its expression (its tables broadcast): "
            + sub.sql(dialect="duckdb")[:160]
        )
        return True

    def _folded(self, q: exp.Expr) -> Rel | None:
        """A derived table or CTE that is small (``_small_select``) as an inline relation: its
        SQL goes into the FROM of the stages that read it, its tables broadcast to them (no
        stage of its own)."""
        if not isinstance(q, exp.Select) or q.args.get("with_"):
            return None
        q = q.copy()
        rels = self._small_select(q)
        if rels is None:
            return None
        text = q.sql(dialect="duckdb")
        schema = self._bind_schema(
            text,
            {t.name: r.schema for t in q.find_all(exp.Table) for r in [rels[t.alias_or_name]]},
        )
        has_agg = q.args.get("group") is None and any(p.find(exp.AggFunc) for p in q.expressions)
        cols: dict[str, set[str]] = {}
        for c in q.find_all(exp.Column):
            cols.setdefault(c.table, set()).add(c.name)
        size = sum(r.estimate(cols.get(a, set())) for a, r in rels.items())
        size = min(size, 1024) if has_agg else size
        self.lines.append("Derived table folded into its readers: " + text[:160])
        return Rel(schema=schema, label="folded derived table", nbytes=size, inline=q, inlined=rels)

    def _small_select(self, sub: exp.Select) -> dict[str, Rel] | None:
        """When ``sub`` is one SELECT over table references (nothing nested) whose columns are
        together small (broadcast, and at most ``_SPLIT_MIN``: every task that reads it runs
        it): its tables by alias, the aliases renamed ``__mx_s<i>`` (in ``sub``, in place)."""
        if len(list(sub.find_all(exp.Select))) != 1 or sub.find(exp.Window, exp.Subquery):
            return None
        if any(str(n.this).startswith(_KEEP) for n in sub.find_all(exp.Anonymous)):
            return None
        tables = list(sub.find_all(exp.Table))
        if not tables or any(
            t.args.get("db")
            or not (
                (t.name.startswith(_TABLE) and t.name[len(_TABLE) :].isdigit())
                or t.name in self.ctes
            )
            for t in tables
        ):
            return None
        rels = {t.alias_or_name: self.source_rel(t) for t in tables}  # runs a CTE if need be
        if len(rels) != len(tables) or any(r.inline is not None for r in rels.values()):
            return None
        cols: dict[str, set[str]] = {}
        for c in sub.find_all(exp.Column):
            cols.setdefault(c.table, set()).add(c.name)
        limit = min(_SPLIT_MIN, self.broadcast_max)
        if sum(r.estimate(cols.get(a, set())) for a, r in rels.items()) > limit:
            return None
        names = {a: f"__mx_s{next(self.counter)}" for a in sorted(rels)}
        for t in tables:
            t.set("alias", exp.TableAlias(this=exp.to_identifier(names[t.alias_or_name], True)))
        for c in sub.find_all(exp.Column):
            if c.table in names:
                c.set("table", exp.to_identifier(names[c.table], True))
        return {names[a]: r for a, r in sorted(rels.items())}

    def _bind_schema(self, text: str, inputs: dict[str, pa.Schema]) -> pa.Schema:
        """The schema of ``text`` bound over empty tables named as ``inputs``."""
        return self._bound(text, inputs)[0]

    def _bound(self, text: str, inputs: dict[str, pa.Schema]) -> tuple[pa.Schema, list[str]]:
        """The schema and DuckDB column types of ``text`` bound over empty ``inputs``."""
        cur = self.engine_obj._cursor([])
        try:
            for name, schema in inputs.items():
                cur.register(name, schema.empty_table())
            rel = cur.sql(text)
            return rel.to_arrow_table().schema, [str(t) for t in rel.types]
        except duckdb.Error as e:
            raise Refused(f"the query does not bind ({str(e).splitlines()[0]})") from None
        finally:
            cur.close()

    # -- set operations and window functions ------------------------------------------------
    def shuffle(
        self, label: str, rel: Rel, cols: list[exp.Expr], keys: list[str], types: list[str | None]
    ) -> Rel:
        """A stage output ``rel`` as ``cols`` (over its columns), hash-partitioned on the
        output columns ``keys`` (equal keys, NULLs included, meet in one bucket)."""
        ph = self._ph()
        sel = exp.Select(expressions=cols)
        sel.set("from_", exp.From(this=exp.Table(this=exp.to_identifier(ph, True))))
        key_sql = _hash_sql([_col(k).sql("duckdb") for k in keys], types, self.buckets)
        rel = _padded(rel, 1)
        tasks = [_Task([(ph, rel, i)]) for i in range(len(rel.parts))]
        out = self.run(label, sel, tasks, key_sql, self.buckets)
        out.key = keys[0] if len(keys) == 1 else None
        return out

    def setop(self, q: exp.SetOperation, top: bool) -> Rel:
        """UNION, INTERSECT, EXCEPT (ALL or not): each side planned as a query of its own, its
        rows cast to the types the operation gives them (bound over empty inputs). UNION ALL
        concatenates the sides (task i reads partition i of each); the others hash-partition
        both sides on all columns first (equal rows, NULLs included, meet in one bucket) and
        run the operation per bucket. ORDER BY/LIMIT go on top as for a block (``output``)."""
        if any(q.args.get(k) for k in ("by_name", "side", "kind", "on")):
            raise Refused("UNION BY NAME")
        ops = {exp.Union: "UNION", exp.Intersect: "INTERSECT", exp.Except: "EXCEPT"}
        if type(q) not in ops:
            raise Refused(f"{type(q).__name__} set operations")
        distinct = q.args.get("distinct") is not False
        word = ops[type(q)] + ("" if distinct else " ALL")
        sides = [self.query(q.this, top=False), self.query(q.expression, top=False)]
        names = sides[0].schema.names
        if any(len({c.lower() for c in r.schema.names}) != len(r.schema) for r in sides):
            raise Refused("a set operation with duplicate column names")
        phs = [self._ph() for _ in sides]
        types = self._bound(
            f'SELECT * FROM "{phs[0]}" {word} SELECT * FROM "{phs[1]}"',
            {ph: r.schema for ph, r in zip(phs, sides, strict=True)},
        )[1]

        def cast(rel: Rel) -> list[exp.Expr]:
            """``rel``'s columns cast to the operation's types, named as its first side's."""
            have = self._bound('SELECT * FROM "t"', {"t": rel.schema})[1]
            cols: list[exp.Expr] = []
            for col, got, want, name in zip(rel.schema.names, have, types, names, strict=True):
                node: exp.Expr = _col(col)
                if got != want:
                    try:
                        node = exp.Cast(this=node, to=exp.DataType.build(want, dialect="duckdb"))
                    except (SqlglotError, ValueError) as e:
                        raise Refused(f"a set operation's column type {want} ({e})") from None
                cols.append(node.as_(name, quoted=True))
            return cols

        if word != "UNION ALL":
            sides = [
                self.shuffle(
                    f"shuffle {word} side {i + 1} on all columns", r, cast(r), names, [*types]
                )
                for i, r in enumerate(sides)
            ]
            self.lines.append(f"{word}: both sides hash-partitioned on all columns, per bucket:")
        else:
            self.lines.append("UNION ALL: the sides' partitions concatenated (cast alike):")
        n = max(max(1, len(r.parts)) for r in sides)
        sides = [_padded(r, n) for r in sides]
        selects = []
        for ph, rel in zip(phs, sides, strict=True):
            one = exp.Select(expressions=cast(rel))
            one.set("from_", exp.From(this=exp.Table(this=exp.to_identifier(ph, True))))
            selects.append(one)
        node = type(q)(this=selects[0], expression=selects[1], distinct=distinct)
        body = exp.Subquery(this=node, alias=exp.TableAlias(this=exp.to_identifier(_SET, True)))
        sel = exp.Select(expressions=[_col(n, _SET).as_(n, quoted=True) for n in names])
        for key in ("order", "limit", "offset"):
            if q.args.get(key) is not None:
                sel.set(key, q.args[key].copy())
        b = Block([Source(ph, r) for ph, r in zip(phs, sides, strict=True)], [], sel, body=body)
        streams = dict(zip(phs, sides, strict=True))
        return self.output(b, streams, set(), top, n, label=f"{word} per partition")

    def windowed(self, sel: exp.Select, top: bool) -> Rel:
        """A SELECT with window functions in two steps. Its rows: the block without windows,
        ORDER BY, LIMIT and DISTINCT, projecting the columns, aggregates and PARTITION BY keys
        the rest needs (``__mx_e<i>``), planned as any block. Then the windows over those
        rows, hash-partitioned on the PARTITION BY keys every window shares (gathered into one
        task on the pool when there is none), with ORDER BY/LIMIT/DISTINCT on top
        (``output``)."""
        if sel.args.get("windows"):
            raise Refused("named windows (WINDOW clauses)")
        exprs: dict[str, tuple[str, exp.Expr]] = {}  # SQL → (its column, the expression)
        keysets: list[set[str]] = []  # per window: its PARTITION BY columns

        def ref(node: exp.Expr) -> exp.Expr:
            key = node.sql()
            if key not in exprs:
                exprs[key] = (f"__mx_e{len(exprs)}", node.copy())
            return _col(exprs[key][0], _WIN)

        def over(node: exp.Expr) -> exp.Expr:
            """``node`` evaluated over the rows: its columns and aggregates as references."""

            def swap(n: exp.Expr) -> exp.Expr:
                if isinstance(n, exp.Window):
                    return window(n)
                if isinstance(n, exp.Filter) and isinstance(n.this, exp.AggFunc):
                    return ref(n)
                if isinstance(n, exp.AggFunc | exp.Subquery | exp.Select) or (
                    isinstance(n, exp.Column) and n.table
                ):
                    return ref(n)
                return n

            return node.transform(swap)

        def call(f: exp.Expr) -> exp.Expr:
            """A window's function with its arguments evaluated over the rows."""
            f = f.copy()
            wrapper = isinstance(f, exp.Filter | exp.IgnoreNulls | exp.RespectNulls)
            for key, value in list(f.args.items()):
                if isinstance(value, exp.Expr):
                    f.set(key, call(value) if wrapper and key == "this" else over(value))
                elif isinstance(value, list):
                    f.set(key, [over(v) if isinstance(v, exp.Expr) else v for v in value])
            return f

        def window(w: exp.Window) -> exp.Expr:
            w = w.copy()
            w.set("this", call(w.this))
            parts = [ref(p) for p in w.args.get("partition_by") or []]
            w.set("partition_by", parts or None)
            if w.args.get("order") is not None:
                w.set("order", over(w.args["order"]))
            keysets.append({p.name for p in parts if isinstance(p, exp.Column)})
            return w

        outer = sel.copy()
        outer.set("expressions", [over(p) for p in sel.expressions])
        if sel.args.get("order") is not None:
            outer.set("order", over(sel.args["order"]))
        for arg in ("with_", "from_", "joins", "where", "group", "having"):
            outer.set(arg, None)
        rows_sel = sel.copy()
        for arg in ("order", "limit", "offset", "distinct"):
            rows_sel.set(arg, None)
        cols = [e.as_(name, quoted=True) for name, e in exprs.values()]
        rows_sel.set("expressions", cols or [exp.Literal.number(1).as_("__mx_e0", quoted=True)])
        if any(w.find_ancestor(exp.Select) is rows_sel for w in rows_sel.find_all(exp.Window)):
            raise Refused("window functions outside the SELECT list and ORDER BY")
        common = sorted(set.intersection(*keysets)) if keysets else []
        shown = ", ".join(text for text, (name, _) in exprs.items() if name in common)
        if common:
            self.lines.append(
                f"Window functions partitioned by {shown}: their rows hash-partitioned on it "
                "by the stage that makes them:"
            )
        rows = _padded(self.block(rows_sel, top=False, spread=common or None), 1)
        key = rows.key if common and rows.key in common else None
        if not common:
            self.lines.append(
                "Window functions without a common PARTITION BY: their rows gathered into one "
                "task on the pool (the coordinator when small):"
            )
            rows = replace(rows, parts=[[r for p in rows.parts for r in p]], key=None, bounds=None)
        pclass = {(_WIN, key)} if key else set()
        b = Block([Source(_WIN, rows)], [], outer)
        streams = {_WIN: rows}
        return self.output(b, streams, pclass, top, self._ntasks(streams), "window functions")

    # -- planning ---------------------------------------------------------------------------
    def is_big(self, b: Block, s: Source) -> bool:
        return s.rel.estimate(b.columns_of(s.alias)) > self.broadcast_max

    def classes(self, b: Block, *, inner: bool = False) -> list[set[tuple[str, str]]]:
        """Equivalence classes of columns from ``a.x = b.y`` conditions (inner and LEFT, or
        only the inner ones)."""
        parent: dict[tuple[str, str], tuple[str, str]] = {}

        def find(x: tuple[str, str]) -> tuple[str, str]:
            while parent.setdefault(x, x) != x:
                x = parent[x]
            return x

        eqs = [*b.conds, *b.links]
        for s in [] if inner else b.sources:
            eqs += _conjuncts(s.on)
        for c in eqs:
            if isinstance(c, exp.EQ) and isinstance(c.this, exp.Column):
                left, right = c.this, c.expression
                if (
                    isinstance(right, exp.Column)
                    and left.table
                    and right.table
                    and right.table != left.table
                ):
                    parent[find((left.table, left.name))] = find((right.table, right.name))
        groups: dict[tuple[str, str], set[tuple[str, str]]] = {}
        for x in list(parent):
            groups.setdefault(find(x), set()).add(x)
        return list(groups.values())

    def bigs(self, b: Block) -> set[str]:
        """The sources too large to broadcast, with the partners of a large LEFT JOINed side.
        With none, the largest inner source, if over ``_SPLIT_MIN`` (for parallelism)."""
        big = {s.alias for s in b.sources if self.is_big(b, s)}
        if not big:
            sizes = [(s.rel.estimate(b.columns_of(s.alias)), s.alias) for s in b.sources]
            size, alias = max(
                (x for x in sizes if _inner(b.source(x[1])) and b.source(x[1]).rel.inline is None),
                default=(0, ""),
            )
            return {alias} if size > _SPLIT_MIN else set()
        classes = self.classes(b, inner=True)
        for s in b.sources:
            if s.sub and s.alias in big:
                # A large table of a kept subquery: the outer rows it correlates with are
                # partitioned with it, on the correlation key (the large outer sources equal
                # to the correlated column, else that column's source).
                cls = next((c for c in classes if any(a == s.alias for a, _ in c)), set())
                outer = {a for a, _ in cls if a != s.alias and not b.source(a).sub}
                if not outer:
                    raise _Unkept(f"{s.alias} is large and not correlated by a key")
                plain = {a for a in outer if b.source(a).rel.inline is None}
                big |= (outer & big) or plain or outer
        before: set[str] = set()
        for s in b.sources:
            if s.on is not None and s.alias in big and not (big & before):
                # A large outer-joined side: its partners are partitioned too, never
                # broadcast (their unmatched rows would repeat in every task).
                partners = {
                    a
                    for c in _conjuncts(s.on)
                    if isinstance(c, exp.EQ) and s.alias in _aliases(c)
                    for a in _aliases(c)
                    if a in before
                }
                if not partners:
                    raise Refused("a large LEFT JOINed side without an equality key")
                big |= partners
            before.add(s.alias)
        return big

    def plan(self, b: Block, top: bool, spread: list[str] | None = None) -> Rel:
        while True:
            big = self.bigs(b)
            if not big:
                return self.finish(b, {}, set(), top, spread)
            if len(big) == 1 and _inner(b.source(next(iter(big)))):
                alias = next(iter(big))
                streams, pclass = self.single(b, alias)
                return self.finish(b, streams, pclass, top, spread)
            ranked = self.ranked_classes(b, big)
            full = [cls for cls in ranked if {a for a, _ in cls} >= big]
            if not full and any(b.source(a).sub for a in big):
                raise _Unkept("large tables of a kept subquery without a common key")
            inner = {s.alias for s in b.sources if _inner(s)} & big
            pair = next((c for c in ranked if len({a for a, _ in c} & inner) >= 2), None)
            if full:
                cls, aliases = full[0], big
            elif pair is not None:
                # The large inner sources that share the most common key are joined first.
                cls, aliases = pair, {a for a, _ in pair} & inner
            elif any(s.on is not None for s in b.sources) and len(inner) < len(big):
                # Large LEFT JOINed sides: the inner joins first, then those joins by key.
                b = self.inner_first(b)
                continue
            else:
                raise Refused("large tables joined without a common equality key")
            ranged = self.co_ranged(b, aliases, cls)
            if ranged is None:
                b, small = self.partition_all(b, aliases, cls)
                if small:
                    continue  # a side is small enough to broadcast once filtered: plan again
                ranged = {a: b.source(a).rel for a in aliases}
            streams = ranged
            if full:
                return self.finish(b, streams, cls, top, spread)
            b = self.join_first(b, aliases, cls, streams)

    # -- range co-partitioning from file statistics ---------------------------------------
    def _hashed(self, rel: Rel, cols: set[str]) -> bool:
        """Whether ``rel`` is an earlier stage's output hash-partitioned on one of ``cols``."""
        return rel.key in cols and rel.bounds is None and len(rel.parts) == self.buckets

    def _bounds(self, streams: dict[str, Rel]) -> tuple[int, ...] | None:
        return next((r.bounds for r in streams.values() if r.bounds is not None), None)

    def ranged(self, rel: Rel, column: str, bounds: tuple[int, ...] | None) -> Rel | None:
        """The scan ``rel`` split into ranges of its integer ``column`` (``bounds``, or cut
        from its own files in key order: equal bytes, one range per bucket), each range
        reading the files whose min/max statistics meet it, filtered to it. None without
        statistics, or when the ranges would read over 1.5x its bytes (files not clustered
        on the column)."""
        scan = rel.scan
        if scan is None or not scan.files or self._key_type(rel, column) != "BIGINT":
            return None
        phys = scan.snapshot.physical.get(column, column)
        spans: list[tuple[int, int, FileEntry]] = []
        for f in scan.files:
            lo, hi = f.stats_min.get(phys), f.stats_max.get(phys)
            if not isinstance(lo, int) or not isinstance(hi, int):
                return None
            spans.append((lo, hi, f))
        spans.sort(key=lambda x: (x[0], x[1]))
        total = sum(f.size for f in scan.files)
        if bounds is None:
            starts = list(itertools.accumulate([0] + [f.size for _, _, f in spans[:-1]]))
            cuts: list[int] = []
            for i in range(1, self.buckets if len(spans) > 1 else 0):
                target = total * i / self.buckets
                j = min(range(1, len(spans)), key=lambda j: abs(starts[j] - target))
                cuts.append(spans[j][0])
            if len(set(cuts)) != self.buckets - 1 or cuts != sorted(cuts) or cuts[0] <= spans[0][0]:
                return None  # a range would be empty: the files are not clustered on it
            bounds = tuple(cuts)
        edges: list[int | None] = [None, *bounds, None]
        order = {id(f): i for i, f in enumerate(scan.files)}
        frags = []
        for lo_edge, hi_edge in itertools.pairwise(edges):
            files = [
                f
                for lo, hi, f in spans
                if (lo_edge is None or hi >= lo_edge) and (hi_edge is None or lo < hi_edge)
            ]
            frags.append(sorted(files, key=lambda f: order[id(f)]))
        if sum(_share(lo, hi, f.size, edges) for lo, hi, f in spans) > 1.5 * total:
            return None  # DuckDB skips a file's row groups outside a range: bytes by key share
        c = _col(column).sql("duckdb")
        wheres = []
        for i in range(len(frags)):
            parts = [f"{c} >= {edges[i]}"] if edges[i] is not None else []
            parts += [f"{c} < {edges[i + 1]}"] if edges[i + 1] is not None else []
            where = " AND ".join(parts)
            wheres.append(f"({where} OR {c} IS NULL)" if i == 0 else where)
        return replace(rel, fragments=frags, key=column, bounds=bounds, wheres=wheres)

    def single(self, b: Block, alias: str) -> tuple[dict[str, Rel], set[tuple[str, str]]]:
        """The streams of a block with one large source: it, split by ranges of a join key
        together with the other sources on that key worth splitting (``_partners``), or of a
        GROUP BY column (the block then aggregates in place), when their files allow."""
        rel = b.source(alias).rel
        if rel.scan is None or rel.key is not None:
            return {alias: rel}, {(alias, rel.key)} if rel.key else set()
        group = b.sel.args.get("group")
        keys = [
            g.name
            for g in (group.expressions if group is not None else [])
            if isinstance(g, exp.Column) and g.table == alias
        ]
        best: tuple[tuple[bool, int], dict[str, Rel], set[tuple[str, str]]] | None = None
        for cls in self.classes(b, inner=True):
            for col in sorted(c for a, c in cls if a == alias):
                mine = self.ranged(rel, col, None)
                if mine is None:
                    continue
                streams = self._partners(b, {alias: mine}, cls)
                score = (col in keys, sum(r.nbytes for a, r in streams.items() if a != alias))
                if len(streams) > 1 and (best is None or score > best[0]):
                    best = (score, streams, cls)
        if best is not None:
            return best[1], best[2]
        for col in keys:
            mine = self.ranged(rel, col, None)
            if mine is not None:
                return {alias: mine}, {(alias, col)}
        return {alias: rel}, set()

    def _partners(
        self, b: Block, streams: dict[str, Rel], cls: set[tuple[str, str]]
    ) -> dict[str, Rel]:
        """``streams`` (range-partitioned on ``cls``) with the block's other inner scans on
        ``cls`` larger than ``_SPLIT_MIN`` split by the same ranges instead of broadcast."""
        bounds = self._bounds(streams)
        out = dict(streams)
        for a, c in sorted(cls):
            s = b.source(a)
            if a in out or s.on is not None or s.rel.scan is None or bounds is None:
                continue
            if s.rel.estimate(b.columns_of(a)) > _SPLIT_MIN:
                got = self.ranged(s.rel, c, bounds)
                if got is not None:
                    out[a] = got
        return out

    def co_ranged(
        self, b: Block, aliases: set[str], cls: set[tuple[str, str]]
    ) -> dict[str, Rel] | None:
        """``aliases`` co-partitioned by ranges of their columns in ``cls`` with no shuffle:
        earlier stages' outputs already range-partitioned alike, scans split by their files'
        statistics (ranges cut from the largest scan's files). None if any cannot be."""
        rels = {a: b.source(a).rel for a in aliases}
        cols = {a: sorted(c for x, c in cls if x == a) for a in aliases}
        found = set()
        for a, rel in rels.items():
            if rel.scan is None and (rel.bounds is None or rel.key not in cols[a]):
                return None
            if rel.bounds is not None:
                found.add(rel.bounds)
        if len(found) > 1:
            return None
        bounds = found.pop() if found else None
        if bounds is None:
            lead = max(rels, key=lambda a: (rels[a].nbytes, a))
            first = next((r for c in cols[lead] if (r := self.ranged(rels[lead], c, None))), None)
            if first is None:
                return None
            bounds = first.bounds
        out: dict[str, Rel] = {}
        for a, rel in rels.items():
            if rel.bounds is not None:
                out[a] = rel
                continue
            got = next((r for c in cols[a] if (r := self.ranged(rel, c, bounds))), None)
            if got is None:
                return None
            out[a] = got
        return self._partners(b, out, cls)

    def partition_all(
        self, b: Block, aliases: set[str], cls: set[tuple[str, str]]
    ) -> tuple[Block, bool]:
        """``aliases`` hash-partitioned on ``cls``, the likely smallest (once filtered) first.
        A side measured at most ``broadcast_max_bytes`` while others are still to be
        shuffled is broadcast instead (True: plan the block again)."""
        todo = sorted(aliases, key=lambda a: (self._ready(b, a, cls), self._guess(b, a), a))
        for i, alias in enumerate(todo):
            before = b.source(alias).rel
            rel = self.partition(b, alias, cls)
            b = replace(
                b, sources=[replace(s, rel=rel) if s.alias == alias else s for s in b.sources]
            )
            if rel is not before and i < len(todo) - 1 and rel.nbytes <= self.broadcast_max:
                return b, True
        return b, False

    def _ready(self, b: Block, alias: str, cls: set[tuple[str, str]]) -> int:
        rel = b.source(alias).rel
        cols = {c for a, c in cls if a == alias}
        return 0 if self._hashed(rel, cols) else 1

    def _guess(self, b: Block, alias: str) -> float:
        """A side's likely bytes after its filters and semi-join reductions (each halves it):
        only to choose which side to shuffle first."""
        s = b.source(alias)
        n = len(self._pushed(b, alias)) + len(self._reducers(b, alias))
        return s.rel.estimate(b.columns_of(alias)) / 2**n

    def ranked_classes(self, b: Block, big: set[str]) -> list[set[tuple[str, str]]]:
        """Join-key classes whose hashes agree on every large source, the ones covering most
        large sources (then: already partitioned on it) first."""
        rels = {s.alias: s.rel for s in b.sources}
        scored = []
        for cls in self.classes(b):
            members = {a for a, _ in cls} & big
            types = {self._key_type(rels[a], c) for a, c in cls if a in big}
            if len(types) > 1 or not members:
                continue  # hashes would not agree
            ready = sum(1 for a, c in cls if a in big and rels[a].key == c)
            scored.append(((len(members), ready), sorted(cls), cls))
        scored.sort(key=lambda x: (-x[0][0], -x[0][1], x[1]))
        return [cls for _, _, cls in scored]

    def _key_type(self, rel: Rel, column: str) -> str:
        t = rel.types().get(column.lower(), "?")
        return "BIGINT" if t in _INTEGERS else t

    def partition(self, b: Block, alias: str, cls: set[tuple[str, str]]) -> Rel:
        """``alias``'s rows hash-partitioned on its column in ``cls`` (a shuffle stage, unless
        they already are). Its own filters and semi-join reductions by the block's small
        filtered sides (``_reducers``) apply before the rows move."""
        s = b.source(alias)
        cols = sorted(c for a, c in cls if a == alias)
        if self._hashed(s.rel, set(cols)):
            return s.rel
        key = cols[0]
        needed = sorted(b.columns_of(alias) | {key})
        pushed = [c.copy() for c in self._pushed(b, alias)]
        ph = self._ph()
        source, inputs = self._from(alias, s.rel, ph, 0)
        for col, chain, col_of in self._reducers(b, alias):
            tables = []
            for a in chain:
                table, more = self._from(a, b.source(a).rel, self._ph(), None)
                tables.append(table)
                inputs += more
            sub = exp.Select(expressions=[_col(col_of[1], col_of[0])])
            sub.set("from_", exp.From(this=tables[0]))
            if len(tables) > 1:
                sub.set("joins", [exp.Join(this=t, kind="CROSS") for t in tables[1:]])
            among = [c.copy() for c in b.conds if _aliases(c) and _aliases(c) <= set(chain)]
            if among:
                sub.set("where", exp.Where(this=exp.and_(*among)))
            pushed.append(exp.In(this=_col(col, alias), query=exp.Subquery(this=sub)))
        sel = exp.Select(expressions=[_col(c, alias).as_(c, quoted=True) for c in needed])
        sel.set("from_", exp.From(this=source))
        if pushed:
            sel.set("where", exp.Where(this=exp.and_(*pushed)))
        key_sql = _hash_sql(
            [_col(key).sql("duckdb")], [s.rel.types().get(key.lower())], self.buckets
        )
        tasks = []
        for i in range(max(1, self._nparts(s.rel))):
            tasks.append(_Task([(n, r, i if n == ph else None) for n, r, _ in inputs]))
        out = self.run(f"shuffle {alias} on {key}", sel, tasks, key_sql, self.buckets)
        out.key = key
        return out

    def _from(
        self, alias: str, rel: Rel, ph: str, part: int | None
    ) -> tuple[exp.Expr, list[tuple[str, Rel, int | None]]]:
        """``rel`` as a FROM item named ``alias`` and the inputs it reads: the placeholder
        ``ph`` (its partition ``part``, or all of it), or a folded derived table's SQL over its
        tables (broadcast; a stage of one task runs it)."""
        name = exp.TableAlias(this=exp.to_identifier(alias, True))
        if rel.inline is None:
            return exp.Table(this=exp.to_identifier(ph, True), alias=name), [(ph, rel, part)]
        inner = {a: self._ph() for a in rel.inlined}
        query = exp.Subquery(this=_swap_tables(rel.inline, inner), alias=name)
        return query, [(inner[a], r, None) for a, r in rel.inlined.items()]

    def _pushed(self, b: Block, alias: str) -> list[exp.Expr]:
        """Conditions on ``alias`` alone (its WHERE part, or its LEFT JOIN condition's)."""
        s = b.source(alias)
        if s.sub:
            return s.filters
        return [
            c
            for c in (b.conds if s.on is None else _conjuncts(s.on))
            if _aliases(c) == {alias} and not c.find(exp.Select)
        ]

    def _reducers(self, b: Block, alias: str) -> list[tuple[str, list[str], tuple[str, str]]]:
        """Semi-join reductions of the inner source ``alias`` before it is shuffled: for each
        small inner source joined to it by ``alias.col = small.col`` that filters (conditions
        of its own, or joined to small sources that do, or an earlier stage's rows), ``(col,
        the small sources to join, (small, its column))`` — only rows of ``alias`` with a
        partner there can be in the block's result."""
        if b.source(alias).on is not None:
            return []
        small = {
            s.alias for s in b.sources if _inner(s) and s.alias != alias and not self.is_big(b, s)
        }
        edges: dict[str, set[str]] = {}
        for c in b.conds:
            names = _aliases(c)
            if len(names) == 2 and names <= small and not c.find(exp.Select):
                x, y = sorted(names)
                edges.setdefault(x, set()).add(y)
                edges.setdefault(y, set()).add(x)

        def filtering(a: str, seen: set[str]) -> list[str] | None:
            """``a`` and the small sources that make it filter, or None if it does not."""
            out = [a]
            for n in sorted(edges.get(a, set()) - seen):
                more = filtering(n, seen | {a, n})
                if more is not None:
                    out += [m for m in more if m not in out]
            own = self._pushed(b, a) or b.source(a).rel.scan is None
            return out if own or len(out) > 1 else None

        found = []
        used: set[str] = set()
        for cls in self.classes(b, inner=True):
            for col in sorted(c for a, c in cls if a == alias):
                for other, ocol in sorted(cls):
                    if other not in small or other in used:
                        continue
                    chain = filtering(other, {alias, other})
                    if chain is not None:
                        used.add(other)
                        found.append((col, chain, (other, ocol)))
        return found

    def inner_first(self, b: Block) -> Block:
        """The join of ``b``'s inner sources (planned as a block of its own) as one source."""
        aliases = {s.alias for s in b.sources if _inner(s)}
        inner = [c for c in b.conds if _aliases(c) <= aliases]
        rest = [c for c in b.conds if not any(c is x for x in inner)]
        others = [s for s in b.sources if s.alias not in aliases]
        needed = self._needed(b, aliases, rest, others)
        sub = Block(
            [s for s in b.sources if _inner(s)],
            inner,
            exp.Select(expressions=[_col(c, a).as_(f"{a}.{c}", quoted=True) for a, c in needed]),
        )
        return self._replace(b, aliases, self.plan(sub, top=False), rest, others)

    def _needed(
        self, b: Block, aliases: set[str], rest: list[exp.Expr], others: list[Source]
    ) -> list[tuple[str, str]]:
        """Columns of ``aliases`` that the rest of ``b`` uses."""
        outside: list[exp.Expr] = [*b.sel.expressions, *rest]
        for key in ("group", "having", "order"):
            if b.sel.args.get(key) is not None:
                outside.append(b.sel.args[key])
        outside += [s.on for s in others if s.on is not None]
        needed = sorted({(a, c) for a in aliases for c in b.columns_of(a, outside)})
        if not needed:
            a0 = sorted(aliases)[0]
            needed = [(a0, b.source(a0).rel.schema.names[0])]
        return needed

    def _replace(
        self, b: Block, aliases: set[str], rel: Rel, rest: list[exp.Expr], others: list[Source]
    ) -> Block:
        """``b`` with the sources ``aliases`` replaced by ``rel`` (their join)."""
        joined = f"__mx_j{self.stages}"
        flat = [Source(joined, rel)] + [
            replace(s, on=_flatten(s.on, aliases, joined) if s.on is not None else None)
            for s in others
        ]
        sel = _flatten(b.sel.copy(), aliases, joined)
        assert isinstance(sel, exp.Select)
        links = [_flatten(c, aliases, joined) for c in b.links]
        return Block(flat, [_flatten(c, aliases, joined) for c in rest], sel, links)

    def join_first(
        self, b: Block, aliases: set[str], cls: set[tuple[str, str]], streams: dict[str, Rel]
    ) -> Block:
        """The join of ``aliases`` (partitioned on ``cls`` in ``streams``) as one source of
        ``b``."""
        inner = [c for c in b.conds if _aliases(c) and _aliases(c) <= aliases]
        rest = [c for c in b.conds if not any(c is x for x in inner)]
        others = [s for s in b.sources if s.alias not in aliases]
        needed = self._needed(b, aliases, rest, others)
        sub = Block(
            [Source(a, streams[a]) for a in sorted(aliases)],
            inner,
            exp.Select(expressions=[_col(c, a).as_(f"{a}.{c}", quoted=True) for a, c in needed]),
        )
        sql, tasks = self.render(sub, streams)
        out = self.run(f"join {', '.join(sorted(aliases))}", sql, tasks, None, 1)
        member = next(((a, c) for a, c in sorted(cls) if a in aliases and (a, c) in needed), None)
        out.key = f"{member[0]}.{member[1]}" if member else None
        out.bounds = self._bounds(streams) if out.key else None
        return self._replace(b, aliases, out, rest, others)

    # -- the block's last stages ----------------------------------------------------------------
    def finish(
        self,
        b: Block,
        streams: dict[str, Rel],
        pclass: set[tuple[str, str]],
        top: bool,
        spread: list[str] | None = None,
    ) -> Rel:
        sel = b.sel
        group = sel.args.get("group")
        has_agg = group is not None or any(
            n.find(exp.AggFunc) for n in [*sel.expressions, sel.args.get("having") or exp.true()]
        )
        if group is not None and any(
            group.args.get(k) for k in ("rollup", "cube", "grouping_sets", "totals", "all")
        ):
            raise Refused("ROLLUP, CUBE, GROUPING SETS and GROUP BY ALL")
        ntasks = self._ntasks(streams)
        keyed = group is not None and any(
            isinstance(g, exp.Column) and (g.table, g.name) in pclass for g in group.expressions
        )
        if has_agg and ntasks > 1 and not keyed:
            b, streams, pclass = self.regroup(b, streams)
            ntasks = self._ntasks(streams)
        return self.output(b, streams, pclass, top, ntasks, spread=spread)

    def regroup(
        self, b: Block, streams: dict[str, Rel]
    ) -> tuple[Block, dict[str, Rel], set[tuple[str, str]]]:
        """The block's joined rows hash-partitioned by its GROUP BY (or gathered into one task
        for a global aggregate): a block over them aggregates per bucket. With only count, sum,
        min and max (no DISTINCT), each task aggregates its rows first and the partial
        aggregates move instead of the rows (``_partial``)."""
        cur = "__mx_rows"
        aliases = {s.alias for s in b.sources if not s.sub}
        sel = b.sel
        group = sel.args.get("group")
        keys = list(group.expressions) if group else []
        nout = self.buckets if keys else 1
        types: list[str | None] = []
        for g in keys:
            src = b.source(g.table) if isinstance(g, exp.Column) and g.table else None
            types.append(src.rel.types().get(g.name.lower()) if src else None)
        partial = self._partial(b, cur)
        if partial is not None:
            rows_sel, flat = partial
            names = [f"__mx_g{i}" for i in range(len(keys))]
            hashed = [_col(n).sql("duckdb") for n in names]
            label = "partial aggregate, " + ("partition by GROUP BY" if keys else "gather")
        else:
            outside: list[exp.Expr] = list(sel.expressions)
            for key in ("group", "having", "order"):
                if sel.args.get(key) is not None:
                    outside.append(sel.args[key])
            needed = sorted({(a, c) for a in aliases for c in b.columns_of(a, outside)})
            if not needed:
                s0 = b.sources[0]
                needed = [(s0.alias, s0.rel.schema.names[0])]
            rows_sel = exp.Select(
                expressions=[_col(c, a).as_(f"{a}.{c}", quoted=True) for a, c in needed]
            )
            names = [f"{g.table}.{g.name}" if isinstance(g, exp.Column) else "" for g in keys]
            hashed = [_flatten(g, aliases, None).sql("duckdb") for g in keys]
            flat = _flatten(sel, aliases, cur)  # type: ignore[assignment]
            label = "partition rows by GROUP BY" if keys else "gather rows for the aggregate"
        key_sql = _hash_sql(hashed, types, nout) if keys else None
        sql, tasks = self.render(Block(b.sources, b.conds, rows_sel), streams)
        out = self.run(label, sql, tasks, key_sql, nout, gather=not keys)
        pclass: set[tuple[str, str]] = set()
        if len(keys) == 1 and names[0]:
            out.key = names[0]
            pclass = {(cur, out.key)}
        assert isinstance(flat, exp.Select)
        # Tables of subqueries kept in the SELECT's expressions (HAVING) go on with it.
        used = {t.alias_or_name for t in flat.find_all(exp.Table)}
        carried = [s for s in b.sources if s.sub and s.alias in used]
        return Block([Source(cur, out), *carried], [], flat), {cur: out}, pclass

    def _partial(self, b: Block, cur: str) -> tuple[exp.Select, exp.Select] | None:
        """The per-task partial aggregate of ``b`` (GROUP BY keys as ``__mx_g<i>``, partial
        aggregates as ``__mx_a<j>``) and ``b``'s SELECT over those rows (as ``cur``), or None
        when an aggregate does not decompose (DISTINCT, avg, median, …)."""
        sel = b.sel
        group = sel.args.get("group")
        keys = list(group.expressions) if group else []
        if any(k.find(exp.Select) for k in keys):
            return None
        scopes: list[exp.Expr] = list(sel.expressions)
        scopes += [sel.args[k] for k in ("having", "order") if sel.args.get(k) is not None]
        cols: list[exp.Expr] = [k.copy().as_(f"__mx_g{i}", quoted=True) for i, k in enumerate(keys)]
        merged: dict[str, exp.Expr] = {}  # an aggregate's SQL (FILTER included) → its merge
        for scope in scopes:
            for node in scope.find_all(exp.AggFunc):
                if node.find_ancestor(exp.Select) not in (None, sel):
                    continue  # a kept subquery's own aggregate
                if not isinstance(node, exp.Sum | exp.Count | exp.Min | exp.Max):
                    return None
                if node.find(exp.Distinct) or node.args.get("expressions"):
                    return None
                whole = node.parent if isinstance(node.parent, exp.Filter) else node
                if whole.sql() in merged:
                    continue
                name = f"__mx_a{len(merged)}"
                cols.append(whole.copy().as_(name, quoted=True))
                fn = exp.Sum if isinstance(node, exp.Sum | exp.Count) else type(node)
                call: exp.Expr = fn(this=_col(name, cur))
                if isinstance(node, exp.Count):
                    call = exp.cast(call, "BIGINT")  # a sum of counts is a HUGEINT
                merged[whole.sql()] = call
        swaps = dict(merged)
        swaps.update({k.sql(): _col(f"__mx_g{i}", cur) for i, k in enumerate(keys)})

        def swap(n: exp.Expr) -> exp.Expr:
            if isinstance(n, _NOT_KEYS):
                return n
            hit = swaps.get(n.sql())
            return hit.copy() if hit is not None else n

        flat = sel.copy()
        flat.set("expressions", [p.transform(swap) for p in sel.expressions])
        for k in ("having", "order"):
            if sel.args.get(k) is not None:
                flat.set(k, sel.args[k].transform(swap))
        if keys:
            flat.set(
                "group", exp.Group(expressions=[_col(f"__mx_g{i}", cur) for i in range(len(keys))])
            )
        aliases = {s.alias for s in b.sources if not s.sub}
        if any(c.table in aliases for c in flat.find_all(exp.Column)):
            return None  # a column outside the aggregates and GROUP BY keys
        rows = exp.Select(expressions=cols)
        if keys:
            rows.set("group", exp.Group(expressions=[k.copy() for k in keys]))
        return rows, flat

    def output(
        self,
        b: Block,
        streams: dict[str, Rel],
        pclass: set[tuple[str, str]],
        top: bool,
        n: int,
        label: str | None = None,
        *,
        spread: list[str] | None = None,
    ) -> Rel:
        sel = b.sel.copy()
        projections = list(sel.expressions)
        order = sel.args.get("order")
        ordered: list[exp.Ordered] = list(order.expressions) if order is not None else []
        limit, offset = _int(sel, "limit"), _int(sel, "offset")
        distinct = sel.args.get("distinct") is not None
        keyed_distinct = any(
            isinstance(p.unalias(), exp.Column) and (p.unalias().table, p.unalias().name) in pclass
            for p in projections
        )
        gather = n > 1 and ((distinct and not keyed_distinct) or limit is not None or offset)
        names = (
            [f"__mx_p{i}" for i in range(len(projections))]
            if top
            else [p.alias_or_name for p in projections]
        )
        keys = [self._order_key(o.this, projections) for o in ordered] if (top or gather) else []
        cols: list[exp.Expr] = [
            p.unalias().as_(nm, quoted=True) for p, nm in zip(projections, names, strict=True)
        ]
        cols += [k.as_(f"__mx_k{i}", quoted=True) for i, k in enumerate(keys)]
        sel.set("expressions", cols)
        sel.set("order", None)
        sel.set("limit", None)
        sel.set("offset", None)
        final_order = [o.copy() for o in ordered]
        for i, o in enumerate(final_order):
            o.set("this", _col(f"__mx_k{i}"))
        if limit is not None and keys and (top or gather):
            sel.set("order", exp.Order(expressions=[o.copy() for o in final_order]))
            sel.set("limit", exp.Limit(expression=exp.Literal.number(limit + (offset or 0))))
        elif limit is not None and not ordered:
            sel.set("limit", exp.Limit(expression=exp.Literal.number(limit + (offset or 0))))
        b = replace(b, sel=sel)
        sql, tasks = self.render(b, streams)
        label = label or (
            "aggregate and project" if sel.args.get("group") or sel.find(exp.AggFunc) else "project"
        )
        if top and self._small_outputs(tasks):
            # Only earlier stages' small outputs (partial aggregates, mostly): the coordinator
            # runs the block's SQL over them with the final step, no stage of its own.
            text = sql.sql(dialect="duckdb")
            inputs = {n: r for n, r, _ in tasks[0].inputs}
            inputs.update({n: r for n, r in self.subqueries.items() if f'"{n}"' in text})
            size = _size(sum(r.nbytes for r in inputs.values()))
            self.lines.append(f"Coordinator: {label} over stage outputs ({size}), then:")
            shown = text
            for name in inputs:
                shown = shown.replace(f'"{name}"', "<in>")
            self.lines.append("  " + shown)
            spec = _Final(names, final_order, distinct, limit, offset, text, inputs)
            return Rel(schema=pa.schema([]), label=label, final=spec)
        if spread and not (top or gather):
            hashed = [_col(k).sql("duckdb") for k in spread]
            key_sql = _hash_sql(hashed, [None] * len(spread), self.buckets)
            out = self.run(label, sql, tasks, key_sql, self.buckets)
            out.key = spread[0] if len(spread) == 1 else None
        else:
            out = self.run(label, sql, tasks, None, 1)
            out.key = self._output_key(projections, names, pclass)
            out.bounds = self._bounds(streams) if out.key else None
        spec = _Final(names, final_order, distinct, limit, offset)
        if top:
            out.final = spec
            return out
        if gather:
            ph = self._ph()
            text = spec.sql(ph)
            out = self.run(
                "gather: order, limit, distinct", text, [_Task([(ph, out, None)])], None, 1
            )
        return out

    def _small_outputs(self, tasks: list[_Task]) -> bool:
        """Whether a stage's inputs are all earlier stages' outputs, together small enough to
        broadcast."""
        if not tasks:
            return False
        rels = {n: r for n, r, _ in tasks[0].inputs}
        return all(r.scan is None for r in rels.values()) and (
            sum(r.nbytes for r in rels.values()) <= self.broadcast_max
        )

    def _order_key(self, node: exp.Expr, projections: list[exp.Expr]) -> exp.Expr:
        if isinstance(node, exp.Literal) and not node.is_string and node.this.isdigit():
            return projections[int(node.this) - 1].unalias().copy()
        if isinstance(node, exp.Column) and not node.table:
            for p in projections:
                if p.alias_or_name == node.name:
                    return p.unalias().copy()
        return node.copy()

    def _output_key(
        self, projections: list[exp.Expr], names: list[str], pclass: set[tuple[str, str]]
    ) -> str | None:
        for p, nm in zip(projections, names, strict=True):
            inner = p.unalias()
            if isinstance(inner, exp.Column) and (inner.table, inner.name) in pclass:
                return nm
        return None

    # -- stages -----------------------------------------------------------------------------
    def _ph(self) -> str:
        return f"__mx_in_{uuid.uuid4().hex[:12]}"

    def _nparts(self, rel: Rel) -> int:
        return len(rel.fragments) if rel.scan is not None else len(rel.parts)

    def _ntasks(self, streams: dict[str, Rel]) -> int:
        counts = {self._nparts(r) for r in streams.values()}
        return max(counts) if counts else 1

    def render(self, b: Block, streams: dict[str, Rel]) -> tuple[exp.Select, list[_Task]]:
        """``b`` as one SELECT over placeholders, and its tasks: the streamed sources split
        (aligned by bucket), the others broadcast."""
        sel = b.sel.copy()
        if b.body is not None:
            sel.set("from_", exp.From(this=b.body.copy()))
            return sel, [
                _Task([(s.alias, streams[s.alias], i) for s in b.sources])
                for i in range(self._ntasks(streams))
            ]
        names = {s.alias: self._ph() for s in b.sources}
        names.update({a: self._ph() for s in b.sources for a in s.rel.inlined})

        def table(s: Source) -> exp.Expr:
            alias = exp.TableAlias(this=exp.to_identifier(s.alias, True))
            if s.rel.inline is not None:
                return exp.Subquery(this=_swap_tables(s.rel.inline, names), alias=alias)
            return exp.Table(this=exp.to_identifier(names[s.alias], True), alias=alias)

        inner = [s for s in b.sources if _inner(s)]
        outer = [s for s in b.sources if s.on is not None]
        sel.set("from_", exp.From(this=table(inner[0])))
        joins = [exp.Join(this=table(s), kind="CROSS") for s in inner[1:]]
        joins += [
            exp.Join(this=table(s), side="LEFT", on=s.on.copy()) for s in outer if s.on is not None
        ]
        sel.set("joins", joins or None)
        hidden = {s.alias for s in b.sources if s.sub}
        if hidden:
            sel = _swap_tables(sel, names)  # type: ignore[assignment]
        if b.conds:
            conds = [_swap_tables(c, names) if hidden else c.copy() for c in b.conds]
            sel.set("where", exp.Where(this=exp.and_(*conds)))
        n = self._ntasks(streams)
        tasks = []
        used = {t.alias_or_name for t in sel.find_all(exp.Table)}
        for i in range(n):
            inputs: list[tuple[str, Rel, int | None]] = []
            for s in b.sources:
                if s.sub and s.alias not in used:
                    continue  # its subquery is evaluated in another stage
                if s.rel.inline is not None:
                    inputs += [(names[a], r, None) for a, r in s.rel.inlined.items()]
                    continue
                part = i if s.alias in streams else None
                inputs.append((names[s.alias], streams.get(s.alias, s.rel), part))
            tasks.append(_Task(inputs))
        return sel, tasks

    def run(
        self,
        label: str,
        sql: exp.Select | str,
        tasks: list[_Task],
        key_sql: str | None,
        nout: int,
        *,
        gather: bool = False,
    ) -> Rel:
        """Run one stage: a task per entry of ``tasks``; each output is one partition (``nout``
        buckets of all tasks when hash-partitioned; one partition of everything with
        ``gather``)."""

        text = sql if isinstance(sql, str) else sql.sql(dialect="duckdb")
        for name, rel in self.subqueries.items():
            if f'"{name}"' in text:
                for t in tasks:
                    t.inputs.append((name, rel, None))
        remote = _remote_stage()
        limit = self.settings.duckdb_memory_limit
        handles = []
        places: list[Placement | None] = []
        read_files: list[list[FileEntry]] = []
        for t in tasks:
            specs: list[Input] = []
            args: list[Any] = []
            files: list[FileEntry] = []
            for name, rel, part in t.inputs:
                if rel.scan is not None:
                    chosen = rel.scan.files if part is None else rel.fragments[part]
                    if part is not None:
                        files += chosen
                    where = rel.wheres[part] if part is not None and rel.wheres else None
                    specs.append(Input(name, _slim(rel.scan, chosen), 0, rel.schema, where))
                else:
                    refs = (
                        [r for p in rel.parts for r in p] if part is None else list(rel.parts[part])
                    )
                    specs.append(Input(name, None, len(refs), rel.schema))
                    args += refs
            read_files.append(files)
            handles.append((specs, args))
        placed = [i for i, f in enumerate(read_files) if f]
        planned = plan_placement([read_files[i] for i in placed], zones=self.settings.storage_zones)
        places = [None] * len(tasks)
        for i, p in zip(placed, planned, strict=True):
            places[i] = p
        if self.dry:
            tree = sql if isinstance(sql, exp.Select) else None
            return self._planned(label, text, tree, tasks, places, key_sql, nout, gather=gather)
        outs = []
        t0 = time.perf_counter()
        # Stages run one at a time: a stage of fewer tasks than CPUs gives each the rest.
        threads = max(1, self.cpus // max(1, len(tasks)))
        for (specs, args), place in zip(handles, places, strict=True):
            opts: dict[str, Any] = {"num_returns": nout + 1}
            if place is not None:
                opts["scheduling_strategy"] = place.strategy
            outs.append(
                remote.options(**opts).remote(
                    text, specs, self.options, key_sql, nout, threads, limit, *args
                )
            )
        stats = _get([o[-1] for o in outs])
        for st, place in zip(stats, places, strict=True):
            for r in st["read"]:
                observe(r, place)
        self.stages += 1
        self.tasks += len(tasks)
        schema = stats[0]["schema"] if stats else pa.schema([])
        nbytes = sum(sum(st["bytes"]) for st in stats)
        rows = sum(sum(st["rows"]) for st in stats)
        if gather:
            parts = [[o[0] for o in outs]]
        elif nout > 1:
            parts = [[o[b] for o in outs] for b in range(nout)]
        else:
            parts = [[o[0]] for o in outs]
        took = time.perf_counter() - t0
        self._describe(label, text, tasks, places, key_sql, len(parts), rows, nbytes, took)
        if stats:
            self.lines.append(
                f"  tasks: setup up to {max(st['setup_ms'] for st in stats):.0f} ms, DuckDB up "
                f"to {max(st['run_ms'] for st in stats):.0f} ms"
            )
        return Rel(schema=schema, parts=parts, label=label, nbytes=nbytes)

    def _planned(
        self,
        label: str,
        text: str,
        sql: exp.Select | None,
        tasks: list[_Task],
        places: list[Placement | None],
        key_sql: str | None,
        nout: int,
        *,
        gather: bool,
    ) -> Rel:
        """A stage not run (EXPLAIN): its schema from binding ``text`` over empty inputs, its
        size a guess from its inputs' bytes (halved by a WHERE clause, a tenth after GROUP BY,
        nothing much for a global aggregate)."""
        schema = self._bind_schema(
            text, {name: rel.schema for name, rel, _ in (tasks[0].inputs if tasks else [])}
        )
        guess = sum(rel.nbytes for _, rel, _ in tasks[0].inputs) if tasks else 0
        if sql is not None and sql.args.get("where") is not None:
            guess //= 2
        if sql is not None and sql.args.get("group") is not None:
            guess //= 10
        elif sql is not None and any(
            a.find_ancestor(exp.Window) is None
            for p in sql.expressions
            for a in p.find_all(exp.AggFunc)
        ):
            guess = min(guess, 1024)
        self.stages += 1
        self.tasks += len(tasks)
        n = 1 if gather or not tasks else (nout if nout > 1 else len(tasks))
        self._describe(label, text, tasks, places, key_sql, n, None, guess, None)
        return Rel(schema=schema, parts=[[] for _ in range(n)], label=label, nbytes=guess)

    def _describe(
        self,
        label: str,
        text: str,
        tasks: list[_Task],
        places: list[Placement | None],
        key_sql: str | None,
        nout: int,
        rows: int | None,
        nbytes: int,
        seconds: float | None,
    ) -> None:
        if key_sql and nout > 1:
            out = f"hash-partitioned into {nout} buckets on {key_sql}"
        elif nout == 1:
            out = "gathered into 1 partition"
        else:
            out = f"{nout} partition(s)"
        size = (
            f"{rows} rows, {_size(nbytes)}, {seconds * 1000:.0f} ms"
            if rows is not None and seconds is not None
            else f"estimated {_size(nbytes)}"
        )
        self.lines.append(
            f"Stage {self.stages}: {label}: {len(tasks)} task(s), output {out}; {size}"
        )
        first = tasks[0] if tasks else None
        if first is not None:
            for _, rel, part in first.inputs:
                if part is None:
                    how = "broadcast (every task reads all of it)"
                elif rel.scan is not None:
                    how = f"split into {len(rel.fragments)} fragment(s) of its files"
                    if rel.bounds is not None:
                        how += f" by ranges of {rel.key} (file statistics)"
                else:
                    how = f"partitioned ({len(rel.parts)} parts" + (
                        f", {'ranges of' if rel.bounds else 'hashed on'} {rel.key})"
                        if rel.key
                        else ")"
                    )
                what = rel.label if rel.scan is not None else f"stage output ({rel.label})"
                self.lines.append(f"  input {what}: {how}, {_size(rel.nbytes)}")
        for i, place in enumerate(places):
            if place is not None:
                self.lines.append(f"  task {i}: placement: {place.describe()}")
        shown = text
        for name in [n for t in tasks[:1] for n, _, _ in t.inputs]:
            shown = shown.replace(f'"{name}"', "<in>")
        self.lines.append("  per task: " + shown)


@dataclass
class _Final:
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
        cols = ", ".join(_col(n).sql("duckdb") for n in self.names)
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


def _int(sel: exp.Query, key: str) -> int | None:
    node = sel.args.get(key)
    if node is None:
        return None
    value = node.expression if isinstance(node, exp.Limit | exp.Offset) else node
    if isinstance(value, exp.Literal) and not value.is_string and value.this.isdigit():
        return int(value.this)
    raise Refused("LIMIT/OFFSET that is not an integer constant")


def _get(refs: list[Any]) -> list[Any]:
    return gather(refs, "a stage task")


# -- entry point --------------------------------------------------------------------------------
_OPTIMIZED: LRU[tuple[Any, ...], tuple[exp.Expr, dict[str, _Kept]] | str] = LRU(64)
_SCHEMAS: LRU[tuple[Any, ...], pa.Schema] = LRU(64)


def _optimize(
    tree: exp.Expr, scans: list[PrunedScan], keep: bool
) -> tuple[exp.Expr, dict[str, _Kept]]:
    """``tree`` with its table references renamed ``__mx_t<i>``, every column qualified and
    subqueries unnested (sqlglot's optimizer, without the rules that rewrite expressions and
    could change a result's types). With ``keep``, correlated subqueries that a partitioned
    stage can evaluate itself (``_keep_subqueries``) are not unnested: they stand as
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

    from matrixos.engine.sql import _table_refs

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
    for i, (node, scan) in enumerate(zip(_table_refs(work), scans, strict=True)):
        name = f"{_TABLE}{i}"
        alias = node.args.get("alias") or exp.TableAlias(this=exp.to_identifier(node.name))
        node.replace(exp.Table(this=exp.to_identifier(name), alias=alias))
        schema[name] = {f.name: duckdb_type(f.type) for f in scan.snapshot.schema}
    kept: dict[str, _Kept] = {}
    if keep:
        work = qualify.qualify(work, schema=schema, dialect="duckdb")
        kept = _keep_subqueries(work)
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
    out: tuple[exp.Expr, dict[str, _Kept]] | str
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
class _Kept:
    """A correlated subquery left in its condition: its tables' aliases renamed
    ``__mx_h<i>_<j>`` (unique in the query), evaluated by DuckDB in the stage that evaluates
    the condition, its tables partitioned with the outer rows on a correlation key."""

    node: exp.Expr  # the EXISTS, or the scalar subquery
    outer: list[str]  # its outer column references (SQL), the placeholder's arguments
    tables: dict[str, int]  # hidden alias → index of the table reference (``__mx_t<i>``)


_KEEP = "__MX_KEEP_"
_COMPARISONS = (exp.EQ, exp.NEQ, exp.GT, exp.GTE, exp.LT, exp.LTE)


def _keep_subqueries(tree: exp.Expr) -> dict[str, _Kept]:
    """Correlated ``EXISTS``/``NOT EXISTS`` and scalar aggregate subqueries in a WHERE clause
    replaced by placeholders (see ``_Kept``): a plain SELECT over table references (inner
    joins only, nothing nested, no GROUP BY/LIMIT), correlated with the enclosing SELECT's
    sources by at least one ``inner.k = outer.c`` conjunct."""
    kept: dict[str, _Kept] = {}
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
            and t.name.startswith(_TABLE)
            and t.name[len(_TABLE) :].isdigit()
            for t in tables
        ):
            continue
        mine = {t.alias_or_name for t in tables if t is not None}
        around = {t.alias_or_name for t in _block_sources(outer)}
        refs = [c for c in inner.find_all(exp.Column) if c.table not in mine]
        if not refs or any(c.table not in around for c in refs):
            continue
        conds = _conjuncts(inner.args["where"].this if inner.args.get("where") else None)
        conds += [c for j in joins for c in _conjuncts(j.args.get("on"))]
        if not any(_link(c, mine, around) for c in conds):
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
        name = f"{_KEEP}{len(kept)}"
        kept[name] = _Kept(
            copy,
            [c.sql() for c in args],
            {names[t.alias_or_name]: int(t.name[len(_TABLE) :]) for t in tables if t},
        )
        node.replace(exp.Anonymous(this=name, expressions=[c.copy() for c in args]))
    return kept


def _block_sources(sel: exp.Select) -> list[exp.Expr]:
    from_ = sel.args.get("from_")
    return ([from_.this] if from_ is not None else []) + [
        j.this for j in sel.args.get("joins") or []
    ]


def _link(cond: exp.Expr, mine: set[str], around: set[str]) -> tuple[exp.Column, exp.Column] | None:
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


def _local_schema(
    engine_obj: SQLEngine, tree: exp.Expr, bound: list[tuple[TableIdent, PrunedScan]]
) -> pa.Schema:
    """Names and types the local engine gives the query: it, bound over empty tables
    (remembered per statement and table schemas)."""
    key = (tree.sql(dialect="duckdb"), tuple(str(scan.snapshot.schema) for _, scan in bound))
    hit = _SCHEMAS.get(key)
    if hit is not None:
        return hit
    empty = [(ident, replace(scan, files=[])) for ident, scan in bound]
    cur = engine_obj._cursor([])
    try:
        sql = engine_obj._install(cur, tree.copy(), empty)  # type: ignore[arg-type]
        schema = cur.sql(sql).to_arrow_table().schema
    finally:
        cur.close()
    _SCHEMAS.put(key, schema)
    return schema


def run_stages(
    engine_obj: SQLEngine,
    tree: exp.Expr,
    bound: list[tuple[TableIdent, PrunedScan | LanceScan]],
    functions: FunctionResults,
    *,
    explain: bool,
    analyze: bool = False,
) -> tuple[pa.Table | None, list[str]] | str:
    """Run ``tree`` as stages on the Ray pool: its result and EXPLAIN lines, or why not.
    ``explain`` without ``analyze`` plans the stages from estimates and runs nothing (no
    result)."""
    if functions.tables or functions.udfs:
        return "search or embedding functions"
    scans: list[tuple[TableIdent, PrunedScan]] = []
    for ident, scan in bound:
        if not isinstance(scan, PrunedScan):
            return "Lance tables"
        scans.append((ident, scan))
    if not scans:
        return "no tables"
    dry = explain and not analyze
    t0 = time.perf_counter()
    notes: list[str] = []
    try:
        schema = _local_schema(engine_obj, tree, scans)
        try:
            ex, rel = _execute(engine_obj, tree, scans, keep=True, dry=dry)
        except _Unkept as e:
            notes.append(f"Correlated subqueries unnested (not kept: {e})")
            ex, rel = _execute(engine_obj, tree, scans, keep=False, dry=dry)
    except Refused as e:
        return str(e)
    except duckdb.Error as e:
        return f"the query does not bind ({str(e).splitlines()[0]})"
    out = None if dry else _final(engine_obj, rel, schema)
    total = sum(f.size for _, s in scans for f in s.files)
    how = "planned from estimates, not run" if dry else "stages as run, sizes measured"
    lines = [f"Engine: ray (distributed, {ex.stages} stages, {ex.tasks} tasks; {how})"]
    for ident, scan in scans:
        from matrixos.engine.sql import _describe_pred

        pruning = f"{len(scan.files)} of {len(scan.snapshot.files)} files after pruning"
        if scan.predicates:
            pruning += " on " + ", ".join(_describe_pred(p) for p in scan.predicates)
        lines.append(
            f"Scan {ident} (delta, version {scan.snapshot.version}): {pruning}, "
            f"{_size(sum(f.size for f in scan.files))}"
        )
    lines += notes + ex.lines
    if out is None:
        lines.append(f"Final: merged on the coordinator (ORDER BY/LIMIT/DISTINCT); {_size(total)}")
    else:
        lines.append(
            f"Final: merged on the coordinator ({out.num_rows} rows; ORDER BY/LIMIT/DISTINCT), "
            f"{(time.perf_counter() - t0) * 1000:.0f} ms in all; {_size(total)} scanned"
        )
    return out, lines


def _execute(
    engine_obj: SQLEngine,
    tree: exp.Expr,
    scans: list[tuple[TableIdent, PrunedScan]],
    *,
    keep: bool,
    dry: bool,
) -> tuple[Executor, Rel]:
    optimized, kept = _optimize(tree, [s for _, s in scans], keep)
    ex = Executor(engine_obj, scans, kept, dry=dry)
    return ex, ex.query(optimized, top=True)


def _final(engine_obj: SQLEngine, rel: Rel, schema: pa.Schema) -> pa.Table:
    """The top block's partitions gathered and finished (``_Final``) on the coordinator."""
    final = rel.final
    assert final is not None
    sources = final.inputs if final.pre is not None else {"__mx_result": rel}
    names = list(sources)
    refs = [[r for p in sources[n].parts for r in p] for n in names]
    got = iter(_get([r for rs in refs for r in rs]))
    cur = engine_obj._cursor([])
    try:
        for name, rs in zip(names, refs, strict=True):
            parts = [next(got) for _ in rs]
            cur.register(
                name,
                pa.concat_tables(parts, promote_options="permissive")
                if parts
                else sources[name].schema.empty_table(),
            )
        if final.pre is not None:
            cur.register("__mx_result", cur.sql(final.pre).to_arrow_table())
        out = cur.sql(final.sql("__mx_result")).to_arrow_table()
    except duckdb.Error as e:
        from matrixos.engine.sql import _engine_error

        raise _engine_error(e, "") from e
    finally:
        cur.close()
    out = out.rename_columns(schema.names)
    return out if out.schema == schema else out.cast(schema)
