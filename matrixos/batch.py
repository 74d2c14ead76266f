"""Batch UDFs over a table on the compute pool: ``lh.map_batches(source, fn, output=...)``.

A job reads ``source`` (a Delta or Lance table, or a SQL query) as a stream of batches of
``batch_size`` rows, calls ``fn`` on each, and writes what it returns to the ``output`` table,
in commits of ``commit_batches`` batches, in source order. ``fn`` is a function or a callable
class; a class is built once per worker (a model loads once, as with Ray Data's
``map_batches``). On a Ray pool functions run as tasks and classes as a pool of actors, with
``num_gpus`` each when the pool has GPUs (on CPUs otherwise); on the local pool everything runs
in this process with the same semantics.

* **Bounded memory.** The source is read lazily; at most ``max_in_flight`` batches are out on
  workers and at most ``max_in_flight + commit_batches`` are held at all (back-pressure with
  ``ray.wait``). Neither the source nor the output is ever materialized.
* **Exactly once, resumable.** Batch ``i`` is rows ``[i*batch_size, (i+1)*batch_size)`` of the
  source at a pinned version, so its id is deterministic. Every commit to the output records,
  in the same atomic commit (Delta ``commitInfo`` / Lance transaction properties, key
  ``matrixos.map_batches``), the job, the run and the batch range it holds. A rerun of a job
  that died (driver killed, machine lost, UDF error) reads those records, re-reads the source at
  the pinned version and skips the committed batches: no duplicates, nothing lost.
* **Worker failures.** A task whose worker died is retried; an actor that died is restarted
  (its pending calls retried). Results travel back to the driver and are owned by it (never
  by an actor, whose objects die with it: Ray's ``OwnerDiedError``).
* **Visible.** A progress bar (rows, rows/s) when attached to a terminal or notebook, and a
  summary at the end: rows in/out, batches, elapsed, rows/s and GPU utilisation.

Example:
    >>> import matrixos as mx, pyarrow as pa, tempfile
    >>> lh = mx.connect(tempfile.mkdtemp())
    >>> _ = lh.create_table("docs", pa.table({"id": [1, 2, 3], "text": ["a", "bb", "ccc"]}))
    >>> def lengths(batch):
    ...     return batch.append_column("n", pa.compute.utf8_length(batch["text"]))
    >>> s = lh.map_batches("docs", lengths, output="docs_n", batch_size=2, progress=False)
    >>> (s.rows_in, s.rows_out, s.batches_run)
    (3, 3, 2)
    >>> sorted(lh.table("docs_n").to_arrow().column("n").to_pylist())
    [1, 2, 3]
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import logging
import shutil
import subprocess
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa

from matrixos._progress import RateBar, interactive
from matrixos.errors import BatchError, ConfigError, TableNotFound

if TYPE_CHECKING:
    from matrixos.compute import ComputePool
    from matrixos.session import Lakehouse
    from matrixos.table import Table

__all__ = [
    "MARKER_KEY",
    "GpuSampler",
    "MapBatchesSummary",
    "MapBatchesWorker",
    "PoolMapper",
    "apply_udf",
    "make_executor",
    "map_batches",
    "rebatch",
    "run_ordered",
    "shipped_by_value",
    "to_output_table",
]

log = logging.getLogger(__name__)

#: Commit-metadata key under which each commit of a job records what it holds.
MARKER_KEY = "matrixos.map_batches"
BatchFormat = Literal["pyarrow", "pandas", "numpy"]


# -- the summary ----------------------------------------------------------------------------
@dataclass
class MapBatchesSummary:
    """What one ``map_batches`` run did.

    ``batches`` counts the source's batches; ``batches_run`` those this run computed and
    ``batches_skipped`` those an earlier run of the same job had committed. ``gpu_utilization``
    is the mean GPU busy percentage sampled during the run (``None``: no GPU to sample).
    """

    output: str
    source: str
    job: str
    run: str
    source_version: int | None = None
    resumed: bool = False
    batches: int = 0
    batches_run: int = 0
    batches_skipped: int = 0
    rows_in: int = 0
    rows_out: int = 0
    commits: int = 0
    seconds: float = 0.0
    executor: str = "in-process"
    num_gpus: float = 0.0
    gpu_utilization: float | None = None
    gpu_note: str = "n/a (no GPU)"
    max_in_flight: int = 1
    peak_in_flight: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def rows_per_s(self) -> float:
        """Source rows processed per second by this run."""
        return self.rows_in / self.seconds if self.seconds else 0.0

    @property
    def gpu_text(self) -> str:
        if self.gpu_utilization is None:
            return self.gpu_note
        return f"{self.gpu_utilization:.0f}%"

    def __str__(self) -> str:
        version = f"@v{self.source_version}" if self.source_version is not None else ""
        lines = [
            f"map_batches {self.source}{version} → {self.output} ({self.executor}): "
            f"{self.rows_in:,} rows in, {self.rows_out:,} rows out, {self.batches_run} "
            f"batch(es) in {self.commits} commit(s)"
            + (f", {self.batches_skipped} already committed" if self.batches_skipped else ""),
            f"{self.seconds:.2f} s, {self.rows_per_s:,.1f} rows/s, GPU utilisation {self.gpu_text}",
        ]
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


# -- calling the UDF (in this process or on a worker) ----------------------------------------
@dataclass(frozen=True)
class _Failure:
    """A UDF error, carried back as a value (picklable, whatever the exception was)."""

    kind: str
    message: str
    trace: str


def _to_format(batch: pa.Table, batch_format: BatchFormat) -> Any:
    if batch_format == "pandas":
        return batch.to_pandas()
    if batch_format == "numpy":
        return {
            name: batch.column(name).to_numpy(zero_copy_only=False) for name in batch.column_names
        }
    return batch


def _column(values: Any) -> Any:
    """A column from a UDF's dict: 2-D numpy arrays (embeddings) become fixed-size lists."""
    ndim = getattr(values, "ndim", 1)
    if ndim == 2:
        import numpy as np

        arr = np.ascontiguousarray(values)
        flat = pa.array(arr.reshape(-1))
        return pa.FixedSizeListArray.from_arrays(flat, int(arr.shape[1]))
    return values


def to_output_table(out: Any) -> pa.Table:
    """What a UDF returned (Arrow table or batch, pandas, Polars, dict of columns) as Arrow."""
    from matrixos.storage.arrow import to_arrow_table

    if isinstance(out, Mapping):
        return pa.table({k: _column(v) for k, v in out.items()})
    return to_arrow_table(out)


def apply_udf(fn: Callable[[Any], Any], batch: pa.Table, batch_format: BatchFormat) -> Any:
    """``fn(batch)`` as an Arrow table, or a ``_Failure`` naming what went wrong."""
    try:
        out = fn(_to_format(batch, batch_format))
        if out is None:
            raise TypeError("the function returned None; return the batch (a table or dict)")
        return to_output_table(out)
    except Exception as e:
        return _Failure(type(e).__name__, str(e), traceback.format_exc(limit=8))


def map_batch(fn: Callable[[Any], Any], batch: pa.Table, batch_format: BatchFormat) -> Any:
    """The Ray task of a plain-function UDF (its worker is titled ``ray::map_batch``)."""
    return apply_udf(fn, batch, batch_format)


class MapBatchesWorker:
    """The Ray actor of a callable-class UDF: the class is built once, then called per batch.

    A constructor error is reported with the first batch rather than crashing the actor (which
    Ray would restart, and fail again, ``max_restarts`` times).
    """

    def __init__(self, cls: type, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
        self.fn: Callable[[Any], Any] | None = None
        self.error: _Failure | None = None
        try:
            self.fn = cls(*args, **kwargs)
        except Exception as e:
            self.error = _Failure(
                type(e).__name__,
                f"constructing {cls.__name__} failed: {e}",
                traceback.format_exc(limit=8),
            )

    def run(self, batch: pa.Table, batch_format: BatchFormat) -> Any:
        if self.fn is None:
            assert self.error is not None
            return self.error
        return apply_udf(self.fn, batch, batch_format)


# -- executors: where the UDF runs --------------------------------------------------------------
class _Executor:
    """Runs the UDF on batches; ``submit`` then ``wait`` for finished ones."""

    description = "in-process"
    slots = 1  # how many batches it can run at once
    num_gpus: float = 0.0

    def submit(self, index: int, batch: pa.Table) -> None:
        raise NotImplementedError

    def wait(self) -> list[tuple[int, Any]]:
        """At least one finished batch: ``(index, table or _Failure)``."""
        raise NotImplementedError

    def running(self) -> int:
        raise NotImplementedError

    def close(self) -> None:
        pass


class _LocalExecutor(_Executor):
    def __init__(self, fn: Callable[[Any], Any], batch_format: BatchFormat) -> None:
        self.fn = fn
        self.batch_format = batch_format
        self.done: list[tuple[int, Any]] = []

    def submit(self, index: int, batch: pa.Table) -> None:
        self.done.append((index, apply_udf(self.fn, batch, self.batch_format)))

    def wait(self) -> list[tuple[int, Any]]:
        done, self.done = self.done, []
        return done

    def running(self) -> int:
        return len(self.done)


class _RayExecutor(_Executor):
    """Tasks (a function) or a pool of actors (a class) on the Ray pool."""

    def __init__(
        self,
        fn: Any,
        *,
        is_class: bool,
        batch_format: BatchFormat,
        num_cpus: float,
        num_gpus: float,
        concurrency: int,
        constructor_args: Sequence[Any] = (),
        constructor_kwargs: Mapping[str, Any] | None = None,
        ray_options: Mapping[str, Any] | None = None,
    ) -> None:
        import ray

        # The retry policy of every Ray job (the distributed engine's too).
        from matrixos.engine.dist.runtime import ACTOR_RETRIES, TASK_RETRIES

        self.ray = ray
        self.batch_format = batch_format
        self.num_gpus = num_gpus
        self.refs: dict[Any, tuple[int, Any]] = {}
        self.load: dict[int, int]  # object ref → (batch index, actor or None)
        opts: dict[str, Any] = {"num_cpus": num_cpus, "num_gpus": num_gpus}
        opts.update(ray_options or {})
        gpu = f", {num_gpus:g} GPU each" if num_gpus else ""
        # Tasks are named after the UDF (Ray titles their processes ``ray::<name>``), so the
        # pool's task list and process titles say which job a worker is running.
        udf = getattr(fn, "__qualname__", type(fn).__name__)
        self.method_name = f"MapBatchesWorker.run:{udf}"
        if is_class:
            actor: Any = ray.remote(MapBatchesWorker).options(
                **ACTOR_RETRIES,
                scheduling_strategy="SPREAD",
                **opts,
            )
            self.actors: list[Any] = [
                actor.remote(fn, tuple(constructor_args), dict(constructor_kwargs or {}))
                for _ in range(concurrency)
            ]
            self.load = {i: 0 for i in range(concurrency)}  # batches out per actor
            # One batch running and one queued per actor keeps it busy between batches.
            self.slots = 2 * concurrency
            self.description = f"ray: {concurrency} actor(s){gpu}"
            self.task = None
        else:
            self.actors = []
            self.load = {}
            # A plain function goes to the object store once, owned by the driver.
            self.fn_ref = ray.put(fn)
            self.task = ray.remote(map_batch).options(
                name=f"map_batch:{udf}", **TASK_RETRIES, **opts
            )
            self.slots = concurrency
            self.description = f"ray: tasks, {concurrency} at a time{gpu}"

    def submit(self, index: int, batch: pa.Table) -> None:
        if self.task is not None:
            ref = self.task.remote(self.fn_ref, batch, self.batch_format)
            self.refs[ref] = (index, None)
            return
        slot = min(self.load, key=lambda i: (self.load[i], i))
        self.load[slot] += 1
        ref = self.actors[slot].run.options(name=self.method_name).remote(batch, self.batch_format)
        self.refs[ref] = (index, slot)

    def wait(self) -> list[tuple[int, Any]]:
        ready, _ = self.ray.wait(list(self.refs), num_returns=1)
        out = []
        for ref in ready:
            index, slot = self.refs.pop(ref)
            if slot is not None:
                self.load[slot] -= 1
            try:
                out.append((index, self.ray.get(ref)))
            except Exception as e:  # the worker died more often than retries allow
                cause = getattr(e, "cause", None) or e
                out.append((index, _Failure(type(cause).__name__, str(cause), "")))
        return out

    def running(self) -> int:
        return len(self.refs)

    def close(self) -> None:
        # Tasks still out (after a UDF error) are left to finish and their results dropped
        # with the refs, not cancelled: in Ray 2.60 a cancel that races the task's completion
        # fails a RAY_CHECK and aborts this (the driver's) process ("Tried to complete task
        # that was not pending", ray-project/ray#54527; seen here in the test suite).
        self.refs.clear()
        for a in self.actors:
            with contextlib.suppress(Exception):
                self.ray.kill(a)
        self.actors = []


@contextlib.contextmanager
def shipped_by_value(fn: Any) -> Iterator[None]:
    """Pickle ``fn``'s module by value while the workers are given ``fn``, when that module
    is not part of an installed package (a script, a test module, a local file next to a
    notebook): Ray workers could not import it by name. Functions of ``__main__`` (notebook
    cells, scripts) are always pickled by value; installed packages are imported by name.
    """
    import importlib.metadata

    from ray import cloudpickle

    name = getattr(fn, "__module__", None) or ""
    module = sys.modules.get(name)
    top = name.split(".", 1)[0]
    installed = top in importlib.metadata.packages_distributions()
    if (
        module is None
        or name == "__main__"
        or installed
        or top in sys.stdlib_module_names
        or not getattr(module, "__file__", None)
    ):
        yield
        return
    cloudpickle.register_pickle_by_value(module)
    try:
        yield
    finally:
        cloudpickle.unregister_pickle_by_value(module)


def make_executor(
    pool: ComputePool | None,
    fn: Any,
    *,
    batch_format: BatchFormat = "pyarrow",
    num_cpus: float = 1,
    num_gpus: float = 0,
    concurrency: int | None = None,
    constructor_args: Sequence[Any] = (),
    constructor_kwargs: Mapping[str, Any] | None = None,
    ray_options: Mapping[str, Any] | None = None,
    notes: list[str] | None = None,
) -> _Executor:
    """In-process for a local pool (or none), else Ray tasks or actors; ``num_gpus`` is asked
    for only when the pool has GPUs (else the UDF runs on CPUs, and a note says so)."""
    is_class = inspect.isclass(fn)
    if pool is None or not pool.is_ray:
        if is_class:
            fn = fn(*constructor_args, **dict(constructor_kwargs or {}))
        return _LocalExecutor(fn, batch_format)
    status = pool.status()
    gpus, cpus = float(status["gpus"]), float(status["cpus"])
    if num_gpus and gpus < num_gpus:
        if notes is not None:
            notes.append(f"asked for {num_gpus:g} GPU(s) per worker; the pool has none free")
        num_gpus = 0
    if concurrency is None:
        if num_gpus:
            concurrency = max(1, int(gpus // num_gpus))
        else:
            concurrency = max(1, int(cpus // max(num_cpus, 1e-9))) if num_cpus else 1
    if concurrency < 1:
        raise ConfigError(f"concurrency must be at least 1, not {concurrency}")
    with shipped_by_value(fn):
        return _RayExecutor(
            fn,
            is_class=is_class,
            batch_format=batch_format,
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            concurrency=concurrency,
            constructor_args=constructor_args,
            constructor_kwargs=constructor_kwargs,
            ray_options=ray_options,
        )


class PoolMapper:
    """A UDF kept warm on the pool (actors built once) for many in-memory calls: what a
    pipeline with its own commit protocol (RAG indexing) uses for its heavy step.

    Example:
        >>> from matrixos.compute import ComputePool
        >>> from matrixos.config import Settings
        >>> m = PoolMapper(ComputePool(Settings(compute="local")), lambda b: b)
        >>> [t.num_rows for t in m.map([pa.table({"x": [1]}), pa.table({"x": [2, 3]})])]
        [1, 2]
    """

    def __init__(self, pool: ComputePool | None, fn: Any, **options: Any) -> None:
        self.executor = make_executor(pool, fn, **options)

    @property
    def description(self) -> str:
        return self.executor.description

    def map(self, batches: Sequence[pa.Table], *, what: str = "batch") -> list[pa.Table]:
        """``fn`` of each batch, in order; raises ``BatchError`` naming the batch that failed."""
        out: list[pa.Table] = []
        slots = self.executor.slots
        for index, result in run_ordered(
            self.executor, enumerate(batches), max_in_flight=slots, max_buffered=2 * slots
        ):
            if isinstance(result, _Failure):
                raise BatchError(
                    f"{what} {index} failed on the compute pool ({self.description}): "
                    f"{result.kind}: {result.message}",
                    batch=index,
                )
            out.append(result)
        return out

    def close(self) -> None:
        self.executor.close()


def run_ordered(
    executor: _Executor,
    batches: Iterable[tuple[int, pa.Table]],
    *,
    max_in_flight: int,
    max_buffered: int,
    on_peak: Callable[[int], None] | None = None,
) -> Iterator[tuple[int, Any]]:
    """``(index, result)`` for each batch, in the order given, with at most ``max_in_flight``
    batches running and ``max_buffered`` submitted but not yet yielded (back-pressure)."""
    it = iter(batches)
    order: list[int] = []  # indices submitted and not yet yielded, in order
    done: dict[int, Any] = {}
    exhausted = False
    while True:
        while (
            not exhausted
            and executor.running() < max_in_flight
            and len(order) < max_buffered
            and executor.running() < executor.slots
        ):
            try:
                index, batch = next(it)
            except StopIteration:
                exhausted = True
                break
            executor.submit(index, batch)
            order.append(index)
            if on_peak is not None:
                on_peak(executor.running())
        while order and order[0] in done:
            index = order.pop(0)
            yield index, done.pop(index)
        if exhausted and not order:
            return
        if order and order[0] not in done:
            for index, result in executor.wait():
                done[index] = result


# -- the source --------------------------------------------------------------------------------
@dataclass
class _Source:
    label: str  # for messages: the table's name or "query"
    identity: str  # what the job key hashes
    version: int | None  # the table version read (pinned for resumes); None for a query
    format: Literal["delta", "lance"]
    query: str


def _is_query(source: str) -> bool:
    return any(ch.isspace() for ch in source.strip()) or source.strip().endswith(")")


def _open_source(
    lh: Lakehouse,
    source: str,
    *,
    columns: Sequence[str] | None,
    filter: str | None,
    version: int | None,
) -> _Source:
    # Built as a tree (sqlglot imported here: not needed at ``import matrixos``): the source
    # query and the filter must each parse as one query and one condition, and column names
    # are quoted identifiers, so none of them can change the statement's shape.
    import sqlglot
    from sqlglot import exp
    from sqlglot.errors import SqlglotError

    from matrixos.errors import SQLError

    projection = [exp.column(c, quoted=True) for c in columns] if columns else [exp.Star()]
    try:
        where = sqlglot.condition(filter, dialect="duckdb") if filter else None
        if _is_query(source):
            inner = sqlglot.parse_one(source, read="duckdb")
            if not isinstance(inner, exp.Query):
                raise SQLError(f"the source must be a query, got {source!r}")
            query = exp.select(*projection).from_(inner.subquery("s"))
            return _Source("query", source.strip(), None, "delta", _where(query, where))
    except SqlglotError as e:
        raise SQLError(f"cannot parse the source or filter: {e}") from e
    t = lh.table(source)
    v = version if version is not None else _table_version(t)
    table = exp.to_table(t._sql_name, dialect="duckdb")
    table.set(
        "version", exp.Version(this="VERSION", kind="AS OF", expression=exp.Literal.number(v))
    )
    return _Source(
        t.name,
        t.name,
        v,
        "lance" if t.info.format == "lance" else "delta",
        _where(exp.select(*projection).from_(table), where),
    )


def _where(query: Any, condition: Any) -> str:
    return str((query.where(condition) if condition is not None else query).sql("duckdb"))


def _table_version(t: Table) -> int:
    if t.info.format == "lance":
        return int(t.store.version())  # type: ignore[union-attr]
    return int(t.version)


def rebatch(reader: Iterable[pa.RecordBatch], size: int) -> Iterator[tuple[int, pa.Table, bool]]:
    """``(index, batch of exactly size rows (the last may be shorter), is_last)``."""
    buf: list[pa.RecordBatch] = []
    held = 0
    index = 0
    pending: pa.Table | None = None
    for rb in reader:
        if rb.num_rows == 0:
            continue
        buf.append(rb)
        held += rb.num_rows
        while held >= size:
            table = pa.Table.from_batches(buf)
            batch, rest = table.slice(0, size), table.slice(size)
            buf, held = rest.to_batches(), rest.num_rows
            if pending is not None:
                yield index, pending, False
                index += 1
            pending = batch.combine_chunks()
    if held:
        if pending is not None:
            yield index, pending, False
            index += 1
        pending = pa.Table.from_batches(buf).combine_chunks()
    if pending is not None:
        yield index, pending, True


# -- resume records ------------------------------------------------------------------------
@dataclass
class _Run:
    run: str
    source_version: int | None
    committed: list[tuple[int, int]]  # batch ranges [first, end)
    done: bool

    def has(self, index: int) -> bool:
        return any(a <= index < b for a, b in self.committed)


def _markers(t: Table, job: str) -> list[dict[str, Any]]:
    """This job's commit records in the output table, oldest first."""
    out = []
    for h in t.store.history():
        raw = h.get(MARKER_KEY) or (h.get("operationParameters") or {}).get(MARKER_KEY)
        if not raw:
            continue
        try:
            m = json.loads(raw)
        except (TypeError, ValueError):
            continue
        if m.get("job") == job:
            out.append({**m, "_version": int(h.get("version", 0))})
    out.sort(key=lambda m: m["_version"])
    return out


def _last_run(t: Table | None, job: str) -> _Run | None:
    if t is None:
        return None
    marks = _markers(t, job)
    if not marks:
        return None
    run = marks[-1]["run"]
    mine = [m for m in marks if m["run"] == run]
    return _Run(
        run,
        mine[-1].get("source_version"),
        [(int(m["first"]), int(m["end"])) for m in mine],
        any(m.get("last") for m in mine),
    )


def _job_key(
    source: _Source,
    fn: Any,
    *,
    output: str,
    columns: Sequence[str] | None,
    filter: str | None,
    batch_size: int,
    mode: str,
    key: Sequence[str] | None,
) -> str:
    name = f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn).__name__)}"
    spec = {
        "source": source.identity,
        "fn": name,
        "output": output,
        "columns": list(columns or []),
        "filter": filter,
        "batch_size": batch_size,
        "mode": mode,
        "key": list(key or []),
    }
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


# -- the writer ----------------------------------------------------------------------------------
class _Writer:
    def __init__(
        self,
        lh: Lakehouse,
        output: str,
        *,
        format: Literal["delta", "lance"],
        mode: str,
        key: Sequence[str] | None,
        marker: dict[str, Any],
        first_commit: bool,
    ) -> None:
        self.lh = lh
        self.output = output
        self.format = format
        self.mode = mode
        self.key = list(key or [])
        self.marker = marker
        self.first_commit = first_commit
        self.table: Table | None = None

    def _table(self, schema: pa.Schema) -> Table:
        if self.table is None:
            try:
                self.table = self.lh.table(self.output)
            except TableNotFound:
                self.table = self.lh.create_table(
                    self.output, schema=schema, format=self.format, mode="ignore"
                )
        return self.table

    def commit(self, parts: list[pa.Table], first: int, end: int, last: bool) -> int:
        """Write ``parts`` (batches ``[first, end)``) in one commit that records them."""
        data = pa.concat_tables(parts, promote_options="permissive") if parts else None
        if data is None:
            raise AssertionError("nothing to commit")  # pragma: no cover
        t = self._table(data.schema)
        meta = {MARKER_KEY: json.dumps({**self.marker, "first": first, "end": end, "last": last})}
        store = t.store
        if self.mode == "merge":
            store.merge(data, self.key, commit_metadata=meta)
        elif self.mode == "overwrite" and self.first_commit:
            store.overwrite(data, commit_metadata=meta)
        else:
            store.append(data, commit_metadata=meta)
        self.first_commit = False
        self.lh.catalog.touch(t.info.ident)
        return data.num_rows


# -- progress and GPU sampling ---------------------------------------------------------------
def gpu_utilization_sample() -> list[float] | None:
    """Each local GPU's current utilisation in percent (``nvidia-smi``); None without one."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout
        return [float(x) for x in out.split()]
    except (OSError, subprocess.SubprocessError, ValueError):
        return None


class GpuSampler:
    """Samples GPU utilisation every ``interval`` seconds while a job runs (a thread here, or
    an actor on each GPU node of a Ray pool); ``stop()`` gives the mean, or None."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> GpuSampler:
        if gpu_utilization_sample() is None:
            return self
        self._thread = threading.Thread(target=self._loop, daemon=True, name="mx-gpu-sampler")
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            got = gpu_utilization_sample()
            if got:
                self.samples.append(sum(got) / len(got))

    def stop(self) -> float | None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        return sum(self.samples) / len(self.samples) if self.samples else None


class _Sampling:
    """GPU sampling for a job: locally, plus an actor on every GPU node of a Ray pool."""

    def __init__(self, pool: ComputePool | None, num_gpus: float) -> None:
        self.local = GpuSampler().start()
        self.actors: list[Any] = []
        if pool is None or not pool.is_ray or not num_gpus:
            return
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = ray.get_runtime_context().get_node_id()
        remote: Any = ray.remote(GpuSampler)
        for node in pool.status()["nodes"]:
            if node["alive"] and node["gpus"] and node["node_id"] != here:
                strategy = NodeAffinitySchedulingStrategy(node["node_id"], soft=False)
                actor = remote.options(num_cpus=0, scheduling_strategy=strategy).remote()
                actor.start.remote()
                self.actors.append(actor)

    def stop(self) -> float | None:
        means = [m for m in [self.local.stop()] if m is not None]
        if self.actors:
            import ray

            with contextlib.suppress(Exception):
                got = ray.get([a.stop.remote() for a in self.actors], timeout=15)
                means += [m for m in got if m is not None]
            for a in self.actors:
                with contextlib.suppress(Exception):
                    ray.kill(a)
        return sum(means) / len(means) if means else None


# -- the job ---------------------------------------------------------------------------------
def map_batches(
    lh: Lakehouse,
    source: str,
    fn: Callable[[Any], Any] | type,
    *,
    output: str,
    batch_size: int = 1024,
    num_gpus: float = 0,
    num_cpus: float = 1,
    concurrency: int | None = None,
    columns: Sequence[str] | None = None,
    filter: str | None = None,
    key: str | Sequence[str] | None = None,
    mode: Literal["append", "overwrite", "merge"] = "append",
    resume: bool = True,
    format: Literal["delta", "lance"] | None = None,
    batch_format: BatchFormat = "pyarrow",
    fn_constructor_args: Sequence[Any] = (),
    fn_constructor_kwargs: Mapping[str, Any] | None = None,
    commit_batches: int = 8,
    max_in_flight: int | None = None,
    progress: bool | None = None,
    ray_options: Mapping[str, Any] | None = None,
) -> MapBatchesSummary:
    """Run ``fn`` over ``source`` in batches on the compute pool; write to ``output``.

    See the module docstring for the guarantees, and ``Lakehouse.map_batches`` for the
    parameters.
    """
    started = time.perf_counter()
    _check_args(batch_size, commit_batches, max_in_flight, mode, key, batch_format)
    keys = [key] if isinstance(key, str) else list(key or [])
    try:
        out_table: Table | None = lh.table(output)
    except TableNotFound:
        out_table = None
    # Which run this is: a new one, or the unfinished last one of the same job.
    probe = _open_source(lh, source, columns=columns, filter=filter, version=None)
    job = _job_key(
        probe,
        fn,
        output=output,
        columns=columns,
        filter=filter,
        batch_size=batch_size,
        mode=mode,
        key=keys,
    )
    last = _last_run(out_table, job) if resume else None
    summary = MapBatchesSummary(output=output, source=probe.label, job=job, run="")
    if last is not None and last.done and last.source_version == probe.version:
        summary.run, summary.source_version, summary.resumed = last.run, last.source_version, True
        summary.batches = summary.batches_skipped = max((b for _, b in last.committed), default=0)
        summary.notes.append("already complete for this source version: nothing to do")
        summary.seconds = time.perf_counter() - started
        return summary
    if last is not None and not last.done:
        src = _open_source(lh, source, columns=columns, filter=filter, version=last.source_version)
        run = last
        summary.resumed = True
    else:
        src = probe
        run = _Run(uuid.uuid4().hex[:12], probe.version, [], False)
    summary.run, summary.source_version = run.run, src.version
    fmt = format or (out_table.info.format if out_table is not None else src.format)
    writer = _Writer(
        lh,
        output,
        format=fmt,  # type: ignore[arg-type]
        mode=mode,
        key=keys,
        marker={"job": job, "run": run.run, "source_version": src.version},
        first_commit=not run.committed,
    )
    pool = lh.compute
    executor = make_executor(
        pool,
        fn,
        batch_format=batch_format,
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        concurrency=concurrency,
        constructor_args=fn_constructor_args,
        constructor_kwargs=fn_constructor_kwargs,
        ray_options=ray_options,
        notes=summary.notes,
    )
    summary.executor = executor.description
    summary.num_gpus = executor.num_gpus
    window = max_in_flight or executor.slots
    summary.max_in_flight = window
    show = interactive() if progress is None else progress
    sampling: _Sampling | None = None
    bar: RateBar | None = None
    ranges: dict[int, tuple[int, int]] = {}
    lasts: set[int] = set()

    def todo() -> Iterator[tuple[int, pa.Table]]:
        reader = lh.sql(src.query).to_arrow_reader()
        row = 0
        for index, batch, is_last in rebatch(reader, batch_size):
            summary.batches = index + 1
            ranges[index] = (row, row + batch.num_rows)
            row += batch.num_rows
            if is_last:
                lasts.add(index)
            if run.has(index):
                summary.batches_skipped += 1
                continue
            summary.rows_in += batch.num_rows
            yield index, batch

    def peak(n: int) -> None:
        summary.peak_in_flight = max(summary.peak_in_flight, n)

    parts: list[pa.Table] = []
    first: int | None = None
    try:
        sampling = _Sampling(pool, executor.num_gpus)
        bar = RateBar(f"map_batches {src.label}") if show else None
        for index, result in run_ordered(
            executor,
            todo(),
            max_in_flight=window,
            max_buffered=window + commit_batches,
            on_peak=peak,
        ):
            if isinstance(result, _Failure):
                raise _batch_error(result, index, ranges.get(index), src, summary)
            if first is None:
                first = index
            parts.append(result)
            summary.batches_run += 1
            is_last = index in lasts
            if len(parts) >= commit_batches or is_last:
                summary.rows_out += writer.commit(parts, first, index + 1, is_last)
                summary.commits += 1
                parts, first = [], None
            if bar is not None:
                rate = f"{summary.rows_in:,} rows · {summary.rows_in / bar.elapsed:,.0f} rows/s"
                bar.update(rate)
        if parts and first is not None:  # the rest followed committed batches only
            summary.rows_out += writer.commit(parts, first, first + len(parts), True)
            summary.commits += 1
    finally:
        executor.close()
        if bar is not None:
            bar.close()
        if sampling is not None:
            summary.gpu_utilization = sampling.stop()
        summary.seconds = time.perf_counter() - started
    if summary.gpu_utilization is None and summary.num_gpus:
        summary.gpu_note = "n/a (nvidia-smi found no GPU to sample)"
    if show:
        print(summary, file=sys.stderr)
    return summary


def _check_args(
    batch_size: int,
    commit_batches: int,
    max_in_flight: int | None,
    mode: str,
    key: str | Sequence[str] | None,
    batch_format: str,
) -> None:
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, not {batch_size}")
    if commit_batches < 1:
        raise ConfigError(f"commit_batches must be at least 1, not {commit_batches}")
    if max_in_flight is not None and max_in_flight < 1:
        raise ConfigError(f"max_in_flight must be at least 1, not {max_in_flight}")
    if mode not in ("append", "overwrite", "merge"):
        raise ConfigError(f"mode={mode!r}: use 'append', 'overwrite' or 'merge'")
    if mode == "merge" and not key:
        raise ConfigError("mode='merge' needs key=[column, ...] to match rows on")
    if batch_format not in ("pyarrow", "pandas", "numpy"):
        raise ConfigError(f"batch_format={batch_format!r}: use 'pyarrow', 'pandas' or 'numpy'")


def _batch_error(
    failure: _Failure,
    index: int,
    rows: tuple[int, int] | None,
    src: _Source,
    summary: MapBatchesSummary,
) -> BatchError:
    where = f"{src.label}@v{src.version}" if src.version is not None else src.label
    span = f", rows {rows[0]}-{rows[1] - 1}" if rows else ""
    detail = f"\n{failure.trace.rstrip()}" if failure.trace else ""
    return BatchError(
        f"map_batches into {summary.output}: the function failed on batch {index}{span} of "
        f"{where}: {failure.kind}: {failure.message}{detail}",
        batch=index,
        rows=rows,
        hint=f"fix the function and rerun: the {summary.commits} commit(s) made so far are kept "
        "and their batches skipped",
    )
