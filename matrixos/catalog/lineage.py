"""``system.lineage.events``: which inputs every write read, as OpenLineage-shaped events.

One row per finished run (a SQL statement, ``map_batches``, a RAG index, an ingest, a job; see
``catalog.lineage_runs`` for how a run learns what it read and wrote): ``event_type``,
``event_time``, ``run_id``, ``job_namespace``/``job_name``, ``inputs`` and ``outputs`` (lists
of ``namespace``, ``name``, ``version``), the ``principal``, the ``statement`` (literals
redacted) and the ``job_id`` when a compute job ran it. ``event`` holds the same event as
OpenLineage JSON (``facets.version`` on each dataset), ready for any OpenLineage consumer.

``LineageLog.graph`` walks the events upstream (what a table was made from) and downstream
(what was made from it) as the asking principal may see them: tables it may not read appear as
``<hidden>``, without name or version.

Example:
    >>> import tempfile, matrixos as mx
    >>> lh = mx.connect(tempfile.mkdtemp())
    >>> _ = lh.create_table("s.a", [{"id": 1}])
    >>> _ = lh.sql("CREATE TABLE s.b AS SELECT id FROM s.a")
    >>> [(e.source.name, e.source.version, e.target.name) for e in lh.lineage("s.b").edges]
    [('main.s.a', 0, 'main.s.b')]
"""

from __future__ import annotations

import io
import json
import logging
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa

from matrixos.catalog import lineage_runs
from matrixos.catalog.access import Principal
from matrixos.catalog.base import now
from matrixos.catalog.lineage_runs import (
    TABLES,
    Dataset,
    LineageRun,
    tracking,
)
from matrixos.catalog.names import TableIdent
from matrixos.catalog.systables import SYSTEM, SystemTable
from matrixos.errors import ConfigError, MatrixOSError, TableNotFound

if TYPE_CHECKING:
    from matrixos.catalog.service import TableService

log = logging.getLogger(__name__)

LINEAGE_TABLE = "system.lineage.events"
PRODUCER = "https://github.com/matrixos/matrixos"
SCHEMA_URL = "https://openlineage.io/spec/2-0-2/OpenLineage.json#/$defs/RunEvent"
HIDDEN = "<hidden>"
_DATASET = pa.struct([("namespace", pa.string()), ("name", pa.string()), ("version", pa.int64())])
SCHEMA = pa.schema(
    [
        ("event_time", pa.timestamp("us", tz="UTC")),
        ("event_type", pa.string()),
        ("run_id", pa.string()),
        ("job_namespace", pa.string()),
        ("job_name", pa.string()),
        ("principal", pa.string()),
        ("statement", pa.string()),
        ("job_id", pa.string()),
        ("inputs", pa.list_(_DATASET)),
        ("outputs", pa.list_(_DATASET)),
        ("event", pa.string()),
    ]
)
Direction = Literal["up", "down", "both"]


def openlineage_event(
    run: LineageRun, event_time: datetime, statement: str | None
) -> dict[str, Any]:
    """The OpenLineage ``RunEvent`` (``COMPLETE``) of a finished run."""

    def dataset(d: Dataset) -> dict[str, Any]:
        facets = {} if d.version is None else {"version": {"datasetVersion": str(d.version)}}
        return {"namespace": d.namespace, "name": d.name, "facets": facets}

    run_facets: dict[str, Any] = {"matrixos": {"principal": run.principal}}
    if run.job_id:
        run_facets["matrixos"]["jobId"] = run.job_id
    job_facets = {"sql": {"query": statement}} if statement else {}
    return {
        "eventType": "COMPLETE",
        "eventTime": event_time.isoformat(),
        "run": {"runId": run.run_id, "facets": run_facets},
        "job": {"namespace": TABLES, "name": run.job, "facets": job_facets},
        "inputs": [dataset(d) for d in run.inputs],
        "outputs": [dataset(d) for d in run.outputs],
        "producer": PRODUCER,
        "schemaURL": SCHEMA_URL,
    }


@dataclass(frozen=True)
class Edge:
    """``source`` (a table at a version, a file or a volume) went into ``target`` (a table at
    the version the run committed) in run ``run_id`` of ``job``."""

    source: Dataset
    target: Dataset
    run_id: str
    job: str
    principal: str | None
    event_time: datetime
    depth: int
    direction: Literal["up", "down"]


@dataclass
class Lineage:
    """The lineage of one table: ``edges`` upstream and downstream, nearest first."""

    table: str
    edges: list[Edge] = field(default_factory=list)

    @property
    def upstream(self) -> list[Edge]:
        return [e for e in self.edges if e.direction == "up"]

    @property
    def downstream(self) -> list[Edge]:
        return [e for e in self.edges if e.direction == "down"]

    def to_arrow(self) -> pa.Table:
        """One row per edge."""
        rows = [
            {
                "direction": e.direction,
                "depth": e.depth,
                "source_namespace": e.source.namespace,
                "source": e.source.name,
                "source_version": e.source.version,
                "target": e.target.name,
                "target_version": e.target.version,
                "job": e.job,
                "run_id": e.run_id,
                "principal": e.principal,
                "event_time": e.event_time,
            }
            for e in self.edges
        ]
        return (
            pa.Table.from_pylist(rows)
            if rows
            else pa.table({"direction": pa.array([], pa.string())})
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the table and its edges."""
        return {
            "table": self.table,
            "edges": [
                {
                    "direction": e.direction,
                    "depth": e.depth,
                    "source": _ds_dict(e.source),
                    "target": _ds_dict(e.target),
                    "job": e.job,
                    "run_id": e.run_id,
                    "principal": e.principal,
                    "event_time": e.event_time.isoformat(),
                }
                for e in self.edges
            ],
        }

    def tree(self) -> Any:
        """A ``rich.tree.Tree``: the table, its upstream under ``upstream``, its downstream
        under ``downstream``, each with versions and the job that made the link."""
        from rich.tree import Tree

        root = Tree(f"[bold]{self.table}[/bold]")
        for label, direction in (("upstream", "up"), ("downstream", "down")):
            branch = root.add(f"[dim]{label}[/dim]")
            self._grow(branch, self.table, direction, set())
        return root

    def _grow(self, branch: Any, name: str, direction: str, seen: set[str]) -> None:
        if name in seen:
            return
        seen = seen | {name}
        for e in self.edges:
            if e.direction != direction:
                continue
            near, far = (e.target, e.source) if direction == "up" else (e.source, e.target)
            if near.name != name:
                continue
            at = "" if far.version is None else f" @ v{far.version}"
            via = f"{e.job} by {e.principal or '?'}"
            if direction == "up":
                via += f" → v{near.version}" if near.version is not None else ""
            child = branch.add(f"{_label(far)}{at}  [dim]({via})[/dim]")
            if far.is_table and far.name != HIDDEN:
                self._grow(child, far.name, direction, seen)

    def __str__(self) -> str:
        from rich.console import Console

        console = Console(width=120, color_system=None, record=True, file=io.StringIO())
        console.print(self.tree())
        return console.export_text().rstrip()


def _label(d: Dataset) -> str:
    if d.is_table:
        return d.name
    return f"{d.namespace}:{d.name}" if d.namespace != "file" else d.name


def _ds_dict(d: Dataset) -> dict[str, Any]:
    return {"namespace": d.namespace, "name": d.name, "version": d.version}


class LineageLog:
    """Records runs to ``system.lineage.events`` and answers lineage questions. One per
    ``TableService`` (``of``); thread-safe."""

    _logs: weakref.WeakKeyDictionary[Any, LineageLog] = weakref.WeakKeyDictionary()
    _logs_lock = threading.Lock()

    def __init__(self, service: TableService) -> None:
        self.service = service
        self.table = SystemTable(service, LINEAGE_TABLE, SCHEMA)

    @classmethod
    def of(cls, service: TableService) -> LineageLog:
        """The log of ``service``'s warehouse."""
        with cls._logs_lock:
            got = cls._logs.get(service)
            if got is None:
                got = cls._logs[service] = cls(service)
            return got

    # -- recording --------------------------------------------------------------------------
    def record(self, run: LineageRun) -> None:
        """Append the event of a finished run. A failure is logged, never raised: the write
        it describes has committed."""
        at = now()
        statement = run.statement_text()
        event = openlineage_event(run, at, statement)
        row = {
            "event_time": at,
            "event_type": "COMPLETE",
            "run_id": run.run_id,
            "job_namespace": TABLES,
            "job_name": run.job,
            "principal": run.principal,
            "statement": statement,
            "job_id": run.job_id,
            "inputs": [_ds_dict(d) for d in run.inputs],
            "outputs": [_ds_dict(d) for d in run.outputs],
            "event": json.dumps(event),
        }
        try:
            self.table.append([row])
        except MatrixOSError as e:
            log.warning(
                "lineage of run %s (%s → %s) not written: %s",
                run.run_id,
                [d.name for d in run.inputs],
                [d.name for d in run.outputs],
                e,
            )

    # -- reading ----------------------------------------------------------------------------
    def events(self) -> list[dict[str, Any]]:
        """Every recorded event (as rows of the table), oldest first."""
        try:
            handle = self.service.table(SYSTEM, LINEAGE_TABLE)
        except TableNotFound:
            return []
        rows = handle.store.dataset().to_table().to_pylist()
        return sorted(rows, key=lambda r: r["event_time"])

    def graph(
        self,
        principal: Principal,
        table: str,
        *,
        direction: Direction = "both",
        depth: int = 5,
    ) -> Lineage:
        """``table``'s lineage up to ``depth`` links away, as ``principal`` may see it
        (``TableNotFound``/``AccessDenied`` when it may not read ``table`` itself)."""
        if direction not in ("up", "down", "both"):
            raise ConfigError(f"direction must be 'up', 'down' or 'both', not {direction!r}")
        if depth < 1:
            raise ConfigError(f"depth must be at least 1, not {depth}")
        name = self.service.resolve(principal, table, "SELECT").name
        links: list[tuple[Dataset, Dataset, dict[str, Any]]] = []
        for ev in self.events():
            for out in ev["outputs"]:
                for inp in ev["inputs"]:
                    links.append((_ds(inp), _ds(out), ev))
        result = Lineage(name)
        visible = _Visibility(self.service, principal)
        for way in ("up", "down"):
            if direction not in (way, "both"):
                continue
            for d, (src, dst, ev) in _walk(links, name, way, depth):
                result.edges.append(
                    Edge(
                        source=visible(src),
                        target=visible(dst),
                        run_id=ev["run_id"],
                        job=ev["job_name"],
                        principal=ev["principal"],
                        event_time=ev["event_time"],
                        depth=d,
                        direction=way,  # type: ignore[arg-type]
                    )
                )
        return result


def _ds(d: dict[str, Any]) -> Dataset:
    return Dataset(d["namespace"], d["name"], d["version"])


def _walk(
    links: list[tuple[Dataset, Dataset, dict[str, Any]]], start: str, way: str, depth: int
) -> Iterator[tuple[int, tuple[Dataset, Dataset, dict[str, Any]]]]:
    """The links reached from table ``start`` breadth first (``up``: to the inputs of what
    wrote it; ``down``: to the outputs of what read it), each once, with its distance."""
    seen_tables = {start}
    queue = deque([(start, 1)])
    while queue:
        name, d = queue.popleft()
        if d > depth:
            continue
        for link in links:
            src, dst, _ = link
            near, far = (dst, src) if way == "up" else (src, dst)
            if not (near.is_table and near.name == name):
                continue
            yield d, link
            if far.is_table and far.name not in seen_tables:
                seen_tables.add(far.name)
                queue.append((far.name, d + 1))


class _Visibility:
    """A dataset as a principal may see it: a table it may not read becomes ``<hidden>``."""

    def __init__(self, service: TableService, principal: Principal) -> None:
        self.service = service
        self.principal = principal
        self._known: dict[str, bool] = {}

    def __call__(self, d: Dataset) -> Dataset:
        if not d.is_table:
            return d
        ok = self._known.get(d.name)
        if ok is None:
            try:
                info = self.service.catalog.get_table(TableIdent.parse(d.name))
                ok = self.principal.may("SELECT", info.name, owner=info.owner)
            except TableNotFound:  # dropped since: its owner is gone, only admins see it
                ok = self.principal.may("SELECT", d.name)
            self._known[d.name] = ok
        return d if ok else Dataset(TABLES, HIDDEN)


def sink(service: TableService | None) -> Callable[[LineageRun], None]:
    """Where runs go: the log of the warehouse their first output is in (``service``'s when
    it is given and the run knows none)."""

    def record(run: LineageRun) -> None:
        target = run.service or service
        if target is not None:
            LineageLog.of(target).record(run)

    return record


# Writes a job's process makes outside any run go to the warehouse they wrote to.
lineage_runs.job_sink = sink(None)


@contextmanager
def run(
    service: TableService | None,
    job: str,
    *,
    principal: str | None = None,
    statement: str | Callable[[], str | None] | None = None,
    run_id: str | None = None,
    always: bool = False,
) -> Iterator[LineageRun]:
    """Track a run of ``job`` whose event goes to ``service``'s ``system.lineage.events``
    (see ``lineage_runs.tracking``)."""
    with tracking(
        job,
        sink=sink(service),
        principal=principal,
        statement=statement,
        run_id=run_id,
        always=always,
    ) as r:
        yield r
