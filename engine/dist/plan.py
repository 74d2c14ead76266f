"""The distributed planner's output: plain data that EXPLAIN renders and the runtime executes.

A ``DistributedPlan`` is either a single-table *fragment* plan (``FragmentPlan``: per-fragment
SQL, the coordinator's merge, the fragments and their placement) or a *staged* plan
(``StagedPlan``: the stages and notes in the order they run). Both carry what pruning left of
each scan (``ScanInfo``). Nothing here runs anything.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import pyarrow as pa

    from matrixos.catalog import TableIdent
    from matrixos.engine.filecache import Placement
    from matrixos.engine.scan import FileEntry, PrunedScan


@dataclass
class ScanInfo:
    """One Delta table's scan after pruning, as EXPLAIN shows it."""

    ident: str
    version: int
    files: int  # kept by pruning
    total_files: int
    predicates: list[str]  # what pruned them, as text
    nbytes: int  # of the kept files


@dataclass
class Avg:
    """An ``avg()`` that the coordinator finalizes as DuckDB's own avg aggregate does."""

    column: str  # the output column; its merged sum and count are <column>_sum, <column>_count
    arg_type: str  # DuckDB type of the averaged values


@dataclass
class FragmentPlan:
    """A query over one table split into per-fragment SQL and the coordinator's merge SQL."""

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
    placements: list[Placement] = field(default_factory=list)  # one per fragment


@dataclass
class StageInput:
    """How a stage's first task reads one input."""

    what: str  # a table scan's label, or "stage output (<label>)"
    how: str  # broadcast, split into fragments, partitioned …
    nbytes: int


@dataclass
class Stage:
    """One stage of a staged plan: planned (estimated sizes) or as run (measured)."""

    number: int
    label: str
    tasks: int
    output: str  # how its output is partitioned
    inputs: list[StageInput]
    placements: list[tuple[int, str]]  # (task, where it is placed) for tasks that read files
    sql: str  # per task, inputs shown as <in>
    nbytes: int  # estimated, or measured
    rows: int | None = None  # measured (None: planned only)
    ms: float | None = None
    setup_ms: float | None = None  # the slowest task's setup and DuckDB times
    run_ms: float | None = None


@dataclass
class Note:
    """A planning step between stages (a folded derived table, a set operation's shape, …)."""

    text: str


@dataclass
class StagedPlan:
    """A query as stages on the pool, in the order they run."""

    steps: list[Stage | Note]
    notes: list[str] = field(default_factory=list)  # about the whole plan (unnesting, …)
    ran: bool = False  # measured sizes (EXPLAIN ANALYZE, or a run) rather than estimates
    rows: int | None = None  # the result's rows, when it ran
    ms: float | None = None  # the whole query's time, when it ran

    @property
    def stages(self) -> int:
        return sum(1 for s in self.steps if isinstance(s, Stage))

    @property
    def tasks(self) -> int:
        return sum(s.tasks for s in self.steps if isinstance(s, Stage))


@dataclass
class DistributedPlan:
    """What the planner decided for a query that runs on the pool."""

    scans: list[ScanInfo]
    fragments: FragmentPlan | None = None
    staged: StagedPlan | None = None

    @property
    def scanned_bytes(self) -> int:
        return sum(s.nbytes for s in self.scans)
