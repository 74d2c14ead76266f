"""Results read like DataFrames: any number of times, and previewed from Arrow."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest

import matrixos as mx
from matrixos.engine.result import Result
from matrixos.errors import ResultConsumed, SQLError


@pytest.fixture
def sample_lh(tmp_path: Path) -> Iterator[mx.Lakehouse]:
    with mx.connect(str(tmp_path / "wh")) as lh:
        lh.create_table("s.big", pa.table({"i": pa.array(range(250_000), pa.int64())}))
        lh.create_table(
            "s.t", pa.table({"id": pa.array([64, None], pa.int64()), "name": ["a", None]})
        )
        yield lh


def test_a_streamed_result_reads_again(sample_lh: mx.Lakehouse) -> None:
    res = sample_lh.sql("SELECT i FROM s.big ORDER BY i")
    first = pa.table(res)  # through __arrow_c_stream__
    assert first.num_rows == 250_000
    again = res.to_polars()  # used to die on a bare AssertionError
    assert again.height == 250_000 and again["i"][-1] == 249_999
    assert pl.DataFrame(res).equals(again)
    assert res.to_arrow().equals(first) and len(res) == 250_000


def test_a_half_read_stream_is_completed_by_the_next_reader(sample_lh: mx.Lakehouse) -> None:
    res = sample_lh.sql("SELECT i FROM s.big ORDER BY i")
    reader = res.to_arrow_reader()
    head = reader.read_next_batch()
    assert 0 < head.num_rows < 250_000
    assert res.num_rows == 250_000  # the kept batch, then the rest of the stream
    assert sum(b.num_rows for b in reader) == 250_000 - head.num_rows  # the first reader goes on


def test_a_stream_read_without_keeping_cannot_be_replayed(sample_lh: mx.Lakehouse) -> None:
    res = sample_lh.sql("SELECT i FROM s.big")
    assert sum(b.num_rows for b in res.to_arrow_reader(keep=False)) == 250_000
    with pytest.raises(ResultConsumed, match="keep=False") as err:
        res.to_arrow()
    assert err.value.hint is not None and "again" in err.value.hint
    # a result already held whole gives nothing up
    res = sample_lh.sql("SELECT i FROM s.big")
    assert res.num_rows == 250_000
    assert res.to_arrow_reader(keep=False).read_all().num_rows == 250_000
    assert pa.table(res).num_rows == 250_000


def test_a_failed_stream_says_so_to_every_reader() -> None:
    schema = pa.schema([("x", pa.int64())])

    def batches() -> Iterator[pa.RecordBatch]:
        yield pa.record_batch([pa.array([1])], schema=schema)
        raise pa.ArrowInvalid("disk on fire")

    res = Result(pa.RecordBatchReader.from_batches(schema, batches()))
    for _ in range(2):
        with pytest.raises(SQLError, match="reading the result failed: disk on fire"):
            res.to_arrow()


def test_previews_render_from_arrow(sample_lh: mx.Lakehouse) -> None:
    text = repr(sample_lh.sql("SELECT id, name FROM s.t ORDER BY id NULLS LAST"))
    assert text.splitlines() == ["  id  name", "  64  a", "NULL  NULL", "(2 rows)"]
    assert repr(sample_lh.sql("SELECT 64 AS n")).splitlines() == [" n", "64", "(1 row)"]
    html = sample_lh.sql("SELECT id FROM s.t WHERE id = 64")._repr_html_()
    assert "<td>64</td>" in html and "1 row, 1 column" in html
    html = sample_lh.sql("SELECT id FROM s.t WHERE id IS NULL")._repr_html_()
    assert "<td>NULL</td>" in html and "nan" not in html.lower()


def test_explain_prints_without_padding(sample_lh: mx.Lakehouse) -> None:
    plan = repr(sample_lh.sql("EXPLAIN SELECT * FROM s.t WHERE id > 0"))
    lines = plan.splitlines()
    assert lines[0] == "plan" and lines[1].startswith("Scan main.s.t")
    assert not any(line.startswith("  ") for line in lines)
