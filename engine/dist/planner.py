"""The distributed planner: a query in, a ``DistributedPlan`` (or why it must run locally) out.

Pure: it reads the query, the scans' file statistics and the settings, binds SQL over empty
inputs on a file-less DuckDB connection, and runs nothing on the pool. ``EXPLAIN`` renders
its plan (``engine.dist.explain``); the runtime (``engine.dist.execute``) runs the same
fragment plan, or drives the same stage planner with measured sizes instead of estimates.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa
from sqlglot import exp

from matrixos._lru import LRU
from matrixos.engine.dist.blocks import Refused, Rel, Unkept, optimize_tree
from matrixos.engine.dist.explain import describe_scan
from matrixos.engine.dist.fragments import plan_fragments, split_files
from matrixos.engine.dist.partitioning import PendingStage, StageBackend, StageBuilder
from matrixos.engine.dist.plan import DistributedPlan, FragmentPlan, StagedPlan
from matrixos.engine.dist.stages import StagePlanner
from matrixos.engine.filecache import plan_placement
from matrixos.engine.scan import PrunedScan

if TYPE_CHECKING:
    from collections.abc import Callable

    from matrixos.catalog import TableIdent
    from matrixos.engine.context import QueryContext

_PLANS: LRU[tuple[Any, ...], FragmentPlan | str] = LRU(64)
_SCHEMAS: LRU[tuple[Any, ...], tuple[pa.Schema, list[str]]] = LRU(64)


def plan_query(query: QueryContext, cpus: int) -> DistributedPlan | str:
    """The query's distributed plan for a pool of ``cpus`` CPUs, or why it runs locally.

    A SELECT over one Delta table is a fragment plan; what that cannot be (joins, subqueries,
    set operations, windows, other aggregates) is a staged plan with estimated sizes.
    """
    frag = fragment_plan(query, cpus)
    if not isinstance(frag, str):
        return frag
    return staged_plan(query, cpus)


# -- single-table fragments ---------------------------------------------------------------------
def fragment_plan(query: QueryContext, cpus: int | Callable[[], int]) -> DistributedPlan | str:
    """The query as fragments over one table's files, placed next to the data, or why not
    (``cpus``: the pool's CPUs, or how to ask for them when a plan needs them)."""
    planned = _cached_fragments(query)
    if isinstance(planned, str):
        return planned
    fragments = split_files(planned.scan.files, cpus if isinstance(cpus, int) else cpus())
    # Points a write-ahead log acknowledged (catalog/pending.py) are one more fragment, with
    # no files: each fragment's partial result covers its rows, so the merge counts them
    # once. Not cached with the plan: they change from one statement to the next.
    pending = query.bound[0][1].pending if isinstance(query.bound[0][1], PrunedScan) else None
    if pending is not None and pending.replaces:
        return (
            f"{pending.table.num_rows} point(s) in the write-ahead log of {planned.ident} may "
            "replace committed ones (last write wins), which only one node can apply"
        )
    if pending is not None and set(pending.table.column_names) - set(
        planned.scan.snapshot.schema.names
    ):
        return f"new columns of {planned.ident} are still in the write-ahead log"
    planned = replace(planned, scan=replace(planned.scan, pending=pending))
    if pending is not None:
        fragments = [*fragments, []]
    zones = query.session.settings.storage_zones
    planned = replace(
        planned, fragments=fragments, placements=plan_placement(fragments, zones=zones)
    )
    return DistributedPlan(scans=[describe_scan(planned.ident, planned.scan)], fragments=planned)


def _cached_fragments(query: QueryContext) -> FragmentPlan | str:
    """``plan_fragments``, remembered per statement and table version (planning a TPC-H query
    takes 10-20 ms of sqlglot and DuckDB binding; a repeated dashboard query need not)."""
    bound, functions = query.bound, query.functions
    if functions.tables or functions.udfs or len(bound) != 1:
        return plan_fragments(query)
    scan = bound[0][1]
    if not isinstance(scan, PrunedScan):
        return plan_fragments(query)
    key = (
        str(bound[0][0]),
        query.tree.sql(dialect="duckdb"),
        scan.snapshot.location,
        scan.snapshot.version,
        tuple(f.path for f in scan.files),
    )
    hit = _PLANS.get(key)
    if hit is not None:
        return hit
    plan = plan_fragments(query)
    _PLANS.put(key, plan)
    return plan


# -- stages -------------------------------------------------------------------------------------
class Estimate:
    """The planning backend: a stage is not run; its schema comes from binding its SQL over
    empty inputs, its size is a guess from its inputs' bytes (halved by a WHERE clause, a
    tenth after GROUP BY, nothing much for a global aggregate)."""

    def materialize(self, builder: StageBuilder, stage: PendingStage) -> Rel:
        tasks, sql = stage.tasks, stage.tree
        inputs = tasks[0].inputs if tasks else []
        schema = builder.bind_schema(stage.text, {name: rel.schema for name, rel, _ in inputs})
        guess = sum(rel.nbytes for _, rel, _ in inputs)
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
        n = 1 if stage.gather or not tasks else (stage.nout if stage.nout > 1 else len(tasks))
        builder.record(stage, n, guess)
        return Rel(schema=schema, parts=[[] for _ in range(n)], label=stage.label, nbytes=guess)


def delta_scans(query: QueryContext) -> list[tuple[TableIdent, PrunedScan]] | str:
    """The query's Delta scans, or why it cannot run as stages."""
    if query.functions.tables or query.functions.udfs:
        return "search or embedding functions"
    scans: list[tuple[TableIdent, PrunedScan]] = []
    for ident, scan in query.bound:
        if not isinstance(scan, PrunedScan):
            return "Lance tables"
        if scan.pending is not None:  # the local engine unions them into the scan
            return f"points of {ident} still in the write-ahead log"
        scans.append((ident, scan))
    if not scans:
        return "no tables"
    return scans


def build_stages(
    query: QueryContext,
    scans: list[tuple[TableIdent, PrunedScan]],
    cpus: int,
    backend: StageBackend,
) -> tuple[StagePlanner, Rel, list[str]]:
    """Drive the stage planner over the optimized query, each stage going to ``backend``:
    correlated subqueries kept where a partitioned stage can evaluate them, else the whole
    query planned again with them unnested (the notes say so). Raises ``Refused`` (or a
    DuckDB error) for a query that cannot run as stages."""
    notes: list[str] = []
    try:
        planner, rel = _stages(query, scans, cpus, backend, keep=True)
    except Unkept as e:
        notes.append(f"Correlated subqueries unnested (not kept: {e})")
        planner, rel = _stages(query, scans, cpus, backend, keep=False)
    return planner, rel, notes


def _stages(
    query: QueryContext,
    scans: list[tuple[TableIdent, PrunedScan]],
    cpus: int,
    backend: StageBackend,
    *,
    keep: bool,
) -> tuple[StagePlanner, Rel]:
    optimized, kept = optimize_tree(query.tree, [s for _, s in scans], keep)
    planner = StagePlanner(query.session, scans, kept, cpus=cpus, backend=backend)
    return planner, planner.query(optimized, top=True)


def staged_plan(query: QueryContext, cpus: int) -> DistributedPlan | str:
    """The query as stages, planned from estimates (nothing runs), or why it runs locally."""
    scans = delta_scans(query)
    if isinstance(scans, str):
        return scans
    try:
        local_schema(query, scans)
        planner, _, notes = build_stages(query, scans, cpus, Estimate())
    except Refused as e:
        return str(e)
    except duckdb.Error as e:
        return f"the query does not bind ({str(e).splitlines()[0]})"
    return DistributedPlan(
        scans=[describe_scan(ident, scan) for ident, scan in scans],
        staged=StagedPlan(steps=planner.steps, notes=notes),
    )


def local_schema(query: QueryContext, bound: list[tuple[TableIdent, PrunedScan]]) -> pa.Schema:
    """Names and types the local engine gives the query: it, bound over empty tables
    (remembered per statement and table schemas)."""
    return _local_types(query, bound)[0]


def local_sql_types(query: QueryContext) -> list[str] | None:
    """Each result column's DuckDB type name as the local engine gives the query
    (``Result.sql_types``: a UUID or JSON column is a string in Arrow, and the PostgreSQL wire
    sends it as uuid or json only knowing this); None when a table reference is not a pruned
    scan (nothing to bind it over)."""
    bound = [(ident, scan) for ident, scan in query.bound if isinstance(scan, PrunedScan)]
    if len(bound) != len(query.bound):
        return None
    return _local_types(query, bound)[1]


def _local_types(
    query: QueryContext, bound: list[tuple[TableIdent, PrunedScan]]
) -> tuple[pa.Schema, list[str]]:
    tree = query.tree
    key = (tree.sql(dialect="duckdb"), tuple(str(scan.snapshot.schema) for _, scan in bound))
    hit = _SCHEMAS.get(key)
    if hit is not None:
        return hit
    empty = [(ident, replace(scan, files=[])) for ident, scan in bound]
    cur = query.session.cursor()
    try:
        sql = query.session.install(cur, tree.copy(), empty)  # type: ignore[arg-type]
        rel = cur.sql(sql)
        found = (rel.to_arrow_table().schema, [str(t) for t in rel.types])
    finally:
        cur.close()
    _SCHEMAS.put(key, found)
    return found
