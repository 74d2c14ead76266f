"""The request context of one query: who asks, what was parsed and bound, and the narrow part
of the SQL engine that planning and running need.

The distributed engine (``engine.dist``) takes one ``QueryContext`` instead of the SQL engine,
the tree, the bound scans and the function results passed side by side; local execution can
take it too. ``principal`` says who is asking (the embedded user, who owns everything, unless a
server says otherwise), so that grants can be checked in one place.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from sqlglot import exp

from matrixos.catalog.access import EMBEDDED_USER, Principal
from matrixos.engine.functions import is_function_result
from matrixos.engine.sandbox import is_cte_reference

if TYPE_CHECKING:
    import duckdb

    from matrixos.catalog import TableIdent
    from matrixos.config import Settings
    from matrixos.engine.functions import FunctionResults
    from matrixos.engine.scan import DatasetScan, PrunedScan
    from matrixos.errors import MatrixOSError
    from matrixos.storage.options import StorageOptions

    Bound = list[tuple[TableIdent, PrunedScan | DatasetScan]]


@dataclass
class EngineSession:
    """What the distributed engine needs of the SQL engine (never the whole ``Lakehouse``).

    Attributes:
        settings: The session's settings (memory limit, broadcast and routing thresholds,
            storage zones).
        storage_options: The warehouse's storage credentials.
        remote_warehouse: Whether the warehouse is on an object store.
        is_ray: Whether the compute pool is Ray.
        planning_cursor: A cursor that may touch no file: binding over empty inputs.
        cursor: A cursor for the coordinator's merges (registered Arrow tables only).
        install: The statement's engine SQL with its table references replaced by scans.
        num_cpus: The pool's CPUs (a call to Ray's GCS: once per query).
        engine_error: A DuckDB error as the local engine reports it.
        without_scan_excerpt: Such an error without DuckDB's excerpt of an inlined scan.
    """

    settings: Settings
    storage_options: StorageOptions
    remote_warehouse: bool
    is_ray: bool
    planning_cursor: Callable[[], duckdb.DuckDBPyConnection]
    cursor: Callable[[], duckdb.DuckDBPyConnection]
    install: Callable[[duckdb.DuckDBPyConnection, exp.Expr, Bound], str]
    num_cpus: Callable[[], int]
    engine_error: Callable[[Exception, str], MatrixOSError]
    without_scan_excerpt: Callable[[MatrixOSError], MatrixOSError]


@dataclass
class QueryContext:
    """One query on its way through planning and running.

    Attributes:
        session: The narrow engine interface (``EngineSession``).
        tree: The parsed, checked statement.
        bound: Each table reference's scan, in the order of the tree's references.
        functions: The platform functions' results the statement reads.
        principal: Who is asking.
    """

    session: EngineSession
    tree: exp.Expr
    bound: Bound
    functions: FunctionResults
    principal: Principal = field(default=EMBEDDED_USER)


def table_refs(tree: exp.Expr) -> list[exp.Table]:
    """The statement's catalog table references, in the order ``QueryContext.bound`` holds
    their scans (the same nodes, in the same order, as ``sandbox.check_query`` returns)."""
    return [
        t
        for t in tree.find_all(exp.Table)
        if isinstance(t.this, exp.Identifier)
        and not is_cte_reference(t)
        and not is_function_result(t)
    ]
