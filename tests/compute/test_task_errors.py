"""An expected failure in Ray tasks (a query whose fragments all fail) is raised once, as a
MatrixOS error, and leaves nothing in the log: no Ray "Unhandled error" tracebacks for the
tasks whose failure was not the one raised."""

from __future__ import annotations

import gc
import logging
import time
from pathlib import Path

import pyarrow as pa
import pytest

import matrixos as mx
from matrixos.compute import ComputePool
from matrixos.errors import SQLError

try:
    from tests.compute._cluster import RayCluster
except ModuleNotFoundError:
    from _cluster import RayCluster  # type: ignore[no-redef]
FILES = 4


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_failed_fragments_leave_no_unhandled_errors(
    ray_pool: ComputePool, ray_cluster: RayCluster, tmp_path: Path
) -> None:
    # Ray logs an unfetched task failure through this logger when its reference goes away.
    records = _Records()
    logger = logging.getLogger("ray._private.worker")
    logger.addHandler(records)
    try:
        with mx.connect(str(tmp_path / "wh"), compute=ray_cluster.address) as lh:
            for i in range(FILES):  # one file each: one fragment each
                rows = pa.table({"s": [f"not a number {i}-{j}" for j in range(50)]})
                if i == 0:
                    lh.create_table("t", rows)
                else:
                    lh.table("t").append(rows)
            sql = "SELECT sum(CAST(s AS INTEGER)) AS n FROM t"
            assert (
                lh.sql("EXPLAIN " + sql, engine="ray")
                .to_arrow()["plan"][0]
                .as_py()
                .startswith("Engine: ray")
            )
            for _ in range(2):
                with pytest.raises(SQLError, match=r"(?i)conver"):
                    lh.sql(sql, engine="ray").to_arrow()
        gc.collect()
        time.sleep(3)  # room for Ray to report freed failures (it does so asynchronously)
        gc.collect()
    finally:
        logger.removeHandler(records)
    assert [m for m in records.messages if "Unhandled error" in m] == []
