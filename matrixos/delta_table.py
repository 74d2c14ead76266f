"""``DeltaLakeTable``: a Delta table in the catalog (the SDK's default table)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import pyarrow as pa

from matrixos.table import Table


class DeltaLakeTable(Table):
    """A Delta table: reads go through the SQL engine's Delta reader (deletion vectors, column
    mapping, partition values), on the service's cached latest snapshot.

    Example:
        >>> import tempfile, matrixos as mx
        >>> lh = mx.connect(tempfile.mkdtemp())
        >>> t = lh.create_table("iot.r", [{"day": "2024-05-01", "v": 1.5}], partition_by=["day"])
        >>> type(t).__name__, t.partition_by, t.version
        ('DeltaLakeTable', ['day'], 0)
    """

    @property
    def version(self) -> int:
        return int(self._ctx.service.snapshot(self._reading()).version())

    @property
    def schema(self) -> pa.Schema:
        dt = self._ctx.service.snapshot(self._reading())
        return pa.schema(dt.schema().to_arrow())

    @property
    def partition_by(self) -> list[str]:
        return list(self._ctx.service.snapshot(self._reading()).metadata().partition_columns)

    def to_arrow(
        self,
        version: int | None = None,
        timestamp: datetime | str | None = None,
        columns: Sequence[str] | None = None,
    ) -> pa.Table:
        filtered = self._filtered(version, timestamp, columns)
        if filtered is not None:
            return filtered
        return self._ctx.engine().read_table(self._reading(), version, timestamp, columns)

    def count(self) -> int:
        filtered = self._filtered(columns=[])
        if filtered is not None:
            return filtered.num_rows
        return self._ctx.engine().count_rows(self._reading(), self._ctx.principal)
