"""``SessionHost``: what batch jobs (``map_batches``) and RAG use of a session — tables through
the table service as the session's principal, SQL, volumes and the compute pool. ``Lakehouse``
is one; a server's per-user session is another. Naming this protocol instead of the
``Lakehouse`` keeps them free of the session module (no import cycle).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import pyarrow as pa

    from matrixos.catalog.access import Principal
    from matrixos.catalog.service import TableService
    from matrixos.compute import ComputePool
    from matrixos.engine.result import Result
    from matrixos.storage.volume import Volume
    from matrixos.storage.warehouse import Warehouse
    from matrixos.table import Table


class SessionHost(Protocol):
    """The part of a session that batch jobs and RAG call."""

    @property
    def service(self) -> TableService: ...

    @property
    def principal(self) -> Principal: ...

    @property
    def warehouse(self) -> Warehouse: ...

    @property
    def compute(self) -> ComputePool: ...

    def table(self, name: str) -> Table: ...

    def create_table(
        self,
        name: str,
        data: Any = None,
        *,
        schema: pa.Schema | None = None,
        partition_by: Sequence[str] | None = None,
        format: str = "delta",
        comment: str | None = None,
        properties: Mapping[str, str] | None = None,
        mode: Any = "error",
        create_schema: bool = True,
    ) -> Table: ...

    def volume(self, name: str) -> Volume: ...

    def sql(self, query: str, *, dialect: str | None = None, engine: Any = "auto") -> Result: ...
