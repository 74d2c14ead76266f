"""What one write run read and wrote: the tracking half of lineage (``catalog.lineage`` stores it).

A *run* is one unit of work that writes tables: a SQL statement, a ``map_batches`` job, a RAG
index, an ingest, a job of the compute pool. Whoever starts the work opens a run
(``tracking``); the places where data is read and written report to the run open in the
current context (a ``contextvars`` variable, so threads and asyncio tasks keep theirs apart):

- the SQL binder calls ``read`` for every table (and version) a statement resolves;
- ``TableHandle`` and ``TableService.create_table`` call ``wrote`` for every commit;
- the openers add what the engine cannot see (files, volumes) with ``read_source``.

A run opened inside another joins it. When the outermost run ends without error its ``sink``
receives it (``catalog.lineage`` writes the event to ``system.lineage.events``). A write made
outside any run (rows from memory, an IoT flush) has no inputs to record and reports to
nothing, except in a job.

In a job's process (``MATRIXOS_JOB_ID`` set by the job runner) a run's id is the job's id, and
the whole process is one run too: everything it read so far is the input of a write it makes
outside a run (a Python job that reads a table and appends to another), recorded to
``job_sink`` (``catalog.lineage`` sets it) at once, as the job may be killed at any time.

Example:
    >>> got = []
    >>> with tracking("demo", sink=got.append, principal="alice") as run:
    ...     read("main.s.a", 3)
    ...     wrote(None, "main.s.b", 1)
    >>> [(d.name, d.version) for d in got[0].inputs], [(d.name, d.version) for d in got[0].outputs]
    ([('main.s.a', 3)], [('main.s.b', 1)])
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

#: The namespace of the warehouse's tables in events (files use their URI's scheme).
TABLES = "matrixos"
#: The namespace of volumes.
VOLUMES = "matrixos.volume"
#: The environment variable naming the job a process runs (``matrixos.jobs``).
JOB_ID_ENV = "MATRIXOS_JOB_ID"
#: How much of a statement an event keeps.
STATEMENT_CHARS = 4000


@dataclass(frozen=True)
class Dataset:
    """One input or output of a run: a table at a version, a volume or a file."""

    namespace: str
    name: str
    version: int | None = None

    @property
    def is_table(self) -> bool:
        return self.namespace == TABLES


def file_dataset(uri: str) -> Dataset:
    """A file or folder read by a run, named as OpenLineage names files: the scheme (and
    bucket) as the namespace, the path as the name."""
    if "://" in uri:
        scheme, rest = uri.split("://", 1)
        bucket, _, path = rest.partition("/")
        if scheme == "file":
            return Dataset("file", "/" + path if bucket == "" else rest)
        return Dataset(f"{scheme}://{bucket}", "/" + path)
    return Dataset("file", os.path.abspath(uri))


@dataclass
class LineageRun:
    """A run being tracked: what it read and wrote so far."""

    job: str
    run_id: str
    principal: str | None = None
    statement: str | Callable[[], str | None] | None = None  # a function: made when recorded
    job_id: str | None = None
    always: bool = False  # record the run even when it read nothing (ingest, jobs)
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    inputs: list[Dataset] = field(default_factory=list)
    outputs: list[Dataset] = field(default_factory=list)
    service: Any = None  # the ``TableService`` of the first output (where the event goes)

    def add_input(self, ds: Dataset) -> None:
        if ds not in self.inputs:
            self.inputs.append(ds)

    def add_output(self, ds: Dataset, service: Any = None, principal: str | None = None) -> None:
        # A run that commits one table several times (map_batches) produced its last version.
        self.outputs = [o for o in self.outputs if (o.namespace, o.name) != (ds.namespace, ds.name)]
        self.outputs.append(ds)
        if self.service is None:
            self.service = service
        if self.principal is None:
            self.principal = principal

    def statement_text(self) -> str | None:
        """The statement or job description (at most ``STATEMENT_CHARS`` characters)."""
        text = self.statement() if callable(self.statement) else self.statement
        if text is not None and len(text) > STATEMENT_CHARS:
            text = text[:STATEMENT_CHARS] + "…"
        return text

    @property
    def worth_recording(self) -> bool:
        return bool(self.outputs) and (bool(self.inputs) or self.always)


_current: ContextVar[LineageRun | None] = ContextVar("matrixos_lineage_run", default=None)


def current() -> LineageRun | None:
    """The run open in this context, if any."""
    return _current.get()


@contextlib.contextmanager
def tracking(
    job: str,
    *,
    sink: Callable[[LineageRun], None],
    principal: str | None = None,
    statement: str | Callable[[], str | None] | None = None,
    run_id: str | None = None,
    always: bool = False,
) -> Iterator[LineageRun]:
    """Open a run named ``job`` (``sql``, ``map_batches``, ``rag.index``, ``ingest``, ``job``);
    ``sink`` receives it when it ends without error, unless an outer run is open (then this
    one's reads and writes are the outer's)."""
    outer = _current.get()
    if outer is not None:
        yield outer
        return
    job_id = os.environ.get(JOB_ID_ENV) or None
    run = LineageRun(
        job=job,
        run_id=run_id or job_id or uuid.uuid4().hex,
        principal=principal,
        statement=statement,
        job_id=job_id,
        always=always,
    )
    token = _current.set(run)
    try:
        yield run
    finally:
        # Reset before the sink writes: its own commit (to a system table) is no output.
        _current.reset(token)
    if run.worth_recording:
        sink(run)


#: Receives the runs of writes a job's process makes outside any run (set by catalog.lineage).
job_sink: Callable[[LineageRun], None] | None = None
_job_reads: list[Dataset] = []  # what this job's process read so far
_job_lock = threading.Lock()


def read(name: str, version: int | None) -> None:
    """Note that the open run (if any) read table ``name`` (its full name) at ``version``."""
    read_source(Dataset(TABLES, name, None if version is None else int(version)))


def read_source(ds: Dataset) -> None:
    """Note a table, file or volume the open run (if any) read."""
    run = _current.get()
    if run is not None:
        run.add_input(ds)
    if os.environ.get(JOB_ID_ENV):
        with _job_lock:
            if ds not in _job_reads:
                _job_reads.append(ds)


def wrote(service: Any, name: str, version: int | None, principal: str | None = None) -> None:
    """Note that the open run (if any) committed ``version`` of table ``name``. The platform's
    own tables (catalog ``system``) are never outputs."""
    if name.startswith("system."):
        return
    ds = Dataset(TABLES, name, version)
    run = _current.get()
    if run is not None:
        run.add_output(ds, service, principal)
        return
    job_id = os.environ.get(JOB_ID_ENV)
    if job_id and job_sink is not None:
        with _job_lock:
            inputs = list(_job_reads)
        ambient = LineageRun("job", job_id, principal=principal, job_id=job_id, always=True)
        ambient.inputs = inputs
        ambient.add_output(ds, service, principal)
        job_sink(ambient)
