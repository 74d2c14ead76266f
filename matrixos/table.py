"""``Table``: the SDK's handle on one catalog table, whatever its format.

``Table`` is the abstract base; ``DeltaLakeTable`` (``matrixos.delta_table``) and
``LanceTable`` (``matrixos.lance_table``) are siblings, and ``StoreTable`` serves any other
registered format through its ``TableStore``. A table holds a ``TableContext`` — the table
service, the principal, and the engine that reads Delta files — never the ``Lakehouse``; every
read checks ``SELECT`` and every write ``MODIFY`` through the service.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

import pyarrow as pa

from matrixos.catalog import TableInfo
from matrixos.catalog.access import Principal
from matrixos.catalog.service import TableHandle, TableService
from matrixos.storage.tablestore import TableStore, WriteResult

if TYPE_CHECKING:
    import pandas as pd
    import polars as pl

    from matrixos.catalog.policies import Policy
    from matrixos.engine.sql.policies import PolicyDefinitions


class TableReader(Protocol):
    """What a table needs of the SQL engine: its reader of Delta files and row counts."""

    def read_table(
        self,
        info: TableInfo,
        version: int | None,
        timestamp: datetime | str | None,
        columns: Sequence[str] | None,
    ) -> pa.Table: ...

    def count_rows(self, info: TableInfo, principal: Principal) -> int: ...

    def read_as(
        self,
        info: TableInfo,
        principal: Principal,
        version: int | None = None,
        timestamp: datetime | str | None = None,
        columns: Sequence[str] | None = None,
    ) -> pa.Table: ...

    def search_as(
        self,
        principal: Principal,
        info: TableInfo,
        query: Any,
        *,
        k: int,
        mode: str,
        filter: str | None = None,
        columns: Sequence[str] | None = None,
    ) -> pa.Table: ...

    @property
    def policies(self) -> PolicyDefinitions: ...


@dataclass(frozen=True)
class TableContext:
    """What a ``Table`` works with: the service, who is asking, and the engine (made on
    first use)."""

    service: TableService
    principal: Principal
    engine: Callable[[], TableReader]


class Table(ABC):
    """A table in the catalog.

    Example:
        >>> import tempfile, matrixos as mx
        >>> lh = mx.connect(tempfile.mkdtemp())
        >>> t = lh.create_table("sales.orders", [{"id": 7, "status": "open"}])
        >>> t.merge([{"id": 7, "status": "done"}], on=["id"]).version
        1
        >>> lh.table("sales.orders").to_arrow().to_pylist()
        [{'id': 7, 'status': 'done'}]
    """

    def __init__(self, ctx: TableContext, info: TableInfo) -> None:
        self._ctx = ctx
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
    def store(self) -> TableStore:
        """The format's ``TableStore`` (no privilege check: an escape hatch for the SDK)."""
        return self._ctx.service.store(self.info)

    def _reading(self) -> TableInfo:
        return self._ctx.service.authorize(self._ctx.principal, "SELECT", self.info)

    def _writing(self) -> TableStore:
        return self._handle.writable()

    def _filtered(
        self,
        version: int | None = None,
        timestamp: datetime | str | None = None,
        columns: Sequence[str] | None = None,
    ) -> pa.Table | None:
        """The rows as the principal sees them when row filters or column masks apply to it
        (read through the SQL engine, where they are enforced); None when none apply."""
        info = self._reading()
        if self._ctx.service.policy(self._ctx.principal, info) is None:
            return None
        return self._ctx.engine().read_as(info, self._ctx.principal, version, timestamp, columns)

    # -- reading ----------------------------------------------------------------------------
    @property
    @abstractmethod
    def version(self) -> int:
        """The latest committed version."""

    @property
    @abstractmethod
    def schema(self) -> pa.Schema: ...

    @property
    def partition_by(self) -> list[str]:
        return []

    def history(self, limit: int | None = None) -> list[dict[str, Any]]:
        """Commits, newest first: version, timestamp, operation, parameters, metrics (only the
        first three when row filters or column masks apply to the caller)."""
        return self._handle.history(limit)

    @abstractmethod
    def to_arrow(
        self,
        version: int | None = None,
        timestamp: datetime | str | None = None,
        columns: Sequence[str] | None = None,
    ) -> pa.Table:
        """The rows (at ``version`` or ``timestamp`` when given)."""

    def __arrow_c_stream__(self, requested_schema: Any = None) -> Any:
        return self.to_arrow().__arrow_c_stream__(requested_schema)

    def to_polars(self, **kwargs: Any) -> pl.DataFrame:
        import polars as pl

        return pl.from_arrow(self.to_arrow(**kwargs))  # type: ignore[return-value]

    def to_pandas(self, **kwargs: Any) -> pd.DataFrame:
        return self.to_arrow(**kwargs).to_pandas()

    @abstractmethod
    def count(self) -> int: ...

    # -- row filters and column masks (engine.sql.policies) ----------------------------------
    def set_row_filter(self, predicate: str, *, account: str) -> None:
        """Show ``account`` (a user, or a group's members) only the rows where the SQL
        ``predicate`` holds; several filters that apply to someone are ANDed. Only the owner,
        an admin or a holder of MANAGE may; ``SQLError`` names a refused part of the predicate.

        Example:
            >>> import tempfile, matrixos as mx
            >>> lh = mx.connect(tempfile.mkdtemp())
            >>> t = lh.create_table("s.p", [{"id": 1, "region": "EU"}, {"id": 2, "region": "US"}])
            >>> lh.sql("CREATE USER bob").message
            'CREATE USER'
            >>> t.set_row_filter("region = 'EU'", account="bob")
            >>> [(p.kind, p.account, p.expression) for p in t.policies()]
            [('row filter', 'bob', "region = 'EU'")]
        """
        defs = self._ctx.engine().policies
        p = self._ctx.principal
        defs.audited(
            p,
            "SET ROW FILTER",
            self.name,
            lambda: defs.set_row_filter(p, self.name, predicate, account),
        )

    def drop_row_filter(self, *, account: str) -> bool:
        """Remove ``account``'s row filter; whether there was one."""
        defs = self._ctx.engine().policies
        p = self._ctx.principal
        return bool(
            defs.audited(
                p, "DROP ROW FILTER", self.name, lambda: defs.drop_row_filter(p, self.name, account)
            )
        )

    def set_mask(self, column: str, expression: str, *, account: str) -> None:
        """Show ``account`` the SQL ``expression`` (it may read the column and others, e.g.
        ``"CASE WHEN region = 'EU' THEN '***' ELSE email END"``) instead of ``column``'s value;
        it keeps the column's type."""
        defs = self._ctx.engine().policies
        p = self._ctx.principal
        obj = f"{self.name}.{column}"
        defs.audited(
            p, "SET MASK", obj, lambda: defs.set_mask(p, self.name, column, expression, account)
        )

    def drop_mask(self, column: str, *, account: str) -> bool:
        """Remove ``account``'s mask of ``column``; whether there was one."""
        defs = self._ctx.engine().policies
        p = self._ctx.principal
        obj = f"{self.name}.{column}"
        return bool(
            defs.audited(p, "DROP MASK", obj, lambda: defs.drop_mask(p, self.name, column, account))
        )

    def policies(self) -> list[Policy]:
        """The table's row filters and masks (all of them to who may manage the table, else
        those that apply to the caller)."""
        return self._ctx.engine().policies.list(self._ctx.principal, self.name)

    def describe(self) -> dict[str, Any]:
        """Catalog facts plus the table's version, files and size."""
        self._reading()
        facts = self.store.describe()
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
            **facts,
            "schema": {f.name: str(f.type) for f in self.schema},
        }

    # -- writing: through the service's handle (MODIFY checked, rows embedded, catalog told) -
    @property
    def _handle(self) -> TableHandle:
        return TableHandle(self._ctx.service, self._ctx.principal, self.info)

    def append(self, data: Any, *, evolve: bool = False) -> WriteResult:
        """Add rows. New columns are refused unless ``evolve=True``; type conflicts always are."""
        return self._handle.append(data, evolve=evolve)

    def overwrite(
        self, data: Any, *, evolve: bool = False, where: str | None = None
    ) -> WriteResult:
        """Replace all rows (or only those matching ``where``) with ``data``."""
        return self._handle.overwrite(data, evolve=evolve, where=where)

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
        return self._handle.merge(
            data,
            on,
            evolve=evolve,
            when_matched=when_matched,
            when_not_matched=when_not_matched,
            delete_not_matched_by_source=delete_not_matched_by_source,
        )

    def delete(self, where: str | None = None) -> WriteResult:
        """Delete rows matching the SQL predicate ``where`` (all rows when None)."""
        return self._handle.delete(where)

    def update(self, set: Mapping[str, str], where: str | None = None) -> WriteResult:
        """Set columns to SQL expressions, e.g. ``update({"status": "'done'"}, where="id = 7")``."""
        return self._handle.update(set, where)

    def optimize(self, zorder_by: Sequence[str] | None = None) -> dict[str, Any]:
        """Compact small files; with ``zorder_by`` also cluster rows by those columns."""
        return self._handle.optimize(zorder_by)

    def vacuum(
        self, retention_hours: int | None = None, *, dry_run: bool = False, enforce: bool = True
    ) -> list[str]:
        """Delete files unreferenced for ``retention_hours`` (default: the table's, 7 days)."""
        return self._handle.vacuum(retention_hours, dry_run=dry_run, enforce=enforce)


class StoreTable(Table):
    """A table of any other registered format, read through its ``TableStore``."""

    @property
    def version(self) -> int:
        self._reading()
        return self.store.version()

    @property
    def schema(self) -> pa.Schema:
        self._reading()
        return self.store.schema()

    @property
    def partition_by(self) -> list[str]:
        return self.store.partition_by()

    def to_arrow(
        self,
        version: int | None = None,
        timestamp: datetime | str | None = None,
        columns: Sequence[str] | None = None,
    ) -> pa.Table:
        filtered = self._filtered(version, timestamp, columns)
        if filtered is not None:
            return filtered
        return self.store.scan(version, timestamp, columns)

    def count(self) -> int:
        filtered = self._filtered(columns=[])
        if filtered is not None:
            return filtered.num_rows
        return int(self.store.dataset().count_rows())
