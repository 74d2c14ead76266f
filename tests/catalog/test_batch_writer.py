"""``BatchWriter``: the background writer of the audit and usage logs keeps a failed batch and
tries it again, ahead of newer items, so a transient failure leaves no gap in a log."""

from __future__ import annotations

import logging

import pytest

from matrixos.catalog.systables import BatchWriter


def test_a_batch_that_fails_is_written_again_in_order(caplog: pytest.LogCaptureFixture) -> None:
    written: list[int] = []
    failures = [2]  # the first two writes fail

    def write(items: list[int]) -> None:
        if failures[0]:
            failures[0] -= 1
            raise OSError("the table is busy")
        written.extend(items)

    writer: BatchWriter[int] = BatchWriter(write, interval_s=0.01, batch=1)
    with caplog.at_level(logging.WARNING, logger="matrixos.catalog.systables"):
        for n in range(50):
            writer.put(n)
        writer.flush()
        writer.close()
    assert written == list(range(50))
    assert "not written (attempt 1 of 5)" in caplog.text


def test_a_batch_that_keeps_failing_is_dropped_and_the_writer_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    written: list[int] = []

    def write(items: list[int]) -> None:
        if 0 in items:
            raise ValueError("never writable")
        written.extend(items)

    writer: BatchWriter[int] = BatchWriter(write, interval_s=0.01, batch=1)
    writer.put(0)
    writer.flush()  # 5 attempts, then dropped
    writer.put(1, 2)
    writer.close()
    assert written == [1, 2]
    assert caplog.text.count("not written (attempt") == 4  # then the fifth failure drops it
    assert "1 rows not written" in caplog.text
