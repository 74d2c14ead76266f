"""Distributed multi-stage queries: joins, subqueries, aggregations, set operations and window
functions as Ray tasks.

``engine.dist.fragments`` plans a SELECT over one Delta table as fragments plus a merge.
Everything else with Delta tables (joins, subqueries, CTEs, DISTINCT or non-decomposable
aggregates, set operations, window functions) comes here. The planning rules, in order:

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

import uuid
from dataclasses import replace

import pyarrow as pa
from sqlglot import exp
from sqlglot.errors import SqlglotError

from matrixos.engine.dist.blocks import (
    KEEP_PREFIX,
    NOT_KEYS,
    SET_ROWS,
    SPLIT_MIN,
    TABLE_PREFIX,
    WINDOW_ROWS,
    Block,
    FinalStep,
    Refused,
    Rel,
    Source,
    Unkept,
    aliases_in,
    column_ref,
    conjuncts,
    correlation,
    flatten_aliases,
    hash_sql,
    implied,
    inner_lefts,
    int_arg,
    padded,
)
from matrixos.engine.dist.explain import format_size
from matrixos.engine.dist.partitioning import StageBuilder, Task

__all__ = ["StagePlanner", "Task"]


class StagePlanner(StageBuilder):
    """Plans one optimized query as stages (see the module's doc); each stage goes to the
    backend, which estimates it (EXPLAIN) or runs it on the pool."""

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
            if name.startswith(TABLE_PREFIX) and name[len(TABLE_PREFIX) :].isdigit():
                return self.tables[int(name[len(TABLE_PREFIX) :])]
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
        conds = conjuncts(where.this if where is not None else None)
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
                conds += conjuncts(join.args.get("on"))
            else:
                raise Refused(f"{(side + ' ' + kind).strip()} joins")
        conds += implied(conds)
        if len({s.alias for s in sources}) != len(sources):
            raise Refused("a source alias used twice")
        sources, conds = inner_lefts(sources, conds)
        sel.set("from_", None)
        sel.set("joins", None)
        sel.set("where", None)
        b = Block(sources, conds, sel)
        self._expression_subqueries(b)
        return self.plan(self._restore(b), top, spread)

    def _restore(self, b: Block) -> Block:
        """``b`` with its kept subqueries (``KeptSubquery``) back in its conditions, their tables as
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
                self.note(
                    "Kept correlated subquery (evaluated in the stage that filters on it, its "
                    f"tables partitioned with the outer rows): {shown[:160]}"
                )
                where = node.this.args.get("where")
                conjs = conjuncts(where.this if where is not None else None)
                for j in node.this.args.get("joins") or []:
                    conjs += conjuncts(j.args.get("on"))
                for alias, index in sorted(kept.tables.items()):
                    link = next((x for c in conjs if (x := correlation(c, {alias}, around))), None)
                    if link is not None:
                        links.append(exp.EQ(this=link[0].copy(), expression=link[1].copy()))
                    own = [c.copy() for c in conjs if aliases_in(c) == {alias}]
                    sources.append(Source(alias, self.tables[index], sub=True, filters=own))
        b = replace(b, sources=sources, conds=conds, links=links)
        calls = [n for x in b.parts_sql() for n in x.find_all(exp.Anonymous)]
        if any(str(n.this).startswith(KEEP_PREFIX) for n in calls):
            raise Unkept("a kept subquery outside the WHERE clause")
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
        self.note(
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
        schema = self.bind_schema(
            text,
            {t.name: r.schema for t in q.find_all(exp.Table) for r in [rels[t.alias_or_name]]},
        )
        has_agg = q.args.get("group") is None and any(p.find(exp.AggFunc) for p in q.expressions)
        cols: dict[str, set[str]] = {}
        for c in q.find_all(exp.Column):
            cols.setdefault(c.table, set()).add(c.name)
        size = sum(r.estimate(cols.get(a, set())) for a, r in rels.items())
        size = min(size, 1024) if has_agg else size
        self.note("Derived table folded into its readers: " + text[:160])
        return Rel(schema=schema, label="folded derived table", nbytes=size, inline=q, inlined=rels)

    def _small_select(self, sub: exp.Select) -> dict[str, Rel] | None:
        """When ``sub`` is one SELECT over table references (nothing nested) whose columns are
        together small (broadcast, and at most ``SPLIT_MIN``: every task that reads it runs
        it): its tables by alias, the aliases renamed ``__mx_s<i>`` (in ``sub``, in place)."""
        if len(list(sub.find_all(exp.Select))) != 1 or sub.find(exp.Window, exp.Subquery):
            return None
        if any(str(n.this).startswith(KEEP_PREFIX) for n in sub.find_all(exp.Anonymous)):
            return None
        tables = list(sub.find_all(exp.Table))
        if not tables or any(
            t.args.get("db")
            or not (
                (t.name.startswith(TABLE_PREFIX) and t.name[len(TABLE_PREFIX) :].isdigit())
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
        limit = min(SPLIT_MIN, self.broadcast_max)
        if sum(r.estimate(cols.get(a, set())) for a, r in rels.items()) > limit:
            return None
        names = {a: f"__mx_s{next(self.counter)}" for a in sorted(rels)}
        for t in tables:
            t.set("alias", exp.TableAlias(this=exp.to_identifier(names[t.alias_or_name], True)))
        for c in sub.find_all(exp.Column):
            if c.table in names:
                c.set("table", exp.to_identifier(names[c.table], True))
        return {names[a]: r for a, r in sorted(rels.items())}

    # -- set operations and window functions ------------------------------------------------
    def shuffle(
        self, label: str, rel: Rel, cols: list[exp.Expr], keys: list[str], types: list[str | None]
    ) -> Rel:
        """A stage output ``rel`` as ``cols`` (over its columns), hash-partitioned on the
        output columns ``keys`` (equal keys, NULLs included, meet in one bucket)."""
        ph = self._ph()
        sel = exp.Select(expressions=cols)
        sel.set("from_", exp.From(this=exp.Table(this=exp.to_identifier(ph, True))))
        key_sql = hash_sql([column_ref(k).sql("duckdb") for k in keys], types, self.buckets)
        rel = padded(rel, 1)
        tasks = [Task([(ph, rel, i)]) for i in range(len(rel.parts))]
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
                node: exp.Expr = column_ref(col)
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
            self.note(f"{word}: both sides hash-partitioned on all columns, per bucket:")
        else:
            self.note("UNION ALL: the sides' partitions concatenated (cast alike):")
        n = max(max(1, len(r.parts)) for r in sides)
        sides = [padded(r, n) for r in sides]
        selects = []
        for ph, rel in zip(phs, sides, strict=True):
            one = exp.Select(expressions=cast(rel))
            one.set("from_", exp.From(this=exp.Table(this=exp.to_identifier(ph, True))))
            selects.append(one)
        node = type(q)(this=selects[0], expression=selects[1], distinct=distinct)
        body = exp.Subquery(this=node, alias=exp.TableAlias(this=exp.to_identifier(SET_ROWS, True)))
        sel = exp.Select(expressions=[column_ref(n, SET_ROWS).as_(n, quoted=True) for n in names])
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
            return column_ref(exprs[key][0], WINDOW_ROWS)

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
            self.note(
                f"Window functions partitioned by {shown}: their rows hash-partitioned on it "
                "by the stage that makes them:"
            )
        rows = padded(self.block(rows_sel, top=False, spread=common or None), 1)
        key = rows.key if common and rows.key in common else None
        if not common:
            self.note(
                "Window functions without a common PARTITION BY: their rows gathered into one "
                "task on the pool (the coordinator when small):"
            )
            rows = replace(rows, parts=[[r for p in rows.parts for r in p]], key=None, bounds=None)
        pclass = {(WINDOW_ROWS, key)} if key else set()
        b = Block([Source(WINDOW_ROWS, rows)], [], outer)
        streams = {WINDOW_ROWS: rows}
        return self.output(b, streams, pclass, top, self._ntasks(streams), "window functions")

    # -- planning ---------------------------------------------------------------------------

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
            hashed = [column_ref(n).sql("duckdb") for n in names]
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
                expressions=[column_ref(c, a).as_(f"{a}.{c}", quoted=True) for a, c in needed]
            )
            names = [f"{g.table}.{g.name}" if isinstance(g, exp.Column) else "" for g in keys]
            hashed = [flatten_aliases(g, aliases, None).sql("duckdb") for g in keys]
            flat = flatten_aliases(sel, aliases, cur)  # type: ignore[assignment]
            label = "partition rows by GROUP BY" if keys else "gather rows for the aggregate"
        key_sql = hash_sql(hashed, types, nout) if keys else None
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
                call: exp.Expr = fn(this=column_ref(name, cur))
                if isinstance(node, exp.Count):
                    call = exp.cast(call, "BIGINT")  # a sum of counts is a HUGEINT
                merged[whole.sql()] = call
        swaps = dict(merged)
        swaps.update({k.sql(): column_ref(f"__mx_g{i}", cur) for i, k in enumerate(keys)})

        def swap(n: exp.Expr) -> exp.Expr:
            if isinstance(n, NOT_KEYS):
                return n
            hit = swaps.get(n.sql())
            return hit.copy() if hit is not None else n

        flat = sel.copy()
        flat.set("expressions", [p.transform(swap) for p in sel.expressions])
        for k in ("having", "order"):
            if sel.args.get(k) is not None:
                flat.set(k, sel.args[k].transform(swap))
        if keys:
            group_by = [column_ref(f"__mx_g{i}", cur) for i in range(len(keys))]
            flat.set("group", exp.Group(expressions=group_by))
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
        limit, offset = int_arg(sel, "limit"), int_arg(sel, "offset")
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
            o.set("this", column_ref(f"__mx_k{i}"))
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
            size = format_size(sum(r.nbytes for r in inputs.values()))
            self.note(f"Coordinator: {label} over stage outputs ({size}), then:")
            shown = text
            for name in inputs:
                shown = shown.replace(f'"{name}"', "<in>")
            self.note("  " + shown)
            spec = FinalStep(names, final_order, distinct, limit, offset, text, inputs)
            return Rel(schema=pa.schema([]), label=label, final=spec)
        if spread and not (top or gather):
            hashed = [column_ref(k).sql("duckdb") for k in spread]
            key_sql = hash_sql(hashed, [None] * len(spread), self.buckets)
            out = self.run(label, sql, tasks, key_sql, self.buckets)
            out.key = spread[0] if len(spread) == 1 else None
        else:
            out = self.run(label, sql, tasks, None, 1)
            out.key = self._output_key(projections, names, pclass)
            out.bounds = self._bounds(streams) if out.key else None
        spec = FinalStep(names, final_order, distinct, limit, offset)
        if top:
            out.final = spec
            return out
        if gather:
            ph = self._ph()
            text = spec.sql(ph)
            out = self.run(
                "gather: order, limit, distinct", text, [Task([(ph, out, None)])], None, 1
            )
        return out

    def _small_outputs(self, tasks: list[Task]) -> bool:
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
