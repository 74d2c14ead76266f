"""``lh.map_batches`` on the 3-node cluster: the same output as in-process, GPU placement,
bounded in-flight batches, and exactly-once output when a worker or the driver is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

import matrixos as mx
from matrixos.ai.embed import EmbedColumn
from matrixos.compute import ComputePool
from matrixos.errors import BatchError

try:
    from tests.compute._cluster import RayCluster
except ModuleNotFoundError:
    from _cluster import RayCluster  # type: ignore[no-redef]
N = 600
WORDS = ["solar", "panel", "tax", "law", "river", "delta", "lance", "vector", "ray", "gpu"]


def docs(n: int = N) -> pa.Table:
    return pa.table(
        {
            "id": pa.array(range(n), pa.int64()),
            "text": [f"{WORDS[i % 10]} {WORDS[(i * 3) % 10]} row {i}" for i in range(n)],
        }
    )


def add_len(batch: pa.Table) -> pa.Table:
    return batch.append_column("n", pc.utf8_length(batch["text"]))


def slow_len(batch: pa.Table) -> pa.Table:
    time.sleep(0.25)
    return add_len(batch)


class SlowLen:
    """A class UDF (one per actor) that takes its time."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        return slow_len(batch)


class WhereAmI:
    """Records the node, the GPUs Ray gave the actor, and the device a model would use."""

    def __init__(self) -> None:
        import ray

        from matrixos.ai.embed import MiniLMEmbedder

        self.node = ray.util.get_node_ip_address()
        self.gpu_ids = ",".join(str(g) for g in ray.get_gpu_ids())
        # No real GPU behind the advertised one: the model falls back to the CPU.
        self.device = MiniLMEmbedder().device

    def __call__(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        return pa.table(
            {
                "id": batch["id"],
                "node": [self.node] * n,
                "gpu_ids": [self.gpu_ids] * n,
                "device": [self.device] * n,
            }
        )


def fails_on_300(batch: pa.Table) -> pa.Table:
    if 300 in batch["id"].to_pylist():
        raise RuntimeError("cannot handle row 300")
    return batch


def ids(lh: mx.Lakehouse, table: str) -> list[int]:
    return sorted(lh.table(table).to_arrow(columns=["id"]).column("id").to_pylist())


@pytest.fixture(scope="module")
def ray_lh(
    ray_pool: ComputePool, ray_cluster: RayCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[mx.Lakehouse]:
    wh = str(tmp_path_factory.mktemp("wh"))
    with mx.connect(wh, compute=ray_cluster.address) as lh:
        lh.create_table("src.docs", docs())
        yield lh


def test_function_and_class_udfs_equal_the_in_process_result(
    ray_lh: mx.Lakehouse, tmp_path: Path
) -> None:
    s = ray_lh.map_batches("src.docs", add_len, output="out.lens", batch_size=50)
    assert s.executor.startswith("ray: tasks") and (s.rows_in, s.rows_out) == (N, N)
    with mx.connect(str(tmp_path)) as local:
        local.create_table("src.docs", docs())
        local.map_batches("src.docs", add_len, output="out.lens", batch_size=50)
        want = local.table("out.lens").to_arrow().sort_by("id")
        local.map_batches(
            "src.docs", EmbedColumn, output="out.vec", fn_constructor_kwargs={"embedder": "hash"}
        )
        want_vec = local.table("out.vec").to_arrow().sort_by("id")
    assert ray_lh.table("out.lens").to_arrow().sort_by("id").equals(want)

    s = ray_lh.map_batches(
        "src.docs",
        EmbedColumn,
        output="out.vec",
        fn_constructor_kwargs={"embedder": "hash"},
        batch_size=100,
    )
    assert s.executor == "ray: 3 actor(s)" and s.rows_out == N
    got = ray_lh.table("out.vec").to_arrow().sort_by("id")
    assert got.select(["id", "text"]).equals(want_vec.select(["id", "text"]))
    assert np.allclose(
        np.stack(got["vector"].to_numpy(zero_copy_only=False)),
        np.stack(want_vec["vector"].to_numpy(zero_copy_only=False)),
    )


def test_num_gpus_runs_on_the_node_with_a_gpu(
    ray_lh: mx.Lakehouse, ray_cluster: RayCluster
) -> None:
    s = ray_lh.map_batches("src.docs", WhereAmI, output="out.where", num_gpus=1, batch_size=200)
    assert s.executor == "ray: 1 actor(s), 1 GPU each" and s.num_gpus == 1
    assert s.gpu_utilization is None and "n/a" in s.gpu_text  # nothing real to sample
    rows = ray_lh.table("out.where").to_arrow()
    gpu_node = next(n.ip for n in ray_cluster.nodes if n.zone == "c")
    assert set(rows["node"].to_pylist()) == {gpu_node}
    assert set(rows["gpu_ids"].to_pylist()) == {"0"}
    assert set(rows["device"].to_pylist()) == {"cpu"}
    # more GPUs than the pool has: CPUs instead, and the summary says so
    s = ray_lh.map_batches("src.docs", add_len, output="out.cpu", num_gpus=4, batch_size=300)
    assert s.num_gpus == 0 and "none free" in str(s) and s.rows_out == N


def test_in_flight_batches_are_bounded(ray_lh: mx.Lakehouse) -> None:
    s = ray_lh.map_batches(
        "src.docs", slow_len, output="out.bounded", batch_size=20, max_in_flight=2
    )
    assert s.batches_run == 30 and s.max_in_flight == 2 and s.peak_in_flight == 2
    assert ids(ray_lh, "out.bounded") == list(range(N))


def test_udf_error_names_the_batch(ray_lh: mx.Lakehouse) -> None:
    with pytest.raises(BatchError) as err:
        ray_lh.map_batches("src.docs", fails_on_300, output="out.err", batch_size=100)
    assert err.value.batch == 3 and err.value.rows == (300, 400)
    assert "batch 3, rows 300-399 of main.src.docs@v0" in str(err.value)
    assert "RuntimeError: cannot handle row 300" in str(err.value)


@pytest.mark.parametrize(
    # Task titles name the UDF: only this test's workers are killed, never those of a job
    # another test runs on the cluster at the same time.
    ("fn", "title"),
    [(slow_len, "map_batch:slow_len"), (SlowLen, "MapBatchesWorker.run:SlowLen")],
)
def test_worker_killed_mid_job_gives_every_row_once(
    ray_lh: mx.Lakehouse, ray_cluster: RayCluster, fn: Any, title: str
) -> None:
    """A worker running a batch (a task's, or an actor's: restarted) is SIGKILLed."""
    output = f"out.kill_{title.split(':')[0].split('.')[0].lower()}"
    result: dict[str, Any] = {}

    def job() -> None:
        try:
            result["summary"] = ray_lh.map_batches(
                "src.docs", fn, output=output, batch_size=20, commit_batches=2
            )
        except BaseException as e:  # surfaced by the assertion below
            result["error"] = e

    worker = threading.Thread(target=job)
    worker.start()
    killed = 0
    deadline = time.monotonic() + 60
    while worker.is_alive() and not killed and time.monotonic() < deadline:
        time.sleep(0.05)
        pids = ray_cluster.task_pids(title)
        if pids:
            time.sleep(0.1)  # mid-batch
            if pids[0] in ray_cluster.task_pids(title):
                os.kill(pids[0], signal.SIGKILL)
                killed += 1
    worker.join(timeout=120)
    assert not worker.is_alive()
    assert "error" not in result, result.get("error")
    assert killed == 1
    assert result["summary"].rows_out == N
    assert ids(ray_lh, output) == list(range(N))  # every row exactly once


CHILD = textwrap.dedent(
    """
    import importlib, sys
    import matrixos as mx
    sys.path.insert(0, sys.argv[3])
    slow_len = importlib.import_module(sys.argv[4]).slow_len  # the job key names its module
    with mx.connect(sys.argv[1], compute=sys.argv[2]) as lh:
        lh.map_batches("src.docs", slow_len, output="out.driver", batch_size=20,
                       commit_batches=1, max_in_flight=2)
    """
)


def test_driver_killed_mid_job_resumes_without_duplicates(
    ray_lh: mx.Lakehouse, ray_cluster: RayCluster, tmp_path: Path
) -> None:
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    root = Path(__file__).parents[__name__.count(".")]
    env = {**os.environ, **ray_cluster.env()}
    env.pop("RAY_ADDRESS", None)
    wh = ray_lh.warehouse.uri
    args = [sys.executable, str(script), wh, ray_cluster.address, str(root), __name__]
    proc = subprocess.Popen(args, env=env)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
            try:
                if ray_lh.table("out.driver").version >= 4:  # created + a few batches
                    break
            except mx.errors.MatrixOSError:
                continue
        assert proc.poll() is None, "the job ended before it could be killed"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    partial = ids(ray_lh, "out.driver")
    assert 0 < len(partial) < N
    s = ray_lh.map_batches(
        "src.docs", slow_len, output="out.driver", batch_size=20, commit_batches=1,
        max_in_flight=2,
    )  # fmt: skip
    assert s.resumed and s.batches_skipped == len(partial) // 20
    assert ids(ray_lh, "out.driver") == list(range(N))


PG_DOCS = Path("/usr/share/doc/postgresql-doc-15/html")


def test_rag_index_embeds_on_the_pool(ray_lh: mx.Lakehouse, tmp_path: Path) -> None:
    """On a Ray pool RAG indexing embeds on actors; the chunks equal an in-process run."""
    folder = tmp_path / "docs"
    folder.mkdir()
    for name in sorted(p.name for p in PG_DOCS.glob("sql-*.html"))[:12]:
        (folder / name).write_bytes((PG_DOCS / name).read_bytes())
    s = ray_lh.rag.index(str(folder), "kb.chunks", embedder="hash", batch_chunks=64)
    assert s.compute.startswith("ray: ") and s.added == 12 and s.chunks_written > 12
    with mx.connect(str(tmp_path / "local")) as local:
        assert local.rag.index(str(folder), "kb.chunks", embedder="hash").compute == "in-process"
        want = local.table("kb.chunks").to_arrow(columns=["chunk_id", "vector"]).sort_by("chunk_id")
    got = ray_lh.table("kb.chunks").to_arrow(columns=["chunk_id", "vector"]).sort_by("chunk_id")
    assert got["chunk_id"].equals(want["chunk_id"])
    assert np.allclose(
        np.stack(got["vector"].to_numpy(zero_copy_only=False)),
        np.stack(want["vector"].to_numpy(zero_copy_only=False)),
    )
    again = ray_lh.rag.index(str(folder), "kb.chunks", embedder="hash")
    assert again.unchanged == 12 and again.chunks_written == 0  # still incremental
