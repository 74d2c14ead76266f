"""GPU utilisation of a ``map_batches`` run: ``nvidia-smi`` samples, here and on each GPU node
of a Ray pool."""

from __future__ import annotations

import contextlib
import threading
from typing import TYPE_CHECKING, Any

from matrixos._nvidia import nvidia_smi

if TYPE_CHECKING:
    from matrixos.compute import ComputePool


def gpu_utilization_sample() -> list[float] | None:
    """Each local GPU's current utilisation in percent (``nvidia-smi``); None without one."""
    lines = nvidia_smi("utilization.gpu")
    try:
        return None if lines is None else [float(x) for x in lines]
    except ValueError:
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


class Sampling:
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
