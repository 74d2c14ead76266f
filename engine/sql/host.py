"""What the SQL engine needs of the session it runs for: ``LakehouseHost``.

The engine never names the session layer (``matrixos.session``): it is handed an object with
exactly these members. They are the whole of what the engine reads and calls today, gathered in
one place so that the table service can take their place: catalog lookups (``catalog``), the
table handles DDL and DML write through (``table``, ``create_table``, …), and the two openers of
a table's data at a version (``_delta`` for Delta snapshots, ``_store`` for Lance datasets).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    import pyarrow as pa
    from deltalake import DeltaTable

    from matrixos.catalog import Catalog, TableInfo
    from matrixos.config import Settings
    from matrixos.storage.warehouse import Warehouse


class Written(Protocol):
    """What a write reports: the new version and the format's metrics."""

    @property
    def version(self) -> int: ...

    @property
    def metrics(self) -> dict[str, Any]: ...


class TableHandle(Protocol):
    """A catalog table as DDL and DML use it (the SDK's ``Table``)."""

    info: TableInfo

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> int: ...

    @property
    def schema(self) -> pa.Schema: ...

    @property
    def partition_by(self) -> list[str]: ...

    @property
    def store(self) -> Any:
        """The format's store; MERGE on a Delta table calls its ``merge_statement(build)``."""

    def history(self, limit: int | None = None) -> list[dict[str, Any]]: ...

    def append(self, data: Any, *, evolve: bool = False) -> Written: ...

    def overwrite(
        self, data: Any, *, evolve: bool = False, where: str | None = None
    ) -> Written: ...

    def merge(
        self,
        data: Any,
        on: Sequence[str],
        *,
        evolve: bool = False,
        when_matched: Literal["update", "ignore"] = "update",
        when_not_matched: Literal["insert", "ignore"] = "insert",
        delete_not_matched_by_source: bool = False,
    ) -> Written: ...

    def delete(self, where: str | None = None) -> Written: ...

    def update(self, set: Mapping[str, str], where: str | None = None) -> Written: ...

    def optimize(self, zorder_by: Sequence[str] | None = None) -> dict[str, Any]: ...

    def vacuum(
        self, retention_hours: int | None = None, *, dry_run: bool = False, enforce: bool = True
    ) -> list[str]: ...


class LanceOpener(Protocol):
    """A Lance table's store, as the engine opens it for a scan."""

    def open(self, version: int | None = None, timestamp: datetime | str | None = None) -> Any: ...


class ComputeHost(Protocol):
    """The compute pool, as the distributed engine sizes a query by it."""

    def num_cpus(self) -> int: ...


class LakehouseHost(Protocol):
    """Everything the SQL engine reads and calls on its session (the SDK's ``Lakehouse``)."""

    @property
    def settings(self) -> Settings: ...

    @property
    def warehouse(self) -> Warehouse: ...

    @property
    def catalog(self) -> Catalog: ...

    @property
    def compute(self) -> ComputeHost: ...

    # -- tables and schemas, for DDL and DML ------------------------------------------------
    def table(self, name: str) -> TableHandle: ...

    def tables(self, schema: str | None = None) -> list[str]: ...

    def schemas(self, catalog: str | None = None) -> list[str]: ...

    def create_schema(
        self, name: str, *, comment: str | None = None, if_not_exists: bool = True
    ) -> None: ...

    def drop_schema(self, name: str, *, if_exists: bool = False) -> None: ...

    def create_table(
        self,
        name: str,
        data: Any = None,
        *,
        schema: pa.Schema | None = None,
        partition_by: Sequence[str] | None = None,
        format: Literal["delta", "lance"] = "delta",
        comment: str | None = None,
        properties: Mapping[str, str] | None = None,
        mode: Literal["error", "ignore", "overwrite"] = "error",
        create_schema: bool = True,
    ) -> TableHandle: ...

    def drop_table(self, name: str, *, if_exists: bool = False, purge: bool = True) -> None: ...

    def create_volume(
        self,
        name: str,
        *,
        comment: str | None = None,
        if_not_exists: bool = True,
        create_schema: bool = True,
    ) -> Any: ...

    def drop_volume(self, name: str, *, if_exists: bool = False) -> None: ...

    # -- a table's data at a version, for binding scans -------------------------------------
    def _delta(
        self,
        info: TableInfo,
        version: int | None = None,
        timestamp: datetime | str | None = None,
    ) -> DeltaTable: ...

    def _store(self, info: TableInfo) -> LanceOpener: ...
