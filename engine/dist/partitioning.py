"""Partitioning for staged plans: how each source of a block is read by a stage's tasks
(broadcast, split by file ranges, co-partitioned by key ranges or hash buckets), and the
emission of a stage (``StageBuilder.run``) to a backend that estimates it (EXPLAIN) or runs it
on the pool.

The rules are those of ``engine.dist.stages`` (rules 4 and 5): a source of at most
``Settings.broadcast_max_bytes`` is broadcast; the large sources are co-partitioned on a join
key they share, by key ranges cut from the Delta files' min/max statistics when the files are
clustered on the key (no shuffle), else hash-partitioned by a shuffle stage.
"""

from __future__ import annotations

import itertools
import uuid
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

import duckdb
import pyarrow as pa
from sqlglot import exp

from matrixos.engine.dist.blocks import (
    INTEGER_TYPES,
    SPLIT_MIN,
    Block,
    KeptSubquery,
    Refused,
    Rel,
    Source,
    Unkept,
    aliases_in,
    column_ref,
    conjuncts,
    flatten_aliases,
    hash_sql,
    is_inner,
    range_share,
    swap_tables,
)
from matrixos.engine.dist.fragments import split_files
from matrixos.engine.dist.plan import Note, Stage, StageInput
from matrixos.engine.dist.runtime import Input, slim_scan
from matrixos.engine.filecache import Placement, plan_placement
from matrixos.engine.scan import FileEntry, PrunedScan

if TYPE_CHECKING:
    from matrixos.catalog import TableIdent
    from matrixos.engine.context import EngineSession


@dataclass
class Task:
    inputs: list[tuple[str, Rel, int | None]]  # (placeholder, relation, partition or None: all)


@dataclass
class PendingStage:
    """A stage ready to be estimated or run: its SQL, its tasks' inputs and placement."""

    label: str
    text: str  # per-task SQL over the inputs' placeholders
    tree: exp.Select | None  # the SQL as a tree, when it was built as one
    tasks: list[Task]
    specs: list[tuple[list[Input], list[Any]]]  # per task: its input specs and Arrow refs
    places: list[Placement | None]  # per task; None: it reads no table files
    key_sql: str | None  # hash-partitioning key of the output
    nout: int  # output buckets per task
    gather: bool  # all tasks' outputs as one partition


class StageBackend(Protocol):
    """What becomes of an emitted stage: estimated (planning) or run on the pool."""

    def materialize(self, builder: StageBuilder, stage: PendingStage) -> Rel: ...


class StageBuilder:
    """The state of one staged plan and the partitioning of blocks into stages.

    ``StagePlanner`` (``engine.dist.stages``) adds the query, block, set-operation, window and
    output rules on top.
    """

    def __init__(
        self,
        session: EngineSession,
        scans: list[tuple[TableIdent, PrunedScan]],
        kept: dict[str, KeptSubquery],
        *,
        cpus: int,
        backend: StageBackend,
    ):
        self.session = session
        self.settings = session.settings
        self.cpus = cpus
        self.buckets = max(2, cpus)
        self.broadcast_max = session.settings.broadcast_max_bytes
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
        self.kept: dict[str, KeptSubquery] = kept
        self.backend = backend
        self.counter = itertools.count()
        self.ctes: dict[str, exp.Query] = {}
        self.cte_rels: dict[str, Rel] = {}
        self.subqueries: dict[str, Rel] = {}
        self.steps: list[Stage | Note] = []
        self.stages = 0
        self.tasks = 0

    def note(self, text: str) -> None:
        self.steps.append(Note(text))

    def finish(
        self,
        b: Block,
        streams: dict[str, Rel],
        pclass: set[tuple[str, str]],
        top: bool,
        spread: list[str] | None = None,
    ) -> Rel:
        """The block's output stage(s) (``StagePlanner.finish``)."""
        raise NotImplementedError

    def bind_schema(self, text: str, inputs: dict[str, pa.Schema]) -> pa.Schema:
        """The schema of ``text`` bound over empty tables named as ``inputs``."""
        return self._bound(text, inputs)[0]

    def _bound(self, text: str, inputs: dict[str, pa.Schema]) -> tuple[pa.Schema, list[str]]:
        """The schema and DuckDB column types of ``text`` bound over empty ``inputs``."""
        cur = self.session.planning_cursor()
        try:
            for name, schema in inputs.items():
                cur.register(name, schema.empty_table())
            rel = cur.sql(text)
            return rel.to_arrow_table().schema, [str(t) for t in rel.types]
        except duckdb.Error as e:
            raise Refused(f"the query does not bind ({str(e).splitlines()[0]})") from None
        finally:
            cur.close()

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
            eqs += conjuncts(s.on)
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
        With none, the largest inner source, if over ``SPLIT_MIN`` (for parallelism)."""
        big = {s.alias for s in b.sources if self.is_big(b, s)}
        if not big:
            sizes = [(s.rel.estimate(b.columns_of(s.alias)), s.alias) for s in b.sources]
            size, alias = max(
                (
                    x
                    for x in sizes
                    if is_inner(b.source(x[1])) and b.source(x[1]).rel.inline is None
                ),
                default=(0, ""),
            )
            return {alias} if size > SPLIT_MIN else set()
        classes = self.classes(b, inner=True)
        for s in b.sources:
            if s.sub and s.alias in big:
                # A large table of a kept subquery: the outer rows it correlates with are
                # partitioned with it, on the correlation key (the large outer sources equal
                # to the correlated column, else that column's source).
                cls = next((c for c in classes if any(a == s.alias for a, _ in c)), set())
                outer = {a for a, _ in cls if a != s.alias and not b.source(a).sub}
                if not outer:
                    raise Unkept(f"{s.alias} is large and not correlated by a key")
                plain = {a for a in outer if b.source(a).rel.inline is None}
                big |= (outer & big) or plain or outer
        before: set[str] = set()
        for s in b.sources:
            if s.on is not None and s.alias in big and not (big & before):
                # A large outer-joined side: its partners are partitioned too, never
                # broadcast (their unmatched rows would repeat in every task).
                partners = {
                    a
                    for c in conjuncts(s.on)
                    if isinstance(c, exp.EQ) and s.alias in aliases_in(c)
                    for a in aliases_in(c)
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
            if len(big) == 1 and is_inner(b.source(next(iter(big)))):
                alias = next(iter(big))
                streams, pclass = self.single(b, alias)
                return self.finish(b, streams, pclass, top, spread)
            ranked = self.ranked_classes(b, big)
            full = [cls for cls in ranked if {a for a, _ in cls} >= big]
            if not full and any(b.source(a).sub for a in big):
                raise Unkept("large tables of a kept subquery without a common key")
            inner = {s.alias for s in b.sources if is_inner(s)} & big
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
        if sum(range_share(lo, hi, f.size, edges) for lo, hi, f in spans) > 1.5 * total:
            return None  # DuckDB skips a file's row groups outside a range: bytes by key share
        c = column_ref(column).sql("duckdb")
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
        ``cls`` larger than ``SPLIT_MIN`` split by the same ranges instead of broadcast."""
        bounds = self._bounds(streams)
        out = dict(streams)
        for a, c in sorted(cls):
            s = b.source(a)
            if a in out or s.on is not None or s.rel.scan is None or bounds is None:
                continue
            if s.rel.estimate(b.columns_of(a)) > SPLIT_MIN:
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
        return "BIGINT" if t in INTEGER_TYPES else t

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
            sub = exp.Select(expressions=[column_ref(col_of[1], col_of[0])])
            sub.set("from_", exp.From(this=tables[0]))
            if len(tables) > 1:
                sub.set("joins", [exp.Join(this=t, kind="CROSS") for t in tables[1:]])
            among = [c.copy() for c in b.conds if aliases_in(c) and aliases_in(c) <= set(chain)]
            if among:
                sub.set("where", exp.Where(this=exp.and_(*among)))
            pushed.append(exp.In(this=column_ref(col, alias), query=exp.Subquery(this=sub)))
        sel = exp.Select(expressions=[column_ref(c, alias).as_(c, quoted=True) for c in needed])
        sel.set("from_", exp.From(this=source))
        if pushed:
            sel.set("where", exp.Where(this=exp.and_(*pushed)))
        key_sql = hash_sql(
            [column_ref(key).sql("duckdb")], [s.rel.types().get(key.lower())], self.buckets
        )
        tasks = []
        for i in range(max(1, self._nparts(s.rel))):
            tasks.append(Task([(n, r, i if n == ph else None) for n, r, _ in inputs]))
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
        query = exp.Subquery(this=swap_tables(rel.inline, inner), alias=name)
        return query, [(inner[a], r, None) for a, r in rel.inlined.items()]

    def _pushed(self, b: Block, alias: str) -> list[exp.Expr]:
        """Conditions on ``alias`` alone (its WHERE part, or its LEFT JOIN condition's)."""
        s = b.source(alias)
        if s.sub:
            return s.filters
        return [
            c
            for c in (b.conds if s.on is None else conjuncts(s.on))
            if aliases_in(c) == {alias} and not c.find(exp.Select)
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
            s.alias for s in b.sources if is_inner(s) and s.alias != alias and not self.is_big(b, s)
        }
        edges: dict[str, set[str]] = {}
        for c in b.conds:
            names = aliases_in(c)
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
        aliases = {s.alias for s in b.sources if is_inner(s)}
        inner = [c for c in b.conds if aliases_in(c) <= aliases]
        rest = [c for c in b.conds if not any(c is x for x in inner)]
        others = [s for s in b.sources if s.alias not in aliases]
        needed = self._needed(b, aliases, rest, others)
        sub = Block(
            [s for s in b.sources if is_inner(s)],
            inner,
            exp.Select(
                expressions=[column_ref(c, a).as_(f"{a}.{c}", quoted=True) for a, c in needed]
            ),
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
            replace(s, on=flatten_aliases(s.on, aliases, joined) if s.on is not None else None)
            for s in others
        ]
        sel = flatten_aliases(b.sel.copy(), aliases, joined)
        assert isinstance(sel, exp.Select)
        links = [flatten_aliases(c, aliases, joined) for c in b.links]
        return Block(flat, [flatten_aliases(c, aliases, joined) for c in rest], sel, links)

    def join_first(
        self, b: Block, aliases: set[str], cls: set[tuple[str, str]], streams: dict[str, Rel]
    ) -> Block:
        """The join of ``aliases`` (partitioned on ``cls`` in ``streams``) as one source of
        ``b``."""
        inner = [c for c in b.conds if aliases_in(c) and aliases_in(c) <= aliases]
        rest = [c for c in b.conds if not any(c is x for x in inner)]
        others = [s for s in b.sources if s.alias not in aliases]
        needed = self._needed(b, aliases, rest, others)
        sub = Block(
            [Source(a, streams[a]) for a in sorted(aliases)],
            inner,
            exp.Select(
                expressions=[column_ref(c, a).as_(f"{a}.{c}", quoted=True) for a, c in needed]
            ),
        )
        sql, tasks = self.render(sub, streams)
        out = self.run(f"join {', '.join(sorted(aliases))}", sql, tasks, None, 1)
        member = next(((a, c) for a, c in sorted(cls) if a in aliases and (a, c) in needed), None)
        out.key = f"{member[0]}.{member[1]}" if member else None
        out.bounds = self._bounds(streams) if out.key else None
        return self._replace(b, aliases, out, rest, others)

    # -- the block's last stages ----------------------------------------------------------------

    # -- stages -----------------------------------------------------------------------------
    def run(
        self,
        label: str,
        sql: exp.Select | str,
        tasks: list[Task],
        key_sql: str | None,
        nout: int,
        *,
        gather: bool = False,
    ) -> Rel:
        """Emit one stage: a task per entry of ``tasks``; each output is one partition (``nout``
        buckets of all tasks when hash-partitioned; one partition of everything with
        ``gather``). The backend estimates it or runs it."""
        text = sql if isinstance(sql, str) else sql.sql(dialect="duckdb")
        for name, rel in self.subqueries.items():
            if f'"{name}"' in text:
                for t in tasks:
                    t.inputs.append((name, rel, None))
        specs: list[tuple[list[Input], list[Any]]] = []
        read_files: list[list[FileEntry]] = []
        for t in tasks:
            inputs: list[Input] = []
            args: list[Any] = []
            files: list[FileEntry] = []
            for name, rel, part in t.inputs:
                if rel.scan is not None:
                    chosen = rel.scan.files if part is None else rel.fragments[part]
                    if part is not None:
                        files += chosen
                    where = rel.wheres[part] if part is not None and rel.wheres else None
                    inputs.append(Input(name, slim_scan(rel.scan, chosen), 0, rel.schema, where))
                else:
                    refs = (
                        [r for p in rel.parts for r in p] if part is None else list(rel.parts[part])
                    )
                    inputs.append(Input(name, None, len(refs), rel.schema))
                    args += refs
            read_files.append(files)
            specs.append((inputs, args))
        placed = [i for i, f in enumerate(read_files) if f]
        planned = plan_placement([read_files[i] for i in placed], zones=self.settings.storage_zones)
        places: list[Placement | None] = [None] * len(tasks)
        for i, p in zip(placed, planned, strict=True):
            places[i] = p
        tree = sql if isinstance(sql, exp.Select) else None
        pending = PendingStage(label, text, tree, tasks, specs, places, key_sql, nout, gather)
        self.stages += 1
        self.tasks += len(tasks)
        return self.backend.materialize(self, pending)

    def record(
        self,
        stage: PendingStage,
        nout: int,
        nbytes: int,
        *,
        rows: int | None = None,
        ms: float | None = None,
        setup_ms: float | None = None,
        run_ms: float | None = None,
    ) -> None:
        """Add ``stage`` to the plan as estimated or as run (``nout``: its output partitions)."""
        tasks, key_sql = stage.tasks, stage.key_sql
        if key_sql and nout > 1:
            out = f"hash-partitioned into {nout} buckets on {key_sql}"
        elif nout == 1:
            out = "gathered into 1 partition"
        else:
            out = f"{nout} partition(s)"
        inputs: list[StageInput] = []
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
                inputs.append(StageInput(what, how, rel.nbytes))
        shown = stage.text
        for name in [n for t in tasks[:1] for n, _, _ in t.inputs]:
            shown = shown.replace(f'"{name}"', "<in>")
        self.steps.append(
            Stage(
                number=self.stages,
                label=stage.label,
                tasks=len(tasks),
                output=out,
                inputs=inputs,
                placements=[(i, p.describe()) for i, p in enumerate(stage.places) if p],
                sql=shown,
                nbytes=nbytes,
                rows=rows,
                ms=ms,
                setup_ms=setup_ms,
                run_ms=run_ms,
            )
        )

    def _ph(self) -> str:
        return f"__mx_in_{uuid.uuid4().hex[:12]}"

    def _nparts(self, rel: Rel) -> int:
        return len(rel.fragments) if rel.scan is not None else len(rel.parts)

    def _ntasks(self, streams: dict[str, Rel]) -> int:
        counts = {self._nparts(r) for r in streams.values()}
        return max(counts) if counts else 1

    def render(self, b: Block, streams: dict[str, Rel]) -> tuple[exp.Select, list[Task]]:
        """``b`` as one SELECT over placeholders, and its tasks: the streamed sources split
        (aligned by bucket), the others broadcast."""
        sel = b.sel.copy()
        if b.body is not None:
            sel.set("from_", exp.From(this=b.body.copy()))
            return sel, [
                Task([(s.alias, streams[s.alias], i) for s in b.sources])
                for i in range(self._ntasks(streams))
            ]
        names = {s.alias: self._ph() for s in b.sources}
        names.update({a: self._ph() for s in b.sources for a in s.rel.inlined})

        def table(s: Source) -> exp.Expr:
            alias = exp.TableAlias(this=exp.to_identifier(s.alias, True))
            if s.rel.inline is not None:
                return exp.Subquery(this=swap_tables(s.rel.inline, names), alias=alias)
            return exp.Table(this=exp.to_identifier(names[s.alias], True), alias=alias)

        inner = [s for s in b.sources if is_inner(s)]
        outer = [s for s in b.sources if s.on is not None]
        sel.set("from_", exp.From(this=table(inner[0])))
        joins = [exp.Join(this=table(s), kind="CROSS") for s in inner[1:]]
        joins += [
            exp.Join(this=table(s), side="LEFT", on=s.on.copy()) for s in outer if s.on is not None
        ]
        sel.set("joins", joins or None)
        hidden = {s.alias for s in b.sources if s.sub}
        if hidden:
            sel = swap_tables(sel, names)  # type: ignore[assignment]
        if b.conds:
            conds = [swap_tables(c, names) if hidden else c.copy() for c in b.conds]
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
            tasks.append(Task(inputs))
        return sel, tasks
