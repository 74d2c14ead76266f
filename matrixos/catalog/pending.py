"""Pending rows: rows a writer has acknowledged but not yet committed to a table's storage.

A writer with a write-ahead log (the IoT ingest path, ``matrixos.iot``) acknowledges points
once they are durable in its log and commits them to the Delta table later, in micro-batches.
Queries must still see every acknowledged point, so such a writer registers a *pending
source* with the ``TableService`` (``service.register_pending_source(fn)``): a callable that,
given a table and the version a query reads, returns the acknowledged rows that version does
not hold yet (a writer keeps the rows it just committed at version v a while, for a query that
loaded version v-1 a moment before the commit). The SQL engine asks the service for them when
it binds a scan of the table's latest version and unions them into the scan.

This is the one extension point for it: the catalog and the engine never import the writer
(imports point down), the writer registers into them.

Example:
    >>> import pyarrow as pa
    >>> from matrixos.catalog.names import TableIdent
    >>> sources = PendingSources()
    >>> _ = sources.register(lambda ident, version: PendingRows(pa.table({"v": [1]})))
    >>> sources.rows(TableIdent.parse("iot.t"), 0).table.num_rows
    1
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import pyarrow as pa

from matrixos.catalog.names import TableIdent


@dataclass(frozen=True)
class PendingRows:
    """A table's acknowledged rows that are not in its storage yet.

    ``table``: the rows, with the table's column names and types (columns the table does not
    have yet are allowed: a new field's first points; a column it lacks reads as NULL).
    ``replaces``: key columns when some of these rows may replace committed rows with the same
    key (last write wins: a committed row whose key equals a pending row's is hidden); empty
    when the rows only add to the table.
    """

    table: pa.Table
    replaces: tuple[str, ...] = ()

    @property
    def shape(self) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
        """What a query's SQL over these rows depends on (column names and types, replace
        keys): rows of the same shape can stand in for them in a kept plan."""
        schema = self.table.schema
        return tuple(schema.names), tuple(str(t) for t in schema.types), self.replaces


# (table, the version a query reads) → the acknowledged rows that version lacks
PendingSource = Callable[[TableIdent, int], "PendingRows | None"]


class PendingSources:
    """The pending sources registered with one ``TableService``. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sources: list[PendingSource] = []

    def register(self, source: PendingSource) -> Callable[[], None]:
        """Add ``source``; returns a function that removes it again."""
        with self._lock:
            self._sources.append(source)

        def unregister() -> None:
            with self._lock:
                if source in self._sources:
                    self._sources.remove(source)

        return unregister

    def rows(self, ident: TableIdent, version: int) -> PendingRows | None:
        """The pending rows of ``ident`` that its ``version`` lacks, from every source
        (``None`` when there are none)."""
        with self._lock:
            sources = list(self._sources)
        found = [
            r for r in (s(ident, version) for s in sources) if r is not None and r.table.num_rows
        ]
        if not found:
            return None
        if len(found) == 1:
            return found[0]
        table = pa.concat_tables([r.table for r in found], promote_options="permissive")
        keys = tuple(dict.fromkeys(k for r in found for k in r.replaces))
        return PendingRows(table, keys)


__all__ = ["PendingRows", "PendingSource", "PendingSources"]
