"""A cancel (or a timeout) stops a statement even when it comes between the moment the engine
opens its DuckDB cursor and the moment the query starts: DuckDB drops an interrupt that finds
no running query, so the manager repeats it until the statement ends."""

from __future__ import annotations

import threading
import time

import duckdb

from matrixos.catalog.access import Principal
from matrixos.engine.interrupt import track
from matrixos.engine.result import Result
from matrixos.errors import StatementCanceled
from matrixos.server.statements import Limits, State, StatementManager, StatementRequest

LONG = "SELECT sum(a.range * b.range) FROM range(200000) a, range(200000) b"


def slow_to_start(opened: threading.Event):
    """A runner whose cursor is open (and tracked) 0.5 s before its long query starts."""

    def run(who: Principal, sql: str, dialect: str) -> Result:
        con = track(duckdb.connect())
        opened.set()
        time.sleep(0.5)  # the cancel lands here: no query runs on the cursor yet
        try:
            return Result.from_table(con.execute(LONG).to_arrow_table())
        except duckdb.InterruptException as e:  # as the engine answers an interrupt
            raise StatementCanceled("canceling statement") from e

    return run


def test_a_cancel_before_the_query_starts_is_not_lost() -> None:
    opened = threading.Event()
    manager = StatementManager(slow_to_start(opened), workers=1)
    stmt = manager.submit(Principal("ann"), StatementRequest("SELECT …"))
    assert opened.wait(30)
    manager.cancel(Principal("ann"), stmt.id)
    assert stmt.wait(30), "the statement ran on after its cancel"
    assert stmt.state is State.CANCELED


def test_a_timeout_before_the_query_starts_is_not_lost() -> None:
    opened = threading.Event()
    manager = StatementManager(
        slow_to_start(opened), workers=1, limits=Limits(statement_timeout_s=0.2)
    )
    stmt = manager.submit(Principal("ann"), StatementRequest("SELECT …"))
    assert stmt.wait(30), "the statement ran on past its timeout"
    assert stmt.state is State.FAILED and stmt.error is not None
    assert stmt.error.sqlstate == "57014" and "timeout" in stmt.error.message
