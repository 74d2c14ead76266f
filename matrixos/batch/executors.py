"""Where a batch UDF runs: in this process, or as Ray tasks (a function) or actors (a class)
on the compute pool, with the retry policy of every Ray job; ``run_ordered`` keeps a bounded
window of batches out and yields their results in order."""

from __future__ import annotations

import contextlib
import inspect
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from matrixos.batch.udf import BatchFormat, Failure, MapBatchesWorker, apply_udf, map_batch

# The retry policy of every Ray job (the distributed engine's too).
from matrixos.engine.dist.runtime import ACTOR_RETRIES, TASK_RETRIES
from matrixos.errors import BatchError, ConfigError

if TYPE_CHECKING:
    from matrixos.compute import ComputePool


class Executor:
    """Runs the UDF on batches; ``submit`` then ``wait`` for finished ones."""

    description = "in-process"
    slots = 1  # how many batches it can run at once
    num_gpus: float = 0.0

    def submit(self, index: int, batch: pa.Table) -> None:
        raise NotImplementedError

    def wait(self) -> list[tuple[int, Any]]:
        """At least one finished batch: ``(index, table or Failure)``."""
        raise NotImplementedError

    def running(self) -> int:
        raise NotImplementedError

    def close(self) -> None:
        pass


class LocalExecutor(Executor):
    """Runs the UDF in this process, one batch at a time."""

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


class RayExecutor(Executor):
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
                out.append((index, Failure(type(cause).__name__, str(cause), "")))
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
) -> Executor:
    """In-process for a local pool (or none), else Ray tasks or actors; ``num_gpus`` is asked
    for only when the pool has GPUs (else the UDF runs on CPUs, and a note says so)."""
    is_class = inspect.isclass(fn)
    if pool is None or not pool.is_ray:
        if is_class:
            fn = fn(*constructor_args, **dict(constructor_kwargs or {}))
        return LocalExecutor(fn, batch_format)
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
        return RayExecutor(
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
            if isinstance(result, Failure):
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
    executor: Executor,
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
