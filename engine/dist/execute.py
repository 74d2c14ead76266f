"""Running distributed plans on the Ray pool: a fragment plan's tasks and merge, and the stage
planner driven with measured sizes (``RayStages``), then the coordinator's final step."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa

from matrixos.engine import duck
from matrixos.engine.dist.blocks import Refused, Rel
from matrixos.engine.dist.explain import describe_scan
from matrixos.engine.dist.merge import merge
from matrixos.engine.dist.partitioning import PendingStage, StageBuilder
from matrixos.engine.dist.plan import DistributedPlan, FragmentPlan, StagedPlan
from matrixos.engine.dist.planner import build_stages, delta_scans, local_schema
from matrixos.engine.dist.runtime import (
    FragmentError,
    gather,
    remote_fragment,
    remote_stage,
    slim_scan,
)
from matrixos.engine.filecache import ReadStats, observe
from matrixos.engine.usage import TaskUsage, report_usage
from matrixos.storage.warehouse import is_remote

if TYPE_CHECKING:
    from matrixos.engine.context import EngineSession, QueryContext
    from matrixos.errors import MatrixOSError


def task_error(session: EngineSession) -> Any:
    """How a task's DuckDB error reaches the user: as the local engine reports it, without the
    excerpt of the inlined scan."""

    def mapped(err: FragmentError) -> MatrixOSError:
        cls = getattr(duckdb, err.kind, None)
        if not (isinstance(cls, type) and issubclass(cls, duckdb.Error)):
            cls = duckdb.Error
        return session.without_scan_excerpt(session.engine_error(cls(err.message), ""))

    return mapped


# -- fragments ----------------------------------------------------------------------------------
def run_fragments(query: QueryContext, plan: FragmentPlan) -> pa.Table:
    """Run the fragments as Ray tasks, merge their results on this process."""
    session = query.session
    options = session.storage_options if is_remote(plan.scan.snapshot.location) else None
    task = remote_fragment()
    refs = [
        task.options(scheduling_strategy=place.strategy).remote(
            plan.fragment_sql,
            plan.placeholder,
            slim_scan(plan.scan, files),
            options,
            1,
            session.settings.duckdb_memory_limit,
        )
        for files, place in zip(plan.fragments, plan.placements, strict=True)
    ]
    done: list[tuple[pa.Table, ReadStats, TaskUsage]] = gather(
        refs, f"a fragment of {plan.ident}", task_error(session)
    )
    for (_, stats, _), place in zip(done, plan.placements, strict=True):
        observe(stats, place)
    report_usage([u for _, _, u in done])
    partials = pa.concat_tables([t for t, _, _ in done], promote_options="permissive")
    cur = session.cursor()
    try:
        out = merge(cur, plan, partials)
    except duckdb.Error as e:
        raise session.engine_error(e, plan.final_sql) from e
    finally:
        cur.close()
    out = out.rename_columns(plan.schema.names)
    return out if out.schema == plan.schema else out.cast(plan.schema)


# -- stages -------------------------------------------------------------------------------------
class RayStages:
    """The running backend: each stage's tasks go to the pool as it is planned, so later
    stages are planned on measured sizes (a side measured small is broadcast)."""

    def __init__(self, session: EngineSession) -> None:
        self.session = session
        self.options = session.storage_options if session.remote_warehouse else None

    def materialize(self, builder: StageBuilder, stage: PendingStage) -> Rel:
        remote = remote_stage()
        limit = self.session.settings.duckdb_memory_limit
        outs = []
        t0 = time.perf_counter()
        # Stages run one at a time: a stage of fewer tasks than CPUs gives each the rest.
        threads = max(1, builder.cpus // max(1, len(stage.tasks)))
        nout = stage.nout
        for (specs, args), place in zip(stage.specs, stage.places, strict=True):
            opts: dict[str, Any] = {"num_returns": nout + 1}
            if place is not None:
                opts["scheduling_strategy"] = place.strategy
            outs.append(
                remote.options(**opts).remote(
                    stage.text, specs, self.options, stage.key_sql, nout, threads, limit, *args
                )
            )
        stats = gather([o[-1] for o in outs], "a stage task", task_error(self.session))
        report_usage([st["usage"] for st in stats])
        for st, place in zip(stats, stage.places, strict=True):
            for r in st["read"]:
                observe(r, place)
        schema = stats[0]["schema"] if stats else pa.schema([])
        nbytes = sum(sum(st["bytes"]) for st in stats)
        rows = sum(sum(st["rows"]) for st in stats)
        if stage.gather:
            parts = [[o[0] for o in outs]]
        elif nout > 1:
            parts = [[o[b] for o in outs] for b in range(nout)]
        else:
            parts = [[o[0]] for o in outs]
        took = time.perf_counter() - t0
        builder.record(
            stage,
            len(parts),
            nbytes,
            rows=rows,
            ms=took * 1000,
            setup_ms=max(st["setup_ms"] for st in stats) if stats else None,
            run_ms=max(st["run_ms"] for st in stats) if stats else None,
        )
        return Rel(schema=schema, parts=parts, label=stage.label, nbytes=nbytes)


def run_stages(query: QueryContext, cpus: int) -> tuple[pa.Table, DistributedPlan] | str:
    """Run the query as stages on the pool: its result and the plan as run, or why it runs
    locally."""
    scans = delta_scans(query)
    if isinstance(scans, str):
        return scans
    t0 = time.perf_counter()
    try:
        schema = local_schema(query, scans)
        planner, rel, notes = build_stages(query, scans, cpus, RayStages(query.session))
    except Refused as e:
        return str(e)
    except duckdb.Error as e:
        return f"the query does not bind ({str(e).splitlines()[0]})"
    out = _final(query, rel, schema)
    staged = StagedPlan(
        steps=planner.steps,
        notes=notes,
        ran=True,
        rows=out.num_rows,
        ms=(time.perf_counter() - t0) * 1000,
    )
    scanned = [describe_scan(ident, scan) for ident, scan in scans]
    return out, DistributedPlan(scans=scanned, staged=staged)


def _final(query: QueryContext, rel: Rel, schema: pa.Schema) -> pa.Table:
    """The top block's partitions gathered and finished (``FinalStep``) on the coordinator."""
    session = query.session
    final = rel.final
    assert final is not None
    sources = final.inputs if final.pre is not None else {"__mx_result": rel}
    names = list(sources)
    refs = [[r for p in sources[n].parts for r in p] for n in names]
    got = iter(gather([r for rs in refs for r in rs], "a stage task", task_error(session)))
    cur = session.cursor()
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
            cur.register("__mx_result", duck.table(cur, final.pre))
        out = duck.table(cur, final.sql("__mx_result"))
    except duckdb.Error as e:
        raise session.engine_error(e, "") from e
    finally:
        cur.close()
    out = out.rename_columns(schema.names)
    return out if out.schema == schema else out.cast(schema)
