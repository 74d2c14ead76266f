"""Local execution: a bound query run on this process's locked DuckDB connection, and its
EXPLAIN.

Each table reference becomes a subquery over its pruned Parquet files (or its registered Lance
dataset); each statement gets its own cursor on a connection whose allowed directories cover
the files it reads (``sandbox.locked_connection``).
"""

from __future__ import annotations

import re
import sys
import threading
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import duckdb
import pyarrow as pa
from sqlglot import exp
from sqlglot.errors import ErrorLevel, UnsupportedError

from matrixos.engine import duck
from matrixos.engine.context import table_refs
from matrixos.engine.interrupt import track
from matrixos.engine.result import Result
from matrixos.engine.sandbox import locked_connection
from matrixos.engine.scan import DatasetScan, Snapshot, make_context, prune, render_scan
from matrixos.engine.sql.errors import engine_error, user_statement, without_scan_excerpt
from matrixos.engine.sql.plans import PendingSlot
from matrixos.errors import SQLError
from matrixos.storage.warehouse import is_remote

if TYPE_CHECKING:
    from matrixos.catalog.pending import PendingRows
    from matrixos.config import Settings
    from matrixos.engine.functions import FunctionResults
    from matrixos.engine.sql.binding import Bound
    from matrixos.storage.warehouse import Warehouse

BATCH_ROWS = 64 * 1024
# A plan keeps the datasets of the object-store files it scans (each file's footer, once read)
# when there are at most this many: a scan of more reads as many objects, which costs far more
# than planning it again, and 1,024 kept plans of big tables would hold their footers.
KEPT_REMOTE_FILES = 64
# Table-reference modifiers a scan's stand-in keeps: they apply to the rows read (the ones
# that would select other rows are refused in binding).
TABLE_CARRIED = ("pivots", "sample", "laterals", "joins")
_STAND_IN = re.compile(r'"(__mx_scan_[0-9a-f]{32}_[0-9]+)"')


class LocalRunner:
    """Runs bound queries on one locked DuckDB connection, a cursor per statement.

    ``warehouse``: its root is an allowed directory, its credentials go to the scans;
    ``settings``: the DuckDB settings (threads, memory limit).
    """

    def __init__(self, warehouse: Warehouse, settings: Settings) -> None:
        self.warehouse = warehouse
        self.settings = settings
        self._lock = threading.Lock()
        self._con: duckdb.DuckDBPyConnection | None = None
        self._allowed: tuple[str, ...] = ()

    def close(self) -> None:
        """Drop the connection (a later statement opens a new one)."""
        self._con = None

    def cursor(self, locations: Sequence[str] = ()) -> duckdb.DuckDBPyConnection:
        """A cursor on the locked connection, whose allowed directories cover ``locations``."""
        local = [loc for loc in locations if not is_remote(loc)]
        with self._lock:
            missing = [
                loc for loc in local if not any((loc + "/").startswith(a) for a in self._allowed)
            ]
            if self._con is None or missing:
                roots = set(self._allowed)
                if not self.warehouse.is_remote:
                    roots.add(self.warehouse.uri.rstrip("/") + "/")
                roots.update(loc.rstrip("/") + "/" for loc in missing)
                s = self.settings
                self._allowed = tuple(sorted(roots))
                self._con = locked_connection(
                    self._allowed, threads=s.duckdb_threads, memory_limit=s.duckdb_memory_limit
                )
            # A server's cancel request interrupts it (engine/interrupt.py).
            return track(self._con.cursor())

    # -- queries ----------------------------------------------------------------------------
    def run(
        self,
        tree: exp.Expr,
        bound: Bound,
        functions: FunctionResults,
        *,
        explain: bool = False,
        notes: Sequence[str] = (),
        keep: Callable[[str, dict[int, PendingSlot], dict[str, Any]], None] | None = None,
    ) -> Result:
        """The query's rows (streamed), or with ``explain`` its plan: ``notes`` (why it runs
        here), the functions evaluated first, each scan's pruning, then DuckDB's plan.
        ``keep`` is given the DuckDB SQL when it stands alone (nothing registered on the
        cursor but rows still in a write-ahead log or search results, which ``run_sql``
        registers again: it can run on any cursor), where it scans those rows (per scan) and
        the datasets of object-store files it scans (by name: the same files at the same
        versions, registered again as they are)."""
        cur = self.cursor([s.snapshot.location for _, s in bound if not isinstance(s, DatasetScan)])
        try:
            functions.install(cur)
            sql, registered, slots, files = self._install(cur, tree, bound)
            if keep is not None and not registered and not functions.udfs:
                keep(sql, slots, files)  # with functions.tables: a search's plan (search_plans)
            if explain:
                plan = cur.execute("EXPLAIN " + sql).fetchall()
                lines = [*notes, *functions.explain, *explain_scans(bound)]
                for row in plan:
                    lines.extend(str(row[-1]).splitlines())
                cur.close()
                return Result.from_table(pa.table({"plan": lines}), statement="EXPLAIN")
            reader, types = duck.stream(cur, sql, BATCH_ROWS)
        except duckdb.Error as e:
            cur.close()
            raise without_scan_excerpt(engine_error(e, user_statement(tree))) from e
        except BaseException:
            cur.close()
            raise
        return typed(Result(reader, statement="SELECT", on_close=cur.close), types)

    def run_sql(
        self,
        sql: str,
        locations: Sequence[str],
        tree: Callable[[], str],
        sources: Mapping[str, Any] | None = None,
    ) -> Result:
        """Run DuckDB SQL a ``run`` kept (a cached plan), with ``sources`` (Arrow tables by
        the names it scans them under: rows still in a write-ahead log); ``tree()``: the
        statement as the user wrote it, for errors."""
        cur = self.cursor(locations)
        try:
            for name, obj in (sources or {}).items():
                cur.register(name, obj)
            reader, types = duck.stream(cur, sql, BATCH_ROWS)
        except duckdb.Error as e:
            cur.close()
            raise without_scan_excerpt(engine_error(e, tree())) from e
        except BaseException:
            cur.close()
            raise
        return typed(Result(reader, statement="SELECT", on_close=cur.close), types)

    def read(
        self, snap: Snapshot, columns: Sequence[str] | None, pending: PendingRows | None = None
    ) -> pa.Table:
        """All rows of one Delta snapshot (a projection of ``columns`` when given), with the
        ``pending`` rows of a write-ahead log."""
        cur = self.cursor([snap.location])
        try:
            return duck.table(cur, self._scan_sql(cur, snap, columns, pending))
        except duckdb.Error as e:
            raise engine_error(e, "") from e
        finally:
            cur.close()

    def count(self, snap: Snapshot, pending: PendingRows | None = None) -> int:
        """The number of rows of one Delta snapshot (deletion vectors applied), with the
        ``pending`` rows of a write-ahead log."""
        cur = self.cursor([snap.location])
        try:
            sql = f"SELECT count(*) FROM ({self._scan_sql(cur, snap, None, pending)})"
            row = cur.execute(sql).fetchone()
            return int(row[0]) if row else 0
        except duckdb.Error as e:
            raise engine_error(e, "") from e
        finally:
            cur.close()

    def _scan_sql(
        self,
        cur: duckdb.DuckDBPyConnection,
        snap: Snapshot,
        columns: Sequence[str] | None,
        pending: PendingRows | None = None,
    ) -> str:
        ctx = make_context(self.warehouse.options, is_remote(snap.location))
        scan = prune(snap, [])
        scan.pending = pending
        sql = render_scan(scan, ctx, columns)
        for name, obj in ctx.registrations.items():
            cur.register(name, obj)
        return sql

    def install(self, cur: duckdb.DuckDBPyConnection, tree: exp.Expr, bound: Bound) -> str:
        """The statement's DuckDB SQL with each table reference replaced by a subquery over its
        pruned files (its Arrow sources registered on ``cur``).

        Inlined rather than created as temporary views: DuckDB binds a view when it is created
        (reading the Parquet footers an extra time), which cost 2-5 ms per table per query.
        """
        return self._install(cur, tree, bound)[0]

    def _install(
        self, cur: duckdb.DuckDBPyConnection, tree: exp.Expr, bound: Bound
    ) -> tuple[str, bool, dict[int, PendingSlot], dict[str, Any]]:
        """``install``'s SQL, whether anything but scans' pending rows and datasets of
        object-store files was registered on ``cur``, where each scan (by its index in
        ``bound``) reads its pending rows, and those datasets by name."""
        ctx = make_context(self.warehouse.options, self.warehouse.is_remote)
        # A per-statement token: user SQL cannot spell it, so only our placeholders match.
        token = f"__mx_scan_{uuid.uuid4().hex}_"
        bodies: dict[str, str] = {}
        slots: dict[int, PendingSlot] = {}
        stores: set[str] = set()  # datasets of formats other than Delta (not file lists)
        for i, (node, (_, scan)) in enumerate(zip(table_refs(tree), bound, strict=True)):
            placeholder = f"{token}{i}"
            if isinstance(scan, DatasetScan):
                stores.add(name := ctx.register(scan.dataset))
                bodies[placeholder] = f'SELECT * FROM "{name}"'
                _stand_in(node, placeholder)
                continue
            ctx.filesystem = (
                self.warehouse.options.to_pyarrow() if is_remote(scan.snapshot.location) else None
            )
            before = len(ctx.registrations)
            bodies[placeholder] = render_scan(scan, ctx)
            _stand_in(node, placeholder)
            if scan.pending is not None:
                added = list(ctx.registrations.items())[before:]
                names = [n for n, obj in added if obj is scan.pending.table]
                if len(names) == 1:
                    slots[i] = PendingSlot(names[0], scan.pending.shape)
        pending = {s.name for s in slots.values()}
        # A Delta scan's Parquet files on an object store, as a pyarrow dataset: immutable (a
        # file list at one version), so a kept plan registers the same object again. Looked up,
        # not imported: pyarrow.dataset (and the pandas it loads) cost ~0.2 s at start-up, and
        # no dataset exists before something imported it.
        pads = sys.modules.get("pyarrow.dataset")
        files = {
            name: obj
            for name, obj in ctx.registrations.items()
            if pads is not None and isinstance(obj, pads.FileSystemDataset) and name not in stores
        }
        registered = any(name not in pending and name not in files for name in ctx.registrations)
        if files and sum(len(d.files) for d in files.values()) > KEPT_REMOTE_FILES:
            registered = True  # too many footers to hold in a plan (reading them costs more)
        for name, obj in ctx.registrations.items():
            cur.register(name, obj)
        # No defensive copy of the tree (2-3 ms for a TPC-H query): it was made for this run.
        try:
            # A construct DuckDB has no equivalent for is an error, not a warning and a query
            # that silently means something else.
            sql = tree.sql(dialect="duckdb", copy=False, unsupported_level=ErrorLevel.RAISE)
        except UnsupportedError as e:
            raise SQLError(
                f"not supported when translating to the engine's SQL: {e}",
                sql=user_statement(tree),
            ) from e
        if not bodies:
            return sql, registered, slots, files
        # One pattern for every statement (compiling one per token cost ~0.5 ms a query); a
        # name that only looks like a stand-in (not this statement's token) stays as it is.
        sql = _STAND_IN.sub(lambda m: "(" + bodies[m[1]] + ")" if m[1] in bodies else m[0], sql)
        return sql, registered, slots, files


def explain_scans(bound: Bound) -> list[str]:
    """EXPLAIN's line per scan: its format and version, and what pruning kept."""
    lines = []
    for ident, scan in bound:
        if isinstance(scan, DatasetScan):
            lines.append(
                f"Scan {ident} ({scan.format}, version {scan.version}): projection and "
                f"filters pushed into {scan.format.capitalize()}"
            )
            continue
        lines.append(
            f"Scan {ident} (delta, version {scan.snapshot.version}): "
            f"{len(scan.files)} of {len(scan.snapshot.files)} files after pruning"
            + (" on " + ", ".join(p.describe() for p in scan.predicates) if scan.predicates else "")
            + (
                f", plus {scan.pending.table.num_rows} pending rows (write-ahead log)"
                if scan.pending is not None
                else ""
            )
        )
    return lines


def _stand_in(node: exp.Table, placeholder: str) -> None:
    alias = node.args.get("alias")
    if alias is None:
        alias = exp.TableAlias(this=exp.to_identifier(node.name))
    stand_in = exp.Table(this=exp.to_identifier(placeholder, quoted=True), alias=alias)
    # What applies to the rows read (PIVOT, TABLESAMPLE, …) stays with the stand-in; what
    # selects the rows (time travel, …) was applied in binding or refused there.
    for key in TABLE_CARRIED:
        if node.args.get(key):
            stand_in.set(key, node.args[key])
    stand_in.meta["mx_original"] = node
    node.replace(stand_in)


def typed(result: Result, types: list[str]) -> Result:
    """``result`` with its columns' DuckDB type names (``Result.sql_types``)."""
    result.sql_types = types
    return result
