"""EXPLAIN for the distributed engine: one renderer of the planner's ``DistributedPlan``.

Planning and running are two consumers of the same plan object; a plan that ran (EXPLAIN
ANALYZE) carries measured sizes and times and is rendered by the same code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from matrixos.engine.dist.plan import Note, ScanInfo

if TYPE_CHECKING:
    from collections.abc import Mapping

    from matrixos.engine.dist.plan import (
        DistributedPlan,
        FragmentPlan,
        Stage,
        StagedPlan,
    )
    from matrixos.engine.scan import PrunedScan

_PUSHED = {
    "aggregate": "projection, filter and partial aggregate",
    "top-k": "projection, filter and per-fragment top-k",
    "scan": "projection and filter",
}


def format_size(n: float) -> str:
    """Bytes for people.

    Example:
        >>> format_size(512), format_size(3 * 1024 * 1024)
        ('512 B', '3.0 MiB')
    """
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


def scan_line(scan: ScanInfo) -> str:
    """``Scan <table> (delta, version v): k of n files after pruning [on …], <size>``."""
    pruning = f"{scan.files} of {scan.total_files} files after pruning"
    if scan.predicates:
        pruning += " on " + ", ".join(scan.predicates)
    return (
        f"Scan {scan.ident} (delta, version {scan.version}): {pruning}, {format_size(scan.nbytes)}"
    )


def describe_scan(ident: object, scan: PrunedScan) -> ScanInfo:
    """What EXPLAIN shows of a Delta scan after pruning."""
    return ScanInfo(
        ident=str(ident),
        version=scan.snapshot.version,
        files=len(scan.files),
        total_files=len(scan.snapshot.files),
        predicates=[p.describe() for p in scan.predicates],
        nbytes=sum(f.size for f in scan.files),
    )


def render(plan: DistributedPlan, zones: Mapping[str, str] | None = None) -> list[str]:
    """The plan as EXPLAIN's lines."""
    if plan.fragments is not None:
        return _fragments(plan, plan.fragments)
    assert plan.staged is not None
    return _staged(plan, plan.staged)


def _fragments(plan: DistributedPlan, frag: FragmentPlan) -> list[str]:
    lines = [
        "Engine: ray (distributed, 2 stages)",
        *(scan_line(s) for s in plan.scans),
        f"Stage 1: {len(frag.fragments)} fragment task(s) on the Ray pool, one DuckDB each; "
        f"{_PUSHED[frag.kind]} pushed down; placement: next to the data (the node caching a "
        "fragment's files, else their storage zone, else spread)",
    ]
    for i, (files, place) in enumerate(zip(frag.fragments, frag.placements, strict=True)):
        lines.append(
            f"  fragment {i}: {len(files)} file(s), {format_size(sum(f.size for f in files))}; "
            f"placement: {place.describe()}"
        )
    lines.append("  per fragment: " + frag.fragment_sql.replace(frag.placeholder, "<files>"))
    lines.append("Stage 2: merge on the coordinator (DuckDB over the fragments' Arrow results)")
    if frag.merge_sql:
        lines.append("  merge: " + frag.merge_sql)
    if frag.avgs:
        lines.append(f"  avg() finalized as DuckDB does: {len(frag.avgs)}")
    lines.append("  final: " + frag.final_sql)
    return lines


def _staged(plan: DistributedPlan, staged: StagedPlan) -> list[str]:
    how = "stages as run, sizes measured" if staged.ran else "planned from estimates, not run"
    lines = [f"Engine: ray (distributed, {staged.stages} stages, {staged.tasks} tasks; {how})"]
    lines += [scan_line(s) for s in plan.scans]
    lines += staged.notes
    for step in staged.steps:
        if isinstance(step, Note):
            lines.append(step.text)
        else:
            lines += stage_lines(step)
    total = format_size(plan.scanned_bytes)
    if staged.rows is None or staged.ms is None:
        lines.append(f"Final: merged on the coordinator (ORDER BY/LIMIT/DISTINCT); {total}")
    else:
        lines.append(
            f"Final: merged on the coordinator ({staged.rows} rows; ORDER BY/LIMIT/DISTINCT), "
            f"{staged.ms:.0f} ms in all; {total} scanned"
        )
    return lines


def stage_lines(stage: Stage) -> list[str]:
    """One stage: what it runs, its inputs, placement and per-task SQL."""
    if stage.rows is not None and stage.ms is not None:
        size = f"{stage.rows} rows, {format_size(stage.nbytes)}, {stage.ms:.0f} ms"
    else:
        size = f"estimated {format_size(stage.nbytes)}"
    lines = [
        f"Stage {stage.number}: {stage.label}: {stage.tasks} task(s), output {stage.output}; {size}"
    ]
    lines += [f"  input {i.what}: {i.how}, {format_size(i.nbytes)}" for i in stage.inputs]
    lines += [f"  task {i}: placement: {where}" for i, where in stage.placements]
    lines.append("  per task: " + stage.sql)
    if stage.setup_ms is not None and stage.run_ms is not None:
        lines.append(
            f"  tasks: setup up to {stage.setup_ms:.0f} ms, DuckDB up to {stage.run_ms:.0f} ms"
        )
    return lines
