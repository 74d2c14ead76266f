"""``Table``: one catalog table, with the Delta operations of the SDK."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import pyarrow as pa

from matrixos.catalog import TableInfo
from matrixos.errors import NotSupported

if TYPE_CHECKING:
    import pandas as pd
    import polars as pl

    from matrixos.session import Lakehouse
    from matrixos.storage.delta import DeltaStore, WriteResult
    from matrixos.storage.lance import LanceStore


def open_table(lh: Lakehouse, info: TableInfo) -> Table:
    """The ``Table`` (Delta) or ``LanceTable`` for a catalog entry."""
    if info.format == "lance":
        from matrixos.lance_table import LanceTable

        return LanceTable(lh, info)
    if info.format != "delta":
        raise NotSupported(
            f"table {info.name} has format {info.format!r}, which MatrixOS cannot read"
        )
    return Table(lh, info)


class Table:
    """A table in the catalog (Delta; ``LanceTable`` adds search for Lance tables).

    Example:
        >>> import tempfile, matrixos as mx
        >>> lh = mx.connect(tempfile.mkdtemp())
        >>> t = lh.create_table("sales.orders", [{"id": 7, "status": "open"}])
        >>> t.merge([{"id": 7, "status": "done"}], on=["id"]).version
        1
        >>> lh.table("sales.orders").to_arrow().to_pylist()
        [{'id': 7, 'status': 'done'}]
    """

    def __init__(self, lh: Lakehouse, info: TableInfo) -> None:
        self._lh = lh
        self.info = info

    def __repr__(self) -> str:
        return f"Table({self.name!r}, format={self.info.format!r}, location={self.location!r})"

    @property
    def name(self) -> str:
        return self.info.name

    @property
    def location(self) -> str:
        return self.info.location

    @property
    def store(self) -> DeltaStore | LanceStore:
        return self._lh._store(self.info)

    # -- reading ----------------------------------------------------------------------------
    @property
    def version(self) -> int:
        """The latest committed version."""
        return int(self._lh._delta(self.info).version())

    @property
    def schema(self) -> pa.Schema:
        return pa.schema(self._lh._delta(self.info).schema().to_arrow())  # type: ignore[arg-type]

    @property
    def partition_by(self) -> list[str]:
        return list(self._lh._delta(self.info).metadata().partition_columns)

    def history(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Commits, newest first: version, timestamp, operation, parameters, metrics."""
        return self.store.history(limit)

    def to_arrow(
        self,
        version: int | None = None,
        timestamp: datetime | str | None = None,
        columns: Sequence[str] | None = None,
    ) -> pa.Table:
        """The rows (at ``version`` or ``timestamp`` when given)."""
        return self._lh._engine.read_table(self.info, version, timestamp, columns)

    def __arrow_c_stream__(self, requested_schema: Any = None) -> Any:
        return self.to_arrow().__arrow_c_stream__(requested_schema)

    def to_polars(self, **kwargs: Any) -> pl.DataFrame:
        import polars as pl

        return pl.from_arrow(self.to_arrow(**kwargs))  # type: ignore[return-value]

    def to_pandas(self, **kwargs: Any) -> pd.DataFrame:
        return self.to_arrow(**kwargs).to_pandas()

    def count(self) -> int:
        return int(self._lh.sql(f"SELECT count(*) FROM {self._sql_name}").scalar())

    @property
    def _sql_name(self) -> str:
        from sqlglot import exp  # not at import time: ``import matrixos`` stays light

        i = self.info.ident
        return exp.table_(i.name, db=i.schema, catalog=i.catalog, quoted=True).sql("duckdb")

    # -- writing ----------------------------------------------------------------------------
    def _done(self, result: WriteResult) -> WriteResult:
        self._lh.catalog.touch(self.info.ident)
        return result

    def append(self, data: Any, *, evolve: bool = False) -> WriteResult:
        """Add rows. New columns are refused unless ``evolve=True``; type conflicts always are."""
        return self._done(self.store.append(data, evolve=evolve))

    def overwrite(
        self, data: Any, *, evolve: bool = False, where: str | None = None
    ) -> WriteResult:
        """Replace all rows (or only those matching ``where``) with ``data``."""
        return self._done(self.store.overwrite(data, evolve=evolve, predicate=where))

    def merge(
        self,
        data: Any,
        on: Sequence[str],
        *,
        evolve: bool = False,
        when_matched: Literal["update", "ignore"] = "update",
        when_not_matched: Literal["insert", "ignore"] = "insert",
        delete_not_matched_by_source: bool = False,
    ) -> WriteResult:
        """Upsert: update rows whose ``on`` keys match, insert the others."""
        return self._done(
            self.store.merge(
                data,
                on,
                evolve=evolve,
                when_matched=when_matched,
                when_not_matched=when_not_matched,
                delete_not_matched_by_source=delete_not_matched_by_source,
            )
        )

    def delete(self, where: str | None = None) -> WriteResult:
        """Delete rows matching the SQL predicate ``where`` (all rows when None)."""
        return self._done(self.store.delete(where))

    def update(self, set: Mapping[str, str], where: str | None = None) -> WriteResult:
        """Set columns to SQL expressions, e.g. ``update({"status": "'done'"}, where="id = 7")``."""
        return self._done(self.store.update(set, where))

    def optimize(self, zorder_by: Sequence[str] | None = None) -> dict[str, Any]:
        """Compact small files; with ``zorder_by`` also cluster rows by those columns."""
        out = self.store.optimize(zorder_by)
        self._lh.catalog.touch(self.info.ident)
        return out

    def vacuum(
        self, retention_hours: int | None = None, *, dry_run: bool = False, enforce: bool = True
    ) -> list[str]:
        """Delete files unreferenced for ``retention_hours`` (default: the table's, 7 days)."""
        return self.store.vacuum(retention_hours, dry_run=dry_run, enforce=enforce)

    def describe(self) -> dict[str, Any]:
        """Catalog facts plus the Delta table's version, files and size."""
        dt = self._lh._delta(self.info)
        actions = pa.table(dt.get_add_actions(flatten=False))  # type: ignore[arg-type]
        return {
            "name": self.name,
            "format": self.info.format,
            "location": self.location,
            "external": self.info.external,
            "comment": self.info.comment,
            "owner": self.info.owner,
            "properties": dict(self.info.properties),
            "created_at": self.info.created_at,
            "updated_at": self.info.updated_at,
            "version": dt.version(),
            "partition_by": list(dt.metadata().partition_columns),
            "num_files": actions.num_rows,
            "size_bytes": int(pa.compute.sum(actions.column("size_bytes")).as_py() or 0),
            "schema": {f.name: str(f.type) for f in self.schema},
        }
