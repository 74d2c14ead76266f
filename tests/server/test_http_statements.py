"""The statement manager on its own (no HTTP): retention of results within a byte budget, by
age and by count; rows followed while the statement still runs."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pyarrow as pa
import pytest

from matrixos.catalog.access import Principal
from matrixos.engine.result import Result
from matrixos.errors import SQLError, StatementNotFound
from matrixos.server import statements
from matrixos.server.statements import Runner, State, StatementManager, StatementRequest
from matrixos.server.statements_results import Format


def test_old_results_are_released_past_the_byte_budget() -> None:
    rows = pa.table({"n": pa.array(range(1000), pa.int64())})  # 8,000 bytes

    def run(who: Principal, sql: str, dialect: str) -> Result:
        return Result.from_table(rows)

    manager = StatementManager(run, workers=1, retained_bytes=20_000)
    ann = Principal("ann")
    done = []
    for _ in range(3):
        s = manager.submit(ann, StatementRequest("SELECT n"))
        assert s.wait(30)
        done.append(s)
    # 24,000 bytes > 20,000: the oldest result went, the newer two stay readable.
    assert [s.state for s in done] == [State.CLOSED, State.SUCCEEDED, State.SUCCEEDED]
    assert done[0].result is None and done[2].result is not None
    assert done[2].result.chunks[0].equals(rows)
    manager.close(ann, done[1].id)
    assert manager.counts()[State.CLOSED] == 2
    assert manager.drain(5.0)


def test_ended_statements_are_forgotten_by_age_and_past_the_count(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(statements, "MAX_ENDED", 3)
    rows = pa.table({"n": [1]})
    manager = StatementManager(lambda who, sql, dialect: Result.from_table(rows), workers=1)
    ann = Principal("ann")

    def run() -> str:
        s = manager.submit(ann, StatementRequest("SELECT n"))
        assert s.wait(30)
        return s.id

    first = [run() for _ in range(4)]  # the 4th submit sees 3 ended: all kept
    assert all(manager.get(ann, sid).state is State.SUCCEEDED for sid in first[1:])
    run()  # the 5th submit sees 4 ended: the oldest is forgotten
    with pytest.raises(StatementNotFound):
        manager.get(ann, first[0])
    assert manager.get(ann, first[1]).state is State.SUCCEEDED
    manager.retention_s = 0.0  # every ended statement has outlived its retention
    last = run()
    for sid in first:
        with pytest.raises(StatementNotFound):
            manager.get(ann, sid)
    assert manager.get(ann, last).state is State.SUCCEEDED  # ended after that submit
    assert manager.drain(5.0)


def _gated(gate: threading.Event, fail: bool) -> Runner:
    """A runner whose rows come in two batches, the second only once ``gate`` is set (then
    an error instead when ``fail``)."""
    schema = pa.schema([("n", pa.int64())])

    def batches() -> Iterator[pa.RecordBatch]:
        yield pa.record_batch([pa.array([1, 2], pa.int64())], schema=schema)
        assert gate.wait(30)
        if fail:
            raise SQLError("boom", sqlstate="22012")
        yield pa.record_batch([pa.array([3], pa.int64())], schema=schema)

    return lambda who, sql, dialect: Result(pa.RecordBatchReader.from_batches(schema, batches()))


@pytest.mark.parametrize("fail", [False, True])
def test_rows_can_be_followed_while_the_statement_runs(fail: bool) -> None:
    gate = threading.Event()
    manager = StatementManager(_gated(gate, fail), workers=1)
    ann = Principal("ann")
    s = manager.submit(ann, StatementRequest("SELECT n", format=Format.ARROW_STREAM))
    assert s.ready.wait(30)
    # The first batch is there to send while the query still runs.
    assert s.state is State.RUNNING and s.rows is not None
    follow = s.rows.follow()
    assert next(follow).column(0).to_pylist() == [1, 2]
    gate.set()
    rest = [b.column(0).to_pylist() for b in follow]  # ends when the statement stops
    assert s.wait(30)
    if fail:
        assert rest == [] and s.state is State.FAILED and s.error is not None
        assert s.rows is not None  # kept for the stream that follows it
    else:
        assert rest == [[3]] and s.state is State.SUCCEEDED
        assert s.result is not None and s.result.total_row_count == 3
    assert manager.drain(5.0)


def test_a_failed_non_arrow_statement_keeps_no_partial_rows() -> None:
    gate = threading.Event()
    gate.set()
    manager = StatementManager(_gated(gate, fail=True), workers=1)
    s = manager.submit(Principal("ann"), StatementRequest("SELECT n"))  # JSON_ARRAY
    assert s.wait(30) and s.state is State.FAILED
    assert s.rows is None and s.result is None
    assert manager.drain(5.0)
