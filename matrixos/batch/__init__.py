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

The modules, bottom up: ``udf`` (calling the UDF and carrying its errors back), ``executors``
(in-process, Ray tasks or actors; the ordered, bounded window), ``gpu`` (utilisation sampling),
``resume`` (the pinned source, the job key, the commit records, the writer) and ``job``
(``map_batches`` and its summary).
"""

from __future__ import annotations

from matrixos.batch.executors import PoolMapper as PoolMapper
from matrixos.batch.executors import make_executor as make_executor
from matrixos.batch.executors import run_ordered as run_ordered
from matrixos.batch.executors import shipped_by_value as shipped_by_value
from matrixos.batch.gpu import GpuSampler as GpuSampler
from matrixos.batch.job import MapBatchesSummary as MapBatchesSummary
from matrixos.batch.job import map_batches as map_batches
from matrixos.batch.resume import MARKER_KEY as MARKER_KEY
from matrixos.batch.resume import rebatch as rebatch
from matrixos.batch.udf import MapBatchesWorker as MapBatchesWorker
from matrixos.batch.udf import apply_udf as apply_udf
from matrixos.batch.udf import to_output_table as to_output_table

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
