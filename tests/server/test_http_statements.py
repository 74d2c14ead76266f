"""The statement manager on its own (no HTTP): retention of results within a byte budget."""

from __future__ import annotations

import pyarrow as pa

from matrixos.catalog.access import Principal
from matrixos.engine.result import Result
from matrixos.server.statements import State, StatementManager, StatementRequest


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
