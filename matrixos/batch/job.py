"""``map_batches``: the job that streams a source through a UDF into an output table, and the
summary of what one run did."""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa

from matrixos._progress import RateBar, interactive
from matrixos.batch.executors import make_executor, run_ordered
from matrixos.batch.gpu import Sampling
from matrixos.batch.resume import (
    Run,
    Source,
    Writer,
    is_query,
    job_key,
    last_run,
    open_source,
    rebatch,
)
from matrixos.batch.udf import BatchFormat, Failure
from matrixos.catalog import lineage, lineage_runs
from matrixos.errors import BatchError, ConfigError, TableNotFound

if TYPE_CHECKING:
    from matrixos.host import SessionHost
    from matrixos.table import Table


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


def map_batches(
    lh: SessionHost,
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
    parameters. The run's lineage (the source table and version, or the tables its query
    reads, into ``output``) goes to ``system.lineage.events``, the run's id as its run.
    """
    what = getattr(fn, "__qualname__", None) or type(fn).__name__
    with lineage.run(
        lh.service,
        "map_batches",
        principal=lh.principal.name,
        statement=f"map_batches({what}) from {source} into {output}",
    ) as tracked:
        summary = _map_batches(
            lh, source, fn, output=output, batch_size=batch_size, num_gpus=num_gpus,
            num_cpus=num_cpus, concurrency=concurrency, columns=columns, filter=filter,
            key=key, mode=mode, resume=resume, format=format, batch_format=batch_format,
            fn_constructor_args=fn_constructor_args,
            fn_constructor_kwargs=fn_constructor_kwargs, commit_batches=commit_batches,
            max_in_flight=max_in_flight, progress=progress, ray_options=ray_options,
        )  # fmt: skip
        if summary.source_version is not None and not is_query(source):
            lineage_runs.read(lh.table(source).name, summary.source_version)
        if tracked.job == "map_batches" and summary.run:  # not when a job's run holds it
            tracked.run_id = summary.run
    return summary


def _map_batches(
    lh: SessionHost,
    source: str,
    fn: Callable[[Any], Any] | type,
    *,
    output: str,
    batch_size: int,
    num_gpus: float,
    num_cpus: float,
    concurrency: int | None,
    columns: Sequence[str] | None,
    filter: str | None,
    key: str | Sequence[str] | None,
    mode: Literal["append", "overwrite", "merge"],
    resume: bool,
    format: Literal["delta", "lance"] | None,
    batch_format: BatchFormat,
    fn_constructor_args: Sequence[Any],
    fn_constructor_kwargs: Mapping[str, Any] | None,
    commit_batches: int,
    max_in_flight: int | None,
    progress: bool | None,
    ray_options: Mapping[str, Any] | None,
) -> MapBatchesSummary:
    started = time.perf_counter()
    _check_args(batch_size, commit_batches, max_in_flight, mode, key, batch_format)
    keys = [key] if isinstance(key, str) else list(key or [])
    try:
        out_table: Table | None = lh.table(output)
    except TableNotFound:
        out_table = None
    # Which run this is: a new one, or the unfinished last one of the same job.
    probe = open_source(lh, source, columns=columns, filter=filter, version=None)
    job = job_key(
        probe,
        fn,
        output=output,
        columns=columns,
        filter=filter,
        batch_size=batch_size,
        mode=mode,
        key=keys,
    )
    last = last_run(out_table, job) if resume else None
    summary = MapBatchesSummary(output=output, source=probe.label, job=job, run="")
    if last is not None and last.done and last.source_version == probe.version:
        summary.run, summary.source_version, summary.resumed = last.run, last.source_version, True
        summary.batches = summary.batches_skipped = max((b for _, b in last.committed), default=0)
        summary.notes.append("already complete for this source version: nothing to do")
        summary.seconds = time.perf_counter() - started
        return summary
    if last is not None and not last.done:
        src = open_source(lh, source, columns=columns, filter=filter, version=last.source_version)
        run = last
        summary.resumed = True
    else:
        src = probe
        run = Run(uuid.uuid4().hex[:12], probe.version, [], False)
    summary.run, summary.source_version = run.run, src.version
    fmt = format or (out_table.info.format if out_table is not None else src.format)
    writer = Writer(
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
    sampling: Sampling | None = None
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
        sampling = Sampling(pool, executor.num_gpus)
        bar = RateBar(f"map_batches {src.label}") if show else None
        for index, result in run_ordered(
            executor,
            todo(),
            max_in_flight=window,
            max_buffered=window + commit_batches,
            on_peak=peak,
        ):
            if isinstance(result, Failure):
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
    failure: Failure,
    index: int,
    rows: tuple[int, int] | None,
    src: Source,
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
