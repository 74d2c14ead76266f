"""Which ``Table`` class a catalog entry gets: the format's own, or ``StoreTable``.

Example:
    >>> sorted(TABLE_TYPES)
    ['delta', 'lance']
"""

from __future__ import annotations

from matrixos.catalog import TableInfo
from matrixos.delta_table import DeltaLakeTable
from matrixos.lance_table import LanceTable
from matrixos.table import StoreTable, Table, TableContext

# A format with SDK methods of its own (search, indexes…) adds its class here; any other
# registered format is served by ``StoreTable`` through its ``TableStore``.
TABLE_TYPES: dict[str, type[Table]] = {"delta": DeltaLakeTable, "lance": LanceTable}


def open_table(ctx: TableContext, info: TableInfo) -> Table:
    """The ``Table`` for a catalog entry (no privilege check: its reads and writes check)."""
    return TABLE_TYPES.get(info.format, StoreTable)(ctx, info)
