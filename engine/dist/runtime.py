"""The distributed engine's runtime: Ray tasks, their retry policy, the worker's DuckDB
connection, and the mapping of task failures to MatrixOS errors.

One place for what every Ray job of MatrixOS shares: the query fragments and stages of
``engine.dist`` and ``matrixos.batch``'s ``map_batches`` take their retry policy
(``TASK_RETRIES``, ``ACTOR_RETRIES``) and their result gathering (``gather``, ``consume``) from
here. A task whose worker dies is retried; its inputs are objects owned by the driver, so they
survive the worker.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, replace
from functools import cache, lru_cache
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa

from matrixos.engine import duck
from matrixos.engine.filecache import ReadStats, localize, readable_dirs
from matrixos.engine.sandbox import locked_connection
from matrixos.engine.scan import FileEntry, PrunedScan, make_context, render_scan
from matrixos.engine.usage import TaskUsage, task_clock, task_usage
from matrixos.errors import ComputeError, MatrixOSError
from matrixos.storage.warehouse import is_remote

if TYPE_CHECKING:
    from collections.abc import Callable

    from matrixos.storage.options import StorageOptions

MAX_RETRIES = 3  # a task whose worker died; an actor that died (restarts, then calls retried)
# Ray options of the retry policy: a task is retried when its worker dies, never on its own
# exception (a UDF or DuckDB error is the answer, not a fault).
TASK_RETRIES: dict[str, Any] = {"max_retries": MAX_RETRIES, "retry_exceptions": False}
ACTOR_RETRIES: dict[str, Any] = {"max_restarts": MAX_RETRIES, "max_task_retries": MAX_RETRIES}


def remote_task(fn: Callable[..., Any], **options: Any) -> Any:
    """``fn`` as a Ray remote function with the retry policy (one CPU unless ``options`` say
    otherwise)."""
    import ray

    return ray.remote(**{"num_cpus": 1, **TASK_RETRIES, **options})(fn)


def slim_scan(scan: PrunedScan, files: list[FileEntry]) -> PrunedScan:
    """What a task needs of the scan: its files (no statistics) and their deletion vectors;
    the fragment of no files (``planner.fragment_plan`` adds one) takes the scan's rows still
    in a write-ahead log."""
    snap = scan.snapshot
    light = [FileEntry(f.path, f.size, f.num_records, f.partition, {}, {}, {}) for f in files]
    dvs = {f.path: snap.deletion_vectors[f.path] for f in files if f.path in snap.deletion_vectors}
    pending = None if files else scan.pending
    return PrunedScan(replace(snap, files=light, deletion_vectors=dvs), light, [], pending)


def run_fragment(
    sql: str,
    placeholder: str,
    scan: PrunedScan,
    options: StorageOptions | None,
    threads: int,
    memory_limit: str | None,
) -> tuple[pa.Table, ReadStats, TaskUsage]:
    """One fragment: DuckDB (sandboxed, reading only the table's folder, or its files in this
    node's cache) over its files; returns its rows, what it read where and what it used."""
    started = task_clock()
    scan, stats = localize(scan, options)  # `scan` keeps the cached files pinned until return
    remote = is_remote(scan.snapshot.location)
    cur = worker_connection(readable_dirs(scan), threads, memory_limit).cursor()
    try:
        ctx = make_context(options, remote)
        body = render_scan(scan, ctx)
        for name, obj in ctx.registrations.items():
            cur.register(name, obj)
        rows = duck.table(cur, sql.replace(placeholder, f"({body})"))
        return rows, stats, task_usage(started)
    except duckdb.Error as e:
        # DuckDB's exceptions do not survive pickling with their type: send what maps it.
        raise FragmentError(type(e).__name__, str(e)) from None
    finally:
        cur.close()  # drops this task's registrations


@lru_cache(maxsize=8)
def worker_connection(
    allowed: tuple[str, ...], threads: int, memory_limit: str | None
) -> duckdb.DuckDBPyConnection:
    """A locked connection per worker process and table folder (making one costs ~30 ms);
    each task runs on a cursor of its own."""
    return locked_connection(list(allowed), threads=threads, memory_limit=memory_limit)


class FragmentError(Exception):
    """A fragment's DuckDB error, picklable (the driver maps it like a local one)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(kind, message)
        self.kind = kind
        self.message = message

    def __str__(self) -> str:
        return self.message


@cache
def remote_fragment() -> Any:
    return remote_task(run_fragment)


def gather(
    refs: list[Any], what: str, fragment_error: Callable[[FragmentError], MatrixOSError]
) -> list[Any]:
    """``ray.get`` of task results, their failures as MatrixOS errors: a DuckDB error in a
    task as ``fragment_error`` maps it (as the local engine reports it), a worker lost past its
    retries as ``ComputeError``."""
    import ray

    try:
        return list(ray.get(refs))
    except ray.exceptions.RayTaskError as e:
        consume(refs)
        cause = e.cause
        if isinstance(cause, FragmentError):
            raise fragment_error(cause) from None
        if isinstance(cause, MatrixOSError):
            raise cause from None
        raise ComputeError(f"{what} failed: {cause}") from e
    except ray.exceptions.RayError as e:
        consume(refs)
        raise ComputeError(
            f"{what} could not run on the Ray pool: {e}",
            hint=f"each task is retried {MAX_RETRIES} times when its worker dies",
        ) from e


def consume(refs: list[Any], wait_s: float = 2.0) -> None:
    """Take the outcome of every task in ``refs`` and drop it.

    ``ray.get`` of a list stops at the first failed task, and Ray logs a failure nobody
    fetched, with its traceback, as an "Unhandled error" when its reference goes away. After
    one failure the other outcomes are not needed, but they are fetched so that nothing spills
    into the log: those done within ``wait_s`` here, the rest by a background thread as they
    finish (the error that is raised now is not held up)."""
    import threading

    import ray

    with contextlib.suppress(Exception):
        ready, rest = ray.wait(refs, num_returns=len(refs), timeout=wait_s)
        for ref in ready:
            with contextlib.suppress(Exception):
                ray.get(ref)
        if not rest:
            return
        # Not ray.get itself: after a shutdown it would start a new local Ray runtime.
        get = getattr(ray.get, "__wrapped__", None)
        if get is None:
            return

        def fetch() -> None:
            # Ray ends a thread blocked in get with SystemExit when the driver shuts down.
            for ref in rest:
                with contextlib.suppress(Exception, SystemExit):
                    get(ref)

        threading.Thread(target=fetch, name="matrixos-consume", daemon=True).start()


# -- the stage task ----------------------------------------------------------------------------
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
    started = task_clock()
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
    cur = worker_connection(tuple(sorted(dirs)), threads, memory_limit).cursor()
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
            outs = [duck.table(cur, text)]
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
        "usage": task_usage(started),
    }
    return [*outs, stats]


@cache
def remote_stage() -> Any:
    return remote_task(run_stage)


# -- the executor -------------------------------------------------------------------------------
