"""``lh.map_batches`` on the local pool: in-process, streaming, exactly-once and resumable.

The same job on the Ray cluster is in ``tests/compute/test_map_batches.py``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

import matrixos as mx
from matrixos.ai.embed import EmbedColumn, HashEmbedder
from matrixos.batch import MARKER_KEY, rebatch
from matrixos.errors import BatchError, ConfigError

N = 1000
WORDS = ["solar", "panel", "tax", "law", "river", "delta", "lance", "vector", "ray", "gpu"]


def docs(n: int = N) -> pa.Table:
    return pa.table(
        {
            "id": pa.array(range(n), pa.int64()),
            "text": [f"{WORDS[i % 10]} {WORDS[(i * 7) % 10]} doc {i}" for i in range(n)],
        }
    )


def add_len(batch: pa.Table) -> pa.Table:
    return batch.append_column("n", pc.utf8_length(batch["text"]))


FAIL_AT: int | None = None


def flaky(batch: pa.Table) -> pa.Table:
    """Fails on the batch holding id ``FAIL_AT`` (while it is set)."""
    if FAIL_AT is not None and FAIL_AT in batch["id"].to_pylist():
        raise ValueError(f"bad row {FAIL_AT}")
    return add_len(batch)


def ids(lh: mx.Lakehouse, table: str) -> list[int]:
    return sorted(lh.table(table).to_arrow(columns=["id"]).column("id").to_pylist())


def test_function_over_a_delta_table_equals_in_process(lh: mx.Lakehouse) -> None:
    lh.create_table("src.docs", docs())
    s = lh.map_batches("src.docs", add_len, output="out.lens", batch_size=64, commit_batches=4)
    assert (s.rows_in, s.rows_out, s.batches, s.batches_run) == (N, N, 16, 16)
    assert s.commits == 4 and s.executor == "in-process" and s.peak_in_flight <= 1
    assert s.gpu_utilization is None and s.gpu_text == "n/a (no GPU)"
    assert s.rows_per_s > 0 and "rows/s" in str(s) and "GPU utilisation n/a" in str(s)
    got = lh.table("out.lens").to_arrow().sort_by("id")
    assert got.equals(add_len(docs()))
    # each commit records its batch range, atomically with its rows
    marks = [json.loads(h[MARKER_KEY]) for h in lh.table("out.lens").history() if MARKER_KEY in h]
    assert sorted((m["first"], m["end"]) for m in marks) == [(0, 4), (4, 8), (8, 12), (12, 16)]
    assert [m["last"] for m in sorted(marks, key=lambda m: m["first"])] == [0, 0, 0, 1]


def test_class_udf_over_lance_and_returns_of_every_shape(tmp_path: Path) -> None:
    with mx.connect(str(tmp_path)) as lh:
        lh.create_table("kb.docs", docs(300), format="lance")
        s = lh.map_batches(
            "kb.docs",
            EmbedColumn,
            output="kb.vectors",
            fn_constructor_kwargs={"embedder": "hash"},
            batch_size=50,
        )
        assert s.rows_out == 300 and lh.table("kb.vectors").info.format == "lance"
        got = lh.table("kb.vectors").to_arrow().sort_by("id")
        want = HashEmbedder().embed(docs(300)["text"].to_pylist())
        assert np.allclose(np.stack(got["vector"].to_numpy(zero_copy_only=False)), want)

        # pandas in and out, numpy dicts in and out (2-D arrays become fixed-size lists)
        def pandas_fn(df: Any) -> Any:
            return df.assign(twice=df["id"] * 2)

        lh.map_batches(
            "SELECT id FROM kb.docs WHERE id < 100", pandas_fn, output="t.p", batch_format="pandas"
        )
        assert sorted(r["twice"] for r in lh.table("t.p").to_arrow().to_pylist()) == list(
            range(0, 200, 2)
        )

        def numpy_fn(cols: dict[str, Any]) -> dict[str, Any]:
            return {"id": cols["id"], "pair": np.stack([cols["id"], cols["id"] + 1], axis=1)}

        lh.map_batches(
            "kb.docs", numpy_fn, output="t.n", columns=["id"], filter="id >= 290",
            batch_format="numpy",
        )  # fmt: skip
        rows = lh.table("t.n").to_arrow().sort_by("id")
        assert rows["pair"].type == pa.list_(pa.int64(), 2)
        assert rows.to_pylist()[0] == {"id": 290, "pair": [290, 291]}


def test_rebatch_is_exact_and_streams() -> None:
    pulled = []

    def reader() -> Any:
        for i in range(10):
            pulled.append(i)
            yield pa.record_batch({"x": list(range(i * 7, i * 7 + 7))})

    it = rebatch(reader(), 10)
    index, first, last = next(it)
    assert (index, first.num_rows, last) == (0, 10, False) and len(pulled) <= 3
    rest = list(it)
    assert [b.num_rows for _, b, _ in rest] == [10] * 5 + [10]
    assert [x for _, b, _ in rest for x in b["x"].to_pylist()][-1] == 69
    assert [flag for _, _, flag in rest] == [False] * 5 + [True]


def test_udf_error_names_the_batch_and_a_rerun_resumes(lh: mx.Lakehouse) -> None:
    global FAIL_AT
    lh.create_table("src.docs", docs())
    FAIL_AT = 700
    try:
        with pytest.raises(BatchError) as err:
            lh.map_batches("src.docs", flaky, output="out.f", batch_size=100, commit_batches=2)
    finally:
        FAIL_AT = None
    e = err.value
    assert e.batch == 7 and e.rows == (700, 800)
    assert "batch 7, rows 700-799 of main.src.docs@v0" in str(e) and "bad row 700" in str(e)
    assert "rerun" in str(e) and "ValueError" in str(e)
    assert ids(lh, "out.f") == list(range(600))  # 3 commits of 2 batches landed
    s = lh.map_batches("src.docs", flaky, output="out.f", batch_size=100, commit_batches=2)
    assert s.resumed and s.batches_skipped == 6 and s.batches_run == 4 and s.rows_in == 400
    assert ids(lh, "out.f") == list(range(N))
    # A finished job is not rerun for the same source version …
    again = lh.map_batches("src.docs", flaky, output="out.f", batch_size=100, commit_batches=2)
    assert again.batches_run == 0 and "nothing to do" in str(again)
    # … but is after the source changed (append: a new run over the new version).
    lh.table("src.docs").append(docs(1).set_column(0, "id", pa.array([N], pa.int64())))
    s = lh.map_batches("src.docs", flaky, output="out.f", mode="merge", key="id", batch_size=100)
    assert s.rows_in == N + 1 and ids(lh, "out.f") == list(range(N + 1))


def test_overwrite_progress_and_bad_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with mx.connect(str(tmp_path)) as lh:
        lh.create_table("src", docs(50))
        lh.create_table("out", pa.table({"id": [-1], "text": ["old"], "n": [3]}))
        lh.map_batches("src", add_len, output="out", mode="overwrite", batch_size=20, progress=True)
        assert ids(lh, "out") == list(range(50))
        printed = capsys.readouterr()
        assert "map_batches main.default.src" in printed.out  # the bar
        assert "50 rows in, 50 rows out, 3 batch(es) in 1 commit(s)" in printed.err  # summary
        lh.map_batches("src", add_len, output="out", mode="overwrite", resume=False)
        assert ids(lh, "out") == list(range(50))
        with pytest.raises(ConfigError, match="needs key"):
            lh.map_batches("src", add_len, output="out", mode="merge")
        with pytest.raises(ConfigError, match="batch_size"):
            lh.map_batches("src", add_len, output="out", batch_size=0)
        with pytest.raises(BatchError, match="returned None"):
            lh.map_batches("src", lambda b: None, output="out2")


# -- the driver killed mid-job ---------------------------------------------------------------
CHILD = textwrap.dedent(
    """
    import importlib, sys
    import matrixos as mx
    sys.path.insert(0, sys.argv[2])
    slow_len = importlib.import_module(sys.argv[3]).slow_len  # the job key names its module

    with mx.connect(sys.argv[1]) as lh:
        lh.map_batches("src", slow_len, output="out", batch_size=25, commit_batches=1)
    """
)


def slow_len(batch: pa.Table) -> pa.Table:
    time.sleep(0.1)
    return add_len(batch)


def test_driver_killed_mid_job_resumes_without_duplicates(tmp_path: Path) -> None:
    wh = str(tmp_path / "wh")
    with mx.connect(wh) as lh:
        lh.create_table("src", docs(N))
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    root = Path(__file__).parents[__name__.count(".")]
    proc = subprocess.Popen([sys.executable, str(script), wh, str(root), __name__])
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
            try:
                with mx.connect(wh) as peek:
                    if peek.table("out").version >= 5:  # a few batches committed
                        break
            except mx.errors.MatrixOSError:
                continue
        assert proc.poll() is None, "the job finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
    with mx.connect(wh) as lh:
        partial = ids(lh, "out")
        assert 0 < len(partial) < N
        s = lh.map_batches("src", slow_len, output="out", batch_size=25, commit_batches=1)
        assert s.resumed and s.batches_skipped == len(partial) // 25
        assert ids(lh, "out") == list(range(N))
